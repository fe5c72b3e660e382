"""End to end: `marble generate --control NAME:IMAGE --control-preprocessor depth` runs the imported depth
network on the image and feeds its map to the ControlNet, pixel for pixel what the annotator followed by
diffusers' own ControlNet pipeline makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, UNet2DConditionModel
from PIL import Image, ImageDraw

from desktop.engine.backends import annotators as ann
from desktop.engine.library.lora import AdapterCatalog
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from tests.engine.test_annotators import depth_model
from tests.engine.test_controls import plain
from tests.support import tiny_controls
from tests.support.cli_runner import run_cli


@pytest.mark.slow
def test_depth_preprocessor_feeds_the_controlnet_as_bare_diffusers_does(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    paths = AppPaths.for_root(home).ensure()
    depth_folder = tmp_path / "depth-anything-tiny"
    depth_model(seed=1).save_pretrained(depth_folder)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd15_dir / "unet"), local_files_only=True)
    controlnet = tiny_controls.build_tiny_controlnet(unet, seed=3)
    with torch.no_grad():
        # The tiny net's zero-convolution out of the image embedding is only jittered: strengthen it, so the
        # control image (depth map or not) visibly steers the result.
        controlnet.controlnet_cond_embedding.conv_out.weight.mul_(200.0)
    pipe = plain(StableDiffusionControlNetPipeline, tiny_sd15_dir, controlnet=controlnet)
    controlnet_file = tiny_controls.save_controlnet(pipe.controlnet, tmp_path / "depthnet.safetensors", "ldm")
    for source in (depth_folder, controlnet_file):
        code, _, err = run_cli("controls", "import", str(source), "--home", str(home))
        assert code == 0, err
    picture = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(picture).ellipse((8, 14, 40, 50), fill=(250, 240, 30))  # off centre: a flip would show
    picture.save(tmp_path / "scene.png")
    out = tmp_path / "out.png"
    code, _, err = run_cli(
        "generate", "--model", str(tiny_sd15_dir), "--prompt", "a lamp", "--steps", "3", "--cfg", "7", "--seed", "11",
        "--width", "64", "--height", "64", "--device", "cpu", "--no-preview", "--home", str(home),
        "--control", f"depthnet:{tmp_path / 'scene.png'}:2", "--control-preprocessor", "depth", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert read_image_metadata(out).request.controls[0].preprocessor == "depth"
    ours = np.asarray(Image.open(out).convert("RGB"))

    # By hand: the annotator on the picture (already the working size), then diffusers' pipeline.
    annotators = ann.Annotators(AdapterCatalog(paths.controls, "control model", "controls"))
    depth = annotators.apply("depth", picture)
    assert depth.std() > 0.05  # a real map, not a flat one
    control = torch.from_numpy(np.ascontiguousarray(depth.transpose(2, 0, 1)))[None]
    expected = pipe(prompt="a lamp", num_inference_steps=3, guidance_scale=7.0, image=control,
                    controlnet_conditioning_scale=2.0, width=64, height=64,
                    generator=torch.Generator("cpu").manual_seed(11)).images[0]  # fmt: skip
    assert np.array_equal(ours, np.asarray(expected.convert("RGB")))
    # The depth map is what counts: the picture itself as the control image gives another result.
    unprocessed = pipe(prompt="a lamp", num_inference_steps=3, guidance_scale=7.0, image=picture,
                       controlnet_conditioning_scale=2.0, width=64, height=64,
                       generator=torch.Generator("cpu").manual_seed(11)).images[0]  # fmt: skip
    assert np.abs(ours.astype(int) - np.asarray(unprocessed.convert("RGB")).astype(int)).mean() > 0.1
