"""Look inside model files without loading them: file type, safetensors header, architecture, hashes.

Everything here reads bytes and JSON only. A user's model folder is untrusted input: a file is judged by
its content (magic bytes, header, tensor names and shapes), never by its name or extension, and nothing
here ever unpickles anything. It stays free of torch/diffusers so the library can scan and hash on a
worker thread without importing the heavy stack.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickletools
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from desktop.engine.errors import ModelError
from desktop.engine.library import dit_unsupported, quant_formats
from desktop.engine.library.catalog import MODEL_INDEXES
from desktop.engine.library.dit import (
    DitInfo,
    TensorShape,
    detect_dit,
    detect_dit_folder,
    detect_gguf,
    dit_pipeline_family,
    is_control_input_channels,
    is_fill_channels,
    is_gguf,
    looks_like_dit,
    metadata_variant,
)
from desktop.engine.library.onnx_file import looks_like_onnx
from desktop.engine.safe_files import json_depth_exceeds, open_regular, read_json_file

StrPath = str | os.PathLike[str]

# A real header is a few hundred KB (SDXL: ~2,500 tensors). 100 MB means garbage, not a model.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# A header is a flat table (tensor -> {dtype, shape, offsets}) plus string metadata: three levels.
# Some writers nest JSON in the metadata; anything past this is an attack on the parser, not a model.
MAX_HEADER_DEPTH = 32
HASH_CHUNK_BYTES = 1024 * 1024
# How much of a file the pickle sniffer reads: enough for the opening of any torch.save pickle.
_PICKLE_SNIFF_BYTES = 64 * 1024
_SMALL_VALUE_BYTES = 16  # SafetensorsHeader.small_values: settings stored as tiny uint8 tensors

FAMILIES = ("sd1", "sd2", "sdxl")
CONFIG_NAMES = ("sd15", "sd15-inpaint", "sd2", "sd2-base", "sd2-inpaint", "sdxl", "sdxl-inpaint")

# Bytes per element of each safetensors dtype, to check a tensor's byte range against its shape.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

# Original (LDM / A1111) layout names the detection relies on.
_UNET = "model.diffusion_model."
_UNET_CONV_IN = _UNET + "input_blocks.0.0.weight"
_UNET_LABEL_EMB = _UNET + "label_emb.0.0.weight"
_SD1_CLIP = "cond_stage_model.transformer.text_model."
_SD2_OPENCLIP = "cond_stage_model.model."
_SDXL_CLIP_L = "conditioner.embedders.0.transformer.text_model."
_SDXL_OPENCLIP_G = "conditioner.embedders.1.model."
_SDXL_REFINER_OPENCLIP = "conditioner.embedders.0.model."
_ATTN2_TO_K = re.compile(r"^model\.diffusion_model\..*\.attn2\.to_k\.weight$")

_UNKNOWN = "unknown architecture (not SD 1.x, SD 2.x or SDXL)"


# --------------------------------------------------------------------------------------------------
# File type


def sniff_file_type(path: StrPath, *, label: str | None = None) -> str:
    """Return "safetensors", "gguf", "onnx", "pickle", "zip" or "unknown", judged from the first bytes of a file.

    Raises ModelError for anything that is not a regular file (a FIFO, a device) or cannot be read.
    """
    stream = open_regular(path, label=label)
    assert stream is not None
    try:
        with stream:
            head = stream.read(_PICKLE_SNIFF_BYTES)
    except OSError as exc:
        raise ModelError(f"{label or Path(path).name} cannot be read ({exc.strerror or exc}).") from None
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str:
    """The file type of a file that starts with `head` (see sniff_file_type)."""
    # Safetensors first: its little-endian header length may itself start with 0x80.
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= MAX_HEADER_BYTES:
            return "safetensors"
    if is_gguf(head):
        return "gguf"  # llama.cpp's format: quantised DiT transformers (Flux, SD3) ship in it
    if looks_like_onnx(head):
        return "onnx"  # insightface's face models (desktop/engine/library/onnx_file.py): protobuf, not a pickle
    if head.startswith(b"PK\x03\x04"):
        return "zip"  # torch.save's default format since 1.6 (.ckpt, .pt, .bin): pickles inside
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # PROTO opcode + protocol 2..5: a legacy torch.save file
    if _is_old_pickle(head):
        return "pickle"  # protocol 0/1 have no PROTO opcode: torch.save(..., pickle_protocol=0/1)
    return "unknown"


def _is_old_pickle(head: bytes) -> bool:
    """Whether `head` opens with a protocol 0/1 pickle: it parses as pickle opcodes up to a STOP, or up
    to the end of what was read. pickletools only decodes opcodes; nothing is ever unpickled."""
    if not head or head[:1] not in _PICKLE_FIRST_OPCODES:
        return False
    count = 0
    try:
        for opcode, _arg, _pos in pickletools.genops(head):
            count += 1
            if opcode.name == "STOP":
                return count >= 2
    except ValueError as exc:
        # Running out of bytes mid-opcode means the pickle goes on past what was read; an unknown
        # opcode or a malformed argument means it is no pickle.
        return len(head) >= _PICKLE_SNIFF_BYTES and count >= 8 and "unknown" not in str(exc)
    except Exception:  # noqa: BLE001 - malformed arguments raise assorted types: not a pickle
        return False
    return False


# What a protocol 0/1 pickle can start with: MARK, an empty container, GLOBAL, or a number/string
# (torch.save's legacy format starts by pickling its magic number: `L1195...L`).
_PICKLE_FIRST_OPCODES = frozenset(bytes([b]) for b in b"(}])cLIJKMNSVFGUTX")


def _not_safetensors(name: str, kind: str, detail: str) -> ModelError:
    if kind == "pickle":
        why = "it looks like a pickled PyTorch checkpoint, which can run code when loaded; Marble refuses it"
    elif kind == "zip":
        why = (
            "it looks like a PyTorch .ckpt/.pt archive, whose pickled contents can run code when loaded; "
            "Marble refuses it"
        )
    elif kind == "onnx":
        why = (
            "it is an ONNX model; Marble reads ONNX files only as face detectors and recognizers in the control "
            "library (marble controls import)"
        )
    else:
        why = detail
    return ModelError(
        f"{name} is not a safetensors file ({why}). Get the .safetensors version of this model."
    )


# --------------------------------------------------------------------------------------------------
# Safetensors header


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # [begin, end) relative to SafetensorsHeader.data_offset

    @property
    def nbytes(self) -> int:
        return self.offsets[1] - self.offsets[0]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    data_offset: int = 0  # absolute file position of the first data byte (8 + header length)
    file_size: int = 0
    # The bytes of the few tiny uint8 tensors a file may carry as settings rather than weights (FDAT's
    # `upsampler.MetaUpsample`: its upsampler kind and scale), so a header reader can tell what shapes alone
    # cannot; read with the header, at most _SMALL_VALUE_BYTES each.
    small_values: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...] | None:
        info = self.tensors.get(name)
        return info.shape if info is not None else None

    def has_prefix(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.tensors)


def read_safetensors_header(path: StrPath, *, name: str | None = None) -> SafetensorsHeader:
    """Parse and check the header of a safetensors file; no tensor data is read.

    Raises ModelError for anything that is not a complete, well-formed safetensors file, including a
    truncated download (a tensor whose byte range runs past the end of the file). `name` is what
    messages call the file (default: its name), e.g. the user's file while a hidden copy is read.
    """
    path = Path(path)
    name = name or path.name
    stream = open_regular(path, label=name)
    assert stream is not None
    try:
        with stream:
            file_size = os.fstat(stream.fileno()).st_size
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise _not_safetensors(name, sniff_bytes(prefix), f"it is only {file_size} bytes long")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                stream.seek(0)
                raise _not_safetensors(
                    name, sniff_bytes(stream.read(_PICKLE_SNIFF_BYTES)),
                    f"its header length, {header_len} bytes, is absurd",
                )
            if 8 + header_len > file_size:
                stream.seek(0)
                kind = sniff_bytes(stream.read(_PICKLE_SNIFF_BYTES))
                if kind != "safetensors":
                    raise _not_safetensors(name, kind, "it has no safetensors header")
                raise ModelError(
                    f"{name} is truncated: its header needs {header_len} bytes but the file has only "
                    f"{file_size - 8}. The download was probably interrupted; download it again."
                )
            raw = stream.read(header_len)
    except OSError as exc:
        raise ModelError(f"{name} cannot be read ({exc.strerror or exc}).") from exc

    if not raw.startswith(b"{"):
        raise _not_safetensors(name, sniff_bytes(prefix + raw[:_PICKLE_SNIFF_BYTES]), "it has no safetensors header")
    if json_depth_exceeds(raw, MAX_HEADER_DEPTH):
        raise ModelError(
            f"{name} is damaged: its safetensors header nests more than {MAX_HEADER_DEPTH} levels deep, which "
            "no model does. Download it again from a source you trust."
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # also UnicodeDecodeError, and ints past Python's 4300-digit limit
        raise ModelError(
            f"{name} is damaged: its safetensors header is not valid JSON ({exc}). Download it again."
        ) from exc
    if not isinstance(header, dict):
        raise ModelError(
            f"{name} is damaged: its safetensors header is not a JSON object. Download it again."
        )

    data_offset = 8 + header_len
    data_size = file_size - data_offset
    metadata = _parse_metadata(name, header.pop("__metadata__", None))
    tensors: dict[str, TensorInfo] = {}
    for tensor_name, entry in header.items():
        info = _parse_tensor_entry(name, tensor_name, entry)
        if info.offsets[1] > data_size:
            raise ModelError(
                f"{name} is truncated: tensor {tensor_name!r} ends at byte {info.offsets[1]} of the data "
                f"but the file holds only {data_size} data bytes. The download was probably interrupted; "
                "download it again."
            )
        tensors[tensor_name] = info
    small = {key: info for key, info in tensors.items() if info.dtype == "U8" and 0 < info.nbytes <= _SMALL_VALUE_BYTES}
    values: dict[str, bytes] = {}
    if small:
        try:
            again = open_regular(path, label=name)
            assert again is not None
            with again:
                for key, info in small.items():
                    again.seek(data_offset + info.offsets[0])
                    values[key] = again.read(info.nbytes)
        except OSError as exc:
            raise ModelError(f"{name} cannot be read ({exc.strerror or exc}).") from exc
    return SafetensorsHeader(
        tensors=MappingProxyType(tensors),
        metadata=MappingProxyType(metadata),
        data_offset=data_offset,
        file_size=file_size,
        small_values=MappingProxyType(values),
    )


def _parse_metadata(name: str, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ModelError(f"{name} is damaged: its safetensors __metadata__ is not a JSON object.")
    # The format says str -> str; some writers put numbers in. Keep them as text rather than refuse.
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def _parse_tensor_entry(name: str, tensor_name: str, entry: object) -> TensorInfo:
    damaged = ModelError(f"{name} is damaged: the header entry of tensor {tensor_name!r} is malformed.")
    if not isinstance(entry, dict):
        raise damaged
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise damaged
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise damaged
    if len(offsets) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
        raise damaged
    begin, end = offsets
    if not 0 <= begin <= end:
        raise damaged
    itemsize = _DTYPE_SIZES.get(dtype)
    if itemsize is not None and (end - begin) != math.prod(shape) * itemsize:
        raise ModelError(
            f"{name} is damaged: tensor {tensor_name!r} has {end - begin} bytes "
            f"for shape {tuple(shape)} {dtype}."
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), offsets=(begin, end))


# --------------------------------------------------------------------------------------------------
# Architecture


@dataclass(frozen=True)
class ArchitectureInfo:
    family: str  # "sd1" | "sd2" | "sdxl" | "flux" | "sd3" | "sd3.5" | "chroma"
    inpaint: bool  # UNet takes 9 input channels (latents + mask + masked-image latents)
    config_name: str  # folder under resources/configs/ holding the diffusers configs for this model
    dit: DitInfo | None = None  # set for the diffusion-transformer families (library/dit.py)
    # SDXL v-prediction fine-tunes (NoobAI-XL v-pred and its kind) carry empty marker tensors `v_pred` and,
    # when trained with zero terminal SNR, `ztsnr`: the tensors look like any SDXL, only the markers tell.
    v_prediction: bool = False
    zero_snr: bool = False
    # The SDXL refiner (one OpenCLIP-G encoder, aesthetic-score conditioning): a second pass, never a
    # main model (backends/refiner.py).
    refiner: bool = False

    @property
    def is_dit(self) -> bool:
        return self.dit is not None

    @property
    def label(self) -> str:
        if self.dit is not None:
            return self.dit.label
        if self.refiner:
            return "SDXL refiner"
        base = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}[self.family]
        if self.family == "sdxl" and self.v_prediction:
            base += " v-prediction, zero terminal SNR" if self.zero_snr else " v-prediction"
        return f"{base} inpainting" if self.inpaint else base


def _config_name(family: str, inpaint: bool, v_prediction: bool | None) -> str:
    if family == "sd1":
        return "sd15-inpaint" if inpaint else "sd15"
    if family == "sdxl":
        return "sdxl-inpaint" if inpaint else "sdxl"
    if inpaint:
        return "sd2-inpaint"  # the only SD 2 inpainting model is 512-base, epsilon
    # The 768-v and 512-base weights have identical names and shapes; without a hint, assume 768-v,
    # the model most people mean by "SD 2.x" (and the base of most SD 2 fine-tunes).
    return "sd2-base" if v_prediction is False else "sd2"


def _refuse_quantised_unet(header: SafetensorsHeader, name: str) -> None:
    """diffusers' single-file loader converts SD/SDXL checkpoints name by name and would drop a scaled-fp8
    file's scales or a bitsandbytes file's quantisation states without a word: refuse them instead."""
    kind = quant_formats.bitsandbytes_kind(header.tensors)
    if kind is None and not quant_formats.is_scaled_fp8(header.tensors):
        return
    what = quant_formats.SHOWN[kind] if kind else "scaled fp8 (ComfyUI)"
    raise ModelError(
        f"{name} is an SD/SDXL checkpoint stored as {what}, which Marble loads for diffusion transformers only. "
        "Use the fp16/bf16 (or plain fp8) file of this model."
    )


def _v_prediction_hint(metadata: Mapping[str, str]) -> bool | None:
    """What the file's own metadata says about v-prediction, if anything (SAI ModelSpec, kohya)."""
    arch = metadata.get("modelspec.architecture", "").lower()
    if arch.startswith("stable-diffusion-v2"):
        if arch.endswith("-v"):
            return True
        if "512" in arch:
            return False
    prediction = metadata.get("modelspec.prediction_type", "").lower()
    if prediction in ("v", "v_prediction", "v-prediction"):
        return True
    if prediction == "epsilon":
        return False
    kohya = metadata.get("ss_v_parameterization", "").lower()
    if kohya in ("true", "false"):
        return kohya == "true"
    return None


