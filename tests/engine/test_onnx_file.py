"""Marble's own ONNX reader (desktop/engine/library/onnx_file.py) against onnx's writer, the face-model check,
and insightface's face models in the control library through the `marble` command line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.control import ANNOTATOR, find_face_model, inspect_onnx_control
from desktop.engine.library.index import guess_kind
from desktop.engine.library.onnx_file import (
    DETECTOR,
    RECOGNIZER,
    OnnxTensor,
    inspect_face_model,
    parse_onnx,
    read_onnx,
)
from tests.support.cli_runner import run_cli
from tests.support.onnx_faces import (
    GraphBuilder,
    tiny_face_detector,
    tiny_face_recognizer,
    write_tiny_face_detector,
    write_tiny_face_recognizer,
)


def _decoded(tensor: OnnxTensor) -> np.ndarray:
    return np.frombuffer(bytes(tensor.data), dtype=np.dtype(tensor.dtype).newbyteorder("<")).reshape(tensor.dims)


def _model_with(nodes, initializers, opset: int = 13) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])]
    outputs = [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# --------------------------------------------------------------------------------------------------
# The wire format


def test_every_tensor_storage_form_reads_as_onnx_wrote_it():
    rng = np.random.default_rng(0)
    floats = rng.standard_normal((2, 3, 4)).astype(np.float32)
    tensors = [
        numpy_helper.from_array(floats, "raw_float"),  # raw_data
        helper.make_tensor("float_data", TensorProto.FLOAT, [2, 3, 4], floats.ravel().tolist()),
        helper.make_tensor("int64_data", TensorProto.INT64, [3], [-(1 << 40), 0, 1 << 62]),
        helper.make_tensor("int32_data", TensorProto.INT32, [2, 2], [-7, 8, -(1 << 31), (1 << 31) - 1]),
        helper.make_tensor("half_bits", TensorProto.FLOAT16, [3], np.array([1.5, -2, 0.25], np.float16)),
        helper.make_tensor("double_data", TensorProto.DOUBLE, [2], [1.25, -3.5]),
        numpy_helper.from_array(np.array([[1, -2], [3, -4]], np.int64), "raw_int64"),
        numpy_helper.from_array(np.array(3.5, np.float32), "scalar"),
        numpy_helper.from_array(np.zeros((0, 4), np.float32), "empty"),
    ]
    model = _model_with([helper.make_node("Identity", ["x"], ["y"])], tensors)
    read = {t.name: t for t in parse_onnx(model.SerializeToString(), "t.onnx").graph.initializers}
    for proto in tensors:
        expected = numpy_helper.to_array(proto)
        got = _decoded(read[proto.name])
        assert read[proto.name].dims == expected.shape
        assert got.dtype == expected.dtype, proto.name
        np.testing.assert_array_equal(got, expected, err_msg=proto.name)


def test_every_attribute_type_reads_as_onnx_wrote_it():
    tensor = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "t")
    node = helper.make_node(
        "Identity", ["x"], ["y"], name="n", f=0.375, i=-(1 << 40), s=b"nearest", t=tensor, floats=[0.5, -1.25],
        ints=[1, -2, 3], strings=[b"a", b"bc"], zero_i=0, zero_f=0.0,
    )  # fmt: skip
    model = _model_with([node], [])
    read = parse_onnx(model.SerializeToString(), "t.onnx").graph.nodes[0]
    assert (read.op_type, read.name, read.inputs, read.outputs) == ("Identity", "n", ("x",), ("y",))
    assert read.attribute("f") == 0.375 and read.attribute("i") == -(1 << 40)
    assert read.attribute("s") == b"nearest"
    assert read.attribute("floats") == (0.5, -1.25) and read.attribute("ints") == (1, -2, 3)
    assert read.attribute("strings") == (b"a", b"bc")
    assert read.attribute("zero_i") == 0 and read.attribute("zero_f") == 0.0  # proto3 omits zeros: typed defaults
    np.testing.assert_array_equal(_decoded(read.attribute("t")), numpy_helper.to_array(tensor))
    assert read.attribute("missing", 7) == 7


def test_unpacked_repeated_fields_read_too():
    # proto2-era writers emit repeated scalars one key per value; protobuf readers must accept both.
    builder = bytearray()
    name = b"dims"
    builder += b"\x08\x02\x08\x03"  # dims 2, 3 unpacked (field 1, varint)
    builder += b"\x10\x01"  # data_type FLOAT
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        builder += b"\x25" + np.float32(value).tobytes()  # float_data, field 4, fixed32, one at a time
    builder += b"\x42" + bytes([len(name)]) + name
    model = _model_with([helper.make_node("Identity", ["x"], ["y"])], [])
    model.graph.initializer.add().ParseFromString(bytes(builder))
    tensor = parse_onnx(model.SerializeToString(), "t.onnx").graph.initializers[0]
    assert tensor.dims == (2, 3)
    np.testing.assert_array_equal(_decoded(tensor), np.arange(1, 7, dtype=np.float32).reshape(2, 3))


def test_graph_inputs_outputs_and_opset_are_read(tmp_path):
    path = write_tiny_face_detector(tmp_path / "det.onnx", seed=1)
    reference = onnx.load(str(path))
    model = read_onnx(path, "det.onnx")
    assert model.opset == 11 and model.ir_version == 7 and model.producer == "pytorch"
    assert [v.name for v in model.graph.outputs] == [o.name for o in reference.graph.output]
    assert model.graph.data_inputs[0].dims == (1, 3, "?", "?")
    assert [n.op_type for n in model.graph.nodes] == [n.op_type for n in reference.graph.node]
    assert [n.inputs for n in model.graph.nodes] == [tuple(n.input) for n in reference.graph.node]
    assert len(model.graph.initializers) == len(reference.graph.initializer)


# --------------------------------------------------------------------------------------------------
# Refused files


def _serialized_detector() -> bytes:
    return tiny_face_detector(seed=3).SerializeToString()


def test_not_protobuf_and_truncated_files_are_refused(tmp_path):
    data = _serialized_detector()
    with pytest.raises(ModelError, match="not an ONNX model"):
        parse_onnx(b"\x89PNG\r\n\x1a\n" + data, "picture.onnx")
    with pytest.raises(ModelError, match="t.onnx is not a complete ONNX file"):
        parse_onnx(data[: len(data) // 2], "t.onnx")
    garbage = data[:3] + b"\xff" * 64  # a valid start, then a varint that never ends
    with pytest.raises(ModelError, match="not a complete ONNX file"):
        parse_onnx(garbage, "t.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty.onnx is not an ONNX model"):
        read_onnx(tmp_path / "empty.onnx", "empty.onnx")


def test_a_model_without_a_graph_is_refused():
    model = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 13)])
    model.ClearField("graph")
    with pytest.raises(ModelError, match="holds no graph"):
        parse_onnx(model.SerializeToString(), "t.onnx")


def test_external_data_is_refused():
    tensor = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    model = _model_with([helper.make_node("Identity", ["x"], ["y"])], [tensor])
    with pytest.raises(ModelError, match=r"separate file \(ONNX external data, tensor 'w'\)"):
        parse_onnx(model.SerializeToString(), "t.onnx")


@pytest.mark.parametrize(
    ("dims", "values", "message"),
    [
        ((2, 3), np.ones(5, np.float32), "has 5 float32 values where its dims"),
        ((1 << 20, 1 << 20), np.ones(1, np.float32), "impossible dims"),
        ((-1, 2), np.ones(2, np.float32), "impossible dims"),
    ],
)
def test_sizes_that_do_not_match_dims_are_refused(dims, values, message):
    tensor = numpy_helper.from_array(values, "w")
    del tensor.dims[:]
    tensor.dims.extend(dims)
    model = _model_with([helper.make_node("Identity", ["x"], ["y"])], [tensor])
    with pytest.raises(ModelError, match=message):
        parse_onnx(model.SerializeToString(), "t.onnx")


def test_non_default_domains_and_subgraphs_are_refused():
    custom = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    with pytest.raises(ModelError, match="'Gelu' of the domain 'com.microsoft'"):
        parse_onnx(_model_with([custom], []).SerializeToString(), "t.onnx")
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [], [])
    condition = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    with pytest.raises(ModelError, match="If node carries a subgraph"):
        parse_onnx(_model_with([condition], []).SerializeToString(), "t.onnx")


def test_onnx_files_are_sniffed_apart_from_other_formats(tmp_path):
    path = write_tiny_face_recognizer(tmp_path / "w600k_r50.onnx", seed=2)
    assert sniff_file_type(path) == "onnx"
    (tmp_path / "text.onnx").write_bytes(b"hello world, this is no model")
    assert sniff_file_type(tmp_path / "text.onnx") == "unknown"
    # Asked for a safetensors file (a model import), it says what the file is.
    with pytest.raises(ModelError, match="it is an ONNX model; Marble reads ONNX files only as face"):
        read_safetensors_header(path)


# --------------------------------------------------------------------------------------------------
# Face models


def test_a_scrfd_detector_is_told_with_landmarks_and_size(tmp_path):
    dynamic = inspect_face_model(read_onnx(write_tiny_face_detector(tmp_path / "a.onnx", 1), "a"), "a")
    assert dynamic.task == DETECTOR and dynamic.landmarks == 5 and dynamic.input_size is None
    assert (dynamic.input_mean, dynamic.input_std) == (127.5, 128.0)
    assert dynamic.label == "SCRFD face detector (5 landmarks)" and dynamic.embedding_size == 0
    fixed = inspect_face_model(read_onnx(write_tiny_face_detector(tmp_path / "b.onnx", 1, size=640), "b"), "b")
    assert fixed.input_size == (640, 640)
    plain = read_onnx(write_tiny_face_detector(tmp_path / "c.onnx", 1, keypoints=False), "c")
    no_keypoints = inspect_face_model(plain, "c")
    assert no_keypoints.landmarks == 0 and len(plain.graph.outputs) == 6
    assert no_keypoints.label == "SCRFD face detector"


def test_an_arcface_recognizer_is_told_with_its_normalisation(tmp_path):
    plain = inspect_face_model(read_onnx(write_tiny_face_recognizer(tmp_path / "a.onnx", 2), "a"), "a")
    assert plain.task == RECOGNIZER and plain.embedding_size == 512 and plain.input_size == (112, 112)
    assert (plain.input_mean, plain.input_std) == (127.5, 127.5) and plain.landmarks == 0
    assert plain.label == "ArcFace face recognizer (512-d)"
    own = read_onnx(write_tiny_face_recognizer(tmp_path / "b.onnx", 2, normalise=True), "b")
    assert (inspect_face_model(own, "b").input_mean, inspect_face_model(own, "b").input_std) == (0.0, 1.0)
    # An output without a recorded shape: the width comes from the final BatchNormalization's weights.
    shapeless = tiny_face_recognizer(2, embedding=128)
    shapeless.graph.output[0].ClearField("type")
    assert inspect_face_model(parse_onnx(shapeless.SerializeToString(), "d"), "d").embedding_size == 128
    # A subtraction alone is not insightface's sign that the graph normalises itself: both are needed.
    model = tiny_face_recognizer(2)
    first = model.graph.node[0]
    model.graph.initializer.append(numpy_helper.from_array(np.array(127.5, np.float32), "mean"))
    model.graph.node.insert(0, helper.make_node("Sub", ["input.1", "mean"], ["centred"], name="Sub_0"))
    first.input[0] = "centred"
    half = inspect_face_model(parse_onnx(model.SerializeToString(), "c"), "c")
    assert (half.input_mean, half.input_std) == (127.5, 127.5)


def _graph(inputs, outputs) -> bytes:
    g = GraphBuilder(0)
    nodes = [helper.make_node("Identity", ["x"], [o.name]) for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _value(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


@pytest.mark.parametrize(
    ("inputs", "outputs", "why"),
    [
        ([_value("x", [1, 3, 224, 224])], [_value("y", [1, 1000])], "1 outputs and a 1x3x224x224 input"),
        ([_value("x", [1, 1, 112, 112])], [_value("y", [1, 512])], "not take one 3-channel NCHW image"),
        ([_value("x", [1, 3, 112, 112]), _value("z", [1, 3, 112, 112])], [_value("y", [1, 512])], "one 3-channel"),
        ([_value("x", [1, 3, 640, 640])], [_value(f"y{i}", [100, 1]) for i in range(9)], "output 4 is 100x1"),
        ([_value("x", [1, 3, 640, 640])], [_value(f"y{i}", [100, (1, 4, 10)[i // 3]]) for i in range(9)],
         "have \\[100, 100, 100\\] anchors"),
        ([_value("x", [1, 3, 112, 112])], [_value("y", [1, 512, 1, 1])], "not an embedding"),
    ],
)  # fmt: skip
def test_other_graphs_are_not_face_models(inputs, outputs, why):
    model = parse_onnx(_graph(inputs, outputs), "net.onnx")
    with pytest.raises(ModelError, match=f"net.onnx is an ONNX model but not a face detector.*{why}"):
        inspect_face_model(model, "net.onnx")


# --------------------------------------------------------------------------------------------------
# The control library


def test_face_models_import_list_info_rename_and_remove_through_the_cli(tmp_path):
    where = str(tmp_path / "home")
    detector = write_tiny_face_detector(tmp_path / "det_10g.onnx", seed=4)
    recognizer = write_tiny_face_recognizer(tmp_path / "w600k_r50.onnx", seed=5)
    assert guess_kind(detector) == "control" and guess_kind(recognizer) == "control"
    for source in (detector, recognizer):
        code, out, err = run_cli("controls", "import", str(source), "--home", where)
        assert code == 0, err
    stored = tmp_path / "home" / "controlnet"
    assert sorted(p.name for p in stored.iterdir()) == ["det_10g.onnx", "w600k_r50.onnx"]
    assert (stored / "det_10g.onnx").read_bytes() == detector.read_bytes()  # stored as it is
    code, out, _ = run_cli("controls", "list", "--home", where)
    assert code == 0
    assert "det_10g\tSCRFD face detector (5 landmarks)" in out
    assert "w600k_r50\tArcFace face recognizer (512-d)" in out
    code, out, _ = run_cli("controls", "info", "w600k_r50", "--home", where)
    assert code == 0 and "annotator (face_recognizer)" in out and "w600k_r50.onnx" in out
    info = inspect_onnx_control(stored / "det_10g.onnx", "det_10g")
    assert (info.kind, info.layout, info.label) == (ANNOTATOR, DETECTOR, "SCRFD face detector (5 landmarks)")
    code, _, err = run_cli("controls", "rename", "det_10g", "scrfd", "--home", where)
    assert code == 0, err
    assert (stored / "scrfd.onnx").is_file()
    code, _, err = run_cli("controls", "remove", "scrfd", "--home", where)
    assert code == 0, err
    code, out, _ = run_cli("controls", "list", "--home", where)
    assert "SCRFD" not in out and "ArcFace" in out
    assert sorted(p.name for p in stored.iterdir()) == ["w600k_r50.onnx"]


def test_a_face_model_dropped_in_by_hand_is_listed_and_described(tmp_path):
    where = tmp_path / "home"
    (where / "controlnet").mkdir(parents=True)
    write_tiny_face_recognizer(where / "controlnet" / "glintr100.onnx", seed=6, normalise=True)
    code, out, _ = run_cli("controls", "list", "--home", str(where))
    assert code == 0 and "glintr100" in out
    code, out, err = run_cli("controls", "info", "glintr100", "--home", str(where))
    assert code == 0, err
    assert "ArcFace face recognizer (512-d)" in out


def test_other_onnx_files_are_refused_with_the_reason(tmp_path):
    where = str(tmp_path / "home")
    classifier = tmp_path / "resnet.onnx"
    classifier.write_bytes(_graph([_value("x", [1, 3, 224, 224])], [_value("y", [1, 1000])]))
    code, _, err = run_cli("controls", "import", str(classifier), "--home", where)
    assert code != 0
    assert "resnet.onnx is an ONNX model but not a face detector (SCRFD) or recognizer (ArcFace)" in err
    assert not (tmp_path / "home" / "controlnet").exists() or not any((tmp_path / "home" / "controlnet").iterdir())
    face = write_tiny_face_recognizer(tmp_path / "w600k_r50.onnx", seed=2)
    code, _, err = run_cli("models", "import", str(face), "--home", where)
    assert code != 0 and "into the control library (marble controls import w600k_r50.onnx)" in err
    damaged = tmp_path / "cut.onnx"
    damaged.write_bytes(face.read_bytes()[:5000])
    code, _, err = run_cli("controls", "import", str(damaged), "--home", where)
    assert code != 0 and "cut.onnx is not a complete ONNX file" in err


def test_the_first_face_model_of_each_task_is_found_by_name(tmp_path):
    folder = tmp_path / "controlnet"
    folder.mkdir()
    with pytest.raises(ModelError, match="FaceID needs a face detector, and the control library has none"):
        find_face_model(folder, DETECTOR)
    (folder / "a-classifier.onnx").write_bytes(_graph([_value("x", [1, 3, 224, 224])], [_value("y", [1, 1000])]))
    (folder / "b-damaged.onnx").write_bytes(b"\x08\x07\x12garbage")
    write_tiny_face_recognizer(folder / "glintr100.onnx", seed=1, normalise=True)
    write_tiny_face_recognizer(folder / "w600k_r50.onnx", seed=1)
    write_tiny_face_detector(folder / "det_10g.onnx", seed=1, size=640)
    path, face = find_face_model(folder, DETECTOR)
    assert path.name == "det_10g.onnx" and face.input_size == (640, 640) and face.landmarks == 5
    path, face = find_face_model(folder, RECOGNIZER)
    assert path.name == "glintr100.onnx" and (face.input_mean, face.input_std) == (0.0, 1.0)
    (folder / "glintr100.onnx").unlink()
    assert find_face_model(folder, RECOGNIZER)[0].name == "w600k_r50.onnx"


def test_damaged_bytes_give_a_model_error_or_a_model_never_another_exception():
    data = bytearray(tiny_face_recognizer(seed=7, embedding=16).SerializeToString())
    rng = np.random.default_rng(8)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        damaged = bytearray(data)
        for position in rng.integers(0, len(damaged), size=int(rng.integers(1, 6))):
            damaged[position] = int(rng.integers(0, 256))
        damaged = damaged[: int(rng.integers(3, len(damaged) + 1))] if rng.random() < 0.3 else damaged
        try:
            inspect_face_model(parse_onnx(bytes(damaged), "fuzz.onnx"), "fuzz.onnx")
            outcomes["read"] += 1
        except ModelError as error:
            assert "fuzz.onnx" in str(error)
            outcomes["refused"] += 1
    assert outcomes["read"] and outcomes["refused"]  # both paths were exercised
