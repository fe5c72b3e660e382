"""X/Y/Z plot: one parameter per axis, one image per combination, and a labelled grid of them all.

`parse_axis("steps=10-30(+10)")` reads an axis as A1111 writes it: comma-separated values (CSV quoting),
integer or decimal ranges `1-5`, `10-30 (+10)`, `1-2 [5]` (five values evenly spaced), and prompt
search/replace, whose first value is the text searched for. `plan_plot` turns a base request and up to
three axes into one request per cell (each a single image, all with the base seed unless an axis sets
it); `assemble_grid` lays the finished images out with their labels.

Pure Python and Pillow: no Qt, no torch.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw, ImageFont

from desktop.engine.backends.schedulers import SAMPLER_NAMES, canonical_sampler
from desktop.engine.errors import InvalidRequest
from desktop.engine.request import MAX_DRAWN_SEED, RANDOM_SEED, GenerationRequest, LoraRef

MAX_CELLS = 1000
LABEL_BAND = 32  # height of the row of X labels, and of each Z title
Y_LABEL_WIDTH = 160
Z_GAP = 16
FONT_SIZE = 14
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)

Apply = Callable[[GenerationRequest, object], GenerationRequest]


@dataclass(frozen=True)
class _Param:
    label: str
    kind: type  # int, float or str: how values are read and whether ranges are allowed
    apply: Apply


def _sampler(value: str) -> str:
    name = canonical_sampler(value)
    if name is None:
        raise InvalidRequest(f"Unknown sampler {value!r}. Known samplers: {', '.join(SAMPLER_NAMES)}.")
    return name


def _size(request: GenerationRequest, value: object) -> GenerationRequest:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(value))
    if match is None:
        raise InvalidRequest(f"Size {value!r} is not WIDTHxHEIGHT (e.g. 512x768).")
    return replace(request, width=int(match.group(1)), height=int(match.group(2)))


_PARAMS: dict[str, _Param] = {
    "seed": _Param("Seed", int, lambda r, v: replace(r, seed=v)),
    "steps": _Param("Steps", int, lambda r, v: replace(r, steps=v)),
    "cfg": _Param("CFG scale", float, lambda r, v: replace(r, cfg_scale=v)),
    "sampler": _Param("Sampler", str, lambda r, v: replace(r, sampler=_sampler(str(v)))),
    "model": _Param("Model", str, lambda r, v: replace(r, model=str(v))),
    "width": _Param("Width", int, lambda r, v: replace(r, width=v)),
    "height": _Param("Height", int, lambda r, v: replace(r, height=v)),
    "size": _Param("Size", str, _size),
    "clip_skip": _Param("Clip skip", int, lambda r, v: replace(r, clip_skip=v)),
    "strength": _Param("Denoising", float, lambda r, v: replace(r, strength=v)),
    # Forge's name for Flux dev's distilled guidance, and A1111's for the variation seed and its strength.
    "distilled_cfg": _Param("Distilled CFG Scale", float, lambda r, v: replace(r, distilled_cfg_scale=v)),
    "subseed": _Param("Var. seed", int, lambda r, v: replace(r, subseed=v)),
    "subseed_strength": _Param("Var. strength", float, lambda r, v: replace(r, subseed_strength=v)),
}
_ALIASES = {"cfg_scale": "cfg", "guidance": "cfg", "clipskip": "clip_skip", "denoising": "strength",
            "prompt_sr": "prompt", "sr": "prompt", "checkpoint": "model", "distilled_cfg_scale": "distilled_cfg",
            "distilled_guidance": "distilled_cfg", "var._seed": "subseed", "variation_seed": "subseed",
            "var._strength": "subseed_strength", "variation_strength": "subseed_strength"}
PARAM_NAMES = (*_PARAMS, "prompt", "lora:NAME")


@dataclass(frozen=True)
class Axis:
    """One axis: the parameter's name as typed, its label, and its values (already read)."""

    param: str
    label: str
    values: tuple[object, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f"{self.label}: {_show(value)}" for value in self.values)


@dataclass(frozen=True)
class PlotCell:
    index: tuple[int, int, int]  # x, y, z
    request: GenerationRequest


