"""Diffusion-transformer (DiT) families told apart from their tensors: Flux.1, SD3/SD3.5, Chroma, and
Qwen-Image, Qwen-Image 2.1, Z-Image and Lumina (their rules in library/dit_qwen_zimage.py), Flux.2
(library/dit_flux2.py), FLUX.3 (library/dit_flux3.py), Krea 2 (library/dit_krea2.py), ERNIE-Image
(library/dit_ernie.py), Ovis-Image (library/dit_ovis.py), LongCat-Image (library/dit_longcat.py), HiDream-I1
(library/dit_hidream.py), AuraFlow (library/dit_auraflow.py), Sana (library/dit_sana.py) and PixArt
(library/dit_pixart.py).

Like checkpoint.py this reads headers only (safetensors JSON, GGUF tensor tables) and never imports
torch or diffusers. A file is judged by its tensor names and shapes, never by its name: a renamed
"flux1-dev.safetensors" that is really schnell is schnell.

Layouts recognised (docs/model-families.md):
- "bfl": Black Forest Labs' / Stability's original names (`double_blocks.N`, `joint_blocks.N`), bare
  or under ComfyUI's `model.diffusion_model.` prefix (with or without `text_encoders.*` and `vae.*`
  beside them: an "all-in-one" file);
- "diffusers": a transformer saved by diffusers (`transformer_blocks.N`, `x_embedder`);
- either of those inside a GGUF file (quantised transformer only).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import ModelError
from desktop.engine.library import (
    dit_auraflow,
    dit_ernie,
    dit_flux2,
    dit_flux3,
    dit_hidream,
    dit_krea2,
    dit_longcat,
    dit_ovis,
    dit_pixart,
    dit_qwen_zimage,
    dit_sana,
    dit_unsupported,
    quant_formats,
)

StrPath = str | os.PathLike[str]

COMFY_PREFIX = "model.diffusion_model."
GGUF_MAGIC = b"GGUF"

# Config folders under resources/configs/ for each (family, variant).
DIT_CONFIGS = {
    ("flux", "dev"): "flux-dev",
    ("flux", "schnell"): "flux-schnell",
    ("sd3", "medium"): "sd3-medium",
    ("sd3.5", "medium"): "sd3.5-medium",
    ("sd3.5", "large"): "sd3.5-large",
    ("chroma", ""): "chroma",
    **dit_qwen_zimage.CONFIGS,
    **dit_flux2.CONFIGS,
    **dit_flux3.CONFIGS,
    **dit_krea2.CONFIGS,
    **dit_ernie.CONFIGS,
    **dit_longcat.CONFIGS,
    **dit_ovis.CONFIGS,
    **dit_hidream.CONFIGS,
    **dit_auraflow.CONFIGS,
    **dit_sana.CONFIGS,
    **dit_pixart.CONFIGS,
}
DIT_LABELS = {
    "flux": "Flux.1",
    "sd3": "SD3",
    "sd3.5": "SD3.5",
    "chroma": "Chroma",
    **dit_qwen_zimage.LABELS,
    **dit_flux2.LABELS,
    **dit_flux3.LABELS,
    **dit_krea2.LABELS,
    **dit_ernie.LABELS,
    **dit_longcat.LABELS,
    **dit_ovis.LABELS,
    **dit_hidream.LABELS,
    **dit_auraflow.LABELS,
    **dit_sana.LABELS,
    **dit_pixart.LABELS,
}
_VARIANT_LABELS = {
    **dit_qwen_zimage.VARIANT_LABELS, **dit_longcat.VARIANT_LABELS, **dit_krea2.VARIANT_LABELS,
    **dit_ernie.VARIANT_LABELS, **dit_hidream.VARIANT_LABELS,
}
# Variants a file's tensors tell (never the user's to choose): their labels only.
_TOLD_VARIANT_LABELS = {**dit_sana.VARIANT_LABELS, **dit_pixart.VARIANT_LABELS, **dit_flux3.VARIANT_LABELS}
# What an all-in-one single file must hold beside the transformer to need no --text-encoders folder
# (ComfyUI's `text_encoders.<name>.*` and `vae.*`); SD3's other encoders are optional in diffusers.
SELF_CONTAINED = {"flux": ("clip_l", "t5xxl", "vae"), "chroma": ("t5xxl", "vae"),
                  dit_auraflow.AURAFLOW: (dit_auraflow.ENCODER, "vae")}
# fp8 safetensors transformers (safetensors' dtype names): the torch storage dtype they keep while
# loaded (layer-wise casting computes each layer in bf16/fp32) and how library rows name them.
FP8_STORAGE = {"F8_E4M3": ("float8_e4m3fn", "fp8 e4m3fn"), "F8_E5M2": ("float8_e5m2", "fp8 e5m2")}
# SD3.5 large has 38 joint blocks of width 2432; medium (3 and 3.5) 24 of width 1536.
_SD3_LARGE_DEPTH = 38

_BLOCK = re.compile(
    r"^(double_blocks|single_blocks|joint_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)\."
)


@dataclass(frozen=True)
class DitInfo:
    """What the tensors say about a DiT file or folder."""

    family: str  # "flux" | "sd3" | "sd3.5" | "chroma" | "qwen-image" | "z-image" | ... (DIT_LABELS' keys)
    variant: str  # "dev" | "schnell" | "medium" | "large" | "edit" | "edit-plus" (Qwen-Image-Edit) | ""
    layout: str  # "bfl" | "diffusers" | "original" (Z-Image's own names)
    parameters: int  # transformer parameters (elements), for the library row
    dtype: str  # the most common tensor type: "BF16", "F16", "F8_E4M3", "Q8_0", "Q4_K" ...
    quantization: str | None  # GGUF type name for GGUF files, else None
    components: tuple[str, ...]  # what the file holds: "transformer", "clip_l", "clip_g", "t5xxl", "pile_t5xl", "vae"
    blocks: tuple[int, ...]  # (double/joint, single) block counts
    # Flux Fill: the transformer also reads the masked image's latents and the mask (an inpainting model).
    fill: bool = False
    # BFL's Flux.1 Canny / Depth dev: the transformer also reads a control picture's latents (FluxControlPipeline);
    # the picture comes from a control unit naming the model's own input (library/control.py's BUILT_IN).
    control_input: bool = False
    # The file holds a text encoder in ComfyUI's scaled fp8, which diffusers' single-file loader would read
    # without its scales: its encoders must come from a folder.
    scaled_encoders: bool = False

    @property
    def config_name(self) -> str | None:
        return DIT_CONFIGS.get((self.family, self.variant))

    @property
    def label(self) -> str:
        base = DIT_LABELS[self.family]
        variant = {**_VARIANT_LABELS, **_TOLD_VARIANT_LABELS}.get((self.family, self.variant), self.variant)
        name = f"{base} {variant}" if variant else base
        name = f"{name} Fill" if self.fill else name
        name = f"{name} Canny/Depth" if self.control_input else name
        return f"{name} ({self.quantization})" if self.quantization else name

    @property
    def fp8_storage(self) -> str | None:
        """torch's name of the float8 type a fp8 safetensors transformer stays stored in, else None."""
        return FP8_STORAGE[self.dtype][0] if self.quantization is None and self.dtype in FP8_STORAGE else None

    @property
    def scaled_fp8(self) -> bool:
        """A ComfyUI scaled-fp8 file: weights times their `scale_weight`, dequantised at load."""
        return self.quantization is None and self.dtype.endswith(quant_formats.SCALED_SUFFIX)

    @property
    def bitsandbytes(self) -> str | None:
        """The bitsandbytes format code (quant_formats.BNB_NF4 ...) of pre-quantised weights, else None."""
        return self.dtype if self.dtype in quant_formats.BITSANDBYTES else None

    @property
    def needs_components(self) -> bool:
        """Whether text encoders and a VAE must come from elsewhere (a transformer-only file)."""
        if self.scaled_encoders:
            return True
        return not set(SELF_CONTAINED.get(self.family, ("clip_l", "vae"))) <= set(self.components)


