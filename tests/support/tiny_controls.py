"""Tiny control models for tests: ControlNets made from the tiny UNets, T2I-Adapters sized to them.

Written in the layouts users have: diffusers' own names, and the original (A1111 / lllyasviel) layout,
made by inverting the key mapping diffusers' single-file converter applies. Seeded random weights; the
zero convolutions are given noise too, or a fresh ControlNet would change nothing and every test
comparing "with control" against "without" would pass for the wrong reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from safetensors.torch import save_file

from tests.support.tiny_models import _jitter, _seeded, unet_to_ldm


def build_tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0, conditioning_channels: int = 3) -> ControlNetModel:
    with _seeded(seed) as generator:
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels)
        _jitter(controlnet, generator)
        with torch.no_grad():
            # Zero convolutions start at zero; make them count (about the size of the UNet's residuals).
            for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
                module.weight.add_(torch.randn(module.weight.shape, generator=generator) * 0.3)
    return controlnet.eval()


def build_tiny_adapter(unet: UNet2DConditionModel, seed: int = 0, xl: bool = False) -> T2IAdapter:
    channels = list(unet.config.block_out_channels)
    with _seeded(seed) as generator:
        adapter = T2IAdapter(
            in_channels=3,
            channels=channels,
            num_res_blocks=1,
            downscale_factor=16 if xl else 8,
            adapter_type="full_adapter_xl" if xl else "full_adapter",
        )
        _jitter(adapter, generator)
    return adapter.eval()


def controlnet_to_ldm(controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel state dict -> the original `control_model.*` names."""
    state = {k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    unet_part = {
        k: v for k, v in state.items()
        if not k.startswith(("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block."))
    }  # fmt: skip
    config = {**controlnet.config, "up_block_types": ()}
    out = {k.removeprefix("model.diffusion_model."): v for k, v in unet_to_ldm(unet_part, config).items()}
    blocks = len(controlnet.controlnet_cond_embedding.blocks)
    for key, value in state.items():
        if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(\w+)", key):
            out[f"input_hint_block.0.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(\w+)", key):
            out[f"input_hint_block.{2 * (blocks + 1)}.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(\w+)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_mid_block\.(\w+)", key):
            out[f"middle_block_out.0.{m[1]}"] = value
    return {"control_model." + k: v for k, v in out.items()}


def save_controlnet(controlnet: ControlNetModel, path: Path | str, layout: str = "ldm") -> Path:
    state = (
        controlnet_to_ldm(controlnet)
        if layout == "ldm"
        else {k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def save_adapter(adapter: T2IAdapter, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in adapter.state_dict().items()}, str(path))
    return path


_CONTROLNET_OWN = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


def build_tiny_control_lora(
    unet: UNet2DConditionModel, seed: int = 0, rank: int = 2
) -> tuple[ControlNetModel, dict[str, torch.Tensor]]:
    """A Control-LoRA and the ControlNet it stands for, on `unet`.

    The ControlNet starts as `from_unet(unet)`; every linear / conv weight of the UNet's encoder copy gets an
    exact low-rank change `up @ down` (rank `rank`, written to the file as `.up` / `.down`), every other
    UNet-side tensor (norms, biases) and everything the ControlNet has of its own (hint encoder, zero
    convolutions) is random and written in full, as Stability's files hold them. Returns the model and the
    file's tensors (original LDM names, no prefix, with the `lora_controlnet` marker)."""
    with _seeded(seed) as generator:
        controlnet = ControlNetModel.from_unet(unet)
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            for key, param in controlnet.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                if key.startswith(_CONTROLNET_OWN):
                    # Zero convolutions (and the hint encoder's last conv) start at zero; make them count.
                    param.add_(noise * (0.3 if param.ndim > 1 else 0.05))
                elif param.ndim >= 2:
                    up = torch.randn((param.shape[0], rank, *[1] * (param.ndim - 2)), generator=generator) * 0.2
                    down = torch.randn((rank, *param.shape[1:]), generator=generator) * 0.2
                    param.copy_(param + (up.flatten(1) @ down.flatten(1)).reshape(param.shape))
                    pairs[key] = (up, down)
                else:
                    param.add_(noise * 0.02)
    controlnet.eval()
    ldm = {k.removeprefix("control_model."): v for k, v in controlnet_to_ldm(controlnet).items()}
    by_storage = {tensor.data_ptr(): name for name, tensor in ldm.items()}
    parameters = dict(controlnet.named_parameters())
    for key, (up, down) in pairs.items():
        name = by_storage[parameters[key].data_ptr()]
        del ldm[name]
        module = name.removesuffix(".weight")
        ldm[f"{module}.up"], ldm[f"{module}.down"] = up.contiguous(), down.contiguous()
    ldm["lora_controlnet"] = torch.zeros(1)
    return controlnet, ldm


def save_tensors(tensors: dict[str, torch.Tensor], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))
    return path
