"""A1111 API payloads to GenerationRequests and back: pure Python, no web framework, no Qt.

Clients send A1111's field names with A1111's defaults. Fields Marble maps are turned into a request;
fields that would change the picture in A1111 but that Marble does not do are refused (422, naming
them) unless they hold their no-op value (clients such as webuiapi send every field, defaults too);
fields nobody here knows are ignored with a warning in the log, as A1111 does.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image, ImageOps

from desktop.engine.backends.hires import BUILT_IN_UPSCALERS, canonical_upscaler
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, canonical_sampler
from desktop.engine.errors import InvalidRequest
from desktop.engine.library.catalog import find_by_name
from desktop.engine.library.lora import lora_tag_names
from desktop.engine.metadata import hires_pairs
from desktop.engine.request import INPAINT_FILLS, MAX_CLIP_SKIP, MAX_DRAWN_SEED, GenerationRequest
from desktop.engine.untrusted_image import open_untrusted

# A1111's API defaults (modules/processing.py): what a missing field means.
A1111_STEPS = 50
A1111_CFG = 7.0
A1111_SIZE = 512
FORGE_DISTILLED_CFG = 3.5  # Forge's default Distilled CFG Scale


class ApiError(Exception):
    """A refusal with its HTTP status and the request field it is about."""

    def __init__(self, status: int, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field_name = field_name


@dataclass(frozen=True)
class ApiLimits:
    """What one client may ask for; every limit has a clear HTTP error (README "API")."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_batch_size: int = 8
    max_images_per_request: int = 16
    max_queue: int = 16


@dataclass(frozen=True)
class ApiOptions:
    """The A1111 settings (`/sdapi/v1/options`) Marble has."""

    sd_model_checkpoint: str = ""
    CLIP_stop_at_last_layers: int = 1
    emphasis: str = "Original"
    # A1111's VAE setting: "Automatic" (the model's own) or a library VAE's file name.
    sd_vae: str = "Automatic"

    def to_json(self) -> dict[str, Any]:
        return {
            "sd_model_checkpoint": self.sd_model_checkpoint,
            "CLIP_stop_at_last_layers": self.CLIP_stop_at_last_layers,
            "emphasis": self.emphasis,
            "sd_vae": self.sd_vae,
            "samples_format": "png",
        }


OPTION_KEYS = frozenset({"sd_model_checkpoint", "CLIP_stop_at_last_layers", "emphasis", "sd_vae", "samples_format"})
# sd_vae values meaning "the model's own VAE".
MODEL_OWN_VAE = ("Automatic", "None", "")


@dataclass(frozen=True)
class LibraryNames:
    """The library's names a request may use, read by the server per request (the folders may change)."""

    loras: tuple[str, ...] = ()
    vaes: tuple[str, ...] = ()
    upscalers: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Named:
    name: str


def find_name(names: Sequence[str], name: str) -> str | None:
    """The library's spelling of `name` (the engine's own matching: exact, then NFC/case-insensitive)."""
    found = find_by_name([_Named(n) for n in names], name)
    return found.name if found is not None else None


@dataclass(frozen=True)
class Converted:
    request: GenerationRequest
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # img2img with several init_images: one request per further image (A1111 makes them one batch,
    # image i with seed + i); their images follow `request`'s in the response.
    more: tuple[GenerationRequest, ...] = ()


# Fields Marble reads (txt2img and img2img).
_MAPPED = frozenset({
    "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "sampler_name",
    "sampler_index", "scheduler", "batch_size", "n_iter", "override_settings",
    "override_settings_restore_afterwards", "send_images", "save_images", "tiling",
    "distilled_cfg_scale",  # Forge's, for Flux dev (and Flux.2 dev) models
})
# A1111's variation seed and seed resize: txt2img only here (Marble's edits start from the source, not noise).
_VARIATION = frozenset({"subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w"})
_MAPPED_IMG2IMG = frozenset({
    "init_images", "mask", "mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding", "inpainting_mask_invert", "resize_mode", "denoising_strength",
    "include_init_images",
})
# Fields that never change the picture.
_HARMLESS = frozenset({
    "do_not_save_samples", "do_not_save_grid", "script_args", "force_task_id", "infotext", "comments",
    "disable_extra_networks", "firstphase_width", "firstphase_height", "image_cfg_scale", "user",
    "hr_additional_modules", "sampler_index",
})
# A1111's SDXL refiner (txt2img): a library model continues the base model's latents (backends/refiner.py).
_REFINER = frozenset({"refiner_checkpoint", "refiner_switch_at"})
# The hires fix (txt2img only; img2img's are ignored as A1111's img2img has no hires fix).
_HIRES = frozenset({
    "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt", "denoising_strength",
})