@dataclass(frozen=True)
class TensorShape:
    dtype: str
    shape: tuple[int, ...]


# How many reference images each model reads beside its prompt (reference_image_limit): Flux.2 dev up to
# 10 (BFL's model card; BFL recommends at most 6), Klein up to 4 (BFL's editing guide); Qwen-Image-Edit
# Plus 2 after its source image (three pictures in all, as the model was trained).
_FLUX2_DEV_REFERENCES = 10
_FLUX2_KLEIN_REFERENCES = 4
_EDIT_PLUS_REFERENCES = 2
_QWEN21_REFERENCES = 10  # Qwen-Image 2.1 edits by instruction from up to 10 images (Qwen's model card)
_FLUX3_REFERENCES = 10  # FLUX.3's editing: up to 10 references (diffusers' FLUX.3 blocks take that many)
# The most any model takes: a request holding more is refused before any model is known.
MAX_MODEL_REFERENCES = max(_FLUX2_DEV_REFERENCES, _FLUX2_KLEIN_REFERENCES, _EDIT_PLUS_REFERENCES, _QWEN21_REFERENCES,
                           _FLUX3_REFERENCES)


def reference_image_limit(info: DitInfo | None) -> int:
    """How many reference images (request field `reference_images`) the model `info` reads; 0 = none (every
    UNet model, `info` None, and every other DiT). The one place this rule lives: request checks, the
    backend and the window ask it."""
    if info is None:
        return 0
    if info.family == dit_flux2.FLUX2:
        return _FLUX2_DEV_REFERENCES if info.variant == "dev" else _FLUX2_KLEIN_REFERENCES
    if info.family == dit_qwen_zimage.QWEN_IMAGE and info.variant == dit_qwen_zimage.EDIT_PLUS:
        return _EDIT_PLUS_REFERENCES
    if info.family == dit_qwen_zimage.QWEN_IMAGE_21:
        return _QWEN21_REFERENCES
    if info.family == dit_flux3.FLUX3:
        return _FLUX3_REFERENCES
    if info.family == "flux" and info.variant == "dev" and not (info.fill or info.control_input):
        # FLUX.1 Kontext dev (the same tensors as Flux.1 dev: any dev model runs Kontext's pipeline) reads one.
        return 1
    return 0


