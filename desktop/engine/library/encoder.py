"""Text encoders as separate library components, judged from their tensors without torch.

Creators download a transformer-only Flux/SD3/Chroma file and the text encoders apart, as ComfyUI keeps
them: `clip_l.safetensors` (CLIP ViT-L text model), `clip_g.safetensors` (OpenCLIP bigG text model, in
the transformers layout SD3 ships or SDXL's OpenCLIP layout), `t5xxl_fp16.safetensors` /
`t5xxl_fp8_e4m3fn.safetensors`, ComfyUI's scaled `t5xxl_fp8_e4m3fn_scaled.safetensors` (the T5 v1.1 XXL
encoder), T5 GGUF files (llama.cpp's `enc.blk.N` names, as city96's `t5-v1_1-xxl-encoder-Q8_0.gguf`)
and encoders transformers saved with bitsandbytes (load_in_4bit / load_in_8bit: nf4, fp4 or int8 weights
beside their quantisation states, named in library/quant_formats.py), dequantised at load as bitsandbytes
model files are. The LLM text encoders of Qwen-Image (Qwen2.5-VL 7B: `qwen_2.5_vl_7b.safetensors`,
`_fp8_scaled`, with or without its `visual.*` vision tower) and Z-Image (Qwen3 4B: `qwen_3_4b.safetensors`)
are components too (library/encoder_qwen.py). One file serves every model that
uses it: the library stores it once, and a request names it (`text_encoders="clip_l,t5xxl_fp16"`).

What a file is comes from its tensor names and shapes, never from its file name. Which pipeline slot
an encoder fills is decided at load (backends/encoder_components.py) from the slot's config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from desktop.engine.errors import ModelError
from desktop.engine.library import quant_formats
from desktop.engine.library.checkpoint import SafetensorsHeader
from desktop.engine.library.encoder_qwen import (
    GEMMA2,
    LLAMA3,
    MISTRAL3,
    QWEN3,
    QWEN3VL,
    QWEN25_VL,
    QWEN_NAMED,
    TEKKEN_TENSOR,
    inspect_qwen,
    inspect_qwen_gguf,
)

# Prefixes a text encoder's tensors carry on their own or cut out of a ComfyUI / SDXL checkpoint.
_PREFIXES = (
    "", "transformer.", "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.",
    "text_encoders.t5xxl.transformer.", "text_encoders.pile_t5xl.transformer.", "conditioner.embedders.0.transformer.",
    "conditioner.embedders.1.model.",
    "cond_stage_model.transformer.",
)  # fmt: skip
_CLIP_PROBE = "text_model.embeddings.token_embedding.weight"
_OPENCLIP_PROBE = "token_embedding.weight"
_OPENCLIP_BLOCK = "transformer.resblocks.0.attn.in_proj_weight"
_T5_PROBE = "encoder.block.0.layer.0.SelfAttention.q.weight"
_T5_NORM = "encoder.block.0.layer.0.layer_norm.weight"
_T5_GGUF_PROBE = "enc.blk.0.attn_q.weight"
# transformers >= 5.6 saves CLIPTextModel without its `text_model.` level (a diffusers folder saved by it).
_FLAT_CLIP_PROBE = "embeddings.token_embedding.weight"
_FLAT_CLIP_LAYER = "encoder.layers.0.self_attn.q_proj.weight"
_LAYER = re.compile(r"(?:encoder\.layers|transformer\.resblocks|encoder\.block|enc\.blk)\.(\d+)\.")
# The published widths: CLIP ViT-L 768, OpenCLIP bigG 1280, T5 v1.1 XXL 4096.
# Pile-T5-XL (EleutherAI's UMT5, AuraFlow's and Pony V7's encoder) is the one T5 of width 2048 a model here reads.
_NAMED = {("clip", 768): "CLIP-L", ("clip", 1280): "CLIP-G (OpenCLIP bigG)", ("t5", 4096): "T5-XXL",
          ("t5", 2048): "Pile-T5-XL", **QWEN_NAMED}
# Ministral 3 3B (ERNIE-Image's encoder) is a Mistral by its tensors, told from Mistral Small by its width.
MINISTRAL3 = "ministral3"
_MINISTRAL3_3B = (MISTRAL3, 3072)
# Plain attention at an unpublished width may be a Mistral or a Llama: only a carried tekken tokenizer says.
_KIND_LABELS = {"clip": "CLIP", "t5": "T5", "qwen2.5-vl": "Qwen2.5-VL", "qwen3": "Qwen3", "mistral3": "Mistral / Llama",
                "gemma2": "Gemma 2", "qwen3vl": "Qwen3-VL", LLAMA3: "Llama 3"}  # fmt: skip
# Marble loads these storage types (GGUF: the ones gguf's numpy dequantiser reads).
FP8_TYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class EncoderInfo:
    """What a text-encoder file holds: its kind ("clip" | "t5"), width, depth and storage."""

    kind: str  # "clip" | "t5" | "qwen2.5-vl" | "qwen3" | "mistral3" | "gemma2"
    width: int
    layers: int
    layout: str  # "transformers" | "openclip" | "gguf"
    prefix: str
    dtype: str  # the main weight type: "F16", "BF16", "F8_E4M3", ... or a GGUF type ("Q8_0")
    parameters: int
    projection: bool = False  # a CLIP with its text projection (SD3's and SDXL's second encoder have one)
    vision: bool = False  # a Qwen2.5-VL with its vision tower (Qwen-Image-Edit shows it the source image)
    tokenizer: bool = False  # a ComfyUI Mistral file carrying its tekken tokenizer (`tekken_model`)

    @property
    def family(self) -> str:
        """"clip-l", "clip-g", "t5-xxl" for the published sizes; "clip" or "t5" for others (tests, variants);
        the kind for the LLMs ("qwen3", "mistral3"), but "ministral3" for Ministral 3 3B (ERNIE-Image's), so that
        the window offers Flux.2 dev's Mistral Small and it each to its own model."""
        named = _NAMED.get((self.kind, self.width))
        if self.kind == MISTRAL3:
            return MINISTRAL3 if (self.kind, self.width) == _MINISTRAL3_3B else self.kind
        return named.split(" ")[0].lower() if named else self.kind

    @property
    def label(self) -> str:
        named = _NAMED.get((self.kind, self.width))
        tower = " with its vision tower" if self.vision else " with its tokenizer" if self.tokenizer else ""
        if named:
            return f"{named} text encoder{tower}"
        kind = "Mistral" if self.kind == MISTRAL3 and self.tokenizer else _KIND_LABELS.get(self.kind, self.kind)
        return f"{kind} text encoder (width {self.width}){tower}"

    @property
    def scaled(self) -> bool:
        """ComfyUI's scaled fp8 (`t5xxl_fp8_e4m3fn_scaled`): each weight times its scale, dequantised at load."""
        return self.dtype.endswith(quant_formats.SCALED_SUFFIX)

    @property
    def fp8_storage(self) -> str | None:
        """torch's name of the file's fp8 type ("float8_e4m3fn"), for layer-wise upcasting; else None."""
        return FP8_TYPES.get(self.dtype) if self.layout != "gguf" else None


def inspect_encoder(header: SafetensorsHeader, name: str = "this file") -> EncoderInfo:
    """The text encoder a safetensors file holds; ModelError naming the file when it holds none."""
    shapes = {key: info.shape for key, info in header.tensors.items()}
    dtypes = {key: info.dtype for key, info in header.tensors.items()}
    if any(key.startswith(("model.diffusion_model.", "first_stage_model.")) for key in shapes):
        raise ModelError(f"{name} is not a text encoder on its own: {_what_else(shapes)}")
    bitsandbytes = quant_formats.bitsandbytes_kind(shapes)
    if bitsandbytes is not None:
        return _with_bitsandbytes(_inspect_stored(header, shapes, dtypes, name), header, bitsandbytes)
    return _inspect_stored(header, shapes, dtypes, name)


def _inspect_stored(
    header: SafetensorsHeader, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], name: str
) -> EncoderInfo:
    qwen = inspect_qwen(shapes, dtypes, name)
    if qwen is not None:
        kind, width, layers, prefix, parameters, vision = qwen
        info = EncoderInfo(kind, width, layers, "transformers", prefix, _main_dtype(shapes, dtypes), parameters,
                           vision=vision, tokenizer=TEKKEN_TENSOR in shapes)  # fmt: skip
        if quant_formats.is_scaled_fp8(shapes):
            _refuse_block_scaled(header, name)
            return replace(info, dtype=quant_formats.weight_format(header.tensors, info.dtype))
        return info
    if quant_formats.is_scaled_fp8(shapes):
        _refuse_block_scaled(header, name)
        info = _inspect(shapes, dtypes, name, gguf=False)
        # "F8_E4M3_SCALED" (or "MIXED_SCALED"): shown as scaled fp8, never kept in fp8 (the scale is per weight).
        return replace(info, dtype=quant_formats.weight_format(header.tensors, info.dtype))
    return _inspect(shapes, dtypes, name, gguf=False)


