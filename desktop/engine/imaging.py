"""Pure image geometry for image-to-image, inpainting and outpainting: Pillow and numpy only.

The diffusers backend asks this module how to turn (source, mask, request) into what the pipeline
sees (`plan_edit`), and how to turn what the pipeline made back into a result the size of the source
(`finish_edit`). Keeping it free of torch makes every rule here testable in milliseconds:

- pixels where the blurred mask is 0 are copied from the source, byte for byte (a composite, so the
  VAE round trip never leaks outside the mask);
- "whole" works at the source size made a multiple of 8 (resize or pad, the user's choice);
- "masked" crops the blurred mask's bounding box plus padding, grown to the request's aspect ratio,
  generates it at width x height, and pastes it back through the blurred mask.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFilter

from desktop.engine.errors import InvalidRequest
from desktop.engine.request import MAX_SIDE, MIN_SIDE, GenerationRequest
from desktop.engine.safe_files import open_regular
from desktop.engine.untrusted_image import open_untrusted, sniff_image

# How far the inpainting mask reaches into the old image when outpainting, so the seam is repainted.
OUTPAINT_SEAM = 16
MAX_OUTPAINT = 2048

Box = tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive)


# ------------------------------------------------------------------------------------ safe loading


def open_image(source: str | Path | bytes, label: str | None = None) -> Image.Image:
    """Decode an untrusted PNG/JPEG/WebP file fully into memory; every failure is an InvalidRequest."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), label or "The image data")
    path = Path(source)
    label = label or path.name
    # Only a regular file: a FIFO or a link to a device would hang or never end.
    stream = open_regular(path, label=label, error=InvalidRequest)
    assert stream is not None
    with stream:
        return _decode(stream, label)


def _decode(stream: BinaryIO, label: str) -> Image.Image:
    with open_untrusted(stream, label) as (image, _format):
        image.load()
        return image.copy()


def load_source(path: str | Path, label: str = "The source image") -> Image.Image:
    """The source image as RGB; transparency is flattened onto white, as an editor shows it. `label` names
    it in errors ("The reference image" for Qwen-Image-Edit Plus's others)."""
    return on_white(open_image(path, f"{label} {Path(path).name}"))


def on_white(image: Image.Image) -> Image.Image:
    """`image` as RGB, its transparency (an alpha channel or a palette's transparent colour) flattened onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def load_mask(path: str | Path, size: tuple[int, int]) -> Image.Image:
    """A grayscale mask (white = repaint) the size of the source; an alpha-only mask uses its alpha."""
    image = open_image(path, f"The mask {Path(path).name}")
    if image.mode in ("RGBA", "LA") and not image.getchannel("A").getextrema() == (255, 255):
        mask = image.getchannel("A")
    else:
        mask = image.convert("L")
    if mask.size != size:
        # A mask painted on a resized view still means the same region: scale it, do not refuse.
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    return mask


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_png_by_hash(image: Image.Image, folder: Path) -> Path:
    """Save as PNG named by its content hash (the same pixels always give the same file), atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return store_by_hash(buffer.getvalue(), folder)


def store_by_hash(data: bytes, folder: Path) -> Path:
    """Write image file bytes once, named by their sha256, with the extension their content says."""
    suffix = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}.get(sniff_image(data[:16]) or "", ".bin")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if target.is_file():
        return target
    handle, temp = tempfile.mkstemp(dir=folder, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------------------------------- geometry


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the masked area (mask L, white = repaint) painted with the colours
    around it, blurred ever finer: each radius spreads the unmasked pixels' colour (weighted by how
    unmasked they are) into the hole, and finer radii are laid over coarser ones."""
    keep = 1.0 - np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    painted = pixels * keep
    # Premultiplied colour and coverage of the layers laid so far ("over" compositing).
    result, covered = np.zeros_like(pixels), np.zeros_like(keep)
    for radius in (256, 64, 16, 4, 2, 0):
        colour, weight = (_gaussian(painted, radius), _gaussian(keep, radius)) if radius else (painted, keep)
        # The layer's own colour is the blurred colour over its blurred coverage; its alpha that coverage.
        alpha = np.clip(weight, 0.0, 1.0)
        mean = np.divide(colour, weight, out=np.zeros_like(colour), where=weight > 1e-6)
        result = mean * alpha + result * (1.0 - alpha)
        covered = alpha + covered * (1.0 - alpha)
    straight = np.divide(result, covered, out=np.zeros_like(result), where=covered > 1e-6)
    return Image.fromarray(np.clip(straight + 0.5, 0, 255).astype(np.uint8))


def _gaussian(array: np.ndarray, radius: int) -> np.ndarray:
    """A Gaussian blur (sigma `radius`) of a float (H, W, C) array, as three box blurs along each axis
    (cumulative sums: the cost does not grow with the radius). Outside the image counts as zero, which
    the caller's weighting by blurred coverage cancels."""
    width = max(1, int(round(math.sqrt(4 * radius * radius + 1))))  # three boxes of this width ~ sigma
    for axis in (0, 1):
        for _ in range(3):
            array = _box(array, width, axis)
    return array


