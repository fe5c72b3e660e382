"""VAEs without torch: what a VAE file is, judged from its safetensors header.

A VAE is chosen per job by its library name (A1111's "SD VAE" setting); the file is never downloaded and
never given by path from text. SD 1.x, SD 2.x and SDXL VAEs share one architecture (the same tensor names
and shapes: only the latent scaling factor, a config value, differs), so a file cannot say which of them
it was trained for; what the header does say is its layout and its latent width, and the backend refuses a
VAE whose tensors do not fit the loaded model's VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader

# Prefixes a VAE's tensors carry when they were cut out of a full checkpoint, or saved on their own.
_LDM_PREFIXES = ("first_stage_model.", "vae.", "")
_LDM_PROBE = "encoder.down.0.block.0.conv1.weight"
_DIFFUSERS_PROBE = "encoder.down_blocks.0.resnets.0.conv1.weight"
_LATENT_LABELS = {4: "SD 1.x / 2.x / SDXL VAE", 16: "SD3 / Flux VAE"}
# Qwen-Image's VAE, a causal 3-D VAE of Wan 2.1's design: in Wan's own names (ComfyUI's
# qwen_image_vae.safetensors) or diffusers' (AutoencoderKLQwenImage; RMS norms with a `gamma`, 5-D convolutions).
WAN_LAYOUTS = ("wan", "wan-diffusers")
# Qwen-Image 2.1's RGBA VAE (AutoencoderKLQwenImage21, of Wan 2.2's design) has the same probes in diffusers' names and
# 64 latent channels where Qwen-Image's has 16.
QWEN21_LATENT_CHANNELS = 64
_WAN_PROBES = {
    "wan": ("encoder.conv1.weight", "decoder.head.2.weight", "conv2.weight"),
    "wan-diffusers": ("encoder.conv_in.weight", "decoder.norm_out.gamma", "post_quant_conv.weight"),
}
# Sana's deep-compression autoencoder (DC-AE, 32x, 32 latent channels): in diffusers' names (AutoencoderDC:
# `encoder.down_blocks.N.M`, a block list per stage) or its makers' (MIT HAN Lab's `encoder.project_in.conv`,
# `encoder.stages.N.op_list`). The decoder's first convolution reads the latents in both.
DC_AE_LAYOUTS = ("dc-ae", "dc-ae-original")
_DC_AE_PROBES = {
    "dc-ae": ("encoder.conv_in.weight", "encoder.down_blocks.0.0.", "decoder.conv_in.weight"),
    "dc-ae-original": ("encoder.project_in.conv.weight", "encoder.stages.0.", "decoder.project_in.conv.weight"),
}
# Latent widths Marble's pipelines (SD 1.x, SD 2.x, SDXL) decode.
SUPPORTED_LATENT_CHANNELS = 4


@dataclass(frozen=True)
class VaeInfo:
    """What a VAE file's header says: its layout, its tensor-name prefix and its latent width."""

    layout: str  # "ldm" (original encoder.down.0... names) | "diffusers" (encoder.down_blocks.0...) | WAN_LAYOUTS
    # | DC_AE_LAYOUTS
    prefix: str  # "first_stage_model." | "vae." | ""
    latent_channels: int | None
    # Flux.2's VAE: the same blocks plus a batch norm (`bn`) over its patchified latents.
    flux2: bool = False

    @property
    def qwen21(self) -> bool:
        return self.layout in WAN_LAYOUTS and self.latent_channels == QWEN21_LATENT_CHANNELS

    @property
    def label(self) -> str:
        if self.qwen21:
            return "Qwen-Image 2.1 VAE"
        if self.layout in WAN_LAYOUTS:
            return "Qwen-Image VAE (Wan 2.1 design)"
        if self.layout in DC_AE_LAYOUTS:
            return "Sana DC-AE"
        if self.flux2:
            return "Flux.2 VAE"
        return _LATENT_LABELS.get(self.latent_channels or 0, "VAE")

    @property
    def family(self) -> str | None:
        # One architecture for SD 1.x, 2.x and SDXL: "sd" names that whole group.
        if self.layout in WAN_LAYOUTS or self.layout in DC_AE_LAYOUTS or self.flux2:
            return None
        return "sd" if self.latent_channels == SUPPORTED_LATENT_CHANNELS else None


def inspect_vae(header: SafetensorsHeader, name: str = "this file") -> VaeInfo:
    """Layout and latent width of a VAE from its tensor names and shapes; raise if it is no VAE."""
    names = header.tensors
    if any(n.startswith("model.diffusion_model.") for n in names):
        raise ModelError(
            f"{name} is a whole checkpoint (it has a UNet), not a VAE on its own. Import it as a model; its own "
            "VAE is used when no VAE is chosen."
        )
    # The 3-D VAEs first: Qwen-Image 2.1's, in diffusers' names, has SD's `down_blocks.N.resnets.M` too (its RMS
    # norms' `gamma` is theirs alone).
    for layout, (encoder, decoder, latent) in _WAN_PROBES.items():
        for prefix in _LDM_PREFIXES:
            if prefix + encoder in names and prefix + decoder in names and prefix + latent in names:
                # The post-quant 1x1 conv reads the latent: 3-D in Qwen-Image's VAE, 2-D in 2.1's.
                shape = names[prefix + latent].shape
                return VaeInfo(layout, prefix, shape[1] if len(shape) in (4, 5) else None)
    for layout, probe in (("ldm", _LDM_PROBE), ("diffusers", _DIFFUSERS_PROBE)):
        for prefix in _LDM_PREFIXES:
            if prefix + probe in names and _has_decoder(names, prefix):
                return VaeInfo(layout, prefix, _latent_channels(header, prefix), f"{prefix}bn.running_mean" in names)
    for layout, (encoder, stage, decoder) in _DC_AE_PROBES.items():
        for prefix in _LDM_PREFIXES:
            if prefix + encoder in names and prefix + decoder in names and any(
                    n.startswith(prefix + stage) for n in names):  # fmt: skip
                shape = names[prefix + decoder].shape
                return VaeInfo(layout, prefix, shape[1] if len(shape) == 4 else None)
    raise ModelError(
        f"{name} is not a VAE: it has neither the original (encoder.down.0...) nor the diffusers "
        "(encoder.down_blocks.0...) VAE layer names, with a decoder, nor the Qwen-Image VAE's or Sana's DC-AE's."
    )


def _has_decoder(names: object, prefix: str) -> bool:
    return f"{prefix}decoder.conv_in.weight" in names  # type: ignore[operator]


def _latent_channels(header: SafetensorsHeader, prefix: str) -> int | None:
    # decoder.conv_in reads the latent: weight shape (width, latent channels, 3, 3).
    shape = header.tensors[f"{prefix}decoder.conv_in.weight"].shape
    return shape[1] if len(shape) == 4 else None
