"""The shipped offline resources: the CLIP tokenizer and diffusers config folders.

Every model is built on the meta device (accelerate.init_empty_weights): the architecture and the
parameter counts are real, no memory is allocated, and the whole module runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from desktop.engine.errors import ModelError
from desktop.engine.resources import CONFIG_NAMES, TOKENIZER_COMPONENTS, Resources

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

# No tokenizer folders: the one copy under resources/tokenizers/ serves every config (issue 23).
SD_PARTS = {"model_index.json", "scheduler", "unet", "vae", "text_encoder"}
SDXL_PARTS = SD_PARTS | {"text_encoder_2"}
FAMILIES = {"sd15": "sd1", "sd15-inpaint": "sd1", "sd2": "sd2", "sd2-base": "sd2", "sd2-inpaint": "sd2",
            "sdxl": "sdxl", "sdxl-inpaint": "sdxl", "sdxl-refiner": "sdxl"}
REFINER_UNET = 2_259_526_660  # stabilityai/stable-diffusion-xl-refiner-1.0's UNet config
# The refiner has the second SDXL encoder and tokenizer only.
REFINER_PARTS = SDXL_PARTS - {"text_encoder"}


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
    "sdxl-refiner": Expect(
        "StableDiffusionXLImg2ImgPipeline", REFINER_UNET, [OPENCLIP_BIGG_PROJ], "epsilon", [0], 0.13025
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
    from desktop.engine.backends.diffusers_backend import clip_tokenizer

    folder = resources.tokenizer_folder()
    assert {p.name for p in folder.iterdir()} >= set(TOKENIZER_FILES)
    tok = clip_tokenizer(resources, pad_zero)
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


def test_the_tokenizer_files_are_shipped_once(resources: Resources) -> None:
    # 2 MB each time: the configs and the demo model load the one copy instead (issue 23).
    for name in ("vocab.json", "merges.txt"):
        assert sorted(resources.root.rglob(name)) == [resources.tokenizer_folder() / name]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_folder_is_complete(resources: Resources, name: str) -> None:
    folder = resources.config_folder(name)
    expect = EXPECT[name]
    xl = name.startswith("sdxl")
    refiner = name == "sdxl-refiner"
    assert {p.name for p in folder.iterdir()} == (REFINER_PARTS if refiner else SDXL_PARTS if xl else SD_PARTS)

    index = _read(folder / "model_index.json")
    assert index["_class_name"] == expect.pipeline
    components = ["scheduler", "unet", "vae", "text_encoder"] + (["text_encoder_2"] if xl else [])
    if refiner:
        components.remove("text_encoder")
        assert index["text_encoder"] == [None, None] and index["tokenizer"] == [None, None]
    for component in components:
        assert index[component][0] in ("diffusers", "transformers")
        config_file = "scheduler_config.json" if component == "scheduler" else "config.json"
        assert (folder / component / config_file).is_file()
    # Optional components are null so from_single_file does not look for them (they would need files
    # we do not ship, or the network).
    for optional in ("safety_checker", "feature_extractor", "image_encoder"):
        assert index.get(optional, [None, None]) == [None, None]

    # The tokenizers stay in model_index.json: the backend hands in the shared copy for each.
    tokenizers = ["tokenizer_2"] if refiner else ["tokenizer", "tokenizer_2"] if xl else ["tokenizer"]
    assert [name for name in TOKENIZER_COMPONENTS if index.get(name, [None])[0]] == tokenizers
    assert all(index[name] == ["transformers", "CLIPTokenizer"] for name in tokenizers)

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
                }
                if (folder / "text_encoder").is_dir():
                    modules["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
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

    from desktop.engine.backends.diffusers_backend import shared_tokenizers

    pipeline_class = getattr(diffusers, expect.pipeline)
    pipe = pipeline_class.from_single_file(
        str(checkpoint), config=str(folder), local_files_only=True, **build_empty(folder),
        **shared_tokenizers(resources, folder, FAMILIES[name]),
    )
    assert type(pipe).__name__ == expect.pipeline
    assert pipe.scheduler.config.prediction_type == expect.prediction
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if hasattr(pipe, "tokenizer_2") else [])
    tokenizers = [t for t in tokenizers if t is not None]  # the refiner has no first tokenizer
    assert [t.pad_token_id for t in tokenizers] == expect.tokenizer_pads
    assert tokenizers[0](REFERENCE_TEXT)["input_ids"] == REFERENCE_IDS
    assert connections == []


# What the 12 tokenizer folders shipped before issue 23 gave (every config's tokenizer/ and tokenizer_2/,
# the demo model's, clip/ and clip-pad0/), computed from those files with transformers 5.25: two
# outcomes, by pad token. The one shared copy must tokenize exactly as they did.
GOLDEN_PROMPTS = [
    "a photo of a cat",
    "Hello, World!! wow! !",
    "Café naïve 東京 🙂 it's 1234 <|endoftext|> x",
    "(masterpiece:1.2), BREAK [cat|dog]",
]
GOLDEN_LONG = " ".join(f"word{i} red, blue!" for i in range(60))  # 410 tokens: truncated when padded
GOLDEN_IDS_COMMON = [
    [49406, 320, 1125, 539, 320, 2368, 49407],
    None,  # the "!" prompt: differs by pad token, below
    [49406, 15304, 1097, 35689, 563, 48338, 21078, 361, 14860, 585, 568, 272, 273, 274, 275, 49407, 343, 49407],
    [49406, 263, 12066, 281, 272, 269, 273, 2361, 2568, 314, 2368, 347, 1929, 316, 49407],
]
GOLDEN: dict[bool, dict[str, Any]] = {
    False: {
        "pad": ["<|endoftext|>", 49407],
        "special": [49406, 49407],
        "added": [["<|endoftext|>", 49407], ["<|startoftext|>", 49406]],
        "exclaim": [49406, 3306, 267, 1002, 748, 2781, 256, 256, 49407],
        "padded_sha": "69bd38cf1d246e61c3b60b82b5c53e38253395242c69383b397e2f451d122b1e",
        "long_sha": "8cfd4b27fd2697333e9accde974e56ccb4ce97d1549785c7f500844117fd6ef2",
    },
    True: {  # "!" is a special token here, so a literal "!" is id 0 too (as with diffusers' own files)
        "pad": ["!", 0],
        "special": [0, 49406, 49407],
        "added": [["!", 0], ["<|endoftext|>", 49407], ["<|startoftext|>", 49406]],
        "exclaim": [49406, 3306, 267, 1002, 0, 0, 2781, 0, 0, 49407],
        "padded_sha": "5aefa738e6a023e03a6fbed3e02ba140c8c6dcc6cab48401dca146405fae3a8a",
        "long_sha": "63d2a46880e262516a9c8391a7861d5f490702258678f2bf1bf045ab78d48ea8",
    },
}


def _sha(ids: list[Any]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def _tokenizes_as_before(tok: Any, pad_zero: bool) -> None:
    golden = GOLDEN[pad_zero]
    assert [tok.pad_token, tok.pad_token_id] == golden["pad"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (49406, 49407, 49407)
    assert (len(tok), tok.model_max_length) == (VOCAB_SIZE, 77)
    assert sorted(tok.all_special_ids) == golden["special"]
    assert sorted(map(list, tok.get_added_vocab().items())) == golden["added"]
    expected = [golden["exclaim"] if ids is None else ids for ids in GOLDEN_IDS_COMMON]
    assert [tok(text).input_ids for text in GOLDEN_PROMPTS] == expected
    padded = tok(GOLDEN_PROMPTS + [GOLDEN_LONG], padding="max_length", max_length=77, truncation=True).input_ids
    assert _sha(padded) == golden["padded_sha"]
    long = tok(GOLDEN_LONG, add_special_tokens=False, truncation=False, verbose=False).input_ids
    assert (len(long), _sha(long)) == (410, golden["long_sha"])


@pytest.mark.parametrize("name", [*CONFIG_NAMES, "demo-model"])
def test_every_model_gets_the_tokenization_of_its_old_copy(resources: Resources, name: str) -> None:
    """What the backend hands each shipped config (and the demo model) tokenizes id for id, pad for pad,
    as the copy that folder used to carry."""
    from desktop.engine.backends.diffusers_backend import shared_tokenizers

    folder, family = (resources.demo_model, "sd1") if name == "demo-model" else (resources.config_folder(name),
                                                                               FAMILIES[name])
    pads = [49407] if name == "demo-model" else EXPECT[name].tokenizer_pads
    tokenizers = shared_tokenizers(resources, folder, family)
    expected = ["tokenizer_2"] if name == "sdxl-refiner" else list(TOKENIZER_COMPONENTS[: len(pads)])
    assert list(tokenizers) == expected
    for tok, pad_id in zip(tokenizers.values(), pads, strict=True):
        _tokenizes_as_before(tok, pad_zero=pad_id == 0)
