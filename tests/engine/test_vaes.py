"""VAEs as a library kind: detection from headers, the CLI, and decoding with one through the real backend."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from desktop.engine.backends import vae_swap
from desktop.engine.backends.base import VaeHash
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken, Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.index import guess_kind
from desktop.engine.library.vae import inspect_vae
from desktop.engine.metadata import (
    format_parameters,
    parse_parameters,
    read_image_metadata,
    read_text_chunks,
    request_from_parameters,
)
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from tests.support import tiny_loras, tiny_models
from tests.support.cli_runner import run_cli


@pytest.fixture(scope="module")
def tiny_vae():
    return tiny_models.build_tiny_vae(seed=21)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_vae) -> AppPaths:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("vae-home")).ensure()
    tiny_models.save_vae_file(tiny_vae, paths.vaes / "crisp.safetensors", "ldm")
    tiny_models.save_vae_file(tiny_vae, paths.vaes / "crisp-diffusers.safetensors", "diffusers")
    tiny_models.save_vae_file(
        tiny_models.build_tiny_vae(seed=22, latent_channels=16), paths.vaes / "flux-vae.safetensors"
    )
    tiny_models.save_vae_file(
        tiny_models.build_tiny_vae(seed=23, channels=(32, 64, 64, 96)), paths.vaes / "other-widths.safetensors"
    )
    return paths


@pytest.fixture(scope="module")
def backend(home) -> DiffusersBackend:
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)


def request_for(model, **changes) -> GenerationRequest:
    values = dict(prompt="a red circle on a blue background", model=str(model), steps=3, cfg_scale=7.0, seed=7,
                  width=64, height=64, device="cpu", sampler="Euler")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def image_of(backend: DiffusersBackend, request: GenerationRequest) -> np.ndarray:
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB")).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize(("layout", "prefix"), [("ldm", ""), ("ldm", "first_stage_model."), ("diffusers", "")])
def test_vae_layouts_are_detected_from_tensor_names(tmp_path, tiny_vae, layout, prefix):
    path = tiny_models.save_vae_file(tiny_vae, tmp_path / "v.safetensors", layout, prefix)
    info = inspect_vae(read_safetensors_header(path))
    assert (info.layout, info.prefix, info.latent_channels, info.family) == (layout, prefix, 4, "sd")
    assert guess_kind(path) == "vae"


def test_latent_width_is_read_from_the_decoder(home):
    info = inspect_vae(read_safetensors_header(home.vaes / "flux-vae.safetensors"))
    assert (info.latent_channels, info.family, info.label) == (16, None, "SD3 / Flux VAE")


def test_a_checkpoint_and_a_lora_are_not_vaes(tiny_sd15_single, tmp_path):
    with pytest.raises(ModelError, match="whole checkpoint"):
        inspect_vae(read_safetensors_header(tiny_sd15_single[0]), "model.safetensors")
    lora = tiny_loras.save_lora(tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15()), tmp_path / "l.safetensors")
    with pytest.raises(ModelError, match="is not a VAE"):
        inspect_vae(read_safetensors_header(lora), "l.safetensors")
    assert guess_kind(tiny_sd15_single[0]) == "model"


# --------------------------------------------------------------------------------------------------
# The command line


def test_vaes_import_list_info_remove(tmp_path, home):
    where = str(tmp_path / "home")
    source = home.vaes / "crisp.safetensors"
    code, out, err = run_cli("vaes", "import", str(source), "--name", "Crisp", "--json", "--home", where)
    assert code == 0, err
    imported = json.loads(out)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert (imported["kind"], imported["format"], imported["autov2"]) == ("vae", "ldm", sha[:10])
    assert imported["path"].endswith("vae/Crisp.safetensors")
    code, out, _ = run_cli("vaes", "list", "--home", where)
    assert out.startswith("Crisp\tSD 1.x / 2.x / SDXL VAE")
    code, out, _ = run_cli("vaes", "info", "Crisp", "--home", where)
    assert code == 0 and sha in out
    code, out, err = run_cli("vaes", "remove", "Crisp", "--home", where)
    assert code == 0 and "Removed Crisp" in err
    code, out, _ = run_cli("vaes", "list", "--home", where)
    assert "No VAEs yet" in out


def test_a_model_is_refused_as_a_vae(tmp_path, tiny_sd15_single):
    code, _, err = run_cli("vaes", "import", str(tiny_sd15_single[0]), "--home", str(tmp_path / "h"))
    assert code != 0 and "whole checkpoint" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Decoding with a chosen VAE


@pytest.fixture(scope="module")
def own_image(backend, tiny_sd15_dir) -> np.ndarray:
    return image_of(backend, request_for(tiny_sd15_dir))


@pytest.fixture(scope="module")
def model_with_that_vae(tmp_path_factory, tiny_sd15_dir, tiny_vae) -> Path:
    """The tiny model with the tiny VAE as its own, saved by diffusers: the reference decode."""
    folder = tmp_path_factory.mktemp("own-vae") / "model"
    shutil.copytree(tiny_sd15_dir, folder)
    shutil.rmtree(folder / "vae")
    tiny_vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    return folder


def test_a_chosen_vae_changes_the_image_and_equals_decoding_with_it(
    home, backend, tiny_sd15_dir, own_image, model_with_that_vae
):
    swapped = image_of(backend, request_for(tiny_sd15_dir, vae="crisp"))
    assert np.abs(swapped - own_image).mean() > 2.0
    reference = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)
    expected = image_of(reference, request_for(model_with_that_vae))
    assert np.abs(swapped - expected).max() <= 1
    # The diffusers-layout file is the same VAE.
    assert np.abs(image_of(backend, request_for(tiny_sd15_dir, vae="crisp-diffusers")) - expected).max() <= 1
    # Back to the model's own: exactly the image it made before.
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), own_image)


def test_a_single_file_model_takes_a_vae_too(backend, tiny_sd15_single):
    model, config = tiny_sd15_single
    own = image_of(backend, request_for(model, model_config=str(config)))
    swapped = image_of(backend, request_for(model, model_config=str(config), vae="crisp"))
    assert np.abs(swapped - own).mean() > 2.0


def test_a_vae_for_another_latent_space_is_refused_clearly(backend, tiny_sd15_dir, own_image):
    with pytest.raises(ModelError, match="16 latent channels.*works in 4"):
        image_of(backend, request_for(tiny_sd15_dir, vae="flux-vae"))
    with pytest.raises(ModelError, match="VAE 'other-widths' does not fit tiny-sd15: .* missing"):
        image_of(backend, request_for(tiny_sd15_dir, vae="other-widths"))
    # A refused VAE leaves the model's own in place.
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), own_image)


def test_an_unknown_vae_name_is_refused_with_the_list(backend, tiny_sd15_dir):
    with pytest.raises(ModelError, match="No VAE named 'nope'.*crisp.*marble vaes import"):
        image_of(backend, request_for(tiny_sd15_dir, vae="nope"))
    with pytest.raises(ModelError, match="No VAE named"):
        image_of(backend, request_for(tiny_sd15_dir, vae="../vae/crisp"))


def test_runner_writes_the_vae_and_its_hash_and_reading_restores_it(home, backend, tiny_sd15_dir, tmp_path):
    job = Job(request_for(tiny_sd15_dir, vae="crisp"))
    state = JobRunner(backend, ImageWriter(tmp_path / "out", dated=False), "test").run(job, lambda _: None)
    assert state is JobState.FINISHED
    (png,) = list((tmp_path / "out").glob("*.png"))
    parameters = read_text_chunks(png)["parameters"]
    sha = hashlib.sha256((home.vaes / "crisp.safetensors").read_bytes()).hexdigest()
    assert f"VAE hash: {sha[:10]}, VAE: crisp.safetensors," in parameters
    assert read_image_metadata(png).request.vae == "crisp"
    # A1111's own text (its VAE is the file name) reads back to the library name.
    parsed = parse_parameters(parameters)
    assert parsed.settings["VAE hash"] == sha[:10]


def test_no_vae_writes_no_vae_fields():
    request = GenerationRequest(prompt="p", model="m")
    text = format_parameters(request, 1, None, "1")
    assert "VAE" not in text
    with_vae = format_parameters(request, 1, None, "1", vae=VaeHash("x", "0123456789"))
    assert "VAE hash: 0123456789, VAE: x.safetensors" in with_vae


@pytest.mark.parametrize(
    ("written", "name"),
    [("vae-ft-mse-840000-ema-pruned.safetensors", "vae-ft-mse-840000-ema-pruned"),
     ("kl-f8-anime2.ckpt", "kl-f8-anime2"), ("sdxl_vae", "sdxl_vae"), ("None", ""), ("Automatic", "")],
)  # fmt: skip
def test_a1111_text_gives_back_the_vaes_library_name(written, name):
    text = f"a cat\nSteps: 20, Sampler: Euler, Seed: 5, Size: 64x64, VAE hash: 0123456789, VAE: {written}, Version: v1"
    assert request_from_parameters(parse_parameters(text), "m").vae == name


def test_generate_with_vae_on_the_command_line(tmp_path, home, tiny_sd15_dir):
    where = tmp_path / "home"
    (where / "vae").mkdir(parents=True)
    shutil.copy(home.vaes / "crisp.safetensors", where / "vae" / "crisp.safetensors")
    out = tmp_path / "out.png"
    args = ("generate", "--model", str(tiny_sd15_dir), "--prompt", "a cat", "--steps", "1", "--seed", "3",
            "--width", "64", "--height", "64", "--device", "cpu", "--no-preview", "--home", str(where))  # fmt: skip
    code, _, err = run_cli(*args, "--vae", "crisp", "--out", str(out))
    assert code == 0, err
    sha = hashlib.sha256((home.vaes / "crisp.safetensors").read_bytes()).hexdigest()
    assert f"VAE hash: {sha[:10]}, VAE: crisp.safetensors" in read_text_chunks(out)["parameters"]
    code, _, err = run_cli(*args, "--vae", "missing", "--out", str(tmp_path / "x.png"))
    assert code != 0 and "No VAE named 'missing'" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["a\x00b", "x" * 201, 3])
def test_a_bad_vae_name_is_refused_by_validation(name):
    with pytest.raises(InvalidRequest, match="VAE name"):
        GenerationRequest(prompt="p", model="m", vae=name).validate()


def test_a_vae_error_quotes_a_missing_tensors_name_without_its_quotes():
    # A VAE file without a tensor fails with a KeyError, whose text is the name in quotes.
    assert vae_swap._short(KeyError("decoder.conv_in.weight")) == "decoder.conv_in.weight"
    assert vae_swap._short(RuntimeError("\x1b[1msize mismatch\x1b[0m for x\nmore")) == "size mismatch for x"
