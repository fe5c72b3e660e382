"""The panel's LoRAs in A1111's `parameters` prompt as `<lora:NAME:W>` tags, as A1111 writes them."""

from __future__ import annotations

import io

from PIL import Image

from desktop.engine.library.lora import merge_loras, split_lora_tags
from desktop.engine.metadata import (
    format_parameters,
    parse_parameters,
    png_info,
    png_text_chunks,
    read_image_metadata,
)
from desktop.engine.request import GenerationRequest, LoraRef


def request(prompt: str, *loras: LoraRef) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, model="m", negative_prompt="blurry", seed=7, loras=loras)


def test_panel_loras_are_written_as_tags_after_the_prompt():
    text = format_parameters(request("a red fox", LoraRef("detail", 0.8), LoraRef("ink style", 1.0)), 7, None, "1")
    assert text.splitlines()[0] == "a red fox <lora:detail:0.8> <lora:ink style:1>"
    assert text.splitlines()[1] == "Negative prompt: blurry"


def test_a_lora_the_prompt_already_tags_is_not_written_twice():
    text = format_parameters(request("a fox <lora:Detail:0.5>", LoraRef("detail", 0.8)), 7, None, "1")
    assert parse_parameters(text).prompt == "a fox <lora:Detail:0.5>"


def test_no_loras_leave_the_prompt_exactly_as_typed():
    assert format_parameters(request("a red fox, "), 7, None, "1").splitlines()[0] == "a red fox, "
    assert parse_parameters(format_parameters(request(""), 7, None, "1")).prompt == ""


def test_reading_the_text_back_gives_the_loras_and_the_prompt_as_encoded():
    original = request("a red fox,\nin snow", LoraRef("detail", 0.8), LoraRef("ink", -0.25))
    buffer = io.BytesIO()
    chunks = png_text_chunks(original, 7, None, "1")
    del chunks["marble"]  # as another tool (or A1111 itself) would see it: the parameters text only
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=png_info(chunks))
    metadata = read_image_metadata(buffer.getvalue())
    assert metadata.format == "a1111"
    # The reader keeps tags in the prompt, as A1111's paste does; the backend takes them out again.
    text, tagged = split_lora_tags(metadata.request.prompt)
    assert tagged == (LoraRef("detail", 0.8), LoraRef("ink", -0.25))
    assert text == original.prompt
    assert merge_loras(metadata.request.loras, tagged) == original.loras


def test_our_own_json_keeps_the_prompt_and_loras_apart():
    original = request("a red fox", LoraRef("detail", 0.8))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=png_info(png_text_chunks(original, 7, None, "1")))
    metadata = read_image_metadata(buffer.getvalue())
    assert metadata.request.prompt == "a red fox" and metadata.request.loras == original.loras
