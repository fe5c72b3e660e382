"""LyCORIS files (LoHa, LoKr, (IA)3, full diff): detected from headers, merged into the real backend's weights
exactly as computed here by hand, scaled by the LoRA weight, and taken out again."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import ModelError
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.lora import inspect_lora
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest, LoraRef
from desktop.engine.resources import Resources
from tests.support import tiny_loras, tiny_models
from tests.support.tiny_loras import TEXT_TARGETS, UNET_TARGETS, _clip_path, _linear_modules

RANK = 4
ALPHA = 2.0  # scale alpha / rank = 0.5 where the file is rank-decomposed

# Each maker: (generator, layer) -> (the file's tensors for that layer by suffix, the weight change at weight 1)
Maker = Callable[[torch.Generator, torch.nn.Linear], tuple[dict[str, torch.Tensor], torch.Tensor]]


def _randn(generator: torch.Generator, *shape: int, scale: float = 0.5) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def loha(generator: torch.Generator, layer: torch.nn.Linear) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out_f, in_f = layer.weight.shape
    parts = {
        "hada_w1_a": _randn(generator, out_f, RANK), "hada_w1_b": _randn(generator, RANK, in_f),
        "hada_w2_a": _randn(generator, out_f, RANK), "hada_w2_b": _randn(generator, RANK, in_f),
        "alpha": torch.tensor(ALPHA),
    }  # fmt: skip
    # Hadamard product of two low-rank products, scaled alpha / rank.
    delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"]) * (ALPHA / RANK)
    return parts, delta


def lokr(generator: torch.Generator, layer: torch.nn.Linear) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out_f, in_f = layer.weight.shape
    parts = {
        "lokr_w1": _randn(generator, 4, 4, scale=0.3),
        "lokr_w2_a": _randn(generator, out_f // 4, RANK), "lokr_w2_b": _randn(generator, RANK, in_f // 4),
        "alpha": torch.tensor(ALPHA),
    }  # fmt: skip
    delta = torch.kron(parts["lokr_w1"], parts["lokr_w2_a"] @ parts["lokr_w2_b"]) * (ALPHA / RANK)
    return parts, delta


def lokr_full(generator: torch.Generator, layer: torch.nn.Linear) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    out_f, in_f = layer.weight.shape
    parts = {
        "lokr_w1": _randn(generator, 2, 2, scale=0.3), "lokr_w2": _randn(generator, out_f // 2, in_f // 2, scale=0.2),
    }  # fmt: skip
    return parts, torch.kron(parts["lokr_w1"], parts["lokr_w2"])  # both factors whole: no alpha scale


def full(generator: torch.Generator, layer: torch.nn.Linear) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    parts = {"diff": _randn(generator, *layer.weight.shape, scale=0.1)}
    return parts, parts["diff"]


def ia3(generator: torch.Generator, layer: torch.nn.Linear) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    # A1111's network_ia3: the weight scaled along its inputs (on_input) by the learned vector.
    vector = _randn(generator, layer.weight.shape[1], scale=0.8)
    parts = {"weight": vector, "on_input": torch.tensor(True)}
    return parts, layer.weight.detach() * vector.reshape(1, -1)


MAKERS: dict[str, Maker] = {"loha": loha, "lokr": lokr, "lokr-full": lokr_full, "full": full, "ia3": ia3}


def make_file(pipe, maker: Maker, seed: int, path: Path, sgm: bool = False) -> dict[tuple[str, str], torch.Tensor]:
    """Write a kohya-named LyCORIS file for the tiny model (SDXL UNet layers by their original SGM names when
    `sgm`); return {(component, module path): weight change}."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[tuple[str, str], torch.Tensor] = {}
    xl = getattr(pipe, "text_encoder_2", None) is not None
    layers = [("lora_unet_", "unet", name, layer) for name, layer in _linear_modules(pipe.unet, UNET_TARGETS)]
    for prefix, component in (("lora_te1_" if xl else "lora_te_", "text_encoder"), ("lora_te2_", "text_encoder_2")):
        if getattr(pipe, component, None) is not None:
            layers += [(prefix, component, n, m) for n, m in _linear_modules(getattr(pipe, component), TEXT_TARGETS)]
    for prefix, component, name, layer in layers:
        path_name = _clip_path(name) if component != "unet" else (tiny_loras.sgm_unet_name(name) if sgm else name)
        key = prefix + path_name.replace(".", "_")
        parts, delta = maker(generator, layer)
        tensors.update({f"{key}.{suffix}": value.contiguous() for suffix, value in parts.items()})
        deltas[(component, name)] = delta
    tiny_loras.save_lora(tensors, path)
    return deltas


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_sd15_dir):
    """A home with one file of each kind, and each file's weight changes as computed by hand."""
    paths = AppPaths.for_root(tmp_path_factory.mktemp("lycoris-home")).ensure()
    pipe = type(tiny_models.build_tiny_sd15()).from_pretrained(str(tiny_sd15_dir))
    deltas = {kind: make_file(pipe, maker, seed, paths.loras / f"{kind}.safetensors")
              for seed, (kind, maker) in enumerate(MAKERS.items())}  # fmt: skip
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(pipe, seed=9), paths.loras / "plain.safetensors")
    return paths, deltas


