"""Marble's torch ONNX interpreter (desktop/engine/backends/onnx_runner.py) against onnxruntime: whole
SCRFD- and ArcFace-shaped graphs, and each op in the forms insightface's exporters (torch, mxnet) write."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from desktop.engine.backends.onnx_runner import SUPPORTED_OPS, load_onnx_network
from desktop.engine.errors import ModelError
from desktop.engine.library.onnx_file import read_onnx
from tests.support.onnx_faces import write_tiny_face_detector, write_tiny_face_recognizer

TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def _reference(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ours(path, *inputs: np.ndarray) -> list[np.ndarray]:
    network = load_onnx_network(path, path.name)
    with torch.no_grad():
        return [t.numpy() for t in network(*(torch.from_numpy(x) for x in inputs))]


def _compare(path, **feeds: np.ndarray) -> None:
    expected = _reference(path, feeds)
    got = _ours(path, *feeds.values())
    assert len(got) == len(expected)
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert ours.shape == theirs.shape, f"output {index}"
        assert ours.dtype == theirs.dtype, f"output {index}"
        np.testing.assert_allclose(ours, theirs, **TOLERANCE, err_msg=f"output {index}")


def _image(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Whole graphs


@pytest.mark.parametrize(("size", "shape"), [(None, (1, 3, 96, 128)), (None, (1, 3, 64, 64)), (640, (1, 3, 640, 640))])
def test_an_scrfd_shaped_detector_matches_onnxruntime(tmp_path, size, shape):
    path = write_tiny_face_detector(tmp_path / "det.onnx", seed=11, size=size)
    _compare(path, **{"input.1": _image(*shape)})
    outputs = _ours(path, _image(*shape))
    anchors = [shape[2] // s * shape[3] // s * 2 for s in (8, 16, 32)]
    assert [o.shape for o in outputs] == [(a, w) for w in (1, 4, 10) for a in anchors]  # insightface's order


@pytest.mark.parametrize("normalise", [False, True])
def test_an_arcface_shaped_recognizer_matches_onnxruntime(tmp_path, normalise):
    path = write_tiny_face_recognizer(tmp_path / "rec.onnx", seed=12, normalise=normalise)
    pixels = (_image(2, 3, 112, 112) * 60 + 127.5) if normalise else _image(2, 3, 112, 112)
    _compare(path, **{"input.1": pixels.astype(np.float32)})
    assert _ours(path, pixels.astype(np.float32))[0].shape == (2, 512)


def test_the_network_is_a_module_whose_weights_move_with_it(tmp_path):
    path = write_tiny_face_recognizer(tmp_path / "rec.onnx", seed=13)
    network = load_onnx_network(path, "rec.onnx")
    from desktop.engine.backends import onnx_runner

    assert isinstance(network, torch.nn.Module) and isinstance(network, onnx_runner.OnnxNetwork)
    assert len(list(network.buffers())) == len(read_onnx(path, "rec").graph.initializers)
    assert all(b.dtype == torch.float32 for b in network.buffers())
    doubled = network.to(torch.float64)
    with torch.no_grad():
        out = doubled(torch.from_numpy(_image(1, 3, 112, 112)).double())[0]
    assert out.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_network_runs_on_a_gpu_as_on_the_cpu(tmp_path):
    path = write_tiny_face_detector(tmp_path / "det.onnx", seed=14)
    network = load_onnx_network(path, "det.onnx")
    image = torch.from_numpy(_image(1, 3, 96, 96))
    with torch.no_grad():
        expected = network(image)
        got = network.to("cuda")(image.to("cuda"))
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.device.type == "cuda"
        torch.testing.assert_close(ours.cpu(), theirs, **TOLERANCE)


def test_an_unknown_op_is_refused_at_load_naming_the_op_and_file(tmp_path):
    path = _single_op(tmp_path, "Einsum", {"equation": "ij->ji"}, [np.ones((2, 3), np.float32)], opset=13)
    with pytest.raises(ModelError, match="weird.onnx uses the ONNX operator Einsum, which Marble's ONNX runner"):
        load_onnx_network(path, "weird.onnx")


def test_a_node_reading_a_missing_value_is_refused(tmp_path):
    nodes = [helper.make_node("Add", ["x", "nowhere"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_float_input("x", [1])], [helper.make_empty_tensor_value_info("y")])
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(ModelError, match="the Add node reads 'nowhere', which no earlier node makes"):
        load_onnx_network(path, "broken.onnx")


# --------------------------------------------------------------------------------------------------
# One op at a time


def _float_input(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _single_op(tmp_path, op: str, attributes: dict, constants: list, opset: int, outputs: int = 1,
               x_shape=(1, 3, 5, 4), chain=None):  # fmt: skip
    """A graph of `op` applied to the input x (or not, when the first constant is None) and constants."""
    initializers, names = [], ["x"] if x_shape else []
    for index, value in enumerate(constants):
        if value is None:
            names.append("")
            continue
        name = f"c{index}"
        initializers.append(numpy_helper.from_array(np.asarray(value), name))
        names.append(name)
    out_names = [f"y{i}" for i in range(outputs)]
    nodes = [helper.make_node(op, names, out_names, **attributes)]
    if chain is not None:  # a follow-up node, to turn an integer result into a float one
        nodes.append(helper.make_node(chain, [out_names[0]], ["z"], to=TensorProto.FLOAT))
        out_names = ["z", *out_names[1:]]
    inputs = [_float_input("x", list(x_shape))] if x_shape else []
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_empty_tensor_value_info(n) for n in out_names], initializers
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    path = tmp_path / "weird.onnx"
    onnx.save(model, str(path))
    return path


_RNG = np.random.default_rng(5)


def _w(*shape: int) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


_F32 = np.float32
# (id, op, attributes, constants, opset, outputs, input shape)
OP_CASES = [
    ("conv-groups-dilations-strides-asymmetric-pads", "Conv",
     {"group": 3, "dilations": [2, 1], "strides": [2, 1], "pads": [0, 1, 2, 0], "kernel_shape": [3, 2]},
     [_w(6, 1, 3, 2), _w(6)], 11, 1, (1, 3, 9, 8)),
    ("conv-same-upper", "Conv", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, [_w(4, 3, 3, 3)], 11, 1, (1, 3, 7, 6)),
    ("conv-depthwise-no-bias", "Conv", {"group": 3, "pads": [1, 1, 1, 1]}, [_w(3, 1, 3, 3)], 11, 1, (2, 3, 6, 6)),
    ("batch-norm-4d", "BatchNormalization", {"epsilon": 1e-3},
     [_w(3), _w(3), _w(3), np.abs(_w(3)) + 0.5], 11, 1, (2, 3, 4, 4)),
    ("batch-norm-7-not-spatial", "BatchNormalization", {"spatial": 0, "epsilon": 0.5},
     [_w(3, 5, 4), _w(3, 5, 4), _w(3, 5, 4), np.abs(_w(3, 5, 4)) + 0.5], 7, 1, (2, 3, 5, 4)),
    ("batch-norm-2d", "BatchNormalization", {}, [_w(7), _w(7), _w(7), np.abs(_w(7)) + 0.5], 9, 1, (3, 7)),
    ("prelu-per-channel", "PRelu", {}, [_w(3, 1, 1)], 9, 1, (1, 3, 5, 4)),
    ("prelu-last-axis", "PRelu", {}, [_w(4)], 9, 1, (1, 3, 5, 4)),  # ONNX broadcasts a 1-d slope on W
    ("prelu-one", "PRelu", {}, [_w(1)], 9, 1, (1, 3, 5, 4)),
    ("leaky-relu", "LeakyRelu", {"alpha": 0.2}, [], 11, 1, (1, 3, 5, 4)),
    ("relu", "Relu", {}, [], 11, 1, (1, 3, 5, 4)),
    ("sigmoid", "Sigmoid", {}, [], 11, 1, (1, 3, 5, 4)),
    ("exp", "Exp", {}, [], 11, 1, (1, 3, 5, 4)),
    ("add-broadcast", "Add", {}, [_w(1, 3, 1, 1)], 11, 1, (2, 3, 5, 4)),
    ("sub-broadcast", "Sub", {}, [_w(4)], 11, 1, (2, 3, 5, 4)),
    ("mul-broadcast", "Mul", {}, [_w(3, 1, 4)], 11, 1, (2, 3, 5, 4)),
    ("div-broadcast", "Div", {}, [np.abs(_w(5, 1)) + 1], 11, 1, (2, 3, 5, 4)),
    ("pow", "Pow", {}, [np.array(2.0, _F32)], 11, 1, (1, 3, 5, 4)),
    ("maxpool-asymmetric-ceil", "MaxPool",
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1}, [], 11, 1, (1, 2, 8, 7)),
    ("maxpool-symmetric", "MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [], 11, 1,
     (1, 2, 9, 8)),
    ("avgpool-ceil-exclude-pad", "AveragePool",
     {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1, "count_include_pad": 0}, [], 11, 1, (1, 2, 5, 7)),
    ("avgpool-include-pad", "AveragePool",
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}, [], 11, 1,
     (1, 2, 7, 6)),
    ("avgpool-asymmetric-exclude", "AveragePool", {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]}, [], 11, 1,
     (1, 2, 6, 5)),
    ("global-average-pool", "GlobalAveragePool", {}, [], 11, 1, (2, 3, 5, 4)),
    ("flatten-axis-2", "Flatten", {"axis": 2}, [], 11, 1, (2, 3, 5, 4)),
    ("gemm-trans-alpha-beta", "Gemm", {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
     [_w(6, 4), _w(6)], 11, 1, (4, 3)),
    ("gemm-plain", "Gemm", {}, [_w(3, 5), _w(1, 5)], 11, 1, (4, 3)),
    ("matmul-batched", "MatMul", {}, [_w(4, 6)], 11, 1, (2, 3, 5, 4)),
    ("reshape-zero-minus-one", "Reshape", {}, [_i(0, -1, 4)], 11, 1, (2, 3, 5, 4)),
    ("transpose", "Transpose", {"perm": [0, 2, 3, 1]}, [], 11, 1, (2, 3, 5, 4)),
    ("transpose-default", "Transpose", {}, [], 11, 1, (2, 3, 5, 4)),
    ("concat-negative-axis", "Concat", {"axis": -1}, [_w(2, 3, 5, 2)], 11, 1, (2, 3, 5, 4)),
    ("resize-11-nearest-asymmetric-floor-scales", "Resize",
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [np.array([], _F32), np.array([1, 1, 2, 2], _F32)], 11, 1, (1, 3, 5, 4)),
    ("resize-13-nearest-sizes", "Resize",
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     [None, None, _i(1, 3, 10, 8)], 13, 1, (1, 3, 5, 4)),
    ("resize-13-nearest-half-pixel-down", "Resize", {"mode": "nearest"},
     [None, np.array([1, 1, 0.6, 0.75], _F32)], 13, 1, (1, 3, 5, 4)),
    ("resize-13-nearest-round-prefer-ceil", "Resize",
     {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"},
     [None, None, _i(1, 3, 7, 9)], 13, 1, (1, 3, 5, 4)),
    ("resize-11-linear-half-pixel", "Resize", {"mode": "linear"},
     [np.array([], _F32), np.array([1, 1, 1.5, 2.5], _F32)], 11, 1, (1, 3, 5, 4)),
    ("resize-13-linear-align-corners", "Resize", {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
     [None, None, _i(1, 3, 9, 7)], 13, 1, (1, 3, 5, 4)),
    ("resize-13-linear-pytorch-half-pixel", "Resize",
     {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
     [None, None, _i(1, 3, 3, 1)], 13, 1, (1, 3, 5, 4)),
    ("resize-13-linear-asymmetric", "Resize", {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
     [None, np.array([1, 1, 2, 2], _F32)], 13, 1, (1, 3, 5, 4)),
    ("resize-10-nearest", "Resize", {"mode": "nearest"}, [np.array([1, 1, 2, 2], _F32)], 10, 1, (1, 3, 5, 4)),
    ("upsample-9-nearest", "Upsample", {"mode": "nearest"}, [np.array([1, 1, 2, 2], _F32)], 9, 1, (1, 3, 5, 4)),
    ("upsample-7-attribute", "Upsample", {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, [], 7, 1,
     (1, 3, 5, 4)),
    ("upsample-9-linear", "Upsample", {"mode": "linear"}, [np.array([1, 1, 2, 2], _F32)], 9, 1, (1, 3, 5, 4)),
    ("unsqueeze-attribute", "Unsqueeze", {"axes": [0, 3]}, [], 11, 1, (2, 3, 5)),
    ("unsqueeze-input", "Unsqueeze", {}, [_i(-1, 1)], 13, 1, (2, 3, 5)),
    ("squeeze-attribute", "Squeeze", {"axes": [0]}, [], 11, 1, (1, 3, 1, 4)),
    ("squeeze-input", "Squeeze", {}, [_i(2)], 13, 1, (1, 3, 1, 4)),
    ("squeeze-all", "Squeeze", {}, [], 13, 1, (1, 3, 1, 4)),
    ("slice-negative-step", "Slice", {}, [_i(-1, 4), _i(-(1 << 63), 0), _i(2, 3), _i(-2, -1)], 11, 1, (1, 3, 5, 4)),
    ("slice-int-max", "Slice", {}, [_i(1), _i((1 << 63) - 1), _i(1)], 13, 1, (1, 3, 5, 4)),
    ("slice-1-attributes", "Slice", {"starts": [0, 1], "ends": [2, 100], "axes": [1, 3]}, [], 9, 1, (1, 3, 5, 4)),
    ("sqrt", "Sqrt", {}, [], 11, 1, (1, 3, 5, 4)),  # x fed as |x| below
    ("reduce-mean", "ReduceMean", {"axes": [2, 3], "keepdims": 0}, [], 11, 1, (2, 3, 5, 4)),
    ("reduce-mean-18-input", "ReduceMean", {}, [_i(1)], 18, 1, (2, 3, 5, 4)),
    ("reduce-l2", "ReduceL2", {"axes": [1]}, [], 11, 1, (2, 3, 5, 4)),
    ("softmax-11-coerced", "Softmax", {"axis": 1}, [], 11, 1, (2, 3, 5, 4)),
    ("softmax-13", "Softmax", {"axis": -1}, [], 13, 1, (2, 3, 5, 4)),
    ("split-attribute", "Split", {"axis": 1, "split": [1, 2]}, [], 11, 2, (2, 3, 5, 4)),
    ("split-input", "Split", {"axis": -1}, [_i(3, 1)], 13, 2, (2, 3, 5, 4)),
    ("split-equal", "Split", {"axis": 2}, [], 13, 3, (2, 3, 6, 4)),
    ("split-18-uneven", "Split", {"axis": 2, "num_outputs": 3}, [], 18, 3, (2, 3, 7, 4)),
    ("clip-inputs", "Clip", {}, [np.array(-0.5, _F32), np.array(0.25, _F32)], 11, 1, (1, 3, 5, 4)),
    ("clip-max-only", "Clip", {}, [None, np.array(0.25, _F32)], 13, 1, (1, 3, 5, 4)),
    ("clip-6-attributes", "Clip", {"min": -0.3, "max": 0.6}, [], 6, 1, (1, 3, 5, 4)),
    ("pad-constant", "Pad", {}, [_i(0, 0, 1, 2, 0, 0, 3, 0), np.array(1.5, _F32)], 11, 1, (1, 3, 5, 4)),
    ("pad-reflect", "Pad", {"mode": "reflect"}, [_i(0, 0, 1, 2, 0, 0, 2, 1)], 13, 1, (1, 3, 5, 4)),
    ("pad-edge", "Pad", {"mode": "edge"}, [_i(0, 0, 2, 0, 0, 0, 1, 3)], 13, 1, (1, 3, 5, 4)),
    ("pad-2-attributes", "Pad", {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": -2.0}, [], 2, 1, (1, 3, 5, 4)),
    ("pad-negative-crops", "Pad", {}, [_i(0, 0, -1, 1, 0, 0, 0, -2)], 13, 1, (1, 3, 5, 4)),
    ("identity", "Identity", {}, [], 13, 1, (1, 3, 5, 4)),
    ("tanh", "Tanh", {}, [], 13, 1, (1, 3, 5, 4)),
    ("log", "Log", {}, [], 13, 1, (1, 3, 5, 4)),  # x fed as |x| + 0.1 below
    ("abs", "Abs", {}, [], 13, 1, (1, 3, 5, 4)),
    ("neg", "Neg", {}, [], 13, 1, (1, 3, 5, 4)),
    ("floor", "Floor", {}, [], 13, 1, (1, 3, 5, 4)),
    ("ceil", "Ceil", {}, [], 13, 1, (1, 3, 5, 4)),
    ("reciprocal", "Reciprocal", {}, [], 13, 1, (1, 3, 5, 4)),
    ("elu", "Elu", {"alpha": 0.7}, [], 13, 1, (1, 3, 5, 4)),
    ("hard-sigmoid", "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [], 13, 1, (1, 3, 5, 4)),
    ("sum-three", "Sum", {}, [_w(1, 3, 1, 1), _w(4)], 13, 1, (1, 3, 5, 4)),
    ("max-broadcast", "Max", {}, [_w(5, 1)], 13, 1, (1, 3, 5, 4)),
    ("min-broadcast", "Min", {}, [_w(4)], 13, 1, (1, 3, 5, 4)),
    ("less", "Less", {}, [_w(4)], 13, 1, (1, 3, 5, 4)),
    ("greater", "Greater", {}, [_w(1)], 13, 1, (1, 3, 5, 4)),
    ("equal-ints", "Equal", {}, [_i(1, 2, 3), _i(1, 0, 3)], 13, 1, None),
    ("where", "Where", {}, [np.array([[True, False, True]]), _w(2, 3), _w(3)], 13, 1, None),
    ("not", "Not", {}, [np.array([True, False])], 13, 1, None),
    ("global-max-pool", "GlobalMaxPool", {}, [], 13, 1, (2, 3, 5, 4)),
    ("reduce-sum-13-input", "ReduceSum", {"keepdims": 0}, [_i(-1, 1)], 13, 1, (2, 3, 5, 4)),
    ("reduce-max", "ReduceMax", {"axes": [2]}, [], 13, 1, (2, 3, 5, 4)),
    ("reduce-min-all", "ReduceMin", {}, [], 13, 1, (2, 3, 5, 4)),
    ("log-softmax", "LogSoftmax", {"axis": 1}, [], 13, 1, (2, 3, 5, 4)),
    ("argmax", "ArgMax", {"axis": 1, "keepdims": 0}, [], 13, 1, (2, 3, 5, 4)),
    ("argmin", "ArgMin", {"axis": -1}, [], 13, 1, (2, 3, 5, 4)),
    ("instance-norm", "InstanceNormalization", {"epsilon": 1e-4}, [_w(3), _w(3)], 13, 1, (2, 3, 5, 4)),
    ("tile", "Tile", {}, [_i(1, 2, 1, 3)], 13, 1, (1, 3, 5, 4)),
    ("expand", "Expand", {}, [_i(2, 1, 1, 1)], 13, 1, (1, 3, 5, 4)),
    ("expand-lower-rank-shape", "Expand", {}, [_i(5, 1)], 13, 1, (3, 1, 4)),
    ("expand-higher-rank-shape", "Expand", {}, [_i(2, 1, 1)], 13, 1, (3, 4)),
    ("constant-of-shape", "ConstantOfShape", {"value": numpy_helper.from_array(np.array([2.5], _F32))},
     [_i(2, 3)], 13, 1, None),
    ("range", "Range", {}, [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)], 13, 1, None),
    ("shape-15-start-end", "Shape", {"start": 1, "end": -1}, [], 15, 1, (2, 3, 5, 4)),
    ("cast-int64", "Cast", {"to": TensorProto.INT64}, [], 13, 1, (1, 3, 5, 4)),
    ("constant-value-ints", "Constant", {"value_ints": [3, -1, 4]}, [], 13, 1, None),
    ("constant-value-float", "Constant", {"value_float": 0.5}, [], 13, 1, None),
    ("dropout-12", "Dropout", {}, [], 12, 1, (1, 3, 5, 4)),
    ("dropout-7-ratio", "Dropout", {"ratio": 0.3}, [], 7, 1, (1, 3, 5, 4)),
]  # fmt: skip


@pytest.mark.parametrize(("op", "attributes", "constants", "opset", "outputs", "shape"),
                         [case[1:] for case in OP_CASES], ids=[case[0] for case in OP_CASES])  # fmt: skip
def test_each_op_matches_onnxruntime(tmp_path, op, attributes, constants, opset, outputs, shape):
    path = _single_op(tmp_path, op, attributes, constants, opset, outputs, x_shape=shape)
    if shape is None:  # every input a constant
        _compare(path)
        return
    x = _image(*shape, seed=3) * (4.0 if op == "Cast" else 1.0)
    if op in ("Sqrt", "Log"):
        x = np.abs(x) + 0.1
    elif op == "MaxPool":
        x = x - 3.0  # all negative: a pad that took part in the max would show
    _compare(path, x=x)


def test_shape_arithmetic_chains_stay_int64(tmp_path):
    # What torch writes for `x.view(x.size(0), -1, 2)` with dynamic sizes, plus Cast and Constant forms.
    g = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
        helper.make_node("Constant", [], ["rest"], value_ints=[-1, 2]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Shape", ["r"], ["rs"]),
        helper.make_node("Slice", ["rs", "one", "two"], ["middle"]),
        helper.make_node("Div", ["middle", "three"], ["third"]),  # integer division
        helper.make_node("Cast", ["third"], ["third_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["r", "third_f"], ["y"]),
        helper.make_node("Gather", ["s", "picks"], ["picked"], axis=0),
    ]
    initializers = [numpy_helper.from_array(v, n) for n, v in
                    (("one", _i(1)), ("two", _i(2)), ("three", _i(-4)), ("picks", _i(-1, 0, 1)))]  # fmt: skip
    graph = helper.make_graph(
        g, "g", [_float_input("x", ["n", 3, "h", "w"])],
        [helper.make_empty_tensor_value_info("y"), helper.make_empty_tensor_value_info("picked")], initializers,
    )  # fmt: skip
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    for shape in ((2, 3, 5, 4), (1, 3, 7, 6)):
        _compare(path, x=_image(*shape))
    assert _ours(path, _image(2, 3, 5, 4))[1].dtype == np.int64


def test_integer_division_truncates_as_onnx_does(tmp_path):
    path = _single_op(tmp_path, "Div", {}, [_i(-7, 7, -8, 9), _i(2, -2, 3, 4)], 13, x_shape=None, chain="Cast")
    _compare(path)
    assert _ours(path)[0].tolist() == [-3.0, -3.0, -2.0, 2.0]


def test_every_op_the_face_models_use_is_supported():
    needed = {
        "Conv", "BatchNormalization", "Relu", "PRelu", "LeakyRelu", "Sigmoid", "Add", "Sub", "Mul", "Div",
        "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Reshape", "Transpose",
        "Concat", "Resize", "Upsample", "Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "Constant",
        "Identity", "Dropout", "Exp", "Sqrt", "Pow", "ReduceMean", "ReduceL2", "Softmax", "Split", "Clip",
        "Pad", "Cast",
    }  # fmt: skip
    assert needed <= SUPPORTED_OPS


def test_damaged_graphs_fail_with_a_model_error_never_another_exception(tmp_path):
    from tests.support.onnx_faces import tiny_face_recognizer

    data = tiny_face_recognizer(seed=9, embedding=16).SerializeToString()
    rng = np.random.default_rng(10)
    image = torch.from_numpy(_image(1, 3, 112, 112))
    ran = refused = 0
    path = tmp_path / "fuzz.onnx"
    for _ in range(150):
        damaged = bytearray(data)
        for position in rng.integers(0, len(damaged), size=int(rng.integers(1, 4))):
            damaged[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged))
        try:
            with torch.no_grad():
                load_onnx_network(path, "fuzz.onnx")(image)
            ran += 1
        except ModelError as error:
            assert "fuzz.onnx" in str(error)
            refused += 1
    assert ran and refused
