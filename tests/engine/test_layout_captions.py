"""FLUX.3's layout captions (backends/layout_captions.py): the user's boxes as the rewriter's locked rows and request,
and its answer's table checked as Black Forest Labs' code checks it (diffusers' port of it is the reference here);
the request's layout boxes and the command line's --layout-box."""

from __future__ import annotations

import json

import pytest

from desktop.engine.backends.layout_captions import (
    grid_box,
    layout_request,
    locked_rows,
    on_grid,
    reconciled,
    split_table,
)
from desktop.engine.errors import InvalidRequest
from desktop.engine.request import GenerationRequest, LayoutBox

FOX = LayoutBox("a red fox sitting", 0.1, 0.2, 0.5, 0.9)
MOON = LayoutBox("  a full moon ", 0.7, 0.05, 0.9, 0.25)
# The cup reference picture 2 shows at its bottom left, moved to the right and made larger.
CUP = LayoutBox("the red cup", 0.55, 0.4, 0.95, 0.95, reference=2, source=(0.05, 0.6, 0.3, 0.9))


def their_boxes(boxes, edit=False):
    """The boxes as diffusers' FLUX.3 blocks take them from a user: 0-1, [y_min, x_min, y_max, x_max]."""

    def theirs(box):
        if not edit:
            return {"desc": box.description, "bbox": [box.top, box.left, box.bottom, box.right]}
        row = {"desc": box.description, "tgt_bbox": [box.top, box.left, box.bottom, box.right], "from": "target"}
        if box.reference:
            left, top, right, bottom = box.source
            row |= {"from": f"ref_image_{box.reference - 1}", "src_bbox": [top, left, bottom, right]}
        return row

    return [theirs(box) for box in boxes]


def test_the_users_boxes_are_the_rows_and_request_the_rewriter_was_trained_on():
    from diffusers.modular_pipelines.flux3 import prompt_upsampler as theirs

    assert on_grid(FOX) == [200, 100, 900, 500]  # top, left, bottom, right on the 0-1000 grid
    assert on_grid(LayoutBox("x", 0.1234, 0.6667, 0.4444, 0.9999)) == [667, 123, 1000, 444]  # to the nearest
    rows = locked_rows([FOX, MOON], edit=False)
    assert rows == [{"id": "obj_1", "bbox": [200, 100, 900, 500], "desc": "a red fox sitting"},
                    {"id": "obj_2", "bbox": [50, 700, 250, 900], "desc": "a full moon"}]  # fmt: skip
    expected = theirs.boxes_to_canvas([{**box, "desc": box["desc"].strip()} for box in their_boxes([FOX, MOON])])
    assert rows == expected
    edit_rows = locked_rows([FOX], edit=True)
    assert edit_rows == theirs.boxes_to_canvas(their_boxes([FOX], edit=True))
    assert edit_rows[0]["src_bbox"] is None and edit_rows[0]["from"] == "target"
    # An element moved from reference picture 2 (ref_image_1, counted from 0), its box there and in the result.
    moved = locked_rows([FOX, CUP], edit=True)
    assert moved[1] == {"id": "obj_2", "from": "ref_image_1", "src_bbox": [600, 50, 900, 300],
                        "tgt_bbox": [400, 550, 950, 950], "desc": "the red cup"}  # fmt: skip
    assert moved == theirs.boxes_to_canvas(their_boxes([FOX, CUP], edit=True))
    for table in (rows, edit_rows):
        assert layout_request("  a fox under the moon ", table) == theirs.format_layout_request("a fox under the moon",
                                                                                               table)  # fmt: skip
    assert layout_request("x", rows).endswith(json.dumps(rows))


