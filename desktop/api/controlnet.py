"""sd-webui-controlnet's API on Marble's control units: `alwayson_scripts.controlnet.args` to ControlUnits,
and what the extension's own routes (`/controlnet/model_list`, `module_list`, `version`) answer.

Pure Python, no web framework. Clients (Krita's plugin, webuiapi's ControlNetUnit) send the extension's
unit dictionaries; each enabled one becomes a ControlUnit whose model is a library name (A1111's
"name [hash]" title accepted) and whose module is one of Marble's preprocessors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from desktop.api.convert import ApiError, ApiLimits, decode_image, find_name, looks_like_path, strip_title
from desktop.engine.library.control import BUILT_IN, is_built_in
from desktop.engine.request import MAX_CONTROL_UNITS, MAX_REFERENCE_IMAGES, ControlUnit

# The extension's module names (and Marble's own) to Marble's preprocessors. Only preprocessors this
# engine has: another one joins by one line here once it exists in control_preprocess.
MODULES: Mapping[str, str] = {
    "none": "none",
    "canny": "canny",
    "softedge_gradient": "softedge", "softedge": "softedge",
    "scribble_thr": "scribble", "scribble": "scribble", "invert": "scribble",
    "tile_resample": "tile", "tile": "tile",
    "inpaint_only": "inpaint", "inpaint": "inpaint",
    "blur_gaussian": "blur", "blur": "blur", "recolor_luminance": "gray", "gray": "gray",
    # Learned preprocessors: the network the user imported into the control library (annotators.py).
    "depth_anything": "depth", "depth_anything_v2": "depth", "depth_midas": "depth", "depth": "depth",
    "lineart_realistic": "lineart", "lineart": "lineart",
    "openpose": "openpose", "openpose_hand": "openpose_hand", "openpose_face": "openpose_face",
    "openpose_full": "openpose_full",
    # IP-Adapter units: the extension names the module by image encoder (or face model); Marble tells what an
    # adapter reads from the adapter file.
    "ip-adapter_clip_sd15": "ip-adapter", "ip-adapter_clip_sdxl": "ip-adapter",
    "ip-adapter_clip_sdxl_plus_vith": "ip-adapter", "ip-adapter_clip_h": "ip-adapter", "ip-adapter": "ip-adapter",
    "ip-adapter_face_id": "ip-adapter", "ip-adapter_face_id_plus": "ip-adapter",
}  # fmt: skip
# The version the extension reports; clients check it is at least 2 for the `args` dictionaries.
EXTENSION_VERSION = 2
# control_mode: the extension takes its labels or their index.
CONTROL_MODES: Mapping[object, str] = {
    "Balanced": "balanced", 0: "balanced",
    "My prompt is more important": "prompt", 1: "prompt",
    "ControlNet is more important": "control", 2: "control",
}  # fmt: skip
# resize_mode: Marble fits a control image by "Crop and Resize" (the extension's default, index 1). The
# other modes ("Just Resize", "Resize and Fill": webuiapi's default) only differ from it when the image's
# aspect ratio is not the output's, so they are taken for images of the output's shape.
_CROP_AND_RESIZE = ("Crop and Resize", "Inner Fit (Scale to Fit)", 1, None)
_RESIZE_MODES = (*_CROP_AND_RESIZE, "Just Resize", "Envelope (Outer Fit)", "Resize and Fill",
                 "Outer Fit (Shrink to Fit)", 0, 2)
# Unit keys that never change the picture, or that Marble reads below.
_KNOWN = frozenset({
    "enabled", "module", "model", "weight", "image", "input_image", "mask", "guidance_start", "guidance_end",
    "control_mode", "processor_res", "threshold_a", "threshold_b", "pixel_perfect", "resize_mode", "low_vram",
    "lowvram", "guessmode", "save_detected_map", "hr_option", "is_ui", "input_mode", "batch_images",
    "output_dir", "loopback", "advanced_weighting", "inpaint_crop_input_image", "batch_modifiers",
    "batch_image_dir", "batch_mask_dir", "animatediff_batch", "ipadapter_input", "effective_region_mask",
    "pulid_mode", "union_control_type", "image_fidelity", "mask_image",
})


def module_list() -> dict[str, Any]:
    """`/controlnet/module_list`: the modules Marble can run, with the extension's `module_detail` shape."""
    names = sorted(MODULES)
    detail = {name: {"model_free": name == "none", "sliders": []} for name in names}
    return {"module_list": names, "module_detail": detail}