def _with_bitsandbytes(info: EncoderInfo, header: SafetensorsHeader, kind: str) -> EncoderInfo:
    """A file transformers saved with load_in_4bit / load_in_8bit: its packed weights and their quantisation
    states found by the names above, shown as "nf4 (bitsandbytes)", its parameters counted unpacked."""
    # A Qwen file's lm_head and vision tower sit beside its prefix and count, as in inspect_qwen.
    prefix = "" if info.kind in (QWEN25_VL, QWEN3, QWEN3VL, MISTRAL3, GEMMA2, LLAMA3) else info.prefix
    own = {key: value for key, value in header.tensors.items() if key.startswith(prefix)}
    return replace(info, dtype=kind, parameters=quant_formats.parameters(own, kind))


def _refuse_block_scaled(header: SafetensorsHeader, name: str) -> None:
    blocked = quant_formats.block_scaled(header.tensors)
    if blocked is not None:
        raise ModelError(
            f"{name} is block-scaled ({blocked}: nvfp4 or mxfp8), which Marble cannot dequantise. Use the "
            "fp16, fp8 or scaled fp8 file of this encoder."
        )


def inspect_encoder_gguf(tensors: Mapping[str, object], quantization: str, name: str) -> EncoderInfo:
    """The T5 encoder of a GGUF file (llama.cpp names); `tensors` as library.dit.read_gguf_tensors gives."""
    shapes = {key: tuple(value.shape) for key, value in tensors.items()}  # type: ignore[attr-defined]
    dtypes = {key: str(value.dtype) for key, value in tensors.items()}  # type: ignore[attr-defined]
    info = _inspect(shapes, dtypes, name, gguf=True)
    return EncoderInfo(info.kind, info.width, info.layers, "gguf", "", quantization, info.parameters)


