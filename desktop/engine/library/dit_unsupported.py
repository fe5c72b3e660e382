"""Diffusion-transformer families Marble cannot run yet, told apart by their tensors or their folder's pipeline
class, so such a model is refused by its name (headers only, no torch; registered in library/dit.py).

Without this a file of such a family (a FLUX.3 file, before Marble ran FLUX.3: its diffusers names share Flux.1's
`single_transformer_blocks`) was refused as "a Flux.1 file that is incomplete": it read as a damaged download. The
markers are module names no family Marble runs has (diffusers' names and, where diffusers' single-file key table
gives them, the makers'; tests/engine/test_unsupported_families.py runs every marker over each transformer and
ControlNet class Marble runs); the pipelines are diffusers' class names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from desktop.engine.errors import ModelError


@dataclass(frozen=True)
class _Family:
    label: str
    markers: re.Pattern[str] | None  # matches a tensor name (ComfyUI prefix removed) only this family has
    pipelines: tuple[str, ...] = ()  # diffusers' pipeline classes of its folders
    video: bool = False  # a video model: Marble makes still pictures


# In order: GLM-Image carries CogView4's `time_condition_embed` too, so it is asked first.
_FAMILIES = (
    _Family("Ideogram 4", re.compile(r"^llm_cond_proj\."), ("Ideogram4Pipeline",)),
    # HunyuanImage's and HunyuanVideo's tensors share their token refiner (their makers' `txt_in.individual_...`,
    # diffusers' `context_embedder.token_refiner`) and differ only in names other families share (Flux.2's
    # `time_guidance_embed`): a file is named as either; their folders by pipeline.
    _Family("HunyuanImage or HunyuanVideo",
            re.compile(r"^context_embedder\.token_refiner\.|^txt_in\.individual_token_refiner\.")),  # fmt: skip
    _Family("HunyuanImage", None, ("HunyuanImagePipeline",)),
    _Family("GLM-Image", re.compile(r"^glyph_projector\."), ("GlmImagePipeline",)),
    _Family("CogView4", re.compile(r"^time_condition_embed\."), ("CogView4Pipeline",)),
    _Family("Bria FIBO", None, ("BriaFiboPipeline",)),  # its tensors are too like Flux.1's to tell by a name
    # Video models creators keep beside their picture models (ComfyUI runs both). LTX-Video's diffusers names are too
    # like others' to tell by one.
    _Family("Wan", re.compile(r"^condition_embedder\.|^head\.modulation$"), ("WanPipeline",), video=True),
    _Family("HunyuanVideo", None, ("HunyuanVideoPipeline",), video=True),
    _Family("Mochi", re.compile(r"^pos_frequencies$|^blocks\.\d+\.attn\.qkv_x\."), ("MochiPipeline",), video=True),
    _Family("LTX-Video", re.compile(r"^patchify_proj\."), ("LTXPipeline",), video=True),
)


def _family_of(bare_names: Iterable[str]) -> _Family | None:
    names = list(bare_names)
    for family in _FAMILIES:
        if family.markers is not None and any(family.markers.match(name) for name in names):
            return family
    return None


def family_of(bare_names: Iterable[str]) -> str | None:
    """The label of the family Marble cannot run whose tensors these are (ComfyUI prefix removed); None if none."""
    family = _family_of(bare_names)
    return None if family is None else family.label


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to a family Marble cannot run yet."""
    return _family_of([bare_name]) is not None


def refuse(bare_names: Iterable[str], name: str) -> None:
    """ModelError naming the family when the tensors are one Marble cannot run yet; nothing otherwise."""
    family = _family_of(bare_names)
    if family is not None:
        raise ModelError(_message(name, family, family.label))


def refuse_folder(class_name: str, name: str) -> None:
    """ModelError naming the family when a diffusers folder's pipeline class is one Marble cannot run yet."""
    family = next((family for family in _FAMILIES if class_name in family.pipelines), None)
    if family is not None:
        raise ModelError(_message(name, family, f"{family.label} ({class_name})"))


def _message(name: str, family: _Family, label: str) -> str:
    if family.video:
        return f"{name} is a {label} video model: Marble makes still pictures and cannot run it."
    return (
        f"{name} is a {label} model, a family Marble cannot run yet. The families it runs are listed in "
        "docs/model-families.md."
    )