def units_from(
    scripts: object,
    size: tuple[int, int],
    control_models: Sequence[str],
    save_image: Callable[[Image.Image], str],
    limits: ApiLimits,
    log: Callable[[str], None],
) -> tuple[ControlUnit, ...]:
    """The enabled ControlNet units of an `alwayson_scripts` object (any key spelled "controlnet")."""
    if not isinstance(scripts, dict):
        return ()
    units: list[ControlUnit] = []
    for key, script in scripts.items():
        if not isinstance(key, str) or key.casefold() != "controlnet":
            continue
        args = script.get("args", []) if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise ApiError(422, "alwayson_scripts.controlnet.args must be a list of units.", "alwayson_scripts")
        for index, arg in enumerate(args):
            if arg is False or arg == {} or (isinstance(arg, dict) and arg.get("enabled", True) is False):
                continue
            if not isinstance(arg, dict):
                raise ApiError(422, f"ControlNet unit {index} must be an object.", _where(index))
            units.append(_unit(arg, index, size, control_models, save_image, limits, log))
    if len(units) > MAX_CONTROL_UNITS:
        raise ApiError(422, f"Use at most {MAX_CONTROL_UNITS} ControlNet units.", "alwayson_scripts")
    return tuple(units)


def _where(index: int, key: str | None = None) -> str:
    return f"alwayson_scripts.controlnet.args.{index}" + (f".{key}" if key else "")


def _unit(
    arg: Mapping[str, Any],
    index: int,
    size: tuple[int, int],
    control_models: Sequence[str],
    save_image: Callable[[Image.Image], str],
    limits: ApiLimits,
    log: Callable[[str], None],
) -> ControlUnit:
    for key in arg:
        if key not in _KNOWN:
            log(f"API request: ControlNet unit {index}: ignored unknown field {key!r}")
    module = arg.get("module") or "none"
    if not isinstance(module, str) or module not in MODULES:
        raise ApiError(422, f"ControlNet unit {index}: Marble has no preprocessor module {module!r} "
                            f"(modules: {', '.join(sorted(MODULES))}).", _where(index, "module"))
    preprocessor = MODULES[module]
    model = _model(arg.get("model"), index, control_models)
    mode = CONTROL_MODES.get(arg.get("control_mode", 0))
    if mode is None:
        raise ApiError(422, f"ControlNet unit {index}: unknown control_mode {arg.get('control_mode')!r} "
                            "(use Balanced, My prompt is more important, ControlNet is more important or 0/1/2).",
                       _where(index, "control_mode"))
    resize_mode = arg.get("resize_mode", 1)
    if resize_mode not in _RESIZE_MODES:
        raise ApiError(422, f"ControlNet unit {index}: unknown resize_mode {resize_mode!r}.",
                       _where(index, "resize_mode"))
    if preprocessor != "none" and not arg.get("pixel_perfect", False) and arg.get("processor_res") not in (None, -1):
        # The extension runs the module at processor_res then resizes; Marble runs it at the working size.
        log(f"API request: ControlNet unit {index}: processor_res ignored; Marble preprocesses at the image's "
            "working size (as pixel_perfect does)")
    images = _images(arg, index, preprocessor, save_image, limits, size, resize_mode in _CROP_AND_RESIZE)
    return ControlUnit(
        model=model, image=images[0], more_images=images[1:],
        weight=_number(arg, "weight", 1.0, index), start=_number(arg, "guidance_start", 0.0, index),
        end=_number(arg, "guidance_end", 1.0, index), mode=mode, preprocessor=preprocessor,
        threshold_a=_number(arg, "threshold_a", -1.0, index), threshold_b=_number(arg, "threshold_b", -1.0, index),
    )  # fmt: skip


