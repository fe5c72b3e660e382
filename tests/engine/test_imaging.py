"""Pure image geometry for image-to-image, inpainting and outpainting (no torch)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine.errors import InvalidRequest
from desktop.engine.imaging import (
    Margins,
    blur_mask,
    check_source_size,
    composite,
    crop_box,
    edit_parameters,
    file_sha256,
    finish_edit,
    from_working,
    load_mask,
    load_source,
    mask_is_empty,
    open_image,
    outpaint_canvas,
    paste_region,
    plan_edit,
    save_png_by_hash,
    store_by_hash,
    to_working,
    working_size,
)
from desktop.engine.request import MAX_SIDE, GenerationRequest


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


# ------------------------------------------------------------------ issue 23: mutation survivors


NOT_AN_IMAGE = "is not a PNG, JPEG or WebP image (judged by its content, not its name), so Marble will not open it."


def test_every_loader_names_what_it_could_not_open(tmp_path):
    """The error sentence names the file the way the caller sees it: the user reads this line."""
    script = tmp_path / "picture.png"
    script.write_bytes(b"#!/bin/sh\necho not an image\n")
    cases = [
        (lambda: open_image(script), f"picture.png {NOT_AN_IMAGE}"),
        (lambda: open_image(script, "The pasted file"), f"The pasted file {NOT_AN_IMAGE}"),
        (lambda: open_image(b"plain text"), f"The image data {NOT_AN_IMAGE}"),
        (lambda: open_image(b"plain text", "The clipboard"), f"The clipboard {NOT_AN_IMAGE}"),
        (lambda: load_source(script), f"The source image picture.png {NOT_AN_IMAGE}"),
        (lambda: load_mask(script, (8, 8)), f"The mask picture.png {NOT_AN_IMAGE}"),
        (lambda: load_source(tmp_path / "gone.png"), "Cannot read The source image gone.png: it does not exist."),
    ]
    for call, message in cases:
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert str(caught.value) == message


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_open_image_decodes_bytes_bytearray_and_memoryview():
    image = noise(9, 7, seed=5)
    data = png_bytes(image)
    for source in (data, bytearray(data), memoryview(data)):
        assert np.array_equal(np.asarray(open_image(source)), np.asarray(image))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("LA", (4, 4), (0, 0)),
        lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 0)),
    ],
    ids=["LA", "RGBA"],
)
def test_every_transparent_mode_is_flattened_onto_white(tmp_path, make):
    make().save(tmp_path / "clear.png")
    loaded = load_source(tmp_path / "clear.png")
    assert loaded.mode == "RGB" and loaded.getpixel((1, 1)) == (255, 255, 255)


def test_palette_and_gray_sources_keep_their_colours(tmp_path):
    """Only transparency is flattened: an opaque palette or gray image keeps its own pixels, as RGB."""
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    assert "transparency" not in Image.open(tmp_path / "palette.png").info
    loaded = load_source(tmp_path / "palette.png")
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (200, 30, 40)
    Image.new("L", (4, 4), 90).save(tmp_path / "gray.png")
    gray = load_source(tmp_path / "gray.png")
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (90, 90, 90)
    # A palette image with a transparent entry: that entry becomes white, the others keep their colour.
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "holes.png", transparency=0)
    holes = load_source(tmp_path / "holes.png")
    assert holes.getpixel((0, 0)) == (255, 255, 255) and holes.getpixel((1, 1)) == (200, 30, 40)


def test_load_mask_reads_alpha_only_when_it_says_something(tmp_path):
    mask = square_mask((40, 30), (5, 5, 20, 20))
    # LA with a meaningful alpha: the alpha is the mask (the gray channel is ignored).
    la = Image.merge("LA", (Image.new("L", mask.size, 0), mask))
    la.save(tmp_path / "la.png")
    assert np.array_equal(np.asarray(load_mask(tmp_path / "la.png", mask.size)), np.asarray(mask))
    # Fully opaque RGBA: the alpha says nothing, so the colours are the mask.
    opaque = Image.merge("RGBA", (mask, mask, mask, Image.new("L", mask.size, 255)))
    opaque.save(tmp_path / "opaque.png")
    assert np.array_equal(np.asarray(load_mask(tmp_path / "opaque.png", mask.size)), np.asarray(mask))
    # RGB in, L out; and a mask at another size is scaled with Lanczos, as the source is.
    Image.merge("RGB", (mask, mask, mask)).save(tmp_path / "rgb.png")
    scaled = load_mask(tmp_path / "rgb.png", (80, 60))
    assert scaled.mode == "L"
    assert np.array_equal(np.asarray(scaled), np.asarray(mask.resize((80, 60), Image.Resampling.LANCZOS)))


def test_file_sha256_reads_a_file_larger_than_its_block(tmp_path):
    data = bytes(range(256)) * (5 * 4096 + 7)  # about 5 MiB: several 1 MiB blocks and a partial one
    (tmp_path / "big.bin").write_bytes(data)
    assert file_sha256(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(tmp_path / "big.bin")) == hashlib.sha256(data).hexdigest()


def test_store_by_hash_names_files_by_content_and_kind(tmp_path, monkeypatch):
    image = noise(8, 8)
    folder = tmp_path / "inputs" / "nested"
    renames = []
    real_replace = os.replace

    def recording_replace(source, target):
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    for data, suffix in [
        (png_bytes(image), ".png"),
        (png_bytes(image, "JPEG"), ".jpg"),
        (png_bytes(image, "WEBP"), ".webp"),
        (b"not an image at all", ".bin"),
    ]:
        path = store_by_hash(data, folder)
        assert path == folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        assert path.read_bytes() == data
    # Written beside the target under a ".partial" name, then renamed (atomic on one file system).
    assert all(temp.parent == folder and temp.name.endswith(".partial") for temp, _ in renames)
    assert sorted(p.name for p in folder.iterdir()) == sorted(target.name for _, target in renames)
    # The same bytes again: the file is already there and is not written a second time.
    count = len(renames)
    store_by_hash(png_bytes(image), folder)
    assert len(renames) == count


def test_store_by_hash_leaves_no_partial_file_when_the_rename_fails(tmp_path):
    data = png_bytes(noise(8, 8))
    # A folder where the file should go makes the final rename fail.
    (tmp_path / f"{hashlib.sha256(data).hexdigest()[:32]}.png").mkdir()
    with pytest.raises(OSError):
        store_by_hash(data, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{hashlib.sha256(data).hexdigest()[:32]}.png"]


def test_blur_mask_of_one_pixel_feathers_and_always_gives_gray():
    mask = square_mask((20, 20), (5, 5, 15, 15))
    assert np.asarray(blur_mask(mask, 1))[10, 4] > 0  # radius 1 already feathers
    rgb = Image.merge("RGB", (mask, mask, mask))
    assert blur_mask(rgb, 0).mode == "L" and blur_mask(rgb, 2).mode == "L"


def test_crop_box_grows_tall_targets_and_shifts_at_both_borders():
    # A tall target grows the box's height, by width / ratio.
    assert crop_box((40, 40, 60, 60), 0, (200, 200), (64, 128)) == (40, 30, 60, 70)
    # A wide box at the left border: grown around its centre, then shifted right to stay inside.
    assert crop_box((0, 10, 20, 30), 0, (200, 100), (256, 64)) == (0, 10, 80, 30)
    # At the right border: shifted left.
    assert crop_box((180, 90, 200, 110), 0, (200, 200), (256, 64)) == (120, 90, 200, 110)
    # Grown to the image's whole width from the right border: it starts at 0, not 1.
    assert crop_box((60, 10, 80, 30), 0, (80, 100), (256, 64)) == (0, 10, 80, 30)


def test_working_size_pads_up_and_resizes_to_the_nearest_multiple():
    assert working_size((65, 100), "pad") == (72, 104)
    assert working_size((65, 100), "resize") == (64, 96)


def test_to_and_from_working_pad_repeats_edges_crops_back_and_otherwise_uses_lanczos():
    image = noise(72, 60, seed=6)
    padded = to_working(image, (72, 64), "pad")  # one side already fits: still padded, not resized
    array = np.asarray(padded)
    assert np.array_equal(array[:60], np.asarray(image))
    assert (array[60:] == array[59]).all()  # the new rows repeat the last one
    mask = square_mask((72, 60), (0, 50, 72, 60))
    assert to_working(mask, (72, 64), "pad").mode == "L"
    assert np.array_equal(np.asarray(from_working(padded, (72, 60), "pad")), np.asarray(image))
    # The other side already fitting: padded and cropped too, not resized.
    tall = noise(70, 64, seed=15)
    assert np.array_equal(np.asarray(to_working(tall, (72, 64), "pad"))[:, :70], np.asarray(tall))
    assert np.array_equal(
        np.asarray(from_working(to_working(tall, (72, 64), "pad"), (70, 64), "pad")), np.asarray(tall)
    )
    # "resize" always resizes, with Lanczos, even where padding would fit.
    lanczos = image.resize((80, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(to_working(image, (80, 64), "resize")), np.asarray(lanczos))
    back = from_working(lanczos, (72, 60), "resize")
    assert np.array_equal(np.asarray(back), np.asarray(lanczos.resize((72, 60), Image.Resampling.LANCZOS)))
    # A generated image smaller than the source cannot be cropped to it: it is resized.
    small = noise(64, 64, seed=7)
    grown = from_working(small, (70, 60), "pad")
    assert np.array_equal(np.asarray(grown), np.asarray(small.resize((70, 60), Image.Resampling.LANCZOS)))


def test_composite_and_paste_accept_any_mode_and_scale_with_lanczos():
    source = noise(40, 40, seed=8)
    generated = Image.new("RGBA", (40, 40), (10, 20, 30, 255))
    alpha = Image.new("1", (40, 40), 1)
    assert composite(source.convert("L"), generated, alpha).getpixel((3, 3)) == (10, 20, 30)
    region = noise(16, 16, seed=9)
    everywhere = Image.new("L", (40, 40), 255)
    result = np.asarray(paste_region(source.convert("L"), region, (4, 4, 36, 36), everywhere))
    expected = np.asarray(region.resize((32, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(result[4:36, 4:36], expected)


def test_whole_picture_inpaint_plan_carries_the_blurred_mask_and_composites_through_it():
    source = noise(65, 66, seed=10)  # 64 px a side at least: smaller sources are refused
    mask = square_mask(source.size, (20, 20, 40, 40))
    plan = plan_edit(source, mask, request(inpaint_area="whole", mask_blur=2, resize_mode="pad"))
    assert not plan.cropped and plan.box == (0, 0, 65, 66) and plan.size == (72, 72)
    blurred = blur_mask(mask, 2)
    assert np.array_equal(np.asarray(plan.alpha), np.asarray(blurred))
    assert np.array_equal(np.asarray(plan.mask), np.asarray(to_working(blurred, (72, 72), "pad")))
    result = np.asarray(finish_edit(plan, Image.new("RGB", plan.size, (0, 0, 255))))
    alpha = np.asarray(blurred)
    assert np.array_equal(result[alpha == 0], np.asarray(source)[alpha == 0])
    assert (result[alpha == 255] == (0, 0, 255)).all()


def test_image_to_image_ignores_only_masked_and_crops_with_lanczos():
    source = noise(70, 66, seed=11)
    plan = plan_edit(source, None, request(mask=None, inpaint_area="masked"))
    assert not plan.cropped and plan.mask is None and plan.alpha is None and plan.box == (0, 0, 70, 66)
    mask = square_mask((200, 150), (100, 60, 120, 80))
    big = noise(200, 150, seed=12)
    masked = plan_edit(big, mask, request(inpaint_area="masked", padding=30, mask_blur=0))
    assert masked.box == (70, 30, 150, 110)  # 80 x 80, scaled down to 64 x 64
    want = big.crop(masked.box).resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(masked.image), np.asarray(want))
    want_mask = mask.crop(masked.box).resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(masked.mask), np.asarray(want_mask))


def test_whole_image_size_limit_is_inclusive():
    assert plan_edit(noise(MAX_SIDE, 64), None, request(mask=None)).size == (MAX_SIDE, 64)
    with pytest.raises(InvalidRequest) as caught:
        plan_edit(noise(MAX_SIDE + 8, 64), None, request(mask=None))
    assert str(caught.value) == (
        f"The source image is {MAX_SIDE + 8}x64 pixels; Marble works on whole images of up to {MAX_SIDE} pixels "
        'a side. Use "Inpaint only masked" or a smaller image.'
    )


def test_mask_is_empty():
    assert mask_is_empty(Image.new("L", (8, 8), 0))
    assert not mask_is_empty(square_mask((8, 8), (3, 3, 4, 4)))


def test_margins_errors_are_whole_sentences():
    cases = {
        "a,b": "Outpaint margins 'a,b' must be whole numbers: LEFT,TOP,RIGHT,BOTTOM.",
        "1,2": "Outpaint margins '1,2' need four numbers: LEFT,TOP,RIGHT,BOTTOM.",
        "0,0,0,0": "Outpainting needs at least one side to grow.",
        "0,0,0,2049": "Outpaint bottom 2049 is out of range: use 0 to 2048 pixels.",
        "0,-1,0,0": "Outpaint top -1 is out of range: use 0 to 2048 pixels.",
        "0,0,4000,0": "Outpaint right 4000 is out of range: use 0 to 2048 pixels.",
        "-5,0,0,0": "Outpaint left -5 is out of range: use 0 to 2048 pixels.",
    }
    for text, message in cases.items():
        with pytest.raises(InvalidRequest) as caught:
            Margins.parse(text)
        assert str(caught.value) == message
    assert Margins.parse("2048, 0, 0, 0") == Margins(2048, 0, 0, 0)


def test_outpaint_seam_values_top_margin_and_edge_fill():
    source = noise(16, 16, seed=13)
    grown, mask = outpaint_canvas(source, Margins(0, 4, 0, 0), seam=8)
    assert grown.size == (16, 20)
    array = np.asarray(grown)
    assert (array[:4] == array[4]).all()  # the new rows repeat the old top row
    column = np.asarray(mask)[:, 5]
    # White over the new rows, then a linear ramp down over `seam` rows of the old image.
    assert list(column[:4]) == [255] * 4
    assert list(column[4:13]) == [round((1 - d / 8) * 255) for d in range(9)]
    assert column[13:].max() == 0
    # seam=1: the first old row is fully repainted, the next is not touched.
    _, thin = outpaint_canvas(source, Margins(0, 4, 0, 0), seam=1)
    assert list(np.asarray(thin)[3:6, 5]) == [255, 255, 0]
    # seam=0: a hard edge exactly at the old image.
    _, hard = outpaint_canvas(source, Margins(0, 4, 0, 0), seam=0)
    assert list(np.asarray(hard)[2:6, 5]) == [255, 255, 0, 0]


def test_outpaint_keeps_an_existing_mask_where_it_was():
    source = noise(16, 16, seed=14)
    old = square_mask((16, 16), (6, 6, 10, 10))
    _, mask = outpaint_canvas(source, Margins(3, 2, 0, 0), mask=old, seam=2)
    values = np.asarray(mask)
    assert (values[8:12, 9:13] == 255).all()  # the old square, moved by the margins
    assert values[8:12, 13:].max() == 0 and values[14:, 9:13].max() == 0


def test_edit_parameters_whole_picture_and_pad():
    pairs = edit_parameters(request(strength=0.5, mask_blur=4, resize_mode="pad"), None)
    assert pairs == {
        "Denoising strength": "0.5",
        "Mask blur": "4",
        "Inpaint area": "Whole picture",
        "Resize mode": "Pad",
    }


def test_fill_masked_paints_the_hole_with_the_colours_around_it():
    from desktop.engine.imaging import fill_masked

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 32, 64))  # blue left half, red right half
    image.paste((0, 255, 0), (16, 16, 48, 48))  # green under the mask: must not leak into the fill
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    assert np.array_equal(filled[np.asarray(mask) == 0], np.asarray(image)[np.asarray(mask) == 0])
    left, right = filled[32, 18], filled[32, 45]
    assert left[2] > left[0] and right[0] > right[2]  # each side of the hole takes its neighbours' colour
    assert filled[16:48, 16:48, 1].max() < 60  # no green
