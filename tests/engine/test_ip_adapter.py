"""IP-Adapter units: detection of adapters and image encoders, generation through the real backend against
bare diffusers (load_ip_adapter with the same state dict), weight / range, SDXL, errors and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image, ImageDraw

from desktop.cli import parse_ip_adapter_args
from desktop.engine.backends.control import legacy_hash
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import Library, guess_kind
from desktop.engine.library.ip_adapter import inspect_ip_adapter
from desktop.engine.metadata import (
    control_pairs,
    interpret_chunks,
    parse_control_units,
    read_image_metadata,
    read_text_chunks,
)
from desktop.engine.paths import AppPaths
from desktop.engine.recipe import preprocessor_from_module, read_recipe
from desktop.engine.request import ControlUnit, GenerationRequest
from desktop.engine.resources import Resources
from tests.support import tiny_controls, tiny_models
from tests.support import tiny_ip_adapters as tiny
from tests.support.cli_runner import run_cli
from tests.support.unet_calls import watching_unet

STEPS = 3


def _plain(cls, folder):
    pipe = cls.from_pretrained(str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False,
                               feature_extractor=None) if cls is StableDiffusionPipeline else cls.from_pretrained(
        str(folder), local_files_only=True)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd15_dir):
    return _plain(StableDiffusionPipeline, tiny_sd15_dir)


@pytest.fixture(scope="module")
def encoder():
    return tiny.build_tiny_image_encoder(seed=11)


@pytest.fixture(scope="module")
def states(sd_pipe):
    return [tiny.ip_adapter_state(sd_pipe.unet, seed=s) for s in (21, 22)]


@pytest.fixture(scope="module")
def home(tmp_path_factory, states, encoder) -> AppPaths:
    """Files imported through the library, as a user would."""
    root = tmp_path_factory.mktemp("ip-home")
    paths = AppPaths.for_root(root / "home").ensure()
    library = Library(paths)
    for name, state in (("face", states[0]), ("style", states[1])):
        library.import_path(str(tiny.save_state(state, root / f"{name}.safetensors")), "control", name)
    library.import_path(str(tiny.save_image_encoder(encoder, root / "encoder.safetensors")), "control", "encoder")
    controlnet = tiny_controls.build_tiny_controlnet(tiny_models.build_tiny_sd15().unet, seed=3)
    edges = tiny_controls.save_controlnet(controlnet, root / "edges.safetensors", "diffusers")
    library.import_path(str(edges), "control", "edges")
    return paths


@pytest.fixture(scope="module")
def backend(home) -> DiffusersBackend:
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    image = Image.new("RGB", (48, 40), "navy")
    ImageDraw.Draw(image).ellipse((4, 6, 30, 33), fill="orange")
    path = tmp_path_factory.mktemp("ip-ref") / "ref.png"
    image.save(path)
    return path


def request_for(model, **changes) -> GenerationRequest:
    values = dict(prompt="a red circle on a blue background", model=str(model), steps=STEPS, cfg_scale=7.0,
                  seed=7, width=64, height=64, device="cpu")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def unit(name, image, weight=1.0, **changes) -> ControlUnit:
    return ControlUnit(name, str(image), weight=weight, preprocessor="ip-adapter", **changes)


def image_of(backend, request) -> np.ndarray:
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB")).astype(np.int16)


def bare(pipe, request, state_dicts, encoder, images, scales, average=False) -> np.ndarray:
    """Bare diffusers; `average`: each adapter's projected image embeddings averaged over its images (what
    A1111's extension does with several inputs), by a hook written here, not Marble's."""
    from transformers import CLIPImageProcessorPil

    pipe.register_modules(image_encoder=encoder, feature_extractor=CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))  # fmt: skip
    pipe.load_ip_adapter([tiny.nested(s) for s in state_dicts], subfolder=[""] * len(state_dicts),
                         weight_name=[""] * len(state_dicts), image_encoder_folder=None)  # fmt: skip
    pipe.set_ip_adapter_scale(scales)
    if average:
        pipe.unet.encoder_hid_proj.register_forward_hook(
            lambda _m, _i, out: [torch.stack([e[:, i] for i in range(e.shape[1])]).sum(0)[:, None] / e.shape[1]
                                 for e in out])  # fmt: skip
    try:
        out = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                   width=request.width, height=request.height, ip_adapter_image=images,
                   generator=torch.Generator("cpu").manual_seed(request.seed)).images[0]  # fmt: skip
    finally:
        pipe.unload_ip_adapter()
    return np.asarray(out.convert("RGB")).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Detection and the library


def test_plain_plus_and_encoder_are_detected_and_listed(home, tmp_path):
    library = Library(home)
    assert library.get("control", "face").format == "ip-adapter (plain)"
    assert library.get("control", "encoder").format == "image-encoder (32 wide)"
    plus = tiny.save_state(tiny.plus_header_state(), tmp_path / "plus.safetensors")
    info = inspect_ip_adapter(read_safetensors_header(plus))
    assert (info.variant, info.family, info.encoder_output, info.encoder_width) == ("plus", "sd1", "hidden", 1280)
    assert inspect_control(read_safetensors_header(plus)).label == "SD 1.x IP-Adapter Plus"
    xl = tiny.save_state(tiny.plus_header_state(cross=2048), tmp_path / "xl.safetensors")
    assert inspect_control(read_safetensors_header(xl)).label == "SDXL IP-Adapter Plus"
    # A transformers folder (h94's image_encoder/) imports as its weights file, named after the folder.
    folder = tmp_path / "image_encoder"
    tiny.build_tiny_image_encoder(seed=3).save_pretrained(str(folder))
    record = library.import_path(str(folder), "control")
    assert (record.name, record.format) == ("image_encoder", "image-encoder (32 wide)")
    library.remove("control", "image_encoder")
    assert guess_kind(plus) == "control"
    assert guess_kind(library.path_of(library.get("control", "encoder"))) == "control"
    code, out, err = run_cli("controls", "list", "--home", str(home.models.parent))
    assert code == 0, err
    assert "IP-Adapter" in out and "image encoder" in out


def test_plus_face_is_a_plus_adapter(tmp_path):
    # (FaceID adapters, which read a face model's embedding: tests/engine/test_faceid.py.)
    face = tiny.save_state(tiny.plus_face_header_state(), tmp_path / "ip-adapter-plus-face_sd15.safetensors")
    info = inspect_ip_adapter(read_safetensors_header(face))
    assert (info.variant, info.family, info.encoder_output, info.encoder_width) == ("plus", "sd1", "hidden", 1280)
    assert inspect_control(read_safetensors_header(face)).label == "SD 1.x IP-Adapter Plus"


def test_a_file_that_is_neither_gives_a_clear_error(tmp_path):
    path = tiny.save_state({"image_proj.something": torch.zeros(2, 2), "ip_adapter.1.to_k_ip.weight":
                            torch.zeros(4, 8)}, tmp_path / "odd.safetensors")  # fmt: skip
    with pytest.raises(ModelError, match="no image projection"):
        inspect_control(read_safetensors_header(path))
    code, _, err = run_cli("controls", "import", str(path), "--home", str(tmp_path / "h"))
    assert code != 0 and "no image projection" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Generation


def test_ip_adapter_equals_bare_diffusers(backend, sd_pipe, tiny_sd15_dir, states, encoder, reference):
    request = request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.8),))
    ours = image_of(backend, request)
    expected = bare(sd_pipe, request, [states[0]], encoder, [Image.open(reference).convert("RGB")], [0.8])
    assert np.array_equal(ours, expected)
    without = image_of(backend, request_for(tiny_sd15_dir))
    assert np.abs(ours - without).mean() > 1.0  # the image prompt counts
    # Unloaded after the job: the next job without units is the plain one again.
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), without)


def test_two_units_equal_bare_diffusers_and_weight_zero_is_no_adapter(
    backend, sd_pipe, tiny_sd15_dir, states, encoder, reference, tmp_path
):
    other = tmp_path / "other.png"
    Image.new("RGB", (32, 32), "yellow").save(other)
    units = (unit("face", reference, 0.6), unit("style", other, 1.2))
    ours = image_of(backend, request_for(tiny_sd15_dir, controls=units))
    images = [Image.open(path).convert("RGB") for path in (reference, other)]
    expected = bare(sd_pipe, request_for(tiny_sd15_dir), states, encoder, images, [0.6, 1.2])
    assert np.array_equal(ours, expected)
    without = image_of(backend, request_for(tiny_sd15_dir))
    zero = request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.0),))
    assert np.array_equal(image_of(backend, zero), without)


def test_several_reference_images_average_their_embeddings_as_a1111_does(
    backend, sd_pipe, tiny_sd15_dir, states, encoder, reference, tmp_path
):
    other = tmp_path / "other.png"
    Image.new("RGB", (40, 40), "yellow").save(other)
    both = request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.9, more_images=(str(other),)),))
    ours = image_of(backend, both)
    images = [[Image.open(path).convert("RGB") for path in (reference, other)]]
    assert np.array_equal(ours, bare(sd_pipe, both, [states[0]], encoder, images, [0.9], average=True))
    # Not diffusers' own concatenation of the images' tokens, and neither image alone.
    assert not np.array_equal(ours, bare(sd_pipe, both, [states[0]], encoder, images, [0.9]))
    for path in (reference, other):
        alone = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", path, 0.9),)))
        assert np.abs(ours - alone).mean() > 0.5
    # The hook goes with the job: a one-image unit afterwards is the one-image result of bare diffusers.
    one = request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.9),))
    assert np.array_equal(image_of(backend, one), bare(sd_pipe, one, [states[0]], encoder,
                                                       [Image.open(reference).convert("RGB")], [0.9]))  # fmt: skip


def test_more_images_are_only_for_ip_adapter_units(reference):
    with pytest.raises(InvalidRequest, match="only an IP-Adapter unit takes several images"):
        ControlUnit("edges", str(reference), more_images=(str(reference),)).validate(0)
    with pytest.raises(InvalidRequest, match="at most 16 reference images"):
        unit("face", reference, more_images=(str(reference),) * 16).validate(0)
    with pytest.raises(InvalidRequest, match="every reference image must be a file"):
        unit("face", reference, more_images=("",)).validate(0)


def test_range_sets_scale_zero_outside_it(backend, tiny_sd15_dir, reference):
    full = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", reference),)))
    late = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", reference, start=0.5),)))
    without = image_of(backend, request_for(tiny_sd15_dir))
    assert not np.array_equal(late, full) and not np.array_equal(late, without)


def test_a_range_counts_each_pass_of_the_hires_fix(backend, tiny_sd15_dir, reference):
    # Refused before 2026-12-06: the second pass starts the range again over its own steps (4 at denoising 0.5: 2
    # run), as ControlNet ranges do. The scale the adapters hold at each UNet call (Euler: one call a step).
    seen: list[float] = []

    def record(unet, sample, kwargs):
        seen.append(next(p.scale[0] for p in unet.attn_processors.values() if hasattr(p, "scale")))

    request = request_for(tiny_sd15_dir, controls=(unit("face", reference, weight=0.8, end=0.5),), steps=4,
                          sampler="Euler", hires_fix=True, hires_scale=2.0, hires_steps=4, hires_denoise=0.5)
    with watching_unet(record):
        ours = image_of(backend, request)
    assert ours.shape == (128, 128, 3)
    assert seen == [0.8, 0.8, 0.0, 0.0, 0.8, 0.0]


def test_missing_encoder_and_wrong_kind_are_clear(tmp_path, states, tiny_sd15_dir, reference):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    Library(paths).import_path(str(tiny.save_state(states[0], tmp_path / "lonely.safetensors")), "control", "lonely")
    alone = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)
    with pytest.raises(ModelError, match="No CLIP image encoder.*24-wide projection"):
        image_of(alone, request_for(tiny_sd15_dir, controls=(unit("lonely", reference),)))
    as_controlnet = ControlUnit("lonely", str(reference))
    with pytest.raises(InvalidRequest, match="is an IP-Adapter: give its unit the ip-adapter preprocessor"):
        image_of(alone, request_for(tiny_sd15_dir, controls=(as_controlnet,)))


def test_sdxl_ip_adapter_equals_bare_diffusers(tmp_path, tiny_sdxl_dir, encoder, reference):
    pipe = _plain(StableDiffusionXLPipeline, tiny_sdxl_dir)
    state = tiny.ip_adapter_state(pipe.unet, seed=31)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(str(tiny.save_state(state, tmp_path / "xl.safetensors")), "control", "xl")
    library.import_path(str(tiny.save_image_encoder(encoder, tmp_path / "enc.safetensors")), "control", "enc")
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)
    request = request_for(tiny_sdxl_dir, controls=(unit("xl", reference, 0.9),))
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    expected = bare(pipe, request, [state], encoder, [Image.open(reference).convert("RGB")], [0.9])
    assert np.array_equal(np.asarray(batch.images[0].convert("RGB")).astype(np.int16), expected)
    # The tiny encoder is not ViT-bigG wide: A1111 names an SDXL adapter on a ViT-H encoder this way.
    assert batch.controls[0].module == "ip-adapter_clip_sdxl_plus_vith"


@pytest.mark.parametrize(("family", "width", "module"), [
    ("sd15", 1280, "ip-adapter_clip_sd15"), ("sdxl", 1664, "ip-adapter_clip_sdxl"),
    ("sdxl", 1280, "ip-adapter_clip_sdxl_plus_vith"), ("sdxl", None, "ip-adapter_clip_sdxl"),
    ("sd15", None, "ip-adapter_clip_sd15"),
])  # fmt: skip
def test_the_a1111_module_names_the_family_and_the_encoder(family, width, module):
    from types import SimpleNamespace

    from desktop.engine.backends.ip_adapter import a1111_module

    encoder = None if width is None else SimpleNamespace(config=SimpleNamespace(hidden_size=width))
    assert a1111_module(family, encoder) == module


# --------------------------------------------------------------------------------------------------
# Metadata


def test_metadata_is_written_and_read_back_as_a1111_writes_it(backend, tiny_sd15_dir, reference):
    from desktop.engine.backends.base import ControlHash

    request = request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.7),))
    pairs = dict(control_pairs(request, (ControlHash("face", "0123abcd", "ip-adapter_clip_sd15"),)))
    assert pairs["ControlNet 0"].startswith("Module: ip-adapter_clip_sd15, Model: face [0123abcd], Weight: 0.7")
    (parsed,) = parse_control_units(pairs)
    assert preprocessor_from_module(parsed.module) == "ip-adapter" and parsed.unit.weight == 0.7
    assert preprocessor_from_module("ip-adapter_clip_sdxl_plus_vith") == "ip-adapter"
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    assert batch.controls[0].module == "ip-adapter_clip_sd15" and batch.controls[0].name == "face"


def test_with_a_controlnet_and_in_image_to_image(backend, tiny_sd15_dir, reference, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), "teal").save(source)
    edges = ControlUnit("edges", str(reference), weight=0.8)
    only_edges = image_of(backend, request_for(tiny_sd15_dir, controls=(edges,)))
    both = image_of(backend, request_for(tiny_sd15_dir, controls=(edges, unit("face", reference))))
    assert np.abs(both - only_edges).mean() > 1.0
    # Again with the IP unit first: the same result (units are independent of order), and clean afterwards.
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", reference), edges))),
                          both)  # fmt: skip
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, controls=(edges,))), only_edges)
    mask = tmp_path / "mask.png"
    white = Image.new("L", (64, 64), 0)
    white.paste(255, (0, 0, 40, 64))
    white.save(mask)
    edits = (dict(init_image=str(source), strength=0.8), dict(init_image=str(source), mask=str(mask), strength=1.0))
    for edit in edits:
        plain_edit = image_of(backend, request_for(tiny_sd15_dir, **edit))
        ip_edit = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", reference),), **edit))
        assert np.abs(ip_edit - plain_edit).mean() > 1.0


def test_cli_ip_adapter_writes_a1111_metadata_and_reads_back(home, tiny_sd15_dir, reference, tmp_path):
    out = tmp_path / "out.png"
    other = tmp_path / "other.png"
    Image.new("RGB", (32, 32), "yellow").save(other)
    code, _, err = run_cli(
        "generate", "--model", str(tiny_sd15_dir), "--prompt", "a cat", "--steps", "2", "--seed", "3", "--width",
        "64", "--height", "64", "--device", "cpu", "--no-preview", "--home", str(home.models.parent),
        "--ip-adapter", f"face:{reference}|{other}:0.5", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    digest = legacy_hash(Library(home).path_of(Library(home).get("control", "face")))
    parameters = read_text_chunks(out)["parameters"]
    assert f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: face [{digest}], Weight: 0.5,' in parameters
    # Marble's chunk keeps every reference image; the recipe made from it restores them.
    both = unit("face", reference, 0.5, more_images=(str(other),))
    assert read_image_metadata(out).request.controls == (both,)
    assert read_recipe(read_image_metadata(out), controls=[Library(home).get("control", "face")]).fields[
        "controls"] == (both,)
    # An A1111 PNG (no Marble chunk): the module reads back as an IP-Adapter unit.
    recipe = read_recipe(interpret_chunks({"parameters": parameters}), controls=[Library(home).get("control", "face")])
    (read,) = recipe.fields["controls"]
    assert (read.model, read.preprocessor, read.weight) == ("face", "ip-adapter", 0.5)
    assert parse_ip_adapter_args(["m:/a:b/c.png"]) == (ControlUnit("m", "/a:b/c.png", 1.0, preprocessor="ip-adapter"),)
    assert parse_ip_adapter_args(["m:/c.png:0.3"])[0].weight == 0.3
    assert parse_ip_adapter_args(["m:C:/a b/c.png|D:/d.png:0.3"])[0].images == (
        str(Path("C:/a b/c.png").resolve()), str(Path("D:/d.png").resolve()))  # fmt: skip
    odd = tmp_path / "a|b.png"  # a Linux name holding the separator is taken whole when it exists
    Image.new("RGB", (8, 8)).save(odd, format="PNG")
    assert parse_ip_adapter_args([f"m:{odd}"])[0].images == (str(odd),)
    for bad in ("face", "face:a.png|", "face:|b.png:0.5"):
        code, _, err = run_cli("generate", "--model", "x", "--prompt", "p", "--ip-adapter", bad,
                               "--home", str(tmp_path))  # fmt: skip
        assert code != 0 and "NAME:IMAGE[|IMAGE...][:WEIGHT]" in err and "Traceback" not in err


def test_hires_fix_gives_both_passes_the_reference_as_bare_diffusers_does(backend, tiny_sd15_dir, states, encoder,
                                                                         reference):  # fmt: skip
    from diffusers import StableDiffusionImg2ImgPipeline
    from transformers import CLIPImageProcessorPil

    request = request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.8),), hires_fix=True, hires_scale=2.0,
                          hires_steps=4, hires_denoise=0.6)  # fmt: skip
    ours = image_of(backend, request)
    assert ours.shape == (128, 128, 3)
    # By hand: txt2img with the adapter to latents, latents upscaled as the "Latent" upscaler does, then the
    # image-to-image pipeline made from the same components (encoder included) with the same reference.
    pipe = _plain(StableDiffusionPipeline, tiny_sd15_dir)
    pipe.register_modules(image_encoder=encoder, feature_extractor=CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))  # fmt: skip
    pipe.load_ip_adapter([tiny.nested(states[0])], subfolder=[""], weight_name=[""], image_encoder_folder=None)
    pipe.set_ip_adapter_scale([0.8])
    images = [Image.open(reference).convert("RGB")]
    latents = pipe(prompt=request.prompt, num_inference_steps=STEPS, guidance_scale=7.0, width=64, height=64,
                   ip_adapter_image=images, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(7)).images  # fmt: skip
    second = StableDiffusionImg2ImgPipeline(**pipe.components)
    second.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    second.set_progress_bar_config(disable=True)
    upscaled = torch.nn.functional.interpolate(latents, size=(16, 16), mode="bilinear", antialias=False)
    out = second(prompt=request.prompt, image=upscaled, strength=0.6, num_inference_steps=4, guidance_scale=7.0,
                 ip_adapter_image=images, generator=torch.Generator("cpu").manual_seed(7)).images[0]  # fmt: skip
    assert np.array_equal(ours, np.asarray(out.convert("RGB")).astype(np.int16))
    # Without the reference in the second pass the image differs.
    pipe.set_ip_adapter_scale([0.0])
    no_second = second(prompt=request.prompt, image=upscaled, strength=0.6, num_inference_steps=4, guidance_scale=7.0,
                       ip_adapter_image=images, generator=torch.Generator("cpu").manual_seed(7)).images[0]  # fmt: skip
    pipe.unload_ip_adapter()
    assert not np.array_equal(ours, np.asarray(no_second.convert("RGB")).astype(np.int16))
    # The job left the shared image-to-image pipeline as it was: a plain hires job still runs.
    plain_hires = image_of(backend, request_for(tiny_sd15_dir, hires_fix=True, hires_steps=4, hires_denoise=0.6))
    assert plain_hires.shape == (128, 128, 3) and not np.array_equal(plain_hires, ours)


def test_an_ip_adapter_and_a_controlnet_with_the_hires_fix(backend, tiny_sd15_dir, reference, monkeypatch):
    # The second pass is the ControlNet's image-to-image pipeline, readied for the IP-Adapter too (its encoder
    # and reference) and given the control image at its size: the job runs to the hires size and the ControlNet
    # counts. (Each alone is checked pixel for pixel: test_hires_fix_gives_both_passes_the_reference...,
    # test_controls.py's hires test.)
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    seen = []
    call = StableDiffusionControlNetImg2ImgPipeline.__call__

    def recording(self, *args, **kwargs):
        seen.append((tuple(kwargs["control_image"].shape), kwargs.get("ip_adapter_image"), self.image_encoder))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionControlNetImg2ImgPipeline, "__call__", recording)
    hires = dict(hires_fix=True, hires_scale=2.0, hires_steps=4, hires_denoise=0.6)
    both = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.8),
                                                                  ControlUnit("edges", str(reference), 0.9)), **hires))
    alone = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("face", reference, 0.8),), **hires))
    assert both.shape == (128, 128, 3) and np.abs(both - alone).mean() > 0.5
    ((shape, pictures, image_encoder),) = seen  # the ControlNet job's second pass, with the adapter too
    assert shape == (1, 3, 128, 128) and image_encoder is not None
    assert len(pictures) == 1 and pictures[0].size == Image.open(reference).size
