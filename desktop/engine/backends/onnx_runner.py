"""A small ONNX interpreter in torch: insightface's face models run without onnxruntime.

`load_onnx_network` reads the file with the torch-free reader (desktop/engine/library/onnx_file.py) and
returns an `OnnxNetwork`, a torch module whose forward walks the graph's nodes in order, each a torch op,
so it runs wherever torch runs (CPU, CUDA, MPS after `.to(device)`) with no extra runtime in the installer.

The ops are those insightface's SCRFD detectors and ArcFace recognizers use (convolutions, batch norms,
activations, pools, the FPN's Resize/Upsample, Gemm) plus the shape arithmetic torch's exporter writes for
dynamic input sizes (Shape -> Gather -> Unsqueeze -> Concat -> Reshape). Integer tensors stay int64 as
ONNX has them, so those chains compute the same shapes. Each op follows the ONNX operator spec (pads are
[begin..., end...], PRelu's slope broadcasts numpy-style, Resize's coordinate and rounding modes), and the
tests compare whole graphs with onnxruntime. An op outside the list is refused when the file is loaded,
naming the op and the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.errors import ModelError
from desktop.engine.library.onnx_file import OnnxModel, OnnxNode, OnnxTensor, read_onnx

_INT64_MAX = (1 << 63) - 1


def load_onnx_network(path: Path, name: str) -> Any:
    """The ONNX file at `path` as a runnable `OnnxNetwork` (float32, on the CPU until moved)."""
    return _network_class()(read_onnx(path, name), name)


def _torch():
    import torch

    return torch


def _as_torch(tensor: OnnxTensor):
    torch = _torch()
    dtype = np.dtype(tensor.dtype) if tensor.dtype != "bfloat16" else None
    if dtype is None:  # numpy has no bfloat16: widen its bits to float32's upper half
        bits = np.frombuffer(tensor.data, dtype="<u2").astype(np.uint32) << 16
        array = bits.view(np.float32)
    else:
        array = np.frombuffer(tensor.data, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True)
    result = torch.from_numpy(np.ascontiguousarray(array)).reshape(tensor.dims)
    # Marble runs the face models in float32: half-precision weights are widened once here.
    return result.float() if result.is_floating_point() else result


def __getattr__(attribute: str) -> Any:
    # `OnnxNetwork` is a torch module class, built on first use so importing this module needs no torch.
    if attribute == "OnnxNetwork":
        return _network_class()
    raise AttributeError(attribute)


_CLASS: list[type] = []


def _network_class() -> type:
    if _CLASS:
        return _CLASS[0]
    torch = _torch()

    class OnnxNetwork(torch.nn.Module):
        """An ONNX graph as a torch module: forward(image) -> the graph's outputs, in graph order."""

        def __init__(self, model: OnnxModel, name: str) -> None:
            super().__init__()
            self.name = name
            self.opset = model.opset
            graph = model.graph
            self._constants: dict[str, str] = {}  # ONNX value name -> buffer name
            for index, tensor in enumerate(graph.initializers):
                self._add_constant(f"init{index}", tensor.name, _as_torch(tensor))
            self.input_names = tuple(v.name for v in graph.data_inputs)
            self.output_names = tuple(v.name for v in graph.outputs)
            self._steps: list[tuple[OnnxNode, Callable]] = []
            missing = sorted({n.op_type for n in graph.nodes if n.op_type not in _OPS})
            if missing:
                raise ModelError(
                    f"{name} uses the ONNX operator{'s' if len(missing) > 1 else ''} {', '.join(missing)}, which "
                    "Marble's ONNX runner does not support."
                )
            for index, node in enumerate(graph.nodes):
                if node.op_type == "Constant":  # evaluated once: a weight like any initializer
                    self._add_constant(f"const{index}", node.outputs[0], _constant(node, name))
                else:
                    self._steps.append((node, _OPS[node.op_type]))
            known = set(self._constants) | set(self.input_names)
            for node, _ in self._steps:
                absent = [i for i in node.inputs if i and i not in known]
                if absent:
                    raise ModelError(
                        f"{name}: the {node.op_type} node reads {absent[0]!r}, which no earlier node makes (the "
                        "graph is damaged or not in execution order)."
                    )
                known.update(node.outputs)
            absent = [o for o in self.output_names if o not in known]
            if absent:
                raise ModelError(f"{name}: no node makes the graph output {absent[0]!r}.")

        def _add_constant(self, buffer: str, value_name: str, value) -> None:
            self.register_buffer(buffer, value, persistent=False)
            self._constants[value_name] = buffer

        def forward(self, *inputs):
            if len(inputs) != len(self.input_names):
                raise ModelError(f"{self.name} takes {len(self.input_names)} input(s), not {len(inputs)}.")
            values = {value: getattr(self, buffer) for value, buffer in self._constants.items()}
            values.update(zip(self.input_names, inputs, strict=True))
            for node, op in self._steps:
                args = [values[i] if i else None for i in node.inputs]
                try:
                    results = op(_Context(node, self.opset, self.name), *args)
                except ModelError:
                    raise
                except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as error:
                    raise ModelError(
                        f"{self.name}: the {node.op_type} node {node.name or node.outputs[0]!r} failed ({error})."
                    ) from None
                if not isinstance(results, tuple):
                    results = (results,)
                for out, result in zip(node.outputs, results, strict=False):
                    if out:
                        values[out] = result
            return [values[o] for o in self.output_names]

    _CLASS.append(OnnxNetwork)
    return OnnxNetwork