ANSWERS = [
    # the rewriter kept the locked id and described it; it added a cited row and an uncited one
    'A photo of a fox <obj_1> and a tree <tree_1> by a rock. [{"id": "obj_1", "bbox": [210, 90, 880, 520], "desc": '
    '"A fox with amber fur."}, {"id": "tree_1", "bbox": [0, 0, 600, 300], "desc": " An oak. "}, {"id": "rock_1", '
    '"bbox": [700, 600, 900, 800], "desc": "A rock."}]',
    # it re-planned the fox's box under its own id: renamed to the locked id, in the caption too
    'A fox <fox_1> below a moon <obj_2>. [{"id": "fox_1", "bbox": [200, 100, 900, 498], "desc": "A fox, sitting."}]',
    # a box overlapping the locked one too little (0.85) to be it: kept as an added row under its own id
    'A fox <fox_1>. [{"id": "fox_1", "bbox": [200, 100, 900, 440], "desc": "A fox."}]',
    # the locked id kept, and another row over the same box: both stand, neither renamed
    'A fox <obj_1> and a fox <fox_2>. [{"id": "obj_1", "bbox": [200, 100, 900, 500], "desc": "A fox."}, '
    '{"id": "fox_2", "bbox": [200, 100, 900, 499], "desc": "Another fox."}]',
    # rows that are not well formed are dropped
    'Things <a_1> <b_1> <c_1> <d_1> <1bad> <e_1>. [{"id": "a_1", "bbox": [0, 0, 0.5, 0.5], "desc": "tiny"}, '
    '{"id": "b_1", "bbox": [500, 0, 100, 300], "desc": "inside out"}, {"id": "c_1", "bbox": [0, 0, 100, 1001], '
    '"desc": "off the grid"}, {"id": "d_1", "bbox": [0, 0, 100, 100], "desc": "  "}, {"id": "1bad", "bbox": '
    '[0, 0, 100, 100], "desc": "bad id"}, {"id": "e_1", "bbox": [0, 0, true, 100], "desc": "a flag"}, 7, "text"]',
    # an edit's rows: added content, moved content, a removed one; and broken forms of them
    'Add a hat <hat_1>, move the cup <cup_1>, remove the van <van_1>, <x_1> <y_1> <z_1> <w_1> <v_1>. [{"id": "hat_1", '
    '"from": '
    '"target", "src_bbox": null, "tgt_bbox": [10, 10, 200, 200], "desc": "A hat."}, {"id": "cup_1", "from": '
    '"ref_image_0", "src_bbox": [300, 300, 400, 400], "tgt_bbox": [500, 500, 600, 600], "desc": "A cup."}, '
    '{"id": "van_1", "from": "ref_image_1", "src_bbox": [0, 0, 300, 900], "tgt_bbox": null, "desc": "A van."}, '
    '{"id": "x_1", "from": "target", "src_bbox": [0, 0, 100, 100], "tgt_bbox": [0, 0, 100, 100], "desc": "x"}, '
    '{"id": "y_1", "from": "elsewhere", "src_bbox": [0, 0, 100, 100], "desc": "y"}, {"id": "z_1", "from": '
    '"ref_image_0", "src_bbox": [0, 0, 100], "tgt_bbox": [0, 0, 100, 100], "desc": "z"}, {"id": "w_1", "from": '
    '"target", "src_bbox": [0, 0, 100], "tgt_bbox": [0, 0, 100, 100], "desc": "w"}, {"id": "v_1", "from": "target", '
    '"src_bbox": null, "tgt_bbox": null, "desc": "v"}]',
    # no table at all, brackets in the caption, a table that is not the last thing written
    "A fox [in watercolour] under a moon.",
    'A fox. [{"id": "obj_1", "bbox": [1, 2, 3, 4], "desc": "x"}] and more words',
    'A fox [1, 2 [{"id": "tree_1", "bbox": [0, 0, 100, 100], "desc": "An oak."}]',
    "",
    # the locked rows described blank (the user's words stay) and with spaces around (trimmed)
    'A fox <obj_1> under a moon <obj_2>. [{"id": "obj_1", "bbox": [0, 0, 9, 9], "desc": "  "}, {"id": "obj_2", '
    '"bbox": [0, 0, 9, 9], "desc": " A moon, full. "}]',
]


@pytest.mark.parametrize("edit", [False, True])
@pytest.mark.parametrize("answer", ANSWERS)
def test_the_rewriters_answer_is_checked_as_black_forest_labs_check_it(answer, edit):
    from diffusers.modular_pipelines.flux3 import prompt_upsampler as theirs

    locked = locked_rows([FOX, MOON], edit)
    assert reconciled(answer, locked) == theirs.reconcile_boxes(answer, locked).strip()
    if edit:  # with an element moved from a reference picture among the locked rows
        locked = locked_rows([FOX, CUP, MOON], edit)
        assert reconciled(answer, locked) == theirs.reconcile_boxes(answer, locked).strip()


