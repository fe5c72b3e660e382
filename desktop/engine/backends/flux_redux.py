"""Flux.1 Redux units: a reference picture as extra prompt tokens for a Flux.1 job (library/redux.py).

A Redux unit is an image-prompt unit (the ip-adapter preprocessor) whose model is a Redux file. Its picture is
read by the control library's SigLIP encoder of the width Redux reads, mapped by Redux into T5 tokens and
appended to the prompt's, by diffusers' FluxPriorReduxPipeline on the loaded Flux's own text encoders; the job
then runs with those embeddings instead of the prompt text, in every mode (text-to-image, image-to-image,
inpainting, with ControlNets) and in the hires fix's second pass when it has no prompt of its own.

The unit's weight scales the prompt tokens (diffusers' `prompt_embeds_scale`, text and picture together; 1 is
BFL's reference). One Redux unit a job, acting at every step: a start/end range is refused, as are h94's
IP-Adapters with Flux (they are made for SD's UNet).

torch, diffusers and transformers are imported inside the functions: only the diffusers backend loads this module.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.control import legacy_hash
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.imaging import load_source
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.lora import AdapterCatalog, file_identity
from desktop.engine.library.redux import (
    ReduxInfo,
    SiglipInfo,
    inspect_redux,
    inspect_siglip,
    is_redux,
    is_siglip_encoder,
)
from desktop.engine.request import IP_ADAPTER_PREPROCESSOR, ControlUnit, GenerationRequest
from desktop.engine.terminal_text import library_text


@dataclass(frozen=True)
class ReduxPrompt:
    """A Flux call's prompt as Redux made it, and the unit's hash for the metadata."""

    prompt_embeds: Any
    pooled_prompt_embeds: Any
    hash: ControlHash


def image_units(request: GenerationRequest) -> tuple[ControlUnit, ...]:
    """The job's image-prompt units (the ip-adapter preprocessor): Redux units for a Flux.1 job."""
    return tuple(unit for unit in request.controls if unit.preprocessor == IP_ADAPTER_PREPROCESSOR)