def parse_axis(text: str) -> Axis:
    """`PARAM=V1,V2,...` as one axis (see the module docstring for the value forms)."""
    name, sep, raw = text.partition("=")
    key = re.sub(r"[\s\-]+", "_", name.strip().casefold())
    if not sep or not key:
        raise InvalidRequest(f"Axis {text!r} is not PARAM=V1,V2,... (parameters: {', '.join(PARAM_NAMES)}).")
    values = _split_values(raw)
    if not values:
        raise InvalidRequest(f"Axis {name.strip()} has no values.")
    key = _ALIASES.get(key, key)
    if key == "prompt":
        # A1111's Prompt S/R: the first value is the text to find; it is also the first cell's value.
        return Axis("prompt", "Prompt", tuple(values))
    if key.startswith("lora:"):
        lora = name.strip()[len("lora:"):].strip()
        if not lora:
            raise InvalidRequest("A LoRA axis names its LoRA: lora:NAME=0,0.5,1.")
        return Axis(f"lora:{lora}", lora, tuple(_expand(values, float, name)))
    param = _PARAMS.get(key)
    if param is None:
        raise InvalidRequest(f"Unknown plot parameter {name.strip()!r}: use one of {', '.join(PARAM_NAMES)}.")
    if param.kind is str:
        return Axis(key, param.label, tuple(values))
    return Axis(key, param.label, tuple(_expand(values, param.kind, name)))


def _split_values(raw: str) -> list[str]:
    try:
        rows = list(csv.reader([raw], skipinitialspace=True))
    except csv.Error as error:
        raise InvalidRequest(f"Cannot read the axis values {raw!r}: {error}.") from None
    return [value.strip() for value in (rows[0] if rows else []) if value.strip()]


_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*([+-]?\s*\d+(?:\.\d*)?)\s*\)|\[\s*(\d+)\s*\])?\s*")


def _expand(values: Sequence[str], kind: type, name: str) -> list[object]:
    out: list[object] = []
    for value in values:
        match = _RANGE.fullmatch(value)
        if match is None:
            out.append(_number(value, kind, name))
            continue
        start, end = _number(match.group(1), kind, name), _number(match.group(2), kind, name)
        if match.group(4) is not None:  # [count]: evenly spaced, ends included
            count = int(match.group(4))
            if count < 1:
                raise InvalidRequest(f"{name.strip()}: a range needs at least one value, not [{count}].")
            spaced = [start + (end - start) * i / max(1, count - 1) for i in range(count)]
            out += [int(v) if kind is int else round(v, 6) for v in spaced]
            continue
        step = _number(match.group(3), kind, name) if match.group(3) is not None else 1
        if step == 0 or (end - start) * step < 0:
            raise InvalidRequest(f"{name.strip()}: the range {value!r} never reaches its end with step {step}.")
        count = math.floor((end - start) / step + 1e-9) + 1
        if count > MAX_CELLS:
            raise InvalidRequest(f"{name.strip()}: the range {value!r} has {count:,} values; the limit is {MAX_CELLS}.")
        out += [start + i * step if kind is int else round(start + i * step, 6) for i in range(count)]
    return out


def _number(text: str, kind: type, name: str) -> int | float:
    cleaned = text.replace(" ", "")
    try:
        return int(cleaned) if kind is int else float(cleaned)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"{name.strip()}: {text!r} is not {what}.") from None


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _apply(axis: Axis, request: GenerationRequest, value: object) -> GenerationRequest:
    if axis.param == "prompt":
        search = str(axis.values[0])
        if search not in request.prompt and search not in request.negative_prompt:
            raise InvalidRequest(f"Prompt S/R did not find {search!r} in the prompt or the negative prompt.")
        return replace(request, prompt=request.prompt.replace(search, str(value)),
                       negative_prompt=request.negative_prompt.replace(search, str(value)))
    if axis.param.startswith("lora:"):
        name = axis.param[len("lora:"):]
        others = tuple(ref for ref in request.loras if ref.name.casefold() != name.casefold())
        return replace(request, loras=(*others, LoraRef(name, float(value))))  # type: ignore[arg-type]
    return _PARAMS[axis.param].apply(request, value)


