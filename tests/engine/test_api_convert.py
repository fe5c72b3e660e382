"""A1111 payloads to requests, without a server: what webuiapi sends by default is accepted, fields that
would change the picture are refused by name, and names are never paths."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from desktop.api.convert import ApiError, ApiLimits, ApiOptions, looks_like_path, request_from_payload, sampler_from

# What webuiapi 0.9 sends for txt2img when the caller only gives a prompt (its defaults).
WEBUIAPI_DEFAULTS = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "a fox", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512,
    "height": 512, "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
    "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "scheduler": "automatic",
    "sampler_index": "Euler a", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {},
}
OPTIONS = ApiOptions("tiny", 2, "Original")


def convert(payload: dict, img2img: bool = False, saved: list | None = None):
    def save(image: Image.Image) -> str:
        (saved if saved is not None else []).append(image)
        return f"/server-made/{len(saved or [])}.png"

    warnings: list[str] = []
    return request_from_payload(payload, OPTIONS, save, ApiLimits(), img2img, warnings.append), warnings


def test_webuiapi_defaults_are_accepted_and_mapped():
    converted, warnings = convert(WEBUIAPI_DEFAULTS)
    request = converted.request
    assert (request.prompt, request.sampler, request.steps, request.cfg_scale) == ("a fox", "Euler a", 20, 7.0)
    assert (request.model, request.clip_skip, request.width) == ("tiny", 2, 512)
    assert warnings == []


@pytest.mark.parametrize(("change", "field"), [
    ({"enable_hr": True}, "enable_hr"), ({"styles": ["cinematic"]}, "styles"), ({"subseed_strength": 0.3},
    "subseed_strength"), ({"tiling": True}, "tiling"), ({"s_noise": 1.01}, "s_noise"),
    ({"eta": 0.5}, "eta"), ({"sampler_name": "DDIM", "eta": 1.0}, "eta"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}}, "alwayson_scripts"),
])
def test_fields_that_change_the_image_are_refused_by_name(change, field):
    with pytest.raises(ApiError) as caught:
        convert({**WEBUIAPI_DEFAULTS, **change})
    assert caught.value.status == 422 and caught.value.field_name == field and field in str(caught.value)


def test_unknown_fields_are_warned_about_and_ignored():
    converted, warnings = convert({**WEBUIAPI_DEFAULTS, "from_the_future": 1})
    assert warnings == ["API request: ignored unknown field 'from_the_future'"]
    assert converted.warnings == ("ignored unknown field 'from_the_future'",)


def test_sampler_and_schedule_type():
    assert sampler_from({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}) == "DPM++ 2M Karras"
    assert sampler_from({"sampler_index": "Euler"}) == "Euler"
    with pytest.raises(ApiError):
        sampler_from({"sampler_name": "DPM++ 2M", "scheduler": "Exponential"})


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_img2img_resizes_the_source_and_inverts_the_mask_as_asked():
    saved: list[Image.Image] = []
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    source = b64_png(Image.new("RGB", (32, 32)))
    payload = {"prompt": "p", "width": 64, "height": 64, "steps": 4, "init_images": [source],
               "mask": "data:image/png;base64," + b64_png(mask), "inpainting_mask_invert": 1, "inpainting_fill": 1,
               "inpaint_full_res": True, "inpaint_full_res_padding": 8, "denoising_strength": 0.5}
    request = convert(payload, img2img=True, saved=saved)[0].request
    assert [image.size for image in saved] == [(64, 64), (64, 64)]
    assert saved[1].getpixel((0, 0)) == 0 and saved[1].getpixel((63, 0)) == 255  # inverted
    assert (request.inpaint_area, request.padding, request.strength) == ("masked", 8, 0.5)
    with pytest.raises(ApiError, match="inpainting_fill"):
        convert({**payload, "inpainting_fill": 0}, img2img=True, saved=[])


@pytest.mark.parametrize("name", ["../m", "/abs", "a\\b", "C:x", "a\x00b", "%2e%2e%2fx", "..%2Fm", "~/m", "x%00"])
def test_paths_are_not_names(name):
    assert looks_like_path(name)


@pytest.mark.parametrize("name", ["sd15", "Realistic Vision v6", "model.v2 [abc123]"])
def test_names_are_names(name):
    assert not looks_like_path(name)