def _inspect(
    shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], name: str, *, gguf: bool
) -> EncoderInfo:
    if gguf:
        qwen = inspect_qwen_gguf(shapes, name)
        if qwen is not None:
            kind, width, layers, parameters = qwen
            return EncoderInfo(kind, width, layers, "gguf", "", "GGUF", parameters)
        if _T5_GGUF_PROBE not in shapes or "token_embd.weight" not in shapes:
            raise ModelError(
                f"{name} is a GGUF file but no T5 or Qwen text encoder (no enc.blk.0.attn_q / blk.0.attn_q / "
                "token_embd tensors): Marble reads T5 and Qwen encoders from GGUF; a GGUF transformer goes into "
                "the models library."
            )
        width = shapes["token_embd.weight"][-1]
        return _info("t5", width, shapes, dtypes, "gguf", "", name=name)
    for prefix in _PREFIXES:
        if prefix + _CLIP_PROBE in shapes:
            width = shapes[prefix + _CLIP_PROBE][-1]
            projection = prefix + "text_projection.weight" in shapes
            return _info("clip", width, shapes, dtypes, "transformers", prefix, projection, name=name)
        if prefix + _FLAT_CLIP_PROBE in shapes and prefix + _FLAT_CLIP_LAYER in shapes:
            width = shapes[prefix + _FLAT_CLIP_PROBE][-1]
            projection = prefix + "text_projection.weight" in shapes
            return _info("clip", width, shapes, dtypes, "transformers", prefix, projection, name=name)
        if prefix + _OPENCLIP_PROBE in shapes and prefix + _OPENCLIP_BLOCK in shapes:
            width = shapes[prefix + _OPENCLIP_PROBE][-1]
            projection = prefix + "text_projection" in shapes
            return _info("clip", width, shapes, dtypes, "openclip", prefix, projection, name=name)
        if prefix + _T5_PROBE in shapes:
            # The first norm's length: a 4-bit file's q weight is packed into one column.
            width = shapes.get(prefix + _T5_NORM, shapes[prefix + _T5_PROBE])[-1]
            return _info("t5", width, shapes, dtypes, "transformers", prefix, name=name)
    raise ModelError(f"{name} is not a text encoder: {_what_else(shapes)}")


