"""`marble plot` and `marble styles` / `generate --style`, run as a user types them (in process)."""

from __future__ import annotations

import itertools
import json

from PIL import Image

from desktop.engine.history.store import HistoryStore
from desktop.engine.metadata import parse_parameters, read_image_metadata
from desktop.engine.paths import AppPaths
from desktop.engine.plot import grid_size, parse_axis
from desktop.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from tests.support.cli_runner import run_cli


def common(model, home) -> list[str]:
    return ["--home", str(home), "--model", str(model), "--prompt", "a red circle", "--width", "64",
            "--height", "64", "--device", "cpu", "--no-preview", "--sampler", "Euler"]


def test_a_2x2x2_plot_makes_eight_recorded_images_and_a_labelled_grid(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    grid_file = tmp_path / "grid.png"
    code, out, err = run_cli("plot", "--x", "steps=1-2", "--y", "cfg=3,7", "--z", "prompt=red,blue",
                             "--grid", str(grid_file), "--seed", "9", "--json", *common(tiny_sd15_dir, home))
    assert code == EXIT_OK, err
    events = [json.loads(line) for line in out.splitlines()]
    paths = [event["path"] for event in events if event["event"] == "image"]
    assert len(paths) == 8
    made = set()
    for path in paths:
        parsed = parse_parameters(read_image_metadata(path).raw["parameters"])
        made.add((parsed.settings["Steps"], parsed.settings["CFG scale"], parsed.prompt, parsed.settings["Seed"]))
    assert made == {(steps, cfg, f"a {colour} circle", "9")
                    for steps, cfg, colour in itertools.product(("1", "2"), ("3.0", "7.0"), ("red", "blue"))}
    history = HistoryStore(AppPaths.for_root(home).history_db, AppPaths.for_root(home).outputs, tmp_path / "thumbs")
    try:
        assert sorted(record.path for record in history.query()) == sorted(paths)
    finally:
        history.close_all()
    assert events[-1] == {"event": "grid", "path": str(grid_file)}
    with Image.open(grid_file) as grid:
        axes = parse_axis("steps=1-2"), parse_axis("cfg=3,7"), parse_axis("prompt=red,blue")
        assert grid.size == grid_size((64, 64), *axes) == (2 * (160 + 2 * 64) + 16, 32 + 32 + 2 * 64)
        assert "steps=1,2" in grid.text["marble-plot"]
        # Every image sits in its own cell: X = steps, Y = CFG, Z = prompt (panels side by side).
        for path in paths:
            parsed = parse_parameters(read_image_metadata(path).raw["parameters"])
            ix = ("1", "2").index(parsed.settings["Steps"])
            iy = ("3.0", "7.0").index(parsed.settings["CFG scale"])
            iz = ("a red circle", "a blue circle").index(parsed.prompt)
            left, top = iz * (160 + 2 * 64 + 16) + 160 + ix * 64, 64 + iy * 64
            with Image.open(path) as image:
                cell = grid.convert("RGB").crop((left, top, left + 64, top + 64))
                assert cell.tobytes() == image.convert("RGB").tobytes()


def test_a_bad_axis_is_one_clear_line_and_makes_nothing(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    code, _out, err = run_cli("plot", "--x", "steps=1,x", *common(tiny_sd15_dir, home))
    assert code == EXIT_BAD_INPUT and "'x' is not a whole number" in err
    assert not list((home / "outputs").rglob("*.png"))
    code, _out, err = run_cli("generate", "--x", "steps=1", *common(tiny_sd15_dir, home))
    assert code == EXIT_BAD_INPUT and "unrecognized arguments: --x" in err


def test_styles_import_list_and_generate_with_styles(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    csv_file = tmp_path / "styles.csv"
    csv_file.write_text('name,prompt,negative_prompt\nFramed,"photo of {prompt}, framed","lowres, ugly"\n'
                        "Sharp,sharp focus,\n", encoding="utf-8")
    code, _out, err = run_cli("styles", "import", str(csv_file), "--home", str(home))
    assert code == EXIT_OK and "2 new" in err
    code, out, _err = run_cli("styles", "list", "--home", str(home))
    assert out.splitlines() == ["Framed\tphoto of {prompt}, framed\tlowres, ugly", "Sharp\tsharp focus\t"]
    code, out, err = run_cli("generate", "--style", "framed", "--style", "Sharp", "--steps", "1", "--seed", "3",
                             "--negative", "blurry", *common(tiny_sd15_dir, home))
    assert code == EXIT_OK, err
    parsed = parse_parameters(read_image_metadata(out.strip()).raw["parameters"])
    # A1111 writes the prompt as the styles made it.
    assert parsed.prompt == "photo of a red circle, framed, sharp focus"
    assert parsed.negative_prompt == "blurry, lowres, ugly"
    code, _out, err = run_cli("generate", "--style", "Gothic", *common(tiny_sd15_dir, home))
    assert code == EXIT_BAD_INPUT and "no style named 'Gothic'" in err
