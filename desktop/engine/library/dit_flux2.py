"""Flux.2 (Black Forest Labs' second generation: dev, and the smaller Klein models) told apart from its
tensors, so it is not mistaken for Flux.1 (both have `double_blocks`/`single_blocks`). Run by
backends/families_flux2.py.

Flux.2 shares its modulation across blocks (`double_stream_modulation_img`, `single_stream_modulation`)
where Flux.1 has one per block, and its text embedding is several stacked LLM layers: its width tells
the text encoder and so the model (dev: Mistral Small 3.1, 3 x 5120; Klein 4B: Qwen3-4B, 3 x 2560;
Klein 9B: Qwen3-8B, 3 x 4096). A width none of those (a model of other dimensions, a test's tiny one)
falls back on the guidance embedder: dev has one (distilled guidance), Klein has none. Headers only; no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError

FLUX2 = "flux2"
LABELS = {FLUX2: "Flux.2"}
PIPELINES = {"Flux2Pipeline": FLUX2, "Flux2KleinPipeline": FLUX2}
# Config folders under resources/configs/ for each (family, variant); a "klein" of unknown size has none.
CONFIGS = {(FLUX2, "dev"): "flux2-dev", (FLUX2, "klein 4b"): "flux2-klein-4b", (FLUX2, "klein 9b"): "flux2-klein-9b"}
# The text embedding's width (txt_in / context_embedder input) -> the variant.
_VARIANTS = {15360: "dev", 7680: "klein 4b", 12288: "klein 9b"}
_NEEDED = {
    "bfl": ("img_in.weight", "txt_in.weight", "final_layer.linear.weight", "time_in.in_layer.weight"),
    "diffusers": ("x_embedder.weight", "context_embedder.weight", "proj_out.weight",
                  "time_guidance_embed.timestep_embedder.linear_1.weight"),
}  # fmt: skip
_GUIDANCE = {"bfl": "guidance_in.in_layer.weight", "diffusers": "time_guidance_embed.guidance_embedder.linear_1.weight"}
_BLOCKS = {"bfl": ("double_blocks", "single_blocks"), "diffusers": ("transformer_blocks", "single_transformer_blocks")}
_BLOCK = re.compile(r"^(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)\.")


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to Flux.2."""
    return bare_name.startswith(("single_stream_modulation.", "double_stream_modulation_img."))


def detect(model: Mapping[str, Any], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (double, single) blocks) of a Flux.2 transformer whose tensors (prefix
    removed) are `model`, each with a `.shape`; None when it is not Flux.2. ModelError naming `name` when
    it is Flux.2 but damaged."""
    if not any(is_marker(key) for key in model):
        return None
    layout = "diffusers" if "single_stream_modulation.linear.weight" in model else "bfl"
    for tensor in _NEEDED[layout]:
        if tensor not in model:
            raise ModelError(f"{name} looks like Flux.2 but {tensor} is missing: the file is damaged or incomplete.")
    text = model["txt_in.weight" if layout == "bfl" else "context_embedder.weight"].shape
    guided = _GUIDANCE[layout] in model
    variant = _variant(int(text[-1]) if len(text) == 2 else None, guided)
    found: dict[str, set[int]] = {}
    for key in model:
        match = _BLOCK.match(key)
        if match:
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
    counts = []
    for kind in _BLOCKS[layout]:
        present = found.get(kind, set())
        missing = sorted(set(range(max(present, default=-1) + 1)) - present)
        if not present or missing:
            first = f"{kind}.{missing[0]}" if missing else kind
            raise ModelError(f"{name} looks like Flux.2 but {first} is missing: the file is damaged or incomplete.")
        counts.append(len(present))
    return FLUX2, variant, layout, (counts[0], counts[1])


def folder_variant(transformer: Mapping[str, object]) -> str:
    """The variant of a Flux.2 diffusers folder from its transformer/config.json."""
    width = transformer.get("joint_attention_dim")
    return _variant(width if isinstance(width, int) else None, bool(transformer.get("guidance_embeds")))


def text_width(variant: str) -> int | None:
    """The text-embedding width a Klein 4B / 9B transformer reads (3 stacked encoder layers); None for dev,
    whose name may come from its guidance embedder alone (a dev of other dimensions)."""
    return next((width for width, known in _VARIANTS.items() if known == variant and variant != "dev"), None)


def _variant(text_width: int | None, guided: bool) -> str:
    known = _VARIANTS.get(text_width) if text_width is not None else None
    return known or ("dev" if guided else "klein")