def looks_like_dit(names: Iterable[str]) -> bool:
    for name in names:
        bare = name.removeprefix(COMFY_PREFIX)
        families = (dit_qwen_zimage, dit_flux2, dit_flux3, dit_krea2, dit_ernie, dit_ovis, dit_longcat, dit_hidream,
                    dit_auraflow, dit_sana, dit_pixart, dit_unsupported)  # fmt: skip
        if any(module.is_marker(bare) for module in families):
            return True
        if bare.startswith(
            ("double_blocks.", "joint_blocks.", "single_transformer_blocks.", "distilled_guidance_layer.")
        ):
            return True
        if bare.startswith("context_embedder.") and not name.startswith("text_encoders."):
            return True
    return False


def detect_dit(tensors: Mapping[str, TensorShape], *, name: str, quantization: str | None = None) -> DitInfo:
    """The family, variant and layout of a DiT state dict described by `tensors` (name -> dtype, shape).

    Raises ModelError naming `name` when the tensors are a DiT but incomplete or of an unknown kind."""
    comfy = any(key.startswith(COMFY_PREFIX) for key in tensors)
    model = {key.removeprefix(COMFY_PREFIX): value for key, value in tensors.items() if key.startswith(COMFY_PREFIX)}
    if not comfy:
        model = {
            key: value
            for key, value in tensors.items()
            if not key.startswith(("text_encoders.", "vae.", "first_stage_model."))
        }
    # A family Marble cannot run yet, by its name: not taken for a damaged model of a family it runs.
    dit_unsupported.refuse(model, name)
    components = ["transformer"]
    scaled_encoders = False
    for encoder in ("clip_l", "clip_g", "t5xxl", dit_auraflow.ENCODER):
        held = [key for key in tensors if key.startswith(f"text_encoders.{encoder}.")]
        # diffusers' single-file loader would read a scaled-fp8 encoder without its scales: such an encoder
        # counts as absent, and the file's text encoders come from a folder (--text-encoders) instead.
        if held and quant_formats.is_scaled_fp8(held):
            scaled_encoders = True
        elif held:
            components.append(encoder)
    if any(key.startswith(("vae.", "first_stage_model.")) for key in tensors):
        components.append("vae")
    blocks = _block_indices(model)
    unsupported = quant_formats.block_scaled(model)
    if unsupported is not None:
        raise ModelError(
            f"{name}: its weights use a block-scaled quantisation ({unsupported}: ComfyUI's nvfp4 or mxfp8) that "
            "Marble cannot load yet. Use a GGUF, fp8 or bf16 file of this model."
        )
    # Sana and Ovis-Image before LongCat-Image: Sana Sprint's time embedding has LongCat-Image's name
    # (`time_embed.timestep_embedder`), and Ovis-Image's BFL names carry Qwen-Image's `txt_norm` and lack Flux.1's
    # vector_in as LongCat-Image's do.
    # PixArt before SD3's diffusers names, which its own (`transformer_blocks`, `pos_embed.proj`) share.
    other = (dit_sana.detect(model, name) or dit_pixart.detect(model, name) or dit_ovis.detect(model, name)
             or dit_qwen_zimage.detect(model, name)
             or dit_flux2.detect(model, name) or dit_flux3.detect(model, name)
             or dit_krea2.detect(model, name) or dit_ernie.detect(model, name)
             or dit_longcat.detect(model, name) or dit_hidream.detect(model, name)
             or dit_auraflow.detect(model, name))  # fmt: skip
    if other is not None:
        family, variant, layout, counts = other
    elif "double_blocks" in blocks:
        family, variant, layout = _flux_bfl(model, name)
        counts = (
            _check_contiguous(blocks, "double_blocks", name, family),
            _check_contiguous(blocks, "single_blocks", name, family),
        )
    elif "joint_blocks" in blocks:
        _require(model, ("x_embedder.proj.weight", "context_embedder.weight", "final_layer.linear.weight"), name, "SD3")
        family, variant = _sd3_bfl(model, blocks["joint_blocks"])
        layout = "bfl"
        counts = (_check_contiguous(blocks, "joint_blocks", name, "SD3"), 0)
    elif "single_transformer_blocks" in blocks:
        family, variant = _flux_diffusers(model)
        layout = "diffusers"
        counts = (
            _check_contiguous(blocks, "transformer_blocks", name, family),
            _check_contiguous(blocks, "single_transformer_blocks", name, family),
        )
    elif "transformer_blocks" in blocks and "pos_embed.proj.weight" in model:
        family, variant = _sd3_diffusers(model, blocks["transformer_blocks"])
        layout = "diffusers"
        counts = (_check_contiguous(blocks, "transformer_blocks", name, "SD3"), 0)
    else:
        raise ModelError(
            f"{name}: unknown diffusion transformer (not Flux.1, SD3/SD3.5, Chroma, Qwen-Image, Z-Image, Lumina, "
            "Flux.2, FLUX.3, Krea 2, ERNIE-Image, Ovis-Image, LongCat-Image, HiDream-I1, AuraFlow, Sana or PixArt)."
        )
    # Scales and quantisation states are not weights: the type shown is the weights' (or the format's).
    common = _common_dtype(info for key, info in model.items() if not quant_formats.is_bookkeeping(key))
    code = quant_formats.weight_format(model, common)
    parameters = quant_formats.parameters(model, code)
    return DitInfo(
        family=family, variant=variant, layout=layout, parameters=parameters,
        dtype=quantization or code, quantization=quantization,
        components=tuple(components), blocks=counts, fill=family == "flux" and is_fill_shape(model),
        control_input=family == "flux" and is_control_input_shape(model), scaled_encoders=scaled_encoders,
    )  # fmt: skip


