"""LoRAs: detection from headers, prompt tags, names-are-data, and applying them through the real backend."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from desktop.engine.backends.base import AdapterHash, StepInfo
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.jobs import CancelToken, Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.checkpoint import autov3_hash, read_safetensors_header
from desktop.engine.library.lora import (
    AdapterCatalog,
    ModelShape,
    check_lora_fits,
    inspect_lora,
    merge_loras,
    parse_lora_arg,
    split_lora_tags,
)
from desktop.engine.metadata import parse_parameters, read_text_chunks
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest, LoraRef
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from tests.support import tiny_loras, tiny_models
from tests.support.history_runs import run_into_history

# --------------------------------------------------------------------------------------------------
# Fixtures: one home with tiny LoRAs of every format, built once for the module


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> AppPaths:
    paths = AppPaths.for_root(tmp_path_factory.mktemp("lora-home")).ensure()
    sd15 = tiny_models.build_tiny_sd15()
    sdxl = tiny_models.build_tiny_sdxl()
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(sd15, seed=1), paths.loras / "detail.safetensors")
    tiny_loras.save_lora(tiny_loras.peft_state_dict(sd15, seed=2), paths.loras / "PeftStyle.safetensors")
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(sd15, seed=3, text=False), paths.loras / "unet-only.safetensors")
    tiny_loras.save_lora(tiny_loras.kohya_state_dict(sdxl, seed=4), paths.loras / "xl-style.safetensors")
    return paths


@pytest.fixture(scope="module")
def backend(home) -> DiffusersBackend:
    return DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), preview_every=0)


def request_for(model, **changes) -> GenerationRequest:
    values = dict(
        prompt="a red circle on a blue background",
        model=str(model),
        steps=3,
        cfg_scale=7.0,
        seed=7,
        width=64,
        height=64,
        device="cpu",
        sampler="Euler",
    )
    return GenerationRequest(**(values | changes)).validate()


def generate(backend: DiffusersBackend, request: GenerationRequest):
    steps: list[StepInfo] = []
    backend.load(request)
    return backend.generate(request, 0, steps.append, CancelToken())


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# Detection


def test_inspect_tiny_kohya_and_peft_files(home):
    kohya = inspect_lora(read_safetensors_header(home.loras / "detail.safetensors"))
    assert (kohya.format, kohya.context_dim, kohya.text_width, kohya.unet, kohya.text_encoder) == (
        "kohya",
        32,
        32,
        True,
        True,
    )
    assert kohya.family is None  # width 32 is no released model: judged by widths, not by family
    peft = inspect_lora(read_safetensors_header(home.loras / "PeftStyle.safetensors"))
    assert (peft.format, peft.context_dim, peft.text_width) == ("peft", 32, 32)
    xl = inspect_lora(read_safetensors_header(home.loras / "xl-style.safetensors"))
    assert (xl.family, xl.context_dim, xl.text_width, xl.text_width_2) == ("sdxl", 96, 32, 64)


@pytest.mark.parametrize(
    ("context", "text_width", "sdxl", "family"),
    [(768, 768, False, "sd1"), (1024, 1024, False, "sd2"), (2048, 768, True, "sdxl"), (768, None, False, "sd1")],
)
def test_base_architecture_from_real_widths(tmp_path, context, text_width, sdxl, family):
    path = tiny_loras.save_lora(tiny_loras.standard_width_kohya(context, text_width, sdxl), tmp_path / "x.safetensors")
    info = inspect_lora(read_safetensors_header(path))
    assert info.family == family
    assert info.context_dim == context


def test_a_model_file_is_not_a_lora(tiny_sd15_single):
    with pytest.raises(ModelError, match="not a LoRA"):
        inspect_lora(read_safetensors_header(tiny_sd15_single[0]), "model.safetensors")


def test_mismatch_messages_name_both_sides():
    sd1_model = ModelShape("sd1", 768, 768, None)
    sdxl_lora = inspect_lora_stub(family="sdxl", context=2048, text_width_2=1280)
    with pytest.raises(ModelError, match=r"LoRA 'x' does not fit.*SDXL models, and base is SD 1\.x"):
        check_lora_fits(sdxl_lora, sd1_model, "x", "base")
    odd = inspect_lora_stub(family=None, context=96)
    with pytest.raises(ModelError, match="width 96"):
        check_lora_fits(odd, ModelShape("sd1", 32, 32, None), "x", "base")
    check_lora_fits(inspect_lora_stub(family="sd1", context=768, text_width=768), sd1_model, "x", "base")


def inspect_lora_stub(family, context, text_width=None, text_width_2=None):
    from desktop.engine.library.lora import LoraInfo

    return LoraInfo("kohya", family, context, text_width, text_width_2, True, text_width is not None, 3)


# --------------------------------------------------------------------------------------------------
# Prompt tags and command-line values


def test_tags_leave_the_prompt_and_keep_their_weights():
    text, refs = split_lora_tags("a cat <lora:detail:0.8>, sitting <LORA:style>\n<lyco:x:-1.5:0.2> on a mat")
    assert text == "a cat , sitting\non a mat"
    assert refs == (LoraRef("detail", 0.8), LoraRef("style", 1.0), LoraRef("x", -1.5))
    assert split_lora_tags("no tags <here>") == ("no tags <here>", ())


def test_bad_tag_weights_are_refused():
    with pytest.raises(InvalidRequest, match="not a number"):
        split_lora_tags("<lora:x:lots>")
    with pytest.raises(InvalidRequest, match="weight 9"):
        split_lora_tags("<lora:x:9>")


def test_merge_keeps_order_and_the_later_weight():
    merged = merge_loras([LoraRef("A", 1.0), LoraRef("b", 0.5)], [LoraRef("a", 0.2), LoraRef("c", 1)])
    assert merged == (LoraRef("A", 0.2), LoraRef("b", 0.5), LoraRef("c", 1))


def test_lora_argument():
    assert parse_lora_arg("detail:0.6") == LoraRef("detail", 0.6)
    assert parse_lora_arg("detail") == LoraRef("detail", 1.0)
    assert parse_lora_arg("odd:name") == LoraRef("odd:name", 1.0)
    assert parse_lora_arg("odd:name:-1") == LoraRef("odd:name", -1.0)


# --------------------------------------------------------------------------------------------------
# Names are data


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "..\\..\\secret", "C:\\Windows\\x", "/abs/outside", "detail\x00.txt", "", "loras/detail"],
)
def test_lora_names_are_looked_up_never_joined(tmp_path, name):
    loras = tmp_path / "home" / "loras"
    loras.mkdir(parents=True)
    # Files a path join would reach: they must stay invisible.
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd.safetensors").write_bytes(b"x")
    (tmp_path / "home" / "secret.safetensors").write_bytes(b"x")
    (loras / "detail.safetensors").write_bytes(b"x")
    catalog = AdapterCatalog(loras)
    assert catalog.find(name) is None
    with pytest.raises(ModelError, match="No LoRA named"):
        catalog.get(name)


def test_a_pickled_lora_is_refused_whatever_its_name(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "sneaky.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 32)
    catalog = AdapterCatalog(folder)
    with pytest.raises(ModelError, match="pickled"):
        catalog.inspect(catalog.get("sneaky"))


def test_prompt_tag_with_a_path_name_fails_the_job_cleanly(backend, tiny_sd15_dir):
    with pytest.raises(ModelError, match="No LoRA named '../../etc/passwd'"):
        generate(backend, request_for(tiny_sd15_dir, prompt="x <lora:../../etc/passwd:1>"))


# --------------------------------------------------------------------------------------------------
# Applying LoRAs through the real backend


@pytest.fixture(scope="module")
def base_image(backend, tiny_sd15_dir) -> np.ndarray:
    return pixels(generate(backend, request_for(tiny_sd15_dir)).images[0])


@pytest.mark.parametrize("lora", ["detail", "PeftStyle", "unet-only"])
def test_weight_one_changes_the_image_and_weight_zero_gives_it_exactly(backend, tiny_sd15_dir, base_image, lora):
    changed = pixels(generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef(lora, 1.0),))).images[0])
    assert np.abs(changed - base_image).mean() > 2.0
    zero = pixels(generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef(lora, 0.0),))).images[0])
    assert np.array_equal(zero, base_image)
    # Back to no LoRA at all, after adapters were loaded: still the base image.
    assert np.array_equal(pixels(generate(backend, request_for(tiny_sd15_dir)).images[0]), base_image)


def test_weight_zero_matches_a_backend_that_never_saw_a_lora(home, tiny_sd15_dir, tmp_path):
    fresh = DiffusersBackend(
        AppPaths.for_root(tmp_path / "other").ensure(), Resources.default(), ModelCatalog(home.models), 0
    )
    plain = pixels(generate(fresh, request_for(tiny_sd15_dir)).images[0])
    with_zero = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    generate(with_zero, request_for(tiny_sd15_dir, loras=(LoraRef("detail", 1.0),)))  # adapters now loaded
    zero = pixels(
        generate(
            with_zero, request_for(tiny_sd15_dir, prompt=request_for(tiny_sd15_dir).prompt + " <lora:detail:0>")
        ).images[0]
    )
    assert np.array_equal(zero, plain)


def lora_layer_change(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What the LoRA adds to one adapted linear layer's output: the layer minus its base layer."""
    with torch.no_grad():
        return module(inputs) - module.base_layer(inputs)