def test_what_the_check_keeps():
    locked = locked_rows([FOX, MOON], edit=False)
    caption, table = split_table(reconciled(ANSWERS[0], locked))
    assert caption == "A photo of a fox <obj_1> and a tree <tree_1> by a rock."
    assert [row["id"] for row in table] == ["obj_1", "obj_2", "tree_1"]  # the uncited rock is dropped
    assert table[2] == {"id": "tree_1", "bbox": [0, 0, 600, 300], "desc": "An oak."}
    assert table[0] == {"id": "obj_1", "bbox": [200, 100, 900, 500], "desc": "A fox with amber fur."}  # box locked
    assert table[1]["desc"] == "a full moon"  # not described by the rewriter: the user's words
    caption, table = split_table(reconciled(ANSWERS[1], locked))
    assert caption == "A fox <obj_1> below a moon <obj_2>."
    assert table[0] == {"id": "obj_1", "bbox": [200, 100, 900, 500], "desc": "A fox, sitting."}
    assert [row["id"] for row in split_table(reconciled(ANSWERS[2], locked))[1]] == ["obj_1", "obj_2", "fox_1"]
    caption, table = split_table(reconciled(ANSWERS[3], locked))
    assert caption == "A fox <obj_1> and a fox <fox_2>." and [row["id"] for row in table] == ["obj_1", "obj_2", "fox_2"]
    assert [row["id"] for row in split_table(reconciled(ANSWERS[4], locked))[1]] == ["obj_1", "obj_2"]
    edit = locked_rows([FOX], edit=True)
    assert [row["id"] for row in split_table(reconciled(ANSWERS[5], edit))[1]] == ["obj_1", "hat_1", "cup_1", "van_1"]
    assert reconciled("A fox [in watercolour].", edit) == f"A fox [in watercolour]. {json.dumps(edit)}"
    table = split_table(reconciled(ANSWERS[-1], locked))[1]
    assert [(row["desc"], row["bbox"]) for row in table] == [("a red fox sitting", [200, 100, 900, 500]),
                                                            ("A moon, full.", [50, 700, 250, 900])]  # fmt: skip
    # Two user boxes over nearly the same place: the rewriter's one row over them is the first's, renamed once.
    twins = locked_rows([FOX, LayoutBox("a second fox", 0.1, 0.2, 0.5, 0.89)], edit=False)
    answer = 'A fox <fox_1>. [{"id": "fox_1", "bbox": [200, 100, 900, 498], "desc": "A fox."}]'
    caption, table = split_table(reconciled(answer, twins))
    assert caption == "A fox <obj_1>." and [row["desc"] for row in table] == ["A fox.", "a second fox"]
    from diffusers.modular_pipelines.flux3 import prompt_upsampler as theirs

    assert reconciled(answer, twins) == theirs.reconcile_boxes(answer, twins)
    assert grid_box([0, 0, 1, 1]) is None and grid_box([0, 0, 2, 1.5]) == [0, 0, 2, 1.5]
    assert grid_box([0, 0, 1000, 1000]) == [0, 0, 1000, 1000]  # the whole grid
    assert grid_box([10, 0, 10, 100]) is None and grid_box([0, 10, 100, 10]) is None  # no height, no width
    assert grid_box([0, 0, float("nan"), 10]) is None and grid_box((5, 5, 10, 10)) == [5, 5, 10, 10]


def test_layout_boxes_are_checked_and_saved_with_the_request():
    def request(boxes, rewrite=True):
        return GenerationRequest(prompt="a fox", model="m", rewrite_prompt=rewrite, layout_boxes=boxes)

    made = request((FOX, MOON)).validate()
    assert GenerationRequest.from_dict(json.loads(json.dumps(made.to_dict()))) == made
    # The caption uses the boxes up: what the batch runs and the images record asks for neither again.
    rewritten = made.with_rewritten_prompt("A fox <obj_1>. [...]").validate()
    assert (rewritten.prompt, rewritten.rewrite_prompt, rewritten.layout_boxes) == ("A fox <obj_1>. [...]", False, ())
    assert rewritten.model == made.model
    assert GenerationRequest.from_dict(request(()).to_dict()).layout_boxes == ()
    with pytest.raises(InvalidRequest, match="turn rewriting on"):
        request((FOX,), rewrite=False).validate()
    bad = [
        ("needs a description", LayoutBox(" ", 0, 0, 1, 1)),
        ("NUL", LayoutBox("a\x00b", 0, 0, 1, 1)),
        ("fractions of the canvas", LayoutBox("x", -0.1, 0, 0.5, 0.5)),
        ("fractions of the canvas from 0 to 1", LayoutBox("x", 0, 0, 1.2, 0.5)),
        ("fractions", LayoutBox("x", 0, 0, float("nan"), 0.5)),
        ("fractions", LayoutBox("x", False, 0, True, 0.5)),
        ("inside out", LayoutBox("x", 0.5, 0, 0.4, 0.5)),
        ("at least 1%", LayoutBox("x", 0.5, 0.5, 0.505, 0.9)),
        ("empty or inside out", LayoutBox("x", 0.2, 0.5, 0.6, 0.5)),
    ]
    for message, box in bad:
        with pytest.raises(InvalidRequest, match=message):
            request((FOX, box)).validate()
    with pytest.raises(InvalidRequest, match="Layout box 2's description is 2001"):
        request((FOX, LayoutBox("x" * 2001, 0, 0, 1, 1))).validate()
    with pytest.raises(InvalidRequest, match="at most 24"):
        request((FOX,) * 25).validate()
    request((FOX,) * 24).validate()
    with pytest.raises(InvalidRequest, match="list of boxes"):
        request(({"description": "x"},)).validate()


