"""Flux.2's step previews (its packed, batch-normalised latents unpatchified to the VAE's 32 channels and
pictured by the published 32-channel table) and its multi-reference editing (`reference_images` passed as
the pipelines' `image=`, pixel-identical to bare diffusers, within each model's limit), on tiny models."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from PIL import Image

from desktop.engine.backends.preview import latents_to_rgb
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.imaging import load_source
from desktop.engine.library.dit import DitInfo, reference_image_limit
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_flux2 import build_tiny_flux2_dev, build_tiny_flux2_klein


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux2-refs")
    found = {}
    # Klein with the real VAE's 32 latent channels (128 once patchified), so the previews use Flux.2's table.
    for name, pipe in (("klein32", build_tiny_flux2_klein(latent_channels=32)), ("klein", build_tiny_flux2_klein()),
                       ("dev", build_tiny_flux2_dev())):  # fmt: skip
        pipe.save_pretrained(str(tmp / name), safe_serialization=True)
        found[name] = tmp / name
    return found


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def _image(tmp_path, name: str, flip: bool = False):
    gradient = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    gradient = gradient[:, ::-1] if flip else gradient
    path = tmp_path / name
    Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], axis=-1)).save(path)
    return path


def _normalised(pipe, latents: torch.Tensor) -> torch.Tensor:
    """The pipeline's decoded-side latents (B, 32, H, W) back in the batch-normalised space the transformer
    and the preview table work in, with the pipeline's own patchify (independent of Marble's unpacking)."""
    patches = pipe._patchify_latents(latents)
    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
    return pipe._unpatchify_latents((patches - mean) / std)


def test_flux2_previews_every_step_at_the_latent_size_ending_on_the_final_latents(paths, folders):
    # Not square, so a transposed unpacking cannot pass; 3 steps, a preview at each.
    request = request_for(folders["klein32"], steps=3, cfg_scale=1.0, width=96, height=64)
    batch, steps = run(make_backend(paths, preview_every=1), request)
    previews = [info.preview for info in steps]
    assert [info.step for info in steps] == [1, 2, 3]
    # The tiny VAE halves the size: 32 channels of 32 x 48 latents, pictured at that size.
    assert all(p is not None and p.shape == (32, 48, 3) and p.dtype == np.uint8 for p in previews)
    assert not np.array_equal(previews[0], previews[2])
    # The last step's estimate of the clean latents is the final latents: the preview is the table applied to
    # what the pipeline itself unpacks (output_type="latent"), back in the normalised space.
    pipe = Flux2KleinPipeline.from_pretrained(str(folders["klein32"]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    final = pipe(
        prompt=request.prompt, num_inference_steps=3, width=96, height=64, guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent",
    ).images  # fmt: skip
    expected = latents_to_rgb(_normalised(pipe, final)[0].numpy(), "flux2")
    error = np.abs(previews[2].astype(int) - expected.astype(int))
    assert error.max() <= 2, error.max()  # the watcher's x0 and the scheduler's last step round differently
    # A preview that merely looked plausible would be far off: a random latent's is.
    stranger = latents_to_rgb(torch.randn(32, 32, 48, generator=torch.Generator().manual_seed(0)).numpy(), "flux2")
    assert np.abs(stranger.astype(int) - expected.astype(int)).mean() > 10 * max(error.mean(), 0.5)
    # Previews never touch the image.
    quiet, _ = run(make_backend(paths, preview_every=0), request)
    assert np.array_equal(pixels(batch.images[0]), pixels(quiet.images[0]))


def test_the_32_channel_table_is_flux2s_own():
    latents = np.zeros((32, 2, 2), dtype=np.float32)
    latents[3] = 1.0  # the channel ComfyUI's table weighs most towards white
    assert tuple(latents_to_rgb(latents, "flux2")[0, 0]) == (150, 156, 163)  # (1 + factor + offset) * 127.5


def _bare(cls, folder, request, **extra):
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    guidance = request.distilled_cfg_scale if cls is Flux2Pipeline else request.cfg_scale
    image = pipe(
        prompt=request.prompt, num_inference_steps=request.steps, width=request.width, height=request.height,
        guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(request.seed), **extra,
    ).images[0]  # fmt: skip
    return pixels(image)


def test_klein_reads_reference_images_like_bare_diffusers(paths, folders, tmp_path):
    reference = _image(tmp_path, "cat.png")
    request = request_for(folders["klein"], steps=2, cfg_scale=1.0, reference_images=(str(reference),))
    batch, steps = run(make_backend(paths), request)
    expected = _bare(Flux2KleinPipeline, folders["klein"], request, image=[load_source(reference)])
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert all(info.preview is not None for info in steps)  # the reference tokens stay out of the preview
    plain = _bare(Flux2KleinPipeline, folders["klein"], request_for(folders["klein"], steps=2, cfg_scale=1.0))
    assert not np.array_equal(expected, plain)  # the reference really changed the picture


def test_dev_reads_several_reference_images_like_bare_diffusers(paths, folders, tmp_path):
    references = (_image(tmp_path, "a.png"), _image(tmp_path, "b.png", flip=True))
    request = request_for(folders["dev"], steps=2, distilled_cfg_scale=4.0,
                          reference_images=tuple(str(p) for p in references))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    images = [load_source(p) for p in references]
    expected = _bare(Flux2Pipeline, folders["dev"], request, image=images)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, _bare(Flux2Pipeline, folders["dev"], request, image=images[:1]))


def test_reference_limits_come_from_one_rule():
    def info(family, variant):
        return DitInfo(family, variant, "diffusers", 0, "BF16", None, ("transformer",), (1, 1))

    assert [reference_image_limit(i) for i in (info("flux2", "dev"), info("flux2", "klein 4b"),
                                               info("flux2", "klein"), info("qwen-image", "edit-plus"),
                                               info("qwen-image", "edit"), info("flux", "dev"),
                                               info("flux", "schnell"), None)] == [
        10, 4, 4, 2, 0, 1, 0, 0]  # fmt: skip (Flux.1 dev: Kontext's one reference, tests/engine/test_flux_kontext.py)


def test_too_many_or_misplaced_reference_images_are_refused_clearly(paths, folders, tmp_path, tiny_sd15_dir):
    reference = str(_image(tmp_path, "r.png"))
    with pytest.raises(ModelError, match=r"^5 reference images: Flux\.2 klein takes at most 4\.$"):
        run(make_backend(paths), request_for(folders["klein"], steps=2, reference_images=(reference,) * 5))
    with pytest.raises(InvalidRequest, match="11 reference images: no model takes more than 10"):
        request_for(folders["dev"], reference_images=(reference,) * 11)
    # Beside a source image Klein's limit is the same 4 (families_flux2.references_beside_source).
    with pytest.raises(ModelError, match=r"^5 reference images: Flux\.2 klein takes at most 4 besides the source"):
        run(make_backend(paths), request_for(folders["klein"], steps=2, strength=0.5, init_image=reference,
                                             reference_images=(reference,) * 5))  # fmt: skip
    with pytest.raises(ModelError, match="is a Stable Diffusion model: it reads no reference images"):
        run(make_backend(paths), request_for(tiny_sd15_dir, steps=2, reference_images=(reference,)))


def test_the_command_line_passes_flux2_references_and_records_them(folders, tmp_path):
    from tests.e2e.test_cli import in_process

    reference = _image(tmp_path, "cat.png")
    code, _, err = in_process([
        "--home", str(tmp_path / "home"), "generate", "--model", str(folders["klein"]), "--prompt", "the cat",
        "--steps", "2", "--seed", "3", "--width", "64", "--height", "64", "--device", "cpu", "--no-preview",
        "--reference-image", str(reference), "--out", str(tmp_path / "out.png"),
    ])  # fmt: skip
    assert code == 0, err
    metadata = read_image_metadata(tmp_path / "out.png")
    assert metadata.request.reference_images == (str(reference),)
    assert metadata.settings["Reference image hashes"] == hashlib.sha256(reference.read_bytes()).hexdigest()[:10]


def test_klein_image_to_image_previews_each_step_too(paths, folders, tmp_path):
    # Flux2KleinInpaintPipeline packs its latents as the text-to-image pipeline does.
    source = tmp_path / "s.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(source)
    request = request_for(folders["klein32"], steps=4, cfg_scale=1.0, init_image=str(source), strength=0.75,
                          width=96, height=64)  # fmt: skip
    _, steps = run(make_backend(paths), request)
    assert [info.preview.shape for info in steps] == [(32, 48, 3)] * 3  # int(4 x 0.75) steps