def _info(
    kind: str, width: int, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], layout: str,
    prefix: str, projection: bool = False, *, name: str,
) -> EncoderInfo:
    own = [key for key in shapes if key.startswith(prefix)]
    layers = {int(m.group(1)) for key in own if (m := _LAYER.search(key[len(prefix):]))}
    if not layers or sorted(layers) != list(range(max(layers) + 1)):
        missing = sorted(set(range(max(layers, default=0) + 1)) - layers)
        raise ModelError(
            f"{name} is a {kind.upper()} text encoder with layer(s) {missing or [0]} missing: the file is incomplete."
        )
    total = sum(_size(shapes[key]) for key in own)
    return EncoderInfo(kind, width, len(layers), layout, prefix, _main_dtype(shapes, dtypes, own), total, projection)


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


def _main_dtype(
    shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], keys: list[str] | None = None
) -> str:
    """The storage type holding most of the weights (matrices only: norms often stay in float32)."""
    counts: dict[str, int] = {}
    for key in shapes if keys is None else keys:
        if len(shapes[key]) >= 2:
            counts[dtypes[key]] = counts.get(dtypes[key], 0) + _size(shapes[key])
    return max(counts, key=counts.__getitem__) if counts else "F32"


def _what_else(shapes: Mapping[str, tuple[int, ...]]) -> str:
    keys = list(shapes)
    if any(k.startswith(("model.diffusion_model.", "down_blocks.", "double_blocks.", "joint_blocks.")) for k in keys):
        return "it holds a diffusion model (UNet or transformer); import it with `marble models import`."
    if any(k.startswith(("encoder.down.", "decoder.conv_in", "first_stage_model.")) for k in keys):
        return "it is a VAE; import it with `marble vaes import`."
    if any("lora" in k for k in keys[:50]):
        return "it is a LoRA; import it with `marble loras import`."
    return (
        "it has neither CLIP (text_model.embeddings...), OpenCLIP (transformer.resblocks...), T5 "
        "(encoder.block...) nor Qwen (model.layers...) text-encoder tensors."
    )


def encoder_names(value: str) -> tuple[str, ...]:
    """A request's `text_encoders` as library names ("clip_l, t5xxl" -> ("clip_l", "t5xxl")); () when it is a
    folder path. Library names never hold a path separator (library/index.py check_name), paths always do."""
    if not value or "/" in value or "\\" in value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


