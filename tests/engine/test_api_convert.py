"""A1111 payloads to requests, without a server: what webuiapi sends by default is accepted, fields that
would change the picture are refused by name, and names are never paths."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from desktop.api.convert import (
    ApiError,
    ApiLimits,
    ApiOptions,
    LibraryNames,
    info_json,
    looks_like_path,
    request_from_payload,
    sampler_from,
)
from desktop.engine.request import ControlUnit

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


NAMES = LibraryNames(loras=("detail",), vaes=("clear-vae",), upscalers=("4x-tiny",), controls=("tiny-canny",),
                     models=("tiny", "xl-refiner"))


def convert(payload: dict, img2img: bool = False, saved: list | None = None, options: ApiOptions = OPTIONS):
    def save(image: Image.Image) -> str:
        (saved if saved is not None else []).append(image)
        return f"/server-made/{len(saved or [])}.png"

    warnings: list[str] = []
    converted = request_from_payload(payload, options, save, ApiLimits(), img2img, warnings.append, NAMES)
    return converted, warnings


def test_webuiapi_defaults_are_accepted_and_mapped():
    converted, warnings = convert(WEBUIAPI_DEFAULTS)
    request = converted.request
    assert (request.prompt, request.sampler, request.steps, request.cfg_scale) == ("a fox", "Euler a", 20, 7.0)
    assert (request.model, request.clip_skip, request.width) == ("tiny", 2, 512)
    assert warnings == []


@pytest.mark.parametrize(("change", "field"), [
    ({"hr_checkpoint_name": "other"}, "hr_checkpoint_name"), ({"styles": ["cinematic"]}, "styles"),
    ({"restore_faces": True}, "restore_faces"), ({"s_noise": 1.01}, "s_noise"),
    ({"eta": 0.5}, "eta"), ({"sampler_name": "DDIM", "eta": 1.0}, "eta"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"alwayson_scripts": {"ADetailer": {"args": [{"ad_model": "face"}]}}}, "alwayson_scripts"),
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
    assert request.inpaint_fill == "original"
    fills = [convert({**payload, "inpainting_fill": n}, img2img=True, saved=[])[0].request.inpaint_fill
             for n in (0, 2, 3)]
    assert fills == ["fill", "latent noise", "latent nothing"]
    with pytest.raises(ApiError, match="inpainting_fill"):
        convert({**payload, "inpainting_fill": 4}, img2img=True, saved=[])


@pytest.mark.parametrize("name", ["../m", "/abs", "a\\b", "C:x", "a\x00b", "%2e%2e%2fx", "..%2Fm", "~/m", "x%00"])
def test_paths_are_not_names(name):
    assert looks_like_path(name)


@pytest.mark.parametrize("name", ["sd15", "Realistic Vision v6", "model.v2 [abc123]"])
def test_names_are_names(name):
    assert not looks_like_path(name)


def test_hires_fields_map_to_the_hires_fix():
    payload = {**WEBUIAPI_DEFAULTS, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "latent (bicubic)",
               "hr_second_pass_steps": 6, "denoising_strength": 0.4, "hr_prompt": "sharp",
               "hr_sampler_name": "DPM++ 2M", "hr_scheduler": "Karras", "width": 64, "height": 64}
    request = convert(payload)[0].request
    assert (request.hires_fix, request.hires_scale, request.hires_upscaler) == (True, 1.5, "Latent (bicubic)")
    assert (request.hires_steps, request.hires_denoise, request.hires_prompt) == (6, 0.4, "sharp")
    assert request.hires_sampler == "DPM++ 2M Karras" and request.hires_size == (96, 96)
    assert convert({**payload, "hr_upscaler": "4X-TINY"})[0].request.hires_upscaler == "4x-tiny"
    # webuiapi's defaults (enable_hr False) leave it off; img2img has no hires fix in A1111.
    assert not convert(WEBUIAPI_DEFAULTS)[0].request.hires_fix
    assert convert({**payload, "hr_resize_x": 128, "hr_resize_y": 0})[0].request.hires_size == (128, 128)


@pytest.mark.parametrize(("change", "field", "name"), [
    ({"prompt": "a fox <lora:nope:0.5>"}, "prompt", "nope"),
    ({"enable_hr": True, "hr_prompt": "<lora:ghost:1>", "width": 64, "height": 64}, "hr_prompt", "ghost"),
    ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+", "width": 64, "height": 64}, "hr_upscaler", "R-ESRGAN 4x+"),
    ({"override_settings": {"sd_vae": "missing.safetensors"}}, "override_settings.sd_vae", "missing.safetensors"),
    ({"override_settings": {"sd_vae": "../clear-vae"}}, "override_settings.sd_vae", "../clear-vae"),
])
def test_unknown_library_names_are_refused_naming_field_and_name(change, field, name):
    payload = {**WEBUIAPI_DEFAULTS, **change}
    options, _ = (OPTIONS, None)
    if "override_settings" in change:
        from desktop.api.convert import apply_override_settings

        options, _ = apply_override_settings(OPTIONS, change["override_settings"])
    with pytest.raises(ApiError) as caught:
        convert(payload, options=options)
    assert caught.value.status == 422 and caught.value.field_name == field and repr(name) in str(caught.value)


def test_known_library_names_pass():
    from desktop.api.convert import apply_override_settings

    options, _ = apply_override_settings(OPTIONS, {"sd_vae": "Clear-VAE.safetensors"})
    request = convert({**WEBUIAPI_DEFAULTS, "prompt": "<lora:Detail:0.5> fox"}, options=options)[0].request
    assert request.vae == "clear-vae" and request.prompt == "<lora:Detail:0.5> fox"
    assert convert(WEBUIAPI_DEFAULTS, options=apply_override_settings(OPTIONS, {"sd_vae": "Automatic"})[0])[
        0].request.vae == ""


def unit(**fields) -> dict:
    return {"alwayson_scripts": {"controlnet": {"args": [{"enabled": True, "model": "tiny-canny [0a1b2c3d]",
                                                          "image": b64_png(Image.new("RGB", (16, 16))), **fields}]}}}


def test_controlnet_units_map_to_control_units():
    saved: list[Image.Image] = []
    payload = {**WEBUIAPI_DEFAULTS, "width": 64, "height": 64,
               **unit(module="canny", weight=0.8, guidance_start=0.1, guidance_end=0.9,
                      control_mode="My prompt is more important", threshold_a=50, threshold_b=150,
                      pixel_perfect=True, resize_mode="Crop and Resize", processor_res=512)}
    request = convert(payload, saved=saved)[0].request
    assert request.controls == (ControlUnit("tiny-canny", "/server-made/1.png", 0.8, 0.1, 0.9, "prompt", "canny",
                                            50.0, 150.0),)
    assert saved[0].size == (16, 16)
    # Disabled units and webuiapi's "off" forms add nothing; control_mode by index.
    off = {"alwayson_scripts": {"ControlNet": {"args": [{"enabled": False, "model": "x"}, False, {}]}}}
    assert convert({**WEBUIAPI_DEFAULTS, **off})[0].request.controls == ()
    assert convert({**WEBUIAPI_DEFAULTS, **unit(control_mode=2)})[0].request.controls[0].mode == "control"
    # webuiapi's default resize_mode is the same fit for an image of the output's shape.
    assert convert({**WEBUIAPI_DEFAULTS, **unit(resize_mode="Resize and Fill")})[0].request.controls
    assert convert({**WEBUIAPI_DEFAULTS, **unit(module="tile_resample")})[0].request.controls[0].preprocessor == "tile"
    # The learned preprocessors and IP-Adapter units, by the extension's module names.
    for module, preprocessor in (("depth_midas", "depth"), ("depth_anything_v2", "depth"),
                                 ("lineart_realistic", "lineart"), ("openpose", "openpose"),
                                 ("ip-adapter_clip_sd15", "ip-adapter"), ("ip-adapter_clip_sdxl", "ip-adapter"),
                                 ("ip-adapter_face_id", "ip-adapter"), ("ip-adapter_face_id_plus", "ip-adapter")):
        assert convert({**WEBUIAPI_DEFAULTS, **unit(module=module)})[0].request.controls[0].preprocessor == preprocessor


def test_a_built_in_unit_names_the_models_own_control_input():
    # A Flux.1 Canny / Depth dev model reads its picture itself: "built-in" is no library name, and is taken.
    (got,) = convert({**WEBUIAPI_DEFAULTS, **unit(model="Built-in", module="canny")}, saved=[])[0].request.controls
    assert (got.model, got.preprocessor) == ("built-in", "canny")


def test_an_ip_adapter_unit_takes_the_extensions_list_of_images():
    """sd-webui-controlnet's multi-input form: `image` as a list of {"image", "mask"} for IP-Adapter modules."""
    saved: list[Image.Image] = []
    images = [{"image": b64_png(Image.new("RGB", (16, 16), colour)), "mask": None} for colour in ("red", "blue")]
    payload = {**WEBUIAPI_DEFAULTS, **unit(module="ip-adapter_clip_sd15", image=images)}
    request = convert(payload, saved=saved)[0].request
    (got,) = request.controls
    assert got.images == ("/server-made/1.png", "/server-made/2.png") and got.preprocessor == "ip-adapter"
    assert [image.getpixel((0, 0)) for image in saved] == [(255, 0, 0), (0, 0, 255)]
    # The [image, mask] pair is one image; several images for a ControlNet module are refused.
    pair = [b64_png(Image.new("RGB", (16, 16))), b64_png(Image.new("RGB", (16, 16)))]
    (one,) = convert({**WEBUIAPI_DEFAULTS, **unit(module="ip-adapter", image=pair)}, saved=[])[0].request.controls
    assert one.images == ("/server-made/1.png",)
    with pytest.raises(ApiError, match="only IP-Adapter modules take several images"):
        convert({**WEBUIAPI_DEFAULTS, **unit(module="canny", image=images)})