@pytest.fixture(scope="module")
def backend(made) -> DiffusersBackend:
    paths, _ = made
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)


def request_for(model, **changes) -> GenerationRequest:
    values = dict(prompt="a red circle on a blue background", model=str(model), steps=3, cfg_scale=7.0, seed=7,
                  width=64, height=64, device="cpu", sampler="Euler")  # fmt: skip
    return GenerationRequest(**(values | changes)).validate()


def image_of(backend: DiffusersBackend, request: GenerationRequest) -> np.ndarray:
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    return np.asarray(batch.images[0].convert("RGB")).astype(np.int16)


def merged_by_hand(tiny_sd15_dir: Path, deltas, weight: float, folder: Path) -> Path:
    """The tiny model with each weight change added by hand at `weight`, saved as a model of its own."""
    pipe = type(tiny_models.build_tiny_sd15()).from_pretrained(str(tiny_sd15_dir))
    with torch.no_grad():
        for (component, name), delta in deltas.items():
            getattr(pipe, component).get_submodule(name).weight.add_(delta * weight)
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def base_image(backend, tiny_sd15_dir) -> np.ndarray:
    return image_of(backend, request_for(tiny_sd15_dir))


def test_lycoris_kinds_are_detected_with_their_widths(made):
    paths, _ = made
    kinds = (("loha", "loha"), ("lokr", "lokr"), ("lokr-full", "lokr"), ("full", "full"), ("ia3", "ia3"))
    for kind, algorithm in kinds:
        info = inspect_lora(read_safetensors_header(paths.loras / f"{kind}.safetensors"))
        assert (info.format, info.algorithm, info.unet, info.text_encoder) == ("kohya", algorithm, True, True)
        if kind != "ia3":  # an (IA)3 vector gives one width only
            assert (info.context_dim, info.text_width) == (32, 32)
    assert inspect_lora(read_safetensors_header(paths.loras / "plain.safetensors")).algorithm == "lora"


@pytest.mark.parametrize("kind", list(MAKERS))
def test_a_lycoris_file_equals_its_weights_merged_by_hand(made, backend, tiny_sd15_dir, base_image, tmp_path, kind):
    paths, deltas = made
    applied = image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef(kind, 1.0),)))
    assert np.abs(applied - base_image).mean() > 2.0
    reference = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)
    expected = image_of(reference, request_for(merged_by_hand(tiny_sd15_dir, deltas[kind], 1.0, tmp_path / "m")))
    assert np.abs(applied - expected).max() <= 1
    # Taken out again: exactly the model's own image.
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), base_image)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_weight_half_adds_half_the_change(made, backend, tiny_sd15_dir, base_image, tmp_path, kind):
    paths, deltas = made
    half = image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef(kind, 0.5),)))
    whole = image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef(kind, 1.0),)))
    assert np.abs(half - whole).mean() > 1.0
    reference = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=0)
    expected = image_of(reference, request_for(merged_by_hand(tiny_sd15_dir, deltas[kind], 0.5, tmp_path / "m")))
    assert np.abs(half - expected).max() <= 1
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef(kind, 0.0),))), base_image)


