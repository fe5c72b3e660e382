"""Z-Image ControlNets (alibaba-pai's Fun ControlNet Union 1.0, 2.0 and 2.1, published in diffusers' names) from
the control library, with a Z-Image text-to-image job: detected from their tensors, each version told apart as
diffusers' single-file loader does, shaped from the file and the loaded transformer (which layers the control
blocks feed is the published configs' even spread), run in diffusers' ZImageControlNetPipeline on the loaded
modules -- pixel-identical to bare diffusers configured by hand from the published configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline, ZImagePipeline
from PIL import Image
from safetensors.torch import save_file

from desktop.engine.backends import control_dit
from desktop.engine.errors import InvalidRequest
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.control import inspect_control
from desktop.engine.library.index import guess_kind
from desktop.engine.library.native_size import takes_controls
from desktop.engine.paths import AppPaths
from desktop.engine.request import ControlUnit
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run
from tests.support.control_edit_checks import check_controlnet_image_to_image, check_controlnet_inpainting
from tests.support.control_range_checks import check_step_range
from tests.support.edit_inputs import source_and_mask
from tests.support.offload_check import assert_mode_matches_full
from tests.support.tiny_dit import _jitter
from tests.support.tiny_qwen_zimage import build_tiny_z_image

# Four transformer layers and two refiner blocks, so the control blocks' places ([0, 2] for two) and the refiner
# feeds ([0, 1]) are not what a naive reading would give.
VALUES = dict(negative_prompt="blurry", cfg_scale=3.0, steps=3, seed=5)


def tiny_controlnet(transformer, seed: int, variant: str | None, blocks: int, in_dim: int) -> ZImageControlNetModel:
    """A ControlNet of one of alibaba-pai's versions for the tiny Z-Image: `variant` None (1.0: plain refiner
    blocks), "control_noise_refiner" (2.1) or "control_layers" (2.0, whose refiner is unused); its zero
    projections given noise, or it would change nothing and every comparison would pass for the wrong reason."""
    config = transformer.config
    torch.manual_seed(seed)
    places = list(range(0, config.n_layers, config.n_layers // blocks))
    model = ZImageControlNetModel(
        control_layers_places=places, control_refiner_layers_places=list(range(config.n_refiner_layers)),
        control_in_dim=in_dim, add_control_noise_refiner=variant, all_patch_size=config.all_patch_size,
        all_f_patch_size=config.all_f_patch_size, dim=config.dim, n_refiner_layers=config.n_refiner_layers,
        n_heads=config.n_heads, n_kv_heads=config.n_kv_heads, norm_eps=config.norm_eps, qk_norm=config.qk_norm,
    )  # fmt: skip
    _jitter(model, seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "before_proj" in name or "after_proj" in name:
                parameter.add_(torch.randn(parameter.shape) * 0.5)
    return model.eval()


def save(model: ZImageControlNetModel, path, extra: dict | None = None):
    save_file({k: v.contiguous() for k, v in (model.state_dict() | (extra or {})).items()}, str(path))
    return path


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zimage-controlnet")
    pipe = build_tiny_z_image(n_layers=4, n_refiner_layers=2)
    folder = tmp / "zimage"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    home = AppPaths.for_root(tmp / "home").ensure()
    home.controls.mkdir(parents=True, exist_ok=True)
    channels = pipe.transformer.config.in_channels
    v1 = tiny_controlnet(pipe.transformer, 1, None, 2, channels)
    v21 = tiny_controlnet(pipe.transformer, 2, "control_noise_refiner", 4, 2 * channels + 1)
    # 2.0: published with refiner control blocks that were never trained (before_proj all zero); diffusers drops
    # them and lets the control blocks refine ("control_layers").
    v20 = tiny_controlnet(pipe.transformer, 3, "control_layers", 2, 2 * channels + 1)
    unused = tiny_controlnet(pipe.transformer, 4, "control_noise_refiner", 2, 2 * channels + 1)
    refiner = {k: v for k, v in unused.state_dict().items() if k.startswith("control_noise_refiner.")}
    refiner = {k: (torch.zeros_like(v) if ".before_proj." in k else v) for k, v in refiner.items()}
    save(v1, home.controls / "zi-union.safetensors")
    save(v21, home.controls / "zi-union-21.safetensors")
    save(v20, home.controls / "zi-union-20.safetensors", refiner)
    picture = tmp / "shapes.png"
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    canvas[10:38, 18:50] = (240, 200, 40)
    canvas[42:60, 4:28] = (30, 90, 220)
    Image.fromarray(canvas).save(picture)
    return {"folder": folder, "home": home, "picture": picture, "models": {"1.0": v1, "2.1": v21, "2.0": v20}}


def bare(zimage, controlnet, scale: float):
    base = ZImagePipeline.from_pretrained(str(zimage["folder"]), local_files_only=True)
    controlnet = ZImageControlNetModel.from_transformer(controlnet, base.transformer)
    pipe = ZImageControlNetPipeline(**base.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pixels(pipe(
        prompt="a red circle on a blue background", negative_prompt="blurry", guidance_scale=3.0,
        num_inference_steps=3, width=64, height=64, control_image=Image.open(zimage["picture"]).convert("RGB"),
        controlnet_conditioning_scale=scale, generator=torch.Generator("cpu").manual_seed(5),
    ).images[0])  # fmt: skip


def test_each_version_is_detected_and_imported_as_a_z_image_controlnet(zimage, tmp_path):
    for name in ("zi-union", "zi-union-21", "zi-union-20"):
        path = zimage["home"].controls / f"{name}.safetensors"
        info = inspect_control(read_safetensors_header(path))
        assert (info.family, info.label, guess_kind(path)) == ("z-image", "Z-Image ControlNet", "control")
    # The window offers control units for a Z-Image model.
    assert takes_controls("z-image") and not takes_controls("sd3.5")


@pytest.mark.parametrize("version", ["1.0", "2.1", "2.0"])
def test_a_z_image_controlnet_unit_is_bare_diffusers_for_each_version(zimage, version):
    name = {"1.0": "zi-union", "2.1": "zi-union-21", "2.0": "zi-union-20"}[version]
    unit = ControlUnit(name, str(zimage["picture"]), weight=0.8)
    backend = make_backend(zimage["home"])
    batch, steps = run(backend, request_for(zimage["folder"], controls=(unit,), **VALUES))
    assert np.array_equal(pixels(batch.images[0]), bare(zimage, zimage["models"][version], 0.8))
    assert [c.name for c in batch.controls] == [name] and len(steps) == 3
    # The unit counts: without it, another picture.
    plain, _ = run(backend, request_for(zimage["folder"], **VALUES))
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))
    # The cached ControlNet gave the transformer's modules back: it keeps no unloaded model alive.
    cached = next(model for model, _, _ in backend._controls._loaded.values())
    assert cached.t_embedder is None and cached.noise_refiner is None and cached.x_pad_token is None


def test_the_step_range_sets_the_scale_at_each_step(zimage):
    # Z-Image's pipeline takes no range: Marble's hook gives the ControlNet the unit's weight inside it, 0 outside.
    unit = ControlUnit("zi-union", str(zimage["picture"]), weight=0.8, start=0.0, end=0.5)
    check_step_range(zimage["home"], zimage["folder"], unit, ZImageControlNetModel, **VALUES)


def test_two_units_and_the_offload_modes_it_cannot_follow_are_refused(zimage):
    units = (ControlUnit("zi-union", str(zimage["picture"])), ControlUnit("zi-union-21", str(zimage["picture"])))
    with pytest.raises(InvalidRequest, match="runs one ControlNet unit at a time \\(2 are on\\)"):
        run(make_backend(zimage["home"]), request_for(zimage["folder"], controls=units, **VALUES))
    for mode, asked, said in (("group", "group", "memory mode group"),
                              ("sequential", "auto", "the auto mode chose sequential offload")):  # fmt: skip
        with pytest.raises(InvalidRequest, match=said):
            control_dit.refuse_memory_mode("z-image", mode, asked, "Z-Image")
    for mode in ("full", "offload", "fp8", "nf4"):
        control_dit.refuse_memory_mode("z-image", mode, mode, "Z-Image")
    control_dit.refuse_memory_mode("flux", "group", "group", "Flux.1 dev")


def test_a_2x_controlnet_inpaints_at_strength_one_as_bare_diffusers(zimage, tmp_path):
    # The 2.x models read the masked picture beside the control picture; the pipeline paints from pure noise.
    _, _, source, mask = source_and_mask(tmp_path, (12, 16, 44, 52), seed=4)
    unit = ControlUnit("zi-union-21", str(zimage["picture"]), weight=0.8)
    edit = dict(init_image=str(tmp_path / "source.png"), mask=str(tmp_path / "mask.png"), mask_blur=0)
    backend = make_backend(zimage["home"])
    batch, _ = run(backend, request_for(zimage["folder"], controls=(unit,), strength=1.0, **edit, **VALUES))
    base = ZImagePipeline.from_pretrained(str(zimage["folder"]), local_files_only=True)
    controlnet = ZImageControlNetModel.from_transformer(zimage["models"]["2.1"], base.transformer)
    pipe = ZImageControlNetInpaintPipeline(**base.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt="a red circle on a blue background", negative_prompt="blurry", guidance_scale=3.0,
               num_inference_steps=3, width=64, height=64, image=source, mask_image=Image.open(tmp_path / "mask.png"),
               control_image=Image.open(zimage["picture"]).convert("RGB"), controlnet_conditioning_scale=0.8,
               generator=torch.Generator("cpu").manual_seed(5)).images[0]  # fmt: skip
    expected = np.where(mask[..., None] == 255, pixels(out), pixels(source))  # Marble keeps the source outside
    assert np.array_equal(pixels(batch.images[0]), expected)
    # A batch: image k is the lone job with seed + k (one source for the batch; the noise by each generator).
    pair, _ = run(backend, request_for(zimage["folder"], controls=(unit,), strength=1.0, batch_size=2, **edit,
                                       **VALUES))  # fmt: skip
    lone, _ = run(backend, request_for(zimage["folder"], controls=(unit,), strength=1.0, **edit,
                                       **(VALUES | {"seed": 6})))  # fmt: skip
    assert np.array_equal(pixels(pair.images[0]), expected)
    # (Pixel-equal but for batched float maths rounding a value here and there one level apart.)
    difference = np.abs(pixels(pair.images[1]).astype(int) - pixels(lone.images[0]).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001, (difference.max(), difference.mean())


@pytest.mark.parametrize("name", ["zi-union", "zi-union-21"])
def test_a_z_image_controlnet_inpaints_under_the_mask_below_strength_one(zimage, name, tmp_path):
    # As A1111 inpaints with a ControlNet: 1.0 (which reads no masked picture) at any strength, 2.x below strength 1
    # (its pipeline paints from pure noise: at 1, the test above), its masked-picture channels empty as in text to
    # image. Both were refused before.
    check_controlnet_inpainting(zimage["home"], zimage["folder"], ControlUnit(name, str(zimage["picture"])),
                                ("after_proj",), tmp_path, own_inpainting=False, **VALUES)  # fmt: skip


@pytest.mark.parametrize("name", ["zi-union", "zi-union-21"])
def test_a_z_image_controlnet_works_in_image_to_image_and_the_hires_fix(zimage, name, tmp_path):
    # diffusers' Z-Image ControlNet pipeline is text-to-image only: Marble runs it over a source as
    # ZImageImg2ImgPipeline does (control_dit_edits.py); its step range is Marble's hook, counted over each pass.
    check_controlnet_image_to_image(zimage["home"], zimage["folder"], ControlUnit(name, str(zimage["picture"])),
                                    ("after_proj",), ZImageControlNetModel, tmp_path, **VALUES)  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offload modes move weights to a CUDA GPU")
@pytest.mark.parametrize("mode", ["offload", "fp8"])
def test_a_z_image_controlnet_runs_with_model_offload_and_fp8_on_cuda(zimage, mode):
    # Model offload: the hook brings the whole transformer to the GPU before the ControlNet runs its embedders
    # and refiners. The same picture as with everything on the GPU, within the modes' own noise.
    unit = ControlUnit("zi-union-21", str(zimage["picture"]), weight=0.8)
    assert_mode_matches_full(make_backend(zimage["home"]), zimage["folder"], mode, controls=(unit,), **VALUES)