def detect_architecture(
    header: SafetensorsHeader, *, name: str = "model", v_prediction: bool | None = None
) -> ArchitectureInfo:
    """Tell SD 1.x / SD 2.x / SDXL (and their inpainting variants) apart from tensor names and shapes.

    `header` is an original-layout (LDM / A1111) single file. `v_prediction` is the caller's hint for SD 2
    (e.g. from a YAML next to the file or the user's choice); without it the file's metadata is consulted,
    then 768-v ("sd2") is assumed, because the tensors of 768-v and 512-base models are indistinguishable.
    `name` only appears in error messages. Flux.1, SD3/SD3.5 and Chroma files are told apart by
    library/dit.py.
    """
    if looks_like_dit(header.tensors):
        dit = detect_dit({k: TensorShape(v.dtype, v.shape) for k, v in header.tensors.items()}, name=name)
        if not dit.variant:
            # An Edit transformer has the base one's tensors: only its metadata can say (library/dit.py).
            dit = replace(dit, variant=metadata_variant(dit.family, header.metadata))
        return dit_architecture(dit)
    _refuse_quantised_unet(header, name)
    conv_in = header.shape(_UNET_CONV_IN)
    if conv_in is None or len(conv_in) != 4:
        raise ModelError(f"{name}: {_UNKNOWN}. {_what_it_might_be(header)}")
    in_channels = conv_in[1]
    if in_channels not in (4, 9):
        raise ModelError(
            f"{name}: {_UNKNOWN}. Its UNet takes {in_channels} input channels (4 for text-to-image, "
            "9 for inpainting); it may be an instruct-pix2pix, depth or upscaler model."
        )
    inpaint = in_channels == 9
    context_dim = _context_dim(header)
    if context_dim is None:
        raise ModelError(f"{name}: {_UNKNOWN}. Its UNet has no cross-attention layers.")

    if header.has_prefix(_SDXL_OPENCLIP_G) and _UNET_LABEL_EMB in header:
        # Two text encoders (CLIP-L + OpenCLIP-G), their hidden states concatenated as the context.
        clip_l = _width(header, _SDXL_CLIP_L + "embeddings.token_embedding.weight")
        clip_g = _width(header, _SDXL_OPENCLIP_G + "token_embedding.weight")
        if clip_l is None or clip_g is None or clip_l + clip_g != context_dim:
            raise ModelError(
                f"{name}: {_UNKNOWN}. It looks like SDXL but its text encoders do not match its UNet "
                f"(context {context_dim}); the file may be damaged."
            )
        family = "sdxl"
        _require_text_encoder(header, name, "SDXL", _SDXL_CLIP_L_NEEDS + _SDXL_OPENCLIP_G_NEEDS)
    elif header.has_prefix(_SDXL_REFINER_OPENCLIP) and _UNET_LABEL_EMB in header:
        _require_text_encoder(header, name, "an SDXL refiner", _SDXL_REFINER_NEEDS)
        return ArchitectureInfo(family="sdxl", inpaint=inpaint, config_name="sdxl-refiner", refiner=True)
    elif header.has_prefix(_SD2_OPENCLIP):
        width = _width(header, _SD2_OPENCLIP + "token_embedding.weight")
        if width != context_dim:
            raise ModelError(
                f"{name}: {_UNKNOWN}. It looks like SD 2.x but its OpenCLIP text encoder (width {width}) "
                f"does not match its UNet (context {context_dim}); the file may be damaged."
            )
        family = "sd2"
        _require_text_encoder(header, name, "SD 2.x", _SD2_OPENCLIP_NEEDS)
    elif header.has_prefix(_SD1_CLIP):
        width = _width(header, _SD1_CLIP + "embeddings.token_embedding.weight")
        if width != context_dim:
            raise ModelError(
                f"{name}: {_UNKNOWN}. It looks like SD 1.x but its CLIP text encoder (width {width}) "
                f"does not match its UNet (context {context_dim}); the file may be damaged."
            )
        family = "sd1"
        _require_text_encoder(header, name, "SD 1.x", _SD1_CLIP_NEEDS)
    else:
        raise ModelError(
            f"{name}: {_UNKNOWN}. It has a UNet (context {context_dim}) but no text encoder Marble knows."
        )

    if family == "sd2" and v_prediction is None:
        v_prediction = _v_prediction_hint(header.metadata)
    return ArchitectureInfo(
        family=family, inpaint=inpaint, config_name=_config_name(family, inpaint, v_prediction),
        **sdxl_prediction_markers(header, family),
    )


