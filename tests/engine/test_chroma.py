"""Chroma: a tiny random model as a diffusers folder and as a (ComfyUI-prefixed) BFL single file,
detected from its tensors and run offline through Marble, pixel-identical to bare diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import ChromaImg2ImgPipeline, ChromaInpaintPipeline, ChromaPipeline
from PIL import Image

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.native_size import is_dit_family, model_family
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.edit_inputs import source_and_mask
from tests.support.tiny_chroma import build_tiny_chroma, save_chroma_file
from tests.support.tiny_dit import config_folder, save_pipeline


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chroma")
    pipe = build_tiny_chroma()
    return {
        "pipe": pipe,
        "folder": save_pipeline(pipe, tmp / "chroma"),
        "config": config_folder(pipe, tmp / "config"),
        "bfl": save_chroma_file(pipe, tmp / "flux-schnell.safetensors", prefix="model.diffusion_model."),
        "tmp": tmp,
    }


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def chroma_request(model, chroma, **changes):
    values = dict(negative_prompt="blurry, low quality", cfg_scale=4.0, model_config=str(chroma["config"]))
    return request_for(model, **(values | changes))


def bare_chroma(folder):
    pipe = ChromaPipeline.from_pretrained(
        str(folder), local_files_only=True, **shipped_tokenizers(Resources.default(), folder, "chroma")
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(pipe, request):
    return pixels(
        pipe(
            prompt=request.prompt, negative_prompt=request.negative_prompt, guidance_scale=request.cfg_scale,
            num_inference_steps=request.steps, width=request.width, height=request.height,
            max_sequence_length=512, generator=torch.Generator("cpu").manual_seed(request.seed),
        ).images[0]
    )  # fmt: skip


def test_chroma_folder_is_detected_and_matches_bare_diffusers(paths, chroma):
    arch = detect_model(chroma["folder"])
    assert (arch.family, arch.dit.layout, arch.config_name, arch.label) == ("chroma", "diffusers", "chroma", "Chroma")
    # The window's family (it was None, so the prompt counter counted CLIP chunks Chroma has no CLIP for).
    assert model_family(chroma["folder"]) == "chroma" and is_dit_family("chroma")
    request = chroma_request(chroma["folder"], chroma)
    batch, steps = run(make_backend(paths), request)
    expected = bare_image(bare_chroma(chroma["folder"]), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert len(steps) == request.steps
    # True CFG: the negative prompt reaches the model.
    other, _ = run(make_backend(paths), chroma_request(chroma["folder"], chroma, negative_prompt="a green square"))
    assert not np.array_equal(pixels(other.images[0]), expected)


def test_chroma_bfl_single_file_with_text_encoders_from_a_folder_matches(paths, chroma):
    arch = detect_model(chroma["bfl"])
    assert (arch.family, arch.dit.layout, arch.dit.components, arch.dit.blocks) == (
        "chroma", "bfl", ("transformer",), (2, 2)
    )  # fmt: skip
    assert arch.dit.needs_components
    request = chroma_request(chroma["bfl"], chroma, text_encoders=str(chroma["folder"]))
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_chroma(chroma["folder"]), request))


def test_chroma_file_without_text_encoders_or_with_the_wrong_folder_is_refused(paths, chroma, tmp_path):
    with pytest.raises(ModelError, match=r"flux-schnell\.safetensors holds the Chroma transformer only"):
        run(make_backend(paths), chroma_request(chroma["bfl"], chroma))
    clip_only = tmp_path / "clip-only"
    (clip_only / "vae").mkdir(parents=True)
    (clip_only / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]})
    )
    with pytest.raises(ModelError, match=r"Chroma transformer; its text encoders come from a Chroma or Flux\.1"):
        run(make_backend(paths), chroma_request(chroma["bfl"], chroma, text_encoders=str(clip_only)))


def test_shipped_chroma_config_describes_chroma1_hd():
    config = Resources.default().config_folder("chroma")
    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == "ChromaPipeline" and "text_encoder_2" not in index
    transformer = json.loads((config / "transformer" / "config.json").read_text(encoding="utf-8"))
    assert (transformer["num_layers"], transformer["num_single_layers"]) == (19, 38)


def test_chroma_all_in_one_file_uses_its_own_t5_and_vae(paths, chroma):
    from tests.support.tiny_models import vae_to_ldm

    pipe = chroma["pipe"]
    vae = vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    extra = {"text_encoders.t5xxl.transformer." + k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    extra |= {"vae." + k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae.items()}
    path = save_chroma_file(pipe, chroma["tmp"] / "chroma-aio.safetensors", prefix="model.diffusion_model.",
                            extra=extra)  # fmt: skip
    arch = detect_model(path)
    assert arch.dit.components == ("transformer", "t5xxl", "vae") and not arch.dit.needs_components
    request = chroma_request(path, chroma)  # no --text-encoders
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(bare_chroma(chroma["folder"]), request))


def test_chroma_img2img_and_inpaint_match_bare_diffusers(paths, chroma, tmp_path):
    # Refused before ("text-to-image only so far") though diffusers has both pipelines.
    _, _, source, mask = source_and_mask(tmp_path, (12, 16, 48, 40), seed=4)
    backend = make_backend(paths)
    base = bare_chroma(chroma["folder"])
    # diffusers 0.42's ChromaInpaintPipeline reads `guidance_embeds` from the transformer's config, which
    # Chroma's lacks: a bare user sets it as Marble does (families.edit_pipeline).
    base.transformer.register_to_config(guidance_embeds=False)
    common = dict(prompt="a red circle on a blue background", negative_prompt="blurry, low quality",
                  guidance_scale=4.0, num_inference_steps=4, width=64, height=64, max_sequence_length=512)  # fmt: skip
    for cls, extra in ((ChromaImg2ImgPipeline, {}), (ChromaInpaintPipeline, {"mask": str(tmp_path / "mask.png")})):
        request = chroma_request(chroma["folder"], chroma, init_image=str(tmp_path / "source.png"), strength=0.75,
                                 mask_blur=0, **extra)  # fmt: skip
        batch, steps = run(backend, request)
        pipe = cls(**base.components)
        pipe.set_progress_bar_config(disable=True)
        masks = {"mask_image": Image.open(tmp_path / "mask.png").convert("L")} if extra else {}
        out = pixels(pipe(**common, image=source, strength=0.75, generator=torch.Generator("cpu").manual_seed(42),
                          **masks).images[0])  # fmt: skip
        if extra:  # Marble keeps the source's own pixels outside the mask
            out = np.where(mask[..., None] == 255, out, pixels(source))
        assert np.array_equal(pixels(batch.images[0]), out), cls.__name__
        assert len(steps) == 3  # int(4 x 0.75) of the schedule
