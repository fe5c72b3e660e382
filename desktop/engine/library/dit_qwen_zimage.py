"""Qwen-Image and Z-Image transformers told apart from their tensors (registered in library/dit.py).

Headers only, as dit.py: no torch. The names in circulation (checked against ComfyUI's model detection
and diffusers' single-file converters):

- Qwen-Image was released in diffusers' names (`transformer_blocks.N.img_mod.1`, `img_in`, `txt_in`,
  `txt_norm`); ComfyUI's split files carry the same names under `model.diffusion_model.`, and the GGUF
  files in circulation the bare names. Layout "diffusers" for all of them.
- Z-Image's original (Tongyi / ComfyUI "lumina2" family) names fuse q, k and v (`layers.N.attention.qkv`)
  and call the patch embedder `x_embedder` and the head `final_layer`: layout "original". diffusers
  splits q/k/v and keys the embedder and head by patch size (`all_x_embedder.2-1`): layout "diffusers".
  Both have `cap_embedder.1` (the caption projection) and `noise_refiner.N` / `context_refiner.N` /
  `layers.N`.
- Lumina Image 2.0 (Alpha-VLLM's, and its fine-tunes such as Neta Lumina) shares Z-Image's original names
  (`layers.N.attention.qkv`, `cap_embedder.1`: layout "original") but has no padding tokens (Z-Image's
  `x_pad_token` / `cap_pad_token`, which its model cannot do without); its caption width is Gemma-2 2B's 2304
  where Z-Image's is Qwen3-4B's 2560, which is how ComfyUI tells them apart. diffusers' own names
  (Lumina2Transformer2DModel: `time_caption_embed.caption_embedder.1`, `layers.N.attn.to_q`): layout
  "diffusers".
- Qwen-Image-Edit and Edit-2509/2511 ("Plus") have the base transformer's tensors, names and shapes
  (checked against diffusers' QwenImageTransformer2DModel: 2511 differs only by the `zero_cond_t` config
  flag, no tensor). So an Edit model is told by its folder's pipeline class (model_index.json), by a
  single file's `modelspec.architecture` metadata where its maker wrote one, or by the user's choice:
  the `--text-encoders` folder, a Qwen-Image-Edit diffusers folder (it must be one: only it has the
  processor the Edit pipelines need). Variants "edit" and "edit-plus".
- Qwen-Image 2.1 (a 7B single-stream transformer reading Qwen3-VL 8B; it generates and edits) keeps the name
  `txt_in`, but as a module with `txt_in.text_norm` (Qwen-Image's `txt_norm` sits beside a plain `txt_in`
  linear), a shared `modulation.1` and per-block `img_mlp.gate_layer` / `img_mlp.proj`. Its release and
  diffusers name them alike (layout "diffusers"); ComfyUI's files fuse each SwiGLU's gate and up projections
  into `img_mlp.gate_up` (gate rows first: diffusers' single-file converter): layout "original".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from desktop.engine.errors import ModelError
from desktop.engine.safe_files import read_json_file

if TYPE_CHECKING:
    from desktop.engine.library.dit import TensorShape

QWEN_IMAGE = "qwen-image"
Z_IMAGE = "z-image"
LUMINA2 = "lumina2"
QWEN_IMAGE_21 = "qwen-image-2.1"
EDIT, EDIT_PLUS = "edit", "edit-plus"
# The Edit models share Qwen-Image's transformer and scheduler configs.
CONFIGS = {(QWEN_IMAGE, ""): "qwen-image", (QWEN_IMAGE, EDIT): "qwen-image", (QWEN_IMAGE, EDIT_PLUS): "qwen-image",
           (Z_IMAGE, ""): "z-image", (LUMINA2, ""): "lumina2", (QWEN_IMAGE_21, ""): "qwen-image-2.1"}  # fmt: skip
LABELS = {QWEN_IMAGE: "Qwen-Image", Z_IMAGE: "Z-Image", LUMINA2: "Lumina Image 2.0", QWEN_IMAGE_21: "Qwen-Image 2.1"}
VARIANT_LABELS = {(QWEN_IMAGE, EDIT): "Edit", (QWEN_IMAGE, EDIT_PLUS): "Edit Plus"}
# diffusers' pipeline class of a model folder -> (family, variant).
_FOLDER_CLASSES = {
    "QwenImagePipeline": (QWEN_IMAGE, ""),
    "QwenImageEditPipeline": (QWEN_IMAGE, EDIT),
    "QwenImageEditInpaintPipeline": (QWEN_IMAGE, EDIT),
    "QwenImageEditPlusPipeline": (QWEN_IMAGE, EDIT_PLUS),
    "ZImagePipeline": (Z_IMAGE, ""),
    "Lumina2Pipeline": (LUMINA2, ""),
    "Lumina2Text2ImgPipeline": (LUMINA2, ""),  # diffusers' older name of the same pipeline
    "QwenImage21Pipeline": (QWEN_IMAGE_21, ""),
}
PIPELINES = {name: family for name, (family, _variant) in _FOLDER_CLASSES.items()}

_LUMINA2_CAPTION_WIDTH = 2304  # Gemma-2 2B's hidden size: Lumina Image 2.0, not Z-Image
_GGUF_BLOCK_TYPES = ("Q", "IQ", "TQ")  # GGUF's block-quantised type names (Q8_0, Q4_K, IQ4_XS ...)
_BLOCK = re.compile(r"^(transformer_blocks|layers|noise_refiner|context_refiner)\.(\d+)\.")
_QWEN_NEEDED = ("img_in.weight", "txt_in.weight", "txt_norm.weight", "proj_out.weight", "norm_out.linear.weight",
                "time_text_embed.timestep_embedder.linear_1.weight")  # fmt: skip
_QWEN21_NEEDED = ("img_in.weight", "txt_in.in_layer.weight", "txt_in.out_layer.weight", "modulation.1.weight",
                  "norm_out.linear.weight", "proj_out.weight", "time_text_embed.timestep_embedder.linear_1.weight")
_QWEN21_FUSED = ".img_mlp.gate_up.weight"  # ComfyUI's fused SwiGLU input (layout "original")
_LUMINA2_CAPTION = {"original": "cap_embedder.1.weight", "diffusers": "time_caption_embed.caption_embedder.1.weight"}
_LUMINA2_NEEDED = {
    "original": ("x_embedder.weight", "final_layer.linear.weight", "t_embedder.mlp.0.weight"),
    "diffusers": ("x_embedder.weight", "norm_out.linear_2.weight",
                  "time_caption_embed.timestep_embedder.linear_1.weight"),
}  # fmt: skip
_ZIMAGE_NEEDED = {
    "original": ("x_embedder.weight", "final_layer.linear.weight", "t_embedder.mlp.0.weight", "cap_embedder.1.weight"),
    "diffusers": ("all_x_embedder.2-1.weight", "all_final_layer.2-1.linear.weight", "t_embedder.mlp.0.weight",
                  "cap_embedder.1.weight"),
}  # fmt: skip


def is_marker(bare_name: str) -> bool:
    """Whether one tensor name (ComfyUI prefix removed) belongs only to these families."""
    return bare_name in ("txt_norm.weight", "cap_embedder.1.weight", _LUMINA2_CAPTION["diffusers"]) or (
        bare_name.startswith("txt_in.text_norm.")
    )


def detect(model: Mapping[str, TensorShape], name: str) -> tuple[str, str, str, tuple[int, int]] | None:
    """(family, variant, layout, (main blocks, refiner blocks)) of a Qwen-Image or Z-Image transformer whose
    tensors (prefix removed) are `model`; None when it is neither. ModelError naming `name` when it is one
    of them but damaged, or a relative Marble cannot run."""
    if "txt_in.text_norm.weight" in model:
        _require(model, _QWEN21_NEEDED, name, QWEN_IMAGE_21)
        layout = "original" if any(key.endswith(_QWEN21_FUSED) for key in model) else "diffusers"
        main = _contiguous(_blocks(model), "transformer_blocks", name, QWEN_IMAGE_21)
        return QWEN_IMAGE_21, "", layout, (main, 0)
    if "txt_norm.weight" in model:
        _require(model, _QWEN_NEEDED, name, QWEN_IMAGE)
        blocks = _blocks(model)
        return QWEN_IMAGE, "", "diffusers", (_contiguous(blocks, "transformer_blocks", name, QWEN_IMAGE), 0)
    if _LUMINA2_CAPTION["diffusers"] in model:
        return _lumina2(model, name, "diffusers")
    caption = model.get("cap_embedder.1.weight")
    if caption is None:
        return None
    wide = len(caption.shape) == 2 and caption.shape[1] == _LUMINA2_CAPTION_WIDTH
    if wide or not any(pad in model for pad in ("x_pad_token", "cap_pad_token")):
        return _lumina2(model, name, "original")
    layout = "diffusers" if any(key.startswith("all_x_embedder.") for key in model) else "original"
    _require(model, _ZIMAGE_NEEDED[layout], name, Z_IMAGE)
    for pad in ("x_pad_token", "cap_pad_token"):
        # diffusers uses these as plain tensors, never dequantised: a GGUF file must keep them as floats.
        if pad in model and model[pad].dtype.startswith(_GGUF_BLOCK_TYPES):
            raise ModelError(
                f"{name}: its {pad} is stored as {model[pad].dtype}, which diffusers cannot use (it must stay a "
                "float type). Get a GGUF conversion of this Z-Image model that keeps it in F16/F32."
            )
    return Z_IMAGE, "", layout, _refined_blocks(model, name, Z_IMAGE)


def _lumina2(model: Mapping[str, TensorShape], name: str, layout: str) -> tuple[str, str, str, tuple[int, int]]:
    _require(model, _LUMINA2_NEEDED[layout], name, LUMINA2)
    return LUMINA2, "", layout, _refined_blocks(model, name, LUMINA2)


def _refined_blocks(model: Mapping[str, TensorShape], name: str, family: str) -> tuple[int, int]:
    """(main, refiner) block counts of Z-Image's or Lumina's layout: `layers.N` and as many noise-refiner as
    context-refiner blocks, none missing (ModelError naming `name` otherwise)."""
    blocks = _blocks(model)
    main = _contiguous(blocks, "layers", name, family)
    refiners = _contiguous(blocks, "noise_refiner", name, family)
    if _contiguous(blocks, "context_refiner", name, family) != refiners:
        raise ModelError(
            f"{name} looks like {LABELS[family]} but has {refiners} noise-refiner and "
            f"{len(blocks['context_refiner'])} context-refiner blocks: the file is damaged or incomplete."
        )
    return main, refiners


def folder_family(class_name: str) -> str | None:
    return PIPELINES.get(class_name)


def folder_variant(class_name: str) -> str:
    """ "edit" / "edit-plus" for a Qwen-Image-Edit folder's pipeline class, else ""."""
    return _FOLDER_CLASSES.get(class_name, ("", ""))[1]


