"""ONNX files without onnx or torch: a reader of the protobuf bytes, and what a face model's graph is.

insightface's face models (SCRFD detectors such as det_10g.onnx, ArcFace recognizers such as w600k_r50.onnx)
ship only as ONNX. Marble reads them itself instead of depending on onnx/onnxruntime: an ONNX file is a
protobuf ModelProto, and the few messages a graph needs (graph, nodes, attributes, tensors, value infos)
are small enough to decode from the wire format directly. Unlike a pickle, reading it runs no code.

The reader reads the file once (they are 2-200 MB) and keeps tensor bytes as slices of that one buffer.
It refuses, by name: files that are not protobuf or end mid-field, tensors stored outside the file
(external data), tensors whose byte count does not match their dims, absurd dims, nodes from operator
domains other than the default one, subgraph attributes, and files without a graph.

`inspect_face_model` tells the two face networks apart from their inputs and outputs:
- detector (SCRFD): one NCHW 3-channel input; 6 or 9 outputs in insightface's order, three strides
  (8, 16, 32) of scores, then of box distances, then (9 outputs) of 5 landmark offsets. Widths 1 / 4 / 10.
- recognizer (ArcFace): a 3x112x112 input, one output, the identity embedding (512 wide for every released
  model). insightface feeds it (x - 127.5) / 127.5, unless the graph starts with its own Sub and Mul.
"""

from __future__ import annotations

import math
import os
import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import ModelError
from desktop.engine.safe_files import open_regular

# TensorProto.DataType -> (name, bytes per element)
DATA_TYPES = {
    1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2), 6: ("int32", 4),
    7: ("int64", 8), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8), 12: ("uint32", 4), 13: ("uint64", 8),
    16: ("bfloat16", 2),
}  # fmt: skip
FLOAT, INT64 = 1, 7
# Nodes of these operator domains are the standard ONNX operators; anything else is a vendor's own op.
_DEFAULT_DOMAINS = ("", "ai.onnx")
# A real face model's largest tensor is a few million elements; more than this is a damaged or hostile file.
MAX_ELEMENTS = 1 << 31
MAX_RANK = 8
MAX_FILE_BYTES = 4 << 30  # protobuf itself cannot exceed 2 GB; anything larger is not a single-file ONNX model
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
# The first key of a ModelProto (ir_version, field 1, varint) and the keys that may follow it.
_MODEL_FIRST_KEYS = frozenset(bytes([tag]) for tag in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72))

DETECTOR = "face_detector"
RECOGNIZER = "face_recognizer"
_STRIDES = (8, 16, 32)
_DETECTOR_WIDTHS = (1, 4, 10)  # score, box distances, 5 landmark offsets: per anchor, the last axis


@dataclass(frozen=True)
class OnnxTensor:
    """One tensor: its dims, ONNX data type and little-endian bytes (exactly prod(dims) elements)."""

    name: str
    dims: tuple[int, ...]
    data_type: int
    data: bytes | memoryview

    @property
    def dtype(self) -> str:
        return DATA_TYPES[self.data_type][0]


@dataclass(frozen=True)
class OnnxAttribute:
    name: str
    value: float | int | bytes | OnnxTensor | tuple[float, ...] | tuple[int, ...] | tuple[bytes, ...]


@dataclass(frozen=True)
class OnnxNode:
    op_type: str
    name: str
    inputs: tuple[str, ...]  # "" marks an optional input left out
    outputs: tuple[str, ...]
    attributes: tuple[OnnxAttribute, ...]

    def attribute(self, name: str, default: object = None) -> object:
        return next((a.value for a in self.attributes if a.name == name), default)


@dataclass(frozen=True)
class OnnxValue:
    """A graph input or output: its name, element type and dims (an int, a symbolic name, or None)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None  # None: no shape recorded


@dataclass(frozen=True)
class OnnxGraph:
    nodes: tuple[OnnxNode, ...]
    initializers: tuple[OnnxTensor, ...]
    inputs: tuple[OnnxValue, ...]  # including those that initializers feed (older exporters list them)
    outputs: tuple[OnnxValue, ...]

    @property
    def data_inputs(self) -> tuple[OnnxValue, ...]:
        """The inputs a caller feeds: those no initializer provides."""
        constant = {t.name for t in self.initializers}
        return tuple(v for v in self.inputs if v.name not in constant)


@dataclass(frozen=True)
class OnnxModel:
    ir_version: int
    opset: int  # the default domain's opset version
    producer: str
    graph: OnnxGraph


@dataclass(frozen=True)
class FaceModelInfo:
    """What a face model's graph says, and how the caller must normalise its input."""

    task: str  # DETECTOR | RECOGNIZER
    label: str
    input_size: tuple[int, int] | None  # (width, height) when the graph fixes it; None: any size
    input_mean: float  # feed (pixel - input_mean) / input_std, pixels 0..255 RGB
    input_std: float
    landmarks: int  # 5 for a detector with keypoint outputs, else 0
    embedding_size: int  # a recognizer's embedding width; 0 for a detector


