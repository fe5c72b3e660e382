"""SD3 and SD3.5 single files in Stability's own layout (`joint_blocks.N`, fused qkv, `final_layer`), as
sd3_medium.safetensors and sd3.5_medium/large.safetensors ship: the transformer alone, run with text
encoders and a VAE from the library, and the all-in-one file with its own encoders and VAE. Each is
detected from its tensors and pixel-identical to bare diffusers on the same tiny model's folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import save_file

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import detect_model
from desktop.engine.library.index import Library
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.engine.test_model_families import bare_image
from tests.support.tiny_components import save_ae, save_clip_l, save_t5
from tests.support.tiny_dit import build_tiny_sd3, config_folder, save_pipeline, save_sai_sd3, sd3_to_sai
from tests.support.tiny_models import clip_to_ldm

# SD3 medium: no qk-norm, one attention per block. SD3.5 medium: qk-norm (RMS) and MMDiT-X's second
# attention in block 0. CLIP-G wider than CLIP-L, as in the real models: diffusers tells them apart by width.
VARIANTS = {"sd3": {"qk_norm": None}, "sd3.5": {"dual_attention_layers": (0,)}}


@pytest.fixture(scope="module", params=list(VARIANTS))
def sd3(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"sai-{request.param}")
    pipe = build_tiny_sd3(**VARIANTS[request.param], clip_g_width=48)
    # SD3 reads CLIP-L's pooled output unprojected: Stability's files hold no CLIP-L projection and
    # diffusers' single-file loader puts an identity there, as the reference does here.
    with torch.no_grad():
        pipe.text_encoder.text_projection.weight.copy_(torch.eye(32))
    return {
        "family": request.param,
        "pipe": pipe,
        "folder": save_pipeline(pipe, tmp / "folder"),
        "config": config_folder(pipe, tmp / "config"),
        "model": save_sai_sd3(pipe, tmp / "sd3_medium.safetensors"),
        "aio": save_sai_sd3(pipe, tmp / "sd3_medium_incl_clips_t5xxl.safetensors", all_in_one=True),
        "tmp": tmp,
    }


def expected(parts, request):
    folder = parts["folder"]
    bare = StableDiffusion3Pipeline.from_pretrained(
        str(folder), local_files_only=True, **shipped_tokenizers(Resources.default(), folder, "sd3")
    )
    bare.set_progress_bar_config(disable=True)
    return bare_image(bare, request, negative_prompt=request.negative_prompt, guidance_scale=request.cfg_scale)


def test_a_stability_transformer_file_runs_with_library_encoders_and_vae(sd3, tmp_path):
    arch = detect_model(sd3["model"])
    assert (arch.family, arch.dit.variant, arch.dit.layout) == (sd3["family"], "medium", "bfl")
    assert arch.dit.components == ("transformer",) and arch.dit.needs_components
    pipe = sd3["pipe"]
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    # CLIP-L as Stability's repository holds it: no projection (SD3 reads it unprojected).
    clip_l = {k: v for k, v in pipe.text_encoder.state_dict().items() if k != "text_projection.weight"}
    save_file(clip_to_ldm(clip_l, ""), str(tmp_path / "clip_l.safetensors"))
    library.import_path(tmp_path / "clip_l.safetensors", "encoder")
    library.import_path(save_clip_l(pipe.text_encoder_2, tmp_path / "clip_g.safetensors"), "encoder")
    library.import_path(save_t5(pipe.text_encoder_3, tmp_path / "t5xxl.safetensors"), "encoder")
    library.import_path(save_ae(pipe.vae, tmp_path / "sd3-vae.safetensors"), "vae")
    request = request_for(sd3["model"], model_config=str(sd3["config"]), steps=2, cfg_scale=5.0,
                          text_encoders="clip_l,clip_g,t5xxl", vae="sd3-vae")  # fmt: skip
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), expected(sd3, request))


def test_a_stability_all_in_one_file_uses_its_own_encoders_and_vae(sd3, tmp_path):
    arch = detect_model(sd3["aio"])
    assert arch.dit.components == ("transformer", "clip_l", "clip_g", "t5xxl", "vae")
    assert not arch.dit.needs_components
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(sd3["aio"], model_config=str(sd3["config"]), steps=2, cfg_scale=5.0)  # no --text-encoders
    batch, _ = run(make_backend(paths), request)
    assert np.array_equal(pixels(batch.images[0]), expected(sd3, request))


def test_a_stability_file_with_a_block_gone_names_the_file(sd3, tmp_path):
    state = sd3_to_sai(sd3["pipe"].transformer.state_dict())
    short = {f"model.diffusion_model.{k}": v.contiguous() for k, v in state.items()
             if not k.startswith("joint_blocks.1.")}  # fmt: skip
    save_file(short, str(tmp_path / "sd3_short.safetensors"))
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    request = request_for(tmp_path / "sd3_short.safetensors", model_config=str(sd3["config"]), steps=2,
                          text_encoders=str(sd3["folder"]))  # fmt: skip
    with pytest.raises(ModelError, match=r"sd3_short\.safetensors has 1 joint blocks but the SD3(\.5)? medium "
                                         r"configuration has 2"):  # fmt: skip
        run(make_backend(paths), request)
