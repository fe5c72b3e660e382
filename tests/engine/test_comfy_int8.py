"""ComfyUI's int8 transformer files (its "int8_tensorwise" layers, with and without ConvRot, the form Comfy-Org
ships Qwen-Image 2.1 in: `qwen_image_2.1_int8_convrot.safetensors`): detected ("int8 scaled (ComfyUI)" in the
library row) and dequantised at load, the ConvRot rotation undone, so the image is bare diffusers' with the
dequantised weights, pixel for pixel. Before, the int8 weights were taken times their scales with the rotation
left in: a ConvRot file made noise, silently."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_qwen21 import bare_image, bare_pipe
from tests.support.tiny_qwen21 import build_tiny_qwen21, save_folder, to_comfy

GROUP = 16  # a power of 4 that divides every input width of the tiny model
PREFIX = "model.diffusion_model."


def hadamard(size: int) -> torch.Tensor:
    """The normalised regular Hadamard matrix ConvRot rotates by (Kronecker powers of the 4x4 one whose rows sum
    to 2), built here with numpy."""
    base = np.array([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=np.float64)
    matrix = base
    while matrix.shape[0] < size:
        matrix = np.kron(matrix, base)
    return torch.from_numpy(matrix / np.sqrt(size)).float()


def comfy_int8(state: dict[str, torch.Tensor], *, convrot: bool):
    """(the file's tensors, the dequantised weights, the weights with the rotation left in), as ComfyUI's
    quantiser writes them: each 2-D weight rotated group-wise (W H^T) when `convrot`, then quantised row by row
    to int8 (scale = the row's largest magnitude / 127), its scale (rows, 1) and a `comfy_quant` JSON record
    beside it; everything else as it was."""
    h = hadamard(GROUP)
    record = {"format": "int8_tensorwise", "convrot": convrot} | ({"convrot_groupsize": GROUP} if convrot else {})
    file, exact, rotated = {}, {}, {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight") and value.shape[1] % GROUP == 0:  # not T5's bias table
            rows, inputs = value.shape
            turned = (value.float().reshape(rows, -1, GROUP) @ h.T).reshape(rows, inputs) if convrot else value
            scale = turned.abs().amax(dim=1, keepdim=True) / 127
            codes = torch.round(turned / scale).clamp(-127, 127).to(torch.int8)
            layer = PREFIX + key.removesuffix("weight")
            file[PREFIX + key], file[layer + "weight_scale"] = codes, scale
            file[layer + "comfy_quant"] = torch.tensor(list(json.dumps(record).encode()), dtype=torch.uint8)
            product = codes.float() * scale
            rotated[key] = product
            exact[key] = (product.reshape(rows, -1, GROUP) @ h.T).reshape(rows, inputs) if convrot else product
        else:
            file[PREFIX + key] = exact[key] = rotated[key] = value.contiguous()
    return file, exact, rotated


def split(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's fused SwiGLU input back in diffusers' two layers (gate rows first)."""
    out = {}
    for key, value in state.items():
        if key.endswith("img_mlp.gate_up.weight"):
            gate, up = value.chunk(2)
            out[key.replace("gate_up", "gate_layer")], out[key.replace("gate_up", "proj")] = gate, up
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def qwen21(tmp_path_factory):
    pipe = build_tiny_qwen21()
    return {"pipe": pipe, "folder": save_folder(pipe, tmp_path_factory.mktemp("int8") / "Qwen-Image-2.1")}


def with_weights(transformer, state):
    copied = copy.deepcopy(transformer)
    copied.load_state_dict(state, strict=True)
    return copied


@pytest.mark.parametrize("convrot", [True, False])
def test_comfy_int8_files_match_diffusers_on_the_dequantised_weights(qwen21, tmp_path, convrot):
    pipe = qwen21["pipe"]
    comfy = {k.removeprefix(PREFIX): v for k, v in to_comfy(dict(pipe.transformer.state_dict())).items()}
    file, exact, rotated = comfy_int8(comfy, convrot=convrot)
    path = tmp_path / "qwen_image_2.1_int8_convrot.safetensors"
    save_file(file, str(path))
    arch = detect_model(path)
    assert (arch.family, arch.dit.dtype, arch.dit.scaled_fp8) == ("qwen-image-2.1", "I8_SCALED", True)
    record = Library(AppPaths.for_root(tmp_path / "lib").ensure()).import_path(path, "model", name="int8")
    assert record.shown_architecture.endswith(", int8 scaled (ComfyUI)"), record.shown_architecture
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(path, steps=3, cfg_scale=1.0, model_config=str(qwen21["folder"]),
                          text_encoders=str(qwen21["folder"]))  # fmt: skip
    got = pixels(run(make_backend(paths), request)[0].images[0])
    expected = bare_image(bare_pipe(qwen21["folder"], with_weights(pipe.transformer, split(exact))), request)
    assert np.array_equal(got, expected)
    if convrot:  # what leaving the rotation in would give (Marble's reading before it knew ConvRot)
        left_in = bare_image(bare_pipe(qwen21["folder"], with_weights(pipe.transformer, split(rotated))), request)
        assert np.abs(left_in.astype(float) - got.astype(float)).mean() > 10


def test_the_rotation_is_its_own_inverse():
    from desktop.engine.backends.quantised_weights import regular_hadamard

    for size in (4, 16, 64, 256):
        h = regular_hadamard(size)
        assert torch.equal(h, hadamard(size)) and torch.allclose(h @ h.T, torch.eye(size), atol=1e-6)
        assert torch.equal(h, h.T)


def test_other_comfy_formats_and_damaged_records_are_refused_by_name(qwen21, tmp_path):
    comfy = {k.removeprefix(PREFIX): v for k, v in to_comfy(dict(qwen21["pipe"].transformer.state_dict())).items()}
    file, _, _ = comfy_int8(comfy, convrot=True)
    layer = PREFIX + "transformer_blocks.0.attn.to_q."
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    cases = {
        b'{"format": "convrot_w4a4", "convrot_groupsize": 16}': r"transformer_blocks\.0\.attn\.to_q is stored in "
                                                               r"ComfyUI's 'convrot_w4a4' quantisation",
        b'{"format": "int8_tensorwise", "convrot": true, "convrot_groupsize": 8}': r"ConvRot group of 8, not a power",
        b"\xff\xfe": r"to_q\.comfy_quant is not ComfyUI's quantisation record",
    }
    for number, (record, message) in enumerate(cases.items()):
        path = tmp_path / f"odd-{number}.safetensors"
        save_file(file | {layer + "comfy_quant": torch.tensor(list(record), dtype=torch.uint8)}, str(path))
        request = request_for(path, steps=2, model_config=str(qwen21["folder"]), text_encoders=str(qwen21["folder"]))
        with pytest.raises(ModelError, match=rf"odd-{number}\.safetensors: .*{message}"):
            run(make_backend(paths), request)


def test_an_int8_convrot_t5_from_the_library_computes_its_dequantised_weights(tmp_path):
    # Text encoders keep fp8 weights packed as they run; an int8 ConvRot one is dequantised (its rotation undone)
    # instead: the outputs of a T5 holding the dequantised weights, exactly.
    from desktop.engine.backends.encoder_components import Component, inspect_component, load_encoder
    from tests.engine.test_scaled_fp8_encoders import IDS, tiny_t5

    model, class_name, state = tiny_t5()
    file, exact, rotated = comfy_int8(state, convrot=True)
    path = tmp_path / "t5xxl_int8_convrot.safetensors"
    save_file({k.removeprefix(PREFIX): v for k, v in file.items()}, str(path))
    model.config.save_pretrained(tmp_path / "config")
    component = Component("t5", path)
    assert inspect_component(component).dtype == "I8_SCALED"
    loaded = load_encoder(tmp_path / "config", class_name, component, inspect_component(component),
                          dtype=torch.float32)  # fmt: skip
    reference = copy.deepcopy(model)
    reference.load_state_dict(exact, strict=False)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).last_hidden_state, reference(IDS).last_hidden_state)
        left_in = copy.deepcopy(model)
        left_in.load_state_dict(rotated, strict=False)
        assert not torch.allclose(loaded(IDS).last_hidden_state, left_in(IDS).last_hidden_state, atol=1e-3)