def _model(value: object, index: int, control_models: Sequence[str]) -> str:
    where = _where(index, "model")
    if not isinstance(value, str) or not value.strip() or value == "None":
        raise ApiError(422, f"ControlNet unit {index} needs a control model (see /controlnet/model_list).", where)
    if looks_like_path(value):
        raise ApiError(422, f"ControlNet unit {index}: model must be a library name, not a path: {value!r}.", where)
    if is_built_in(strip_title(value)):  # a Flux.1 Canny / Depth dev model's own input
        return BUILT_IN
    found = find_name(control_models, strip_title(value))
    if found is None:
        raise ApiError(422, f"ControlNet unit {index}: no control model named {value!r} in the library "
                            f"(control models: {', '.join(control_models) or 'none'}).", where)
    return found


def _images(arg: Mapping[str, Any], index: int, preprocessor: str, save_image: Callable[[Image.Image], str],
            limits: ApiLimits, size: tuple[int, int], cropped: bool) -> tuple[str, ...]:
    """The unit's images saved by the server (one, or an IP-Adapter's several); the inpaint module reads the
    job's own source and mask. The extension's forms: a base64 string, {"image": b64, "mask": b64},
    [image, mask], or a list of {"image": ..., "mask": ...} (several inputs, for IP-Adapter modules)."""
    data = arg.get("image") if arg.get("image") not in (None, "") else arg.get("input_image")
    if isinstance(data, (list, tuple)) and data and all(isinstance(item, dict) for item in data):
        if len(data) > 1 and preprocessor != "ip-adapter":
            raise ApiError(422, f"ControlNet unit {index}: only IP-Adapter modules take several images.",
                           _where(index, "image"))
        if len(data) > MAX_REFERENCE_IMAGES:
            raise ApiError(422, f"ControlNet unit {index}: use at most {MAX_REFERENCE_IMAGES} images.",
                           _where(index, "image"))
        return tuple(_image(item.get("image"), arg, index, preprocessor, save_image, limits, size, cropped)
                     for item in data)  # fmt: skip
    if isinstance(data, (list, tuple)) and len(data) == 2:  # the extension's [image, mask] pair
        data = data[0]
    return (_image(data, arg, index, preprocessor, save_image, limits, size, cropped),)


def _image(data: object, arg: Mapping[str, Any], index: int, preprocessor: str,
           save_image: Callable[[Image.Image], str], limits: ApiLimits, size: tuple[int, int], cropped: bool) -> str:
    if isinstance(data, dict):  # the extension's {"image": b64, "mask": b64} form
        data = data.get("image")
    if data in (None, ""):
        if preprocessor == "inpaint":
            return ""  # filled with the job's source by the caller
        raise ApiError(422, f"ControlNet unit {index} needs an image (base64).", _where(index, "image"))
    image = decode_image(data, _where(index, "image"), limits).convert("RGB")
    if not cropped and abs(image.width * size[1] - image.height * size[0]) > 0.01 * image.height * size[1]:
        raise ApiError(422, f"ControlNet unit {index}: Marble fits control images by 'Crop and Resize' "
                            f"(resize_mode 1); {arg.get('resize_mode')!r} differs from it for a "
                            f"{image.width}x{image.height} image and a {size[0]}x{size[1]} output.",
                       _where(index, "resize_mode"))
    return save_image(image)


def _number(arg: Mapping[str, Any], key: str, default: float, index: int) -> float:
    value = arg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(422, f"ControlNet unit {index}: {key} must be a number, not {value!r}.", _where(index, key))
    return float(value)
