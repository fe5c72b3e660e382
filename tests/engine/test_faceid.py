"""FaceID IP-Adapters: detection and labels, generation through the real backend against bare diffusers given the
same identity embedding (and, for Plus, the same face crop through the same encoder), the v2 shortcut, several
faces, errors (no face, no face models), the companion LoRA, metadata and the command line.

The face analyser is a deterministic stand-in (fixed box and landmarks, an embedding made from the image's
pixels): the real detector and recognizer are another part of the plan, built and tested on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw

from desktop.engine.backends import diffusers_backend
from desktop.engine.backends.control import legacy_hash
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import Library
from desktop.engine.library.ip_adapter import inspect_ip_adapter
from desktop.engine.metadata import interpret_chunks, read_text_chunks
from desktop.engine.paths import AppPaths
from desktop.engine.recipe import read_recipe
from desktop.engine.resources import Resources
from tests.engine.test_ip_adapter import _plain, image_of, request_for, unit
from tests.support import tiny_ip_adapters as tiny
from tests.support.cli_runner import run_cli


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float


class StandInAnalyser:
    """FaceAnalyser's three methods, deterministic: a one-colour image has no face; any other has one face in
    its middle; the identity is the normalised grey pixels (so different images give different identities);
    the crop is the box resized. Records the crop sizes asked for."""

    def __init__(self) -> None:
        self.crop_sizes: list[int] = []

    def detect(self, image: Image.Image) -> list[Face]:
        grey = np.asarray(image.convert("L"))
        if grey.min() == grey.max():
            return []
        w, h = image.size
        eyes = ((0.35 * w, 0.4 * h), (0.65 * w, 0.4 * h))
        return [Face((0.15 * w, 0.1 * h, 0.85 * w, 0.9 * h), (*eyes, (0.5 * w, 0.55 * h), (0.4 * w, 0.7 * h),
                                                                (0.6 * w, 0.7 * h)), 0.9)]  # fmt: skip

    def identity(self, image: Image.Image, face: Face) -> torch.Tensor:
        grey = np.asarray(image.convert("L").resize((32, 16), Image.Resampling.BILINEAR), dtype=np.float32)
        vector = torch.from_numpy(grey.reshape(-1) - grey.mean())
        return vector / vector.norm()

    def crop(self, image: Image.Image, face: Face, size: int) -> Image.Image:
        self.crop_sizes.append(size)
        return image.crop(tuple(round(c) for c in face.box)).resize((size, size), Image.Resampling.BICUBIC)


def _face(path, colours):
    image = Image.new("RGB", (48, 56), colours[0])
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 6, 40, 50), fill=colours[1])
    draw.ellipse((16, 20, 22, 26), fill=colours[2])
    draw.ellipse((28, 20, 34, 26), fill=colours[2])
    image.save(path)
    return path


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd15_dir):
    return _plain(StableDiffusionPipeline, tiny_sd15_dir)


@pytest.fixture(scope="module")
def states(sd_pipe, tmp_path_factory):
    """The adapters as read back from their files, as the backend reads them: given the in-memory tensors
    instead, bare diffusers' Plus resampler came out 1e-6 apart (same values, other memory: CPU rounding)."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("faceid-states")
    made = {"faceid": tiny.faceid_state(sd_pipe.unet, seed=41),
            "faceid-plus": tiny.faceid_state(sd_pipe.unet, seed=42, plus=True)}  # fmt: skip
    return {name: load_file(str(tiny.save_state(state, folder / f"{name}.safetensors")))
            for name, state in made.items()}  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    return tiny.build_tiny_image_encoder(seed=12)  # Plus reads its hidden states (32 wide)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    blank = folder / "blank.png"
    Image.new("RGB", (40, 40), "grey").save(blank)
    return {
        "alice": _face(folder / "alice.png", ("navy", "peachpuff", "black")),
        "bob": _face(folder / "bob.png", ("darkgreen", "sienna", "white")),
        "blank": blank,
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory, states, encoder) -> AppPaths:
    root = tmp_path_factory.mktemp("faceid-home")
    paths = AppPaths.for_root(root / "home").ensure()
    library = Library(paths)
    # h94's names: the Plus file is v1 unless its name says v2 (A1111's rule); the same tensors serve both.
    for name, state in (("ip-adapter-faceid_sd15", states["faceid"]),
                        ("ip-adapter-faceid-plus_sd15", states["faceid-plus"]),
                        ("ip-adapter-faceid-plusv2_sd15", states["faceid-plus"])):  # fmt: skip
        library.import_path(str(tiny.save_state(state, root / f"{name}.safetensors")), "control", name)
    library.import_path(str(tiny.save_image_encoder(encoder, root / "encoder.safetensors")), "control", "encoder")
    return paths