def is_fill_shape(model: Mapping[str, TensorShape]) -> bool:
    """Flux Fill's input layer takes the noise, the masked image's latents and the mask (384 channels
    for 64 out); a plain Flux reads as many as it writes, a Depth/Canny model twice as many."""
    channels = _io_channels(model)
    return channels is not None and is_fill_channels(*channels)


def is_fill_channels(in_channels: object, out_channels: object) -> bool:
    return isinstance(in_channels, int) and isinstance(out_channels, int) and in_channels > 2 * out_channels


def is_control_input_shape(model: Mapping[str, TensorShape]) -> bool:
    """BFL's Flux.1 Canny and Depth dev read a control picture's latents beside the noise: twice the channels
    they write."""
    channels = _io_channels(model)
    return channels is not None and is_control_input_channels(*channels)


def is_control_input_channels(in_channels: object, out_channels: object) -> bool:
    return isinstance(in_channels, int) and isinstance(out_channels, int) and in_channels == 2 * out_channels


def _io_channels(model: Mapping[str, TensorShape]) -> tuple[int, int] | None:
    """The channels a Flux transformer reads and writes, in BFL's or diffusers' names."""
    for inputs, outputs in (("img_in.weight", "final_layer.linear.weight"), ("x_embedder.weight", "proj_out.weight")):
        if inputs in model and outputs in model:
            return model[inputs].shape[-1], model[outputs].shape[0]
    return None