@pytest.mark.parametrize("weight", [0.5, 0.25, -0.7, 1.6])
def test_a_fractional_weight_adds_that_fraction_of_the_files_delta(backend, tiny_sd15_dir, weight):
    """Issue 23: weights other than 0 and 1 scale the LoRA: in every adapted layer (UNet and text
    encoder) the change is `weight * up @ down * alpha / rank`, read from the file itself, and the
    image at a fraction lies between the base image and the full LoRA's."""
    from safetensors.torch import load_file

    tensors = load_file(str(backend._loras.catalog.get("detail").path))
    generate(backend, request_for(tiny_sd15_dir, steps=1, loras=(LoraRef("detail", weight),)))
    pipe = backend._pipe
    layers = [
        ("lora_unet_", name, module) for name, module in pipe.unet.named_modules() if hasattr(module, "base_layer")
    ]
    layers += [
        ("lora_te_", tiny_loras._clip_path(name), module)
        for name, module in pipe.text_encoder.named_modules()
        if hasattr(module, "base_layer")
    ]
    assert len(layers) >= 8 and any(prefix == "lora_te_" for prefix, *_ in layers)
    generator = torch.Generator().manual_seed(0)
    for prefix, name, module in layers:
        key = prefix + name.replace(".", "_")
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        scale = float(tensors[f"{key}.alpha"]) / down.shape[0]
        inputs = torch.randn(3, down.shape[1], generator=generator)
        expected = weight * scale * inputs @ (up @ down).T
        torch.testing.assert_close(lora_layer_change(module, inputs), expected, rtol=1e-4, atol=1e-5, msg=key)


