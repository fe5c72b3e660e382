"""Behaviour, not just array shapes: the shipped demo model through the app's own engine.

The prompt says red, the picture is red; the negative prompt steers away; image to image keeps its
source at a low strength and follows the prompt at a high one; a LoRA trained here turns
backgrounds black at weight 1 and changes nothing at weight 0. The analytic checker judges every
picture. Several seeds per claim, a majority each: the claims are about the model, not one sample.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest, LoraRef
from desktop.engine.resources import Resources
from installer.demo_model import architecture, scenes
from installer.demo_model.checker import measure
from tests.support.demo_lora import train_black_background_lora

DEMO = Resources.default().demo_model
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return AppPaths.for_root(tmp_path_factory.mktemp("demo-home")).ensure()


@pytest.fixture(scope="module")
def backend(home):
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=1)


def request(prompt: str, **changes) -> GenerationRequest:
    values = dict(prompt=prompt, model=str(DEMO), steps=20, cfg_scale=7.0, width=128, height=128, device="cpu")
    return GenerationRequest(**(values | changes)).validate()


def generate(backend, req: GenerationRequest):
    backend.load(req)
    return backend.generate(req, 0, lambda _: None, CancelToken()).images[0].convert("RGB")


def measured(backend, prompt: str, **changes):
    return [measure(generate(backend, request(prompt, seed=seed, **changes))) for seed in SEEDS]


def majority(values) -> bool:
    values = list(values)
    return sum(values) * 2 > len(values)


def test_the_shipped_demo_model_is_a_small_sd1_family_diffusers_folder():
    index = json.loads((DEMO / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"][1] == "UNet2DConditionModel" and index["vae"][1] == "AutoencoderKL"
    assert index["text_encoder"][1] == "CLIPTextModel" and index["tokenizer"][1] == "CLIPTokenizer"
    size = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert size <= 30 * 1024 * 1024
    assert not [f for f in DEMO.rglob("*") if f.suffix in (".bin", ".ckpt", ".pt", ".pth")]


def test_the_shipped_weights_are_those_of_the_training_code():
    # The shipped folder must be what installer/demo_model builds now: a change to the architecture or
    # the schedule without retraining would ship weights that the training code no longer describes.
    for folder, config_file, expected in (
        ("unet", "config.json", architecture.UNET_CONFIG),
        ("vae", "config.json", architecture.VAE_CONFIG),
        ("text_encoder", "config.json", architecture.TEXT_CONFIG),
        ("scheduler", "scheduler_config.json", architecture.SCHEDULER_CONFIG),
    ):
        shipped = json.loads((DEMO / folder / config_file).read_text())
        differing = {key: (value, shipped.get(key)) for key, value in expected.items() if shipped.get(key) != value}
        assert not differing, (folder, differing)


@pytest.mark.parametrize("colour", ["red", "blue", "yellow", "green"])
def test_the_shape_takes_the_colour_the_prompt_names(backend, colour):
    results = measured(backend, f"a large {colour} circle in the centre on a white background")
    assert majority(m.colour == colour for m in results), results
    assert majority(m.background == "white" for m in results), results


@pytest.mark.parametrize(
    ("where", "position"), [("on the left", "left"), ("in the bottom right corner", "bottom right")]
)
def test_the_shape_goes_where_the_prompt_says(backend, where, position):
    results = measured(backend, f"a large purple square {where} on a yellow background")
    assert majority(m.position == position for m in results), results
    assert majority(m.background == "yellow" for m in results), results


def test_the_background_follows_the_prompt(backend):
    for background in ("black", "orange"):
        results = measured(backend, f"a small white triangle at the top on a{'n' if background == 'orange' else ''} "
                                    f"{background} background")  # fmt: skip
        assert majority(m.background == background for m in results), results


def test_the_negative_prompt_steers_away_from_a_colour(backend):
    # No colour in the prompt: the model picks one. Naming that colour in the negative prompt must move
    # the same seed to another colour.
    prompt = "a large circle in the centre on a white background"
    moved = []
    for seed in SEEDS:
        picked = measure(generate(backend, request(prompt, seed=seed))).colour
        steered = measure(generate(backend, request(prompt, seed=seed, negative_prompt=f"{picked} circle")))
        moved.append(steered.colour != picked)
    assert majority(moved), moved


def test_guidance_makes_pictures_follow_the_prompt_better(backend):
    # CFG 7 against CFG 1 (guidance off), same prompts and seeds: 16 of the quality gate's held-out
    # prompts, each picture scored on colour, position and kind by the checker.
    def score(cfg_scale: float) -> int:
        hits = 0
        for seed, scene in enumerate(scenes.held_out_scenes()[:16]):
            got = measure(generate(backend, request(scenes.prompt_for(scene), seed=seed, cfg_scale=cfg_scale)))
            want = scene.shapes[0]
            hits += (got.colour == want.colour) + (got.position == want.position) + (got.kind == want.kind)
        return hits

    guided, unguided = score(7.0), score(1.0)
    assert guided >= unguided + 3, (guided, unguided)


@pytest.fixture(scope="module")
def black_background_lora(home, tmp_path_factory):
    # 60 steps take the borders from 140-240 to about 45 (measured 44-47 on the three prompts below, all read as
    # black), as 120 did; 30 leave 47-53 (still black); 300 cost a minute more in CI and changed nothing checked.
    trained = train_black_background_lora(DEMO, tmp_path_factory.mktemp("lora-training"), steps=60)
    shutil.copy(trained, home.loras / "black-background.safetensors")
    return "black-background"


def border_brightness(image) -> float:
    pixels = np.asarray(image, dtype=np.float32)
    return float(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).mean())


def test_a_lora_trained_here_turns_backgrounds_black_at_weight_1_and_leaves_them_at_0(backend, black_background_lora):
    prompts = [
        "a large red circle in the centre on a white background",
        "a small blue square on the left on a yellow background",
        "a large green triangle at the bottom on an orange background",
    ]
    darker, black = [], []
    for prompt in prompts:
        plain = generate(backend, request(prompt, seed=5))
        at_zero = generate(backend, request(prompt, seed=5, loras=(LoraRef(black_background_lora, 0.0),)))
        at_one = generate(backend, request(prompt, seed=5, loras=(LoraRef(black_background_lora, 1.0),)))
        assert np.array_equal(np.asarray(plain), np.asarray(at_zero)), prompt
        assert not np.array_equal(np.asarray(plain), np.asarray(at_one)), prompt
        darker.append(border_brightness(at_one) < border_brightness(plain) - 20)
        black.append(measure(at_one).background == "black")
        back_to_plain = generate(backend, request(prompt, seed=5))
        assert np.array_equal(np.asarray(plain), np.asarray(back_to_plain)), "the LoRA must not stick"
    assert majority(darker), darker
    assert majority(black), black


def test_the_live_preview_shows_the_colours_of_the_final_picture(backend):
    # The demo VAE was trained so that SD 1.x's latent-to-RGB factors (the preview) give true colours.
    req = request("a large yellow square in the centre on a blue background", seed=4)
    steps = []
    backend.load(req)
    image = backend.generate(req, 0, steps.append, CancelToken()).images[0].convert("RGB")
    preview = steps[-1].preview
    assert preview.shape == (16, 16, 3)
    small = np.asarray(image.resize((16, 16), resample=Image.BOX), dtype=np.float32)
    assert np.abs(preview.astype(np.float32) - small).mean() < 40