def _no_op(value: object, *allowed: object) -> bool:
    return value is None or any(value == ok for ok in allowed)


# Fields A1111 uses to change the picture, with the values that change nothing.
_CHANGES_IMAGE: Mapping[str, Callable[[object], bool]] = {
    "hr_checkpoint_name": lambda v: _no_op(v, "", "Use same checkpoint"),
    "styles": lambda v: _no_op(v, []),
    "restore_faces": lambda v: _no_op(v, False),
    "s_churn": lambda v: _no_op(v, 0),
    "s_tmax": lambda v: _no_op(v, 0),
    "s_tmin": lambda v: _no_op(v, 0),
    "s_noise": lambda v: _no_op(v, 1),
    "s_min_uncond": lambda v: _no_op(v, 0),
    "script_name": lambda v: _no_op(v, ""),
    # ControlNet's units are mapped (desktop.api.controlnet); any other active script is refused.
    "alwayson_scripts": lambda v: v is None or (isinstance(v, dict) and all(
        _empty_script(s) or (isinstance(k, str) and k.casefold() == "controlnet") for k, s in v.items())),
    "initial_noise_multiplier": lambda v: _no_op(v, 1),
    "latent_mask": lambda v: _no_op(v, ""),
}


def _empty_script(script: object) -> bool:
    """webuiapi sends `{"ControlNet": {"args": []}}` and `{"args": [False]}` to say "off"."""
    if not isinstance(script, dict):
        return False
    args = script.get("args", [])
    return isinstance(args, list) and all(arg is False or arg == {} for arg in args)


def check_fields(payload: Mapping[str, Any], img2img: bool, log: Callable[[str], None]) -> list[str]:
    """Refuse image-changing fields Marble cannot honour; return warnings for unknown ones."""
    refused = [name for name, is_no_op in _CHANGES_IMAGE.items() if name in payload and not is_no_op(payload[name])]
    if img2img:
        refused += [name for name in ("subseed_strength", "seed_resize_from_h", "seed_resize_from_w")
                    if name in payload and not _no_op(payload[name], -1, 0)]  # fmt: skip
    if payload.get("eta") is not None and not _eta_is_no_op(payload):
        refused.append("eta")
    if refused:
        raise ApiError(422, f"Marble does not support {', '.join(refused)} (these change the image); "
                            "leave them at their defaults.", refused[0])
    if img2img and payload.get("enable_hr"):
        raise ApiError(422, "The hires fix is for txt2img (A1111's img2img has none).", "enable_hr")
    known = _MAPPED | _HARMLESS | _HIRES | _REFINER | _VARIATION | set(_CHANGES_IMAGE) | {"eta", "enable_hr"}
    known |= _MAPPED_IMG2IMG if img2img else set()
    warnings = []
    for name in payload:
        if name not in known:
            warnings.append(f"ignored unknown field {name!r}")
            log(f"API request: ignored unknown field {name!r}")
    return warnings


def _eta_is_no_op(payload: Mapping[str, Any]) -> bool:
    """eta only acts on ancestral samplers (A1111 default 1) and DDIM (default 0)."""
    sampler = str(payload.get("sampler_name") or payload.get("sampler_index") or "")
    eta = payload["eta"]
    if not isinstance(eta, (int, float)) or isinstance(eta, bool):
        return False
    if sampler.endswith(" a") or " a " in sampler:
        return eta == 1
    if sampler == "DDIM":
        return eta == 0
    return True


