"""Chroma: a Flux.1-schnell derivative with T5 as its only text encoder, true CFG with a negative prompt,
and a small "distilled guidance" network in place of Flux's per-block modulation weights.

Called from families.py on the generation thread; torch, diffusers and transformers are imported inside
the functions (listed in pyproject's import-linter contract). Detection is library/dit.py's.

A Chroma transformer-only file takes its T5 encoder and VAE from a folder the user names
(`--text-encoders`): a Chroma diffusers folder, or a Flux.1 one (same T5 and VAE; its CLIP is unused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.request import GenerationRequest

# Chroma was trained with T5 prompts of up to 512 tokens (diffusers' ChromaPipeline default).
MAX_SEQUENCE = 512


def pipeline_class() -> Any:
    import diffusers

    return diffusers.ChromaPipeline


def transformer_class() -> Any:
    import diffusers

    return diffusers.ChromaTransformer2DModel


def pop_guidance_layer(state: dict[str, Any]) -> dict[str, Any]:
    """Takes the distilled-guidance network out of `state` (BFL names) in diffusers' names, so the rest
    converts as a Flux.1 model without modulation weights. diffusers' own Chroma conversion assumes the
    full 3072 width; this one, like families.convert_flux_bfl, reads widths from the tensors."""
    out: dict[str, Any] = {}
    prefix = "distilled_guidance_layer."
    renames = {".in_layer.": ".linear_1.", ".out_layer.": ".linear_2."}
    for key in [k for k in state if k.startswith(prefix)]:
        new = key
        for old, replacement in renames.items():
            new = new.replace(old, replacement)
        if new.startswith(prefix + "norms.") and new.endswith(".scale"):
            new = new.removesuffix(".scale") + ".weight"
        out[new] = state.pop(key)
    return out


def check_components(folder: Path, *, name: str) -> str:
    """Which component of `folder` (a diffusers folder) holds the T5 encoder Chroma uses:
    "text_encoder" for a Chroma folder, "text_encoder_2" for a Flux.1 folder. Refuses other folders
    before the slow transformer load."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"The text-encoder folder {folder} is not a diffusers model folder (no model_index.json).")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    for component in ("text_encoder", "text_encoder_2"):
        entry = index.get(component)
        if isinstance(entry, list) and len(entry) == 2 and entry[1] == "T5EncoderModel":
            if not (folder / "vae").is_dir():
                break
            return component
    raise ModelError(
        f"{name} is a Chroma transformer; its text encoders come from a Chroma or Flux.1 diffusers folder "
        f"(a T5 encoder and a VAE), and {folder} is not one."
    )


def assemble(
    folder: Path, *, name: str, dtype: Any, shipped: Path, tokenizer: Any, transformer: Any
) -> Any:
    """A ChromaPipeline from `transformer`, the T5 encoder and VAE of `folder`, and the shipped scheduler
    config and T5 tokenizer."""
    import diffusers
    import transformers

    component = check_components(folder, name=name)
    try:
        text_encoder = transformers.T5EncoderModel.from_pretrained(
            str(folder / component), dtype=dtype, local_files_only=True, use_safetensors=True
        )
        vae = diffusers.AutoencoderKL.from_pretrained(
            str(folder / "vae"), dtype=dtype, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"Could not load the text encoder and VAE for {name!r} from {folder}: {error}") from error
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
        str(shipped), subfolder="scheduler", local_files_only=True
    )
    return diffusers.ChromaPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


def generation_arguments(request: GenerationRequest) -> dict[str, Any]:
    """True CFG with the negative prompt (Chroma is not guidance-distilled), T5 prompts whole."""
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "guidance_scale": float(request.cfg_scale),
        "max_sequence_length": MAX_SEQUENCE,
    }
