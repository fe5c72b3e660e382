"""Tiny random ONNX face models in insightface's exact input/output layout, built with onnx.helper.

- `write_tiny_face_detector`: an SCRFD-shaped graph: a conv/BN/ReLU backbone down to strides 8, 16 and 32
  (with SCRFD's avg-down shortcut: AveragePool ceil_mode + 1x1 conv), an FPN whose top-down path uses
  Resize to the lateral's size (the Shape -> Slice -> Concat chain torch writes for dynamic sizes) and a
  scale-2 Resize, and per-stride heads (Transpose -> Reshape, Sigmoid on the scores). Its 9 outputs come in
  insightface's order: scores for strides 8/16/32, then boxes, then keypoints; shapes (anchors, 1 / 4 / 10)
  with 2 anchors per position (12800 / 3200 / 800 for a 640x640 input).
- `write_tiny_face_recognizer`: an ArcFace-shaped (iresnet) graph: optional Sub/Mul normalisation, conv, BN,
  PRelu with (C, 1, 1) slopes, residual blocks with stride-2 shortcuts down to 7x7, BN, Flatten, Gemm to 512,
  and the final 1-d BatchNormalization: input 1x3x112x112 (batch dynamic), output N x 512.

Weights are seeded random numbers; the point is the structure and layout, not a useful model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Nodes and seeded random initializers, named like torch's exporter names them (Conv_12, 123)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self) -> str:
        self._count += 1
        return str(self._count)

    def weight(self, *shape: int, scale: float = 0.3, positive: bool = False) -> str:
        name = self.fresh()
        values = self.rng.standard_normal(shape).astype(np.float32) * scale
        if positive:
            values = np.abs(values) * 0.5 + 0.5
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def constant(self, values, dtype=np.int64) -> str:
        name = self.fresh()
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> str | list[str]:
        names = [self.fresh() for _ in range(outputs)]
        node_name = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, names, name=node_name, **attributes))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1, group: int = 1, bias=True) -> str:
        weight = self.weight(cout, cin // group, kernel, kernel, scale=(cin // group * kernel * kernel) ** -0.5)
        inputs = [x, weight] + ([self.weight(cout, scale=0.1)] if bias else [])
        pad = kernel // 2
        return self.op(
            "Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=group,
            dilations=[1, 1],
        )  # fmt: skip

    def batch_norm(self, x: str, channels: int) -> str:
        return self.op(
            "BatchNormalization",
            [x, self.weight(channels, positive=True), self.weight(channels, scale=0.1),
             self.weight(channels, scale=0.1), self.weight(channels, positive=True)],
            epsilon=1e-5,
        )  # fmt: skip

    def conv_bn_relu(self, x: str, cin: int, cout: int, stride: int = 1) -> str:
        return self.op("Relu", [self.batch_norm(self.conv(x, cin, cout, stride=stride, bias=False), cout)])

    def model(self, inputs, outputs, opset: int = 11) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "tiny", inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch")
        model.ir_version = 7
        return model


def tiny_face_detector(seed: int, size: int | None = None, keypoints: bool = True) -> onnx.ModelProto:
    """An SCRFD-shaped model (see the module docstring); `size` None: a dynamic input, as det_10g has."""
    g = GraphBuilder(seed)
    width = 8
    x = g.conv_bn_relu("input.1", 3, width, stride=2)  # stride 2
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # stride 4
    c3 = g.conv_bn_relu(x, width, width, stride=2)  # stride 8
    # SCRFD's basic block shortcut with avg_down: AveragePool(2, ceil_mode, count_include_pad=0) + 1x1 conv.
    down = g.op("AveragePool", [c3], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=0)
    shortcut = g.batch_norm(g.conv(down, width, 2 * width, kernel=1, bias=False), 2 * width)
    c4 = g.op("Relu", [g.op("Add", [g.conv_bn_relu(c3, width, 2 * width, stride=2), shortcut])])  # stride 16
    c5 = g.conv_bn_relu(c4, 2 * width, 2 * width, stride=2)  # stride 32
    lateral = [g.conv(c, cin, width, kernel=1) for c, cin in ((c3, width), (c4, 2 * width), (c5, 2 * width))]
    # Top-down: P4 += Resize(P5 to P4's size), sizes from the Shape chain torch writes for dynamic inputs.
    spatial = g.op("Slice", [g.op("Shape", [lateral[1]]), g.constant([2]), g.constant([4]), g.constant([0])])
    head = g.op("Slice", [g.op("Shape", [lateral[2]]), g.constant([0]), g.constant([2]), g.constant([0])])
    sizes = g.op("Concat", [head, spatial], axis=0)
    empty = g.constant([], dtype=np.float32)
    upsampled = g.op(
        "Resize", [lateral[2], empty, empty, sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )  # fmt: skip
    p4 = g.op("Add", [lateral[1], upsampled])
    scales = g.constant([1.0, 1.0, 2.0, 2.0], dtype=np.float32)
    p3 = g.op(
        "Add",
        [lateral[0], g.op("Resize", [p4, empty, scales], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
    )  # fmt: skip
    levels = [g.conv(p, width, width) for p in (p3, p4, lateral[2])]
    anchors = 2
    outputs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for level in levels:
        shared = g.conv_bn_relu(level, width, width)
        for kind, per_anchor in (("score", 1), ("bbox", 4), ("kps", 10)):
            if kind == "kps" and not keypoints:
                continue
            maps = g.conv(shared, width, anchors * per_anchor)
            if kind == "score":
                maps = g.op("Sigmoid", [maps])
            nhwc = g.op("Transpose", [maps], perm=[0, 2, 3, 1])
            if kind == "bbox":
                # (batch * H * W * anchors, 4) from the map's own shape: Shape/Gather/Mul/Unsqueeze/Concat.
                shape = g.op("Shape", [nhwc])
                dims = [g.op("Gather", [shape, g.constant(i)], axis=0) for i in range(3)]
                count = g.op("Mul", [g.op("Mul", [dims[0], dims[1]]), g.op("Mul", [dims[2], g.constant(anchors)])])
                target = g.op("Concat", [g.op("Unsqueeze", [count], axes=[0]), g.constant([per_anchor])], axis=0)
            else:
                target = g.constant([-1, per_anchor])
            outputs[kind].append(g.op("Reshape", [nhwc, target]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size or "?", size or "?"])]
    graph_outputs = []
    for kind, per_anchor in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride, name in zip((8, 16, 32), outputs[kind], strict=False):
            count = (size // stride) ** 2 * anchors if size else f"{kind}_{stride}_anchors"
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [count, per_anchor]))
    return g.model(inputs, graph_outputs)


def tiny_face_recognizer(seed: int, normalise: bool = False, embedding: int = 512) -> onnx.ModelProto:
    """An ArcFace-shaped (iresnet) model (see the module docstring)."""
    g = GraphBuilder(seed)
    x = "input.1"
    if normalise:  # glintr100-style graphs normalise the pixels themselves
        x = g.op("Mul", [g.op("Sub", [x, g.constant(127.5, np.float32)]), g.constant(1 / 127.5, np.float32)])
    width = 8
    x = g.batch_norm(g.conv(x, 3, width, bias=False), width)
    x = g.op("PRelu", [x, g.weight(width, 1, 1, scale=0.1)])
    for _ in range(4):  # 112 -> 56 -> 28 -> 14 -> 7
        y = g.batch_norm(x, width)
        y = g.conv(y, width, width, bias=False)
        y = g.op("PRelu", [g.batch_norm(y, width), g.weight(width, 1, 1, scale=0.1)])
        y = g.batch_norm(g.conv(y, width, width, stride=2, bias=False), width)
        shortcut = g.batch_norm(g.conv(x, width, width, kernel=1, stride=2, bias=False), width)
        x = g.op("Add", [y, shortcut])
    x = g.batch_norm(x, width)
    x = g.op("Flatten", [x], axis=1)
    fc = g.weight(embedding, width * 49, scale=(width * 49) ** -0.5)
    x = g.op("Gemm", [x, fc, g.weight(embedding, scale=0.1)], transB=1)
    x = g.batch_norm(x, embedding)
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, embedding])]
    return g.model(inputs, outputs)


def write_tiny_face_detector(path: Path, seed: int, size: int | None = None, keypoints: bool = True) -> Path:
    """Write an SCRFD-layout detector (9 outputs, or 6 without keypoints) to `path`."""
    onnx.save(tiny_face_detector(seed, size, keypoints), str(path))
    return path


def write_tiny_face_recognizer(path: Path, seed: int, normalise: bool = False) -> Path:
    """Write an ArcFace-layout recognizer (1x3x112x112 -> 1x512) to `path`."""
    onnx.save(tiny_face_recognizer(seed, normalise), str(path))
    return path