def sampler_from(payload: Mapping[str, Any], prefix: str = "") -> str:
    """`sampler_name` (or the old `sampler_index`) plus A1111 1.9's `scheduler` ("Karras", "automatic");
    with prefix "hr_", the hires pass's (empty: the first pass's)."""
    sampler_key, scheduler_key = f"{prefix}sampler_name", f"{prefix}scheduler"
    name = payload.get(sampler_key) or (None if prefix else payload.get("sampler_index"))
    if name is None or name == "" or (prefix and name == "Use same sampler"):
        return "" if prefix else DEFAULT_SAMPLER
    if not isinstance(name, str):
        raise ApiError(422, f"{sampler_key} must be text.", sampler_key)
    schedule = payload.get(scheduler_key)
    if schedule in (None, "", "automatic", "Automatic", "Use same scheduler"):
        found = canonical_sampler(name)
    elif isinstance(schedule, str) and schedule.casefold() == "karras":
        found = canonical_sampler(name, "Karras")
    else:
        raise ApiError(422, f"Unsupported scheduler {schedule!r}: use 'automatic' or 'Karras'.", scheduler_key)
    if found is None:
        raise ApiError(422, f"Unknown sampler {name!r}. Known samplers: {', '.join(SAMPLER_NAMES)}.", sampler_key)
    return found


def _int(payload: Mapping[str, Any], name: str, default: int) -> int:
    value = payload.get(name, default)
    if value is None:
        return default
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise ApiError(422, f"{name} must be a whole number, not {value!r}.", name)
    return int(value)


def _float(payload: Mapping[str, Any], name: str, default: float) -> float:
    value = payload.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(422, f"{name} must be a number, not {value!r}.", name)
    return float(value)


def _bool(payload: Mapping[str, Any], name: str) -> bool:
    value = payload.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(422, f"{name} must be true or false, not {value!r}.", name)
    return value


