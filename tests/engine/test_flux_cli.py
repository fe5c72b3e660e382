"""Flux through `marble generate`: --distilled-cfg, --text-encoders, schnell's few-step defaults, and
Forge's `Distilled CFG Scale` written into the image and read back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from desktop.engine.backends.families import generation_arguments
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import model_family
from desktop.engine.metadata import read_image_metadata
from tests.e2e.test_cli import in_process
from tests.engine.test_model_families import bare_flux, bare_image, flux_request
from tests.support.tiny_dit import build_tiny_flux, config_folder, save_bfl_file, save_pipeline


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fluxcli")
    pipe = build_tiny_flux()
    return {
        "folder": save_pipeline(pipe, tmp / "flux"),
        "config": config_folder(pipe, tmp / "config"),
        "bfl": save_bfl_file(pipe, tmp / "transformer.safetensors"),
    }


def cli_args(model, flux, out, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", "a red circle on a blue background", "--seed", "42",
            "--width", "64", "--height", "64", "--device", "cpu", "--config", str(flux["config"]),
            "--out", str(out), "--no-preview", *extra]  # fmt: skip


def test_cli_distilled_cfg_and_text_encoders_reach_the_pipeline(flux, tmp_path):
    out = tmp_path / "fox.png"
    code, _, err = in_process(
        cli_args(flux["bfl"], flux, out, "--steps", "3", "--text-encoders", str(flux["folder"]),
                 "--distilled-cfg", "2.0", "--home", str(tmp_path / "home"))
    )  # fmt: skip
    assert code == 0, err
    request = read_image_metadata(out).request
    assert request.distilled_cfg_scale == 2.0 and request.text_encoders == str(flux["folder"].resolve())
    expected = bare_image(bare_flux(flux["folder"]), flux_request(flux["bfl"], flux, steps=3),
                          guidance_scale=2.0, max_sequence_length=512)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected)
    # Forge's key, after CFG scale, for Flux dev.
    assert ", CFG scale: 7.5, Distilled CFG Scale: 2.0, Seed: 42," in read_image_metadata(out).raw["parameters"]


def test_cli_text_encoders_must_be_a_folder(flux, tmp_path):
    code, _, err = in_process(
        cli_args(flux["bfl"], flux, tmp_path / "x.png", "--text-encoders", str(flux["bfl"]),
                 "--home", str(tmp_path / "home"))
    )  # fmt: skip
    assert code != 0 and "--text-encoders" in err and "is a file" in err and "Traceback" not in err


def test_schnell_gets_four_steps_and_no_guidance(tmp_path):
    folder = save_pipeline(build_tiny_flux("schnell"), tmp_path / "schnell")
    assert model_family(folder) == "flux-schnell"
    out = tmp_path / "s.png"
    code, _, err = in_process(
        ["generate", "--model", str(folder), "--prompt", "a fox", "--seed", "1", "--width", "64", "--height", "64",
         "--device", "cpu", "--out", str(out), "--no-preview", "--home", str(tmp_path / "home")]
    )  # fmt: skip
    assert code == 0, err
    request = read_image_metadata(out).request
    assert (request.steps, request.cfg_scale) == (4, 1.0)
    # Schnell has no guidance embedder: whatever distilled CFG is asked for, guidance 0 runs.
    info = detect_model(folder).dit
    arguments = generation_arguments(None, flux_request(folder, {"config": "x"}, distilled_cfg_scale=3.5), info)
    assert arguments["guidance_scale"] == 0.0 and arguments["max_sequence_length"] == 256
    assert "Distilled CFG Scale" not in read_image_metadata(out).raw["parameters"]


def test_flux_dev_folder_family(flux):
    assert model_family(flux["folder"]) == "flux-dev"


FORGE_FLUX = (
    "a lighthouse at dusk\n"
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 7, "
    "Size: 896x1152, Model hash: 0123456789, Model: flux1-dev-bnb-nf4-v2, Version: f2.0.1v1.10.1-previous-313"
)


def test_forge_distilled_cfg_is_read_into_the_request_and_the_recipe(tmp_path):
    from PIL import PngImagePlugin

    from desktop.engine.recipe import read_recipe

    path = tmp_path / "forge.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", FORGE_FLUX)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    metadata = read_image_metadata(path)
    assert metadata.format == "forge"
    assert (metadata.request.distilled_cfg_scale, metadata.request.cfg_scale) == (2.5, 1.0)
    recipe = read_recipe(metadata, [])
    assert recipe.fields["distilled_cfg_scale"] == 2.5
    assert not any("Distilled" in line for line in recipe.unsupported)