def shown_dtype(dtype: str | None) -> str | None:
    """A weight type as library rows show it: "fp8 e4m3fn" for safetensors' F8_E4M3, "fp8 e4m3fn scaled"
    for ComfyUI's scaled fp8, "nf4 (bitsandbytes)", others as stored."""
    if dtype is None:
        return None
    if dtype == quant_formats.MIXED_SCALED:
        return "fp8 scaled (mixed precision)"
    if dtype == quant_formats.INT8_SCALED:
        return quant_formats.shown_format(dtype)
    plain = dtype.removesuffix(quant_formats.SCALED_SUFFIX)
    if plain in FP8_STORAGE:
        return FP8_STORAGE[plain][1] + (" scaled" if plain != dtype else "")
    return quant_formats.shown_format(dtype) or dtype


def _block_indices(model: Mapping[str, TensorShape]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for key in model:
        match = _BLOCK.match(key)
        if match:
            found.setdefault(match.group(1), set()).add(int(match.group(2)))
    return found


def _check_contiguous(blocks: Mapping[str, set[int]], kind: str, name: str, family: str) -> int:
    present = blocks.get(kind, set())
    if not present:
        raise ModelError(
            f"{name} looks like {DIT_LABELS.get(family, family)} but has no {kind}; the file is incomplete."
        )
    missing = sorted(set(range(max(present) + 1)) - present)
    if missing:
        raise ModelError(
            f"{name} looks like {DIT_LABELS.get(family, family)} but {kind}.{missing[0]} is missing "
            f"({len(missing)} of {max(present) + 1} blocks absent): the file is damaged or incomplete. "
            "Download it again."
        )
    return len(present)


def _flux_bfl(model: Mapping[str, TensorShape], name: str) -> tuple[str, str, str]:
    if "distilled_guidance_layer.in_proj.weight" in model:
        return "chroma", "", "bfl"
    for needed in ("img_in.weight", "txt_in.weight", "final_layer.linear.weight", "time_in.in_layer.weight"):
        if needed not in model:
            raise ModelError(f"{name} looks like Flux.1 but {needed} is missing: the file is damaged or incomplete.")
    return "flux", "dev" if "guidance_in.in_layer.weight" in model else "schnell", "bfl"


def _flux_diffusers(model: Mapping[str, TensorShape]) -> tuple[str, str]:
    if any(key.startswith("distilled_guidance_layer.") for key in model):
        return "chroma", ""
    guided = any(key.startswith("time_text_embed.guidance_embedder.") for key in model)
    return "flux", "dev" if guided else "schnell"


def _require(model: Mapping[str, TensorShape], needed: tuple[str, ...], name: str, family: str) -> None:
    for tensor in needed:
        if tensor not in model:
            raise ModelError(f"{name} looks like {family} but {tensor} is missing: the file is damaged or incomplete.")


def _sd3_bfl(model: Mapping[str, TensorShape], joint: set[int]) -> tuple[str, str]:
    depth = max(joint) + 1
    qk_norm = any(".attn.ln_q." in key for key in model)
    if depth >= _SD3_LARGE_DEPTH:
        return "sd3.5", "large"
    return ("sd3.5" if qk_norm or any(".attn2." in key for key in model) else "sd3"), "medium"


def _sd3_diffusers(model: Mapping[str, TensorShape], blocks: set[int]) -> tuple[str, str]:
    depth = max(blocks) + 1
    qk_norm = any(".attn.norm_q." in key for key in model)
    if depth >= _SD3_LARGE_DEPTH:
        return "sd3.5", "large"
    return ("sd3.5" if qk_norm or any(".attn2." in key for key in model) else "sd3"), "medium"


def _common_dtype(infos: Iterable[TensorShape]) -> str:
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.dtype] = counts.get(info.dtype, 0) + math.prod(info.shape)
    return max(counts, key=counts.__getitem__) if counts else "?"