@pytest.fixture(scope="module")
def analyser():
    return StandInAnalyser()


@pytest.fixture(scope="module")
def backend(home, analyser) -> DiffusersBackend:
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0,
                            face_analyser=lambda: analyser)  # fmt: skip


def bare_faceid(pipe, request, state, paths, scale, encoder=None, v2=None, average=False, batch=1) -> np.ndarray:
    """diffusers' FaceID recipe by hand: the identity embeddings of the images' faces stacked [1, images, 1,
    512], zeros before them for guidance; Plus (v2 not None): the 224-px face crops' hidden states from
    `prepare_ip_adapter_image_embeds` as `clip_embeds`, and `shortcut` = v2."""
    from transformers import CLIPImageProcessorPil

    analyser = StandInAnalyser()
    guided = request.cfg_scale > 1  # the pipeline's rule for these UNets
    images = [Image.open(path).convert("RGB") for path in paths]
    found = [analyser.detect(image)[0] for image in images]
    identity = torch.stack([analyser.identity(i, f).unsqueeze(0) for i, f in zip(images, found, strict=True)])[None]
    pipe.load_ip_adapter(tiny.nested(tiny.without_lora(state)), subfolder="", weight_name="",
                         image_encoder_folder=None)  # fmt: skip
    pipe.set_ip_adapter_scale(scale)
    if average:
        pipe.unet.encoder_hid_proj.register_forward_hook(
            lambda _m, _i, out: [e.sum(dim=1, keepdim=True) / e.shape[1] for e in out])
    if v2 is not None:
        pipe.register_modules(image_encoder=encoder, feature_extractor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))  # fmt: skip
        crops = [analyser.crop(i, f, 224) for i, f in zip(images, found, strict=True)]
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        layer.clip_embeds = pipe.prepare_ip_adapter_image_embeds([crops], None, "cpu", batch, guided)[0]
        layer.shortcut = v2
    embeds = [torch.cat([torch.zeros_like(identity), identity]) if guided else identity]
    try:
        with torch.inference_mode():  # as the backend runs jobs
            out = pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                       width=request.width, height=request.height, num_images_per_prompt=batch,
                       ip_adapter_image_embeds=embeds,
                       generator=[torch.Generator("cpu").manual_seed(request.seed + k) for k in range(batch)]).images
    finally:
        pipe.unload_ip_adapter()
        pipe.register_modules(image_encoder=None, feature_extractor=None)
    return [np.asarray(image.convert("RGB")).astype(np.int16) for image in out]


# --------------------------------------------------------------------------------------------------
# The library


