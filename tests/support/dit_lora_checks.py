"""The check every DiT family's LoRA support must pass whose loader diffusers has (HiDream-I1's, AuraFlow's, Sana's):
a rank-4 LoRA on both kinds of its blocks, written in a trainer's naming, is told to be the family's by the library and
changes the picture through Marble exactly as bare diffusers loading it in diffusers' own names does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.lora import LoraInfo, inspect_lora
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit_loras import lora_on, trainer_form

NAMINGS = ("diffusers", "ai-toolkit", "kohya")


def check_lora_as_bare_diffusers(
    paths: Any, tmp_path: Path, folder: Path, bare_pipeline: Callable[[Path], Any], *, transformer: Any,
    blocks: tuple[str, str], layers: tuple[str, ...], naming: str, cfg: float, family: str, label: str,
    unbinned: bool = False,
) -> LoraInfo:
    """`naming`: diffusers' (`transformer.` and PEFT's names), ai-toolkit's (`diffusion_model.`) or kohya's (flattened,
    lora_down / lora_up with alphas); `unbinned`: the pipeline called at the size asked, as Marble calls Sana's.
    Returns what the library read of the file."""
    tensors = lora_on(transformer, blocks[0], layers) | lora_on(transformer, blocks[1], layers, seed=4)
    native = {key.replace("transformer.", "diffusion_model.", 1): value for key, value in tensors.items()}
    written = {"diffusers": tensors, "ai-toolkit": native, "kohya": trainer_form(native, kohya=True)}[naming]
    save_file(written, str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    assert (info.family, info.label) == (family, label)
    request = request_for(folder, prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=cfg)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    call = dict(prompt="a red circle", negative_prompt=request.negative_prompt if cfg > 1 else None,
                num_inference_steps=3, width=64, height=64, guidance_scale=cfg)  # fmt: skip
    call |= {"use_resolution_binning": False} if unbinned else {}

    def picture(pipe: Any) -> np.ndarray:
        return pixels(pipe(**call, generator=torch.Generator("cpu").manual_seed(request.seed)).images[0])

    # The reference: bare diffusers loading the LoRA in its own names.
    save_file(tensors, str(tmp_path / "reference.safetensors"))
    pipe = bare_pipeline(folder)
    pipe.load_lora_weights(str(tmp_path / "reference.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], [0.8])
    expected = picture(pipe)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, picture(bare_pipeline(folder)))
    return info
