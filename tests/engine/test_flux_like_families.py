"""What LongCat-Image and Ovis-Image share (Flux.1's blocks in diffusers' names for their releases, Flux's BFL names
in Comfy-Org's files, Flux's VAE): each tiny model's transformer file in either naming and as a GGUF, run with its
folder's components, pixel-identical to bare diffusers; image to image, inpainting and the hires fix, Marble's own over
their text-to-image pipelines (flow_edit.FluxLatentEdit); and LoRAs in Flux.1's diffusers names, which diffusers has no
loader for (flux_like_loras.py). Their own traits: test_longcat.py, test_ovis.py."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support import tiny_longcat, tiny_ovis
from tests.support.flow_edit_checks import check_the_tail_of_text_to_image
from tests.support.tiny_dit import save_gguf

PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    support: Any  # the tests' module: build_..., comfy_names, save_transformer
    build: Any
    cfg: float
    load: dict  # bare diffusers' from_pretrained extras
    call: dict  # bare diffusers' call extras
    norms: tuple[str, str]  # the q/k norms' suffix in the Comfy file, and the other spelling a file may use
    converter: str  # the backend module whose from_bfl converts Comfy-Org's names


FAMILIES = {
    "longcat-image": Family(
        "longcat-image", "LongCat-Image", tiny_longcat, tiny_longcat.build_tiny_longcat, 4.5,
        load={"text_processor": None}, call={"enable_prompt_rewrite": False}, norms=("_norm.weight", "_norm.scale"),
        converter="families_longcat",
    ),
    "ovis-image": Family(
        "ovis-image", "Ovis-Image", tiny_ovis, tiny_ovis.build_tiny_ovis, 5.0, load={}, call={},
        norms=("_norm.scale", "_norm.weight"), converter="families_ovis",
    ),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    kind = FAMILIES[request.param]
    tmp = tmp_path_factory.mktemp(kind.name)
    pipe = kind.build()
    folder = tmp / kind.name
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return {"kind": kind, "pipe": pipe, "folder": folder,
            "diffusers": kind.support.save_transformer(pipe, tmp / f"{kind.name}-diffusers.safetensors"),
            "comfy": kind.support.save_transformer(pipe, tmp / f"{kind.name}_bf16.safetensors", comfy=True,
                                                   prefix=PREFIX)}  # fmt: skip


@pytest.fixture
def paths(tmp_path):
    return AppPaths.for_root(tmp_path / "home").ensure()


def bare_pipe(family, transformer=None) -> Any:
    parts = {"transformer": transformer} if transformer is not None else {}
    cls = type(family["pipe"])
    pipe = cls.from_pretrained(str(family["folder"]), local_files_only=True, **family["kind"].load, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_image(family, pipe, request) -> np.ndarray:
    return pixels(pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
        width=request.width, height=request.height, guidance_scale=request.cfg_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed), **family["kind"].call,
    ).images[0])  # fmt: skip


@pytest.mark.parametrize("layout", ["diffusers", "comfy", "bfl-other-norms"])
def test_transformer_files_match_with_the_folders_components(paths, family, layout, tmp_path):
    kind = family["kind"]
    if layout == "bfl-other-norms":  # the norms' other spelling (`.scale` / `.weight`), bare
        ours, other = kind.norms
        state = kind.support.comfy_names(family["pipe"].transformer.state_dict())
        path = tmp_path / "bfl.safetensors"
        save_file({(k.removesuffix(ours) + other if k.endswith(ours) else k): v.contiguous()
                   for k, v in state.items()}, str(path))  # fmt: skip
    else:
        path = family[layout]
    arch = detect_model(path)
    found = (arch.family, arch.dit.layout, arch.dit.blocks, arch.config_name, arch.dit.needs_components)
    assert found == (kind.name, "diffusers" if layout == "diffusers" else "bfl", (1, 2), kind.name, True)
    request = request_for(path, steps=3, cfg_scale=kind.cfg, model_config=str(family["folder"]),
                          text_encoders=str(family["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), bare_image(family, bare_pipe(family), request))


def test_a_gguf_runs_its_dequantised_weights(paths, family, tmp_path):
    """Comfy-Org's names in Q8_0 (as the GGUFs in circulation are converted from its files): the picture of bare
    diffusers' model holding the weights diffusers' GGUF reader dequantises (what its GGUF layers compute with)."""
    import importlib

    from diffusers.models.model_loading_utils import load_gguf_checkpoint
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from desktop.engine.backends.families import convert_flux_bfl

    kind = family["kind"]
    state = kind.support.comfy_names(family["pipe"].transformer.state_dict())
    path = save_gguf(state, tmp_path / f"{kind.name}-Q8_0.gguf", arch=kind.name)
    arch = detect_model(path)
    assert (arch.family, arch.dit.layout, arch.dit.quantization) == (kind.name, "bfl", "Q8_0")
    request = request_for(path, steps=3, cfg_scale=kind.cfg, model_config=str(family["folder"]),
                          text_encoders=str(family["folder"]))  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    stored = {name: (dequantize_gguf_tensor(tensor) if hasattr(tensor, "quant_type") else tensor).float()
              for name, tensor in load_gguf_checkpoint(str(path)).items()}  # fmt: skip
    from_bfl = importlib.import_module(f"desktop.engine.backends.{kind.converter}").from_bfl
    transformer = type(family["pipe"].transformer).from_config(family["pipe"].transformer.config)
    transformer.load_state_dict(from_bfl(stored, convert_flux_bfl), strict=True)
    expected = bare_image(family, bare_pipe(family, transformer.eval()), request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(family, bare_pipe(family), request))  # the quantisation shows


def test_image_to_image_and_inpainting(paths, family, tmp_path):
    from diffusers.utils.torch_utils import randn_tensor

    from desktop.engine.backends.families import own_edit_pipeline, pipeline_class

    kind = family["kind"]
    pipe = bare_pipe(family)
    edit = own_edit_pipeline(pipe, kind.name)
    source = Image.new("RGB", (96, 64), (200, 40, 40))
    call = dict(prompt="a cat", num_inference_steps=4, width=96, height=64, output_type="np", guidance_scale=1.0,
                **kind.call)  # fmt: skip
    # Strength 1 is text to image's picture; 0.5 runs the last half of the steps at the very sigmas text to image
    # reaches them (read from Marble's text-to-image class: the bare one takes no callback) ...
    steps_pipe = pipeline_class(kind.name)(**pipe.components)
    steps_pipe.set_progress_bar_config(disable=True)
    seen = check_the_tail_of_text_to_image(pipe, edit, call, source, recorded=steps_pipe)
    # ... from the source noised to exactly the first of them, (1 - s) x0 + s noise: the bare pipeline told the two
    # unshifted sigmas, from those latents, gives the same picture.
    clean = edit._edit_encode(source, 96, 64, None)
    noise = randn_tensor((1, 16, 16, 24), generator=torch.Generator().manual_seed(7))
    start = pipe._pack_latents((1 - seen[2]) * clean + seen[2] * noise, 1, 16, 16, 24)
    by_hand = pipe(**call, latents=start, sigmas=[0.5, 0.25], generator=torch.Generator().manual_seed(7)).images
    edited = edit(**call, image=source, strength=0.5, generator=torch.Generator().manual_seed(7)).images
    assert np.allclose(edited, by_hand, atol=1e-6)
    # The source's latents by hand: the VAE's mode, shifted and scaled.
    with torch.no_grad():
        pixels_in = edit.image_processor.preprocess(source, height=64, width=96)
        encoded = (pipe.vae.encode(pixels_in).latent_dist.mode() - pipe.vae.config.shift_factor) * \
            pipe.vae.config.scaling_factor  # fmt: skip
    assert torch.allclose(clean, encoded, atol=1e-6) and clean.shape == (1, 16, 16, 24)
    # Inpainting leaves the source's latents outside the mask: the left 20 columns repaint latent columns 0-5
    # (2x2 patches of a quarter-size grid: whole tokens of 8 pixels).
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 20, 64))
    packed = edit(**(call | {"output_type": "latent"}), image=source, mask_image=mask, strength=1.0,
                  generator=torch.Generator().manual_seed(7)).images  # fmt: skip
    latents = pipe._unpack_latents(packed, 64, 96, pipe.vae_scale_factor)
    assert latents.shape == clean.shape
    assert torch.allclose(latents[..., 6:], clean[..., 6:], atol=1e-6)
    assert not torch.allclose(latents[..., :5], clean[..., :5], atol=1e-3)
    # Through Marble: image to image, and the hires fix with a latent upscaler (Flux's latents interpolate).
    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "source.png")
    request = request_for(family["folder"], init_image=str(tmp_path / "source.png"), strength=0.6, steps=3,
                          cfg_scale=kind.cfg, seed=43)  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    expected = pixels(edit(prompt=request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=3,
                           width=64, height=64, guidance_scale=kind.cfg, image=Image.open(tmp_path / "source.png"),
                           strength=0.6, generator=torch.Generator().manual_seed(43), **kind.call).images[0])
    assert np.array_equal(pixels(batch.images[0]), expected)
    hires_request = request_for(family["folder"], steps=2, cfg_scale=1.0, negative_prompt="", hires_fix=True,
                                hires_scale=1.5, hires_steps=2, hires_upscaler="Latent", width=96)  # fmt: skip
    hires, steps = run(make_backend(paths), hires_request)
    assert hires.images[0].size == (144, 96) and hires.notes == ()
    assert [(step.step, step.total) for step in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # both passes


# Every block's attention projections and feed-forward, both streams.
_LORA_LAYERS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.to_add_out",
                "ff.net.2", "proj_mlp", "proj_out")  # fmt: skip


@pytest.mark.parametrize("naming", ["diffusers", "peft", "musubi"])
def test_a_lora_is_applied_as_diffusers_peft_applies_it(paths, family, naming, tmp_path):
    """LoRAs in diffusers' names (`transformer.` + lora_A / lora_B), PEFT's bare ones, and lora_down / lora_up with
    alphas under `diffusion_model.`: the picture of bare diffusers' transformer with the LoRA loaded by PEFT."""
    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.lora import inspect_lora
    from tests.support.tiny_dit_loras import lora_on, trainer_form

    tensors = lora_on(family["pipe"].transformer, "", _LORA_LAYERS)
    written = {"diffusers": tensors, "peft": {k.removeprefix("transformer."): v for k, v in tensors.items()},
               "musubi": trainer_form({k.replace("transformer.", "diffusion_model.", 1): v for k, v in tensors.items()},
                                      kohya=False)}[naming]  # fmt: skip
    save_file(written, str(paths.loras / "style.safetensors"))
    info = inspect_lora(read_safetensors_header(paths.loras / "style.safetensors"), "style")
    assert (info.family, info.transformer_width) == ("flux", 32)  # Flux.1's names: only the model tells them apart
    request = request_for(family["folder"], prompt="a red circle <lora:style:0.8>", steps=3, cfg_scale=1.0)
    batch, _ = run(make_backend(paths), request)
    assert [lora.name for lora in batch.loras] == ["style"]
    pipe = bare_pipe(family)
    pipe.transformer.load_lora_adapter(tensors, prefix="transformer", adapter_name="style")
    pipe.transformer.set_adapters(["style"], [0.8])
    plain_request = request_for(family["folder"], prompt="a red circle", steps=3, cfg_scale=1.0)
    expected = bare_image(family, pipe, plain_request)
    assert np.array_equal(pixels(batch.images[0]), expected)
    assert not np.array_equal(expected, bare_image(family, bare_pipe(family), plain_request))
    # Off again for the next job: the picture without it.
    plain, _ = run(make_backend(paths), plain_request)
    assert np.array_equal(pixels(plain.images[0]), bare_image(family, bare_pipe(family), plain_request))