class _Context:
    """What an op reads besides its inputs: the node's attributes, the opset, the file's name."""

    def __init__(self, node: OnnxNode, opset: int, name: str) -> None:
        self.node, self.opset, self.name = node, opset, name

    def get(self, attribute: str, default=None):
        value = self.node.attribute(attribute, default)
        return value.decode() if isinstance(value, bytes) else value

    def refuse(self, what: str) -> ModelError:
        return ModelError(
            f"{self.name}: the {self.node.op_type} node uses {what}, which Marble's ONNX runner does not support."
        )


def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _constant(node: OnnxNode, name: str):
    torch = _torch()
    for key, value in ((a.name, a.value) for a in node.attributes):
        if key == "value" and isinstance(value, OnnxTensor):
            return _as_torch(value)
        if key == "value_float":
            return torch.tensor(value, dtype=torch.float32)
        if key == "value_floats":
            return torch.tensor(list(value), dtype=torch.float32)
        if key == "value_int":
            return torch.tensor(value, dtype=torch.int64)
        if key == "value_ints":
            return torch.tensor(list(value), dtype=torch.int64)
    raise ModelError(f"{name}: a Constant node holds no numeric value Marble reads.")


# ---------------------------------------------------------------------------------------- helpers


def _torch_pads(onnx_pads: Sequence[int]) -> list[int]:
    """ONNX pads [d1_begin, d2_begin, ..., d1_end, d2_end, ...] -> F.pad's (last_begin, last_end, ...)."""
    half = len(onnx_pads) // 2
    result: list[int] = []
    for axis in reversed(range(half)):
        result += [onnx_pads[axis], onnx_pads[axis + half]]
    return result


def _spatial_pads(ctx: _Context, x, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]):
    """The ONNX pads of a conv/pool node, auto_pad resolved for this input's size."""
    spatial = len(kernel)
    auto = ctx.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(ctx.get("pads", ()) or [0] * 2 * spatial)
    elif auto == "VALID":
        pads = [0] * 2 * spatial
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for axis in range(spatial):
            size = x.shape[2 + axis]
            out = -(-size // strides[axis])
            total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else large)
            ends.append(large if auto == "SAME_UPPER" else small)
        pads = begins + ends
    else:
        raise ctx.refuse(f"auto_pad={auto}")
    if len(pads) != 2 * spatial:
        raise ctx.refuse(f"pads {pads} for {spatial} spatial axes")
    return pads