def test_faceid_adapters_are_detected_labelled_and_need_what_they_read(home, states, tmp_path, tiny_sdxl_dir):
    library = Library(home)
    assert library.get("control", "ip-adapter-faceid_sd15").format == "ip-adapter (faceid)"
    # The tiny UNet's widths are no released family's, so the label has none.
    assert library.get("control", "ip-adapter-faceid_sd15").architecture == "IP-Adapter FaceID"
    plus = library.get("control", "ip-adapter-faceid-plus_sd15")
    assert (plus.format, plus.architecture) == ("ip-adapter (faceid-plus)", "IP-Adapter FaceID Plus")
    path = tiny.save_state(states["faceid"], tmp_path / "f.safetensors")
    info = inspect_ip_adapter(read_safetensors_header(path))
    assert (info.variant, info.encoder_output, info.reads_faces) == ("faceid", "", True)
    path = tiny.save_state(states["faceid-plus"], tmp_path / "p.safetensors")
    info = inspect_ip_adapter(read_safetensors_header(path))
    assert (info.variant, info.encoder_output, info.encoder_width) == ("faceid-plus", "hidden", tiny.ENCODER_HIDDEN)
    # SDXL's (2048-wide cross-attention): the family comes from to_k_ip's width as for other IP-Adapters.
    from diffusers import UNet2DConditionModel

    xl_unet = UNet2DConditionModel.from_pretrained(str(tiny_sdxl_dir), subfolder="unet", local_files_only=True)
    xl_state = tiny.faceid_state(xl_unet, plus=True)
    xl_state = {k: v.new_zeros(v.shape[0], 2048) if k.endswith("_ip.weight") else v for k, v in xl_state.items()}
    xl = tiny.save_state(xl_state, tmp_path / "xl.safetensors")
    assert inspect_control(read_safetensors_header(xl)).label == "SDXL IP-Adapter FaceID Plus"
    # `controls info` says whether Plus runs as v1 or v2, and how to choose.
    for name, says in (("ip-adapter-faceid-plus_sd15", "FaceID Plus v1"), ("ip-adapter-faceid-plusv2_sd15",
                                                                          "FaceID Plus v2")):  # fmt: skip
        code, out, err = run_cli("controls", "info", name, "--home", str(home.models.parent))
        assert code == 0, err
        assert "IP-Adapter FaceID Plus" in out and says in out


def test_h94_pickled_bin_with_nested_halves_imports_as_faceid(states, tmp_path):
    """h94 ships FaceID only as .bin: {"image_proj": {...}, "ip_adapter": {...}}; converted in the child."""
    nested = tiny.nested(states["faceid"])
    source = tmp_path / "ip-adapter-faceid_sd15.bin"
    torch.save(nested, source)
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    record = Library(paths).import_path(str(source), "control", convert_pickle=True)
    assert (record.name, record.format) == ("ip-adapter-faceid_sd15", "ip-adapter (faceid)")
    header = read_safetensors_header(Library(paths).path_of(record))
    assert set(header.tensors) == set(states["faceid"])


# --------------------------------------------------------------------------------------------------
# Generation


def test_faceid_equals_bare_diffusers_and_weight_zero_is_no_adapter(backend, sd_pipe, tiny_sd15_dir, states, faces):
    request = request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["alice"], 0.8),))
    ours = image_of(backend, request)
    (expected,) = bare_faceid(sd_pipe, request, states["faceid"], [faces["alice"]], 0.8)
    assert np.array_equal(ours, expected)
    without = image_of(backend, request_for(tiny_sd15_dir))
    assert np.abs(ours - without).mean() > 1.0  # the face counts
    zero = request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["alice"], 0.0),))
    assert np.array_equal(image_of(backend, zero), without)
    # Another face, another image; and the job left nothing behind.
    bob = image_of(backend, request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["bob"], 0.8),)))
    assert np.abs(bob - ours).mean() > 0.5
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), without)


@pytest.mark.parametrize(("name", "v2"), [("ip-adapter-faceid-plus_sd15", False),
                                          ("ip-adapter-faceid-plusv2_sd15", True)])  # fmt: skip
