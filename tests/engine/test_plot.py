"""X/Y/Z plot: axes as A1111 writes them, one request per cell, and the labelled grid."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from desktop.engine.errors import InvalidRequest
from desktop.engine.plot import (
    BACKGROUND,
    LABEL_BAND,
    Y_LABEL_WIDTH,
    Z_GAP,
    assemble_grid,
    grid_size,
    parse_axis,
    plan_plot,
)
from desktop.engine.request import GenerationRequest, LoraRef

BASE = GenerationRequest(prompt="a red cat", negative_prompt="red blur", model="m", seed=5, steps=20,
                         batch_count=3, batch_size=2, loras=(LoraRef("ink", 1.0),))


@pytest.mark.parametrize(("text", "values"), [
    ("steps=10-30(+10)", (10, 20, 30)),
    ("Steps = 10-30 (+10), 40", (10, 20, 30, 40)),
    ("steps=1-5", (1, 2, 3, 4, 5)),
    ("steps=30-10 (-10)", (30, 20, 10)),
    ("cfg=7-9 (+0.5)", (7.0, 7.5, 8.0, 8.5, 9.0)),
    ("CFG scale=1-2 [3]", (1.0, 1.5, 2.0)),
    ("seed=-1, 3", (-1, 3)),
    ("sampler=Euler a,\"DPM++ 2M Karras\"", ("Euler a", "DPM++ 2M Karras")),
    ("lora:ink=0-1 (+0.5)", (0.0, 0.5, 1.0)),
])
def test_axis_values_as_a1111_reads_them(text, values):
    assert parse_axis(text).values == values


@pytest.mark.parametrize(("text", "message"), [
    ("steps", "not PARAM=V1"),
    ("colour=red", "Unknown plot parameter 'colour'"),
    ("steps=ten", "'ten' is not a whole number"),
    ("steps=10-30 (-10)", "never reaches its end"),
    ("steps=", "no values"),
    ("lora:=1", "names its LoRA"),
])
def test_bad_axes_say_what_is_wrong(text, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_axis(text)


def test_a_2x2x2_plot_gives_eight_single_image_requests_in_a1111_order():
    cells = plan_plot(BASE, parse_axis("steps=10,20"), parse_axis("prompt=red,blue"), parse_axis("lora:ink=0,0.5"))
    assert [cell.index for cell in cells] == [(x, y, z) for z in range(2) for y in range(2) for x in range(2)]
    for cell in cells:
        x, y, z = cell.index
        request = cell.request
        assert request.steps == (10, 20)[x]
        colour = ("red", "blue")[y]
        # Prompt S/R: the first value is the text found, replaced in both prompts.
        assert request.prompt == f"a {colour} cat" and request.negative_prompt == f"{colour} blur"
        assert request.loras == (LoraRef("ink", (0.0, 0.5)[z]),)
        assert (request.seed, request.batch_count, request.batch_size) == (5, 1, 1)


def test_a_cell_that_cannot_run_is_named_before_anything_runs():
    with pytest.raises(InvalidRequest, match=r"Plot cell Steps: 999: steps 999 is out of range"):
        plan_plot(BASE, parse_axis("steps=10,999"))
    with pytest.raises(InvalidRequest, match="did not find 'dog'"):
        plan_plot(BASE, parse_axis("prompt=dog,cat"))


def test_the_grid_has_room_for_its_labels_and_draws_them():
    x, y, z = parse_axis("steps=1,2"), parse_axis("cfg=3,4"), parse_axis("seed=5,6")
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    images = {(ix, iy, iz): Image.new("RGB", (64, 48), colours[ix + 2 * iy])
              for ix in range(2) for iy in range(2) for iz in range(2)}
    grid = assemble_grid(images, x, y, z)
    panel = Y_LABEL_WIDTH + 2 * 64
    assert grid.size == grid_size((64, 48), x, y, z) == (2 * panel + Z_GAP, LABEL_BAND + LABEL_BAND + 2 * 48)
    # Each cell sits where its index says.
    top = 2 * LABEL_BAND
    for (ix, iy, iz), image in images.items():
        left = iz * (panel + Z_GAP) + Y_LABEL_WIDTH + ix * 64
        for dx, dy in ((0, 0), (32, 24), (63, 47)):  # corners too: not one pixel off
            assert grid.getpixel((left + dx, top + iy * 48 + dy)) == image.getpixel((0, 0))
    # Labels: ink in the Z title band, the X label band and the Y label column; none in the gap.
    def inked(box):
        region = grid.crop(box)
        return region.getcolors(region.width * region.height) != [(region.width * region.height, BACKGROUND)]
    assert inked((0, 0, panel, LABEL_BAND))
    assert inked((Y_LABEL_WIDTH, LABEL_BAND, panel, 2 * LABEL_BAND))
    assert inked((0, top, Y_LABEL_WIDTH, top + 48))
    assert not inked((panel, 0, panel + Z_GAP, grid.height))


def test_a_one_axis_grid_has_no_label_column():
    x = parse_axis("steps=1,2,3")
    grid = assemble_grid({(i, 0, 0): Image.new("RGB", (32, 32), (9, 9, 9)) for i in range(3)}, x)
    assert grid.size == (3 * 32, LABEL_BAND + 32)


def test_distilled_cfg_and_the_variation_seed_are_axes_by_forges_and_a1111s_names():
    cells = plan_plot(BASE, parse_axis("Distilled CFG Scale=2-4 (+1)"), parse_axis("Var. strength=0, 0.5"))
    assert [(c.request.distilled_cfg_scale, c.request.subseed_strength) for c in cells] == [
        (2.0, 0.0), (3.0, 0.0), (4.0, 0.0), (2.0, 0.5), (3.0, 0.5), (4.0, 0.5)]
    # One variation seed drawn for the whole grid (the base's is -1): each cell drawing its own would vary
    # the variation itself from cell to cell.
    assert len({c.request.subseed for c in cells}) == 1 and cells[0].request.subseed >= 0
    fixed = plan_plot(replace(BASE, subseed=9), parse_axis("variation strength=0.2,0.4"))
    assert [c.request.subseed for c in fixed] == [9, 9]
    assert [c.request.subseed for c in plan_plot(BASE, parse_axis("var. seed=1,2"))] == [1, 2]
