"""LoRAs on Qwen-Image and Z-Image: detected with their family from their tensors in the layouts diffusers
converts (diffusers/PEFT, ComfyUI/ai-toolkit, kohya), applied with `<lora:name:w>` tags pixel-identical to
bare diffusers loading the same file, and refused on another family with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline, ZImagePipeline

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.lora import inspect_lora
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import build_tiny_flux
from tests.support.tiny_dit_loras import peft_lora
from tests.support.tiny_loras import save_lora
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image
from tests.support.tiny_qwen_zimage_loras import QWEN_TARGETS, Z_IMAGE_TARGETS, lora_for

LAYOUTS = ("peft", "comfy", "kohya")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qwen-zimage-loras")
    found = {}
    for family, build, targets in (("qwen-image", build_tiny_qwen_image, QWEN_TARGETS),
                                   ("z-image", build_tiny_z_image, Z_IMAGE_TARGETS)):  # fmt: skip
        pipe = build()
        pipe.save_pretrained(str(tmp / family), safe_serialization=True)
        found[family] = tmp / family
        for layout in LAYOUTS:
            found[family, layout] = lora_for(pipe.transformer, targets, layout, seed=len(found))
    found["flux"] = peft_lora(build_tiny_flux().transformer, seed=9)
    return found


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def arguments(family, request):
    if family == "qwen-image":
        return {"negative_prompt": " ", "true_cfg_scale": request.cfg_scale}
    return {"negative_prompt": "", "guidance_scale": request.cfg_scale}


def bare_image(family, folder, request, tensors=None, weight=1.0):
    cls = QwenImagePipeline if family == "qwen-image" else ZImagePipeline
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if tensors is not None:
        pipe.load_lora_weights({k: v.clone() for k, v in tensors.items()}, adapter_name="x")
        pipe.set_adapters(["x"], [weight])
    image = pipe(
        prompt="a red circle", num_inference_steps=request.steps, width=request.width, height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed), **arguments(family, request),
    ).images[0]  # fmt: skip
    return pixels(image)


@pytest.mark.parametrize("family", ["qwen-image", "z-image"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_qwen_image_and_z_image_loras_are_detected_with_their_family(models, tmp_path, family, layout):
    path = save_lora(models[family, layout], tmp_path / "l.safetensors")
    info = inspect_lora(read_safetensors_header(path), "l")
    label = {"qwen-image": "Qwen-Image", "z-image": "Z-Image"}[family]
    assert (info.family, info.format, info.transformer_width, info.label) == (
        family, "kohya" if layout == "kohya" else "peft", 32, label
    )  # fmt: skip


@pytest.mark.parametrize(("family", "layout"), [("qwen-image", "peft"), ("qwen-image", "kohya"),
                                                ("z-image", "comfy"), ("z-image", "kohya")])  # fmt: skip
def test_a_lora_tag_matches_bare_diffusers_and_changes_the_image(models, paths, family, layout):
    save_lora(models[family, layout], paths.loras / "style.safetensors")
    request = request_for(models[family], prompt="a red circle <lora:style:0.8>", negative_prompt="", steps=2,
                          cfg_scale=1.0)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    expected = bare_image(family, models[family], request, models[family, layout], 0.8)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(family, models[family], request))


def test_a_lora_of_another_family_is_refused_clearly(models, paths):
    save_lora(models["z-image", "peft"], paths.loras / "zstyle.safetensors")
    save_lora(models["flux"], paths.loras / "fluxstyle.safetensors")
    with pytest.raises(ModelError, match=r"'zstyle' does not fit .*it is a LoRA for Z-Image models.*Qwen-Image"):
        run(make_backend(paths), request_for(models["qwen-image"], prompt="x <lora:zstyle:1>", negative_prompt=""))
    with pytest.raises(ModelError, match=r"'fluxstyle' does not fit .*it is a LoRA for Flux\.1 models.*Z-Image"):
        run(make_backend(paths), request_for(models["z-image"], prompt="x <lora:fluxstyle:1>", negative_prompt=""))
    # Z-Image's family, another width (a Lumina-2-sized file, say): refused by the width, not loaded in part.
    wide = {k: torch.zeros(v.shape[0], 48) if k.endswith("lora_A.weight") else v
            for k, v in models["z-image", "peft"].items()}  # fmt: skip
    save_lora(wide, paths.loras / "wide.safetensors")
    with pytest.raises(ModelError, match=r"'wide' does not fit .*its transformer layers have width 48, .* have 32"):
        run(make_backend(paths), request_for(models["z-image"], prompt="x <lora:wide:1>", negative_prompt=""))