def test_faceid_plus_equals_bare_diffusers_with_the_crop_and_shortcut(
    backend, analyser, sd_pipe, tiny_sd15_dir, states, encoder, faces, name, v2
):
    request = request_for(tiny_sd15_dir, controls=(unit(name, faces["alice"], 0.9),), batch_size=2)
    analyser.crop_sizes.clear()
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    ours = [np.asarray(image.convert("RGB")).astype(np.int16) for image in batch.images]
    assert analyser.crop_sizes == [224]  # h94's and diffusers' aligned crop
    expected = bare_faceid(sd_pipe, request, states["faceid-plus"], [faces["alice"]], 0.9, encoder, v2, batch=2)
    assert all(np.array_equal(a, b) for a, b in zip(ours, expected, strict=True))
    # Without guidance (CFG scale 1) the embeddings have no negative half, as the pipeline then expects.
    unguided = request_for(tiny_sd15_dir, controls=(unit(name, faces["alice"], 0.9),), cfg_scale=1.0)
    (expected,) = bare_faceid(sd_pipe, unguided, states["faceid-plus"], [faces["alice"]], 0.9, encoder, v2)
    assert np.array_equal(image_of(backend, unguided), expected)
    # The other version differs: the shortcut counts.
    (other,) = bare_faceid(sd_pipe, request, states["faceid-plus"], [faces["alice"]], 0.9, encoder, not v2)
    assert np.abs(ours[0] - other).mean() > 0.5
    assert batch.controls[0].module == "ip-adapter_face_id_plus"


def test_several_faces_average_as_other_ip_adapters_and_mix_with_clip_units(
    backend, sd_pipe, tiny_sd15_dir, states, encoder, faces
):
    both = unit("ip-adapter-faceid-plus_sd15", faces["alice"], 0.9, more_images=(str(faces["bob"]),))
    ours = image_of(backend, request_for(tiny_sd15_dir, controls=(both,)))
    request = request_for(tiny_sd15_dir)
    paths = [faces["alice"], faces["bob"]]
    (averaged,) = bare_faceid(sd_pipe, request, states["faceid-plus"], paths, 0.9, encoder, False, average=True)
    assert np.array_equal(ours, averaged)
    (concatenated,) = bare_faceid(sd_pipe, request, states["faceid-plus"], paths, 0.9, encoder, False)
    assert not np.array_equal(ours, concatenated)
    # With a CLIP IP-Adapter unit in the same job: every unit goes to diffusers as embeddings; still clean after.
    Library_ = Library(backend._paths)  # noqa: N806
    clip = tiny.save_state(tiny.ip_adapter_state(sd_pipe.unet, seed=5), backend._paths.cache / "clip.safetensors")
    if "clip" not in [r.name for r in Library_.records("control")]:
        Library_.import_path(str(clip), "control", "clip")
    face = unit("ip-adapter-faceid_sd15", faces["alice"], 0.8)
    style = unit("clip", faces["bob"], 0.7)
    mixed = image_of(backend, request_for(tiny_sd15_dir, controls=(face, style)))
    alone = image_of(backend, request_for(tiny_sd15_dir, controls=(face,)))
    style_alone = image_of(backend, request_for(tiny_sd15_dir, controls=(style,)))
    assert np.abs(mixed - alone).mean() > 0.5 and np.abs(mixed - style_alone).mean() > 0.5
    # The CLIP unit's embeddings, made by Marble in such a job, are the pipeline's own: with the FaceID unit
    # loaded but at scale 0 on every step (its range), the image is the CLIP unit's alone (made from images).
    idle = replace(face, start=0.99, end=1.0)
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, controls=(idle, style))), style_alone)
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, controls=(face,))), alone)


def test_image_to_image_and_inpainting_read_the_face(backend, tiny_sd15_dir, faces, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), "teal").save(source)
    mask = tmp_path / "mask.png"
    white = Image.new("L", (64, 64), 0)
    white.paste(255, (0, 0, 40, 64))
    white.save(mask)
    face = unit("ip-adapter-faceid_sd15", faces["alice"])
    for edit in (dict(init_image=str(source), strength=0.8), dict(init_image=str(source), mask=str(mask))):
        plain = image_of(backend, request_for(tiny_sd15_dir, **edit))
        assert np.abs(image_of(backend, request_for(tiny_sd15_dir, controls=(face,), **edit)) - plain).mean() > 1.0