def test_half_a_weight_makes_an_image_of_its_own(backend, tiny_sd15_dir, base_image):
    """The image at 0.5 is neither the base image nor the image at 1 (the tiny model is too nonlinear
    for the image's change to scale with the weight; the layer test above checks the scaling)."""

    def image(weight: float) -> np.ndarray:
        return pixels(generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("detail", weight),))).images[0])

    half, whole = image(0.5), image(1.0)
    assert np.abs(half - whole).mean() > 1.0 and np.abs(half - base_image).mean() > 1.0


def test_prompt_tag_equals_request_lora_and_the_tag_is_not_encoded(backend, tiny_sd15_dir):
    base_prompt = request_for(tiny_sd15_dir).prompt
    by_tag = generate(backend, request_for(tiny_sd15_dir, prompt=f"<lora:DETAIL:0.7> {base_prompt}"))
    by_request = generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("detail", 0.7),)))
    assert np.array_equal(pixels(by_tag.images[0]), pixels(by_request.images[0]))
    assert [lora.name for lora in by_tag.loras] == ["detail"] and by_tag.loras == by_request.loras


def test_two_loras_at_once_with_their_own_weights(backend, tiny_sd15_dir, base_image):
    def image(*refs):
        return pixels(generate(backend, request_for(tiny_sd15_dir, loras=refs)).images[0])

    detail, style = image(LoraRef("detail", 0.8)), image(LoraRef("PeftStyle", 0.6))
    both = image(LoraRef("detail", 0.8), LoraRef("PeftStyle", 0.6))
    assert not np.array_equal(both, detail) and not np.array_equal(both, style)
    assert np.array_equal(image(LoraRef("detail", 0.8), LoraRef("PeftStyle", 0.0)), detail)
    batch = generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("detail", 0.8), LoraRef("PeftStyle", 0.6))))
    assert batch.loras == (
        AdapterHash("detail", autov3_hash(backend._loras.catalog.get("detail").path)),
        AdapterHash("PeftStyle", autov3_hash(backend._loras.catalog.get("PeftStyle").path)),
    )