class ReduxModels:
    """Redux files and SigLIP encoders from the control library, each loaded once (kept by file identity)."""

    def __init__(self, catalog: AdapterCatalog) -> None:
        self._catalog = catalog
        self._loaded: dict[tuple[str, int, int], Any] = {}
        # The last prompt made, by what made it: the next batch of the job, or the next job with the same
        # prompt and picture, is answered without running SigLIP and the text encoders again.
        self._last: tuple[Hashable, ReduxPrompt] | None = None

    def forget(self) -> None:
        self._loaded.clear()
        self._last = None

    def prompt(
        self, pipe: Any, request: GenerationRequest, units: Sequence[ControlUnit], label: str, device: str,
        context: Hashable = None,
    ) -> ReduxPrompt:
        """The prompt embeddings of `request.prompt` with the one Redux unit's picture appended, made on
        `pipe`'s (a loaded Flux.1 pipeline's) text encoders. The encoder and Redux sit on the compute `device`
        whole, in the VAE's dtype (the compute dtype: the transformer's may be fp8 storage), whatever the memory
        mode: the offload hooks are the text encoders'. `context` says what else the text encoders' outputs
        depend on (the backend's load, its encoders, the LoRAs, the memory mode: as for its prompt cache); the
        same call under the same context is answered from the last one made."""
        import torch
        from diffusers import FluxPriorReduxPipeline
        from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

        if len(units) > 1:
            raise InvalidRequest(f"{label} runs one Redux unit a job ({len(units)} image-prompt units are on).")
        (unit,) = units
        if unit.more_images:
            raise InvalidRequest(
                f"A Redux unit reads one picture ({1 + len(unit.more_images)} are on it): keep one, or use an SD "
                "IP-Adapter, which averages several."
            )
        if unit.start > 0 or unit.end < 1:
            raise InvalidRequest(
                "A Redux unit acts at every step (its picture is part of the prompt): set its range to 0-1."
            )
        entry = self._catalog.get(unit.model.strip())
        safetensors = sniff_file_type(entry.path) == "safetensors"
        header = read_safetensors_header(entry.path, name=entry.name) if safetensors else None
        if header is None or not is_redux(header):
            raise InvalidRequest(
                f"{library_text(entry.name)!r} is not a Flux.1 Redux model: {label} takes Redux or XLabs' IP-Adapter "
                "as its image prompt (h94's IP-Adapters are made for Stable Diffusion's UNet)."
            )
        info = inspect_redux(header, repr(entry.name))
        width = pipe.transformer.config.joint_attention_dim
        if info.prompt_width != width:
            raise ModelError(
                f"{library_text(entry.name)!r} writes {info.prompt_width}-wide prompt tokens; {label}'s transformer "
                f"reads {width}-wide ones. Pick the Redux made for Flux.1."
            )
        dtype = pipe.vae.dtype
        encoder_path, siglip = self._encoder(info, entry.name)
        picture = load_source(unit.image, "The Redux unit's image")
        key = (context, file_identity(entry.path), file_identity(encoder_path), file_identity(Path(unit.image)),
               request.prompt, float(unit.weight), device, str(dtype))  # fmt: skip
        if self._last is not None and self._last[0] == key:
            last = self._last[1]  # cloned: a pipeline may change what it was given in place
            return ReduxPrompt(last.prompt_embeds.clone(), last.pooled_prompt_embeds.clone(), last.hash)
        embedder = self._module(entry.path, lambda path: _embedder(ReduxImageEncoder, path, info))
        encoder = self._module(encoder_path, lambda path: _siglip(path, siglip))
        prior = FluxPriorReduxPipeline(
            image_encoder=encoder.to(device=device, dtype=dtype), feature_extractor=_processor(siglip),
            image_embedder=embedder.to(device=device, dtype=dtype), text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
        )  # fmt: skip
        prior.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            out = prior(image=picture, prompt=request.prompt, prompt_embeds_scale=float(unit.weight))
        made = ReduxPrompt(out.prompt_embeds, out.pooled_prompt_embeds,
                           ControlHash(entry.name, legacy_hash(entry.path), "ip-adapter"))  # fmt: skip
        self._last = (key, ReduxPrompt(made.prompt_embeds.clone(), made.pooled_prompt_embeds.clone(), made.hash))
        return made

    def _module(self, path: Path, build: Any) -> Any:
        key = file_identity(path)
        if key not in self._loaded:
            self._loaded[key] = build(path)
        return self._loaded[key]

    def _encoder(self, info: ReduxInfo, name: str) -> tuple[Path, SiglipInfo]:
        """The control library's first SigLIP encoder (by name) of the width the Redux model reads."""
        for entry, header in self._catalog.headers():
            if is_siglip_encoder(header):
                siglip = inspect_siglip(header, entry.name)
                if siglip.hidden_size == info.encoder_width:
                    return entry.path, siglip
        raise ModelError(
            f"{library_text(name)!r} reads pictures with a {info.encoder_width}-wide SigLIP encoder, and the control "
            "library has none. Import google/siglip-so400m-patch14-384's model.safetensors (or ComfyUI's "
            "sigclip_vision_patch14_384.safetensors) with marble controls import FILE."
        )


def _embedder(cls: Any, path: Path, info: ReduxInfo) -> Any:
    from safetensors.torch import load_file

    model = cls(redux_dim=info.encoder_width, txt_in_features=info.prompt_width)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def _siglip(path: Path, info: SiglipInfo) -> Any:
    from safetensors.torch import load_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=info.hidden_size, intermediate_size=info.intermediate_size, num_hidden_layers=info.layers,
        num_attention_heads=info.heads, num_channels=info.channels, image_size=info.image_size,
        patch_size=info.patch_size,
    )  # fmt: skip
    model = SiglipVisionModel(config)
    # The file's vision tower (a whole SiglipModel's text tower left out), named as this transformers names it:
    # with `vision_model.` (4.x) or without (5.x).
    weights = load_file(str(path))
    ours = "vision_model." if any(key.startswith("vision_model.") for key in model.state_dict()) else ""
    theirs = "vision_model." if any(key.startswith("vision_model.") for key in weights) else ""
    state = {ours + key.removeprefix(theirs): value for key, value in weights.items()
             if key.startswith(theirs) and not key.startswith("text_model.")}  # fmt: skip
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0][:300]
        raise ModelError(f"{path.name} does not fit a SigLIP vision model: {first}") from None
    return model.eval()


def _processor(info: SiglipInfo) -> Any:
    """google/siglip-so400m-patch14-384's preprocessor config, at the encoder's own size: bicubic resize to a
    square, pixels to [-1, 1]."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(
        do_resize=True, size={"height": info.image_size, "width": info.image_size}, resample=3, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
