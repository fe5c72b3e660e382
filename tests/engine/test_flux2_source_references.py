"""Several reference images beside a Flux.2 Klein source image (image-to-image and inpainting through
Flux2KleinInpaintPipeline, whose `image_reference` reads one): each is read, in the user's order, and
conditions the picture exactly as Flux2KleinPipeline's own multi-image `image=` list does, the source being
that list's first image (families_flux2.references_beside_source). On a tiny random Klein."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
from PIL import Image

from desktop.engine.backends.families_flux2 import references_beside_source
from desktop.engine.errors import InvalidRequest
from desktop.engine.imaging import load_source
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.tiny_flux2 import build_tiny_flux2_klein


@pytest.fixture(scope="module")
def klein(tmp_path_factory):
    folder = tmp_path_factory.mktemp("klein-refs") / "klein"
    build_tiny_flux2_klein().save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 64x64 source and five references of four sizes (a reference keeps its own size and aspect, as in
    text-to-image; cropping every one to the first's size would change the picture; b is cut down to a
    multiple of the latent patch), none under the 64 pixels a side Flux2KleinPipeline asks of a reference."""
    folder = tmp_path_factory.mktemp("klein-ref-images")
    sizes = {"source": (64, 64), "a": (96, 64), "b": (66, 130), "c": (80, 80), "d": (128, 64), "e": (128, 64)}
    found = {}
    for seed, (name, (width, height)) in enumerate(sizes.items()):
        rng = np.random.default_rng(100 + seed)
        found[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(found[name])
    return found


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return make_backend(AppPaths.for_root(tmp_path_factory.mktemp("home")).ensure())


def _edit(klein, images, names, **changes):
    values = dict(steps=2, cfg_scale=1.0, init_image=str(images["source"]), strength=0.75,
                  reference_images=tuple(str(images[n]) for n in names))  # fmt: skip
    return request_for(klein, **(values | changes))


def test_several_references_beside_a_source_condition_as_the_text_to_image_list_does(backend, klein, images):
    # Strength 1 with everything masked (image-to-image): the inpainting pipeline starts from pure noise
    # and keeps none of the source's latents, so what is left is its conditioning, which must be
    # Flux2KleinPipeline's for image=[source, a, b]: the source's tokens at t=10, then a's at 20, b's at 30,
    # each at its own size, after the same seed's noise.
    request = _edit(klein, images, "ab", strength=1.0, steps=3)
    batch, _ = run(backend, request)
    pipe = Flux2KleinPipeline.from_pretrained(str(klein), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompt=request.prompt, image=[load_source(images[n]) for n in ("source", "a", "b")], width=64, height=64,
        num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(request.seed),
    ).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def _differ(first, second) -> bool:
    # The tiny random model hears a reference faintly (a few pixels one level off), but deterministically:
    # equal pixels mean the reference was not read.
    return not np.array_equal(pixels(first), pixels(second))


def test_each_reference_beside_a_source_is_read_in_the_users_order(backend, klein, images, tmp_path):
    box = np.zeros((64, 64), np.uint8)
    box[8:56, 8:56] = 255
    Image.fromarray(box, "L").save(tmp_path / "mask.png")

    def inpaint(names):
        batch, _ = run(backend, _edit(klein, images, names, mask=str(tmp_path / "mask.png"), mask_blur=0))
        return batch.images[0]

    both = inpaint("ab")
    # Each reference is read: another first or another second image changes the picture.
    assert _differ(both, inpaint("cb"))
    assert _differ(both, inpaint("ac"))
    # The order counts, as in text-to-image: reference k sits at its own time coordinate. d and e are the
    # same size, so references sharing one time coordinate would give the very same pixels swapped.
    assert _differ(inpaint("de"), inpaint("ed"))
    # Up to Klein's limit of 4: the fourth is read too.
    assert _differ(inpaint("abcd"), inpaint("abce"))
    # Outside the mask, the source's own pixels, as for every inpainting job.
    outside = box == 0
    assert np.array_equal(pixels(both)[outside], pixels(load_source(images["source"]))[outside])


def test_a_missing_reference_among_several_is_refused_by_name(backend, klein, images, tmp_path):
    request = _edit(klein, images, "ab", reference_images=(str(images["a"]), str(tmp_path / "gone.png")))
    with pytest.raises(InvalidRequest, match="The reference image gone.png: it does not exist"):
        run(backend, request)


def test_the_command_line_refuses_a_missing_reference_beside_a_source_before_loading(klein, images, tmp_path):
    from tests.e2e.test_cli import in_process

    code, _, err = in_process([
        "--home", str(tmp_path / "home"), "generate", "--model", str(klein), "--prompt", "x", "--device", "cpu",
        "--init-image", str(images["source"]), "--reference-image", str(images["a"]),
        "--reference-image", str(tmp_path / "hat.png"),
    ])  # fmt: skip
    assert code == 2 and "The reference image hat.png: it does not exist" in err, err
    assert "Loading" not in err


class _Recorder:
    """The two pieces of Flux2KleinInpaintPipeline the references touch: its image processor (the real one,
    as the pipeline builds it for a VAE that shrinks 8x) and the method handed the images to condition on."""

    vae_scale_factor = 8

    def __init__(self) -> None:
        self.image_processor = Flux2ImageProcessor(vae_scale_factor=16, vae_latent_channels=32)
        self.seen: list = []

    def prepare_image_latents(self, images, *rest):
        self.seen = images
        return "latents"


def test_a_reference_over_a_megapixel_is_shrunk_as_the_text_to_image_pipeline_shrinks_it():
    recorder = _Recorder()
    rng = np.random.default_rng(7)
    big = Image.fromarray(rng.integers(0, 256, (1001, 1203, 3), dtype=np.uint8))
    small = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    with references_beside_source(recorder, [big, small]):
        assert recorder.prepare_image_latents(["source"], 1) == "latents"
    source, *prepared = recorder.seen
    # Flux2KleinPipeline's preparation of an `image=` entry, by hand: to about 1024 x 1024 keeping the aspect
    # (Lanczos), each side cut down to a multiple of 16 (8x VAE, 2x2 patches), centre-cropped.
    shrunk = Flux2ImageProcessor._resize_to_target_area(big, 1024 * 1024)
    expected = [recorder.image_processor.preprocess(image, image.height // 16 * 16, image.width // 16 * 16,
                                                    resize_mode="crop") for image in (shrunk, small)]  # fmt: skip
    assert source == "source" and [tuple(t.shape) for t in prepared] == [(1, 3, 928, 1120), (1, 3, 64, 80)]
    assert all(torch.equal(got, want) for got, want in zip(prepared, expected, strict=True))
    # Undone after the call: the pipeline's own method again.
    recorder.prepare_image_latents(["source"], 1)
    assert recorder.seen == ["source"]
