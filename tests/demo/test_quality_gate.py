"""The quality gate itself, on a tenth of its cases (its --quick runs a fifth), on the shipped demo model: the
script installer/demo_model/README.md's figures come from must keep running, score every target and draw its sheet."""

from __future__ import annotations

from PIL import Image

from desktop.engine.resources import Resources
from installer.demo_model.quality_gate import TARGETS, run_gate


def test_the_quick_gate_scores_every_target_and_draws_its_sheet(tmp_path):
    said: list[str] = []
    sheet = tmp_path / "sheet.png"
    figures = run_gate(Resources.default().demo_model, tmp_path / "work", sheet, 10, said.append)
    assert set(TARGETS) <= set(figures.scores)
    assert all(0.0 <= value <= 1.0 for value in figures.scores.values())
    # The shipped model's strongest figures (100% and 99-100% in the full gate): a gate that measured
    # nothing, or measured the wrong picture, would not reach them.
    assert figures.scores["txt2img position"] >= 0.8 and figures.scores["txt2img background"] >= 0.8
    assert figures.scores["inpaint outside unchanged"] == 1.0
    assert 0.0 < figures.seconds_per_image < 30.0
    with Image.open(sheet) as picture:
        assert picture.size == (10 * 128, 128)  # 10 held-out pictures at CFG 7, ten a row
    assert any(line.startswith("image to image:") for line in said)
