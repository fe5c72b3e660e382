"""Metadata: the exact A1111 text we write, round trips, other tools' formats, hostile files."""

from __future__ import annotations

import io
import json
import random
import struct
import time
import warnings
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, features

from desktop.engine.backends.base import AdapterHash, ModelInfo
from desktop.engine.backends.schedulers import SAMPLERS
from desktop.engine.errors import InvalidRequest
from desktop.engine.metadata import (
    SCHEMA_VERSION,
    ImageMetadata,
    _decode_user_comment,
    adapter_hashes_text,
    format_parameters,
    from_marble_json,
    interpret_chunks,
    marble_json,
    parse_parameters,
    png_info,
    png_text_chunks,
    read_image_metadata,
    read_text_chunks,
    request_from_parameters,
    resolve_sampler,
    written_sampler,
)
from desktop.engine.request import GenerationRequest

VERSION = "0.1.0"
SD15 = ModelInfo("v1-5-pruned-emaonly", "/models/v1-5-pruned-emaonly.safetensors", "sd15", "6ce0161689")
# Looked for above the checkout, so mutmut's copy of the tests (in `mutants/`) finds them too.
FIXTURES = next(
    (folder / "shared" / "fixtures" / "metadata" for folder in Path(__file__).resolve().parents
     if (folder / "shared" / "fixtures" / "metadata").is_dir()),
    Path(__file__).parents[2].parent / "shared" / "fixtures" / "metadata",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Helpers: images this test suite makes itself


def save_png(path: Path, chunks: dict[str, str]) -> Path:
    Image.new("RGB", (8, 8), (200, 40, 40)).save(path, pnginfo=png_info(chunks))
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hand_built_png(width: int, height: int, after_idat: tuple[bytes, ...] = ()) -> bytes:
    """An 8-bit grayscale PNG built chunk by chunk; big sizes get a tiny, incomplete IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height)) if width * height <= 4096 else b"\0"
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + b"".join(after_idat)
        + png_chunk(b"IEND", b"")
    )


def text_chunk(key: str, value: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


def request(**changes: object) -> GenerationRequest:
    base = GenerationRequest(prompt="a cat", model="v1-5-pruned-emaonly")
    return replace(base, **changes)


# --------------------------------------------------------------------------------------------------
# Writing: the exact text


def test_parameters_text_is_exactly_a1111s() -> None:
    made = request(negative_prompt="blurry", sampler="DPM++ 2M Karras", steps=30, cfg_scale=7.5)
    expected = (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: marble 0.1.0"
    )
    assert format_parameters(made, 42, SD15, VERSION) == expected


def test_parameters_text_with_optional_fields() -> None:
    made = GenerationRequest(
        prompt="line one\nline two",
        model="/home/alice/models/foo.safetensors",
        steps=20,
        cfg_scale=7,
        width=768,
        height=512,
        batch_size=2,
        clip_skip=2,
    )
    loras = (AdapterHash("detail", "0123456789ab"),)
    embeddings = (AdapterHash("ink", "abcdefabcdef"), AdapterHash("bad-hands", "111111111111"))
    text = format_parameters(
        made, 7, None, VERSION, batch_pos=1, extra={"Denoising strength": "0.5"}, loras=loras, embeddings=embeddings
    )
    expected = (
        "line one\nline two\n"
        "Steps: 20, CFG scale: 7.0, Seed: 7, Size: 768x512, Model: foo, Batch size: 2, Batch pos: 1, "
        'Clip skip: 2, Denoising strength: 0.5, Lora hashes: "detail: 0123456789ab", '
        'TI hashes: "ink: abcdefabcdef, bad-hands: 111111111111", Version: marble 0.1.0'
    )
    assert text == expected
    # The history stores these values as the text has them.
    settings = parse_parameters(text).settings
    assert settings["Lora hashes"] == adapter_hashes_text(loras) == "detail: 0123456789ab"
    assert settings["TI hashes"] == adapter_hashes_text(embeddings)
    assert adapter_hashes_text(()) == "" and "hashes" not in format_parameters(made, 7, None, VERSION)


def test_default_sampler_is_written_as_the_scheduler_used() -> None:
    made = request(sampler="default")
    assert "Sampler" not in format_parameters(made, 1, SD15, VERSION)
    text = format_parameters(made, 1, SD15, VERSION, sampler_used="DPM++ 2M Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale" in text
    assert "Sampler: PNDM, CFG" in format_parameters(made, 1, SD15, VERSION, sampler_used="PNDM")


def test_values_that_would_break_the_line_are_json_quoted() -> None:
    model = ModelInfo('odd, "name": v2', "/m", "sd15", None)
    text = format_parameters(request(), 5, model, VERSION)
    assert 'Model: "odd, \\"name\\": v2", Version' in text
    assert "Model hash" not in text
    assert dict(parse_parameters(text).settings)["Model"] == 'odd, "name": v2'


def test_marble_chunk_holds_the_complete_request_without_paths() -> None:
    made = request(model="/home/alice/models/foo.safetensors", seed=-1, sampler="Euler a")
    chunks = png_text_chunks(made, 1234, None, VERSION)
    document = json.loads(chunks["marble"])
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["app_version"] == VERSION
    assert document["request"] == json.loads(json.dumps(replace(made, seed=1234, model="foo").to_dict()))
    assert not any("alice" in value for value in chunks.values())


# --------------------------------------------------------------------------------------------------
# Round trips


ROUND_TRIPS = [
    request(prompt="a castle\non a hill\n  with indented detail", negative_prompt="blurry\nlow quality"),
    request(prompt='a "quoted" cat, sitting: on a mat, (detail:1.2)\nlast line: "x, y"', negative_prompt=""),
    request(negative_prompt="watermark, text: none", sampler="DPM++ 2M SDE Karras", cfg_scale=4.5),
    request(clip_skip=2, steps=1, width=64, height=4096, seed=4294967295),
    request(prompt="猫, café ☕", negative_prompt="ぼかし", sampler="LCM", cfg_scale=1.0, steps=4),
    request(batch_size=4, batch_count=3, sampler="DDIM", cfg_scale=0.0),
    request(prompt="a (red:1.3) ball", emphasis="No norm"),
    # A1111's prompt editing, alternation and AND are written and read back as typed.
    request(prompt="a [cat:dog:0.5] [red|blue] ball :1.2 AND sky, [a::3]:0.8", negative_prompt="[blurry|ugly]"),
]


@pytest.mark.parametrize("made", ROUND_TRIPS, ids=range(len(ROUND_TRIPS)))
def test_round_trip_through_a_png(tmp_path: Path, made: GenerationRequest) -> None:
    seed = 4294967295 if made.seed == 4294967295 else 99
    path = save_png(tmp_path / "image.png", png_text_chunks(made, seed, SD15, VERSION, batch_pos=0))

    found = read_image_metadata(path)

    assert found.format == "marble"
    assert found.request == replace(made, seed=seed, model=SD15.name)
    assert (found.prompt, found.negative_prompt) == (made.prompt, made.negative_prompt)
    assert found.settings["Seed"] == str(seed)


@pytest.mark.parametrize("made", ROUND_TRIPS, ids=range(len(ROUND_TRIPS)))
def test_parameters_text_alone_rebuilds_the_request(made: GenerationRequest) -> None:
    """What another tool (or we, without our chunk) gets from the A1111 text."""
    text = format_parameters(made, 99, SD15, VERSION)

    found = interpret_chunks({"parameters": text})

    assert found.format == "a1111"
    assert found.request == replace(made, seed=99, model=SD15.name, batch_size=1, batch_count=1)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_round_trips(sampler: str) -> None:
    made = request(sampler=sampler)
    text = format_parameters(made, 3, SD15, VERSION)
    assert request_from_parameters(parse_parameters(text), "fallback").sampler == sampler
    assert interpret_chunks(png_text_chunks(made, 3, SD15, VERSION)).request == replace(made, seed=3)


# --------------------------------------------------------------------------------------------------
# Parsing A1111 text


@pytest.mark.parametrize(
    "line",
    [
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512",
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512",
        "Steps: 20, Sampler: dpm++ 2m karras, Schedule type: Karras, CFG scale: 7, Seed: 1",
    ],
)
def test_both_a1111_sampler_spellings(line: str) -> None:
    parsed = parse_parameters(f"a dog\n{line}")
    assert request_from_parameters(parsed, "m").sampler == "DPM++ 2M Karras"


def test_parse_multi_line_prompt_and_negative() -> None:
    text = (
        "first line, (detail:1.1)\nsecond line\n"
        "Negative prompt: ugly,\nstill negative\n"
        'Steps: 30, Sampler: Euler a, CFG scale: 6.5, Seed: 12, Size: 640x832, Lora hashes: "a: 1, b: 2", '
        'Template: "say \\"hi\\", ok", Version: v1.9.4'
    )
    parsed = parse_parameters(text)
    assert parsed.prompt == "first line, (detail:1.1)\nsecond line"
    assert parsed.negative_prompt == "ugly,\nstill negative"
    assert dict(parsed.settings) == {
        "Steps": "30",
        "Sampler": "Euler a",
        "CFG scale": "6.5",
        "Seed": "12",
        "Size": "640x832",
        "Lora hashes": "a: 1, b: 2",
        "Template": 'say "hi", ok',
        "Version": "v1.9.4",
    }


def test_parse_without_negative_and_with_windows_newlines() -> None:
    parsed = parse_parameters("a boat\r\nSteps: 5, Sampler: Euler, Seed: 9\r\n")
    assert (parsed.prompt, parsed.negative_prompt) == ("a boat", "")
    assert list(parsed.settings) == ["Steps", "Sampler", "Seed"]


def test_parse_keeps_an_unquoted_value_with_a_comma() -> None:
    parsed = parse_parameters("x\nSteps: 5, Hires upscaler: Latent, nearest, Seed: 9")
    assert parsed.settings["Hires upscaler"] == "Latent, nearest"
    assert parsed.settings["Seed"] == "9"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just a prompt, with: colons, and, commas",
        "masterpiece, best quality, (cat:1.2)",
        ':::,,,"""\n\n\\',
        'Steps: "unterminated, Seed: 3',
        "\x00\x01\x02",
    ],
)
def test_unparseable_text_is_the_prompt(text: str) -> None:
    parsed = parse_parameters(text)
    if not parsed.settings:
        assert parsed.prompt == text
    request_from_parameters(parsed, "m")


