"""Memory modes for Flux.1 / SD3: the auto choice from free VRAM and the model's size (a pure function,
with the figures of FLUX.1-dev in bf16 on 12, 16 and 24 GB cards), and fp8 layer-wise casting on the
tiny Flux (it runs on a CPU too) against full precision. The offload modes need CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desktop.engine.backends.dit_memory import DitSizes, choose_dit_mode, needs_reload, peak_bytes
from desktop.engine.backends.memory import choose_mode
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_dit import build_tiny_flux, save_pipeline

GIB = 2**30
# FLUX.1-dev in bf16: 11.9B transformer parameters in 19 double + 38 single blocks, CLIP-L, T5-XXL, VAE.
FLUX_DEV = DitSizes(
    transformer=11_901_408_320 * 2, transformer_blocks=57, encoders=(123_060_480 * 2, 4_762_310_656 * 2),
    vae=83_819_683 * 2,
)  # fmt: skip
# The same as a Q8_0 GGUF transformer: about 8.5 bits a weight, quantised already (no fp8 casting).
FLUX_Q8 = DitSizes(
    transformer=12_700_000_000, transformer_blocks=57, encoders=FLUX_DEV.encoders, vae=FLUX_DEV.vae,
    fp8_possible=False,
)  # fmt: skip
MEGAPIXEL = 1024 * 1024


def free_on(card_gib: int) -> int:
    # What a desktop leaves free of a card: the display and the CUDA context take about half a GiB.
    return int((card_gib - 0.5) * GIB)


@pytest.mark.parametrize(
    ("card", "sizes", "mode"),
    [
        (80, FLUX_DEV, "full"),  # H100: everything fits
        (32, FLUX_DEV, "offload"),  # the 24 GB transformer fits whole, the T5 waits in RAM
        (24, FLUX_DEV, "fp8"),
        (16, FLUX_DEV, "fp8"),
        (12, FLUX_DEV, "group"),
        (8, FLUX_DEV, "group"),
        (4, FLUX_DEV, "sequential"),
        (16, FLUX_Q8, "offload"),  # a GGUF transformer is not cast to fp8
        (12, FLUX_Q8, "group"),
    ],
)
def test_auto_runs_a_12b_flux_on_each_card(card, sizes, mode):
    chosen = choose_dit_mode("auto", "cuda", free_on(card), sizes, MEGAPIXEL)
    assert chosen == mode
    assert peak_bytes(chosen, sizes, MEGAPIXEL) <= free_on(card)


def test_the_estimates_order_the_modes_by_memory():
    peaks = [peak_bytes(mode, FLUX_DEV, MEGAPIXEL) for mode in ("full", "offload", "fp8", "group", "sequential")]
    assert peaks == sorted(peaks, reverse=True)
    # fp8 halves the transformer: the T5 (9.5 GB) and the fp8 transformer (11.9 GB) visit the GPU in turn.
    assert 14 * 10**9 < peak_bytes("fp8", FLUX_DEV, MEGAPIXEL) < 15 * 10**9


def test_forced_modes_and_devices_without_cuda():
    assert choose_dit_mode("sequential", "cuda", free_on(80), FLUX_DEV, MEGAPIXEL) == "sequential"
    assert choose_dit_mode("group", "cpu", None, None, MEGAPIXEL) == "full"  # offloading needs a GPU
    assert choose_dit_mode("fp8", "cpu", None, None, MEGAPIXEL) == "fp8"  # casting works anywhere
    assert choose_dit_mode("auto", "cpu", None, None, MEGAPIXEL) == "full"
    assert choose_dit_mode("fp8", "cuda", free_on(24), FLUX_Q8, MEGAPIXEL) == "offload"  # GGUF: no fp8 casting
    assert choose_dit_mode("fp8", "cpu", None, FLUX_Q8, MEGAPIXEL) == "full"
    assert needs_reload("fp8", "full") and needs_reload("group", "offload") and not needs_reload("offload", "full")
    # A UNet model asked for a DiT mode gets the nearest UNet mode.
    assert choose_mode("fp8", "cuda", 512, 512) == "full"
    assert choose_mode("group", "cuda", 512, 512) == "offload"
    assert choose_mode("sequential", "cpu", 512, 512) == "tiled"


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    return save_pipeline(build_tiny_flux(), tmp_path_factory.mktemp("dit-memory") / "flux")


def test_fp8_layerwise_casting_stays_close_to_full_precision(flux_folder, tmp_path):
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    values = dict(prompt="a red circle", negative_prompt="", distilled_cfg_scale=3.5)
    full, _ = run(backend, request_for(flux_folder, memory_mode="full", **values))
    fp8, _ = run(backend, request_for(flux_folder, memory_mode="fp8", **values))
    assert backend.memory_mode == "fp8"
    assert backend._pipe.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    difference = np.abs(pixels(fp8.images[0]).astype(int) - pixels(full.images[0]).astype(int))
    # Stated tolerance: fp8 weights move a pixel by under 1.5 levels of 255 on average and under 16 at
    # most (tiny model; measured 0.53 and 4).
    assert 0 < difference.mean() < 1.5, difference.mean()
    assert difference.max() < 16, difference.max()
    # Leaving fp8 loads the model again: full precision, pixel for pixel.
    again, _ = run(backend, request_for(flux_folder, memory_mode="full", **values))
    assert np.array_equal(pixels(again.images[0]), pixels(full.images[0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "group", "sequential", "fp8"])
def test_each_offload_mode_runs_on_cuda(flux_folder, tmp_path, mode):
    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    values = dict(prompt="a red circle", negative_prompt="", distilled_cfg_scale=3.5, device="cuda")
    full, _ = run(backend, request_for(flux_folder, memory_mode="full", **values))
    other, _ = run(backend, request_for(flux_folder, memory_mode=mode, **values))
    assert backend.memory_mode == mode
    difference = np.abs(pixels(other.images[0]).astype(int) - pixels(full.images[0]).astype(int))
    assert difference.mean() < (1.5 if mode == "fp8" else 0.5)


def test_an_edit_job_in_fp8_keeps_the_transformer_in_fp8(flux_folder, tmp_path):
    from PIL import Image

    backend = make_backend(AppPaths.for_root(tmp_path / "home").ensure())
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source)
    values = dict(prompt="a red circle", negative_prompt="", distilled_cfg_scale=3.5, memory_mode="fp8")
    run(backend, request_for(flux_folder, **values))
    seen = []
    to_q = backend._pipe.transformer.transformer_blocks[0].attn.to_q
    hook = to_q.register_forward_hook(lambda module, args, output: seen.append(module.weight.dtype))
    batch, _ = run(backend, request_for(flux_folder, init_image=str(source), strength=0.5, **values))
    hook.remove()
    # The same model, not loaded again: fp8 is still the job's mode.
    assert to_q is backend._pipe.transformer.transformer_blocks[0].attn.to_q
    # The image-to-image pipeline shares the fp8 transformer: still stored in fp8 between its layers' calls.
    assert backend._pipes["img2img"].transformer is backend._pipe.transformer
    assert to_q.weight.dtype == torch.float8_e4m3fn and seen
    assert batch.images[0].size == (64, 64)


@pytest.mark.parametrize(
    ("build", "blocks"),
    [("flux", 2 + 2), ("z-image", 2 + 1 + 1), ("lumina2", 2 + 1 + 1), ("qwen-image", 2)],
)
def test_each_familys_blocks_count_for_group_offloads_estimate(build, blocks, tmp_path):
    # Group offload holds about two blocks at once: Z-Image's and Lumina's `layers` and refiners count, or their
    # estimate would be two whole transformers (and auto would pass group offload over on a small card).
    from desktop.engine.backends.families import memory_sizes
    from desktop.engine.library.checkpoint import detect_model
    from tests.support.tiny_lumina2 import build_tiny_lumina2
    from tests.support.tiny_qwen_zimage import build_tiny_qwen_image, build_tiny_z_image

    builders = {"flux": build_tiny_flux, "z-image": build_tiny_z_image, "lumina2": build_tiny_lumina2,
                "qwen-image": build_tiny_qwen_image}  # fmt: skip
    pipe = builders[build]()
    pipe.save_pretrained(str(tmp_path / "m"), safe_serialization=True)
    assert memory_sizes(pipe, detect_model(tmp_path / "m").dit).transformer_blocks == blocks