def _box(array: np.ndarray, width: int, axis: int) -> np.ndarray:
    before = width // 2
    pad = [(0, 0)] * array.ndim
    pad[axis] = (before + 1, width - before)
    summed = np.cumsum(np.pad(array, pad), axis=axis, dtype=np.float64)
    size = array.shape[axis]
    upper = np.take(summed, np.arange(width, width + size), axis=axis)
    lower = np.take(summed, np.arange(0, size), axis=axis)
    return ((upper - lower) / width).astype(np.float32)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A1111's "Mask blur": a Gaussian feather whose standard deviation is `radius` pixels."""
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask.copy()


def mask_bbox(mask: Image.Image) -> Box | None:
    """The bounding box of the mask's non-zero pixels, or None for an empty mask."""
    return mask.getbbox()


def crop_box(bbox: Box, padding: int, image_size: tuple[int, int], target: tuple[int, int]) -> Box:
    """`bbox` plus `padding` on every side, grown to the aspect ratio of `target`, inside the image.

    Growing to the target's aspect ratio means the region is scaled, not stretched, to width x height.
    """
    width, height = image_size
    left, top, right, bottom = bbox[0] - padding, bbox[1] - padding, bbox[2] + padding, bbox[3] + padding
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    box_w, box_h = right - left, bottom - top
    ratio = target[0] / target[1]
    if box_w / box_h < ratio:
        want = min(round(box_h * ratio), width)
        left, right = _grow(left, right, want, width)
    else:
        want = min(round(box_w / ratio), height)
        top, bottom = _grow(top, bottom, want, height)
    return left, top, right, bottom


def _grow(start: int, end: int, want: int, limit: int) -> tuple[int, int]:
    """Widen [start, end) to `want` around its centre, shifting it back inside [0, limit)."""
    extra = max(want - (end - start), 0)
    start -= extra // 2
    end += extra - extra // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(start - (end - limit), 0), limit
    return start, end


def working_size(size: tuple[int, int], resize_mode: str, multiple: int = 8) -> tuple[int, int]:
    """The source size made a multiple of `multiple` (8 for SD's latents, 16 for a DiT's 2x2 patches of them):
    rounded for "resize", rounded up for "pad"."""

    def side(value: int) -> int:
        rounded = padded_side(value, multiple) if resize_mode == "pad" else max(round(value / multiple) * multiple,
                                                                               multiple)  # fmt: skip
        return max(rounded, MIN_SIDE)

    return side(size[0]), side(size[1])