@pytest.mark.parametrize(("fields", "key", "words"), [
    ({"module": "depth_leres"}, "module", "'depth_leres'"), ({"model": "other [12345678]"}, "model", "other"),
    ({"model": "../tiny-canny"}, "model", "not a path"), ({"control_mode": "Loud"}, "control_mode", "Loud"),
    ({"resize_mode": "Just Resize", "image": b64_png(Image.new("RGB", (32, 16)))}, "resize_mode", "Crop and Resize"),
    ({"resize_mode": "Sideways"}, "resize_mode", "Sideways"), ({"image": "%%%"}, "image", "base64"),
    ({"weight": "1"}, "weight", "number"),
])
def test_bad_controlnet_units_are_422_naming_the_unit_field(fields, key, words):
    with pytest.raises(ApiError) as caught:
        convert({**WEBUIAPI_DEFAULTS, **unit(**fields)})
    assert caught.value.status == 422 and caught.value.field_name == f"alwayson_scripts.controlnet.args.0.{key}"
    assert words in str(caught.value)


def test_the_sdxl_refiner_fields_map_to_the_request():
    request = convert({**WEBUIAPI_DEFAULTS, "refiner_checkpoint": "xl-refiner [0a1b2c3d]",
                       "refiner_switch_at": 0.7})[0].request
    assert (request.refiner, request.refiner_switch_at) == ("xl-refiner", 0.7)
    assert convert({**WEBUIAPI_DEFAULTS, "refiner_checkpoint": "xl-refiner"})[0].request.refiner_switch_at == 0.8
    # The forms clients send for "no refiner", and no warning for A1111's own fields.
    for off in ("", None, "None"):
        converted, warnings = convert({**WEBUIAPI_DEFAULTS, "refiner_checkpoint": off, "refiner_switch_at": 0.8})
        assert converted.request.refiner == "" and warnings == []


