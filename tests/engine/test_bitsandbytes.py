"""bitsandbytes NF4/int8: Forge's pre-quantised files (`flux1-dev-bnb-nf4`) and diffusers folders saved with a
`quantization_config` are named in the library ("nf4 (bitsandbytes)"); a Forge file loads, dequantised by
bitsandbytes itself, where the package is installed (it runs on the CPU too), and without it the error says
what to install. The nf4/int8 memory modes quantise a full-precision transformer's linear layers as loaded.

bitsandbytes is optional (pyproject's `quant` extra; in `test`): the tests that run it skip without it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.backends.families import convert_flux_bfl
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_flux, bare_image
from tests.engine.test_scaled_fp8 import with_weights
from tests.support.tiny_dit import build_tiny_flux, config_folder, flux_to_bfl, save_pipeline

PREFIX = "model.diffusion_model."
# The nf4 image against the full-precision one, mean difference per channel in 0-255 levels: NF4 keeps 16 levels
# a 64-weight block. The tiny random model's nf4 image is about 4 levels away; another seed 43.
NF4_MEAN_TOLERANCE = 8.0
NF4_NAME = "flux1-dev-bnb-nf4.safetensors"


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bnb")
    pipe = build_tiny_flux()
    return {"pipe": pipe, "folder": save_pipeline(pipe, tmp / "flux"), "config": config_folder(pipe, tmp / "config")}


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def forge_nf4(state):
    """(Forge's file tensors, the dequantised weights): each 2-D weight packed by bitsandbytes with its
    quantisation state beside it (double-quantised absmax, as Forge's files hold), the rest as it was."""
    import bitsandbytes.functional as F

    file, exact = {}, {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight"):
            weight = value.float().contiguous()
            packed, quant_state = F.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
            file[PREFIX + key] = packed
            for part, tensor in quant_state.as_dict(packed=True).items():
                file[f"{PREFIX}{key}.{part}"] = tensor
            exact[key] = F.dequantize_4bit(packed, quant_state)
        else:
            file[PREFIX + key] = exact[key] = value.contiguous()
    return file, exact


def fake_forge_file(path, state):
    """Forge's tensor names with placeholder contents: enough to detect, built without bitsandbytes."""
    file = {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight"):
            file[PREFIX + key] = torch.zeros((value.numel() // 2, 1), dtype=torch.uint8)
            file[f"{PREFIX}{key}.absmax"] = torch.ones(max(1, value.numel() // 64))
            file[f"{PREFIX}{key}.quant_map"] = torch.zeros(16)
            file[f"{PREFIX}{key}.quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)
        else:
            file[PREFIX + key] = value.contiguous()
    save_file(file, str(path))
    return path


def test_a_forge_nf4_file_is_named_in_the_library(flux, tmp_path):
    path = fake_forge_file(tmp_path / NF4_NAME, flux_to_bfl(flux["pipe"].transformer.state_dict()))
    arch = detect_model(path)
    assert (arch.family, arch.dit.variant, arch.dit.bitsandbytes) == ("flux", "dev", "BNB_NF4")
    assert arch.dit.parameters == sum(v.numel() for v in flux["pipe"].transformer.state_dict().values())
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="nf4")
    assert record.shown_architecture.endswith(", nf4 (bitsandbytes)"), record.shown_architecture


def test_a_forge_nf4_file_without_bitsandbytes_says_what_to_install(flux, paths, tmp_path, monkeypatch):
    path = fake_forge_file(tmp_path / NF4_NAME, flux_to_bfl(flux["pipe"].transformer.state_dict()))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a computer without it: import fails
    request = request_for(path, negative_prompt="", model_config=str(flux["config"]), text_encoders=str(flux["folder"]))
    needs = r"nf4\.safetensors holds nf4 \(bitsandbytes\) weights, which need the bitsandbytes package: install"
    with pytest.raises(ModelError, match=needs + r" it .*\(pip install bitsandbytes\)"):
        run(make_backend(paths), request)


def test_a_diffusers_folder_saved_with_bitsandbytes_is_named_and_refused_without_cuda(flux, paths, tmp_path):
    folder = save_pipeline(flux["pipe"], tmp_path / "flux-nf4")
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    config_file.write_text(json.dumps(config))
    arch = detect_model(folder)
    assert arch.dit.bitsandbytes == "BNB_NF4"
    if torch.cuda.is_available():
        pytest.skip("with CUDA the folder loads: test_bitsandbytes_cuda covers it")
    with pytest.raises(ModelError, match=r"flux-nf4 is a diffusers folder saved with nf4 \(bitsandbytes\) weights, "
                                         r"which diffusers loads on a CUDA GPU only"):  # fmt: skip
        run(make_backend(paths), request_for(folder, negative_prompt=""))


def test_a_forge_nf4_file_matches_diffusers_on_the_dequantised_weights(flux, paths, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is optional (the `quant` extra)")
    pipe = flux["pipe"]
    file, exact = forge_nf4(flux_to_bfl(pipe.transformer.state_dict()))
    path = tmp_path / "flux1-dev-bnb-nf4.safetensors"
    save_file(file, str(path))
    request = request_for(path, negative_prompt="", distilled_cfg_scale=3.5, model_config=str(flux["config"]),
                          text_encoders=str(flux["folder"]))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    extra = {"guidance_scale": 3.5, "max_sequence_length": 512}
    dequantised = with_weights(pipe.transformer, convert_flux_bfl(exact))
    assert np.array_equal(got, bare_image(bare_flux(flux["folder"], dequantised), request, **extra))
    full = bare_image(bare_flux(flux["folder"]), request, **extra)
    difference = np.abs(got.astype(float) - full.astype(float)).mean()
    assert 0 < difference < NF4_MEAN_TOLERANCE, difference