def _symmetric(pads: Sequence[int]) -> bool:
    half = len(pads) // 2
    return list(pads[:half]) == list(pads[half:])


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _broadcast_binary(fn):
    def op(ctx, a, b):
        return fn(a, b)

    return op


def _div(ctx, a, b):
    torch = _torch()
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates, as C does


def _unary(fn_name: str):
    def op(ctx, x):
        return getattr(_torch(), fn_name)(x)

    return op


# -------------------------------------------------------------------------------------------- ops


def _conv(ctx, x, weight, bias=None):
    torch = _torch()
    kernel = list(ctx.get("kernel_shape", ()) or weight.shape[2:])
    spatial = len(kernel)
    if spatial not in (1, 2, 3):
        raise ctx.refuse(f"a {spatial}-d convolution")
    strides = list(ctx.get("strides", ()) or [1] * spatial)
    dilations = list(ctx.get("dilations", ()) or [1] * spatial)
    pads = _spatial_pads(ctx, x, kernel, strides, dilations)
    padding: list[int] | int = 0
    if _symmetric(pads):
        padding = pads[:spatial]
    else:
        x = torch.nn.functional.pad(x, _torch_pads(pads))
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[spatial - 1]
    return conv(x, weight, bias, strides, padding, dilations, int(ctx.get("group", 1)))


def _batch_norm(ctx, x, scale, bias, mean, var, *_):
    torch = _torch()
    epsilon = float(ctx.get("epsilon", 1e-5))
    if scale.dim() == 1:
        return torch.nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)
    # mxnet's exporter writes spatial=0 (opset < 9): statistics per element of C x H x W, not per channel.
    return (x - mean) / torch.sqrt(var + epsilon) * scale + bias


def _prelu(ctx, x, slope):
    # ONNX broadcasts the slope numpy-style (a (C,1,1) slope per channel; a (C,) slope against the LAST
    # axis), unlike torch's prelu, which always puts a 1-d slope on axis 1.
    return _torch().where(x >= 0, x, x * slope)


def _leaky_relu(ctx, x):
    return _torch().nn.functional.leaky_relu(x, float(ctx.get("alpha", 0.01)))