@pytest.mark.parametrize(("fields", "key", "words"), [
    ({"refiner_checkpoint": "missing"}, "refiner_checkpoint", "'missing'"),
    ({"refiner_checkpoint": "../xl-refiner"}, "refiner_checkpoint", "No model"),
    ({"refiner_checkpoint": 3}, "refiner_checkpoint", "model name"),
    ({"refiner_checkpoint": "xl-refiner", "refiner_switch_at": 1.5}, "refiner_switch_at", "out of range"),
])
def test_bad_refiner_fields_are_422_naming_the_field(fields, key, words):
    with pytest.raises(ApiError) as caught:
        convert({**WEBUIAPI_DEFAULTS, **fields})
    assert caught.value.status == 422 and caught.value.field_name == key and words in str(caught.value)


def test_variation_seed_seed_resize_and_tiling_map_to_the_request():
    # Refused before (422) though the engine has them: A1111 clients asking for variations got nothing.
    converted, warnings = convert({**WEBUIAPI_DEFAULTS, "subseed": 77, "subseed_strength": 0.25,
                                   "seed_resize_from_w": 640, "seed_resize_from_h": 448, "tiling": True})  # fmt: skip
    request = converted.request
    assert (request.subseed, request.subseed_strength) == (77, 0.25)
    assert (request.seed_resize_from_w, request.seed_resize_from_h, request.tiling) == (640, 448, True)
    assert warnings == []
    # webuiapi's defaults mean off: -1 (drawn only when a strength asks for it), 0 and -1 for no resize.
    plain = convert(WEBUIAPI_DEFAULTS)[0].request
    assert (plain.subseed, plain.subseed_strength, plain.seed_resize_from_w, plain.tiling) == (-1, 0.0, 0, False)
    unset = convert({**WEBUIAPI_DEFAULTS, "seed_resize_from_w": -1, "seed_resize_from_h": -1})[0].request
    assert (unset.seed_resize_from_w, unset.seed_resize_from_h) == (0, 0)


