"""Control units in PNG metadata (as A1111's ControlNet extension writes them), read back into recipes,
and `marble generate --control` end to end."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from PIL import Image, ImageDraw

from desktop.cli import parse_control_args
from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.control import legacy_hash
from desktop.engine.errors import InvalidRequest
from desktop.engine.metadata import (
    format_parameters,
    interpret_chunks,
    parse_control_units,
    parse_parameters,
    read_image_metadata,
    read_text_chunks,
)
from desktop.engine.recipe import read_recipe
from desktop.engine.request import ControlUnit, GenerationRequest
from tests.support import tiny_controls, tiny_models
from tests.support.cli_runner import run_cli

A1111_LINE = (
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, Resize Mode: Crop and '
    "Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0.1, Guidance "
    'End: 0.9, Pixel Perfect: False, Control Mode: My prompt is more important"'
)


@dataclass(frozen=True)
class Entry:
    name: str
    sha256: str | None = None
    autov2: str | None = None
    autov3: str | None = None


def test_units_are_written_as_the_extension_writes_them():
    units = (ControlUnit("canny-model", "/x.png", 0.8, 0.1, 0.9, "prompt", "canny"), ControlUnit("t2i", "/y.png"))
    request = GenerationRequest(prompt="p", model="m", width=512, height=768, controls=units)
    text = format_parameters(request, 1, None, "1", controls=(ControlHash("canny-model", "d14c016b"),))
    assert (
        'ControlNet 0: "Module: canny, Model: canny-model [d14c016b], Weight: 0.8, Resize Mode: Crop and Resize, '
        "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.1, Guidance End: 0.9, "
        'Pixel Perfect: False, Control Mode: My prompt is more important"'
    ) in text
    assert 'ControlNet 1: "Module: none, Model: t2i, Weight: 1.0,' in text
    # Read back: the same units (less the image, which the text does not hold).
    parsed = parse_control_units(parse_parameters(text).settings)
    assert [p.unit for p in parsed] == [
        ControlUnit("canny-model", "", 0.8, 0.1, 0.9, "prompt", "none", 100.0, 200.0),
        ControlUnit("t2i", "", 1.0, 0.0, 1.0, "balanced", "none", -1.0, -1.0),
    ]
    assert [p.module for p in parsed] == ["canny", "none"] and parsed[0].model_hash == "d14c016b"
    assert "ControlNet" not in format_parameters(GenerationRequest(prompt="p", model="m"), 1, None, "1")


def test_an_a1111_png_gives_control_units_matched_by_name_and_warns_about_the_rest():
    text = f"a house\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, {A1111_LINE}, " + (
        'ControlNet 1: "Module: depth_leres, Model: control_depth [12345678], Weight: 1, Guidance Start: 0, '
        'Guidance End: 1, Control Mode: Balanced"'
    )
    metadata = interpret_chunks({"parameters": text})
    recipe = read_recipe(metadata, controls=[Entry("control_v11p_sd15_canny")])
    (unit,) = recipe.fields["controls"]
    assert unit == ControlUnit("control_v11p_sd15_canny", "", 0.8, 0.1, 0.9, "prompt", "canny", 100.0, 200.0)
    assert any("'control_depth' (hash 12345678) is not in the library" in w for w in recipe.warnings)
    assert any("does not hold its control image" in w for w in recipe.warnings)
    assert any("depth_leres" in u for u in recipe.unsupported)
    assert not any(u.startswith("ControlNet 0") for u in recipe.unsupported)
    # Unsaid means none.
    plain = read_recipe(interpret_chunks({"parameters": "x\nSteps: 20, Seed: 1, Size: 512x512"}))
    assert plain.fields["controls"] == ()


def test_a_built_in_unit_comes_back_from_its_png_without_a_library_file():
    # A Flux.1 Canny / Depth dev image: its unit's model is the model's own input, which no library holds.
    unit = ControlUnit("built-in", "/edges.png", preprocessor="canny")
    request = GenerationRequest(prompt="p", model="flux1-canny-dev", width=512, height=512, controls=(unit,))
    text = format_parameters(request, 1, None, "1", controls=(ControlHash("built-in", ""),))
    assert 'ControlNet 0: "Module: canny, Model: built-in, Weight: 1.0,' in text
    recipe = read_recipe(interpret_chunks({"parameters": text}), controls=[Entry("edges")])
    assert recipe.fields["controls"] == (ControlUnit("built-in", "", preprocessor="canny", threshold_a=100.0,
                                                     threshold_b=200.0),)  # fmt: skip
    assert not any("The control model" in w for w in recipe.warnings)  # (the model itself is not in it)
    assert any("Control unit 0 (built-in): the PNG does not hold its control image" in w for w in recipe.warnings)


def test_generate_with_control_units_on_the_command_line(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    pipe = tiny_models.build_tiny_sd15()
    controlnet = tiny_controls.build_tiny_controlnet(pipe.unet, seed=3)
    model_file = tiny_controls.save_controlnet(controlnet, tmp_path / "edges.safetensors", "ldm")
    assert run_cli("controls", "import", str(model_file), "--home", str(home))[0] == 0
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="white")
    image.save(tmp_path / "square.png")
    out = tmp_path / "out.png"
    args = ("generate", "--model", str(tiny_sd15_dir), "--prompt", "a cat", "--steps", "2", "--seed", "3",
            "--width", "64", "--height", "64", "--device", "cpu", "--no-preview", "--home", str(home))  # fmt: skip
    code, _, err = run_cli(*args, "--control", f"edges:{tmp_path / 'square.png'}:0.7:0:0.5",
                           "--control-preprocessor", "canny", "--out", str(out))  # fmt: skip
    assert code == 0, err
    parameters = read_text_chunks(out)["parameters"]
    digest = legacy_hash(home / "controlnet" / "edges.safetensors")
    data = (home / "controlnet" / "edges.safetensors").read_bytes()
    assert digest == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]  # A1111's old model hash
    assert f'ControlNet 0: "Module: canny, Model: edges [{digest}], Weight: 0.7,' in parameters
    assert "Guidance Start: 0.0, Guidance End: 0.5," in parameters
    # Our own chunk keeps the unit exactly, with its image, so the recipe reproduces the job.
    saved = read_image_metadata(out).request
    assert saved.controls == (ControlUnit("edges", str(tmp_path / "square.png"), 0.7, 0.0, 0.5, "balanced", "canny"),)
    recipe = read_recipe(read_image_metadata(out), controls=[Entry("edges")])
    assert recipe.fields["controls"] == saved.controls
    assert not [w for w in recipe.warnings if "control" in w]
    code, _, err = run_cli(*args, "--control", f"missing:{tmp_path / 'square.png'}", "--out", str(tmp_path / "x.png"))
    assert code != 0 and "No control model named 'missing'" in err and "Traceback" not in err


def test_control_arguments_parse_from_the_end():
    (unit,) = parse_control_args(["m:/a:b/c.png:0.5:0.2:0.8"], ["tile"], ["control"])
    assert (unit.image, unit.weight, unit.start, unit.end, unit.preprocessor, unit.mode) == (
        "/a:b/c.png", 0.5, 0.2, 0.8, "tile", "control"
    )
    assert parse_control_args(["m:/c.png:0.3"], [], [])[0].weight == 0.3
    (unit,) = parse_control_args(["m:1:2:3"], [], [])  # the path keeps at least its last part
    assert unit.image.endswith("1:2") and unit.weight == 3.0
    with pytest.raises(InvalidRequest, match="once per --control"):
        parse_control_args(["a:/x.png", "b:/y.png", "c:/z.png"], ["canny", "tile"], [])
    with pytest.raises(InvalidRequest, match="NAME:IMAGE"):
        parse_control_args(["justaname"], [], [])


def test_control_entries_are_clamped_ordered_and_none_is_no_unit():
    # Found by a mutation sweep of metadata.py: weights up to 2, the end never before the start, entries in their
    # numbers' order whatever the line's, the hash compared folded, and a unit whose model is "None" skipped.
    settings = {
        "ControlNet 2": "Module: canny, Model: edges [d14c016b], Weight: 9, Guidance Start: -1, Guidance End: 2",
        "ControlNet 0": "Module: canny, Model: None, Weight: 1.0",
        "ControlNet 1": "Module: depth, Model: depth-model [ABCD1234], Weight: 1.5, Guidance Start: 0.6, "
                        "Guidance End: 0.3",
    }  # fmt: skip
    units = parse_control_units(settings)
    assert [(parsed.index, parsed.unit.model, parsed.model_hash) for parsed in units] == [
        (1, "depth-model", "abcd1234"), (2, "edges", "d14c016b")]  # fmt: skip
    assert (units[0].unit.weight, units[0].unit.start, units[0].unit.end) == (1.5, 0.6, 0.6)
    assert (units[1].unit.weight, units[1].unit.start, units[1].unit.end) == (2.0, 0.0, 1.0)
