"""A transformer file in diffusers' names that lacks one of the model's tensors, or holds one the model has not, is
refused naming that tensor, for every DiT family that loads such files through diffusers. Before, diffusers took it for
its makers' names and its converter failed (an IndexError traceback for Flux.1, SD3 and Chroma), or it failed to move a
weight it never got ("Cannot copy out of meta tensor", no name), or it left the stray tensor out unsaid."""

from __future__ import annotations

import re

import pytest
import torch

from desktop.engine.errors import ModelError
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, request_for, run
from tests.support import (
    tiny_auraflow,
    tiny_chroma,
    tiny_dit,
    tiny_ernie,
    tiny_flux2,
    tiny_hidream,
    tiny_krea2,
    tiny_longcat,
    tiny_lumina2,
    tiny_ovis,
    tiny_qwen_zimage,
    tiny_sana,
)
from tests.support.tiny_qwen_zimage import save_transformer_file

BUILDERS = {
    "Flux.1 dev": tiny_dit.build_tiny_flux, "SD3.5 medium": tiny_dit.build_tiny_sd3,
    "Qwen-Image": tiny_qwen_zimage.build_tiny_qwen_image, "Z-Image": tiny_qwen_zimage.build_tiny_z_image,
    "Chroma": tiny_chroma.build_tiny_chroma, "Flux.2 klein": tiny_flux2.build_tiny_flux2_klein,
    "Lumina Image 2.0": tiny_lumina2.build_tiny_lumina2, "Krea 2": tiny_krea2.build_tiny_krea2,
    "ERNIE-Image": tiny_ernie.build_tiny_ernie, "LongCat-Image": tiny_longcat.build_tiny_longcat,
    "Ovis-Image": tiny_ovis.build_tiny_ovis, "HiDream-I1": tiny_hidream.build_tiny_hidream,
    "AuraFlow": tiny_auraflow.build_tiny_auraflow, "Sana": tiny_sana.build_tiny_sana,
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, tmp_path_factory):
    label = request.param
    folder = tmp_path_factory.mktemp("names") / "folder"
    pipe = BUILDERS[label]()
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return label, folder, dict(pipe.transformer.state_dict())


def _refused(tmp_path, family, state, pattern):
    label, folder, _ = family
    path = save_transformer_file(state, tmp_path / "model.safetensors")
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    with pytest.raises(ModelError, match=rf"model\.safetensors: its {re.escape(label)} transformer {pattern}"):
        run(make_backend(paths), request_for(path, steps=1, model_config=str(folder), text_encoders=str(folder)))


def test_a_tensor_missing_is_named(family, tmp_path):
    state = dict(family[2])
    # The last tensor of a second block (not an embedder's: some are what tells the family).
    lost = sorted(key for key in state if ".1." in key and "embed" not in key)[-1]
    del state[lost]
    _refused(tmp_path, family, state, rf"lacks {re.escape(repr(lost))}: the file is damaged or incomplete")


def test_a_tensor_the_model_has_not_is_named(family, tmp_path):
    state = dict(family[2])
    block = next(key for key in state if ".0." in key).split(".0.")[0]
    extra = f"{block}.0.stray.weight"
    _refused(tmp_path, family, state | {extra: torch.zeros(2)},
             rf"holds {re.escape(repr(extra))}, which {re.escape(family[0])}'s has not")  # fmt: skip