def test_parser_never_raises_on_junk() -> None:
    rng = random.Random(1234)
    alphabet = 'ab :,"\\\n\r{}[]xS-0123456789tepsNgaivrom'
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        parsed = parse_parameters(text)
        request_from_parameters(parsed, "m")
        interpret_chunks({"parameters": text, "prompt": text, "Comment": text, "Dream": text})


def test_invalid_numbers_keep_the_defaults() -> None:
    parsed = parse_parameters(
        "p\nSteps: abc, Sampler: Mystery 3000, CFG scale: 99, Seed: 18446744073709551616, Size: 1001x999, "
        "Clip skip: 40, Model: nan"
    )
    made = request_from_parameters(parsed, "fallback")
    defaults = GenerationRequest(prompt="p", model="nan")
    assert made == defaults
    assert made.sampler == "default"


def test_emphasis_is_written_as_a1111_writes_it_and_read_back() -> None:
    assert "Emphasis" not in format_parameters(request(), 1, SD15, VERSION)  # "Original": the default
    text = format_parameters(request(emphasis="No norm", clip_skip=2), 1, SD15, VERSION)
    assert "Clip skip: 2, Emphasis: No norm, Version" in text
    assert request_from_parameters(parse_parameters(text), "m").emphasis == "No norm"
    assert request_from_parameters(parse_parameters("p\nSteps: 5, Emphasis: none"), "m").emphasis == "None"
    assert request_from_parameters(parse_parameters("p\nSteps: 5, Emphasis: Loud"), "m").emphasis == "Original"