# ------------------------------------------------------------------------------------ the wire format


class _Truncated(Exception):
    """The bytes end inside a field, or a field is malformed: not (complete) protobuf."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int = 0, end: int | None = None):
    """(field number, wire type, value) of one message: an int for varints and fixed, a slice for bytes."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Truncated
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _BYTES:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            if pos + size > end:
                raise _Truncated
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        else:
            raise _Truncated  # groups (3, 4) are proto2 leftovers no ONNX writer uses; 6, 7 do not exist
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _ints(wire: int, value, into: list[int]) -> None:
    """A repeated int64/int32 field: one varint, or a packed run of them."""
    if wire == _VARINT:
        into.append(_signed(value))
    elif wire == _BYTES:
        pos, end = 0, len(value)
        while pos < end:
            item, pos = _varint(value, pos, end)
            into.append(_signed(item))
    else:
        raise _Truncated


def _floats(wire: int, value, into: array, code: str = "f") -> None:
    """A repeated float (or double) field: one fixed value, or a packed run."""
    size = array(code).itemsize
    if wire == (_FIXED32 if code == "f" else _FIXED64):
        into.append(array(code, value.to_bytes(size, "little"))[0])
    elif wire == _BYTES:
        if len(value) % size:
            raise _Truncated
        packed = array(code)
        packed.frombytes(bytes(value))
        if sys.byteorder != "little":
            packed.byteswap()
        into.extend(packed)
    else:
        raise _Truncated


def _text(value) -> str:
    return bytes(value).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------- messages