def test_flux_loras_are_refused_by_name(paths, family):
    """A Flux.1 LoRA reaches past the model's blocks (Flux.1 has 19 + 38); kohya's and XLabs' Flux names are never
    these models'."""
    from tests.support.tiny_dit import build_tiny_flux
    from tests.support.tiny_dit_loras import flux_kohya_lora, lora_on

    label = family["kind"].label
    flux = build_tiny_flux("schnell", double=2, single=3).transformer  # more blocks than the tiny models'

    save_file(lora_on(flux, "", ("attn.to_q", "attn.to_k")), str(paths.loras / "flux-style.safetensors"))
    request = request_for(family["folder"], prompt="a red circle <lora:flux-style:0.8>", steps=1, cfg_scale=1.0)
    with pytest.raises(ModelError, match=r"'flux-style' could not be applied .*reach (transformer_blocks\.1|single_"
                                         rf"transformer_blocks\.2), past this {label} model's [12]: it is a "
                                         r"LoRA for Flux\.1"):  # fmt: skip
        run(make_backend(paths), request)
    save_file(flux_kohya_lora(flux), str(paths.loras / "kohya-style.safetensors"))
    with pytest.raises(ModelError, match=rf"'kohya-style' does not fit .*kohya's Flux\.1 names, and {label} "
                                         r"LoRAs come in diffusers' names only"):  # fmt: skip
        run(make_backend(paths), replace(request, prompt="a red circle <lora:kohya-style:0.8>"))
    # Another family's LoRA is still another family's.
    from tests.support.tiny_qwen_zimage import build_tiny_z_image

    z_image = build_tiny_z_image().transformer
    save_file(lora_on(z_image, "layers.", ("attention.to_q",)), str(paths.loras / "z.safetensors"))
    with pytest.raises(ModelError, match=r"'z' does not fit .*a LoRA for Z-Image models"):
        run(make_backend(paths), replace(request, prompt="a red circle <lora:z:0.8>"))