def test_model_names_from_files_are_names_not_paths() -> None:
    parsed = parse_parameters("p\nSteps: 5, Model: ../../sub/dreamshaper_8.safetensors")
    assert request_from_parameters(parsed, "fallback").model == "dreamshaper_8"
    assert request_from_parameters(parse_parameters("p\nSteps: 5"), "fallback").model == "fallback"


# --------------------------------------------------------------------------------------------------
# Reading files safely


def test_text_chunk_after_the_image_data_is_read(tmp_path: Path) -> None:
    parameters = "a duck\nNegative prompt: ugly\nSteps: 15, Sampler: UniPC, CFG scale: 5, Seed: 235284042"
    data = hand_built_png(2, 2, after_idat=(text_chunk("parameters", parameters),))
    path = tmp_path / "late.png"
    path.write_bytes(data)
    with Image.open(path) as image:
        assert "parameters" not in image.info  # only visible after load(): the test is meaningful

    found = read_image_metadata(path)

    assert (found.format, found.prompt, found.negative_prompt) == ("a1111", "a duck", "ugly")
    assert found.request is not None and found.request.seed == 235284042
    assert read_image_metadata(data).prompt == "a duck"


def test_a_decompression_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(hand_built_png(40_000, 40_000))
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="decompression bomb"):
        read_image_metadata(path)
    assert time.monotonic() - started < 2


def test_the_bomb_is_refused_without_pillows_global_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(InvalidRequest, match="40,000 x 40,000 pixels"):
        read_image_metadata(hand_built_png(40_000, 40_000))


def test_pillows_bomb_warning_is_an_error_and_filters_are_restored() -> None:
    filters_before = list(warnings.filters)
    # Over Pillow's warning limit (about 89 Mpx) but under twice it and under our own cap.
    with pytest.raises(InvalidRequest, match="decompression bomb"):
        read_image_metadata(hand_built_png(9_600, 9_600))
    assert warnings.filters == filters_before


def make_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "hello")
    return buffer.getvalue()


def make_gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (4, 4)).save(buffer, "GIF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [b"Steps: 20, Sampler: Euler\n", make_zip(), make_gif(), b"", b"\x89PNG\r\n\x1a\n"],
    ids=["text", "zip", "gif", "empty", "signature-only"],
)
def test_non_images_named_png_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not-really.png"
    path.write_bytes(content)
    with pytest.raises(InvalidRequest) as raised:
        read_image_metadata(path)
    assert "not-really.png" in str(raised.value)


def test_missing_files_and_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="Cannot read"):
        read_image_metadata(tmp_path / "missing.png")
    with pytest.raises(InvalidRequest, match="Cannot read"):
        read_image_metadata(tmp_path)


def test_damaged_pngs_give_invalid_request_or_metadata_never_a_crash() -> None:
    buffer = io.BytesIO()
    chunks = png_text_chunks(request(), 5, SD15, VERSION)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "PNG", pnginfo=png_info(chunks))
    data = buffer.getvalue()
    rng = random.Random(99)
    variants = [data[:cut] for cut in range(8, len(data), max(1, len(data) // 40))]
    for _ in range(60):
        damaged = bytearray(data)
        damaged[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
        variants.append(bytes(damaged))
    for variant in variants:
        try:
            assert isinstance(read_image_metadata(variant), ImageMetadata)
        except InvalidRequest:
            pass


def exif_with_user_comment(comment: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    return exif


A1111_TEXT = "a fox, at night\nNegative prompt: blur\nSteps: 22, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 8x8"


@pytest.mark.parametrize("encoding", ["utf-16-be", "utf-16-le"])
def test_jpeg_user_comment_is_read(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "photo.jpg"
    exif = exif_with_user_comment(b"UNICODE\0" + A1111_TEXT.encode(encoding))
    Image.new("RGB", (8, 8)).save(path, "JPEG", exif=exif)

    found = read_image_metadata(path)

    assert (found.format, found.prompt, found.negative_prompt) == ("a1111", "a fox, at night", "blur")
    assert found.request is not None and (found.request.steps, found.request.sampler) == (22, "Euler a")


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_user_comment_is_read() -> None:
    buffer = io.BytesIO()
    exif = exif_with_user_comment(b"UNICODE\0" + A1111_TEXT.encode("utf-16-be"))
    Image.new("RGB", (8, 8)).save(buffer, "WEBP", exif=exif)
    assert read_image_metadata(buffer.getvalue()).prompt == "a fox, at night"


def test_jpeg_without_metadata_is_unknown() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    found = read_image_metadata(buffer.getvalue())
    assert (found.format, found.request, dict(found.settings)) == ("unknown", None, {})


# --------------------------------------------------------------------------------------------------
# The marble chunk


def test_a_broken_marble_chunk_falls_back_to_the_parameters() -> None:
    chunks = png_text_chunks(request(steps=12), 8, SD15, VERSION)
    chunks["marble"] = "{not json"
    found = interpret_chunks(chunks)
    assert found.format == "a1111"
    assert found.request is not None and found.request.steps == 12


def test_a_newer_marble_chunk_ignores_unknown_keys() -> None:
    document = {
        "schema_version": SCHEMA_VERSION + 5,
        "something_new": [1, 2],
        "request": {**request(seed=77).to_dict(), "upscaler": {"name": "4x-ultra"}},
    }
    assert from_marble_json(json.dumps(document)) == request(seed=77)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        '{"schema_version": "one", "request": {}}',
        '{"request": {"prompt": "x"}}',
        '{"request": {"prompt": "x", "model": 5}}',
        '{"request": {"prompt": "x", "model": "m", "steps": "abc"}}',
        '{"request": {"prompt": "x", "model": "m", "width": 1001}}',
        "[" * 100_000,
    ],
)
def test_malformed_marble_chunks_raise_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest):
        from_marble_json(text)


# --------------------------------------------------------------------------------------------------
# Other tools' formats (chunks written here, in each tool's format)


def comfyui_graph() -> dict[str, object]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a/dreamshaper_8.ckpt"}},
        "10": {
            "class_type": "LoraLoader",
            "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "detail.safetensors"},
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 768, "batch_size": 1}},
        "20": {"class_type": "PrimitiveString", "inputs": {"value": "a castle, at dusk"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["20", 0], "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, lowres", "clip": ["10", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 1234,
                "steps": 25,
                "cfg": 6.5,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1.0,
                "model": ["10", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        # A second (hires) pass: the first sampler describes the image.
        "12": {
            "class_type": "KSampler",
            "inputs": {"seed": 5, "steps": 10, "cfg": 3, "sampler_name": "euler", "positive": ["6", 0],
                       "negative": ["7", 0], "latent_image": ["3", 0], "model": ["4", 0]},
        },
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }  # fmt: skip


def test_comfyui_graph(tmp_path: Path) -> None:
    chunks = {"prompt": json.dumps(comfyui_graph()), "workflow": json.dumps({"nodes": []})}
    found = read_image_metadata(save_png(tmp_path / "comfy.png", chunks))

    assert found.format == "comfyui"
    assert (found.prompt, found.negative_prompt) == ("a castle, at dusk", "blurry, lowres")
    assert found.request == GenerationRequest(
        prompt="a castle, at dusk",
        negative_prompt="blurry, lowres",
        model="dreamshaper_8",
        seed=1234,
        steps=25,
        cfg_scale=6.5,
        sampler="DPM++ 2M Karras",
        width=640,
        height=768,
    )


def hidream_graph() -> dict:
    """ComfyUI's HiDream-I1 template as its prompt graph: the transformer, four text encoders and the VAE apart."""
    return {
        "54": {"class_type": "QuadrupleCLIPLoader",
               "inputs": {"clip_name1": "hidream/clip_l_hidream.safetensors",
                          "clip_name2": "clip_g_hidream.safetensors",
                          "clip_name3": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                          "clip_name4": "llama_3.1_8b_instruct_fp8_scaled.safetensors"}},
        "55": {"class_type": "VAELoader", "inputs": {"vae_name": "FLUX1/ae.safetensors"}},  # a subfolder of ComfyUI's
        "69": {"class_type": "UNETLoader", "inputs": {"unet_name": "hidream_i1_dev_fp8.safetensors",
                                                      "weight_dtype": "default"}},
        "70": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 6.0, "model": ["69", 0]}},
        "16": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in the snow", "clip": ["54", 0]}},
        "40": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["54", 0]}},
        "53": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 28, "cfg": 1.0, "sampler_name": "lcm",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["70", 0],
                                                   "positive": ["16", 0], "negative": ["40", 0],
                                                   "latent_image": ["53", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["55", 0]}},
    }  # fmt: skip