def test_lycoris_and_a_plain_lora_together_and_switching_between_them(backend, tiny_sd15_dir, base_image):
    plain = image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef("plain", 1.0),)))
    both = image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef("plain", 1.0), LoraRef("loha", 1.0))))
    assert np.abs(both - plain).mean() > 2.0
    # Many switches leave no drift: the same request gives the same image again.
    image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef("lokr", 0.7),)))
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef("plain", 1.0),))), plain)
    assert np.array_equal(image_of(backend, request_for(tiny_sd15_dir)), base_image)


def test_a_lycoris_file_for_another_model_is_refused(made, backend, tiny_sdxl_dir, tmp_path):
    with pytest.raises(ModelError, match="does not fit|changed nothing"):
        image_of(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("loha", 1.0),)))


def test_sdxl_loha_with_original_block_names_equals_the_diffusers_named_one(made, backend, tiny_sdxl_dir):
    paths, _ = made
    sdxl = type(tiny_models.build_tiny_sdxl()).from_pretrained(str(tiny_sdxl_dir))
    by_name = make_file(sdxl, loha, 30, paths.loras / "xl-loha.safetensors")
    make_file(sdxl, loha, 30, paths.loras / "xl-loha-sgm.safetensors", sgm=True)
    assert inspect_lora(read_safetensors_header(paths.loras / "xl-loha-sgm.safetensors")).family == "sdxl"
    assert any(component == "text_encoder_2" for component, _ in by_name)
    base = image_of(backend, request_for(tiny_sdxl_dir))
    diffusers_named = image_of(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("xl-loha", 1.0),)))
    sgm_named = image_of(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("xl-loha-sgm", 1.0),)))
    assert np.abs(diffusers_named - base).mean() > 2.0
    assert np.array_equal(sgm_named, diffusers_named)


def test_layers_that_match_nothing_are_named_in_a_note(made, backend, tiny_sd15_dir):
    paths, _ = made
    from safetensors.torch import load_file

    tensors = load_file(str(paths.loras / "loha.safetensors"))
    tensors.update({f"lora_unet_no_such_block_to_q.{suffix}": torch.ones(4, 4) for suffix in
                    ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")})  # fmt: skip
    tiny_loras.save_lora(tensors, paths.loras / "loha-extra.safetensors")
    request = request_for(tiny_sd15_dir, loras=(LoraRef("loha-extra", 1.0),))
    backend.load(request)
    batch = backend.generate(request, 0, lambda _: None, CancelToken())
    assert any("1 of the" in note and "'loha-extra'" in note and "skipped" in note for note in batch.notes)


def test_the_library_names_the_lycoris_kind(made, tmp_path):
    from desktop.engine.library.index import Library

    paths, _ = made
    library = Library(AppPaths.for_root(tmp_path / "h").ensure())
    record = library.import_path(paths.loras / "lokr.safetensors", "lora", "k")
    assert (record.architecture, record.format) == ("unknown base model LoKr", "kohya")


def test_lokr_for_a_convolution_is_torch_kron_with_the_kernel_kept():
    from desktop.engine.backends.lycoris import layer_delta

    generator = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(2, 4, generator=generator), torch.randn(8, 4, 3, 3, generator=generator)
    weight = torch.zeros(16, 16, 3, 3)
    delta, bias = layer_delta({"lokr_w1": w1, "lokr_w2": w2}, weight, "conv")
    assert bias is None and torch.allclose(delta, torch.kron(w1[:, :, None, None], w2))


def test_a_damaged_lycoris_file_is_refused_with_a_message(made, backend, tiny_sd15_dir):
    paths, _ = made
    from safetensors.torch import load_file

    tensors = load_file(str(paths.loras / "loha.safetensors"))
    first = sorted(key for key in tensors if key.endswith(".hada_w1_b"))[0]
    tensors[first] = torch.ones(3, 5)  # its rank no longer matches hada_w1_a
    tiny_loras.save_lora(tensors, paths.loras / "loha-damaged.safetensors")
    with pytest.raises(ModelError, match="'loha-damaged' could not be applied.*damaged or does not fit"):
        image_of(backend, request_for(tiny_sd15_dir, loras=(LoraRef("loha-damaged", 1.0),)))