def _pool(ctx, x, kind: str):
    torch = _torch()
    kernel = list(ctx.get("kernel_shape"))
    if len(kernel) != 2 or x.dim() != 4:
        raise ctx.refuse(f"{len(kernel)}-d pooling")
    strides = list(ctx.get("strides", ()) or [1, 1])
    dilations = list(ctx.get("dilations", ()) or [1, 1])
    pads = _spatial_pads(ctx, x, kernel, strides, dilations)
    ceil = bool(ctx.get("ceil_mode", 0))
    if kind == "max":
        padding = 0
        if _symmetric(pads) and all(p <= k // 2 for p, k in zip(pads, kernel * 2, strict=True)):
            padding = pads[:2]
        else:
            x = torch.nn.functional.pad(x, _torch_pads(pads), value=-math.inf)
        return torch.nn.functional.max_pool2d(x, kernel, strides, padding, dilations, ceil)
    if dilations != [1, 1]:
        raise ctx.refuse("a dilated average pool")
    # Window sums of the input and of a mask of counted positions: exact for every pads / count_include_pad
    # / ceil_mode combination (torch's own divisor differs from ONNX's for asymmetric pads).
    count_pads = bool(ctx.get("count_include_pad", 0))
    ones = torch.ones_like(x[:1, :1])
    torch_pads = _torch_pads(pads)
    padded = torch.nn.functional.pad(x, torch_pads)
    mask = torch.nn.functional.pad(ones, torch_pads, value=1.0 if count_pads else 0.0)
    sums = torch.nn.functional.avg_pool2d(padded, kernel, strides, 0, ceil, True, divisor_override=1)
    counts = torch.nn.functional.avg_pool2d(mask, kernel, strides, 0, ceil, True, divisor_override=1)
    return sums / counts


def _global_average_pool(ctx, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_max_pool(ctx, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def _flatten(ctx, x):
    axis = _axis(int(ctx.get("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _gemm(ctx, a, b, c=None):
    if ctx.get("transA", 0):
        a = a.t()
    if ctx.get("transB", 0):
        b = b.t()
    result = float(ctx.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        result = result + float(ctx.get("beta", 1.0)) * c
    return result


def _matmul(ctx, a, b):
    return a @ b


def _reshape(ctx, x, shape=None):
    target = _ints(shape) if shape is not None else list(ctx.get("shape"))
    if not ctx.get("allowzero", 0):
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _transpose(ctx, x):
    perm = ctx.get("perm") or tuple(reversed(range(x.dim())))
    return x.permute(*perm)


def _concat(ctx, *tensors):
    return _torch().cat([t for t in tensors if t is not None], dim=int(ctx.get("axis")))


def _shape(ctx, x):
    torch = _torch()
    dims = list(x.shape)
    start, end = ctx.get("start", 0), ctx.get("end")
    dims = dims[start:end] if end is not None else dims[start:]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def _gather(ctx, x, indices):
    axis = _axis(int(ctx.get("axis", 0)), x.dim())
    flat = indices.reshape(-1).long()
    flat = _torch().where(flat < 0, flat + x.shape[axis], flat)
    picked = x.index_select(axis, flat)
    return picked.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))


def _axes(ctx, given) -> list[int] | None:
    if given is not None:
        return _ints(given)
    axes = ctx.get("axes")
    return list(axes) if axes is not None else None


def _unsqueeze(ctx, x, axes=None):
    wanted = _axes(ctx, axes) or []
    rank = x.dim() + len(wanted)
    for axis in sorted(_axis(a, rank) for a in wanted):
        x = x.unsqueeze(axis)
    return x


def _squeeze(ctx, x, axes=None):
    wanted = _axes(ctx, axes)
    if wanted is None:
        return x.reshape([d for d in x.shape if d != 1])
    drop = {_axis(a, x.dim()) for a in wanted}
    return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])


def _slice(ctx, x, starts=None, ends=None, axes=None, steps=None):
    torch = _torch()
    if starts is None:  # opset 1-9: attributes
        begin, end = list(ctx.get("starts")), list(ctx.get("ends"))
        axis_list = list(ctx.get("axes", ()) or range(len(begin)))
        step_list = [1] * len(begin)
    else:
        begin, end = _ints(starts), _ints(ends)
        axis_list = _ints(axes) if axes is not None else list(range(len(begin)))
        step_list = _ints(steps) if steps is not None else [1] * len(begin)
    index: list = [slice(None)] * x.dim()
    reversed_axes = []
    for b, e, a, s in zip(begin, end, axis_list, step_list, strict=True):
        axis = _axis(a, x.dim())
        size = x.shape[axis]
        b, e = max(min(b, _INT64_MAX), -_INT64_MAX), max(min(e, _INT64_MAX), -_INT64_MAX)
        start, stop, step = slice(b, e, s).indices(size)  # Python clamps as ONNX does, negative steps too
        if step > 0:
            index[axis] = slice(start, stop, step)
        else:
            reversed_axes.append((axis, torch.tensor(list(range(start, stop, step)), dtype=torch.long)))
    result = x[tuple(index)]
    for axis, picks in reversed_axes:
        result = result.index_select(axis, picks.to(result.device))
    return result


def _identity(ctx, x, *_):
    return x


def _dropout(ctx, x, *_):
    mask = _torch().ones_like(x, dtype=_torch().bool)
    return x, mask


def _pow(ctx, x, y):
    return _torch().pow(x, y).to(x.dtype)


def _reduce(fn: str):
    def op(ctx, x, axes=None):
        torch = _torch()
        wanted = _axes(ctx, axes)
        keep = bool(ctx.get("keepdims", 1))
        if not wanted:
            if ctx.get("noop_with_empty_axes", 0):
                return x
            wanted = list(range(x.dim()))
        dims = tuple(_axis(a, x.dim()) for a in wanted)
        if fn == "l2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        return getattr(x, fn)(dim=dims, keepdim=keep)

    return op


def _softmax(ctx, x, kind: str = "softmax"):
    torch = _torch()
    fn = torch.softmax if kind == "softmax" else torch.log_softmax
    if ctx.opset >= 13:
        return fn(x, dim=int(ctx.get("axis", -1)))
    axis = _axis(int(ctx.get("axis", 1)), x.dim())  # before opset 13: over everything from `axis` on
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return fn(flat, dim=1).reshape(x.shape)


def _split(ctx, x, split=None):
    axis = _axis(int(ctx.get("axis", 0)), x.dim())
    sizes = _ints(split) if split is not None else list(ctx.get("split", ()) or ())
    count = len(ctx.node.outputs)
    if not sizes:
        size = x.shape[axis]
        chunk = -(-size // count)
        sizes = [min(chunk, size - i * chunk) for i in range(count)]
    return tuple(x.split(sizes, dim=axis))


def _clip(ctx, x, low=None, high=None):
    torch = _torch()
    if ctx.opset < 11:
        low_value, high_value = ctx.get("min", -math.inf), ctx.get("max", math.inf)
        return torch.clamp(x, low_value, high_value)
    if low is not None:
        x = torch.maximum(x, low.to(x.dtype))
    if high is not None:
        x = torch.minimum(x, high.to(x.dtype))
    return x


def _pad(ctx, x, pads=None, value=None, axes=None):
    torch = _torch()
    mode = ctx.get("mode", "constant")
    if pads is None:  # before opset 11: attributes
        onnx_pads, fill = list(ctx.get("pads")), float(ctx.get("value", 0.0))
    else:
        onnx_pads = _ints(pads)
        fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
    if axes is not None:
        wanted = [_axis(a, x.dim()) for a in _ints(axes)]
        full = [0] * 2 * x.dim()
        for i, axis in enumerate(wanted):
            full[axis], full[axis + x.dim()] = onnx_pads[i], onnx_pads[i + len(wanted)]
        onnx_pads = full
    torch_pads = _torch_pads(onnx_pads)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]  # torch pads only trailing axes for reflect/replicate
    if mode == "constant":
        return torch.nn.functional.pad(x, torch_pads, value=fill)
    torch_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise ctx.refuse(f"Pad mode {mode!r}")
    return torch.nn.functional.pad(x, torch_pads, mode=torch_mode)


_CAST_TYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 16: "bfloat16"}  # fmt: skip


def _cast(ctx, x):
    target = _CAST_TYPES.get(int(ctx.get("to")))
    if target is None:
        raise ctx.refuse(f"a cast to ONNX type {ctx.get('to')}")
    return x.to(getattr(_torch(), target))


def _resize_coordinates(ctx, mode: str, out_size: int, in_size: int, scale: float):
    torch = _torch()
    out = torch.arange(out_size, dtype=torch.float64)
    if mode == "half_pixel":
        return (out + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (out + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(out)
    if mode == "align_corners":
        return out * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(out)
    if mode == "asymmetric":
        return out / scale
    if mode == "tf_half_pixel_for_nn":
        return (out + 0.5) / scale
    raise ctx.refuse(f"Resize's coordinate_transformation_mode {mode!r}")


def _nearest_index(ctx, rounding: str, coords):
    torch = _torch()
    if rounding == "round_prefer_floor":
        return torch.ceil(coords - 0.5)
    if rounding == "round_prefer_ceil":
        return torch.floor(coords + 0.5)
    if rounding == "floor":
        return torch.floor(coords)
    if rounding == "ceil":
        return torch.ceil(coords)
    raise ctx.refuse(f"Resize's nearest_mode {rounding!r}")


def _resample(ctx, x, sizes: list[int], scales: list[float], mode: str, transform: str, rounding: str):
    """Resize each axis that changes, one at a time: nearest picks an index, linear blends two."""
    if mode not in ("nearest", "linear", "bilinear"):
        raise ctx.refuse(f"Resize mode {mode!r}")
    for axis in range(x.dim()):
        in_size, out_size, scale = x.shape[axis], sizes[axis], scales[axis]
        if in_size == out_size and scale == 1.0:
            continue
        if axis < 2 and x.dim() > 2:
            raise ctx.refuse("resizing the batch or channel axis")
        coords = _resize_coordinates(ctx, transform, out_size, in_size, scale)
        if mode == "nearest":
            index = _nearest_index(ctx, rounding, coords).clamp(0, in_size - 1).long().to(x.device)
            x = x.index_select(axis, index)
            continue
        coords = coords.clamp(0, in_size - 1)
        low = coords.floor().long()
        high = (low + 1).clamp(max=in_size - 1)
        weight = (coords - low).to(x.dtype).to(x.device)
        shape = [1] * x.dim()
        shape[axis] = out_size
        weight = weight.reshape(shape)
        a, b = x.index_select(axis, low.to(x.device)), x.index_select(axis, high.to(x.device))
        x = a + (b - a) * weight
    return x


def _resize(ctx, x, roi=None, scales=None, sizes=None):
    if ctx.opset < 11:  # Resize-10: (X, scales); asymmetric coordinates
        scales, transform, rounding = roi, "asymmetric", "floor"
    else:
        transform = ctx.get("coordinate_transformation_mode", "half_pixel")
        rounding = ctx.get("nearest_mode", "round_prefer_floor")
    if ctx.get("antialias", 0):
        raise ctx.refuse("an antialiased Resize")
    return _resized(ctx, x, scales, sizes, ctx.get("mode", "nearest"), transform, rounding)


def _upsample(ctx, x, scales=None):
    if scales is None:
        scales_list = list(ctx.get("scales"))
        return _resized_by(ctx, x, scales_list, ctx.get("mode", "nearest"), "asymmetric", "floor")
    return _resized(ctx, x, scales, None, ctx.get("mode", "nearest"), "asymmetric", "floor")


def _resized(ctx, x, scales, sizes, mode, transform, rounding):
    if sizes is not None and sizes.numel():
        out = _ints(sizes)
        if len(out) != x.dim():
            raise ctx.refuse("Resize sizes for only some axes")
        return _resample(ctx, x, out, [o / i for o, i in zip(out, x.shape, strict=True)], mode, transform, rounding)
    if scales is None or not scales.numel():
        raise ModelError(f"{ctx.name}: a Resize node has neither scales nor sizes.")
    return _resized_by(ctx, x, [float(s) for s in scales.reshape(-1).tolist()], mode, transform, rounding)


def _resized_by(ctx, x, scales: list[float], mode, transform, rounding):
    if len(scales) != x.dim():
        raise ctx.refuse(f"{len(scales)} scales for a {x.dim()}-d input")
    out = [int(math.floor(size * scale)) for size, scale in zip(x.shape, scales, strict=True)]
    return _resample(ctx, x, out, scales, mode, transform, rounding)


def _constant_of_shape(ctx, shape):
    torch = _torch()
    value = ctx.node.attribute("value")
    fill = _as_torch(value).reshape(-1) if isinstance(value, OnnxTensor) else torch.zeros(1)
    return fill.to(shape.device).expand(_ints(shape)).clone()


def _range(ctx, start, limit, delta):
    torch = _torch()
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _expand(ctx, x, shape):
    target = _ints(shape)
    rank = max(len(target), x.dim())
    x = x.reshape([1] * (rank - x.dim()) + list(x.shape))
    target = [1] * (rank - len(target)) + target
    return x.expand([max(d, t) if d == 1 or t == 1 else d for d, t in zip(x.shape, target, strict=True)]).clone()


def _tile(ctx, x, repeats):
    return x.repeat(_ints(repeats))


def _where(ctx, condition, a, b):
    return _torch().where(condition.bool(), a, b)


def _comparison(fn: str):
    def op(ctx, a, b):
        return getattr(_torch(), fn)(a, b)

    return op


def _variadic(fn: str):
    def op(ctx, *tensors):
        result = tensors[0]
        for tensor in tensors[1:]:
            result = getattr(_torch(), fn)(result, tensor)
        return result

    return op


def _hard_sigmoid(ctx, x):
    alpha, beta = float(ctx.get("alpha", 0.2)), float(ctx.get("beta", 0.5))
    return (alpha * x + beta).clamp(0, 1)


def _elu(ctx, x):
    return _torch().nn.functional.elu(x, float(ctx.get("alpha", 1.0)))


def _instance_norm(ctx, x, scale, bias):
    return _torch().nn.functional.instance_norm(x, weight=scale, bias=bias, eps=float(ctx.get("epsilon", 1e-5)))


def _arg(fn: str):
    def op(ctx, x):
        axis = _axis(int(ctx.get("axis", 0)), x.dim())
        return getattr(x, fn)(dim=axis, keepdim=bool(ctx.get("keepdims", 1)))

    return op


_OPS: dict[str, Callable] = {
    "Conv": _conv, "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm,
    "Relu": _unary("relu"), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"), "Exp": _unary("exp"),
    "Log": _unary("log"), "Sqrt": _unary("sqrt"), "Abs": _unary("abs"), "Neg": _unary("neg"),
    "Floor": _unary("floor"), "Ceil": _unary("ceil"), "Reciprocal": _unary("reciprocal"), "Not": _unary("logical_not"),
    "PRelu": _prelu, "LeakyRelu": _leaky_relu, "Elu": _elu, "HardSigmoid": _hard_sigmoid,
    "Add": _broadcast_binary(lambda a, b: a + b), "Sub": _broadcast_binary(lambda a, b: a - b),
    "Mul": _broadcast_binary(lambda a, b: a * b), "Div": _div, "Pow": _pow,
    "Sum": _variadic("add"), "Max": _variadic("maximum"), "Min": _variadic("minimum"),
    "Equal": _comparison("eq"), "Less": _comparison("lt"), "Greater": _comparison("gt"), "Where": _where,
    "MaxPool": lambda ctx, x: _pool(ctx, x, "max"), "AveragePool": lambda ctx, x: _pool(ctx, x, "average"),
    "GlobalAveragePool": _global_average_pool, "GlobalMaxPool": _global_max_pool,
    "Flatten": _flatten, "Gemm": _gemm, "MatMul": _matmul, "Reshape": _reshape, "Transpose": _transpose,
    "Concat": _concat, "Resize": _resize, "Upsample": _upsample, "Shape": _shape, "Gather": _gather,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Slice": _slice, "Constant": _identity, "Identity": _identity,
    "Dropout": _dropout, "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("amax"),
    "ReduceMin": _reduce("amin"), "ReduceL2": _reduce("l2"),
    "Softmax": _softmax, "LogSoftmax": lambda ctx, x: _softmax(ctx, x, "log_softmax"), "Split": _split,
    "Clip": _clip, "Pad": _pad, "Cast": _cast, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Expand": _expand, "Tile": _tile, "ArgMax": _arg("argmax"), "ArgMin": _arg("argmin"),
}  # fmt: skip
SUPPORTED_OPS = frozenset(_OPS)