def metadata_variant(metadata: Mapping[str, str]) -> str:
    """The Edit variant a Qwen-Image single file's header metadata names (the ModelSpec
    `modelspec.architecture`, e.g. "qwen-image-edit-plus", "Qwen-Image-Edit-2509"), else ""."""
    architecture = str(metadata.get("modelspec.architecture", "")).lower()
    if "qwen-image-edit" not in architecture and "qwen_image_edit" not in architecture:
        return ""
    return EDIT_PLUS if any(mark in architecture for mark in ("plus", "2509", "2511")) else EDIT


def components_class(folder: Path) -> str:
    """The pipeline class a components folder (`--text-encoders`) names in its model_index.json, else ""."""
    try:
        index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}")
    except (ModelError, OSError, ValueError):
        return ""
    return str(index.get("_class_name", "")) if isinstance(index, dict) else ""


def folder_blocks(transformer: Mapping[str, object]) -> tuple[int, int]:
    """(main, refiner) block counts from a transformer/config.json of these families."""
    main = transformer.get("num_layers", transformer.get("n_layers"))
    refiners = transformer.get("n_refiner_layers", transformer.get("num_refiner_layers", 0))
    return (main if isinstance(main, int) else 0, refiners if isinstance(refiners, int) else 0)


def _blocks(model: Iterable[str]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for key in model:
        match = _BLOCK.match(key)
        if match:
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
    return found


def _require(model: Mapping[str, TensorShape], needed: Iterable[str], name: str, family: str) -> None:
    for tensor in needed:
        if tensor not in model:
            raise ModelError(
                f"{name} looks like {LABELS[family]} but {tensor} is missing: the file is damaged or incomplete."
            )


def _contiguous(blocks: Mapping[str, set[int]], kind: str, name: str, family: str) -> int:
    return contiguous(blocks.get(kind, set()), kind, name, LABELS[family])


def contiguous(present: set[int], kind: str, name: str, label: str) -> int:
    """How many `kind` blocks a file of `label` holds (their indices `present`); a ModelError naming `name` when
    there are none or one is missing between them."""
    if not present:
        raise ModelError(f"{name} looks like {label} but has no {kind}; the file is incomplete.")
    missing = sorted(set(range(max(present) + 1)) - present)
    if missing:
        raise ModelError(
            f"{name} looks like {label} but {kind}.{missing[0]} is missing "
            f"({len(missing)} of {max(present) + 1} blocks absent): the file is damaged or incomplete. "
            "Download it again."
        )
    return len(present)


def checked_blocks(model: Mapping[str, Any], needed: Iterable[str], kinds: tuple[str, str], name: str,
                   label: str) -> tuple[int, int]:  # fmt: skip
    """The `needed` tensors present (else a ModelError naming `name` and the first one missing) and how many blocks of
    each of the two `kinds` (`double_blocks` and `single_blocks` ...) a Flux-like file of `label` holds, contiguous."""
    for tensor in needed:
        if tensor not in model:
            raise ModelError(f"{name} looks like {label} but {tensor} is missing: the file is damaged or incomplete.")
    counts = []
    for kind in kinds:
        present = {int(parts[1]) for key in model if (parts := key.split(".", 2))[0] == kind and parts[1:2]
                   and parts[1].isdigit()}  # fmt: skip
        counts.append(contiguous(present, kind, name, label))
    return counts[0], counts[1]