class _Decoder:
    def __init__(self, name: str) -> None:
        self.name = name

    def model(self, buf: memoryview) -> OnnxModel:
        ir_version, producer, graph, opset = 0, "", None, None
        for number, wire, value in _fields(buf):
            if number == 1 and wire == _VARINT:
                ir_version = value
            elif number == 2 and wire == _BYTES:
                producer = _text(value)
            elif number == 7 and wire == _BYTES:
                graph = value
            elif number == 8 and wire == _BYTES:
                domain, version = "", 0
                for sub, sub_wire, sub_value in _fields(value):
                    if sub == 1 and sub_wire == _BYTES:
                        domain = _text(sub_value)
                    elif sub == 2 and sub_wire == _VARINT:
                        version = sub_value
                if domain in _DEFAULT_DOMAINS:
                    opset = version
        if graph is None:
            raise ModelError(f"{self.name} is not an ONNX model: it holds no graph.")
        if not 1 <= ir_version <= 64:
            raise ModelError(f"{self.name} is not an ONNX model (IR version {ir_version}).")
        # Before opset_import existed (IR version 2) the default domain's opset was 1.
        return OnnxModel(ir_version, opset if opset is not None else 1, producer, self.graph(graph))

    def graph(self, buf: memoryview) -> OnnxGraph:
        nodes, initializers, inputs, outputs = [], [], [], []
        for number, wire, value in _fields(buf):
            if wire != _BYTES:
                continue
            if number == 1:
                nodes.append(self.node(value))
            elif number == 5:
                initializers.append(self.tensor(value))
            elif number == 15:
                raise ModelError(f"{self.name} stores sparse initializers, which Marble's ONNX reader does not read.")
            elif number == 11:
                inputs.append(self.value_info(value))
            elif number == 12:
                outputs.append(self.value_info(value))
        return OnnxGraph(tuple(nodes), tuple(initializers), tuple(inputs), tuple(outputs))

    def node(self, buf: memoryview) -> OnnxNode:
        inputs, outputs, attributes = [], [], []
        op_type = name = domain = ""
        for number, wire, value in _fields(buf):
            if wire != _BYTES:
                continue
            if number == 1:
                inputs.append(_text(value))
            elif number == 2:
                outputs.append(_text(value))
            elif number == 3:
                name = _text(value)
            elif number == 4:
                op_type = _text(value)
            elif number == 7:
                domain = _text(value)
            elif number == 5:
                attributes.append(value)
        if domain not in _DEFAULT_DOMAINS:
            raise ModelError(
                f"{self.name} uses the operator {op_type!r} of the domain {domain!r}; Marble runs only standard "
                "ONNX operators."
            )
        decoded = tuple(self.attribute(a, op_type) for a in attributes)
        return OnnxNode(op_type, name, tuple(inputs), tuple(outputs), decoded)

    def attribute(self, buf: memoryview, op_type: str) -> OnnxAttribute:
        name, kind = "", 0
        scalar: object = None
        ints: list[int] = []
        floats = array("f")
        strings: list[bytes] = []
        for number, wire, value in _fields(buf):
            if number == 1 and wire == _BYTES:
                name = _text(value)
            elif number == 20 and wire == _VARINT:
                kind = value
            elif number == 2 and wire == _FIXED32:
                scalar = struct.unpack("<f", value.to_bytes(4, "little"))[0]
            elif number == 3 and wire == _VARINT:
                scalar = _signed(value)
            elif number == 4 and wire == _BYTES:
                scalar = bytes(value)
            elif number == 5 and wire == _BYTES:
                scalar = self.tensor(value)
            elif number in (6, 11):
                raise ModelError(
                    f"{self.name}: the {op_type} node carries a subgraph (control flow), which Marble's ONNX "
                    "reader does not run."
                )
            elif number == 7:
                _floats(wire, value, floats)
            elif number == 8:
                _ints(wire, value, ints)
            elif number == 9 and wire == _BYTES:
                strings.append(bytes(value))
        # The type field says which value is meant (an unset scalar field reads as its zero).
        defaults = {1: 0.0, 2: 0, 3: b""}
        if kind in (1, 2, 3, 4):
            result = scalar if scalar is not None else defaults.get(kind)
        elif kind == 6:
            result = tuple(floats)
        elif kind == 7:
            result = tuple(ints)
        elif kind == 8:
            result = tuple(strings)
        elif kind == 0:  # IR version 1 files have no type field: whichever value is set
            result = scalar if scalar is not None else tuple(ints) or tuple(floats) or tuple(strings)
        else:
            raise ModelError(f"{self.name}: the {op_type} node's attribute {name!r} has a type Marble does not read.")
        if result is None:
            raise ModelError(f"{self.name}: the {op_type} node's attribute {name!r} has no value.")
        return OnnxAttribute(name, result)

    def tensor(self, buf: memoryview) -> OnnxTensor:
        dims: list[int] = []
        data_type, name, raw = 0, "", None
        float_data, double_data = array("f"), array("d")
        int32_data: list[int] = []
        int64_data: list[int] = []
        for number, wire, value in _fields(buf):
            if number == 1:
                _ints(wire, value, dims)
            elif number == 2 and wire == _VARINT:
                data_type = value
            elif number == 8 and wire == _BYTES:
                name = _text(value)
            elif number == 9 and wire == _BYTES:
                raw = value
            elif number == 4:
                _floats(wire, value, float_data)
            elif number == 10:
                _floats(wire, value, double_data, "d")
            elif number == 5:
                _ints(wire, value, int32_data)
            elif number in (7, 11):
                _ints(wire, value, int64_data)
            elif number == 6:
                raise ModelError(f"{self.name}: the tensor {name!r} holds strings; a face model's tensors are numbers.")
            elif number in (13, 14) and (number == 13 or value == 1):
                raise ModelError(
                    f"{self.name} keeps its weights in a separate file (ONNX external data, tensor {name!r}); "
                    "Marble imports single-file ONNX models only."
                )
        label = f"{self.name}: the tensor {name or '(unnamed)'}"
        if data_type not in DATA_TYPES:
            raise ModelError(f"{label} has the data type {data_type}, which Marble does not read.")
        if len(dims) > MAX_RANK or any(d < 0 or d > MAX_ELEMENTS for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            raise ModelError(f"{label} has impossible dims {dims}.")
        count, (dtype, itemsize) = math.prod(dims), DATA_TYPES[data_type]
        if raw is not None:
            data: bytes | memoryview = raw
        elif float_data:
            data = _little(float_data)
        elif double_data:
            data = _little(double_data)
        elif int64_data:
            if dtype not in ("int64", "uint64"):
                raise ModelError(f"{label} stores {dtype} values in a 64-bit integer field, which ONNX does not allow.")
            values = int64_data if dtype == "int64" else [v % (1 << 64) for v in int64_data]
            data = _little(array("q" if dtype == "int64" else "Q", values))
        elif int32_data:
            data = _from_int32_field(int32_data, dtype, label)
        else:
            data = b""
        if len(data) != count * itemsize:
            raise ModelError(
                f"{label} has {len(data) // itemsize if itemsize else 0} {dtype} values where its dims {dims} need "
                f"{count}: the file is damaged."
            )
        return OnnxTensor(name, tuple(dims), data_type, data)

    def value_info(self, buf: memoryview) -> OnnxValue:
        name, elem_type, dims = "", 0, None
        for number, wire, value in _fields(buf):
            if number == 1 and wire == _BYTES:
                name = _text(value)
            elif number == 2 and wire == _BYTES:
                for type_field, type_wire, tensor_type in _fields(value):
                    if type_field == 1 and type_wire == _BYTES:
                        elem_type, dims = _tensor_type(tensor_type)
        return OnnxValue(name, elem_type, dims)


def _tensor_type(buf: memoryview) -> tuple[int, tuple[int | str | None, ...] | None]:
    elem_type, dims = 0, None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == _VARINT:
            elem_type = value
        elif number == 2 and wire == _BYTES:
            dims = []
            for dim_field, dim_wire, dim in _fields(value):
                if dim_field != 1 or dim_wire != _BYTES:
                    continue
                size: int | str | None = None
                for part, part_wire, part_value in _fields(dim):
                    if part == 1 and part_wire == _VARINT:
                        size = _signed(part_value)
                    elif part == 2 and part_wire == _BYTES:
                        size = _text(part_value)
                dims.append(size)
            dims = tuple(dims)
    return elem_type, dims


def _little(values: array) -> bytes:
    if sys.byteorder != "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_int32_field(values: list[int], dtype: str, label: str) -> bytes:
    # int32_data carries every narrow type: int8..int32, uint8/16, bool, and float16/bfloat16 as their bits.
    codes = {"int32": "i", "int16": "h", "int8": "b", "uint8": "B", "uint16": "H", "bool": "B", "float16": "H",
             "bfloat16": "H"}  # fmt: skip
    if dtype not in codes:
        raise ModelError(f"{label} stores {dtype} values in the int32 field, which ONNX does not allow.")
    try:
        return _little(array(codes[dtype], values))
    except OverflowError:
        raise ModelError(f"{label} has a value outside the {dtype} range: the file is damaged.") from None


# ------------------------------------------------------------------------------------------ public


def looks_like_onnx(head: bytes) -> bool:
    """Whether `head` opens like an ONNX ModelProto: ir_version (field 1) first, then another model field.

    Protobuf has no magic number; every ONNX writer puts ir_version first (fields go in number order)."""
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 64:
        return False
    return head[2:3] in _MODEL_FIRST_KEYS


def read_onnx(path: Path, name: str) -> OnnxModel:
    """The model in an ONNX file; ModelError naming `name` when it is not one Marble can read."""
    stream = open_regular(path, label=name)
    assert stream is not None
    with stream:
        size = os.fstat(stream.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise ModelError(f"{name} is {size / 2**30:.1f} GB; a single-file ONNX model is under 2 GB.")
        try:
            data = stream.read()
        except OSError as exc:
            raise ModelError(f"{name} cannot be read ({exc.strerror or exc}).") from None
    return parse_onnx(data, name)


def parse_onnx(data: bytes, name: str) -> OnnxModel:
    """The model in ONNX bytes (see read_onnx)."""
    if not looks_like_onnx(data[:3]):
        raise ModelError(f"{name} is not an ONNX model (its first bytes are not an ONNX ModelProto's).")
    try:
        return _Decoder(name).model(memoryview(data))
    except _Truncated:
        raise ModelError(f"{name} is not a complete ONNX file: it ends inside a field or is not protobuf.") from None


def inspect_face_model(model: OnnxModel, name: str) -> FaceModelInfo:
    """A face detector (SCRFD) or recognizer (ArcFace) as insightface runs it; ModelError for any other graph."""
    graph = model.graph
    inputs = graph.data_inputs
    image = inputs[0] if len(inputs) == 1 else None
    dims = image.dims if image is not None else None
    if image is None or dims is None or len(dims) != 4 or dims[1] != 3:
        return _not_a_face_model(name, "it does not take one 3-channel NCHW image")
    height, width = dims[2], dims[3]
    fixed = (width, height) if isinstance(width, int) and isinstance(height, int) and width > 0 else None
    outputs = graph.outputs
    if len(outputs) in (6, 9):
        problem = _detector_problem(outputs)
        if problem:
            return _not_a_face_model(name, problem)
        landmarks = 5 if len(outputs) == 9 else 0
        label = f"SCRFD face detector ({landmarks} landmarks)" if landmarks else "SCRFD face detector"
        return FaceModelInfo(DETECTOR, label, fixed, 127.5, 128.0, landmarks, 0)
    if len(outputs) == 1 and fixed == (112, 112):
        out_dims = outputs[0].dims
        width_out = out_dims[-1] if out_dims and len(out_dims) == 2 else None
        if out_dims is None or not isinstance(width_out, int):
            width_out = _embedding_width(graph, outputs[0].name)  # no recorded shape: the last layer's weights
        if not isinstance(width_out, int) or width_out <= 0:
            return _not_a_face_model(name, "its one output is not an embedding (N x width)")
        mean, std = (0.0, 1.0) if _normalises_itself(graph) else (127.5, 127.5)
        return FaceModelInfo(RECOGNIZER, f"ArcFace face recognizer ({width_out}-d)", fixed, mean, std, 0, width_out)
    return _not_a_face_model(
        name,
        f"it has {len(outputs)} outputs and a {_shown(dims)} input (a detector has 6 or 9 outputs, a "
        "recognizer one output and a 3x112x112 input)",
    )


def _detector_problem(outputs: tuple[OnnxValue, ...]) -> str:
    """Why outputs are not SCRFD's (scores, boxes[, landmarks]) x strides 8/16/32; "" when they are."""
    strides = len(_STRIDES)
    for index, output in enumerate(outputs):
        dims, width = output.dims, _DETECTOR_WIDTHS[index // strides]
        # No recorded shape: the order is insightface's by convention, as its runner assumes.
        if dims is not None and (len(dims) not in (2, 3) or dims[-1] != width):
            return f"its output {index + 1} is {_shown(dims)}, where SCRFD's output {index + 1} has {width} per anchor"
    for group in range(len(outputs) // strides):
        counts = [(v.dims or (None, None))[-2] for v in outputs[group * strides : (group + 1) * strides]]
        if all(isinstance(c, int) for c in counts) and not counts[0] > counts[1] > counts[2]:
            return f"its per-stride outputs have {counts} anchors, not fewer at each coarser stride"
    return ""


def _embedding_width(graph: OnnxGraph, output: str) -> int | None:
    """The width of `output` from the weights of the node making it: ArcFace ends in Gemm + BatchNormalization."""
    node = next((n for n in graph.nodes if output in n.outputs), None)
    weights = {t.name: t.dims for t in graph.initializers}
    if node is None or len(node.inputs) < 2:
        return None
    dims = weights.get(node.inputs[1])
    if node.op_type == "BatchNormalization" and dims is not None and len(dims) == 1:
        return dims[0]
    if node.op_type == "Gemm" and dims is not None and len(dims) == 2:
        return dims[0] if node.attribute("transB", 0) else dims[1]
    return None


def _normalises_itself(graph: OnnxGraph) -> bool:
    # insightface looks at the first 8 nodes' names for both a subtraction and a multiplication
    # (torch names them Sub_N / Mul_N, mxnet _minusscalar / _mulscalar); the op types say the same.
    head = graph.nodes[:8]
    sub = any(n.op_type == "Sub" or n.name.startswith(("Sub", "_minus")) for n in head)
    mul = any(n.op_type == "Mul" or n.name.startswith(("Mul", "_mul")) for n in head)
    return sub and mul


def _shown(dims: tuple | None) -> str:
    return "x".join("?" if not isinstance(d, int) else str(d) for d in dims) if dims else "shapeless"


def _not_a_face_model(name: str, why: str) -> FaceModelInfo:
    raise ModelError(
        f"{name} is an ONNX model but not a face detector (SCRFD) or recognizer (ArcFace) Marble can use: {why}."
    )