# --------------------------------------------------------------------------------------------------
# GGUF


def is_gguf(head: bytes) -> bool:
    return head.startswith(GGUF_MAGIC)


# The tensor types a diffusers GGUF transformer may hold (diffusers' dequantisation table, and the
# plain float types). Anything else (a row of I32, a type from a newer llama.cpp) cannot be loaded.
_GGUF_LOADABLE = {
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
}  # fmt: skip


def read_gguf_tensors(path: StrPath, *, name: str | None = None) -> tuple[dict[str, TensorShape], str]:
    """name -> (type, shape in PyTorch order) of a GGUF file, and its main quantisation type.

    Raises ModelError naming the file for a damaged file or a tensor type diffusers cannot dequantise."""
    path = Path(path)
    name = name or path.name
    try:
        import gguf  # numpy-only reader; imported here so listing models does not pay for it
    except ImportError as error:  # pragma: no cover - a dependency in pyproject
        raise ModelError(f"{name} is a GGUF file, but the gguf package is not installed.") from error
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError, TypeError) as error:
        raise ModelError(f"{name} is not a readable GGUF file ({error}); download it again.") from None
    tensors: dict[str, TensorShape] = {}
    weights: dict[str, int] = {}
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in _GGUF_LOADABLE:
            raise ModelError(
                f"{name}: tensor {tensor.name!r} has GGUF type {type_name}, which Marble cannot dequantise "
                f"(supported: {', '.join(sorted(_GGUF_LOADABLE))}). Get another quantisation of this model."
            )
        # GGUF stores dimensions fastest-first; PyTorch lists them slowest-first.
        shape = tuple(int(d) for d in reversed(list(tensor.shape)))
        tensors[tensor.name] = TensorShape(type_name, shape)
        if len(shape) >= 2:
            weights[type_name] = weights.get(type_name, 0) + int(tensor.n_elements)
    main = max(weights, key=weights.__getitem__) if weights else "F32"
    return tensors, main


def detect_gguf(path: StrPath, *, name: str | None = None) -> DitInfo:
    name = name or Path(path).name
    tensors, quantization = read_gguf_tensors(path, name=name)
    if not looks_like_dit(tensors):
        raise ModelError(
            f"{name}: a GGUF file, but not a diffusion transformer Marble knows ({', '.join(DIT_LABELS.values())})."
        )
    return detect_dit(tensors, name=name, quantization=quantization)


# --------------------------------------------------------------------------------------------------
# Diffusers folders


_PIPELINES = {
    "FluxPipeline": "flux",
    "FluxFillPipeline": "flux",
    "FluxControlPipeline": "flux",  # BFL's Canny / Depth dev folders
    "FluxKontextPipeline": "flux",  # BFL's Kontext dev folder: Flux.1 dev's tensors
    "StableDiffusion3Pipeline": "sd3",
    "ChromaPipeline": "chroma",
    **dit_qwen_zimage.PIPELINES,
    **dit_flux2.PIPELINES,
    **dit_flux3.PIPELINES,
    **dit_krea2.PIPELINES,
    **dit_ernie.PIPELINES,
    **dit_longcat.PIPELINES,
    **dit_ovis.PIPELINES,
    **dit_hidream.PIPELINES,
    **dit_auraflow.PIPELINES,
    **dit_sana.PIPELINES,
    **dit_pixart.PIPELINES,
}