# The text encoders each transformer family reads (native_size.model_family's names): the library's kinds
# by their families' first part ("clip-l" -> "clip"). A family not listed shows every encoder.
_FAMILY_ENCODERS = {
    "flux-dev": ("clip", "t5"), "flux-schnell": ("clip", "t5"), "sd3": ("clip", "t5"),
    "qwen-image": ("qwen2.5-vl",), "qwen-image-edit": ("qwen2.5-vl",), "qwen-image-edit-plus": ("qwen2.5-vl",),
    "z-image": ("qwen3",), "flux2-klein": ("qwen3",), "flux2-dev": ("mistral3",),
    "lumina2": ("gemma2", "gemma-2"),
    "qwen-image-2.1": ("qwen3vl",),  # Qwen3-VL 8B, whole (its vision tower sees the condition images)
    "krea2": ("qwen3vl",), "krea2-distilled": ("qwen3vl",),
    "flux3": ("qwen3vl",), "flux3-distilled": ("qwen3vl",),  # FLUX.3's Qwen3-VL, 4B by its text width
    "ernie-image": ("ministral3",),
    "longcat-image": ("qwen2.5-vl",), "longcat-image-edit": ("qwen2.5-vl",),  # Qwen-Image's 7B file serves them too
    "ovis-image": ("qwen3",),  # Ovis 2.5's language model, a Qwen3 1.7B
    # HiDream-I1's Long-CLIP L and G, T5-XXL and Llama 3.1 8B ("llama" from its label, as "clip" from "clip-l";
    # "llama3", the kind, for another width).
    "hidream-i1": ("clip", "t5", "llama", "llama3"), "hidream-i1-dev": ("clip", "t5", "llama", "llama3"),
    "hidream-i1-fast": ("clip", "t5", "llama", "llama3"),
    "auraflow": ("pile",),  # Pile-T5-XL ("pile-t5-xl")
    "sana": (),  # Gemma-2 and DC-AE come from a folder (--text-encoders): the libraries read no DC-AE yet
    "pixart-sigma": ("t5",), "pixart-alpha": ("t5",),  # T5-XXL, Flux.1's and SD3's file
}  # fmt: skip


def fits_model(encoder_family: str | None, model_family: str | None) -> bool:
    """Whether a library text encoder of `encoder_family` (EncoderInfo.family; None: not read) can serve a
    model of `model_family`; True whenever either is unknown, so nothing is hidden on a guess."""
    wanted = _FAMILY_ENCODERS.get(model_family or "")
    if wanted is None or not encoder_family:
        return True
    return encoder_family.split("-")[0] in wanted or encoder_family in wanted


def is_folder_value(value: str | None) -> bool:
    return bool(value) and not encoder_names(value or "")


# Forge's infotext names the separate files a model ran with: `Module 1: ae, Module 2: clip_l, Module 3:
# t5xxl_fp16` (the VAE among them, in the user's order).
_MODULE_KEY = re.compile(r"module (\d+)")
_WEIGHT_SUFFIXES = (".safetensors", ".sft", ".gguf")


def forge_module_pairs(text_encoders: str | None, vae: str) -> list[tuple[str, str]]:
    """The `Module N` pairs Forge writes for library text encoders (and the VAE, first); [] for a folder."""
    names = encoder_names(text_encoders or "")
    if not names:
        return []
    modules = ([vae.strip()] if vae.strip() else []) + list(names)
    return [(f"Module {index}", name) for index, name in enumerate(modules, 1)]


def modules_from_settings(settings: Mapping[str, str], vae: str) -> str | None:
    """A request's `text_encoders` from Forge's `Module N` values (keys casefolded), leaving out the VAE
    the `VAE` key names; a VAE among them with no `VAE` key is told apart at load, by the library."""
    keys = sorted((key for key in settings if _MODULE_KEY.fullmatch(key)), key=lambda k: int(k.split()[1]))
    names = []
    for key in keys:
        name = re.split(r"[/\\]", settings[key].strip())[-1]
        if name.casefold().endswith(_WEIGHT_SUFFIXES):
            name = name.rpartition(".")[0]
        if name and "," not in name and name.casefold() != vae.strip().casefold():
            names.append(name)
    return ",".join(names) or None
