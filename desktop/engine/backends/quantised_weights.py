"""Quantised transformer files read into the compute dtype (formats in library/quant_formats.py).

- ComfyUI's scaled fp8: each fp8 weight times its `scale_weight` (`weight_scale` in its newer files),
  computed in float32 and rounded once to the compute dtype, at load. Marble does not keep a scaled
  *transformer* in fp8: diffusers' layer-wise casting (which keeps plain fp8 files small, fp8_storage.py)
  casts a layer up without a scale, and folding the scale into a plain fp8 weight would round the small
  weights the scale exists to keep. Dequantised, the file runs in every memory mode, the fp8 mode (plain
  e4m3fn) included. Scaled T5 and Qwen *text encoders* do stay in fp8 (`keep`: backends/scaled_fp8_layers.py
  computes the same product as each layer runs).
- ComfyUI's int8 layers (`comfy_quant` format "int8_tensorwise"): each int8 weight times its row scale, in
  float32; a ConvRot layer (`"convrot": true`) was rotated before it was quantised, W_rot = W H^T group by group
  along its inputs with H the normalised regular Hadamard matrix of the group size (the Kronecker powers of
  the 4x4 one with row sums 2: symmetric and its own inverse), so its weight is W_rot H^T again. Always
  dequantised, text encoders too: the rotation makes a kept weight more than a product. Other `comfy_quant`
  formats (int4, w4a8, svdquant ...) are refused by name.
- bitsandbytes 4-bit files (Forge's `flux1-dev-bnb-nf4`): each weight dequantised by bitsandbytes itself
  (its CPU backend does it too); the nf4 memory mode (`quantise_linear_layers`) quantises it again where
  memory needs; LLM.int8 files need no bitsandbytes to read (int8 rows times their scale).
- Text encoders saved with bitsandbytes (backends/encoder_components.py) are read by the same functions
  (`dequantise_bitsandbytes`): transformers serialises each layer as Forge does. T5 and Qwen encoders keep
  their linear weights packed (`keep`: backends/bnb_layers.py calls the same per-weight functions as each
  layer runs, so the numbers are these); CLIP's are dequantised here.
- Diffusers folders saved with bitsandbytes: kept quantised by diffusers on CUDA; on a computer without
  CUDA their quantised components (transformer, T5) are dequantised the same way (`bnb_folder_components`).
- The nf4 / int8 memory modes: `quantise_linear_layers`.

Called from families.py on the generation thread; torch and bitsandbytes are imported inside.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library import quant_formats
from desktop.engine.library.dit import DitInfo

BITSANDBYTES_MISSING = (
    "{name} holds {what} weights, which need the bitsandbytes package: install it into Marble's Python "
    "(pip install bitsandbytes), or use a GGUF or fp8 file of this model."
)

# 1/127 as bitsandbytes writes it in its int8 dequantisation (rounded to float32 by the multiplication).
_INT8_STEP = 7.874015718698502e-3

# What stands for a bitsandbytes weight kept packed (backends/bnb_layers.py): made from the file's tensors of
# the weight by part name (`weight` its codes), the function that dequantises such tensors on their device (the
# load-time one, to float32 or the file's dtype) and the weight's shape.
KeepBits = Callable[[dict[str, Any], Callable[[dict[str, Any]], Any], tuple[int, ...]], Any]


def bitsandbytes_module(name: str, what: str) -> Any:
    """bitsandbytes, or a ModelError saying how to get it."""
    try:
        import bitsandbytes
    except ImportError:
        raise ModelError(BITSANDBYTES_MISSING.format(name=name, what=what)) from None
    return bitsandbytes


def dequantise(state: dict[str, Any], info: DitInfo, dtype: Any, *, name: str) -> dict[str, Any]:
    """`state` (tensor names as in the file) with quantised weights replaced by `dtype` tensors and the
    scales and quantisation states removed; `state` itself when the file is not quantised so."""
    if info.scaled_fp8:
        return dequantise_scaled_fp8(state, dtype, name=name)
    if info.bitsandbytes is not None:
        return dequantise_bitsandbytes(state, info.bitsandbytes, dtype, name=name)
    return state


def dequantise_bitsandbytes(
    state: dict[str, Any], kind: str, dtype: Any, *, name: str, keep: KeepBits | None = None
) -> dict[str, Any]:
    """A bitsandbytes-serialised `state` (a Forge transformer, or a text encoder transformers saved with
    load_in_4bit / load_in_8bit: the same per-layer names) in `dtype`; `kind` is a quant_formats BNB_ code.
    `keep`, when given, makes what stands for each quantised weight instead (a weight kept packed)."""
    if kind in (quant_formats.BNB_NF4, quant_formats.BNB_FP4):
        return dequantise_bnb_4bit(state, dtype, name=name, what=quant_formats.SHOWN[kind], keep=keep)
    return dequantise_bnb_int8(state, dtype, name=name, keep=keep)


def dequantise_scaled_fp8(
    state: dict[str, Any], dtype: Any, *, name: str, keep: Callable[[Any, Any], Any] | None = None
) -> dict[str, Any]:
    """`state` with each scaled fp8 weight times its scale (float32, rounded once to `dtype`) and the scales,
    input scales and markers removed; `keep(weight, float32 scale shaped to broadcast over it)`, when given,
    makes what stands for each scaled weight instead (a weight kept in fp8)."""
    import torch

    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.endswith(quant_formats.SKIPPED_AT_LOAD) or key.rsplit(".", 1)[-1] == quant_formats.SCALED_FP8_MARKER:
            continue  # the input scale serves fp8 matrix multiplication only
        if key.endswith(quant_formats.WEIGHT_SCALES):
            continue
        layer = key.removesuffix(".weight")
        scale_key = next((layer + suffix for suffix in quant_formats.WEIGHT_SCALES if layer + suffix in state), "")
        if key.endswith(".weight") and scale_key:
            scale = state[scale_key].to(torch.float32)
            if scale.numel() not in (1, tensor.shape[0]):
                raise ModelError(
                    f"{name}: {scale_key} has {scale.numel()} values for a weight of {tensor.shape[0]} rows; "
                    "the scaled-fp8 file is damaged. Download it again."
                )
            scale = scale.reshape(-1, *([1] * (tensor.ndim - 1))) if scale.numel() > 1 else scale.reshape(())
            group = _convrot_group(state, layer, name)
            if group is not None or tensor.dtype == torch.int8 or keep is None:
                product = tensor.to(torch.float32) * scale
                out[key] = (product if group is None else _unrotated(product, group, layer, name)).to(dtype)
            else:
                out[key] = keep(tensor, scale)
        else:
            out[key] = tensor
    orphans = [
        key
        for key in state
        if key.endswith(quant_formats.WEIGHT_SCALES) and f"{key.rsplit('.', 1)[0]}.weight" not in state
    ]
    if orphans:
        raise ModelError(f"{name}: {orphans[0]} scales a weight the file does not hold; the file is damaged.")
    return out


# ComfyUI's per-layer quantisation formats Marble reads (the `comfy_quant` tensor's "format"): its fp8 ones
# ("float8_e4m3fn" ...) and int8.
_COMFY_INT8 = "int8_tensorwise"


def _convrot_group(state: dict[str, Any], layer: str, name: str) -> int | None:
    """The ConvRot group size `layer`'s `comfy_quant` names, None for a layer not rotated; a ModelError for a
    format Marble cannot read or a damaged record."""
    record = state.get(layer + ".comfy_quant")
    if record is None:
        return None
    try:
        config = json.loads(bytes(record.flatten().tolist()).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ModelError(
            f"{name}: {layer}.comfy_quant is not ComfyUI's quantisation record; the file is damaged."
        ) from None
    kind = config.get("format") if isinstance(config, dict) else None
    if not isinstance(kind, str) or not (kind == _COMFY_INT8 or kind.startswith("float8_")):
        raise ModelError(
            f"{name}: its layer {layer} is stored in ComfyUI's {kind!r} quantisation, which Marble cannot read yet "
            "(it reads fp8 and int8 layers, ConvRot included). Use a GGUF, fp8, int8 or bf16 file of this model."
        )
    if kind != _COMFY_INT8 or not config.get("convrot"):
        return None
    group = config.get("convrot_groupsize", 256)
    if not isinstance(group, int) or group < 4 or group & (group - 1) or (group.bit_length() - 1) % 2:
        raise ModelError(f"{name}: {layer} names a ConvRot group of {group!r}, not a power of 4; the file is damaged.")
    return group


def regular_hadamard(size: int) -> Any:
    """The normalised regular Hadamard matrix of `size` (a power of 4), float32: Kronecker powers of the 4x4 one
    whose rows each sum to 2 ([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]]), over sqrt(size)."""
    import torch

    base = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    matrix = base
    while matrix.shape[0] < size:
        matrix = torch.kron(matrix, base)
    return matrix / size**0.5


def _unrotated(weight: Any, group: int, layer: str, name: str) -> Any:
    """A ConvRot weight (out, in) back in its own basis: each group of `group` inputs times H^T (float32)."""
    rows, inputs = weight.shape[0], weight.shape[-1]
    if weight.ndim != 2 or inputs % group:
        raise ModelError(f"{name}: {layer} has {inputs} inputs, not a multiple of its ConvRot group of {group}.")
    grouped = weight.reshape(rows, inputs // group, group)
    return (grouped @ regular_hadamard(group).T).reshape(rows, inputs)


def dequantise_bnb_4bit(
    state: dict[str, Any], dtype: Any, *, name: str, what: str, keep: KeepBits | None = None
) -> dict[str, Any]:
    """bitsandbytes 4-bit weights (`weight` packed, its quantisation state beside it as `weight.absmax`,
    `weight.quant_map`, ...) dequantised by bitsandbytes, one at a time, and cast to `dtype`; `keep`, when
    given, makes what stands for each weight instead, once its parts are found to fit together
    (`_checked_4bit_shape`: a damaged weight is refused now, by name, not while the model runs; no weight is
    dequantised at load, which cost about 0.1 s per 170M values on a CPU, some 14 s for a 24B encoder)."""
    bnb = bitsandbytes_module(name, what)
    import torch

    out: dict[str, Any] = {}
    states: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        if ".weight." in key:
            base, part = key.rsplit(".weight.", 1)
            states.setdefault(base + ".weight", {})[part] = tensor
    for key, tensor in state.items():
        if ".weight." in key:
            continue
        parts = states.get(key)
        if parts is None:
            if key.endswith(".weight") and tensor.dtype == torch.uint8:
                # Packed 4-bit codes without their state cannot be read back: not a weight to pass on.
                raise ModelError(f"{name}: {key} is packed 4-bit without its quantisation state; the file is damaged.")
            out[key] = tensor
            continue
        # The state's description (its JSON as a small uint8 tensor) stays with the function, on the CPU; the
        # codes and statistics are what a kept layer holds.
        described = {part: value for part, value in parts.items() if part.startswith("quant_state.")}
        tensors = {"weight": tensor} | {part: value for part, value in parts.items() if part not in described}
        values = _bnb_4bit_values(bnb, described)
        try:
            shape = _checked_4bit_shape(tensors, described)
            if keep is None:
                out[key] = values(tensors).to(dtype)
            else:
                out[key] = keep(tensors, values, shape)
        except (ValueError, KeyError, RuntimeError, TypeError, AssertionError) as error:
            raise ModelError(f"{name}: {key} does not dequantise ({error}); the file is damaged.") from None
    return out


def _checked_4bit_shape(tensors: dict[str, Any], described: dict[str, Any]) -> tuple[int, ...]:
    """The shape of a 4-bit weight whose parts fit together as bitsandbytes writes them: two codes a byte,
    one statistic (`absmax`) per block of values, 16 quantisation levels, and for compressed statistics
    (bitsandbytes' "nested" state) the second level's per-block statistics and 256 levels; ValueError
    naming the first part that does not fit. Sizes only: bitsandbytes reads a short statistic past its end
    rather than fail, so a truncated part would otherwise run as noise."""
    import math

    import torch
    from bitsandbytes.functional import QuantState
    from bitsandbytes.utils import unpack_tensor_to_dict

    codes = tensors["weight"]
    parts = {part: value for part, value in tensors.items() if part != "weight"} | described
    state = QuantState.from_dict(dict(parts), device=torch.device("cpu"))
    if state.shape is None or state.blocksize <= 0:
        raise ValueError("its quantisation state has no shape or block size")
    count = math.prod(state.shape)
    blocks = -(-count // state.blocksize)
    wanted = {"weight": (codes.numel() * codes.element_size(), (count + 1) // 2, "bytes of codes"),
              "quant_map": (state.code.numel(), 16, "levels"),
              "absmax": (state.absmax.numel(), blocks, "statistics")}  # fmt: skip
    # Compressed statistics, as the state's description or its parts say: the second level must be there.
    description = {key for value in described.values() for key in unpack_tensor_to_dict(value)}
    if "nested_blocksize" in description or any(part.startswith("nested_") for part in parts):
        second = state.state2
        if second is None:
            raise ValueError("its statistics are compressed but the second level's are missing")
        wanted |= {"nested_absmax": (second.absmax.numel(), -(-blocks // max(second.blocksize, 1)), "statistics"),
                   "nested_quant_map": (second.code.numel(), 256, "levels")}  # fmt: skip
    elif state.absmax.dtype != torch.float32:
        raise ValueError(f"its absmax is {state.absmax.dtype}, not float32, and no second level unpacks it")
    for part, (found, expected, what) in wanted.items():
        if found != expected:
            raise ValueError(f"{part} holds {found} {what} where shape {tuple(state.shape)} needs {expected}")
    return tuple(state.shape)


def _bnb_4bit_values(bnb: Any, described: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    """The function that gives a 4-bit weight from its codes (`weight`) and statistics, on their device, as
    bitsandbytes dequantises it (in the dtype its state names)."""
    from bitsandbytes.functional import QuantState

    def values(tensors: dict[str, Any]) -> Any:
        codes = tensors["weight"]
        parts = {part: value for part, value in tensors.items() if part != "weight"} | described
        return bnb.functional.dequantize_4bit(codes, QuantState.from_dict(parts, device=codes.device))

    return values


def dequantise_bnb_int8(
    state: dict[str, Any], dtype: Any, *, name: str, keep: KeepBits | None = None
) -> dict[str, Any]:
    """LLM.int8 weights: int8 rows, each scaled by its row's absolute maximum over 127 (`SCB`); read without
    bitsandbytes, to the float32 values its int8_vectorwise_dequant gives, cast to `dtype`; `keep`, when
    given, makes what stands for each weight instead (the rows and their float32 scales as a column)."""
    import torch

    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.endswith((".SCB", ".weight_format")):
            continue
        scale_key = key.removesuffix(".weight") + ".SCB"
        if key.endswith(".weight") and scale_key in state:
            rows = state[scale_key].to(torch.float32).reshape(-1, 1)
            if rows.shape[0] != tensor.shape[0]:
                raise ModelError(f"{name}: {scale_key} does not match its weight; the file is damaged.")
            tensors = {"weight": tensor, "scale": rows}
            if keep is None:
                out[key] = _int8_values(tensors).to(dtype)
            else:
                out[key] = keep(tensors, _int8_values, tuple(tensor.shape))
        elif tensor.dtype == torch.int8:
            # Cast as it is, an int8 row without its scale would run as weights 127 times too large or worse.
            raise ModelError(f"{name}: {key} is int8 without its scale ({scale_key}); the file is damaged.")
        else:
            out[key] = tensor
    return out


def _int8_values(tensors: dict[str, Any]) -> Any:
    """An LLM.int8 weight in float32 from its rows (`weight`) and their scales (`scale`, a float32 column)."""
    import torch

    # Times the reciprocal, as bitsandbytes' own int8_vectorwise_dequant (and transformers' dequantisation)
    # computes it: dividing by 127 rounds some weights one float32 step away from the values they give.
    return tensors["weight"].to(torch.float32) * tensors["scale"] * _INT8_STEP


def bnb_folder_components(folder: Path, dtype: Any, *, name: str) -> dict[str, Any]:
    """The components of a diffusers folder saved with bitsandbytes (a `quantization_config` in their
    config.json: the transformer, and in diffusers' own bnb folders T5 too), loaded dequantised, by
    component name; empty when CUDA is present or no component is so saved.

    With CUDA, diffusers' and transformers' quantizers load the folder as it is, kept quantised. Without
    it diffusers' quantizer refuses, and transformers' CPU path fails on layers narrower than a block. So
    each such component's weights are dequantised here, as a Forge nf4 file's are (the same per-layer
    names), into a model built from its config without the quantization_config."""
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
    saved: dict[str, tuple[str, str, dict[str, Any], str]] = {}
    for component, entry in index.items():
        config_file = folder / component / "config.json"
        if not (isinstance(entry, list) and len(entry) == 2 and config_file.is_file()):
            continue
        config = json.loads(config_file.read_text(encoding="utf-8"))
        kind = quant_formats.folder_format(config)
        if kind is not None:
            saved[component] = (str(entry[0]), str(entry[1]), config, kind)
    if not saved:
        return {}
    bitsandbytes_module(name, quant_formats.SHOWN[next(iter(saved.values()))[3]])
    import torch

    if torch.cuda.is_available():
        return {}
    return {
        component: _dequantised_component(folder / component, library, class_name, config, kind, dtype, name=name)
        for component, (library, class_name, config, kind) in saved.items()
    }


def _dequantised_component(
    subfolder: Path, library: str, class_name: str, config: dict[str, Any], kind: str, dtype: Any, *, name: str
) -> Any:
    import importlib

    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    what = f"{quant_formats.SHOWN[kind]} {subfolder.name}"
    cls = getattr(importlib.import_module(library), class_name, None) if library in _LIBRARIES else None
    if cls is None:
        raise ModelError(f"{name}: its {what} is a {library}.{class_name}, which Marble cannot build.")
    shards = sorted(subfolder.glob("*.safetensors"))
    if not shards:
        raise ModelError(f"{name}: its {subfolder.name} folder holds no .safetensors weights.")
    state: dict[str, Any] = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    weights = dequantise_bitsandbytes(state, kind, dtype, name=name)
    config = {key: value for key, value in config.items() if key != "quantization_config"}
    with init_empty_weights():
        if library == "diffusers":
            model = cls.from_config(config)
        else:
            model = cls(cls.config_class.from_dict(config))
    try:
        # strict=False: a tied weight (T5's encoder embedding) is absent from the file by design; what stays
        # empty is checked below instead.
        unexpected = model.load_state_dict(weights, strict=False, assign=True).unexpected_keys
    except RuntimeError as error:  # a tensor of another shape than its config says
        first = (str(error).strip().splitlines() or ["mismatch"])[-1].strip()[:300]
        raise ModelError(f"{name}: its {what} does not fit its own config ({first}).") from None
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # T5's encoder embedding is its shared one, which the file holds once
    empty = [key for key, tensor in model.state_dict().items() if tensor.is_meta]
    if unexpected or empty:
        first = (unexpected or empty)[0]
        problem = "holds a tensor it has no place for" if unexpected else "lacks a tensor"
        raise ModelError(f"{name}: its {what} {problem} ({first}); the folder is damaged or of another model.")
    # Assigned tensors keep their stored dtype; non-quantised ones (norms, biases) may be stored in another.
    return model.to(dtype=dtype).eval()


_LIBRARIES = ("diffusers", "transformers")


def quantise_linear_layers(transformer: Any, kind: str, device: str, compute_dtype: Any) -> int:
    """The nf4 / int8 memory modes: every linear layer of the loaded `transformer` (but those it keeps in
    float32) replaced by bitsandbytes' NF4 (double-quantised, as diffusers' BitsAndBytesConfig does) or
    LLM.int8 layer, quantised on `device` one layer at a time, so the full-precision transformer never has to
    fit there whole. Returns how many layers were replaced.

    Marble swaps the layers itself rather than reloading through diffusers' quantizer: the mode is chosen
    after the model is loaded (like fp8's layer-wise casting), and diffusers' quantizer refuses to run
    without a GPU, where bitsandbytes' CPU backend works.

    LoRAs: PEFT wraps a bitsandbytes layer as it wraps a torch Linear (the model is not marked as loaded in
    4/8 bits, so its generic LoRA layer, which calls the quantised base layer and adds the LoRA in full
    precision). A LoRA already loaded keeps its layers unquantised here (only the wrapped base layers
    change): the same numbers as loading it after the swap. The backend still drops and reloads LoRAs when
    the mode is entered, as for fp8."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ModelError(
            f"The {kind} memory mode needs the bitsandbytes package: install it into Marble's Python "
            "(pip install bitsandbytes), or choose another memory mode."
        ) from None
    import torch

    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    adapters = _adapter_layers(transformer)
    targets = [
        (name, module)
        for name, module in transformer.named_modules()
        if type(module) is torch.nn.Linear and not keep & set(name.split(".")) and id(module) not in adapters
    ]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name) if parent_name else transformer
        shape = (linear.in_features, linear.out_features)
        has_bias = linear.bias is not None
        if kind == "nf4":
            layer = bnb.nn.Linear4bit(
                *shape, bias=has_bias, compute_dtype=compute_dtype, quant_type="nf4", device="meta"
            )
            layer.weight = bnb.nn.Params4bit(
                linear.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
            )
        else:
            # diffusers' default outlier threshold: activations above 6 are multiplied in full precision.
            layer = bnb.nn.Linear8bitLt(*shape, bias=has_bias, has_fp16_weights=False, threshold=6.0, device="meta")
            layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
        if has_bias:
            layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        # Left in training mode (as made; nothing here trains: no dropout, no gradients), on purpose: on a CPU,
        # bitsandbytes 0.50 then multiplies by the dequantised weights (exactly the dequantised model's numbers),
        # while in eval mode it repacks NF4 weights for its AVX512 kernel (failing for layers under 64 inputs)
        # and runs int8 through its slow int8 path (9x slower on the tiny Flux). CUDA ignores the flag.
        layer.train(True)
        setattr(parent, child, layer.to(device))
    return len(targets)


def _adapter_layers(model: Any) -> set[int]:
    """id() of every module inside a PEFT adapter of `model` (a LoRA's lora_A / lora_B ...): PEFT's layers
    name their adapter containers in `adapter_layer_names`. Quantised with the model, a LoRA's small
    matrices would be rounded to 4 bits (an int8 one stops running); wrapped layers' `base_layer`s are the
    model's own and are quantised."""
    found: set[int] = set()
    for module in model.modules():
        for attribute in getattr(module, "adapter_layer_names", ()):
            container = getattr(module, attribute, None)
            if container is not None and hasattr(container, "modules"):
                found.update(id(inner) for inner in container.modules())
    return found
