"""The shipped offline resources: CLIP tokenizers and diffusers config folders.

Every model is built on the meta device (accelerate.init_empty_weights): the architecture and the
parameter counts are real, no memory is allocated, and the whole module runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from desktop.engine.errors import ModelError
from desktop.engine.resources import CONFIG_NAMES, Resources

# "a photo of a cat" through the released CLIP tokenizer (docs/architecture.md).
REFERENCE_TEXT = "a photo of a cat"
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
VOCAB_SIZE = 49_408
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")

# Parameter counts of the released checkpoints' modules.
SD15_UNET = 859_520_964
SD2_UNET = 865_910_724
SDXL_UNET = 2_567_463_684
# Inpainting UNets take 9 input channels instead of 4 (latents + mask + masked-image latents): only
# conv_in grows, by 5 channels x 320 filters x a 3x3 kernel.
INPAINT_EXTRA = 5 * 320 * 3 * 3
VAE = 83_653_863
CLIP_L = 123_060_480
OPENCLIP_H = 340_387_840  # SD 2.x: ViT-H text tower without its last layer, no projection
OPENCLIP_BIGG_PROJ = 694_659_840  # SDXL text_encoder_2, with the 1280x1280 projection

SD_PARTS = {"model_index.json", "scheduler", "unet", "vae", "text_encoder", "tokenizer"}
SDXL_PARTS = SD_PARTS | {"text_encoder_2", "tokenizer_2"}


@dataclass(frozen=True)
class Expect:
    """What each config folder must produce."""

    pipeline: str
    unet: int
    text: list[int]
    prediction: str
    tokenizer_pads: list[int]
    vae_scale: float = 0.18215


EXPECT: dict[str, Expect] = {
    "sd15": Expect("StableDiffusionPipeline", SD15_UNET, [CLIP_L], "epsilon", [49407]),
    "sd15-inpaint": Expect(
        "StableDiffusionInpaintPipeline", SD15_UNET + INPAINT_EXTRA, [CLIP_L], "epsilon", [49407]
    ),
    "sd2": Expect("StableDiffusionPipeline", SD2_UNET, [OPENCLIP_H], "v_prediction", [0]),
    "sd2-base": Expect("StableDiffusionPipeline", SD2_UNET, [OPENCLIP_H], "epsilon", [0]),
    "sd2-inpaint": Expect(
        "StableDiffusionInpaintPipeline", SD2_UNET + INPAINT_EXTRA, [OPENCLIP_H], "epsilon", [0]
    ),
    "sdxl": Expect(
        "StableDiffusionXLPipeline", SDXL_UNET, [CLIP_L, OPENCLIP_BIGG_PROJ], "epsilon", [49407, 0], 0.13025
    ),
    "sdxl-inpaint": Expect(
        "StableDiffusionXLInpaintPipeline",
        SDXL_UNET + INPAINT_EXTRA,
        [CLIP_L, OPENCLIP_BIGG_PROJ],
        "epsilon",
        [49407, 0],
        0.13025,
    ),
}


@pytest.fixture(scope="module")
def resources() -> Resources:
    return Resources.default()


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_config_name_has_expectations() -> None:
    assert set(EXPECT) == set(CONFIG_NAMES)


def test_default_root_is_the_repository_resources(resources: Resources) -> None:
    assert resources.root.is_dir()
    assert resources.root == Path(__file__).resolve().parents[2] / "resources"


def test_frozen_app_uses_the_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert Resources.default().root == tmp_path / "resources"


@pytest.mark.parametrize("name", ["../../etc", "sd15/../sd2", "", "SD15", "/etc", "sd15/unet", "sd3"])
def test_unknown_config_names_raise_model_error(resources: Resources, name: str) -> None:
    with pytest.raises(ModelError):
        resources.config_folder(name)


def test_missing_resources_raise_model_error(tmp_path: Path) -> None:
    empty = Resources(tmp_path)
    with pytest.raises(ModelError, match="Reinstall"):
        empty.config_folder("sd15")
    with pytest.raises(ModelError, match="Reinstall"):
        empty.tokenizer_folder()


PADDING = [(False, 49407, "<|endoftext|>"), (True, 0, "!")]


@pytest.mark.parametrize(("pad_zero", "pad_id", "pad_token"), PADDING)
def test_tokenizer_encodes_the_reference_sentence(
    resources: Resources, pad_zero: bool, pad_id: int, pad_token: str
) -> None:
    from transformers import CLIPTokenizer

    folder = resources.tokenizer_folder(pad_zero=pad_zero)
    assert {p.name for p in folder.iterdir()} >= set(TOKENIZER_FILES)
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert tok(REFERENCE_TEXT)["input_ids"] == REFERENCE_IDS
    assert (tok.pad_token, tok.pad_token_id) == (pad_token, pad_id)
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert len(tok) == VOCAB_SIZE
    assert tok.model_max_length == 77
    padded = tok(REFERENCE_TEXT, padding="max_length", max_length=77)["input_ids"]
    assert padded == REFERENCE_IDS + [pad_id] * (77 - len(REFERENCE_IDS))


def test_vocab_and_merges_follow_the_clip_derivation(resources: Resources) -> None:
    folder = resources.tokenizer_folder()
    vocab = _read(folder / "vocab.json")
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == VOCAB_SIZE
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    assert merges[0] == "#version: 0.2"
    assert len(merges) == 1 + 48_894
    # Ids 512.. are the merges, joined, in file order.
    assert vocab["".join(merges[1].split(" "))] == 512
    assert vocab["".join(merges[-1].split(" "))] == VOCAB_SIZE - 3
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49406, 49407)
    # Both folders share the vocabulary; only the padding differs.
    pad0 = resources.tokenizer_folder(pad_zero=True)
    for name in ("vocab.json", "merges.txt"):
        assert (pad0 / name).read_bytes() == (folder / name).read_bytes()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_folder_is_complete(resources: Resources, name: str) -> None:
    folder = resources.config_folder(name)
    expect = EXPECT[name]
    xl = name.startswith("sdxl")
    assert {p.name for p in folder.iterdir()} == (SDXL_PARTS if xl else SD_PARTS)

    index = _read(folder / "model_index.json")
    assert index["_class_name"] == expect.pipeline
    components = ["scheduler", "unet", "vae", "text_encoder"] + (["text_encoder_2"] if xl else [])
    for component in components:
        assert index[component][0] in ("diffusers", "transformers")
        config_file = "scheduler_config.json" if component == "scheduler" else "config.json"
        assert (folder / component / config_file).is_file()
    # Optional components are null so from_single_file does not look for them (they would need files
    # we do not ship, or the network).
    for optional in ("safety_checker", "feature_extractor", "image_encoder"):
        assert index.get(optional, [None, None]) == [None, None]

    tokenizers = ["tokenizer", "tokenizer_2"] if xl else ["tokenizer"]
    for sub, pad_id in zip(tokenizers, expect.tokenizer_pads, strict=True):
        source = resources.tokenizer_folder(pad_zero=pad_id == 0)
        for file in TOKENIZER_FILES:
            assert (folder / sub / file).read_bytes() == (source / file).read_bytes(), (sub, file)

    scheduler = _read(folder / "scheduler" / "scheduler_config.json")
    assert scheduler["prediction_type"] == expect.prediction
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
    assert scheduler["beta_schedule"] == "scaled_linear"
    assert scheduler["steps_offset"] == 1
    if xl:
        assert scheduler["_class_name"] == "EulerDiscreteScheduler"
        assert scheduler["timestep_spacing"] == "leading"
    assert _read(folder / "vae" / "config.json")["scaling_factor"] == expect.vae_scale


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def build_empty() -> Callable[[Path], dict[str, Any]]:
    """Build (once per folder) every module of a config folder with empty (meta) weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cache: dict[Path, dict[str, Any]] = {}

    def build(folder: Path) -> dict[str, Any]:
        if folder not in cache:
            unet_dir = folder / "unet"
            with init_empty_weights():
                modules: dict[str, Any] = {
                    "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir)),
                    "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                    "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                }
                if (folder / "text_encoder_2").is_dir():
                    config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
                    modules["text_encoder_2"] = CLIPTextModelWithProjection(config)
            cache[folder] = modules
        return cache[folder]

    return build


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds_the_released_architecture(
    resources: Resources, build_empty: Callable[[Path], dict[str, Any]], name: str
) -> None:
    modules = build_empty(resources.config_folder(name))
    expect = EXPECT[name]
    assert next(modules["unet"].parameters()).device.type == "meta"
    assert _count(modules["unet"]) == expect.unet
    assert _count(modules["vae"]) == VAE
    encoders = [modules[key] for key in ("text_encoder", "text_encoder_2") if key in modules]
    assert [_count(e) for e in encoders] == expect.text


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_from_single_file_uses_the_folder_offline(
    resources: Resources,
    build_empty: Callable[[Path], dict[str, Any]],
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipeline wiring (model_index, scheduler, tokenizers) loads from the folder, offline.

    The heavy modules are handed in empty, so the checkpoint only needs to exist; converting real
    weights is diffusers' part and needs a real checkpoint.
    """
    import socket

    import diffusers
    import torch
    from safetensors.torch import save_file

    # Record any attempt to open a connection: local_files_only must keep diffusers off the network.
    connections: list[object] = []

    def no_connect(sock: socket.socket, address: object) -> None:
        connections.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    folder = resources.config_folder(name)
    expect = EXPECT[name]
    checkpoint = tmp_path / "empty.safetensors"
    save_file({"placeholder": torch.zeros(1)}, str(checkpoint))

    pipeline_class = getattr(diffusers, expect.pipeline)
    pipe = pipeline_class.from_single_file(
        str(checkpoint), config=str(folder), local_files_only=True, **build_empty(folder)
    )
    assert type(pipe).__name__ == expect.pipeline
    assert pipe.scheduler.config.prediction_type == expect.prediction
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if hasattr(pipe, "tokenizer_2") else [])
    assert [t.pad_token_id for t in tokenizers] == expect.tokenizer_pads
    assert tokenizers[0](REFERENCE_TEXT)["input_ids"] == REFERENCE_IDS
    assert connections == []
