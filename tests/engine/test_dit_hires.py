"""The hires fix for the DiT families (it was silently ignored): the first pass at the job's size, its picture
(a pixel upscaler) or its latents (a latent one, unpacked) upscaled, then the family's image-to-image pipeline
at the hires denoising strength, seeded with the job's seeds -- pixel-identical to doing the same by hand with
bare diffusers, for a batch too. A model without a plain image-to-image pipeline says the hires fix was ignored
instead of leaving it unsaid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    ChromaImg2ImgPipeline,
    ChromaPipeline,
    Flux2KleinInpaintPipeline,
    Flux2KleinPipeline,
    FluxImg2ImgPipeline,
    QwenImageImg2ImgPipeline,
    QwenImagePipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
    ZImageImg2ImgPipeline,
    ZImagePipeline,
)
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from desktop.engine.backends.base import StepInfo
from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_dit_prompt_cache import encoder_calls
from tests.engine.test_model_families import bare_flux
from tests.support.tiny_chroma import build_tiny_chroma
from tests.support.tiny_dit import build_tiny_flux, build_tiny_sd3, save_pipeline
from tests.support.tiny_flux2 import build_tiny_flux2_dev, build_tiny_flux2_klein
from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image

VALUES = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=4, seed=7, hires_fix=True, hires_scale=2.0,
              hires_denoise=0.5, hires_steps=6, hires_upscaler="Lanczos")  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit-hires")
    folders = {"flux": save_pipeline(build_tiny_flux(), tmp / "flux"),
               "sd3": save_pipeline(build_tiny_sd3(), tmp / "sd3")}  # fmt: skip
    for name, build in (("chroma", build_tiny_chroma), ("qwen-image", build_tiny_qwen_image),
                        ("z-image", build_tiny_z_image), ("flux2-dev", build_tiny_flux2_dev),
                        ("flux2-klein", build_tiny_flux2_klein)):  # fmt: skip
        build().save_pretrained(str(tmp / name), safe_serialization=True)
        folders[name] = tmp / name
    return folders


def test_flux_hires_fix_is_the_two_passes_by_hand(folders, tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(folders["flux"], **VALUES)
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128)
    assert not [note for note in batch.notes if "hires" in note.lower()]

    bare = bare_flux(folders["flux"])
    first = bare(prompt=request.prompt, num_inference_steps=4, width=64, height=64, guidance_scale=3.5,
                 generator=torch.Generator("cpu").manual_seed(7)).images[0]  # fmt: skip
    second = FluxImg2ImgPipeline(**bare.components)
    second.set_progress_bar_config(disable=True)
    expected = second(prompt=request.prompt, image=first.resize((128, 128), Image.Resampling.LANCZOS), strength=0.5,
                      num_inference_steps=6, width=128, height=128, guidance_scale=3.5,
                      generator=[torch.Generator("cpu").manual_seed(7)]).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    # One job's progress through both passes: 4 steps, then the last 3 of 6.
    assert [(s.step, s.total) for s in steps] == [(1, 7), (2, 7), (3, 7), (4, 7), (5, 7), (6, 7), (7, 7)]
    # The same job again: neither pass runs the text encoders (dit_prompt_cache.py), the same picture.
    backend = make_backend(paths)
    run(backend, request)
    calls = encoder_calls(backend)
    again, _ = run(backend, request)
    assert calls == [] and np.array_equal(pixels(again.images[0]), pixels(expected))
    # Without the hires fix, the first pass alone.
    plain, _ = run(make_backend(paths), request_for(folders["flux"], **(VALUES | {"hires_fix": False})))
    assert plain.images[0].size == (64, 64) and np.array_equal(pixels(plain.images[0]), pixels(first))


def test_a_family_without_image_to_image_says_the_hires_fix_was_ignored(folders, tmp_path, monkeypatch):
    # Every family that draws from text has an image-to-image pass now (Flux.2 dev's was the last missing, until
    # 2026-12-07: tests/engine/test_flux2.py); the edit and fill models draw from a source only. So one is taken
    # away here, to see the job still runs its first pass and says so.
    from desktop.engine.backends import families

    monkeypatch.setattr(families, "edits", lambda family, variant="", mode="img2img": False)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(folders["flux2-dev"], **(VALUES | {"distilled_cfg_scale": 4.0}))
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (64, 64)
    assert any("hires fix" in note and "Flux.2 dev" in note and "ignored" in note for note in batch.notes), batch.notes
    assert all(isinstance(s, StepInfo) and s.total == 4 for s in steps)


@pytest.mark.parametrize("family", ["sd3", "qwen-image", "z-image"])
def test_the_other_families_with_image_to_image_run_the_second_pass_too(folders, tmp_path, family):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(folders[family], **(VALUES | {"negative_prompt": "blurry", "cfg_scale": 4.0}))
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (128, 128) and not [n for n in batch.notes if "hires" in n.lower()]
    assert steps[-1].step == steps[-1].total > 4  # both passes counted as one job
    plain, _ = run(make_backend(paths), request_for(folders[family], **(VALUES | {"hires_fix": False})))
    assert plain.images[0].size == (64, 64)


def bare_pipelines(family, folder):
    """The family's text-to-image pipeline loaded with bare diffusers, and its image-to-image one on the same parts."""
    if family == "flux":
        first = bare_flux(folder)
        return first, FluxImg2ImgPipeline(**first.components)
    first_class, second_class = {"sd3": (StableDiffusion3Pipeline, StableDiffusion3Img2ImgPipeline),
                                 "chroma": (ChromaPipeline, ChromaImg2ImgPipeline),
                                 # Klein's image-to-image is its inpainting pipeline with everything masked.
                                 "flux2-klein": (Flux2KleinPipeline, Flux2KleinInpaintPipeline),
                                 "qwen-image": (QwenImagePipeline, QwenImageImg2ImgPipeline),
                                 "z-image": (ZImagePipeline, ZImageImg2ImgPipeline)}[family]  # fmt: skip
    extra = shipped_tokenizers(Resources.default(), folder, family) if family in ("sd3", "chroma") else {}
    first = first_class.from_pretrained(str(folder), local_files_only=True, **extra)
    return first, second_class(**first.components)


