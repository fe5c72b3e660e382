"""Seamless tiling: every Conv2d of the UNet and VAE pads circularly during the job, and only then."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from desktop.engine.backends.base import StepInfo
from desktop.engine.backends.tiling import circular_padding
from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def conv_modes(*modules) -> set[str]:
    layers = (layer for module in modules for layer in module.modules())
    return {layer.padding_mode for layer in layers if isinstance(layer, torch.nn.Conv2d)}


def test_convolutions_pad_circularly_during_the_job_and_are_restored(paths, tiny_sd15_dir):
    backend = make_backend(paths)
    request = request_for(tiny_sd15_dir, tiling=True)
    backend.load(request)
    pipe = backend._pipe
    seen: list[set[str]] = []

    def on_step(info: StepInfo) -> None:
        seen.append(conv_modes(pipe.unet, pipe.vae))

    tiled = backend.generate(request, 0, on_step, CancelToken())
    assert seen and all(modes == {"circular"} for modes in seen)
    assert conv_modes(pipe.unet, pipe.vae) == {"zeros"}
    flat, _ = run(backend, request_for(tiny_sd15_dir))
    again, _ = run(backend, request_for(tiny_sd15_dir, tiling=True))
    assert np.array_equal(pixels(tiled.images[0]), pixels(again.images[0]))
    assert not np.array_equal(pixels(tiled.images[0]), pixels(flat.images[0]))


def test_tiled_image_wraps_around(tiny_sd15_dir):
    """With every convolution circular the image lives on a torus: shifting the starting noise by whole
    latent pixels (a multiple of the UNet's downsampling) shifts the image by 8x as many pixels, wrapping
    round the edges. A plain image is not shift-equivariant at its borders."""
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))

    def image(latents: torch.Tensor) -> np.ndarray:
        return pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
                    latents=latents, output_type="np").images[0]

    with circular_padding([pipe.unet, pipe.vae]):
        tiled, tiled_shifted = image(noise), image(torch.roll(noise, shifts=(4, 2), dims=(2, 3)))
    flat, flat_shifted = image(noise), image(torch.roll(noise, shifts=(4, 2), dims=(2, 3)))
    assert np.allclose(np.roll(tiled, shift=(32, 16), axis=(0, 1)), tiled_shifted, atol=1e-4)
    assert not np.allclose(np.roll(flat, shift=(32, 16), axis=(0, 1)), flat_shifted, atol=1e-2)


def test_padding_modes_come_back_after_an_error():
    reflecting = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
    layers = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), reflecting)
    with pytest.raises(RuntimeError), circular_padding([layers]) as switched:
        assert switched == 2 and conv_modes(layers) == {"circular"}
        raise RuntimeError("boom")
    assert [layer.padding_mode for layer in layers] == ["zeros", "reflect"]