def _variation_values(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's variation seed (-1: drawn when the strength is above 0) and seed resize (-1 or 0: off)."""
    return {
        "subseed": _int(payload, "subseed", -1),
        "subseed_strength": _float(payload, "subseed_strength", 0.0),
        "seed_resize_from_w": max(_int(payload, "seed_resize_from_w", -1), 0),
        "seed_resize_from_h": max(_int(payload, "seed_resize_from_h", -1), 0),
    }


def _text(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be text.", name)
    return value


def decode_image(data: object, field_name: str, limits: ApiLimits) -> Image.Image:
    """A base64 image (optionally a data: URL) from a request: PNG/JPEG/WebP only, pixels capped."""
    if not isinstance(data, str):
        raise ApiError(422, f"{field_name} must be a base64 image.", field_name)
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field_name} is not valid base64.", field_name) from None
    decoded, size = None, (0, 0)
    try:
        with open_untrusted(io.BytesIO(raw), field_name) as (image, _format):
            size = image.size
            # Checked from the header, before a pixel is decoded (a decompression bomb is small on the wire).
            if size[0] * size[1] <= limits.max_image_pixels:
                image.load()
                decoded = image.copy()
    except InvalidRequest as error:
        raise ApiError(413 if "decompression bomb" in str(error) else 422, str(error), field_name) from None
    if decoded is None:
        raise ApiError(413, f"{field_name} is {size[0]}x{size[1]} pixels; the API accepts up to "
                            f"{limits.max_image_pixels:,} pixels.", field_name)
    return decoded


def check_batch(payload: Mapping[str, Any], limits: ApiLimits) -> None:
    size, count = _int(payload, "batch_size", 1), _int(payload, "n_iter", 1)
    if size > limits.max_batch_size:
        raise ApiError(429, f"batch_size {size} is over this server's limit of {limits.max_batch_size}.", "batch_size")
    if size * count > limits.max_images_per_request:
        raise ApiError(429, f"batch_size x n_iter = {size * count} images is over this server's limit of "
                            f"{limits.max_images_per_request} per request.", "n_iter")


def apply_override_settings(options: ApiOptions, overrides: object) -> tuple[ApiOptions, list[str]]:
    """`override_settings` for one request, the same keys as /options."""
    if overrides is None:
        return options, []
    if not isinstance(overrides, dict):
        raise ApiError(422, "override_settings must be an object.", "override_settings")
    return merge_options(options, overrides, "override_settings")


def merge_options(options: ApiOptions, changes: Mapping[str, Any], where: str) -> tuple[ApiOptions, list[str]]:
    warnings = []
    model, clip_skip, emphasis = options.sd_model_checkpoint, options.CLIP_stop_at_last_layers, options.emphasis
    vae = options.sd_vae
    for key, value in changes.items():
        if key == "sd_model_checkpoint":
            if not isinstance(value, str):
                raise ApiError(422, "sd_model_checkpoint must be a model name.", f"{where}.sd_model_checkpoint")
            model = value
        elif key == "CLIP_stop_at_last_layers":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLIP_SKIP:
                raise ApiError(422, f"CLIP_stop_at_last_layers must be 1 to {MAX_CLIP_SKIP}.",
                               f"{where}.CLIP_stop_at_last_layers")
            clip_skip = value
        elif key == "emphasis":
            if value not in ("Original", "No norm", "None"):
                raise ApiError(422, "emphasis must be 'Original', 'No norm' or 'None'.", f"{where}.emphasis")
            emphasis = value
        elif key == "sd_vae":
            if not isinstance(value, str):
                raise ApiError(422, "sd_vae must be a VAE name or 'Automatic'.", f"{where}.sd_vae")
            vae = value
        elif key == "samples_format":
            if value != "png":
                raise ApiError(422, "Marble writes PNG only (samples_format 'png').", f"{where}.samples_format")
        else:
            warnings.append(f"ignored unknown setting {key!r}")
    return ApiOptions(model, clip_skip, emphasis, vae), warnings


def vae_name(value: str, vaes: Sequence[str], field_name: str) -> str:
    """The request's `vae` for A1111's sd_vae: "" for the model's own, else a library VAE's name (A1111
    names VAEs by file name: the extension is dropped)."""
    if value in MODEL_OWN_VAE:
        return ""
    if looks_like_path(value):
        raise ApiError(422, f"{field_name} must be a library name, not a path: {value!r}.", field_name)
    stem = value[: -len(".safetensors")] if value.casefold().endswith(".safetensors") else value
    found = find_name(vaes, stem)
    if found is None:
        raise ApiError(422, f"No VAE named {value!r} in the library (VAEs: {', '.join(vaes) or 'none'}; "
                            "or 'Automatic').", field_name)
    return found


def check_loras(prompts: Sequence[tuple[str, str]], loras: Sequence[str]) -> None:
    """Every `<lora:NAME:..>` tag names a library LoRA: refused here (422) rather than failing the job."""
    for field_name, text in prompts:
        for name in sorted(lora_tag_names(text)):
            if looks_like_path(name) or find_name(loras, name) is None:
                raise ApiError(422, f"No LoRA named {name!r} in the library (LoRAs: {', '.join(loras) or 'none'}).",
                               field_name)


def upscaler_name(value: object, upscalers: Sequence[str]) -> str:
    """hr_upscaler: a built-in (latent modes, Lanczos, Nearest) or a library upscaler's name."""
    if value is None or value == "":
        return "Latent"  # A1111's default latent upscale mode
    if not isinstance(value, str):
        raise ApiError(422, "hr_upscaler must be an upscaler name.", "hr_upscaler")
    built_in = canonical_upscaler(value)
    if built_in is not None:
        return built_in
    found = None if looks_like_path(value) else find_name(upscalers, value)
    if found is None:
        known = ", ".join([*BUILT_IN_UPSCALERS, *upscalers])
        raise ApiError(422, f"No upscaler named {value!r} (upscalers: {known}).", "hr_upscaler")
    return found


def _hires_values(payload: Mapping[str, Any], upscalers: Sequence[str]) -> dict[str, Any]:
    """A1111's txt2img hires fields as the request's; `denoising_strength` is the second pass's."""
    if not payload.get("enable_hr"):
        return {}
    return {
        "hires_fix": True,
        "hires_scale": _float(payload, "hr_scale", 2.0),
        "hires_resize_w": _int(payload, "hr_resize_x", 0),
        "hires_resize_h": _int(payload, "hr_resize_y", 0),
        "hires_upscaler": upscaler_name(payload.get("hr_upscaler"), upscalers),
        "hires_steps": _int(payload, "hr_second_pass_steps", 0),
        "hires_denoise": _float(payload, "denoising_strength", 0.75),
        "hires_prompt": _text(payload, "hr_prompt"),
        "hires_negative_prompt": _text(payload, "hr_negative_prompt"),
        "hires_sampler": sampler_from(payload, "hr_"),
    }


def _refiner_values(payload: Mapping[str, Any], models: Sequence[str]) -> dict[str, Any]:
    """A1111's `refiner_checkpoint` (a model title, "name [hash]" or the name) and `refiner_switch_at`."""
    value = payload.get("refiner_checkpoint")
    if value is None or value == "" or value == "None":  # A1111 clients send these for "no refiner"
        return {}
    if not isinstance(value, str):
        raise ApiError(422, "refiner_checkpoint must be a model name.", "refiner_checkpoint")
    found = None if looks_like_path(value) else find_name(models, strip_title(value))
    if found is None:
        raise ApiError(422, f"No model named {value!r} in the library for refiner_checkpoint.", "refiner_checkpoint")
    return {"refiner": found, "refiner_switch_at": _float(payload, "refiner_switch_at", 0.8)}


def request_from_payload(
    payload: Mapping[str, Any],
    options: ApiOptions,
    save_image: Callable[[Image.Image], str],
    limits: ApiLimits,
    img2img: bool,
    log: Callable[[str], None],
    names: LibraryNames | None = None,
) -> Converted:
    """One GenerationRequest for an A1111 txt2img/img2img payload. `options.sd_model_checkpoint` must
    already be a library name the caller checked; `save_image` stores a decoded input and returns
    the path the engine reads (made by the server, never taken from the request). LoRA, VAE, upscaler
    and control model names are checked against `names` (none known when it is None)."""
    from desktop.api.controlnet import units_from  # it imports this module

    names = names or LibraryNames()
    warnings = check_fields(payload, img2img, log)
    check_batch(payload, limits)
    check_loras([(key, _text(payload, key)) for key in ("prompt", "negative_prompt", "hr_prompt",
                                                         "hr_negative_prompt") if key in payload], names.loras)
    width, height = _int(payload, "width", A1111_SIZE), _int(payload, "height", A1111_SIZE)
    values: dict[str, Any] = {
        "prompt": _text(payload, "prompt"),
        "negative_prompt": _text(payload, "negative_prompt"),
        "model": options.sd_model_checkpoint,
        "steps": _int(payload, "steps", A1111_STEPS),
        "cfg_scale": _float(payload, "cfg_scale", A1111_CFG),
        "seed": _int(payload, "seed", -1),
        "sampler": sampler_from(payload),
        "width": width,
        "height": height,
        "batch_size": _int(payload, "batch_size", 1),
        "batch_count": _int(payload, "n_iter", 1),
        "clip_skip": options.CLIP_stop_at_last_layers,
        "emphasis": options.emphasis,
        "vae": vae_name(options.sd_vae, names.vaes, "override_settings.sd_vae"),
        "tiling": _bool(payload, "tiling"),
        "distilled_cfg_scale": _float(payload, "distilled_cfg_scale", FORGE_DISTILLED_CFG),
    }
    more_sources: list[str] = []
    if img2img:
        values.update(_img2img_values(payload, (width, height), save_image, limits))
        more_sources = [_source(data, (width, height), save_image, limits) for data in payload["init_images"][1:]]
    else:
        values.update(_hires_values(payload, names.upscalers))
        values.update(_refiner_values(payload, names.models))
        values.update(_variation_values(payload))
    controls = units_from(payload.get("alwayson_scripts"), (width, height), names.controls, save_image, limits, log)
    # The inpaint module reads the job's own source and mask; its unit names the source for the record.
    values["controls"] = tuple(replace(unit, image=unit.image or values.get("init_image") or "") for unit in controls)
    if more_sources:
        # A1111 sets batch_size to the number of images, image i with seed + i: one request each here.
        if values["seed"] == -1:
            values["seed"] = random.SystemRandom().randint(0, MAX_DRAWN_SEED)
        values["batch_size"] = 1
    request = GenerationRequest(**values)
    try:
        request.validate()
    except InvalidRequest as error:
        raise ApiError(422, str(error), _field_of(str(error))) from None
    more = tuple(replace(request, init_image=path, seed=request.seed_for(0, i + 1))
                 for i, path in enumerate(more_sources))
    return Converted(request, tuple(warnings), more)


def _source(data: object, size: tuple[int, int], save_image: Callable[[Image.Image], str], limits: ApiLimits) -> str:
    """An init image at the request's size (A1111's "Just resize"), saved by the server."""
    source = decode_image(data, "init_images", limits).convert("RGB")
    if source.size != size:
        source = source.resize(size, Image.Resampling.LANCZOS)
    return save_image(source)


def _img2img_values(
    payload: Mapping[str, Any], size: tuple[int, int], save_image: Callable[[Image.Image], str], limits: ApiLimits
) -> dict[str, Any]:
    images = payload.get("init_images")
    if not isinstance(images, list) or not images:
        raise ApiError(422, "init_images must list one base64 image.", "init_images")
    if len(images) > 1 and _int(payload, "n_iter", 1) > 1:
        raise ApiError(422, "Several init_images make one batch (A1111's way); Marble takes them with n_iter 1 only.",
                       "init_images")
    if len(images) > max(1, _int(payload, "batch_size", 1)):
        # A1111: "bad number of images passed ... expecting batch_size or less".
        raise ApiError(422, f"{len(images)} init_images but batch_size {_int(payload, 'batch_size', 1)}: send at most "
                            "batch_size images (each takes one place in the batch).", "init_images")
    resize_mode = _int(payload, "resize_mode", 0)
    if resize_mode != 0:
        raise ApiError(422, "Marble supports resize_mode 0 (Just resize) only.", "resize_mode")
    # A1111's "Just resize": the source is scaled to the requested size, and the result has that size.
    values: dict[str, Any] = {
        "init_image": _source(images[0], size, save_image, limits),
        "strength": _float(payload, "denoising_strength", 0.75),
    }
    mask_data = payload.get("mask")
    if mask_data is None or mask_data == "":
        return values
    mask = decode_image(mask_data, "mask", limits)
    # A1111 reads a mask as luminance, or its alpha when it has one that is not all opaque.
    if mask.mode in ("RGBA", "LA") and mask.getchannel("A").getextrema() != (255, 255):
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    if _int(payload, "inpainting_mask_invert", 0):
        mask = ImageOps.invert(mask)
    fill = _int(payload, "inpainting_fill", 1)
    if not 0 <= fill < len(INPAINT_FILLS):
        raise ApiError(422, "inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing).",
                       "inpainting_fill")
    blur = _int(payload, "mask_blur", 4)
    for axis in ("mask_blur_x", "mask_blur_y"):
        if axis in payload and payload[axis] is not None and _int(payload, axis, blur) != blur:
            raise ApiError(422, f"Marble blurs masks evenly: {axis} must equal mask_blur.", axis)
    full_res = payload.get("inpaint_full_res", True)
    values.update(
        mask=save_image(mask),
        mask_blur=blur,
        inpaint_area="masked" if full_res else "whole",
        padding=_int(payload, "inpaint_full_res_padding", 0),
        inpaint_fill=INPAINT_FILLS[fill],
    )
    return values


_FIELD_WORDS = (
    ("variation strength", "subseed_strength"), ("variation seed", "subseed"),
    ("seed resize width", "seed_resize_from_w"), ("seed resize height", "seed_resize_from_h"),
    ("seed resize from", "seed_resize_from_w"),
    ("hires upscale", "hr_scale"), ("hires resize width", "hr_resize_x"), ("hires resize height", "hr_resize_y"),
    ("hires steps", "hr_second_pass_steps"), ("hires denoising", "denoising_strength"),
    ("at hires denoising", "hr_second_pass_steps"), ("hires fix", "hr_scale"), ("hires prompt", "hr_prompt"),
    ("hires negative prompt", "hr_negative_prompt"), ("control unit", "alwayson_scripts"),
    ("refiner switch at", "refiner_switch_at"), ("the refiner", "refiner_checkpoint"),
    ("distilled cfg", "distilled_cfg_scale"),
    ("width", "width"), ("height", "height"), ("steps", "steps"), ("CFG scale", "cfg_scale"), ("seed", "seed"),
    ("batch size", "batch_size"), ("batch count", "n_iter"), ("clip skip", "CLIP_stop_at_last_layers"),
    ("strength", "denoising_strength"), ("mask blur", "mask_blur"), ("padding", "inpaint_full_res_padding"),
    ("prompt", "prompt"), ("negative prompt", "negative_prompt"), ("sampler", "sampler_name"),
)


def _field_of(message: str) -> str | None:
    """The A1111 field an engine validation message is about (the engine speaks in words)."""
    lowered = message.casefold()
    for words, name in _FIELD_WORDS:
        if lowered.startswith(words.casefold()) or f"the {words.casefold()}" in lowered:
            return name
    return None


# --------------------------------------------------------------------------------------- responses


def png_base64(path: str) -> str:
    """The file's own bytes, so the `parameters` chunk arrives as written."""
    with open(path, "rb") as stream:
        return base64.b64encode(stream.read()).decode("ascii")


def info_json(request: GenerationRequest, seeds: Sequence[int], infotexts: Sequence[str], model_hash: str) -> str:
    """A1111's `info`: a JSON string (not an object) with these keys."""
    first = seeds[0] if seeds else request.seed
    varied = request.subseed_strength > 0 and request.subseed >= 0
    subseeds = [request.subseed_for(seed) for seed in seeds] if varied else []
    return json.dumps({
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(seeds),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(seeds),
        "seed": first,
        "all_seeds": list(seeds),
        # A1111's subseeds step with the seeds; without a variation strength it reports the seeds themselves.
        "subseed": subseeds[0] if subseeds else first,
        "all_subseeds": subseeds or list(seeds),
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": request.model,
        "sd_model_hash": model_hash,
        "sd_vae_name": f"{request.vae}.safetensors" if request.vae else None,
        "sd_vae_hash": None,
        "seed_resize_from_w": request.seed_resize_from_w or -1,
        "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": _denoising(request),
        # A1111 lists the hires fix's keys here (its infotext has them too: Marble's metadata writer).
        "extra_generation_params": {key: _as_number(value) if key in ("Hires upscale", "Hires steps") else value
                                    for key, value in hires_pairs(request) if key != "Denoising strength"},
        "index_of_first_image": 0,
        "infotexts": list(infotexts),
        "styles": [],
        "job_timestamp": "",
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": request.mask is not None,
        "version": "marble",
    })


def _as_number(value: object) -> object:
    """A1111 keeps the hires numbers as numbers in `extra_generation_params` (the infotext as text)."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _denoising(request: GenerationRequest) -> float | None:
    if request.init_image:
        return request.strength
    return request.hires_denoise if request.hires_active else None


def looks_like_path(name: str) -> bool:
    """A model or LoRA name that tries to be a path: refused before any lookup (it never reaches a file)."""
    lowered = name.casefold()
    return (
        "\x00" in name or "/" in name or "\\" in name or name.startswith("~") or ".." in name
        or "%2f" in lowered or "%5c" in lowered or "%00" in lowered or "%2e%2e" in lowered
        or (len(name) > 1 and name[1] == ":")
    )


def strip_title(name: str) -> str:
    """A1111 titles are "name [hash]"; clients send the title back."""
    if name.endswith("]") and " [" in name:
        return name[: name.rindex(" [")]
    return name