def test_no_face_and_missing_face_models_are_clear(backend, home, tiny_sd15_dir, faces, tmp_path):
    blank = request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["blank"]),))
    with pytest.raises(InvalidRequest, match="No face found in blank.png"):
        image_of(backend, blank)
    # The backend's own factory until face models can be imported: it names the files users have.
    bare_backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)
    with pytest.raises(ModelError, match="face detector and a face recognizer.*det_10g.onnx.*w600k_r50.onnx"):
        image_of(bare_backend, request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["alice"]),)))
    # A recognizer of another width, and FaceID Plus without the CLIP encoder it reads the crop with.
    narrow = StandInAnalyser()
    narrow.identity = lambda image, face: torch.ones(256) / 16
    odd = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0,
                           face_analyser=lambda: narrow)  # fmt: skip
    with pytest.raises(ModelError, match="gives 256-wide identity embeddings; .* reads 512-wide ones"):
        image_of(odd, request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["alice"]),)))
    no_encoder = AppPaths.for_root(tmp_path / "home").ensure()
    plus = Library(home).get("control", "ip-adapter-faceid-plus_sd15")
    Library(no_encoder).import_path(str(Library(home).path_of(plus)), "control", "plus")
    alone = DiffusersBackend(no_encoder, Resources.default(), ModelCatalog(no_encoder.models), preview_every=0,
                             face_analyser=StandInAnalyser)  # fmt: skip
    with pytest.raises(ModelError, match="No CLIP image encoder.*32-wide hidden size"):
        image_of(alone, request_for(tiny_sd15_dir, controls=(unit("plus", faces["alice"]),)))
    # Not asked for when the FaceID unit does not run.
    zero = request_for(tiny_sd15_dir, controls=(unit("ip-adapter-faceid_sd15", faces["alice"], 0.0),))
    assert image_of(bare_backend, zero).shape == (64, 64, 3)


# --------------------------------------------------------------------------------------------------
# Metadata and the command line


