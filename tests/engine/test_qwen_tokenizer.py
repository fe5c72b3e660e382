"""Marble's shipped Qwen tokenizer (resources/tokenizers/qwen): Qwen's published files, the ids and
templates the Qwen-Image, Qwen-Image-Edit, Z-Image and Flux.2 Klein pipelines depend on, and a transformer
file run with library parts and no tokenizer folder, pixel-identical to bare diffusers given the same files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from diffusers import ZImagePipeline
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends import qwen_encoders
from desktop.engine.errors import ModelError
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.dit_qwen_zimage import EDIT, QWEN_IMAGE
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_qwen_encoder_library import build_tiny_qwen_with_wan_vae
from tests.engine.test_qwen_zimage import PREFIX, bare_image, qwen_expected
from tests.support.tiny_components import save_ae
from tests.support.tiny_dit import config_folder
from tests.support.tiny_qwen_edit import build_tiny_qwen_edit
from tests.support.tiny_qwen_encoders import save_comfy_qwen, wan_vae_names
from tests.support.tiny_qwen_zimage import (
    build_tiny_qwen_image,
    build_tiny_z_image,
    save_transformer_file,
    shipped_tokenizer,
)

SHIPPED = Resources.default().tokenizers / qwen_encoders.SHIPPED_FOLDER
# Qwen/Qwen3-4B's and Qwen3-8B's tokenizer.json as published (11,422,654 bytes).
PUBLISHED_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
USER_TURN = "<|im_start|>user\n"


def test_the_shipped_tokenizer_is_qwens_published_file_with_its_ids():
    data = (SHIPPED / "tokenizer.json").read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (11_422_654, PUBLISHED_SHA256)
    tokenizer = shipped_tokenizer()
    assert len(tokenizer) == 151_669
    assert tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<think>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [151643, 151644, 151645, 151652, 151655, 151667]
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", "<|im_end|>")


@pytest.mark.parametrize("build", [build_tiny_qwen_image, build_tiny_qwen_edit], ids=["qwen-image", "edit"])
def test_the_templates_system_part_is_as_many_tokens_as_the_pipeline_drops(build):
    # diffusers drops a fixed count of hidden states (34, Edit 64): the system turn and the user turn's
    # opening, counted with Qwen's real tokenizer. Another tokenizer would feed the system prompt to the
    # transformer, or cut the user's words.
    pipe = build()
    template = pipe.prompt_template_encode
    opening = template[: template.index(USER_TURN) + len(USER_TURN)]
    assert len(shipped_tokenizer()(opening).input_ids) == pipe.prompt_template_encode_start_idx


def test_the_chat_template_formats_prompts_as_z_image_and_klein_ask():
    tokenizer = shipped_tokenizer()
    turn = [{"role": "user", "content": "a cat"}]
    # Z-Image passes enable_thinking=True, Flux.2 Klein False (Qwen3 then writes an empty thought).
    z_image = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    klein = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert z_image == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert klein == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def _edit_info() -> DitInfo:
    return DitInfo(family=QWEN_IMAGE, variant=EDIT, layout="diffusers", parameters=0, dtype="F32",
                   quantization=None, components=("transformer",), blocks=(2, 0))  # fmt: skip


def test_an_edit_model_with_no_folder_gets_the_shipped_processor_and_a_named_error_for_a_wrong_folder(tmp_path):
    parts = qwen_encoders.tokenizer_parts(None, _edit_info(), name="edit.safetensors", edit=True, shipped=SHIPPED)
    # A 384 px square (the size the Edit pipeline shows the encoder) is cut into 14 px patches merged 2x2:
    # 28 x 28 patches, read as 196 image tokens between the vision markers.
    source = Image.new("RGB", (384, 384), (200, 40, 40))
    text = "<|vision_start|><|image_pad|><|vision_end|>make it blue"
    out = parts["processor"](text=[text], images=[source], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 28, 28]]
    assert int((out["input_ids"] == 151655).sum()) == 196
    # A folder the user named that holds no tokenizer is refused by name, not replaced silently.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"tokenizer folder .*empty holds no tokenizer\.json .*leave it empty"):
        qwen_encoders.tokenizer_parts(tmp_path / "empty", _edit_info(), name="e", edit=True, shipped=SHIPPED)
    with pytest.raises(ModelError, match=r"Qwen tokenizer is missing from .*Reinstall"):
        qwen_encoders.tokenizer_parts(None, _edit_info(), name="e", edit=True, shipped=tmp_path / "empty")


@pytest.fixture(scope="module")
def shipped_parts(tmp_path_factory):
    """A tiny Z-Image and Qwen-Image of the shipped tokenizer's vocabulary: diffusers folders (holding that
    tokenizer, for bare diffusers), config folders without one, and ComfyUI's single files."""
    tmp = tmp_path_factory.mktemp("qwen-shipped")
    z_image, qwen = build_tiny_z_image(shipped=True), build_tiny_qwen_with_wan_vae(shipped=True)
    for name, pipe in (("zimage", z_image), ("qwen", qwen)):
        pipe.save_pretrained(str(tmp / name), safe_serialization=True)
        config_folder(pipe, tmp / f"{name}-config")
    save_file(wan_vae_names(qwen.vae.state_dict()), str(tmp / "qwen_image_vae.safetensors"))
    return {
        "tmp": tmp,
        "z_model": save_transformer_file(dict(z_image.transformer.state_dict()), tmp / "z.safetensors", prefix=PREFIX),
        "z_encoder": save_comfy_qwen(z_image.text_encoder, tmp / "qwen_3_4b.safetensors"),
        "ae": save_ae(z_image.vae, tmp / "ae.safetensors"),
        "q_model": save_transformer_file(dict(qwen.transformer.state_dict()), tmp / "q.safetensors", prefix=PREFIX),
        "q_encoder": save_comfy_qwen(qwen.text_encoder, tmp / "qwen_2.5_vl_7b.safetensors"),
        "q_vae": tmp / "qwen_image_vae.safetensors",
    }


def test_z_image_and_qwen_image_files_with_library_parts_need_no_tokenizer_folder(tmp_path, shipped_parts):
    parts = shipped_parts
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    for key in ("z_encoder", "q_encoder"):
        library.import_path(parts[key], "encoder")
    for key in ("ae", "q_vae"):
        library.import_path(parts[key], "vae")
    backend = make_backend(paths)
    # A prompt whose words run into BPE merges, and past the tiny models' byte vocabulary.
    prompt = "a lighthouse at dusk, watercolour, <think> gulls"
    z_request = request_for(parts["z_model"], prompt=prompt, steps=2, cfg_scale=4.0, text_encoders="qwen_3_4b",
                            vae="ae", model_config=str(parts["tmp"] / "zimage-config"))  # fmt: skip
    assert z_request.tokenizer_folder is None
    batch, _ = run(backend, z_request)
    expected = bare_image(ZImagePipeline, parts["tmp"] / "zimage", z_request, negative_prompt=z_request.negative_prompt,
                          guidance_scale=z_request.cfg_scale)  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), expected)
    q_request = request_for(parts["q_model"], prompt=prompt, steps=2, cfg_scale=4.0, text_encoders="qwen_2.5_vl_7b",
                            vae="qwen_image_vae", model_config=str(parts["tmp"] / "qwen-config"))  # fmt: skip
    batch, _ = run(backend, q_request)
    assert np.array_equal(pixels(batch.images[0]), qwen_expected(parts["tmp"] / "qwen", q_request))