def test_switching_loras_keeps_the_pipeline_and_caches_adapters(backend, tiny_sd15_dir):
    first = generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("detail", 1.0),)))
    pipe = backend._pipe
    generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("PeftStyle", 1.0),)))
    report = backend.load(request_for(tiny_sd15_dir, loras=(LoraRef("detail", 1.0),)))
    again = backend.generate(
        request_for(tiny_sd15_dir, loras=(LoraRef("detail", 1.0),)), 0, lambda _: None, CancelToken()
    )
    assert report.reused and backend._pipe is pipe
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert len(set(backend._loras.loaded_adapters)) == len(backend._loras.loaded_adapters) >= 2


def test_a_lora_for_another_base_model_is_refused_clearly(backend, tiny_sd15_dir, base_image):
    with pytest.raises(ModelError, match="'xl-style' does not fit the selected model.*SDXL"):
        generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("xl-style", 1.0),)))
    # The pipeline is untouched: the next job without LoRAs is the base image.
    assert np.array_equal(pixels(generate(backend, request_for(tiny_sd15_dir)).images[0]), base_image)


def test_sdxl_lora_changes_an_sdxl_image(home, tiny_sdxl_dir):
    backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
    plain = pixels(generate(backend, request_for(tiny_sdxl_dir)).images[0])
    styled = pixels(generate(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("xl-style", 1.0),))).images[0])
    zero = pixels(generate(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("xl-style", 0.0),))).images[0])
    assert np.abs(styled - plain).mean() > 2.0
    assert np.array_equal(zero, plain)
    with pytest.raises(ModelError, match="does not fit"):
        generate(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("detail", 1.0),)))


def test_runner_writes_lora_hashes_in_the_png(home, backend, tiny_sd15_dir, tmp_path):
    request = request_for(tiny_sd15_dir, prompt="a cat <lora:detail:0.5>", loras=(LoraRef("unet-only", 0.3),))
    job = Job(request)
    state = JobRunner(backend, ImageWriter(tmp_path / "out", dated=False), "test").run(job, lambda _: None)
    assert state is JobState.FINISHED
    (png,) = list((tmp_path / "out").glob("*.png"))
    parameters = read_text_chunks(png)["parameters"]
    detail = autov3_hash(home.loras / "detail.safetensors")
    unet_only = autov3_hash(home.loras / "unet-only.safetensors")
    assert f'Lora hashes: "unet-only: {unet_only}, detail: {detail}"' in parameters
    assert parameters.startswith("a cat <lora:detail:0.5>")  # the prompt as typed, as A1111 writes it


def _sha256_after_header(path: Path) -> str:
    # AutoV3 computed here from the bytes, independently of the library's autov3_hash.
    data = path.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_size:]).hexdigest()


