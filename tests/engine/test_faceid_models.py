"""FaceID with imported face models, end to end: insightface-layout ONNX files (a tiny random SCRFD detector with
landmarks and an ArcFace recognizer, tests/support/onnx_faces.py) imported into the control library, found by
backends/face_models.py, run by Marble's ONNX interpreter inside face_analysis.py's FaceAnalyser, and read by a
FaceID adapter in a real job.

The reference is the same FaceAnalyser over onnxruntime sessions of the same files (onnxruntime is the test-only
reference of the interpreter): the job's picture must be the one that reference's identity gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.backends.face_analysis import FaceAnalyser
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from desktop.engine.resources import Resources
from tests.engine.test_faceid import StandInAnalyser, _face
from tests.engine.test_ip_adapter import image_of, request_for, unit
from tests.support import tiny_ip_adapters as tiny
from tests.support.cli_runner import run_cli
from tests.support.onnx_faces import write_tiny_face_detector, write_tiny_face_recognizer

ort = pytest.importorskip("onnxruntime")


def _session(path):
    """An onnxruntime session as the analyser calls a network: NCHW tensor in, its outputs as tensors."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(image: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(out) for out in session.run(None, {name: image.detach().cpu().numpy()})]

    return run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("face-models")
    return {
        "detector": write_tiny_face_detector(folder / "det_10g.onnx", seed=3),
        "recognizer": write_tiny_face_recognizer(folder / "w600k_r50.onnx", seed=4),
        "no_landmarks": write_tiny_face_detector(folder / "det_500m_nokps.onnx", seed=5, keypoints=False),
        "face": _face(folder / "alice.png", ("navy", "peachpuff", "black")),
    }


@pytest.fixture
def home(tmp_path, tiny_sd15_dir):
    from diffusers import UNet2DConditionModel

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15_dir), subfolder="unet")
    adapter = tiny.save_state(tiny.faceid_state(unet, seed=41), tmp_path / "ip-adapter-faceid_sd15.safetensors")
    Library(paths).import_path(str(adapter), "control", "ip-adapter-faceid_sd15")
    return paths


def _backend(paths, **kwargs) -> DiffusersBackend:
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0, **kwargs)


def test_faceid_runs_with_the_imported_onnx_face_models(home, models, tiny_sd15_dir):
    library = Library(home)
    for key in ("detector", "recognizer"):
        library.import_path(str(models[key]), "control")
    request = request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", models["face"]),))
    got = image_of(_backend(home), request)  # the backend's own factory: the library's face models
    # The reference analyser: the same files through onnxruntime. It finds a face in this picture, and the
    # interpreter's identity of it is onnxruntime's.
    reference = FaceAnalyser(_session(models["detector"]), _session(models["recognizer"]))
    picture = Image.open(models["face"]).convert("RGB")
    face = reference.detect(picture)[0]
    expected = image_of(_backend(home, face_analyser=lambda: reference), request)
    assert np.abs(got.astype(float) - expected.astype(float)).max() <= 1
    # The face was read: no adapter, and another identity, give other pictures.
    plain = image_of(_backend(home), request_for(tiny_sd15_dir))
    assert np.abs(got.astype(float) - plain.astype(float)).mean() > 1.0
    other = image_of(_backend(home, face_analyser=StandInAnalyser), request)
    assert np.abs(got.astype(float) - other.astype(float)).mean() > 1.0
    assert 0 < face.score <= 1 and len(face.landmarks) == 5


def test_missing_or_unusable_face_models_are_named(home, models, tiny_sd15_dir):
    request = request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", models["face"]),))
    library = Library(home)
    with pytest.raises(ModelError, match=r"has no face detector and face recognizer: import .*det_10g\.onnx"):
        image_of(_backend(home), request)
    library.import_path(str(models["recognizer"]), "control")
    with pytest.raises(ModelError, match=r"has no face detector: import"):
        image_of(_backend(home), request)
    library.import_path(str(models["no_landmarks"]), "control")
    with pytest.raises(ModelError, match=r"det_500m_nokps\.onnx finds faces without their five landmarks"):
        image_of(_backend(home), request)


def test_a_face_model_named_as_a_units_control_model_is_refused_saying_what_it_is(home, models, tiny_sd15_dir):
    Library(home).import_path(str(models["detector"]), "control")
    request = request_for(tiny_sd15_dir, controls=(ControlUnit(model="det_10g", image=str(models["face"])),))
    with pytest.raises(InvalidRequest, match=r"'det_10g' is a face model for FaceID IP-Adapters, not a control "
                                             r"model: a FaceID unit .*Pick a ControlNet or T2I-Adapter"):  # fmt: skip
        image_of(_backend(home), request)


def test_the_cli_imports_the_face_models_and_runs_faceid(home, models, tiny_sd15_dir, tmp_path):
    where = ["--home", str(home.models.parent)]
    for key in ("detector", "recognizer"):
        code, _, err = run_cli("controls", "import", str(models[key]), *where)
        assert code == 0, err
    out = tmp_path / "faceid.png"
    code, _, err = run_cli("generate", "--model", str(tiny_sd15_dir), "--prompt", "a portrait", "--steps", "2",
                           "--seed", "3", "--width", "64", "--height", "64", "--device", "cpu", "--no-preview",
                           "--ip-adapter", f"ip-adapter-faceid_sd15:{models['face']}:0.8", "--out", str(out),
                           *where)  # fmt: skip
    assert code == 0, err
    assert 'ControlNet 0: "Module: ip-adapter_face_id, Model: ip-adapter-faceid_sd15' in Image.open(out).info[
        "parameters"
    ]


def test_the_face_models_are_loaded_once_and_again_when_the_library_changes(home, models, tmp_path):
    from desktop.engine.backends.face_models import LibraryFaceModels

    library = Library(home)
    for key in ("detector", "recognizer"):
        library.import_path(str(models[key]), "control")
    face_models = LibraryFaceModels(home.controls)
    first = face_models.analyser()
    assert face_models.analyser() is first  # nothing read or built again
    # Another recognizer, first by name, serves from the next job on.
    other = write_tiny_face_recognizer(tmp_path / "antelope_glintr100.onnx", seed=9)
    library.import_path(str(other), "control")
    second = face_models.analyser()
    assert second is not first
    picture = Image.open(models["face"]).convert("RGB")
    face = second.detect(picture)[0]
    assert not torch.equal(first.identity(picture, face), second.identity(picture, face))
