"""The tiny Qwen-Image / Z-Image text encoders saved as ComfyUI keeps them: one file in transformers' older
names (`model.layers.N...`, Qwen2.5-VL's vision tower under `visual.*`), and a tokenizer folder apart."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def comfy_qwen_state(encoder, *, vision: bool = True, head: bool = True) -> dict[str, torch.Tensor]:
    """A Qwen3Model's or Qwen2_5_VLForConditionalGeneration's tensors in ComfyUI's single-file names."""
    out = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        elif key.startswith("model.visual."):
            if not vision:
                continue
            key = key.removeprefix("model.")
        elif key == "lm_head.weight":
            if not head:
                continue
        else:
            key = "model." + key  # Qwen3Model: no `model.` level of its own
        out[key] = value.detach().clone().contiguous()
    return out


def save_comfy_qwen(encoder, path: Path, dtype: torch.dtype | None = None, **options: bool) -> Path:
    state = comfy_qwen_state(encoder, **options)
    if dtype is not None:
        state = {k: v.to(dtype) if v.ndim >= 2 else v for k, v in state.items()}
    save_file(state, str(path))
    return path


def save_tokenizer_folder(pipe, folder: Path) -> Path:
    """The tokenizer alone (tokenizer.json, tokenizer_config.json, chat template), as Qwen's repositories hold."""
    pipe.tokenizer.save_pretrained(str(folder))
    return folder