def test_history_row_gets_the_backends_hashes_not_text_parsed_back(home, backend, tiny_sd15_single, tmp_path):
    model_file, config = tiny_sd15_single
    request = request_for(model_file, model_config=str(config), prompt="a cat <lora:detail:0.5>",
                          loras=(LoraRef("unet-only", 0.3),), sampler="DPM++ 2M Karras")
    row = run_into_history(backend, request, home, tmp_path / "out")
    detail = _sha256_after_header(home.loras / "detail.safetensors")[:12]
    unet_only = _sha256_after_header(home.loras / "unet-only.safetensors")[:12]
    assert row.lora_hashes == f"unet-only: {unet_only}, detail: {detail}"
    assert row.model_hash == hashlib.sha256(model_file.read_bytes()).hexdigest()[:10]  # AutoV2
    assert row.sampler == "DPM++ 2M"  # as the file says it, with `Schedule type: Karras` beside it
    # The file's text says the same as the row.
    settings = parse_parameters(read_text_chunks(row.path)["parameters"]).settings
    assert (settings["Lora hashes"], settings["Model hash"], settings["Sampler"]) == (
        row.lora_hashes, row.model_hash, row.sampler
    )


def test_a_lora_file_changed_on_disk_is_reloaded(home, backend, tiny_sd15_dir, tmp_path):
    original = home.loras / "detail.safetensors"
    copy = home.loras / "detail-copy.safetensors"
    shutil.copyfile(original, copy)
    try:
        one = generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("detail-copy", 1.0),)))
        tiny_loras.save_lora(tiny_loras.peft_state_dict(tiny_models.build_tiny_sd15(), seed=9), copy)
        two = generate(backend, request_for(tiny_sd15_dir, loras=(LoraRef("detail-copy", 1.0),)))
        assert not np.array_equal(pixels(one.images[0]), pixels(two.images[0]))
    finally:
        copy.unlink()


def test_kohya_sdxl_file_with_original_block_names_matches_the_diffusers_named_one(home, tiny_sdxl_dir, tmp_path):
    """kohya names SDXL UNet layers input_blocks/middle_block/output_blocks; same values, same image."""
    sdxl = tiny_models.build_tiny_sdxl()
    sgm = tiny_loras.kohya_sgm_sdxl_state_dict(sdxl, seed=4)
    assert any(key.startswith("lora_unet_input_blocks_4_1_") for key in sgm)
    assert any(key.startswith("lora_unet_middle_block_1_") for key in sgm)
    tiny_loras.save_lora(sgm, home.loras / "xl-sgm.safetensors")
    try:
        assert inspect_lora(read_safetensors_header(home.loras / "xl-sgm.safetensors")).family == "sdxl"
        backend = DiffusersBackend(home, Resources.default(), ModelCatalog(home.models), 0)
        by_sgm = generate(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("xl-sgm", 1.0),)))
        by_diffusers = generate(backend, request_for(tiny_sdxl_dir, loras=(LoraRef("xl-style", 1.0),)))
        assert np.array_equal(pixels(by_sgm.images[0]), pixels(by_diffusers.images[0]))
    finally:
        (home.loras / "xl-sgm.safetensors").unlink()


def test_old_diffusers_attention_processor_names_are_detected(tmp_path):
    tensors = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": torch.zeros(
            4, 1024
        ),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": torch.zeros(320, 4),
    }
    path = tiny_loras.save_lora(tensors, tmp_path / "old.safetensors")
    info = inspect_lora(read_safetensors_header(path))
    assert (info.format, info.family, info.context_dim) == ("diffusers", "sd2", 1024)


def test_text_encoder_lora_works_with_clip_skip(backend, tiny_sd15_dir):
    plain = pixels(generate(backend, request_for(tiny_sd15_dir, clip_skip=2)).images[0])
    styled = pixels(
        generate(backend, request_for(tiny_sd15_dir, clip_skip=2, loras=(LoraRef("detail", 1.0),))).images[0]
    )
    zero = pixels(generate(backend, request_for(tiny_sd15_dir, clip_skip=2, loras=(LoraRef("detail", 0.0),))).images[0])
    assert np.abs(styled - plain).mean() > 2.0
    assert np.array_equal(zero, plain)


def test_loras_apply_to_image_to_image_too(backend, tiny_sd15_dir, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(source)

    def edit(*refs: LoraRef) -> np.ndarray:
        request = request_for(tiny_sd15_dir, init_image=str(source), strength=0.8, loras=refs)
        return pixels(generate(backend, request).images[0])

    plain = edit()
    assert np.abs(edit(LoraRef("detail", 1.0)) - plain).mean() > 1.0
    assert np.array_equal(edit(LoraRef("detail", 0.0)), plain)