def test_comfyuis_separate_text_encoders_and_vae_come_back_as_library_names(tmp_path: Path) -> None:
    found = read_image_metadata(save_png(tmp_path / "hidream.png", {"prompt": json.dumps(hidream_graph())}))
    assert (found.request.model, found.request.vae) == ("hidream_i1_dev_fp8", "ae")
    assert found.request.text_encoders == ("clip_l_hidream,clip_g_hidream,t5xxl_fp8_e4m3fn_scaled,"
                                           "llama_3.1_8b_instruct_fp8_scaled")  # fmt: skip
    assert (found.request.steps, found.request.cfg_scale, found.request.seed) == (28, 1.0, 7)
    # Flux's DualCLIPLoader, from the prompt's encoder upstream.
    graph = hidream_graph()
    graph["54"] = {"class_type": "DualCLIPLoader",
                   "inputs": {"clip_name1": "t5xxl_fp16.safetensors", "clip_name2": "clip_l.safetensors"}}
    flux = read_image_metadata(save_png(tmp_path / "flux.png", {"prompt": json.dumps(graph)}))
    assert flux.request.text_encoders == "t5xxl_fp16,clip_l"
    # A checkpoint holds its own encoders and VAE: none are named.
    graph["69"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl_base.safetensors"}}
    whole = read_image_metadata(save_png(tmp_path / "sdxl.png", {"prompt": json.dumps(graph)}))
    assert (whole.request.model, whole.request.text_encoders, whole.request.vae) == ("sdxl_base", None, "")


def test_comfyui_graph_with_a_cycle_does_not_hang() -> None:
    graph = {
        "1": {"class_type": "Loop", "inputs": {"conditioning": ["2", 0]}},
        "2": {"class_type": "Loop", "inputs": {"conditioning": ["1", 0]}},
        "3": {"class_type": "KSampler", "inputs": {"positive": ["1", 0], "negative": ["2", 0], "seed": 4}},
    }
    found = interpret_chunks({"prompt": json.dumps(graph)}, model_fallback="m")
    assert (found.format, found.prompt, found.settings["Seed"]) == ("comfyui", "", "4")


def test_invokeai_v3() -> None:
    metadata = {
        "generation_mode": "txt2img",
        "positive_prompt": "a red fox",
        "negative_prompt": "blurry",
        "width": 768,
        "height": 512,
        "seed": 99,
        "cfg_scale": 6.0,
        "steps": 28,
        "scheduler": "dpmpp_2m_k",
        "clip_skip": 2,
        "model": {"name": "dreamshaper", "base": "sd-1", "key": "abc"},
    }
    found = interpret_chunks({"invokeai_metadata": json.dumps(metadata)})
    assert found.format == "invokeai"
    assert found.request == GenerationRequest(
        prompt="a red fox", negative_prompt="blurry", model="dreamshaper", seed=99, cfg_scale=6.0,
        steps=28, sampler="DPM++ 2M Karras", width=768, height=512, clip_skip=2,
    )  # fmt: skip


def test_invokeai_v2_sd_metadata() -> None:
    metadata = {
        "model_weights": "stable-diffusion-1.5",
        "app_id": "invoke-ai/InvokeAI",
        "app_version": "2.3.0",
        "image": {
            "prompt": [{"prompt": "a lighthouse [fog, rain]", "weight": 1.0}],
            "steps": 40, "cfg_scale": 7.5, "height": 512, "width": 576, "seed": 321, "sampler": "k_euler_a",
        },
    }  # fmt: skip
    found = interpret_chunks({"sd-metadata": json.dumps(metadata), "Dream": '"ignored" -s 1'})
    assert (found.format, found.prompt, found.negative_prompt) == ("invokeai", "a lighthouse", "fog, rain")
    assert found.request is not None
    assert (found.request.steps, found.request.seed, found.request.sampler) == (40, 321, "Euler a")
    assert (found.request.width, found.request.height) == (576, 512)
    assert found.request.model == "stable-diffusion-1.5"


def test_invokeai_v1_dream() -> None:
    dream = '"a \\"quoted\\" tree [ugly]" -s 12 -S 77 -W 448 -H 640 -C 8.5 -A k_heun -U 4 0.9'
    found = interpret_chunks({"Dream": dream}, model_fallback="mine")
    assert (found.format, found.prompt, found.negative_prompt) == ("invokeai", 'a "quoted" tree', "ugly")
    assert found.request == GenerationRequest(
        prompt='a "quoted" tree', negative_prompt="ugly", model="mine", steps=12, seed=77,
        width=448, height=640, cfg_scale=8.5, sampler="Heun",
    )  # fmt: skip


def test_novelai() -> None:
    comment = {
        "prompt": "1girl, scenery", "steps": 28, "height": 1216, "width": 832, "scale": 5.0,
        "seed": 1234567, "sampler": "k_dpmpp_2m", "uc": "lowres",
    }  # fmt: skip
    chunks = {
        "Title": "AI generated image",
        "Description": "1girl, scenery",
        "Software": "NovelAI",
        "Source": "Stable Diffusion XL C1E1DE52",
        "Comment": json.dumps(comment),
    }
    found = interpret_chunks(chunks, model_fallback="mine")
    assert (found.format, found.prompt, found.negative_prompt) == ("novelai", "1girl, scenery", "lowres")
    assert found.request == GenerationRequest(
        prompt="1girl, scenery", negative_prompt="lowres", model="mine", steps=28, seed=1234567,
        width=832, height=1216, cfg_scale=5.0, sampler="DPM++ 2M",
    )  # fmt: skip


def test_fooocus_json_and_a1111_schemes() -> None:
    metadata = {
        "prompt": "a goldfish", "negative_prompt": "blur", "steps": 30, "guidance_scale": 4,
        "seed": "12345", "resolution": "(896, 1152)", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras",
        "base_model": "juggernautXL_v8Rundiffusion.safetensors", "version": "Fooocus v2.4.3",
        "metadata_scheme": "fooocus",
    }  # fmt: skip
    found = interpret_chunks({"parameters": json.dumps(metadata), "fooocus_scheme": "fooocus"})
    assert (found.format, found.prompt, found.negative_prompt) == ("fooocus", "a goldfish", "blur")
    assert found.request == GenerationRequest(
        prompt="a goldfish", negative_prompt="blur", model="juggernautXL_v8Rundiffusion", steps=30,
        cfg_scale=4.0, seed=12345, width=896, height=1152, sampler="DPM++ 2M SDE Karras",
    )  # fmt: skip

    found = interpret_chunks({"parameters": A1111_TEXT, "fooocus_scheme": "a1111"})
    assert (found.format, found.prompt) == ("fooocus", "a fox, at night")


def test_unknown_and_junk_chunks() -> None:
    found = interpret_chunks({"Software": "GIMP", "prompt": "{not json", "Comment": "[1, 2]"})
    assert (found.format, found.prompt, found.request) == ("unknown", "", None)
    assert found.raw["Software"] == "GIMP"
    assert interpret_chunks({"invokeai_metadata": '{"steps": [[[]]], "seed": {}}'}).format == "invokeai"


# --------------------------------------------------------------------------------------------------
# Real files written by other tools (kept outside the repository)

REAL_FILES = [
    ("automatic1111_cropped.png", "a1111", "photo of a duck", 235284042, 15, "UniPC"),
    ("text_after_idat.png", "a1111", "photo of a duck", 235284042, 15, "UniPC"),
    ("fooocus1_cropped.png", "fooocus", "a smiling goldfish", 6952411511246973023, 30, "DPM++ 2M SDE Karras"),
    ("img2img_cropped.png", "comfyui", "photograph of victorian woman", 280823642470253, 20, "DPM++ 2M"),
    ("invokeai_imeta1.png", "invokeai", "digital artwork, oil painting", 3293022630, 35, "Euler"),
    ("invokeai_sdmeta1.png", "invokeai", "professional full body photo", 2980747362, 50, "LMS"),
    ("invokeai_dream1.png", "invokeai", "professional full body photo", 2980747362, 50, "LMS"),
    ("novelai1_cropped.png", "novelai", "masterpiece, best quality", 2253955223, 50, "Euler a"),
]


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared metadata fixtures are not available")
@pytest.mark.parametrize(("name", "tool", "prompt", "seed", "steps", "sampler"), REAL_FILES)
def test_real_files(name: str, tool: str, prompt: str, seed: int, steps: int, sampler: str) -> None:
    found = read_image_metadata(FIXTURES / name, model_fallback="mine")
    assert found.format == tool
    assert found.prompt.startswith(prompt)
    assert found.request is not None
    # Seeds beyond 32 bits (Fooocus, ComfyUI) are kept exactly, up to 2**64 - 1.
    assert (found.request.seed, found.request.steps, found.request.sampler) == (seed, steps, sampler)


# Written to kill mutants that survived `mutmut run` (docs/mutation.md).
def test_parameters_text_in_odd_but_real_shapes_is_split_correctly() -> None:
    def split(text):
        parsed = parse_parameters(text)
        return parsed.prompt, parsed.negative_prompt, dict(parsed.settings)

    settings = {"Steps": "20", "Sampler": "Euler"}
    # Bytes with a broken UTF-8 sequence: replaced, not refused.
    assert split(b"a \xff cat\nSteps: 20, Sampler: Euler") == ("a \ufffd cat", "", settings)
    # Old Mac line ends, an indented negative line with no space after its colon.
    assert split("a cat\r  Negative prompt:blurry\rSteps: 20, Sampler: Euler") == ("a cat", "blurry", settings)
    # A negative prompt and no settings line is still A1111 text.
    assert split("a cat\nNegative prompt: blurry\nugly") == ("a cat", "blurry\nugly", {})
    assert split("a cat, red") == ("a cat, red", "", {})
    assert split(None) == ("", "", {})


# Every field another tool's real file gives us, not only the first few: a field read but never
# checked is a field that can silently go wrong (issue 23).
REAL_SETTINGS = {
    "automatic1111_cropped.png": (
        "photo of a duck", "monochrome",
        {"Steps": "15", "Sampler": "UniPC", "CFG scale": "5", "Seed": "235284042", "Size": "512x400",
         "Model hash": "c0d1994c73", "Model": "realistic_realisticVisionV20_v20"},
        ("realistic_realisticVisionV20_v20", 5.0, 512, 400, 1),
    ),
    "fooocus1_cropped.png": (
        "a smiling goldfish", "",
        {"Steps": "30", "Sampler": "DPM++ 2M SDE", "Schedule type": "Karras", "CFG scale": "4",
         "Seed": "6952411511246973023", "Size": "768x1280", "Model hash": "aeb7e9e689",
         "Model": "juggernautXL_v8Rundiffusion", "Clip skip": "2", "Version": "Fooocus v2.4.3"},
        ("juggernautXL_v8Rundiffusion", 4.0, 768, 1280, 2),
    ),
    "img2img_cropped.png": (
        "photograph of victorian woman with wings, sky clouds, meadow grass\n", "watermark, text\n",
        {"Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "normal", "CFG scale": "8.0",
         "Seed": "280823642470253", "Model": "v1-5-pruned-emaonly"},
        ("v1-5-pruned-emaonly", 8.0, 512, 512, 1),
    ),
    "invokeai_dream1.png": (
        None, "rendering, glowing eyes, skinny",
        {"Steps": "50", "Sampler": "LMS", "CFG scale": "5", "Seed": "2980747362", "Size": "512x768"},
        ("mine", 5.0, 512, 768, 1),
    ),
    "invokeai_imeta1.png": (
        "digital artwork, oil painting. painterly brushstrokes, holidays,",
        "grainy+, photo, oversaturated, overexposed, blurry, compressed jpg+, noisy++, unfocused , black and white",
        {"Steps": "35", "Sampler": "Euler", "CFG scale": "8.0", "Seed": "3293022630", "Size": "1024x1024",
         "Model": "juggernautXL"},
        ("juggernautXL", 8.0, 1024, 1024, 1),
    ),
    "invokeai_sdmeta1.png": (
        None, "rendering, glowing eyes, skinny",
        {"Steps": "50", "Sampler": "LMS", "CFG scale": "5", "Seed": "2980747362", "Size": "512x768",
         "Model": "deliberateForInvoke_v08", "Version": "2.3.0"},
        ("deliberateForInvoke_v08", 5.0, 512, 768, 1),
    ),
    "novelai1_cropped.png": (
        "masterpiece, best quality,  cat, space, icon", None,
        {"Steps": "50", "Sampler": "Euler a", "CFG scale": "10.0", "Seed": "2253955223",
         "Source": "Stable Diffusion 1D44365E"},
        ("mine", 10.0, 512, 512, 1),
    ),
}  # fmt: skip


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared metadata fixtures are not available")
@pytest.mark.parametrize("name", sorted(REAL_SETTINGS))
def test_real_files_every_field(name: str) -> None:
    prompt, negative, settings, (model, cfg, width, height, clip_skip) = REAL_SETTINGS[name]
    found = read_image_metadata(FIXTURES / name, model_fallback="mine")
    if prompt is not None:
        assert found.prompt == prompt
    if negative is not None:
        assert found.negative_prompt == negative
    else:
        assert found.negative_prompt.startswith("lowres, bad anatomy, bad hands, text, error")
    assert dict(found.settings) == settings
    assert found.request is not None
    request = found.request
    assert (request.model, request.cfg_scale, request.width, request.height, request.clip_skip) == (
        model, cfg, width, height, clip_skip)  # fmt: skip
    assert request.prompt == found.prompt and request.negative_prompt == found.negative_prompt


def test_invokeai_1_and_2_keep_the_whole_prompt_without_the_bracketed_negative() -> None:
    found = read_image_metadata(FIXTURES / "invokeai_sdmeta1.png") if FIXTURES.is_dir() else None
    dream = interpret_chunks(
        {"Dream": '"a cat [blurry] on a mat [ugly, dark]" -s 12 -S 7 -W 64 -H 128 -C 6.5 -A k_euler'}
    )
    assert (dream.format, dream.prompt, dream.negative_prompt) == ("invokeai", "a cat on a mat", "blurry, ugly, dark")
    assert dict(dream.settings) == {
        "Steps": "12",
        "Sampler": "Euler",
        "CFG scale": "6.5",
        "Seed": "7",
        "Size": "64x128",
    }
    if found is not None:
        assert "[" not in found.prompt and found.prompt.endswith("film grain, low contrast")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "The Marble metadata in this image is not valid JSON."),
        ("[1, 2]", "The Marble metadata in this image is not a JSON object."),
        ('{"schema_version": 0, "request": {}}', "The Marble metadata has an unknown schema version 0."),
        ('{"schema_version": true, "request": {}}', "The Marble metadata has an unknown schema version True."),
        ('{"request": 5}', "The Marble metadata in this image has no request."),
        ('{"request": {"model_config": 5}}', "The Marble metadata in this image has a malformed model config."),
    ]
    + [
        (json.dumps({"request": {field: 5}}), "The Marble metadata in this image has a malformed request.")
        for field in ("prompt", "negative_prompt", "model", "sampler", "device", "precision")
    ],
)
def test_marble_chunk_errors_are_whole_sentences(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_marble_json(text)
    assert str(caught.value) == message


def test_marble_chunk_without_a_version_is_version_1_and_a_config_path_is_kept() -> None:
    made = from_marble_json(json.dumps({"request": {"prompt": "p", "model": "m", "model_config": "v1.yaml"}}))
    assert (made.prompt, made.model, made.model_config) == ("p", "m", "v1.yaml")


def test_marble_chunk_names_the_app_hash_and_the_scheduler_used() -> None:
    made = request(prompt="café ☕", sampler="default")
    document = json.loads(marble_json(made, 5, SD15, VERSION, "Euler a"))
    assert (document["app"], document["model_hash"], document["sampler_used"]) == ("marble", "6ce0161689", "Euler a")
    assert document["request"]["model"] == "v1-5-pruned-emaonly"
    assert marble_json(made, 5, SD15, VERSION).isascii()  # a plain tEXt chunk
    chosen = json.loads(marble_json(request(sampler="DDIM"), 5, None, VERSION, "Euler a"))
    assert "sampler_used" not in chosen and "model_hash" not in chosen
    chunks = png_text_chunks(made, 5, SD15, VERSION, "Euler a", 2, {"Denoising strength": "0.5"})
    assert json.loads(chunks["marble"]) == document
    assert "Sampler: Euler a" in chunks["parameters"] and "Denoising strength: 0.5" in chunks["parameters"]
    assert "Model hash: 6ce0161689" in chunks["parameters"]


def test_values_are_quoted_for_a_carriage_return_and_keep_their_unicode() -> None:
    text = format_parameters(request(), 1, None, VERSION, extra={"Note": "a\rb", "Place": "café ☕"})
    assert 'Note: "a\\rb"' in text and "Place: café ☕" in text
    quoted = format_parameters(request(), 1, None, VERSION, extra={"Place": "café, ☕"})
    assert 'Place: "café, ☕"' in quoted


@pytest.mark.parametrize(
    ("comment", "text"),
    [
        ("  plain\x00", "  plain"),
        ("\x00\x00", None),
        (b"UNICODE\x00\xfe\xff" + "a, b".encode("utf-16-be"), "a, b"),
        (b"UNICODE\x00\xff\xfe" + "a, b".encode("utf-16-le"), "a, b"),
        (b"UNICODE\x00" + "ab\u4e00".encode("utf-16-be") + b"\x00", "ab\u4e00"),
        (b"ASCII\x00\x00\x00caf\xc3\xa9\x00", "café"),
        (b"\x00" * 8 + b"plain", "plain"),
        (b"no tag here", "no tag here"),
        (b"UNICODE\x00", None),
        (12, None),
    ],
)
def test_exif_user_comment_encodings(comment: object, text: str | None) -> None:
    assert _decode_user_comment(comment) == text


def test_comfyui_primitives_custom_samplers_and_junk_nodes() -> None:
    """Values linked from primitive nodes of every kind; a stock sampler chosen over a custom node with
    positive/negative inputs even when the custom one has the smaller id; junk nodes skipped."""
    graph = {
        "0": ["not", "a node"],
        "1": {"class_type": "Junk"},
        "2": {"class_type": "MyGuider", "inputs": {"positive": ["7", 0], "negative": ["8", 0], "cfg": 1}},
        "3": {"class_type": "PrimitiveInt", "inputs": {"int": 30}},
        "4": {"class_type": "PrimitiveFloat", "inputs": {"float": 4.5}},
        "5": {"class_type": "Seed", "inputs": {"seed": 77}},
        "6": {"class_type": "PrimitiveString", "inputs": {"string": "euler_ancestral"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox"}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "blur"}},
        "9": {"class_type": "Sched", "inputs": {"value": "normal"}},
        "11": {
            "class_type": "KSamplerAdvanced",
            "inputs": {"positive": ["7", 0], "negative": ["8", 0], "steps": ["3", 0], "cfg": ["4", 0],
                       "noise_seed": ["5", 0], "sampler_name": ["6", 0], "scheduler": ["9", 0]},
        },
    }  # fmt: skip
    found = interpret_chunks({"prompt": json.dumps(graph)}, model_fallback="m")
    assert (found.format, found.prompt, found.negative_prompt) == ("comfyui", "a fox", "blur")
    assert dict(found.settings) == {
        "Steps": "30", "Sampler": "Euler a", "Schedule type": "normal", "CFG scale": "4.5", "Seed": "77",
    }  # fmt: skip
    # Without a stock sampler, the custom node with positive/negative inputs is the sampler.
    del graph["11"]
    custom = interpret_chunks({"prompt": json.dumps(graph)}, model_fallback="m")
    assert (custom.prompt, dict(custom.settings)) == ("a fox", {"CFG scale": "1"})


def test_jpeg_comment_is_the_parameters_when_exif_has_none(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(path, "JPEG", comment=A1111_TEXT.encode("utf-8") + b"\xff")
    found = read_image_metadata(path)
    assert found.raw["comment"] == A1111_TEXT + "\ufffd"
    assert (found.format, found.prompt, found.negative_prompt) == ("a1111", "a fox, at night", "blur")
    Image.new("RGB", (8, 8)).save(path, "JPEG", comment=b"\x00 \n")
    assert dict(read_image_metadata(path).raw) == {}


def test_novelai_is_known_by_its_software_or_its_keys_and_falls_back_to_the_description() -> None:
    comment = json.dumps({"uc": "blur", "scale": 7, "steps": 9, "width": 64, "height": 96})
    found = interpret_chunks({"Comment": comment, "Description": "a cat", "Source": "NAI v3"}, model_fallback="m")
    assert (found.format, found.prompt, found.negative_prompt) == ("novelai", "a cat", "blur")
    assert dict(found.settings) == {"Steps": "9", "CFG scale": "7", "Size": "64x96", "Source": "NAI v3"}
    by_software = interpret_chunks({"Comment": '{"steps": 3}', "Software": "NovelAI"})
    assert (by_software.format, by_software.prompt, dict(by_software.settings)) == ("novelai", "", {"Steps": "3"})
    assert interpret_chunks({"Comment": '{"steps": 3}', "Software": "Other"}).format == "unknown"


def test_other_tools_samplers_we_do_not_know_are_shown_as_written() -> None:
    data = {"prompt": "p", "sampler": "my_sampler", "scheduler": "  ", "resolution": "(640, 512)", "steps": 5}
    found = interpret_chunks({"parameters": json.dumps(data)}, model_fallback="m")
    assert (found.format, dict(found.settings)) == (
        "fooocus",
        {"Steps": "5", "Sampler": "my_sampler", "Size": "640x512"},
    )
    data |= {"scheduler": "exponential", "resolution": "640"}
    found = interpret_chunks({"parameters": json.dumps(data)}, model_fallback="m")
    assert dict(found.settings) == {"Steps": "5", "Sampler": "my_sampler", "Schedule type": "exponential"}


def test_invokeai_2_prompt_lists_and_3_model_dicts() -> None:
    image = {"prompt": [{"prompt": "a fox [blur]"}, "junk", {"weight": 1}, {"prompt": "at night"}], "cfg_scale": 6}
    v2 = interpret_chunks({"sd-metadata": json.dumps({"image": image, "app_version": "2.1"})}, model_fallback="m")
    assert (v2.prompt, v2.negative_prompt) == ("a fox, at night", "blur")
    assert dict(v2.settings) == {"CFG scale": "6", "Version": "2.1"}
    for model in ({"model_name": "juggernaut", "name": "other"}, {"name": "juggernaut"}):
        v3 = interpret_chunks({"invokeai_metadata": json.dumps({"positive_prompt": "p", "model": model})})
        assert v3.settings["Model"] == "juggernaut"


def test_small_readers_and_writers_named_by_their_survivors() -> None:
    # A ComfyUI graph with no sampler is still ComfyUI's, with nothing to show.
    bare = interpret_chunks({"prompt": json.dumps({"1": {"class_type": "LoadImage", "inputs": {}}})})
    assert (bare.format, bare.prompt, bare.negative_prompt, dict(bare.settings)) == ("comfyui", "", "", {})
    # A Flux-style UNETLoader names the model by `unet_name`.
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors"}},
        "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox"}},
    }
    assert interpret_chunks({"prompt": json.dumps(graph)}).settings["Model"] == "flux1-dev"
    # A marble chunk alone: the settings shown are those its request would write.
    made = request(sampler="DDIM", steps=12)
    alone = interpret_chunks({"marble": marble_json(made, 99, None, VERSION)})
    assert dict(alone.settings) == dict(parse_parameters(format_parameters(made, 99, None, "?")).settings)
    assert (alone.settings["Steps"], alone.settings["Seed"], alone.settings["Sampler"]) == ("12", "99", "DDIM")
    # The `Sampler` value written for a request's sampler.
    assert written_sampler("default", "Euler a") == "Euler a"
    assert written_sampler("DPM++ 2M Karras", "Euler a") == "DPM++ 2M"
    assert written_sampler("default", None) == ""
    # Bytes that are not an image are named as image data.
    with pytest.raises(InvalidRequest) as caught:
        read_text_chunks(b"plain text")
    assert str(caught.value).startswith("The image data is not a PNG, JPEG or WebP image")


# Found by a mutation sweep of metadata.py (2026-12-07): each test below failed with one rule of the reader removed.


def test_model_names_read_from_files_are_never_dots_and_hold_no_control_characters():
    from desktop.engine.metadata import clean_model_name

    assert clean_model_name("..") == "" and clean_model_name("models/.") == ""
    assert clean_model_name("sd\x00xl\x1b_base.safetensors") == "sdxl_base"
    parsed = parse_parameters("a cat\nSteps: 20, Seed: 5, Model: ..")
    assert request_from_parameters(parsed, "fallback").model == "fallback"


def test_text_that_is_not_a1111s_comes_back_whole():
    # No settings line and no negative prompt: the prompt is the text as it is, line ends and spaces included.
    text = "  a cat\r\non a mat  "
    parsed = parse_parameters(text)
    assert (parsed.prompt, parsed.negative_prompt, dict(parsed.settings)) == (text, "", {})
    # Two pairs without Steps are prompt text too (A1111 wants Steps, or three pairs, to call a line settings).
    two = "a cat\nstyle: ink, mood: calm"
    assert (parse_parameters(two).prompt, dict(parse_parameters(two).settings)) == (two, {})
    three = "a cat\nstyle: ink, mood: calm, light: soft"
    assert parse_parameters(three).settings["light"] == "soft"


def test_a_quoted_value_with_text_after_it_is_read_as_written():
    settings = parse_parameters('a cat\nSteps: 20, Note: "a" b, Seed: 5').settings
    assert (settings["Note"], settings["Seed"]) == ('"a" b', "5")


def test_invalid_numbers_and_the_multiplication_sign():
    request = request_from_parameters(
        parse_parameters("a cat\nSteps: 20, CFG scale: nan, Seed: inf, Size: 512×768, Tiling: False"), "m"
    )
    default = GenerationRequest(prompt="a cat", model="m")
    assert (request.cfg_scale, request.seed) == (default.cfg_scale, default.seed)
    assert (request.width, request.height, request.tiling) == (512, 768, False)
    assert request_from_parameters(parse_parameters("a cat\nSteps: 20, Tiling: True"), "m").tiling


def test_a_schedule_marble_lacks_for_a_sampler_reads_as_the_plain_sampler():
    assert (resolve_sampler("Heun Exponential"), resolve_sampler("DDIM Karras")) == ("Heun", "DDIM")
    assert resolve_sampler("LMS", "Exponential") == "LMS" and resolve_sampler("LMS Karras") == "LMS Karras"
