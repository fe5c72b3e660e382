"""The control library's face models as one FaceAnalyser: what FaceID units read reference faces with.

insightface's ONNX files (an SCRFD detector with landmarks and an ArcFace recognizer, imported into the
control library: library/onnx_file.py tells them apart) run through Marble's own ONNX interpreter
(onnx_runner.py) inside face_analysis.py's FaceAnalyser, with the normalisation each graph asks for and the
detector's own input size when its graph fixes one (insightface's 640 otherwise).

Why a cache keyed by the folder's listing: finding the two files reads every .onnx file whole (its inputs
and outputs follow the weights), and building a network converts its weights; neither should happen per job.
A file added, replaced or removed changes the listing, and the next FaceID job reads the folder again.

Runs on the generation thread, only when a job has a FaceID unit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop.engine.backends.face_analysis import FaceAnalyser
from desktop.engine.backends.onnx_runner import load_onnx_network
from desktop.engine.errors import ModelError
from desktop.engine.library.control import find_face_model
from desktop.engine.library.ip_adapter import FACE_MODELS
from desktop.engine.library.onnx_file import DETECTOR, RECOGNIZER

_NOUNS = {DETECTOR: "face detector", RECOGNIZER: "face recognizer"}
# insightface's FaceAnalysis default (det_size=(640, 640)), which h94's FaceID recipe uses.
_DETECTOR_SIZE = 640


class LibraryFaceModels:
    """The face detector and recognizer of one control-library folder, loaded once per listing."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._listing: tuple[tuple[str, int, int], ...] | None = None
        self._analyser: _NamedAnalyser | None = None

    def analyser(self) -> _NamedAnalyser:
        """The FaceAnalyser of the library's first detector and recognizer (by name); ModelError saying what
        to import when either is missing, or when the detector finds no landmarks to align faces by."""
        listing = self._onnx_listing()
        if self._analyser is not None and listing == self._listing:
            return self._analyser
        found = {}
        for task in (DETECTOR, RECOGNIZER):
            try:
                found[task] = find_face_model(self._folder, task)
            except ModelError:
                continue
        if len(found) < 2:
            missing = " and ".join(_NOUNS[task] for task in (DETECTOR, RECOGNIZER) if task not in found)
            raise ModelError(
                f"FaceID IP-Adapters need a face detector and a face recognizer in the control library, which has "
                f"no {missing}: import {FACE_MODELS} with `marble controls import PATH`."
            )
        (detector_path, detector), (recognizer_path, recognizer) = found[DETECTOR], found[RECOGNIZER]
        if detector.landmarks != 5:
            raise ModelError(
                f"The face detector {detector_path.name} finds faces without their five landmarks, which FaceID "
                "aligns a face by: import an SCRFD detector with keypoints (det_10g.onnx from buffalo_l, or "
                "scrfd_10g_bnkps.onnx from antelopev2)."
            )
        width, height = detector.input_size or (_DETECTOR_SIZE, _DETECTOR_SIZE)
        if width != height:
            raise ModelError(
                f"The face detector {detector_path.name} takes {width}x{height} images; FaceID feeds a square one."
            )
        analyser = FaceAnalyser(
            load_onnx_network(detector_path, detector_path.name),
            load_onnx_network(recognizer_path, recognizer_path.name),
            detector_mean=detector.input_mean, detector_std=detector.input_std,
            recognizer_mean=recognizer.input_mean, recognizer_std=recognizer.input_std, detector_size=width,
            retry_smaller=detector.input_size is None,
        )  # fmt: skip
        self._analyser = _NamedAnalyser(analyser, detector_path.name, recognizer_path.name)
        self._listing = listing
        return self._analyser

    def _onnx_listing(self) -> tuple[tuple[str, int, int], ...]:
        if not self._folder.is_dir():
            return ()
        found = []
        for path in sorted(self._folder.glob("*.onnx")):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((path.name, stat.st_size, stat.st_mtime_ns))
        return tuple(found)


class _NamedAnalyser:
    """A FaceAnalyser whose model errors name the file that failed (the analyser sees only networks)."""

    def __init__(self, analyser: FaceAnalyser, detector: str, recognizer: str) -> None:
        self._analyser, self._detector, self._recognizer = analyser, detector, recognizer

    def detect(self, image: Any) -> Any:
        try:
            return self._analyser.detect(image)
        except ModelError as error:
            raise ModelError(f"The face detector {self._detector}: {error}") from None

    def identity(self, image: Any, face: Any) -> Any:
        try:
            return self._analyser.identity(image, face)
        except ModelError as error:
            raise ModelError(f"The face recognizer {self._recognizer}: {error}") from None

    def crop(self, image: Any, face: Any, size: int) -> Any:
        return self._analyser.crop(image, face, size)