def test_a_box_moving_an_element_from_a_reference_picture():
    def request(boxes, references=("a.png", "b.png")):
        return GenerationRequest(prompt="put the cup on the table", model="m", rewrite_prompt=True,
                                 layout_boxes=boxes, reference_images=references)  # fmt: skip

    made = request((FOX, CUP)).validate()
    saved = GenerationRequest.from_dict(json.loads(json.dumps(made.to_dict())))
    assert saved == made and saved.layout_boxes[1].source == (0.05, 0.6, 0.3, 0.9)
    # A box saved before moves existed (no reference, no source) reads as new content.
    old = {"description": "x", "left": 0, "top": 0, "right": 1, "bottom": 1}
    assert GenerationRequest.from_dict({"prompt": "a", "model": "m", "layout_boxes": [old]}).layout_boxes == (
        LayoutBox("x", 0, 0, 1, 1),)
    with pytest.raises(InvalidRequest, match="from reference 2, but the job has 1 reference picture\\."):
        request((CUP,), references=("a.png",)).validate()
    with pytest.raises(InvalidRequest, match="reference 2, but the job has 0 reference pictures"):
        request((CUP,), references=()).validate()
    request((LayoutBox("the cup", 0.1, 0.1, 0.5, 0.5, reference=1, source=(0, 0, 1, 1)),), ("a.png",)).validate()
    bad = [
        ("needs both the picture's number and the element's box", LayoutBox("x", 0, 0, 1, 1, reference=1)),
        ("needs both", LayoutBox("x", 0, 0, 1, 1, source=(0, 0, 1, 1))),
        ("a picture's number \\(from 1\\)", LayoutBox("x", 0, 0, 1, 1, reference=-1, source=(0, 0, 1, 1))),
        ("a picture's number", LayoutBox("x", 0, 0, 1, 1, reference=True, source=(0, 0, 1, 1))),
        ("a picture's number", LayoutBox("x", 0, 0, 1, 1, reference=1.0, source=(0, 0, 1, 1))),
        ("four edges", LayoutBox("x", 0, 0, 1, 1, reference=1, source=(0, 0, 1))),
        ("four edges", LayoutBox("x", 0, 0, 1, 1, reference=1, source=[0, 0, 1, 1])),
        ("box in reference 1: its edges must be fractions of reference 1",
         LayoutBox("x", 0, 0, 1, 1, reference=1, source=(0, 0, 1.5, 1))),
        ("box in reference 2 is empty or inside out.*1% of reference 2",
         LayoutBox("x", 0, 0, 1, 1, reference=2, source=(0.5, 0, 0.4, 1))),
        ("box in reference 1 is empty", LayoutBox("x", 0, 0, 1, 1, reference=1, source=(0, 0.5, 1, 0.505))),
    ]
    for message, box in bad:
        with pytest.raises(InvalidRequest, match=message):
            request((FOX, box)).validate()
    with pytest.raises(InvalidRequest, match="unreadable layout box"):
        GenerationRequest.from_dict({"prompt": "a", "model": "m", "layout_boxes": [{"description": "x"}]})


def test_the_command_lines_layout_boxes():
    from desktop.cli import parse_layout_box_args

    assert parse_layout_box_args(["0.1,0.2,0.5,0.9: a red fox sitting", "0.7,0.05,0.9,0.25:a moon: full"]) == (
        LayoutBox("a red fox sitting", 0.1, 0.2, 0.5, 0.9), LayoutBox("a moon: full", 0.7, 0.05, 0.9, 0.25))
    for value in ("0.1,0.2,0.5:a fox", "a fox", "0.1,0.2,0.5,x:a fox", "0.1 0.2 0.5 0.9:a fox"):
        with pytest.raises(InvalidRequest, match="LEFT,TOP,RIGHT,BOTTOM:TEXT"):
            parse_layout_box_args([value])


def test_the_command_lines_layout_moves():
    from desktop.cli import parse_layout_move_args

    assert parse_layout_move_args(["2:0.05,0.6,0.3,0.9:0.55,0.4,0.95,0.95: the red cup", "1:0,0,1,1:0,0,.5,.5:a: b",
                                   "1:0,0,1,1:0,0,1,1:"]) == (  # fmt: skip
        CUP, LayoutBox("a: b", 0, 0, 0.5, 0.5, reference=1, source=(0, 0, 1, 1)),
        LayoutBox("", 0, 0, 1, 1, reference=1, source=(0, 0, 1, 1)))
    for value in ("1:0,0,1,1", "x:0,0,1,1:0,0,1,1:a cup", "1:0,0,1:0,0,1,1:a cup", "1:0,0,1,1:0,0,1:a cup",
                  "1.5:0,0,1,1:0,0,1,1:a cup", "0,0,1,1:0,0,1,1:a cup"):  # fmt: skip
        with pytest.raises(InvalidRequest, match="REF:FROM_EDGES:TO_EDGES:TEXT"):
            parse_layout_move_args([value])
