"""FLUX.3's layout captions: the user's boxes handed to its prompt rewriter, and the box table of its answer.

FLUX.3 learnt layouts from captions that cite each placed element by an id in angle brackets (`a fox <obj_1>`) and
end with a JSON table of the elements' boxes, `[y_min, x_min, y_max, x_max]` on a 0-1000 grid with the origin at the
top left. Its rewriter writes such a caption when its system prompt is a layout one (`t2i_bbox`, `i2i_bbox`) and the
request names the boxes the user fixed, "locked" (the wording below is the form it was trained on). Its answer is
then checked as Black Forest Labs' own code does: the locked rows stand as the user gave them (with the rewriter's
description of them, when it wrote one), a row the rewriter re-planned over a locked box under another id is renamed
to the locked id, and rows it added are kept only when well formed and cited in the caption.

Plain Python (no torch): the rewriter module calls it around one generation.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from desktop.engine.request import LayoutBox

GRID = 1000
# A row the rewriter wrote over a locked box under another id is that box when they overlap this much.
SAME_BOX_OVERLAP = 0.9
_ROW_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ORIGIN = re.compile(r"ref_image_\d+|target")
# The request of a layout caption, as the rewriter was trained on it.
LAYOUT_REQUEST = (
    "ORIGINAL PROMPT:\n{prompt}\n\n"
    "LOCKED BOUNDING-BOX ANNOTATIONS ([y_min, x_min, y_max, x_max] on a 0-1000 canvas, with (0, 0) at the top-left). "
    "This is an authoritative JSON list of dictionaries; preserve every supplied identity, provenance value, null, "
    "and coordinate exactly:\n{rows}"
)


def on_grid(box: LayoutBox) -> list[int]:
    """The box's edges on the rewriter's grid, in its order (top, left, bottom, right)."""
    return _grid_edges((box.left, box.top, box.right, box.bottom))


def _grid_edges(edges: Sequence[float]) -> list[int]:
    left, top, right, bottom = edges
    return [round(edge * GRID) for edge in (top, left, bottom, right)]


def locked_rows(boxes: Sequence[LayoutBox], edit: bool) -> list[dict[str, Any]]:
    """The user's boxes as rows of the table, numbered `obj_1`, `obj_2` ...: for text to image a box in the picture
    (`bbox`); for an edit an element the result gains there (`from` "target", no box in a reference picture) or one
    moved there from a reference picture (`from` "ref_image_N", counted from 0, with its box in that picture)."""
    rows = []
    for number, box in enumerate(boxes, 1):
        row_id, text = f"obj_{number}", box.description.strip()
        if not edit:
            rows.append({"id": row_id, "bbox": on_grid(box), "desc": text})
        elif box.reference and box.source is not None:
            rows.append({"id": row_id, "from": f"ref_image_{box.reference - 1}", "src_bbox": _grid_edges(box.source),
                         "tgt_bbox": on_grid(box), "desc": text})  # fmt: skip
        else:
            rows.append({"id": row_id, "from": "target", "src_bbox": None, "tgt_bbox": on_grid(box), "desc": text})
    return rows


def layout_request(prompt: str, rows: list[dict[str, Any]]) -> str:
    return LAYOUT_REQUEST.format(prompt=prompt.strip(), rows=json.dumps(rows, ensure_ascii=False))


def split_table(text: str) -> tuple[str, list[Any] | None]:
    """(the caption, its table): the table is the JSON list the text ends with, from the last `[` that starts one;
    None when it ends with none."""
    start = text.rfind("[")
    while start >= 0:
        try:
            table = json.loads(text[start:])
        except (ValueError, RecursionError):
            table = None
        if isinstance(table, list):
            return text[:start].rstrip(), table
        start = text.rfind("[", 0, start)
    return text.strip(), None


def grid_box(value: Any) -> list[Any] | None:
    """`value` as a box if it is one on the grid: four finite numbers, top-left before bottom-right, inside the grid,
    and not all within 0-1 (which would be fractions, not the grid); else None."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(edge, (int, float)) and not isinstance(edge, bool) and math.isfinite(edge)
               for edge in value):  # fmt: skip
        return None
    top, left, bottom, right = value
    if min(top, left) < 0 or bottom <= top or right <= left or max(bottom, right) > GRID or max(value) <= 1:
        return None
    return list(value)


def overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two grid boxes."""
    across = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    down = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    shared = across * down
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - shared
    return shared / union if union > 0 else 0.0


def _row_box(row: dict[str, Any]) -> Any:
    return row.get("bbox") or row.get("tgt_bbox") or row.get("src_bbox")


def _added_row(row: Any, caption: str) -> dict[str, Any] | None:
    """A row the rewriter added, cleaned, if it is well formed and the caption cites it; else None."""
    if not isinstance(row, dict):
        return None
    row_id, text = row.get("id"), row.get("desc")
    if not isinstance(row_id, str) or not _ROW_ID.fullmatch(row_id) or f"<{row_id}>" not in caption:
        return None
    if not isinstance(text, str) or not text.strip():
        return None
    box = grid_box(row.get("bbox"))
    if box is not None:
        return {"id": row_id, "bbox": box, "desc": text.strip()}
    origin, source, target = row.get("from"), row.get("src_bbox"), row.get("tgt_bbox")
    source_box = None if source is None else grid_box(source)
    target_box = None if target is None else grid_box(target)
    broken = (source is not None and source_box is None) or (target is not None and target_box is None)
    if broken or not isinstance(origin, str) or not _ORIGIN.fullmatch(origin) or source_box is target_box is None:
        return None
    if (origin == "target") == (source_box is not None):  # new content has no source box; moved content has one
        return None
    return {"id": row_id, "from": origin, "src_bbox": source_box, "tgt_bbox": target_box, "desc": text.strip()}


def reconciled(text: str, locked: list[dict[str, Any]]) -> str:
    """The rewriter's layout caption with the user's rows imposed (module docstring): the caption, a space, the
    table as JSON."""
    caption, table = split_table(text)
    rows = [row for row in table or [] if isinstance(row, dict)]
    written_ids = {row.get("id") for row in rows}
    locked_ids = {row["id"] for row in locked}
    renamed: dict[Any, str] = {}
    for lock in locked:
        if lock["id"] in written_ids:
            continue
        for row in rows:
            if row.get("id") in renamed or row.get("id") in locked_ids:
                continue
            box = grid_box(_row_box(row))
            if box is not None and overlap(box, _row_box(lock)) >= SAME_BOX_OVERLAP:
                renamed[row.get("id")] = lock["id"]
                break
    for row in rows:
        if row.get("id") in renamed:
            row["id"] = renamed[row["id"]]
    for old, new in renamed.items():
        caption = caption.replace(f"<{old}>", f"<{new}>")
    written = {row["id"]: row for row in rows if isinstance(row.get("id"), str)}
    out = []
    for lock in locked:
        described = written.get(lock["id"], {}).get("desc")
        text_of = described.strip() if isinstance(described, str) and described.strip() else lock["desc"]
        out.append({**lock, "desc": text_of})
    for row in table or []:
        added = _added_row(row, caption)
        if added is not None and all(added["id"] != kept["id"] for kept in out):
            out.append(added)
    return f"{caption} {json.dumps(out, ensure_ascii=False)}".strip()
