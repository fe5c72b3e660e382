"""Pure image geometry for image-to-image, inpainting and outpainting (no torch)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from desktop.engine.errors import InvalidRequest
from desktop.engine.imaging import (
    Margins,
    blur_mask,
    check_source_size,
    crop_box,
    edit_parameters,
    finish_edit,
    load_mask,
    load_source,
    open_image,
    outpaint_canvas,
    paste_region,
    plan_edit,
    save_png_by_hash,
    working_size,
)
from desktop.engine.request import GenerationRequest


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    array = np.zeros((size[1], size[0]), np.uint8)
    array[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(array, "L")


def request(**changes) -> GenerationRequest:
    values = dict(prompt="p", model="m", width=64, height=64, init_image="src.png", mask="mask.png")
    return GenerationRequest(**(values | changes)).validate()


def test_blur_feathers_about_three_sigma_and_keeps_the_inside():
    mask = square_mask((120, 120), (40, 40, 80, 80))
    assert np.array_equal(np.asarray(blur_mask(mask, 0)), np.asarray(mask))
    blurred = np.asarray(blur_mask(mask, 4))
    row = blurred[60]
    # The edge becomes a ramp: partly repainted on both sides of the painted border.
    assert 0 < row[38] < row[40] < row[42] < 255
    assert row[60] == 255  # deep inside, fully repainted
    assert row[: 40 - 4 * 4].max() == 0 and row[80 + 4 * 4 :].max() == 0  # a few sigma out, untouched
    wider = np.asarray(blur_mask(mask, 8))[60]
    assert np.count_nonzero(wider) > np.count_nonzero(row)


def test_crop_box_pads_grows_to_the_aspect_ratio_and_stays_inside():
    assert crop_box((40, 40, 60, 60), 10, (200, 200), (64, 64)) == (30, 30, 70, 70)
    # A wide target widens the box around its centre.
    assert crop_box((40, 40, 60, 60), 0, (200, 200), (128, 64)) == (30, 40, 70, 60)
    # Near a border it shifts back inside instead of leaving the image.
    left, top, right, bottom = crop_box((0, 0, 10, 10), 8, (50, 50), (64, 64))
    assert (left, top) == (0, 0) and right - left == bottom - top == 18


def test_paste_region_lands_in_its_box_and_leaves_everything_else():
    source = noise(80, 60)
    region = Image.new("RGB", (64, 64), (255, 0, 0))
    alpha = square_mask(source.size, (20, 10, 40, 30))
    result = np.asarray(paste_region(source, region, (10, 0, 50, 40), alpha))
    before = np.asarray(source)
    assert (result[10:30, 20:40] == (255, 0, 0)).all()
    outside = np.asarray(alpha) == 0
    assert np.array_equal(result[outside], before[outside])


@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_whole_image_plan_works_at_a_multiple_of_8_and_returns_the_source_size(mode):
    source = noise(70, 66)
    assert working_size(source.size, "pad") == (72, 72)
    assert working_size((101, 99), "resize") == (104, 96)
    plan = plan_edit(source, None, request(mask=None, resize_mode=mode))
    assert plan.image.size == plan.size and all(side % 8 == 0 for side in plan.size)
    if mode == "pad":
        # Padding keeps the source pixels where they were; only new rows/columns are added.
        assert np.array_equal(np.asarray(plan.image)[:66, :70], np.asarray(source))
    result = finish_edit(plan, plan.image)
    assert result.size == source.size
    if mode == "pad":
        assert np.array_equal(np.asarray(result), np.asarray(source))


def test_masked_plan_crops_the_blurred_mask_box_and_composites_back_exactly():
    source = noise(200, 150)
    mask = square_mask(source.size, (100, 60, 120, 80))
    plan = plan_edit(source, mask, request(inpaint_area="masked", padding=8, mask_blur=2))
    assert plan.cropped and plan.image.size == (64, 64) and plan.mask.size == (64, 64)
    left, top, right, bottom = plan.box
    assert left <= 100 - 8 and top <= 60 - 8 and right >= 120 + 8 and bottom >= 80 + 8
    assert right - left == bottom - top  # square like 64x64
    result = np.asarray(finish_edit(plan, Image.new("RGB", (64, 64), (0, 255, 0))))
    alpha = np.asarray(plan.alpha)
    assert np.array_equal(result[alpha == 0], np.asarray(source)[alpha == 0])
    assert (result[alpha == 255] == (0, 255, 0)).all()


def test_outpaint_grows_the_canvas_keeps_old_pixels_and_masks_the_new_area():
    source = noise(64, 48)
    grown, mask = outpaint_canvas(source, Margins(16, 0, 8, 24), seam=8)
    assert grown.size == (64 + 24, 48 + 24) and mask.size == grown.size
    old = np.asarray(grown)[0:48, 16:80]
    assert np.array_equal(old, np.asarray(source))
    m = np.asarray(mask)
    assert (m[:, :16] == 255).all() and (m[:, 80:] == 255).all() and (m[48:, :] == 255).all()
    # The seam ramps from white at the border to black `seam` pixels inside; the interior is kept.
    assert 0 < m[20, 18] < 255 and m[20, 30] == 0
    assert m[0:40, 24:72].max() == 0


def test_margins_parse():
    assert Margins.parse("1,2,3,4") == Margins(1, 2, 3, 4)
    assert Margins.parse("32") == Margins(32, 32, 32, 32)
    for bad in ("1,2", "a,b,c,d", "0,0,0,0", "-1,0,0,0"):
        with pytest.raises(InvalidRequest):
            Margins.parse(bad)


def test_masks_round_trip_through_png_and_load_by_alpha_or_gray(tmp_path):
    mask = square_mask((40, 30), (5, 5, 20, 20))
    path = save_png_by_hash(mask, tmp_path)
    assert save_png_by_hash(mask.copy(), tmp_path) == path  # named by content
    assert np.array_equal(np.asarray(load_mask(path, (40, 30))), np.asarray(mask))
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    rgba.putalpha(mask)
    rgba.save(tmp_path / "alpha.png")
    assert np.array_equal(np.asarray(load_mask(tmp_path / "alpha.png", (40, 30))), np.asarray(mask))
    assert load_mask(path, (80, 60)).size == (80, 60)


def test_transparent_source_is_flattened_to_rgb(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    image = load_source(tmp_path / "clear.png")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and carries (almost) no pixels: what a decompression bomb looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_hostile_images_are_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(40_000, 40_000))
    with pytest.raises(InvalidRequest, match="too large|decompression bomb"):
        load_source(bomb)
    script = tmp_path / "picture.png"
    script.write_bytes(b"#!/bin/sh\necho not an image\n")
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG or WebP"):
        open_image(script)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png_header_only(10, 10))
    with pytest.raises(InvalidRequest, match="damaged"):
        open_image(broken)
    with pytest.raises(InvalidRequest, match="Cannot read"):
        open_image(tmp_path / "missing.png")


def test_edit_parameters_name_a1111_keys():
    assert edit_parameters(GenerationRequest(prompt="p", model="m"), None) == {}
    pairs = edit_parameters(request(strength=0.6, mask_blur=3, inpaint_area="masked", padding=16), "ab" * 32)
    assert pairs == {
        "Denoising strength": "0.6",
        "Mask blur": "3",
        "Inpaint area": "Only masked",
        "Masked area padding": "16",
        "Init image hash": "ababababab",
    }


def test_paste_region_puts_every_pixel_of_a_textured_patch_where_it_belongs():
    """Issue 23: a flat patch cannot show a paste a few pixels off; noise can, pixel by pixel."""
    source = noise(120, 90, seed=1)
    box = (23, 17, 87, 81)  # 64 x 64: the region is pasted at its own size, no resampling
    region = noise(64, 64, seed=2)
    alpha = square_mask(source.size, box)
    result = np.asarray(paste_region(source, region, box, alpha))
    assert np.array_equal(result[17:81, 23:87], np.asarray(region))
    outside = np.asarray(alpha) == 0
    assert np.array_equal(result[outside], np.asarray(source)[outside])


def test_only_masked_round_trip_gives_back_the_source_and_the_patch_at_its_place():
    """A masked plan whose box is exactly width x height: finishing with the plan's own crop is the
    source again, and a textured result lands pixel for pixel in the box, blended only by the mask."""
    source = noise(200, 150, seed=3)
    mask = square_mask(source.size, (100, 60, 120, 80))
    plan = plan_edit(source, mask, request(inpaint_area="masked", padding=14, mask_blur=3))
    assert plan.box == (78, 38, 142, 102) and plan.size == (64, 64)
    assert np.array_equal(np.asarray(finish_edit(plan, plan.image)), np.asarray(source))
    patch = noise(64, 64, seed=4)
    result = np.asarray(finish_edit(plan, patch)).astype(np.int32)
    alpha = np.asarray(plan.alpha).astype(np.int32)[..., None]
    placed = np.asarray(source).astype(np.int32).copy()
    placed[38:102, 78:142] = np.asarray(patch)
    # PIL's composite: (generated * alpha + source * (255 - alpha)) / 255, rounded.
    expected = (placed * alpha + np.asarray(source).astype(np.int32) * (255 - alpha)) / 255
    assert np.abs(result - expected).max() <= 1


@pytest.mark.parametrize("area", ["whole", "masked"])
@pytest.mark.parametrize("size", [(1, 1), (63, 200)])
def test_a_source_under_64_pixels_a_side_is_refused_with_its_size(size, area):
    # Worked at 64 and squeezed back, a 1x1 source gave a 1x1 "result" without a word.
    source = noise(*size)
    mask = square_mask(size, (0, 0, 1, 1))
    with pytest.raises(InvalidRequest, match=rf"is {size[0]}x{size[1]} pixels, too small to edit.*at least 64"):
        plan_edit(source, mask, request(inpaint_area=area))
    check_source_size((64, 64), "resize", whole=True)  # the smallest a request makes is fine


def test_a_source_too_large_to_work_whole_is_refused_but_only_masked_takes_it():
    with pytest.raises(InvalidRequest, match=r"5000x100 pixels; .* up to 4096 pixels a side.*only masked"):
        check_source_size((5000, 100), "resize", whole=True)
    # "pad" rounds 4093 up to 4096: still inside; one more pixel and it is not.
    check_source_size((4093, 100), "pad", whole=True)
    with pytest.raises(InvalidRequest):
        check_source_size((4097, 100), "pad", whole=True)
    check_source_size((5000, 100), "resize", whole=False)
