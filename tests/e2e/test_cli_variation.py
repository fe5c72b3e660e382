"""`marble generate --subseed N --subseed-strength F --seed-resize-from WxH --tiling`: run and recorded."""

from __future__ import annotations

from desktop.cli import EXIT_BAD_INPUT
from desktop.engine.metadata import read_image_metadata
from tests.e2e.test_cli import generate_args, in_process


def test_variation_and_tiling_options_reach_the_png(tmp_path, tiny_sd15_dir):
    target = tmp_path / "varied.png"
    extra = ("--subseed", "9", "--subseed-strength", "0.5", "--seed-resize-from", "96x64", "--tiling")
    code, _, err = in_process(generate_args(tiny_sd15_dir, *extra, "--out", str(target), "--home", str(tmp_path / "h")))
    assert code == 0, err
    found = read_image_metadata(target)
    request = found.request
    assert (request.subseed, request.subseed_strength) == (9, 0.5)
    assert (request.seed_resize_from_w, request.seed_resize_from_h, request.tiling) == (96, 64, True)
    assert found.settings["Variation seed"] == "9" and found.settings["Tiling"] == "True"


def test_a_bad_seed_resize_size_is_one_clear_line(tmp_path, tiny_sd15_dir):
    args = generate_args(tiny_sd15_dir, "--seed-resize-from", "wide", "--home", str(tmp_path / "h"))
    code, _, err = in_process(args)
    assert code == EXIT_BAD_INPUT
    assert "--seed-resize-from 'wide' is not a size" in err and "Traceback" not in err