def sdxl_prediction_markers(header: SafetensorsHeader, family: str) -> dict[str, bool]:
    """An SDXL single file's `v_pred` / `ztsnr` marker tensors (the keys ComfyUI and Forge read) as
    ArchitectureInfo fields; {} for other families, whose files never carry them."""
    if family != "sdxl" or "v_pred" not in header:
        return {}
    return {"v_prediction": True, "zero_snr": "ztsnr" in header}


def prediction_scheduler_overrides(arch: ArchitectureInfo) -> dict[str, object]:
    """Scheduler config changes a marked v-prediction SDXL needs; {} for everything else.

    v-prediction needs the trailing spacing: ComfyUI's and A1111's k-diffusion schedules start at the
    last training timestep, and with zero terminal SNR the "leading" spacing SDXL's config names would
    never reach the pure-noise step the model was trained to start from (Lin et al. 2023, table 2)."""
    if not arch.v_prediction:
        return {}
    overrides: dict[str, object] = {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    if arch.zero_snr:
        overrides["rescale_betas_zero_snr"] = True
    return overrides


# Weights every text encoder of the family has whatever its depth: its first layer and final norm.
# A file with the token embedding but not these would pass detection and then fail deep in diffusers.
_SD1_CLIP_NEEDS = tuple(
    _SD1_CLIP + n for n in ("encoder.layers.0.self_attn.q_proj.weight", "final_layer_norm.weight")
)
_SDXL_CLIP_L_NEEDS = tuple(
    _SDXL_CLIP_L + n for n in ("encoder.layers.0.self_attn.q_proj.weight", "final_layer_norm.weight")
)
_SD2_OPENCLIP_NEEDS = tuple(
    _SD2_OPENCLIP + n for n in ("transformer.resblocks.0.attn.in_proj_weight", "ln_final.weight")
)
_SDXL_REFINER_NEEDS = tuple(
    _SDXL_REFINER_OPENCLIP + n for n in ("transformer.resblocks.0.attn.in_proj_weight", "ln_final.weight")
)
_SDXL_OPENCLIP_G_NEEDS = tuple(
    _SDXL_OPENCLIP_G + n for n in ("transformer.resblocks.0.attn.in_proj_weight", "ln_final.weight")
)


def _require_text_encoder(header: SafetensorsHeader, name: str, family: str, needed: tuple[str, ...]) -> None:
    missing = [tensor for tensor in needed if tensor not in header]
    if missing:
        raise ModelError(
            f"{name} looks like {family}, but its text-encoder weights are missing ({missing[0]} and others), "
            "so it cannot make images from a prompt. Get the complete checkpoint (a full model, not a UNet-only "
            "or pruned-encoder file)."
        )


def _context_dim(header: SafetensorsHeader) -> int | None:
    # SD 1/2 have cross-attention in input_blocks.1, SDXL only from input_blocks.4: take the first one found.
    for tensor_name in sorted(header.tensors):
        if _ATTN2_TO_K.match(tensor_name):
            shape = header.tensors[tensor_name].shape
            return shape[1] if len(shape) == 2 else None
    return None


def _width(header: SafetensorsHeader, token_embedding: str) -> int | None:
    shape = header.shape(token_embedding)
    return shape[1] if shape is not None and len(shape) == 2 else None


def _what_it_might_be(header: SafetensorsHeader) -> str:
    names = header.tensors.keys()
    if any(n.startswith(("lora_unet_", "lora_te", "lora_")) or ".lora_" in n or ".lora." in n for n in names):
        return "It looks like a LoRA; put it in the LoRA folder instead."
    vae_like = any(n.startswith(("encoder.", "decoder.", "first_stage_model.")) for n in names)
    if vae_like and not header.has_prefix(_UNET):
        return "It looks like a VAE on its own, not a full model."
    if "emb_params" in header or "string_to_param.*" in header:
        return "It looks like a textual-inversion embedding."
    return "It has no SD-style UNet."


def dit_architecture(info: DitInfo) -> ArchitectureInfo:
    # Flux Fill edits a source image only, as an SD inpainting model does.
    return ArchitectureInfo(family=info.family, inpaint=info.fill, config_name=info.config_name or "", dit=info)


def with_variant(arch: ArchitectureInfo, variant: str) -> ArchitectureInfo:
    """`arch` as the model variant the user chose for its file (library/dit.py variant_choices); unchanged for ""."""
    if not variant or arch.dit is None:
        return arch
    return dit_architecture(replace(arch.dit, variant=variant))


def detect_diffusers_folder(
    folder: StrPath, *, v_prediction: bool | None = None, name: str | None = None
) -> ArchitectureInfo:
    """Architecture of a diffusers-layout folder, from model_index.json and the component configs.

    `name` is what messages call the folder (default: its name)."""
    folder = Path(folder)
    name = name or folder.name
    # A modular pipeline's folder (diffusers' FLUX.3 folders) holds only its own index, whose _class_name and
    # components read as model_index.json's do.
    modular = not (folder / "model_index.json").is_file() and (folder / MODEL_INDEXES[1]).is_file()
    index = _read_json(
        folder, MODEL_INDEXES[1] if modular else "model_index.json", name,
        "is not a diffusers model folder (no model_index.json)",
    )
    class_name = str(index.get("_class_name", ""))
    if dit_pipeline_family(class_name) is not None:
        return _dit_folder(folder, index, class_name, name)
    dit_unsupported.refuse_folder(class_name, name)
    unet = _read_json(folder, "unet/config.json", name, "has no unet/config.json")

    in_channels = unet.get("in_channels")
    if in_channels not in (4, 9):
        raise ModelError(f"{name}: {_UNKNOWN}. Its UNet takes {in_channels} input channels.")
    inpaint = in_channels == 9

    if class_name.startswith("StableDiffusionXL") or unet.get("addition_embed_type") == "text_time":
        if _is_null_component(index.get("text_encoder")):
            return ArchitectureInfo(family="sdxl", inpaint=inpaint, config_name="sdxl-refiner", refiner=True)
        family = "sdxl"
    elif class_name.startswith("StableDiffusion") and not class_name.startswith("StableDiffusion3"):
        family = _sd1_or_sd2(folder, unet, name)
    else:
        raise ModelError(f"{name}: {_UNKNOWN}. Its pipeline is {class_name or 'not named'}.")

    if family == "sd2" and v_prediction is None:
        scheduler = _read_optional_json(folder, "scheduler/scheduler_config.json", name)
        prediction = scheduler.get("prediction_type") if scheduler else None
        if prediction in ("v_prediction", "epsilon"):
            v_prediction = prediction == "v_prediction"
    return ArchitectureInfo(
        family=family, inpaint=inpaint, config_name=_config_name(family, inpaint, v_prediction)
    )


def _dit_folder(folder: Path, index: Mapping[str, object], class_name: str, name: str) -> ArchitectureInfo:
    transformer = _read_json(folder, "transformer/config.json", name, "has no transformer/config.json")
    scheduler = _read_optional_json(folder, "scheduler/scheduler_config.json", name)
    family, variant = detect_dit_folder(index, transformer, class_name, scheduler)
    weights = [f for f in (folder / "transformer").glob("*.safetensors") if f.is_file()]
    parameters, dtype = 0, "?"
    counts: dict[str, int] = {}
    for file in weights:
        header = read_safetensors_header(file, name=f"transformer/{file.name} in {name}")
        for info in header.tensors.values():
            elements = math.prod(info.shape)
            parameters += elements
            counts[info.dtype] = counts.get(info.dtype, 0) + elements
    if counts:
        dtype = max(counts, key=counts.__getitem__)
    dtype = quant_formats.folder_format(transformer) or dtype
    parts = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
    components = tuple(part for part in parts if part in index)
    depth = transformer.get("num_layers", transformer.get("n_layers"))  # Z-Image says n_layers
    channels = transformer.get("in_channels")
    info = DitInfo(
        family=family, variant=variant, layout="diffusers", parameters=parameters, dtype=dtype, quantization=None,
        components=components, blocks=(depth if isinstance(depth, int) else 0, 0),
        fill=family == "flux" and is_fill_channels(channels, transformer.get("out_channels") or channels),
        control_input=family == "flux"
        and is_control_input_channels(channels, transformer.get("out_channels") or channels),
    )  # fmt: skip
    return dit_architecture(info)


def _sd1_or_sd2(folder: Path, unet: Mapping[str, object], name: str) -> str:
    context = unet.get("cross_attention_dim")
    if context == 768:
        return "sd1"
    if context == 1024:
        return "sd2"
    # Non-standard width (a test model, an exotic fine-tune): SD 2's OpenCLIP uses GELU,
    # SD 1's CLIP quick-GELU.
    text_encoder = _read_optional_json(folder, "text_encoder/config.json", name) or {}
    return "sd2" if text_encoder.get("hidden_act") == "gelu" else "sd1"


def _is_null_component(entry: object) -> bool:
    return not isinstance(entry, list) or len(entry) != 2 or entry[0] is None


def _read_json(folder: Path, inside: str, name: str, missing: str) -> dict:
    data = _read_optional_json(folder, inside, name)
    if data is None:
        raise ModelError(f"{name} {missing}.")
    return data


def _read_optional_json(folder: Path, inside: str, name: str) -> dict | None:
    """A JSON object from the model folder; None when missing. Only a regular file of sane size and
    depth is read (a FIFO or a link to /dev/zero is refused, not waited on)."""
    path = folder / inside
    label = f"{inside} in {name}"
    data = read_json_file(path, label=label, missing_ok=True)
    if data is not None and not isinstance(data, dict):
        raise ModelError(f"{name}: {inside} is not a JSON object.")
    return data


def check_model_folder(folder: StrPath, *, name: str | None = None) -> None:
    """Refuse a diffusers folder Marble must not load: one holding a file that is no regular file (a
    FIFO, a device), or pickled weights (judged by their bytes), which loading would unpickle.

    Marble loads folders with safetensors only, so a pickle there would never be read; refusing it
    says why the model does not load instead of a missing-file error from deep inside diffusers.
    """
    folder = Path(folder)
    name = name or folder.name
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder).as_posix()
        if file.is_dir():
            continue
        label = f"{relative} in {name}"
        kind = sniff_file_type(file, label=label) if file.suffix.lower() not in _TEXT_SUFFIXES else None
        if kind is None:
            stream = open_regular(file, label=label)  # refuses FIFOs and devices among the configs
            if stream is not None:
                stream.close()
        elif kind in ("pickle", "zip"):
            raise ModelError(
                f"{name} holds pickled PyTorch weights ({relative}), which can run code when loaded, so Marble "
                "neither imports nor loads it. Get the safetensors version of this model (a folder with "
                ".safetensors files only); for a single checkpoint file, `marble models import --convert-pickle` "
                "converts it to safetensors."
            )