def dit_pipeline_family(class_name: str) -> str | None:
    return _PIPELINES.get(class_name)


def variant_choices(family: str | None) -> dict[str, str]:
    """The variants a user may choose for a model file of `family` whose tensors cannot say which it is (Qwen-Image's
    and LongCat-Image's Edit models, Krea 2 Turbo and ERNIE-Image Turbo have their base models' tensors), each with its
    label; "" is the file as its own metadata says. {} for every other family (its tensors tell)."""
    base = DIT_LABELS.get(family or "")
    variants = {variant: f"{base} {label}" for (owner, variant), label in _VARIANT_LABELS.items() if owner == family}
    return {"": f"{base} (as the file says)", **variants} if variants else {}


def folder_says_variant(family: str | None) -> bool:
    """Whether a diffusers folder of `family` says which of its variants it holds (Qwen-Image's and LongCat-Image's
    Edit folders by their pipeline class, Krea 2 Turbo's by `is_distilled`, HiDream-I1's releases by their scheduler);
    False for ERNIE-Image, whose Turbo folder has the base's pipeline and configs, so the user marks it as a file is
    marked."""
    return family in (dit_qwen_zimage.QWEN_IMAGE, dit_longcat.LONGCAT, dit_krea2.KREA2, dit_hidream.HIDREAM)


def edit_variant(family: str, class_name: str) -> str:
    """The instruction-edit variant ("edit", "edit-plus") a diffusers folder of pipeline `class_name` makes a model of
    `family`, else "": Qwen-Image-Edit's and LongCat-Image-Edit's transformers are their base models' (a Qwen-Image
    Edit folder makes nothing of a LongCat-Image file, nor the other way round)."""
    if family == dit_qwen_zimage.QWEN_IMAGE:
        return dit_qwen_zimage.folder_variant(class_name)
    if family == dit_longcat.LONGCAT:
        return dit_longcat.folder_variant(class_name)
    return ""


def metadata_variant(family: str, metadata: Mapping[str, str]) -> str:
    """The instruction-edit variant a single file's header metadata names for a model of `family` (its ModelSpec
    `modelspec.architecture`), else "": the only way a file of Qwen-Image-Edit or LongCat-Image-Edit says itself."""
    if family == dit_qwen_zimage.QWEN_IMAGE:
        return dit_qwen_zimage.metadata_variant(metadata)
    if family == dit_longcat.LONGCAT:
        return dit_longcat.metadata_variant(metadata)
    return ""


def detect_dit_folder(
    index: Mapping[str, object], transformer: Mapping[str, object], class_name: str,
    scheduler: Mapping[str, object] | None = None,
) -> tuple[str, str]:
    """(family, variant) of a diffusers folder from model_index.json, transformer/config.json and (HiDream-I1's
    releases differ by it alone) scheduler/scheduler_config.json."""
    family = _PIPELINES[class_name]
    if family == dit_hidream.HIDREAM:
        return family, dit_hidream.folder_variant(scheduler)
    if family == dit_sana.SANA:
        return family, dit_sana.folder_variant(class_name)
    if family == dit_pixart.PIXART:
        return family, dit_pixart.folder_variant(class_name)
    if dit_qwen_zimage.folder_family(class_name) is not None or family == dit_longcat.LONGCAT:
        return family, edit_variant(family, class_name)
    if family == dit_flux2.FLUX2:
        return family, dit_flux2.folder_variant(transformer)
    if family == dit_flux3.FLUX3:
        return family, dit_flux3.folder_variant(transformer, class_name)
    if family == dit_krea2.KREA2:
        return family, dit_krea2.folder_variant(index)
    if family == "flux":
        if transformer.get("_class_name") == "ChromaTransformer2DModel":
            return "chroma", ""
        return "flux", "dev" if transformer.get("guidance_embeds") else "schnell"
    if family == "sd3":
        depth = transformer.get("num_layers")
        if isinstance(depth, int) and depth >= _SD3_LARGE_DEPTH:
            return "sd3.5", "large"
        if transformer.get("qk_norm") or transformer.get("dual_attention_layers"):
            return "sd3.5", "medium"
        return "sd3", "medium"
    return family, ""
