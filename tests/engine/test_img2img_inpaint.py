"""Image-to-image, inpainting and outpainting through the real diffusers backend on tiny real models."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

import desktop
from desktop.cli import main
from desktop.engine.backends.base import StepInfo
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import Cancelled, InvalidRequest, ModelError
from desktop.engine.imaging import blur_mask, file_sha256
from desktop.engine.jobs import CancelToken, Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.metadata import parse_parameters, read_text_chunks
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner

SOURCE_SIZE = (70, 66)  # deliberately not a multiple of 8 (and at least 64, the smallest source)
MASK_BOX = (40, 20, 60, 40)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return AppPaths.for_root(tmp_path_factory.mktemp("edit-home")).ensure()


@pytest.fixture(scope="module")
def backend(home):
    # One backend for the module: switching models and modes on it is part of what is tested.
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit-inputs")
    rng = np.random.default_rng(7)
    source = Image.fromarray(rng.integers(0, 256, (SOURCE_SIZE[1], SOURCE_SIZE[0], 3), dtype=np.uint8))
    source.save(folder / "source.png")
    mask = np.zeros((SOURCE_SIZE[1], SOURCE_SIZE[0]), np.uint8)
    mask[MASK_BOX[1] : MASK_BOX[3], MASK_BOX[0] : MASK_BOX[2]] = 255
    Image.fromarray(mask, "L").save(folder / "mask.png")
    return folder


def edit_request(model, inputs, **changes) -> GenerationRequest:
    values = dict(
        prompt="a red circle",
        model=str(model),
        steps=4,
        cfg_scale=7.0,
        seed=42,
        width=64,
        height=64,
        device="cpu",
        init_image=str(inputs / "source.png"),
        strength=0.75,
    )
    return GenerationRequest(**(values | changes)).validate()


def run(backend: DiffusersBackend, request: GenerationRequest, cancel: CancelToken | None = None):
    steps: list[StepInfo] = []
    backend.load(request)
    batch = backend.generate(request, 0, steps.append, cancel or CancelToken())
    return batch, steps


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def source_pixels(inputs) -> np.ndarray:
    return pixels(Image.open(inputs / "source.png"))


@pytest.mark.parametrize("resize_mode", ["resize", "pad"])
def test_img2img_keeps_the_source_size_and_strength_0_returns_the_source(backend, tiny_sd15_dir, inputs, resize_mode):
    unchanged, steps = run(backend, edit_request(tiny_sd15_dir, inputs, strength=0.0, resize_mode=resize_mode))
    assert np.array_equal(pixels(unchanged.images[0]), source_pixels(inputs))
    changed, steps = run(backend, edit_request(tiny_sd15_dir, inputs, strength=1.0, resize_mode=resize_mode))
    image = changed.images[0]
    assert image.size == SOURCE_SIZE
    assert not np.array_equal(pixels(image), source_pixels(inputs))
    assert steps and steps[-1].step == steps[-1].total


def test_img2img_runs_fewer_steps_with_previews_and_is_deterministic(backend, tiny_sd15_dir, inputs):
    request = edit_request(tiny_sd15_dir, inputs, strength=0.5, steps=4, sampler="Euler")
    first, steps = run(backend, request)
    assert [s.step for s in steps] == [1, 2] and {s.total for s in steps} == {2}
    assert all(s.preview is not None and s.preview.dtype == np.uint8 for s in steps)
    again, _ = run(backend, request)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))


@pytest.mark.parametrize("with_mask", [False, True])
def test_the_fewest_steps_a_strength_allows_run_and_one_fewer_is_refused_clearly(backend, tiny_sd15_dir, inputs,
                                                                                 with_mask):
    mask = {"mask": str(inputs / "mask.png")} if with_mask else {}
    # At strength 0.75, 2 steps run int(2 * 0.75) = 1 step, through the real pipeline.
    _, steps = run(backend, edit_request(tiny_sd15_dir, inputs, steps=2, strength=0.75, sampler="Euler", **mask))
    assert [s.step for s in steps] == [1] and steps[0].total == 1
    # 1 step would run none, which diffusers answers with a bare ValueError mid-job: the request says why first.
    refused = r"At strength 0.75, 1 step\(s\) leave no step to run: use at least 2 steps"
    with pytest.raises(InvalidRequest, match=refused):
        edit_request(tiny_sd15_dir, inputs, steps=1, strength=0.75, **mask)


def test_cancel_stops_an_inpainting_job(backend, tiny_sd15_dir, inputs):
    request = edit_request(tiny_sd15_dir, inputs, mask=str(inputs / "mask.png"))
    token = CancelToken()
    backend.load(request)

    def on_step(info: StepInfo) -> None:
        token.cancel()

    with pytest.raises(Cancelled):
        backend.generate(request, 0, on_step, token)


@pytest.mark.parametrize("area", ["whole", "masked"])
@pytest.mark.parametrize("model_fixture", ["tiny_sd15_dir", "tiny_sd15_inpaint_dir"])
def test_inpainting_leaves_every_unmasked_pixel_exactly(backend, inputs, request, area, model_fixture):
    model = request.getfixturevalue(model_fixture)
    edit = edit_request(
        model, inputs, mask=str(inputs / "mask.png"), strength=1.0, mask_blur=2, inpaint_area=area, padding=8
    )
    batch, steps = run(backend, edit)
    result, before = pixels(batch.images[0]), source_pixels(inputs)
    assert result.shape == before.shape
    alpha = np.asarray(blur_mask(Image.open(inputs / "mask.png"), 2))
    assert alpha[0, 0] == 0 and alpha[30, 50] == 255
    assert np.array_equal(result[alpha == 0], before[alpha == 0])
    assert not np.array_equal(result[alpha == 255], before[alpha == 255])
    assert steps


def test_modes_share_the_loaded_weights(backend, tiny_sd15_dir, inputs):
    txt = edit_request(tiny_sd15_dir, inputs, init_image=None)
    backend.load(txt)
    base = backend._pipe
    backend.generate(txt, 0, lambda _: None, CancelToken())
    for changes in ({}, {"mask": str(inputs / "mask.png")}):
        report = backend.load(edit_request(tiny_sd15_dir, inputs, **changes))
        assert report.reused
        run(backend, edit_request(tiny_sd15_dir, inputs, **changes))
    assert backend._pipe is base
    assert {"img2img", "inpaint"} <= set(backend._pipes)
    for pipe in backend._pipes.values():
        assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
        assert pipe.unet.dtype == base.dtype


def test_inpainting_model_does_img2img_but_refuses_text_to_image(backend, tiny_sd15_inpaint_dir, inputs):
    batch, _ = run(backend, edit_request(tiny_sd15_inpaint_dir, inputs, strength=0.6))
    assert batch.images[0].size == SOURCE_SIZE
    with pytest.raises(ModelError, match="inpainting model"):
        backend.load(edit_request(tiny_sd15_inpaint_dir, inputs, init_image=None))


def test_metadata_records_strength_mask_and_source_hash(home, tiny_sd15_dir, inputs, tmp_path):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)
    runner = JobRunner(backend, ImageWriter(tmp_path / "out"), desktop.__version__)
    request = edit_request(
        tiny_sd15_dir,
        inputs,
        mask=str(inputs / "mask.png"),
        strength=0.6,
        mask_blur=3,
        inpaint_area="masked",
        padding=16,
    )
    job = Job(request)
    assert runner.run(job, lambda _: None) is JobState.FINISHED
    written = next((tmp_path / "out").rglob("*.png"))
    settings = parse_parameters(read_text_chunks(written)["parameters"]).settings
    assert settings["Denoising strength"] == "0.6"
    assert settings["Mask blur"] == "3"
    assert settings["Inpaint area"] == "Only masked"
    assert settings["Masked area padding"] == "16"
    assert settings["Init image hash"] == file_sha256(inputs / "source.png")[:10]
    assert Image.open(written).size == SOURCE_SIZE


def cli(argv: list[str]) -> tuple[int, list[dict]]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out, err)
    assert code == 0, err.getvalue() + out.getvalue()
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_cli_inpaints_with_every_flag(tmp_path, tiny_sd15_dir, inputs):
    _, events = cli(
        [
            "generate",
            "--home",
            str(tmp_path / "home"),
            "--model",
            str(tiny_sd15_dir),
            "--prompt",
            "a cat",
            "--steps",
            "3",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--json",
            "--out",
            str(tmp_path / "out"),
            "--init-image",
            str(inputs / "source.png"),
            "--strength",
            "0.9",
            "--mask",
            str(inputs / "mask.png"),
            "--mask-blur",
            "0",
            "--inpaint-area",
            "masked",
            "--padding",
            "4",
            "--resize-mode",
            "pad",
            "--width",
            "64",
            "--height",
            "64",
        ]
    )
    started = events[0]["request"]
    assert started["strength"] == 0.9 and started["inpaint_area"] == "masked" and started["padding"] == 4
    assert started["mask_blur"] == 0 and started["resize_mode"] == "pad"
    path = events[-1]["paths"][0]
    result, before = pixels(Image.open(path)), source_pixels(inputs)
    outside = np.asarray(Image.open(inputs / "mask.png")) == 0
    assert np.array_equal(result[outside], before[outside])
    settings = parse_parameters(read_text_chunks(path)["parameters"]).settings
    assert settings["Denoising strength"] == "0.9" and settings["Inpaint area"] == "Only masked"


def test_cli_outpaints_and_keeps_the_old_pixels(tmp_path, tiny_sd15_dir, inputs):
    _, events = cli(
        [
            "generate",
            "--home",
            str(tmp_path / "home"),
            "--model",
            str(tiny_sd15_dir),
            "--prompt",
            "a cat",
            "--steps",
            "3",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--json",
            "--out",
            str(tmp_path / "out"),
            "--init-image",
            str(inputs / "source.png"),
            "--strength",
            "1",
            "--outpaint",
            "16,0,8,0",
            "--mask-blur",
            "2",
        ]
    )
    request = events[0]["request"]
    # The grown canvas and its mask were saved, by content, into the cache.
    assert request["init_image"].startswith(str(tmp_path / "home")) and request["mask"]
    assert (request["width"], request["height"]) == (96, 64)
    result = pixels(Image.open(events[-1]["paths"][0]))
    assert result.shape == (SOURCE_SIZE[1], 70 + 24, 3)
    # Old pixels away from the blended seam (16 px ramp + blur) are the source's own.
    assert np.array_equal(result[:, 16 + 24 : 16 + 70 - 24], source_pixels(inputs)[:, 24:46])
    assert not np.array_equal(result[:, :16], np.repeat(source_pixels(inputs)[:, :1], 16, axis=1))


def test_cli_refuses_a_non_image_source(tmp_path, tiny_sd15_dir):
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    out, err = io.StringIO(), io.StringIO()
    code = main(
        [
            "generate",
            "--home",
            str(tmp_path / "home"),
            "--model",
            str(tiny_sd15_dir),
            "--prompt",
            "x",
            "--init-image",
            str(fake),
            "--device",
            "cpu",
        ],
        out,
        err,
    )
    assert code == 2 and "not a PNG, JPEG or WebP" in err.getvalue()


def test_sdxl_and_single_file_inpainting_models_inpaint_too(backend, inputs, tiny_sdxl_dir, tiny_sd15_inpaint_single):
    checkpoint, config = tiny_sd15_inpaint_single
    for model, extra in ((tiny_sdxl_dir, {}), (checkpoint, {"model_config": str(config)})):
        edit = edit_request(model, inputs, mask=str(inputs / "mask.png"), mask_blur=0, strength=1.0, **extra)
        batch, _ = run(backend, edit)
        result, before = pixels(batch.images[0]), source_pixels(inputs)
        outside = np.asarray(Image.open(inputs / "mask.png")) == 0
        assert np.array_equal(result[outside], before[outside])
        assert not np.array_equal(result[~outside], before[~outside])


def test_inpainting_is_deterministic(backend, tiny_sd15_dir, inputs):
    edit = edit_request(tiny_sd15_dir, inputs, mask=str(inputs / "mask.png"), inpaint_area="masked", sampler="Euler a")
    first, _ = run(backend, edit)
    again, _ = run(backend, edit)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))


def generate_args(tmp_path, model, source, *extra: str) -> list[str]:
    home, out = str(tmp_path / "home"), str(tmp_path / "out")
    return ["generate", "--home", home, "--out", out, "--model", str(model), "--prompt", "a red circle",
            "--init-image", str(source), "--device", "cpu", "--seed", "3", *extra]  # fmt: skip


@pytest.mark.parametrize("extra", [(), ("--mask", "MASK", "--inpaint-area", "masked")])
def test_cli_refuses_a_source_under_64_pixels_before_any_work(tmp_path, tiny_sd15_dir, extra):
    source, mask = tmp_path / "dot.png", tmp_path / "mask.png"
    Image.new("RGB", (1, 1), (200, 0, 0)).save(source)
    Image.new("L", (1, 1), 255).save(mask)
    out, err = io.StringIO(), io.StringIO()
    argv = generate_args(tmp_path, tiny_sd15_dir, source, *(str(mask) if a == "MASK" else a for a in extra))
    code = main(argv, out, err)
    assert code == 2, err.getvalue()
    assert "The source image is 1x1 pixels, too small to edit" in err.getvalue()
    assert "at least 64 pixels on each side" in err.getvalue()
    assert "Loading" not in err.getvalue()  # refused before the model loads
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_cli_progress_counts_the_steps_an_edit_runs(tmp_path, tiny_sd15_dir, inputs):
    out, err = io.StringIO(), io.StringIO()
    extra = ("--steps", "8", "--strength", "0.5", "--sampler", "DDIM")  # DDIM: no warm-up step
    code = main(generate_args(tmp_path, tiny_sd15_dir, inputs / "source.png", *extra), out, err)
    assert code == 0, err.getvalue()
    # int(8 * 0.5) = 4 steps run: the count says 4, and why.
    assert "batch 1/1, 4 of 4 steps: 8 at strength 0.5" in err.getvalue()