def by_hand(family, folder, request, size, upscaled, padded=None):
    """Both passes with bare diffusers: each family's prompt arguments written out, one picture per seed.
    `padded`: the second pass run at that size, its input padded by repeating the edge, its pictures cropped."""
    padded = padded or upscaled
    first, second = bare_pipelines(family, folder)
    for pipe in (first, second):
        pipe.set_progress_bar_config(disable=True)
    guidance = {"flux": {"guidance_scale": 3.5},
                "sd3": {"negative_prompt": "blurry", "guidance_scale": 4.0},
                "chroma": {"negative_prompt": "blurry", "guidance_scale": 4.0},
                "flux2-klein": {"guidance_scale": 1.0},
                "qwen-image": {"negative_prompt": "blurry", "true_cfg_scale": 4.0},
                "z-image": {"negative_prompt": "blurry", "guidance_scale": 4.0}}[family]  # fmt: skip
    seeds = [request.seed_for(0, k) for k in range(request.batch_size)]
    common = dict(prompt=request.prompt, num_images_per_prompt=len(seeds), **guidance)
    latent = request.hires_upscaler.startswith("Latent")
    result = first(**common, num_inference_steps=4, width=size, height=size, output_type="latent" if latent else "pil",
                   generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds]).images  # fmt: skip
    if latent:
        factor = first.vae_scale_factor
        if family in ("flux", "chroma"):  # packed 2x2 patches (B, tokens, 4C)
            result = first._unpack_latents(result, size, size, factor)
        elif family == "qwen-image":  # packed, and one video frame (B, C, 1, h, w)
            result = first._unpack_latents(result, size, size, factor)[:, :, 0]
        mode, antialias = {"Latent": ("bilinear", False), "Latent (bicubic antialiased)": ("bicubic", True)}[
            request.hires_upscaler
        ]
        image = torch.nn.functional.interpolate(result.float(), size=(upscaled // factor,) * 2, mode=mode,
                                                antialias=antialias).to(result.dtype)  # fmt: skip
        extra = (padded - upscaled) // factor
        image = torch.nn.functional.pad(image, (0, extra, 0, extra), mode="replicate")
        if family == "flux2-klein":  # the VAE's latents (Klein's pipeline gives them back); its inpainting takes
            image = second._patchify_latents(image)  # them as 2x2 patches, and normalises them itself
        else:  # Z-Image's image-to-image reads only 4-channel tensors as latents unless told its own count.
            second.image_processor = VaeImageProcessor(vae_scale_factor=factor * 2,
                                                       vae_latent_channels=result.shape[1])  # fmt: skip
    else:
        extra = ((0, padded - upscaled), (0, padded - upscaled), (0, 0))
        image = [Image.fromarray(np.pad(np.asarray(picture.resize((upscaled, upscaled), Image.Resampling.LANCZOS)),
                                        extra, mode="edge")) for picture in result]  # fmt: skip
    mask = {"mask_image": Image.new("L", (padded, padded), 255)} if family == "flux2-klein" else {}
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    pictures = second(**common, image=image, strength=0.5, num_inference_steps=6, width=padded, height=padded,
                      generator=generators, **mask).images  # fmt: skip
    return [picture.crop((0, 0, upscaled, upscaled)) for picture in pictures]


@pytest.mark.parametrize(
    ("family", "upscaler", "scale"),
    [("flux", "Latent", 2.0), ("sd3", "Latent", 2.0), ("qwen-image", "Latent", 2.0), ("chroma", "Latent", 2.0),
     ("z-image", "Latent (bicubic antialiased)", 1.5), ("flux", "Lanczos", 2.0), ("z-image", "Lanczos", 1.5),
     ("flux2-klein", "Lanczos", 2.0), ("flux2-klein", "Latent", 2.0)],
)  # fmt: skip
def test_a_batch_of_two_with_each_upscaler_is_the_two_passes_by_hand(folders, tmp_path, family, upscaler, scale):
    # A latent upscaler interpolates the first pass's latents, unpacked (no VAE decode and encode between the
    # passes; it was Lanczos under the latent name); a batch has one picture per seed in both passes (the
    # second pass asked for one picture with two generators and failed).
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    guidance = {"negative_prompt": "blurry", "cfg_scale": 4.0} if family not in ("flux", "flux2-klein") else {}
    guidance |= {"cfg_scale": 1.0} if family == "flux2-klein" else {}
    request = request_for(folders[family], **(VALUES | guidance | {"hires_upscaler": upscaler, "hires_scale": scale,
                                                                   "batch_size": 2}))  # fmt: skip
    batch, steps = run(make_backend(paths), request)
    upscaled = int(64 * scale)
    assert [image.size for image in batch.images] == [(upscaled, upscaled)] * 2
    expected = by_hand(family, folders[family], request, 64, upscaled)
    for image, reference in zip(batch.images, expected, strict=True):
        assert np.array_equal(pixels(image), pixels(reference))
    assert steps[-1].step == steps[-1].total == 4 + 3
    assert [note for note in batch.notes if "hires fix" in note] == []  # Klein's ran as Lanczos before 2026-12-07


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory):
    """Z-Image with the real model's latents: 16 channels, a latent for 8x8 pixels, so 16-pixel patches."""
    folder = tmp_path_factory.mktemp("z-real-shaped") / "z"
    build_tiny_z_image(latent_channels=16, vae_blocks=4).save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_a_size_between_whole_patches_runs_padded_and_is_cropped_to_the_size_asked(real_shaped, tmp_path):
    # 88 pixels are 11 latents, half a patch short: diffusers' Z-Image refused them ("Height must be divisible
    # by 16") and Flux's made 80. Marble runs 96 and crops 88, as Forge and ComfyUI pad the latents and crop.
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(real_shaped, width=88, height=80, steps=2, seed=3, negative_prompt="", cfg_scale=4.0)
    batch, _ = run(make_backend(paths), request)
    first, _ = bare_pipelines("z-image", real_shaped)
    first.set_progress_bar_config(disable=True)
    expected = first(prompt=request.prompt, negative_prompt=None, guidance_scale=4.0, num_inference_steps=2,
                     width=96, height=80, generator=torch.Generator("cpu").manual_seed(3)).images[0]  # fmt: skip
    assert batch.images[0].size == (88, 80)
    assert np.array_equal(pixels(batch.images[0]), pixels(expected.crop((0, 0, 88, 80))))


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_a_hires_size_between_whole_patches_comes_out_at_that_size(real_shaped, tmp_path, upscaler):
    # 64 -> 88: the second pass runs at 96 (its latents or picture padded by repeating the edge) and is cropped.
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    values = VALUES | {"negative_prompt": "blurry", "cfg_scale": 4.0, "hires_upscaler": upscaler,
                       "hires_resize_w": 88, "hires_resize_h": 88}  # fmt: skip
    request = request_for(real_shaped, **values)
    batch, steps = run(make_backend(paths), request)
    assert batch.images[0].size == (88, 88) and steps[-1].step == steps[-1].total
    expected = by_hand("z-image", real_shaped, request, 64, 88, padded=96)
    assert np.array_equal(pixels(batch.images[0]), pixels(expected[0]))


def test_a_dit_edit_of_a_source_between_whole_patches_keeps_the_source_size(real_shaped, tmp_path):
    # A 100x75 photo: worked on at 96x80 (the nearest whole patches), given back at 100x75.
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (75, 100, 3), dtype=np.uint8)).save(source)
    request = request_for(real_shaped, init_image=str(source), strength=0.6, steps=2,
                          negative_prompt="", cfg_scale=4.0)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert batch.images[0].size == (100, 75)