@pytest.mark.parametrize(("change", "field"), [
    ({"subseed_strength": 1.5}, "subseed_strength"), ({"subseed": "x"}, "subseed"),
    ({"seed_resize_from_w": 100, "seed_resize_from_h": 96}, "seed_resize_from_w"),
    ({"seed_resize_from_w": 640}, "seed_resize_from_w"), ({"tiling": "yes"}, "tiling"),
])  # fmt: skip
def test_bad_variation_fields_are_422_naming_the_field(change, field):
    with pytest.raises(ApiError) as caught:
        convert({**WEBUIAPI_DEFAULTS, **change})
    assert caught.value.status == 422 and caught.value.field_name == field, str(caught.value)


def test_img2img_refuses_a_variation_it_would_not_make():
    # A1111 varies an img2img's noise too; Marble's edits do not, so the field is refused, not dropped.
    source = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(source, "PNG")
    payload = {"prompt": "a fox", "init_images": [base64.b64encode(source.getvalue()).decode()], "width": 64,
               "height": 64, "subseed_strength": 0.3}  # fmt: skip
    with pytest.raises(ApiError) as caught:
        convert(payload, img2img=True)
    assert caught.value.field_name == "subseed_strength"
    assert convert({**payload, "subseed_strength": 0}, img2img=True)[0].request.subseed_strength == 0


def test_info_reports_the_variation_as_a1111_does():
    request = convert({**WEBUIAPI_DEFAULTS, "seed": 10, "subseed": 77, "subseed_strength": 0.25, "batch_size": 2,
                       "seed_resize_from_w": 640, "seed_resize_from_h": 448})[0].request  # fmt: skip
    info = json.loads(info_json(request, [10, 11], ["a", "b"], "abc"))
    assert (info["subseed"], info["all_subseeds"], info["subseed_strength"]) == (77, [77, 78], 0.25)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (640, 448)
    plain = json.loads(info_json(convert({**WEBUIAPI_DEFAULTS, "seed": 10})[0].request, [10], ["a"], "abc"))
    assert (plain["subseed"], plain["subseed_strength"], plain["seed_resize_from_w"]) == (10, 0.0, -1)


def test_forges_distilled_cfg_scale_maps_for_flux_dev():
    # Forge's API field for Flux dev's distilled guidance (it was an unknown field, ignored: always 3.5).
    assert convert({**WEBUIAPI_DEFAULTS, "distilled_cfg_scale": 2.5})[0].request.distilled_cfg_scale == 2.5
    assert convert(WEBUIAPI_DEFAULTS)[0].request.distilled_cfg_scale == 3.5
    with pytest.raises(ApiError) as caught:
        convert({**WEBUIAPI_DEFAULTS, "distilled_cfg_scale": 500})
    assert caught.value.field_name == "distilled_cfg_scale"