def test_cli_faceid_writes_a1111_metadata_and_reads_back(home, tiny_sd15_dir, faces, tmp_path, monkeypatch):
    out = tmp_path / "out.png"
    arguments = ["generate", "--model", str(tiny_sd15_dir), "--prompt", "a portrait", "--steps", "2", "--seed", "3",
                 "--width", "64", "--height", "64", "--device", "cpu", "--no-preview", "--home",
                 str(home.models.parent), "--ip-adapter", f"ip-adapter-faceid_sd15:{faces['alice']}:0.6",
                 "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(*arguments)
    assert code != 0 and "det_10g.onnx" in err and "Traceback" not in err and not out.exists()
    # The lead's factory goes in the seam; the stand-in here.
    stand_in = StandInAnalyser()
    monkeypatch.setattr(diffusers_backend, "library_face_analyser", lambda _catalog: lambda: stand_in)
    code, _, err = run_cli(*arguments)
    assert code == 0, err
    library = Library(home)
    digest = legacy_hash(library.path_of(library.get("control", "ip-adapter-faceid_sd15")))
    parameters = read_text_chunks(out)["parameters"]
    assert (f'ControlNet 0: "Module: ip-adapter_face_id, Model: ip-adapter-faceid_sd15 [{digest}], Weight: 0.6,'
            in parameters)  # fmt: skip
    recipe = read_recipe(interpret_chunks({"parameters": parameters}),
                         controls=[library.get("control", "ip-adapter-faceid_sd15")])  # fmt: skip
    (read,) = recipe.fields["controls"]
    assert (read.model, read.preprocessor, read.weight) == ("ip-adapter-faceid_sd15", "ip-adapter", 0.6)
    assert not [w for w in recipe.unsupported if "face_id" in w]


def test_the_companion_lora_imports_and_applies_with_the_unit(backend, home, sd_pipe, tiny_sd15_dir, faces, tmp_path):
    """h94's ip-adapter-faceid_sd15_lora naming (kohya keys over diffusers' block names, to_q/k/v/out_0 of every
    attention): the LoRA library takes it, and each of its layers adds weight x up @ down x alpha / rank."""
    from safetensors.torch import load_file

    from desktop.engine.request import LoraRef

    name = "ip-adapter-faceid_sd15_lora.safetensors"
    source = tiny.save_state(tiny.faceid_lora(sd_pipe.unet, seed=8), tmp_path / name)
    record = Library(home).import_path(str(source), "lora")
    assert record.name == "ip-adapter-faceid_sd15_lora"
    tensors = load_file(str(Library(home).path_of(record)))
    face = unit("ip-adapter-faceid_sd15", faces["alice"], 0.8)
    alone = image_of(backend, request_for(tiny_sd15_dir, controls=(face,)))
    request = request_for(tiny_sd15_dir, controls=(face,), loras=(LoraRef(record.name, 0.6),))
    with_lora = image_of(backend, request)
    assert np.abs(with_lora - alone).mean() > 0.5
    layers = {name: module for name, module in backend._pipe.unet.named_modules() if hasattr(module, "base_layer")}
    stems = {key.rsplit(".", 2)[0] for key in tensors if key.endswith(".alpha")}
    assert {"lora_unet_" + name.replace(".", "_") for name in layers} == stems  # every key applied, none left
    generator = torch.Generator().manual_seed(0)
    for name, module in layers.items():
        key = "lora_unet_" + name.replace(".", "_")
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        inputs = torch.randn(3, down.shape[1], generator=generator)
        expected = 0.6 * float(tensors[f"{key}.alpha"]) / down.shape[0] * inputs @ (up @ down).T
        with torch.no_grad():
            torch.testing.assert_close(module(inputs) - module.base_layer(inputs), expected, rtol=1e-4, atol=1e-5)


def test_sdxl_faceid_plus_equals_bare_diffusers(tmp_path, tiny_sdxl_dir, encoder, faces, analyser):
    from diffusers import StableDiffusionXLPipeline

    pipe = _plain(StableDiffusionXLPipeline, tiny_sdxl_dir)
    source = tiny.save_state(tiny.faceid_state(pipe.unet, seed=51, plus=True), tmp_path / "xl.safetensors")
    from safetensors.torch import load_file

    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    library.import_path(str(source), "control", "ip-adapter-faceid-plusv2_sdxl")
    library.import_path(str(tiny.save_image_encoder(encoder, tmp_path / "enc.safetensors")), "control", "enc")
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0,
                               face_analyser=lambda: analyser)  # fmt: skip
    request = request_for(tiny_sdxl_dir, controls=(unit("ip-adapter-faceid-plusv2_sdxl", faces["bob"], 0.9),))
    (expected,) = bare_faceid(pipe, request, load_file(str(source)), [faces["bob"]], 0.9, encoder, True)
    assert np.array_equal(image_of(backend, request), expected)


def test_range_and_hires_fix_act_on_faceid_units(backend, tiny_sd15_dir, faces):
    face = unit("ip-adapter-faceid-plus_sd15", faces["alice"])
    full = image_of(backend, request_for(tiny_sd15_dir, controls=(face,)))
    late = image_of(backend, request_for(tiny_sd15_dir, controls=(replace(face, start=0.5),)))
    without = image_of(backend, request_for(tiny_sd15_dir))
    assert not np.array_equal(late, full) and not np.array_equal(late, without)
    # Both passes of the hires fix read the face (the second gets the same embeddings).
    hires = dict(hires_fix=True, hires_scale=2.0, hires_steps=2, hires_denoise=0.6)
    plain_hires = image_of(backend, request_for(tiny_sd15_dir, **hires))
    face_hires = image_of(backend, request_for(tiny_sd15_dir, controls=(face,), **hires))
    assert face_hires.shape == (128, 128, 3) and np.abs(face_hires - plain_hires).mean() > 1.0
