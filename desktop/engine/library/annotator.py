"""Learned control preprocessors ("annotators") without torch: what a depth, lineart or pose file is.

Annotator weights live in the control library beside the ControlNets (`marble controls import|list`);
the header's tensor names say which task a file does:

- depth: a transformers depth-estimation model, Depth Anything (`backbone.embeddings...`, `neck.*`,
  `head.conv3.weight`) or DPT/MiDaS (`dpt.embeddings...`, `head.head.*`). Its architecture is not
  fully in its shapes (which layers feed the neck, attention heads), so the file carries transformers'
  config.json in its safetensors metadata under `config`. Importing a model folder (config.json +
  model.safetensors, as the model's page ships it) writes that single file (`pack_depth_folder`).
- lineart: the generator network of ControlNet 1.1's lineart annotator (`model0.1.weight` ...
  `model4.1.weight`, residual blocks `model2.N.conv_block.*`).
- openpose: the OpenPose body model (`conv1_1.weight` ... `Mconv7_stage6_L2.weight`: VGG front,
  six stages of part-affinity (L1) and heatmap (L2) branches).
- hand / face: OpenPose's hand and face models (`hand_pose_model.pth`, `facenet.pth` as ControlNet's
  annotators ship them): one CPM with a VGG front ending in `conv5_3_CPM`, stage 1 `conv6_1_CPM` /
  `conv6_2_CPM`, stages 2.. `Mconv1_stageN` ... `Mconv7_stageN`. The same names for both: the number
  of maps `conv6_2_CPM` makes tells them apart (22 for a hand's 21 keypoints, 71 for a face's 70, each
  with a background map).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader, read_safetensors_header
from desktop.engine.safe_files import loads_json, open_regular

DEPTH = "depth"
LINEART = "lineart"
OPENPOSE = "openpose"
HAND = "hand"  # OpenPose's hand network (the openpose_hand / openpose_full preprocessors use it)
FACE = "face"  # OpenPose's face network (openpose_face / openpose_full)
TASKS = (DEPTH, LINEART, OPENPOSE, HAND, FACE)
_TASK_LABELS = {DEPTH: "Depth", LINEART: "Lineart", OPENPOSE: "OpenPose body", HAND: "OpenPose hand",
                FACE: "OpenPose face"}  # fmt: skip
_PART_MAPS = {22: HAND, 71: FACE}  # maps conv6_2_CPM makes -> what the CPM finds
CONFIG_KEY = "config"  # the safetensors metadata entry holding transformers' config.json
_MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AnnotatorInfo:
    """What an annotator file's header says."""

    task: str  # DEPTH | LINEART | OPENPOSE | HAND | FACE
    architecture: str  # "depth-anything" | "dpt" | "lineart-generator" | "openpose-body" | "openpose-hand" | ...

    @property
    def label(self) -> str:
        names = {"depth-anything": "Depth Anything", "dpt": "DPT/MiDaS"}
        extra = f" ({names[self.architecture]})" if self.architecture in names else ""
        return f"{_TASK_LABELS[self.task]} preprocessor{extra}"


def inspect_annotator(header: SafetensorsHeader, name: str = "this file") -> AnnotatorInfo | None:
    """The annotator a header describes, or None when its tensors are no annotator's."""
    tensors = header.tensors
    if "model0.1.weight" in tensors and "model4.1.weight" in tensors and header.has_prefix("model2.0.conv_block."):
        return AnnotatorInfo(LINEART, "lineart-generator")
    if "conv1_1.weight" in tensors and "conv5_5_CPM_L1.weight" in tensors and "Mconv7_stage6_L2.weight" in tensors:
        return AnnotatorInfo(OPENPOSE, "openpose-body")
    if all(f"{n}.weight" in tensors for n in ("conv1_1", "conv5_3_CPM", "conv6_1_CPM", "conv6_2_CPM")):
        maps = header.shape("conv6_2_CPM.weight")
        task = _PART_MAPS.get(maps[0]) if maps else None
        if task is None or not header.has_prefix("Mconv7_stage"):
            made = f"{maps[0]} output maps" if maps and len(maps) == 4 else "no output layer Marble can read"
            raise ModelError(
                f"{name} has OpenPose hand/face tensor names but {made}: a hand model (hand_pose_model.pth) makes "
                "22 maps and a face model (facenet.pth) 71, each with refinement stages (Mconv1_stage2 ...)."
            )
        return AnnotatorInfo(task, f"openpose-{task}")
    architecture = _depth_architecture(header)
    if architecture is None:
        return None
    if not isinstance(header.metadata.get(CONFIG_KEY), str):
        raise ModelError(
            f"{name} is a depth model without its configuration (which layers feed its depth head is not in its "
            "tensors). Import the model's folder (config.json + model.safetensors) instead of the file alone."
        )
    return AnnotatorInfo(DEPTH, architecture)


def is_depth_folder(folder: Path) -> bool:
    """Whether a folder holds a transformers depth model (config.json + model.safetensors with a depth
    head); other transformers folders (an IP-Adapter's image encoder) are imported by their weights."""
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        header = read_safetensors_header(folder / "model.safetensors", name=f"{folder.name}/model.safetensors")
    except ModelError:
        return False  # the import then reports the damaged file as for any other
    return _depth_architecture(header) is not None


def pack_depth_folder(folder: Path, target: Path) -> None:
    """Write `folder`'s model.safetensors to `target` with its config.json in the header's metadata.

    Plain byte work (no torch): the header gains one metadata entry, the tensor bytes are copied as
    they are (their offsets are relative to the end of the header, so they stay valid)."""
    header = read_safetensors_header(folder / "model.safetensors", name=f"{folder.name}/model.safetensors")
    if _depth_architecture(header) is None:
        raise ModelError(f"{folder.name} is not a Depth Anything or DPT depth model folder.")
    config_file = open_regular(folder / "config.json", label="config.json")
    assert config_file is not None
    with config_file:
        text = config_file.read(_MAX_CONFIG_BYTES + 1).decode("utf-8", errors="replace")
    try:
        config = loads_json(text)
    except ValueError:
        config = None
    if len(text) > _MAX_CONFIG_BYTES or not isinstance(config, dict):
        raise ModelError(f"{folder.name}/config.json is not a model configuration.")
    source = open_regular(folder / "model.safetensors", label="model.safetensors")
    assert source is not None
    with source, open(target, "wb") as out:
        (length,) = struct.unpack("<Q", source.read(8))
        document = json.loads(source.read(length))
        metadata = dict(document.get("__metadata__") or {})
        metadata[CONFIG_KEY] = json.dumps(config, sort_keys=True)
        document["__metadata__"] = metadata
        packed = json.dumps(document, separators=(",", ":")).encode("utf-8")
        packed += b" " * (-len(packed) % 8)  # safetensors pads its header to 8 bytes
        out.write(struct.pack("<Q", len(packed)) + packed)
        while chunk := source.read(1 << 24):
            out.write(chunk)


def _depth_architecture(header: SafetensorsHeader) -> str | None:
    tensors = header.tensors
    if "backbone.embeddings.patch_embeddings.projection.weight" in tensors and "head.conv3.weight" in tensors:
        return "depth-anything"
    if "dpt.embeddings.patch_embeddings.projection.weight" in tensors and header.has_prefix("head.head."):
        return "dpt"
    return None