def plan_plot(base: GenerationRequest, x: Axis, y: Axis | None = None, z: Axis | None = None) -> list[PlotCell]:
    """One validated single-image request per cell, Z outermost and X innermost (A1111's order).

    `base` should carry a concrete seed: every cell then shares it unless an axis is the seed."""
    axes = [x, y, z]
    if base.subseed == RANDOM_SEED and any(axis is not None and axis.param == "subseed_strength" for axis in axes):
        # One variation seed for the whole grid (A1111 fixes it before plotting), not one drawn per cell.
        base = replace(base, subseed=random.SystemRandom().randint(0, MAX_DRAWN_SEED))
    counts = [len(axis.values) if axis else 1 for axis in axes]
    total = counts[0] * counts[1] * counts[2]
    if total > MAX_CELLS:
        raise InvalidRequest(f"This plot has {total:,} cells; the limit is {MAX_CELLS}. Use fewer values.")
    single = replace(base, batch_count=1, batch_size=1)
    cells = []
    for iz in range(counts[2]):
        for iy in range(counts[1]):
            for ix in range(counts[0]):
                request = single
                for axis, i in zip(axes, (ix, iy, iz), strict=True):
                    if axis is not None:
                        request = _apply(axis, request, axis.values[i])
                try:
                    request.validate()
                except InvalidRequest as error:
                    raise InvalidRequest(f"Plot cell {_cell_name(axes, (ix, iy, iz))}: {error}") from None
                cells.append(PlotCell((ix, iy, iz), request))
    return cells


def _cell_name(axes: Sequence[Axis | None], index: tuple[int, int, int]) -> str:
    return ", ".join(axis.labels[i] for axis, i in zip(axes, index, strict=True) if axis is not None)


# --------------------------------------------------------------------------------------------------
# The grid image


def grid_size(cell: tuple[int, int], x: Axis, y: Axis | None = None, z: Axis | None = None) -> tuple[int, int]:
    """The grid image's size: X labels above, Y labels left, one panel per Z value side by side."""
    width, height = cell
    nx, ny, nz = len(x.values), len(y.values) if y else 1, len(z.values) if z else 1
    panel_w = (Y_LABEL_WIDTH if y else 0) + nx * width
    panel_h = LABEL_BAND + ny * height
    return nz * panel_w + (nz - 1) * Z_GAP, (LABEL_BAND if z else 0) + panel_h


def assemble_grid(
    images: Mapping[tuple[int, int, int], Image.Image],
    x: Axis,
    y: Axis | None = None,
    z: Axis | None = None,
) -> Image.Image:
    """The labelled grid; a missing cell stays blank. Cells are drawn at the first image's size."""
    if not images:
        raise InvalidRequest("The plot made no images, so there is no grid to draw.")
    cell = next(iter(images.values())).size
    grid = Image.new("RGB", grid_size(cell, x, y, z), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = _font()
    left = Y_LABEL_WIDTH if y else 0
    top = LABEL_BAND if z else 0
    panel_w = left + len(x.values) * cell[0]
    for iz in range(len(z.values) if z else 1):
        origin = iz * (panel_w + Z_GAP)
        if z:
            _label(draw, font, z.labels[iz], (origin, 0, origin + panel_w, LABEL_BAND))
        for ix, text in enumerate(x.labels):
            cx = origin + left + ix * cell[0]
            _label(draw, font, text, (cx, top, cx + cell[0], top + LABEL_BAND))
        for iy in range(len(y.values) if y else 1):
            cy = top + LABEL_BAND + iy * cell[1]
            if y:
                _label(draw, font, y.labels[iy], (origin, cy, origin + left, cy + cell[1]))
            for ix in range(len(x.values)):
                image = images.get((ix, iy, iz))
                if image is not None:
                    fitted = image.convert("RGB")
                    if fitted.size != cell:
                        fitted = fitted.resize(cell)  # a width/height axis: scaled to the common cell
                    grid.paste(fitted, (origin + left + ix * cell[0], cy))
    return grid


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's own default font (bundled with Pillow): no font file of ours, nothing from the system.
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, font: object, text: str, box: tuple[int, int, int, int]) -> None:
    """`text` centred in `box`, shortened with an ellipsis when it does not fit."""
    width = box[2] - box[0] - 8
    shown = text
    while shown and draw.textlength(shown, font=font) > width:  # type: ignore[arg-type]
        shown = shown[:-2] + "…" if len(shown) > 1 else ""
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), shown, fill=INK, font=font, anchor="mm")  # type: ignore[arg-type]
