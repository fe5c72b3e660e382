"""XLabs' Flux.1 IP-Adapter in an image-prompt unit: detected from its tensors (kept out of the LoRA library, whose
XLabs names its blocks share), loaded for the job with the control library's CLIP image encoder, pixel-identical
to bare diffusers loading the same file with its own `load_ip_adapter` (the oracle for the renaming) -- with and
without true CFG, in the hires pass too -- and taken off afterwards."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.library.lora import inspect_lora
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_flux_redux import prior_embeds, redux  # noqa: F401 - the fixture
from tests.engine.test_model_families import bare_flux
from tests.support.tiny_dit import build_tiny_flux, save_pipeline
from tests.support.tiny_ip_adapters import build_tiny_image_encoder, save_image_encoder

FLUX = dict(negative_prompt="", distilled_cfg_scale=3.5, steps=3, seed=11)
PROMPT = "a red circle on a blue background"
ADAPTER = "flux-ip-adapter-v2"


def xlabs_ip_adapter(transformer, image_width: int, seed: int = 4) -> dict[str, torch.Tensor]:
    """XLabs' file layout at the tiny Flux's sizes: the image projection to 4 tokens of the text width, and in each
    double block the image tokens' key and value projections (text width -> block width)."""
    generator = torch.Generator().manual_seed(seed)
    text, width = transformer.config.joint_attention_dim, transformer.inner_dim

    def noise(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state = {"ip_adapter_proj_model.proj.weight": noise(4 * text, image_width),
             "ip_adapter_proj_model.proj.bias": noise(4 * text, scale=0.1),
             "ip_adapter_proj_model.norm.weight": 1 + noise(text, scale=0.1),
             "ip_adapter_proj_model.norm.bias": noise(text, scale=0.1)}  # fmt: skip
    for index in range(len(transformer.transformer_blocks)):
        for kind in "kv":
            key = f"double_blocks.{index}.processor.ip_adapter_double_stream_{kind}_proj"
            state |= {f"{key}.weight": noise(width, text), f"{key}.bias": noise(width, scale=0.1)}
    return state


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-ip")
    pipe = build_tiny_flux()
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    encoder = build_tiny_image_encoder()
    save_image_encoder(encoder, home.controls / "clip-vit-large-patch14.safetensors")
    save_file(xlabs_ip_adapter(pipe.transformer, encoder.config.projection_dim),
              str(home.controls / f"{ADAPTER}.safetensors"))  # fmt: skip
    picture = tmp / "reference.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(picture)
    return {"folder": save_pipeline(pipe, tmp / "flux"), "home": home, "encoder": encoder, "picture": picture}


def unit(flux, **changes) -> ControlUnit:
    values = dict(model=ADAPTER, image=str(flux["picture"]), weight=0.7, preprocessor="ip-adapter")
    return ControlUnit(**(values | changes))


def with_adapter(flux, pipe, weight: float):
    """diffusers' own loading of the same file (its renaming of XLabs' names), the encoder registered first."""
    pipe.register_modules(image_encoder=flux["encoder"])
    pipe.load_ip_adapter(str(flux["home"].controls), weight_name=f"{ADAPTER}.safetensors",
                         image_encoder_pretrained_model_name_or_path=None, local_files_only=True)  # fmt: skip
    pipe.set_ip_adapter_scale(weight)
    return pipe


def test_the_adapter_is_detected_as_a_flux_ip_adapter_and_kept_out_of_the_lora_library(flux):
    path = flux["home"].controls / f"{ADAPTER}.safetensors"
    info = inspect_control(read_safetensors_header(path))
    assert (info.family, info.layout, info.label) == ("flux", "xlabs", "Flux.1 IP-Adapter (XLabs)")
    assert guess_kind(path) == "control"  # its `double_blocks.N.processor.*` names would pass for an XLabs LoRA's
    with pytest.raises(ModelError, match=r"is a Flux.1 IP-Adapter \(XLabs\), not a LoRA"):
        inspect_lora(read_safetensors_header(path), path.name)


@pytest.mark.parametrize("true_cfg", [False, True])
def test_a_unit_is_bare_diffusers_load_ip_adapter_and_the_model_comes_back(flux, true_cfg):
    values = FLUX | ({"negative_prompt": "blurry", "cfg_scale": 2.0} if true_cfg else {})
    backend = make_backend(flux["home"])
    plain_request = request_for(flux["folder"], **values)
    before, _ = run(backend, plain_request)
    batch, steps = run(backend, request_for(flux["folder"], controls=(unit(flux),), **values))
    assert len(steps) == 3 and [c.name for c in batch.controls] == [ADAPTER]
    pipe = with_adapter(flux, bare_flux(flux["folder"]), 0.7)
    extra = {"negative_prompt": "blurry", "true_cfg_scale": 2.0} if true_cfg else {}
    expected = pipe(prompt=PROMPT, num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                    ip_adapter_image=Image.open(flux["picture"]).convert("RGB"),
                    generator=torch.Generator("cpu").manual_seed(11), **extra).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))
    assert not np.array_equal(pixels(batch.images[0]), pixels(before.images[0]))
    # Taken off after the job: the plain picture again.
    after, _ = run(backend, plain_request)
    assert np.array_equal(pixels(after.images[0]), pixels(before.images[0]))