def padded_side(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def to_working(image: Image.Image, size: tuple[int, int], resize_mode: str) -> Image.Image:
    """Resize to `size`, or pad right and bottom by repeating the edge pixels (no hard border to copy)."""
    if image.size == size:
        return image.copy()
    if resize_mode == "pad" and size[0] >= image.width and size[1] >= image.height:
        array = np.asarray(image)
        pads = ((0, size[1] - image.height), (0, size[0] - image.width)) + ((0, 0),) * (array.ndim - 2)
        return Image.fromarray(np.pad(array, pads, mode="edge"), image.mode)
    return image.resize(size, Image.Resampling.LANCZOS)


def from_working(image: Image.Image, size: tuple[int, int], resize_mode: str) -> Image.Image:
    """Undo `to_working`: crop the padding off, or resize back to the source size."""
    if image.size == size:
        return image.copy()
    if resize_mode == "pad" and image.width >= size[0] and image.height >= size[1]:
        return image.crop((0, 0, size[0], size[1]))
    return image.resize(size, Image.Resampling.LANCZOS)


def composite(source: Image.Image, generated: Image.Image, alpha: Image.Image) -> Image.Image:
    """Generated pixels through `alpha` over the source: where alpha is 0 the source stays exact."""
    return Image.composite(generated.convert("RGB"), source.convert("RGB"), alpha.convert("L"))


def paste_region(source: Image.Image, region: Image.Image, box: Box, alpha: Image.Image) -> Image.Image:
    """Scale `region` into `box` of the source, then keep it only where the (blurred) mask says so."""
    canvas = source.convert("RGB").copy()
    size = (box[2] - box[0], box[3] - box[1])
    canvas.paste(region.convert("RGB").resize(size, Image.Resampling.LANCZOS), box[:2])
    return composite(source, canvas, alpha)


# ------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class EditPlan:
    """What the pipeline gets for one image-to-image or inpainting job, and how to put it back.

    `image`/`mask` are at the working resolution (`size`); `box` is the region of the source they
    cover (the whole source in "whole" mode); `alpha` is the blurred mask at the source's size, or
    None for image-to-image, where every pixel may change.
    """

    source: Image.Image
    image: Image.Image
    mask: Image.Image | None
    alpha: Image.Image | None
    box: Box
    size: tuple[int, int]
    resize_mode: str
    cropped: bool


def check_source_size(size: tuple[int, int], resize_mode: str, whole: bool) -> None:
    """Refuse a source the model cannot work on, with the reason: the window and `marble generate`
    both ask before a job is queued, and `plan_edit` asks again for a request made elsewhere.

    Under MIN_SIDE pixels on a side there is nothing to edit: the model would make a 64-pixel
    picture and squeeze it back into the source's few pixels, a result with no visible relation to
    the prompt. A whole picture (`whole`) is worked at its own size, so it may not pass MAX_SIDE;
    "Only masked" works a crop at the request's size, so any larger source is fine there.
    """
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise InvalidRequest(
            f"The source image is {width}x{height} pixels, too small to edit: image to image and inpainting "
            f"need at least {MIN_SIDE} pixels on each side. Scale it up first, or use text to image."
        )
    if whole and max(working_size(size, resize_mode)) > MAX_SIDE:
        raise InvalidRequest(
            f"The source image is {width}x{height} pixels; Marble works on whole images of up to "
            f'{MAX_SIDE} pixels a side. Use "Inpaint only masked" or a smaller image.'
        )


def plan_edit(
    source: Image.Image, mask: Image.Image | None, request: GenerationRequest, multiple: int = 8
) -> EditPlan:
    """How to run `request` on `source` (RGB) and `mask` (L, the source's size, white = repaint), at a size the
    model takes: a multiple of `multiple` pixels on each side."""
    check_source_size(source.size, request.resize_mode, whole=False)
    full: Box = (0, 0, source.width, source.height)
    alpha = blur_mask(mask, request.mask_blur) if mask is not None else None
    if alpha is not None and request.inpaint_area == "masked":
        bbox = mask_bbox(alpha)
        if bbox is not None:
            box = crop_box(bbox, request.padding, source.size, (request.width, request.height))
            size = (padded_side(request.width, multiple), padded_side(request.height, multiple))
            region = source.crop(box).resize(size, Image.Resampling.LANCZOS)
            region_mask = alpha.crop(box).resize(size, Image.Resampling.LANCZOS)
            return EditPlan(source, region, region_mask, alpha, box, size, "resize", True)
    check_source_size(source.size, request.resize_mode, whole=True)
    size = working_size(source.size, request.resize_mode, multiple)
    image = to_working(source, size, request.resize_mode)
    work_mask = to_working(alpha, size, request.resize_mode) if alpha is not None else None
    return EditPlan(source, image, work_mask, alpha, full, size, request.resize_mode, False)


def finish_edit(plan: EditPlan, generated: Image.Image) -> Image.Image:
    """The result at the source's size; outside the blurred mask, the source's own pixels."""
    if plan.cropped:
        assert plan.alpha is not None
        return paste_region(plan.source, generated, plan.box, plan.alpha)
    result = from_working(generated.convert("RGB"), plan.source.size, plan.resize_mode)
    if plan.alpha is None:
        return result
    return composite(plan.source, result, plan.alpha)


def mask_is_empty(mask: Image.Image) -> bool:
    return mask.getbbox() is None


# ------------------------------------------------------------------------------------- outpainting


@dataclass(frozen=True)
class Margins:
    """Pixels to add on each side of the canvas when outpainting."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    @classmethod
    def parse(cls, text: str) -> Margins:
        """ "LEFT,TOP,RIGHT,BOTTOM" (or one number for all four sides)."""
        parts = [part.strip() for part in text.split(",")]
        try:
            values = [int(part) for part in parts]
        except ValueError:
            raise InvalidRequest(f"Outpaint margins {text!r} must be whole numbers: LEFT,TOP,RIGHT,BOTTOM.") from None
        if len(values) == 1:
            values *= 4
        if len(values) != 4:
            raise InvalidRequest(f"Outpaint margins {text!r} need four numbers: LEFT,TOP,RIGHT,BOTTOM.")
        return cls(*values).validate()

    def validate(self) -> Margins:
        for name, value in zip(("left", "top", "right", "bottom"), self.as_tuple(), strict=True):
            if not 0 <= value <= MAX_OUTPAINT:
                raise InvalidRequest(f"Outpaint {name} {value} is out of range: use 0 to {MAX_OUTPAINT} pixels.")
        if not any(self.as_tuple()):
            raise InvalidRequest("Outpainting needs at least one side to grow.")
        return self

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


def outpaint_canvas(
    image: Image.Image, margins: Margins, mask: Image.Image | None = None, seam: int = OUTPAINT_SEAM
) -> tuple[Image.Image, Image.Image]:
    """The grown canvas and its inpainting mask.

    The new area repeats the nearest edge pixels, which gives a regular model colours to continue
    rather than a flat fill; the mask is white there and reaches `seam` pixels into the old image
    with a linear ramp, so the seam is repainted and blends. An existing mask is kept where it was.
    """
    margins.validate()
    left, top, right, bottom = margins.as_tuple()
    array = np.asarray(image.convert("RGB"))
    grown = Image.fromarray(np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge"), "RGB")
    height, width = array.shape[:2]
    ys = np.arange(height + top + bottom, dtype=np.float32)[:, None]
    xs = np.arange(width + left + right, dtype=np.float32)[None, :]
    # Distance inside the old image from each grown side (negative means in the new area).
    distances = []
    if left:
        distances.append(xs - left)
    if top:
        distances.append(ys - top)
    if right:
        distances.append(left + width - 1 - xs)
    if bottom:
        distances.append(top + height - 1 - ys)
    nearest = np.minimum.reduce([np.broadcast_to(d, (grown.height, grown.width)) for d in distances])
    ramp = 1.0 - nearest / max(seam, 1) if seam > 0 else (nearest < 0).astype(np.float32)
    values = np.clip(np.round(ramp * 255.0), 0, 255).astype(np.uint8)
    if mask is not None:
        old = np.pad(np.asarray(mask.convert("L")), ((top, bottom), (left, right)), mode="constant")
        values = np.maximum(values, old)
    return grown, Image.fromarray(values, "L")


# --------------------------------------------------------------------------------------- metadata


def edit_parameters(request: GenerationRequest, source_hash: str | None) -> dict[str, str]:
    """A1111 keys for an image-to-image or inpainting result (empty for text-to-image)."""
    if request.mode == "txt2img":
        return {}
    pairs = {"Denoising strength": f"{float(request.strength):g}"}
    if request.mode == "inpaint":
        pairs["Mask blur"] = str(request.mask_blur)
        if request.inpaint_area == "masked":
            pairs["Inpaint area"] = "Only masked"
            pairs["Masked area padding"] = str(request.padding)
        else:
            pairs["Inpaint area"] = "Whole picture"
    if request.resize_mode == "pad":
        pairs["Resize mode"] = "Pad"
    if source_hash:
        pairs["Init image hash"] = source_hash[:10]
    return pairs


def upscale_parameters(request: GenerationRequest, edit: dict[str, str]) -> dict[str, str]:
    """The A1111 keys of an upscale job after the source's recipe: the extras tab's `Postprocess
    upscale by` / `Postprocess upscaler`, and for SD upscale the img2img keys (`edit`) and the SD
    upscale script's `SD upscale overlap` / `SD upscale upscaler`. `edit` as it is for other jobs."""
    if not request.upscale_job:
        return edit
    pairs = {
        "Postprocess upscale by": f"{float(request.upscale_by):g}",
        "Postprocess upscaler": request.upscale_upscaler,
    }
    if not request.sd_upscale:
        return pairs
    return {**edit, "SD upscale overlap": str(request.sd_upscale_overlap),
            "SD upscale upscaler": request.upscale_upscaler, "SD upscale tile": str(request.sd_upscale_tile), **pairs}