_TEXT_SUFFIXES = (".json", ".txt", ".md", ".yaml", ".yml", ".model", ".gitattributes")


def detect_model(path: StrPath, *, v_prediction: bool | None = None) -> ArchitectureInfo:
    """A folder or a single file: refuse anything but safetensors, then detect the architecture."""
    path = Path(path)
    if path.is_dir():
        return detect_diffusers_folder(path, v_prediction=v_prediction)
    if sniff_file_type(path) == "gguf":
        return dit_architecture(detect_gguf(path))
    header = read_safetensors_header(path)
    return detect_architecture(header, name=path.name, v_prediction=v_prediction)


# --------------------------------------------------------------------------------------------------
# Hashes


def sha256_file(
    path: StrPath, on_progress: Callable[[int, int], None] | None = None, *, name: str | None = None
) -> str:
    """Hex sha256 of the whole file, streamed so a 7 GB model never sits in memory.

    `on_progress(done_bytes, total_bytes)` is called after each chunk (for a progress bar).
    """
    stream = open_regular(path, label=name)
    assert stream is not None
    digest = hashlib.sha256()
    done = 0
    with stream:
        total = os.fstat(stream.fileno()).st_size
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    return digest.hexdigest()


def autov2_hash(path: StrPath, on_progress: Callable[[int, int], None] | None = None) -> str:
    """A1111's "Model hash" (AutoV2): the first 10 hex digits of the file's sha256."""
    return sha256_file(path, on_progress)[:10]


def autov3_hash(path: StrPath, *, name: str | None = None) -> str:
    """A1111's LoRA hash (AutoV3): sha256 of the safetensors data after the header, first 12 hex digits."""
    header = read_safetensors_header(path, name=name)
    stream = open_regular(path, label=name)
    assert stream is not None
    digest = hashlib.sha256()
    with stream:
        stream.seek(header.data_offset)
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()[:12]