def test_the_hires_pass_reads_the_picture_too(flux):
    hires = dict(hires_fix=True, hires_scale=2.0, hires_denoise=0.5, hires_steps=4, hires_upscaler="Lanczos")
    batch, _ = run(make_backend(flux["home"]), request_for(flux["folder"], controls=(unit(flux),), **FLUX, **hires))
    reference = Image.open(flux["picture"]).convert("RGB")
    base = with_adapter(flux, bare_flux(flux["folder"]), 0.7)
    first = base(prompt=PROMPT, num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                 ip_adapter_image=reference, generator=torch.Generator("cpu").manual_seed(11)).images[0]  # fmt: skip
    accepted = inspect.signature(FluxImg2ImgPipeline.__init__).parameters
    parts = {k: v for k, v in base.components.items() if k in accepted}
    second = FluxImg2ImgPipeline(**parts)
    second.set_progress_bar_config(disable=True)
    expected = second(prompt=PROMPT, strength=0.5, num_inference_steps=4, width=128, height=128, guidance_scale=3.5,
                      image=first.resize((128, 128), Image.Resampling.LANCZOS), ip_adapter_image=reference,
                      generator=[torch.Generator("cpu").manual_seed(11)]).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_what_it_cannot_run_is_refused_and_leaves_the_model_plain(flux, tmp_path):
    backend = make_backend(flux["home"])
    with pytest.raises(InvalidRequest, match="acts at every step"):
        run(backend, request_for(flux["folder"], controls=(unit(flux, end=0.5),), **FLUX))
    with pytest.raises(InvalidRequest, match="runs one XLabs IP-Adapter unit a job"):
        run(backend, request_for(flux["folder"], controls=(unit(flux), unit(flux, weight=0.3)), **FLUX))
    with pytest.raises(InvalidRequest, match="memory modes full, tiled and offload, not fp8"):
        run(backend, request_for(flux["folder"], controls=(unit(flux),), memory_mode="fp8", **FLUX))
    # A GGUF transformer keeps its quantised storage, in which diffusers would make the adapter's layers.
    from tests.support.tiny_dit import flux_to_bfl, save_gguf

    gguf = save_gguf(flux_to_bfl(dict(bare_flux(flux["folder"]).transformer.state_dict())), tmp_path / "f-Q8_0.gguf")
    with pytest.raises(InvalidRequest, match=r"runs with a Flux.1 file in bf16 / fp16, not Flux.1 dev \(Q8_0\)'s"):
        run(backend, request_for(gguf, controls=(unit(flux),), text_encoders=str(flux["folder"]),
                                 model_config=str(flux["folder"]), **FLUX))
    # Without a CLIP encoder of its projection's width in the library: what to import.
    home = AppPaths.for_root(tmp_path / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    adapter = f"{ADAPTER}.safetensors"
    (home.controls / adapter).write_bytes((flux["home"].controls / adapter).read_bytes())
    with pytest.raises(ModelError, match="projection is 24 wide, and the control library has none"):
        run(make_backend(home), request_for(flux["folder"], controls=(unit(flux),), **FLUX))
    plain, _ = run(backend, request_for(flux["folder"], **FLUX))
    fresh, _ = run(make_backend(flux["home"]), request_for(flux["folder"], **FLUX))
    assert np.array_equal(pixels(plain.images[0]), pixels(fresh.images[0]))


def test_the_command_line_runs_it_and_the_png_says_it_as_the_extension_does(flux, tmp_path):
    from desktop.engine.backends.control import legacy_hash
    from desktop.engine.metadata import read_image_metadata
    from tests.support.cli_runner import run_cli

    out = tmp_path / "ip.png"
    code, _, err = run_cli(
        "generate", "--model", str(flux["folder"]), "--prompt", PROMPT, "--steps", "2", "--seed", "3", "--width", "64",
        "--height", "64", "--device", "cpu", "--no-preview", "--home", str(flux["home"].models.parent),
        "--ip-adapter", f"{ADAPTER}:{flux['picture']}:0.6", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    digest = legacy_hash(flux["home"].controls / f"{ADAPTER}.safetensors")
    metadata = read_image_metadata(out)
    assert f'ControlNet 0: "Module: ip-adapter, Model: {ADAPTER} [{digest}], Weight: 0.6' in metadata.raw["parameters"]
    (read,) = metadata.request.controls
    assert (read.model, read.preprocessor, read.weight) == (ADAPTER, "ip-adapter", 0.6)


def test_a_redux_unit_joins_it(redux, flux):  # noqa: F811 - the Redux test module's fixture
    # Redux's picture as prompt tokens, the IP-Adapter's as attention keys and values: both in one job.
    home = redux["home"]
    for name in (f"{ADAPTER}.safetensors", "clip-vit-large-patch14.safetensors"):
        (home.controls / name).write_bytes((flux["home"].controls / name).read_bytes())
    units = (ControlUnit("flux1-redux-dev", str(redux["reference"]), 0.8, preprocessor="ip-adapter"), unit(flux))
    values = FLUX | {"seed": 13}
    batch, _ = run(make_backend(home), request_for(redux["folder"], controls=units, **values))
    assert [c.name for c in batch.controls] == ["flux1-redux-dev", ADAPTER]  # in the units' order
    base = bare_flux(redux["folder"])
    embeds = prior_embeds(redux, base, 0.8)
    pipe = with_adapter(flux, base, 0.7)
    expected = pipe(num_inference_steps=3, width=64, height=64, guidance_scale=3.5,
                    ip_adapter_image=Image.open(flux["picture"]).convert("RGB"),
                    generator=torch.Generator("cpu").manual_seed(13), **embeds).images[0]  # fmt: skip
    assert np.array_equal(pixels(batch.images[0]), pixels(expected))


def test_an_adapter_for_another_depth_is_refused_by_name_and_leaves_the_model_plain(flux, tmp_path):
    # One double block fewer than the model has (a file for another Flux): a clear error, the processors put back.
    from safetensors.torch import load_file

    state = load_file(str(flux["home"].controls / f"{ADAPTER}.safetensors"))
    short = {k: v for k, v in state.items() if not k.startswith("double_blocks.1.")}
    save_file(short, str(flux["home"].controls / "short-ip.safetensors"))
    backend = make_backend(flux["home"])
    plain, _ = run(backend, request_for(flux["folder"], **FLUX))
    with pytest.raises(ModelError, match="'short-ip' does not fit Flux.1 dev"):
        run(backend, request_for(flux["folder"], controls=(unit(flux, model="short-ip"),), **FLUX))
    after, _ = run(backend, request_for(flux["folder"], **FLUX))
    assert np.array_equal(pixels(after.images[0]), pixels(plain.images[0]))
