"""ControlNet and T2I-Adapter units for the diffusers backend.

Loaded only by the diffusers backend during a job; torch, diffusers and accelerate are imported inside
functions (the import-linter contract lists this module beside sde_noise and tiling).

How a request's units run:
- ControlNets: diffusers' StableDiffusion(XL)ControlNet{,Img2Img,Inpaint}Pipeline made from the loaded
  pipeline with `from_pipe` (shared weights, the loaded dtype kept), several units through
  MultiControlNetModel. Weight = controlnet_conditioning_scale, start/end = control_guidance_start/end
  (fractions of the steps the job runs; diffusers' rule: step i runs the unit unless i/n < start or
  (i+1)/n > end).
- A ControlNet's architecture is the base UNet's encoder, so the model is built from the loaded UNet's
  config (`ControlNetModel.from_unet`, on the meta device) and its tensors loaded strictly: no shipped
  config is needed, for SD 1.x, 2.x or SDXL, and a ControlNet for another family is refused by the
  shape check with a sentence. ControlNets with a smaller encoder than their base (SDXL "small"/"mid")
  do not fit this way and are refused (not supported yet).
- T2I-Adapters: the adapter's features are computed once from the control image (scaled by the weight,
  repeated for the batch and for classifier-free guidance, as diffusers' adapter pipelines do) and given
  to the UNet as `down_intrablock_additional_residuals` by a forward pre-hook, at the steps the
  start/end range allows. The same pipeline as without control runs, so adapters work for text to
  image, image to image and inpainting alike (diffusers' adapter pipelines are text to image only), and
  in the hires fix's second pass (the same UNet: the features made again at its size).
- Control modes (A1111's "Control Mode"): "balanced" is plain ControlNet. "control" ("ControlNet is
  more important") is diffusers' `guess_mode`: the ControlNet sees only the conditional half of the
  CFG batch and its residuals are scaled from 0.1 (shallowest) to 1.0 (mid block); diffusers applies it
  to the whole call, so Marble asks that all units of a job agree. "prompt" ("My prompt is more
  important") is A1111's soft injection: residual k of n (mid block last) is scaled by 0.825**(n-1-k),
  by a forward hook on that unit's ControlNet. T2I-Adapters run balanced only.
- Control-LoRAs (Stability's "control-lora": LoRA pairs over the base UNet's encoder plus the ControlNet's
  own tensors) become a plain ControlNetModel on the loaded UNet (backends/control_lora.py) and run like one.
- Flux.1, Qwen-Image, Z-Image and SD3 ControlNets (`prepare_dit`): shaped and run by backends/control_dit.py, on the
  loaded DiT's modules; balanced only. Each family's ControlNets are refused for any other family, by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from desktop.engine.backends import control_dit
from desktop.engine.backends.annotators import Annotators
from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.control_lora import build_control_lora
from desktop.engine.backends.flow_edit import tail_steps
from desktop.engine.control_preprocess import LEARNED, Thresholds, preprocess
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.imaging import EditPlan, load_source, to_working
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.control import (
    ANNOTATOR,
    BUILT_IN,
    CONTROL_LORA,
    CONTROLNET,
    DIT_CONTROLNET_FAMILIES,
    FLUX,
    IMAGE_ENCODER,
    IP_ADAPTER,
    QWEN_IMAGE,
    SANA,
    SD3,
    T2I_ADAPTER,
    Z_IMAGE,
    ControlInfo,
    family_label,
    inspect_control,
)
from desktop.engine.library.lora import AdapterCatalog
from desktop.engine.request import IP_ADAPTER_PREPROCESSOR, ControlUnit, GenerationRequest
from desktop.engine.terminal_text import library_error

SOFT_INJECTION_BASE = 0.825  # A1111's "My prompt is more important": 0.825 ** (12 - i) over SD's 13 residuals


def legacy_hash(path: Path) -> str:
    """A1111's old model hash (sha256 of 64 KiB at 1 MiB, first 8 hex): the `[hash]` after a ControlNet
    model's name in the extension's metadata."""
    with open(path, "rb") as stream:
        stream.seek(0x100000)
        return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


@dataclass
class ControlRun:
    """What one pipeline call needs for its control units: the pipeline, its extra arguments, and the
    hooks to remove afterwards (`close`)."""

    pipe: Any
    arguments: dict[str, Any]
    hashes: tuple[ControlHash, ...]
    handles: list[Any] = field(default_factory=list)
    # Called with the number of finished steps (IP-Adapter ranges set their scales there).
    steppers: list[Callable[[int], None]] = field(default_factory=list)
    # The hires fix's second pass: each, given that pass's pipeline (from_pipe'd, the same UNet) and size, readies
    # it and returns its extra arguments (IP-Adapter units: their encoder and reference images; T2I-Adapter units:
    # their features made again at that size, nothing to pass).
    second_passes: list[Callable[[Any, tuple[int, int]], dict[str, Any]]] = field(default_factory=list)
    # The hires fix's second pass for ControlNet units (A1111 runs them in both passes): given that pass's
    # size, the image-to-image ControlNet pipeline and its control arguments, the control images made again
    # at that size. None: no ControlNet units.
    hires: Callable[[tuple[int, int]], tuple[Any, dict[str, Any]]] | None = None
    # The pipeline draws from torch's global generator (SD3's encodes the control picture with a sample of
    # the VAE's distribution, no generator): the call runs with it seeded by the job's seed, then restored.
    global_draws: bool = False

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


# The metadata's model of a unit naming a model's own control input: no file, so no hash.
_BUILT_IN_HASH = ControlHash(BUILT_IN, "")


@dataclass(frozen=True)
class _Identity:
    path: str
    size: int
    mtime_ns: int


class ControlModels:
    """Control models by library name, loaded once per pipeline and kept until it is unloaded."""

    def __init__(self, catalog: AdapterCatalog, own_weights: Callable[[], Mapping[int, Any]] | None = None) -> None:
        self._catalog = catalog
        # A Control-LoRA is built on the model's own weights, not on a LyCORIS file merged into them for a job
        # (the ControlNet is kept across jobs): the LoRA merger says what it changed.
        self._own_weights = own_weights or dict
        self._loaded: dict[_Identity, tuple[Any, ControlInfo, str]] = {}
        # Learned preprocessors' networks live in the same library folder.
        self.annotators = Annotators(catalog)

    def forget(self) -> None:
        self._loaded.clear()
        self.annotators.forget()

    def prepare(self, base: Any, pipe: Any, request: GenerationRequest, plan: EditPlan | None) -> ControlRun | None:
        """The pipeline and arguments for `request.controls` (None when it has none).

        `base` is the loaded text-to-image pipeline (ControlNet pipelines are made from it), `pipe` the
        one the job would run without control (adapters hook its UNet)."""
        # IP-Adapter units (desktop/engine/backends/ip_adapter.py) join the run afterwards.
        units = tuple(unit for unit in request.controls if unit.preprocessor != IP_ADAPTER_PREPROCESSOR)
        if not units:
            return None

        def read(name: str, path: Path) -> tuple[Any, ControlInfo]:
            return _read(name, path, base, self._own_weights())

        loaded = [self._load(unit, read) for unit in units]
        # A Control-LoRA is a ControlNet once loaded: the two mix freely.
        kinds = {T2I_ADAPTER if info.kind == T2I_ADAPTER else CONTROLNET for _, info, _ in loaded}
        if len(kinds) > 1:
            raise InvalidRequest("A job can use ControlNets or T2I-Adapters, not both at once: remove one kind.")
        hashes = tuple(ControlHash(*names) for _, _, names in loaded)
        # A unit at weight 0 or with an empty range changes nothing (diffusers refuses start == end): the
        # metadata still lists it, as A1111 does, but it does not run.
        active = [
            (unit, item) for unit, item in zip(units, loaded, strict=True) if unit.weight > 0 and unit.end > unit.start
        ]
        if not active:
            return ControlRun(pipe, {}, hashes)
        units = tuple(unit for unit, _ in active)
        loaded = [item for _, item in active]
        size = plan.size if plan is not None else (request.width, request.height)
        images = [_control_image(unit, plan, size, self.annotators) for unit in units]
        models = [m for m, _, _ in loaded]
        if kinds == {T2I_ADAPTER}:
            again = None
            if plan is None:  # text to image: the hires fix's second pass reads the pictures again at its size

                def again(second: tuple[int, int]) -> list[Any]:
                    return [_control_image(unit, None, second, self.annotators) for unit in units]

            return _adapter_run(pipe, units, models, images, request, hashes, again)
        run = _controlnet_run(base, request.mode, plan is not None, units, models, images, hashes)
        if plan is None:  # text-to-image (an inpainting UNet never runs it): the hires fix's second pass too

            def hires(second: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
                again = [_control_image(unit, None, second, self.annotators) for unit in units]
                # The models' soft-injection hooks, if any, are the first run's: not added twice.
                other = _controlnet_run(base, "img2img", True, units, models, again, hashes, hooks=False)
                return other.pipe, other.arguments

            run.hires = hires
        return run

    def prepare_dit(
        self, family: str, base: Any, request: GenerationRequest, plan: EditPlan | None, size: tuple[int, int],
        label: str, device: str, dtype: Any,
    ) -> ControlRun:
        """ControlNet units for the loaded DiT pipeline `base` of `family` ("flux", "qwen-image"), for a job at
        `size` (an edit's `plan` when it is one): the family's ControlNet pipeline for the job's mode on its
        modules and the call's arguments (backends/control_dit.py). The models sit on the compute `device`
        whole, whatever the memory mode: the offload hooks are the base's."""
        units = request.controls
        if any(unit.preprocessor == IP_ADAPTER_PREPROCESSOR for unit in units):
            raise InvalidRequest(f"IP-Adapter units work with Stable Diffusion 1.x and SDXL models; {label} has none.")
        if any(unit.mode != "balanced" for unit in units):
            raise InvalidRequest(
                "A control mode other than Balanced (A1111's prompt / ControlNet importance) works with Stable "
                f"Diffusion ControlNets only: set the {label} units to Balanced."
            )
        control_dit.refuse_several(family, len(units), label)
        config = base.transformer.config

        def read(name: str, path: Path) -> tuple[Any, ControlInfo]:
            return _read_dit(family, name, path, config, label, device, dtype)

        loaded = [self._load(unit, read) for unit in units]
        hashes = tuple(ControlHash(*names) for _, _, names in loaded)
        active = [(unit, model, names[0]) for unit, (model, _, names) in zip(units, loaded, strict=True)
                  if unit.weight > 0 and unit.end > unit.start]  # fmt: skip
        if not active:
            return ControlRun(base, {}, hashes)
        units = tuple(unit for unit, _, _ in active)
        models = [model for _, model, _ in active]
        modes = control_dit.union_modes(family, units, models, [name for _, _, name in active])
        pipe = control_dit.pipeline(family, request.mode, base, models, request.strength)
        inpainting = control_dit.is_inpainting(family, models[0])
        if inpainting:
            # An inpainting ControlNet (Qwen-Image's, SD3's) reads the job's own source and mask (A1111's inpaint
            # module), not the unit's picture; its pipeline masks the source and encodes it itself.
            assert plan is not None and plan.mask is not None  # pipeline() runs it in inpainting jobs only
            images = [_as_tensor(preprocess("none", plan.image))]
        else:
            images = [_control_image(unit, plan, size, self.annotators) for unit in units]
        values = control_dit.arguments(family, units, images, modes)
        if inpainting:
            values["control_mask"] = plan.mask
        # SD3's and Qwen-Image's inpainting pipelines encode a picture with a sample of the VAE's distribution
        # drawn from torch's global generator.
        run = ControlRun(pipe, values, hashes, global_draws=family == SD3 or inpainting)
        scales = None
        if family in (Z_IMAGE, SANA):  # their pipelines take no step range: counted over the steps this pass runs
            first = tail_steps(request.steps, request.strength) if plan is not None else request.steps
            scales = control_dit.StepScales(models[0], units[0], first)
            run.handles.append(scales)
        if family == Z_IMAGE:  # lent the transformer's modules for this job only (close() takes them back)
            run.handles.extend(control_dit.z_image_hooks(models[0], base.transformer))
        if plan is None:

            def hires(second: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
                # The family's image-to-image ControlNet pipeline: the units act in the hires pass too, as in A1111.
                again = [_control_image(unit, None, second, self.annotators) for unit in units]
                pipe = control_dit.pipeline(family, "img2img", base, models)
                if scales is not None:
                    scales.arm(tail_steps(request.hires_steps or request.steps, request.hires_denoise))
                return pipe, control_dit.arguments(family, units, again, modes)

            run.hires = hires
        return run

    def prepare_built_in(
        self, pipe: Any, unit: ControlUnit, plan: EditPlan | None, size: tuple[int, int],
        hires_pipe: Callable[[], Any], hashed: ControlHash = _BUILT_IN_HASH,
    ) -> ControlRun:
        """The unit naming a Flux.1 Canny / Depth dev model's own input (BUILT_IN), or a Flux.1 Control-LoRA
        loaded for the job (`hashed` names it): its picture, preprocessed at the job's `size`, as the control
        image `pipe` (FluxControlPipeline or its image-to-image / inpainting sibling) reads beside the noise.
        Text-to-image: the hires fix's second pass (`hires_pipe`, the image-to-image sibling) reads it again at
        that pass's size."""
        # These pipelines take a tensor as the VAE reads it, in [-1, 1] (a picture they would normalise).
        image = _control_image(unit, plan, size, self.annotators) * 2.0 - 1.0
        run = ControlRun(pipe, {"control_image": image}, (hashed,))
        if plan is None:

            def hires(second: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
                again = _control_image(unit, None, second, self.annotators) * 2.0 - 1.0
                return hires_pipe(), {"control_image": again}

            run.hires = hires
        return run

    def _load(
        self, unit: ControlUnit, read: Callable[[str, Path], tuple[Any, ControlInfo]]
    ) -> tuple[Any, ControlInfo, tuple[str, str]]:
        name = unit.model.strip()
        if self._catalog.find(name) is None and (self._catalog.folder / f"{name}.onnx").is_file():
            # insightface's face detector or recognizer, imported for FaceID, named where a ControlNet belongs.
            raise InvalidRequest(
                f"{name!r} is a face model for FaceID IP-Adapters, not a control model: a FaceID unit (its adapter "
                "with the ip-adapter preprocessor) finds the library's face models by itself. Pick a ControlNet or "
                "T2I-Adapter for this unit."
            )
        entry = self._catalog.get(name)
        stat = entry.path.stat()
        identity = _Identity(str(entry.path.resolve()), stat.st_size, stat.st_mtime_ns)
        cached = self._loaded.get(identity)
        if cached is None:
            model, info = read(entry.name, entry.path)
            cached = (model, info, legacy_hash(entry.path))
            self._loaded[identity] = cached
        return cached[0], cached[1], (entry.name, cached[2])


# ---------------------------------------------------------------------------------------- loading


# What to pick for each DiT family with ControlNets (control_dit.py).
_DIT_CONTROLNETS = {
    FLUX: "Flux.1 ControlNets (InstantX's, Shakker-Labs' Union, XLabs')",
    QWEN_IMAGE: "Qwen-Image ControlNets (InstantX's)",
    Z_IMAGE: "Z-Image ControlNets (alibaba-pai's Fun ControlNet Union)",
    SD3: "SD3 ControlNets (InstantX's for SD3 Medium, Stability's for SD3.5 Large)",
    SANA: "Sana ControlNets (NVIDIA's: the diffusers releases, or NVlabs' .pth converted on import)",
}  # fmt: skip


def _read(name: str, path: Path, base: Any, originals: Mapping[int, Any]) -> tuple[Any, ControlInfo]:
    if sniff_file_type(path) != "safetensors":
        raise ModelError(f"The control model {name!r} is not a safetensors file; import it again.")
    info = inspect_control(read_safetensors_header(path, name=name), name)
    if info.kind == IP_ADAPTER:
        raise InvalidRequest(
            f"{name!r} is an IP-Adapter: give its unit the ip-adapter preprocessor (--ip-adapter NAME:IMAGE)."
        )
    if info.kind == IMAGE_ENCODER:
        raise InvalidRequest(
            f"{name!r} is an image encoder, which IP-Adapter units pick by themselves; choose a control model."
        )
    if info.kind == ANNOTATOR:
        raise ModelError(
            f"{name!r} is a {info.label}, not a control model: pick a ControlNet or T2I-Adapter as the "
            f"unit's model and the {info.layout} preprocessor, which finds this network by itself."
        )
    if info.family in DIT_CONTROLNET_FAMILIES:
        raise ModelError(f"{name!r} is a {info.label}: it works with {family_label(info.family)} models, not this one.")
    from safetensors.torch import load_file

    state = load_file(str(path))  # the header was checked above: a truncated or damaged file stopped there
    unet = getattr(base.unet, "_orig_mod", base.unet)  # fast mode compiles the UNet in place
    try:
        if info.kind == CONTROL_LORA:
            model = build_control_lora(state, info, unet, name, originals)
        else:
            model = _controlnet(state, info, unet) if info.kind == CONTROLNET else _adapter(state, info, unet)
    except (RuntimeError, KeyError, ValueError) as error:
        raise ModelError(
            f"The control model {name!r} ({info.label}) does not fit the loaded model: {library_error(error)}. Pick a "
            "control model made for this kind of model."
        ) from None
    if model.dtype != base.dtype:
        model = model.to(dtype=base.dtype)
    return model.to(base.device).eval(), info


def _read_dit(
    family: str, name: str, path: Path, transformer_config: Any, label: str, device: str, dtype: Any
) -> tuple[Any, ControlInfo]:
    if sniff_file_type(path) != "safetensors":
        raise ModelError(f"The control model {name!r} is not a safetensors file; import it again.")
    info = inspect_control(read_safetensors_header(path, name=name), name)
    if info.kind != CONTROLNET or info.family != family:
        made_for = family_label(info.family) if info.family in DIT_CONTROLNET_FAMILIES else "Stable Diffusion"
        raise InvalidRequest(
            f"{name!r} is a {info.label or 'control model'} for {made_for}: {label} takes "
            f"{_DIT_CONTROLNETS[family]}."
        )
    from safetensors.torch import load_file

    state = load_file(str(path))
    try:
        model = control_dit.build(family, state, transformer_config)
    except (RuntimeError, KeyError, ValueError, ModelError) as error:
        raise ModelError(
            f"The control model {name!r} ({info.label}) does not fit {label}: {library_error(error)}. Pick one of the "
            f"{_DIT_CONTROLNETS[family]} made for this model."
        ) from None
    return model.to(device=device, dtype=dtype).eval(), info


def _controlnet(state: dict[str, Any], info: ControlInfo, unet: Any) -> Any:
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if info.layout == "ldm":
        state = {k.removeprefix(info.prefix): v for k, v in state.items()}
        converted = convert_controlnet_checkpoint(state, {"layers_per_block": unet.config.layers_per_block})
        # diffusers' converter leaves SDXL's added (size/crop) embedding to its single-file loader.
        for ldm, ours in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
            for param in ("weight", "bias"):
                if f"{ldm}.{param}" in state:
                    converted[f"{ours}.{param}"] = state[f"{ldm}.{param}"]
        state = {k: v for k, v in converted.items() if v is not None}
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    outs = (
        state["controlnet_cond_embedding.conv_in.weight"].shape[0],
        *(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in blocks[1::2]),
    )
    with init_empty_weights():
        shaped = ControlNetModel.from_unet(
            unet,
            load_weights_from_unet=False,
            conditioning_channels=info.conditioning_channels or 3,
            conditioning_embedding_out_channels=outs,
        )
        # An inpainting UNet reads 9 channels; its ControlNets read the 4 latent channels only.
        config = {**shaped.config, "in_channels": state["conv_in.weight"].shape[1]}
        model = ControlNetModel.from_config(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _adapter(state: dict[str, Any], info: ControlInfo, unet: Any) -> Any:
    from accelerate import init_empty_weights
    from diffusers import T2IAdapter

    if info.layout != "diffusers":
        raise ValueError("only T2I-Adapters in diffusers' layout (adapter.body...) can be loaded yet")
    if any(".out_conv." in k for k in state):
        raise ValueError("light T2I-Adapters are not supported yet")
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("adapter.body.")})
    channels = [state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0] for i in levels]
    res_blocks = len({k.split(".")[4] for k in state if k.startswith("adapter.body.0.resnets.")})
    conditioning = info.conditioning_channels or 3
    factor = round((state["adapter.conv_in.weight"].shape[1] / conditioning) ** 0.5)
    with init_empty_weights():
        model = T2IAdapter(
            in_channels=conditioning,
            channels=channels,
            num_res_blocks=res_blocks,
            downscale_factor=factor,
            adapter_type="full_adapter_xl" if info.family == "sdxl" else "full_adapter",
        )
    model.load_state_dict(state, strict=True, assign=True)
    del unet  # the adapter's shape is its own; the UNet checks it when the features arrive
    return model


# ---------------------------------------------------------------------------------------- images


def _control_image(unit: ControlUnit, plan: EditPlan | None, size: tuple[int, int], annotators: Annotators) -> Any:
    """The unit's control image at the working size, preprocessed, as a (1, 3, H, W) float tensor."""
    thresholds = Thresholds(unit.threshold_a, unit.threshold_b)
    if unit.preprocessor == "inpaint":
        assert plan is not None and plan.mask is not None  # validate() asks for a mask
        array = preprocess("inpaint", plan.image, plan.mask, thresholds)
    else:
        image = load_source(unit.image)
        if plan is None:
            fitted = crop_and_resize(image, size)
        else:
            # The control image stands for the whole source: fit it there, then take what the job works on.
            fitted = crop_and_resize(image, plan.source.size)
            fitted = (
                fitted.crop(plan.box).resize(size, Image.Resampling.LANCZOS)
                if plan.cropped
                else to_working(fitted, size, plan.resize_mode)
            )
        if unit.preprocessor in LEARNED:
            array = annotators.apply(unit.preprocessor, fitted)
        else:
            array = preprocess(unit.preprocessor, fitted, None, thresholds)
    return _as_tensor(array)


def _as_tensor(array: np.ndarray) -> Any:
    """A preprocessor's (H, W, 3) float array as a (1, 3, H, W) tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def crop_and_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A1111's "Crop and Resize": scale to cover `size`, then cut the centre."""
    if image.size == size:
        return image
    width, height = size
    scale = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


# ------------------------------------------------------------------------------------- controlnets


def _controlnet_run(
    base: Any,
    mode: str,
    edit: bool,
    units: tuple[ControlUnit, ...],
    models: list[Any],
    images: list[Any],
    hashes: tuple[ControlHash, ...],
    hooks: bool = True,
) -> ControlRun:
    """The ControlNet pipeline for a job of `mode` on `base`'s modules and its control arguments. `edit`: the
    pipeline's `image` is the source (the control images go as `control_image`). `hooks`: register the
    "prompt is more important" units' soft injection (once per job: the hires pass reuses them)."""
    from diffusers import MultiControlNetModel

    modes = {unit.mode for unit in units}
    if "control" in modes and modes != {"control"}:
        raise InvalidRequest(
            'Control mode "ControlNet is more important" applies to every unit of a job in Marble (diffusers\' '
            "guess mode): give all units that mode, or none of them."
        )
    soft = [unit.mode == "prompt" for unit in units]
    if len({id(m) for m in models}) < len(models) and len({s for s, m in zip(soft, models, strict=True)}) > 1:
        raise InvalidRequest("Two units using the same control model need the same control mode.")
    controlnet = models[0] if len(models) == 1 else MultiControlNetModel(models)
    if mode == "img2img" and base.unet.config.in_channels == 9:
        mode = "inpaint"  # an inpainting model edits through its inpainting pipeline (everything masked)
    cls = _controlnet_pipeline(mode, getattr(base, "text_encoder_2", None) is not None)
    # Without the dtype, from_pipe would upcast the shared modules to fp32.
    pipe = cls.from_pipe(base, controlnet=controlnet, dtype=base.dtype)
    pipe.set_progress_bar_config(disable=True)
    control = images[0] if len(images) == 1 else images
    arguments: dict[str, Any] = {
        "controlnet_conditioning_scale": [float(u.weight) for u in units] if len(units) > 1 else float(units[0].weight),
        "control_guidance_start": [float(u.start) for u in units],
        "control_guidance_end": [float(u.end) for u in units],
        "guess_mode": modes == {"control"},
    }
    arguments["control_image" if edit else "image"] = control
    run = ControlRun(pipe, arguments, hashes)
    for model, is_soft in zip(models, soft, strict=True):
        if is_soft and hooks:
            run.handles.append(model.register_forward_hook(_soft_injection))
    return run


def _controlnet_pipeline(mode: str, xl: bool) -> Any:
    import diffusers

    names = {
        ("txt2img", False): "StableDiffusionControlNetPipeline",
        ("img2img", False): "StableDiffusionControlNetImg2ImgPipeline",
        ("inpaint", False): "StableDiffusionControlNetInpaintPipeline",
        ("txt2img", True): "StableDiffusionXLControlNetPipeline",
        ("img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
        ("inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
    }
    return getattr(diffusers, names[(mode, xl)])


def _soft_injection(_module: Any, _args: Any, output: Any) -> Any:
    down, mid = output if isinstance(output, tuple) else (output.down_block_res_samples, output.mid_block_res_sample)
    count = len(down) + 1
    scaled = [sample * SOFT_INJECTION_BASE ** (count - 1 - k) for k, sample in enumerate(down)]
    if isinstance(output, tuple):
        return (scaled, mid)
    output.down_block_res_samples = scaled
    return output


# ---------------------------------------------------------------------------------------- adapters


def _adapter_run(
    pipe: Any,
    units: tuple[ControlUnit, ...],
    models: list[Any],
    images: list[Any],
    request: GenerationRequest,
    hashes: tuple[ControlHash, ...],
    again: Callable[[tuple[int, int]], list[Any]] | None = None,
) -> ControlRun:
    """T2I-Adapter units as a hook on the UNet of `pipe`: their features, scaled by their weights, added at the steps
    of their ranges. `again`: the units' pictures at another size, for the hires fix's second pass (the same UNet),
    where the features are made again and the ranges count that pass's steps, as A1111 runs them in both passes."""
    if any(unit.mode != "balanced" for unit in units):
        raise InvalidRequest("T2I-Adapters run in the balanced control mode only.")
    features = _adapter_features(models, images)
    running = [pipe]  # the pipeline calling the UNet: its step count is the range's whole
    counter = _StepCounter()

    def add_features(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        total = getattr(running[0], "_num_timesteps", None) or request.steps
        step = counter.step
        summed = None
        for unit, states in zip(units, features, strict=True):
            if step / total < unit.start or (step + 1) / total > unit.end or unit.weight == 0:
                continue
            scaled = [state * float(unit.weight) for state in states]
            summed = scaled if summed is None else [a + b for a, b in zip(summed, scaled, strict=True)]
        if summed is not None:
            sample = args[0] if args else kwargs["sample"]
            # One copy per image of the batch and per half of the CFG batch, as diffusers repeats them.
            kwargs = {
                **kwargs,
                "down_intrablock_additional_residuals": [
                    s.to(sample.dtype).repeat(sample.shape[0] // s.shape[0], 1, 1, 1) for s in summed
                ],
            }
        return args, kwargs

    run = ControlRun(pipe, {}, hashes)
    run.handles.append(pipe.unet.register_forward_pre_hook(add_features, with_kwargs=True))
    run.step_counter = counter  # type: ignore[attr-defined]
    if again is not None:

        def second_pass(other: Any, size: tuple[int, int]) -> dict[str, Any]:
            features[:] = _adapter_features(models, again(size))
            running[0] = other
            counter.step = 0
            return {}

        run.second_passes.append(second_pass)
    return run


def _adapter_features(models: list[Any], images: list[Any]) -> list[Any]:
    """Each T2I-Adapter's features of its control picture."""
    import torch

    with torch.inference_mode():
        return [model(image.to(model.device, model.dtype)) for model, image in zip(models, images, strict=True)]


class _StepCounter:
    """The step the pipeline is at, advanced by the backend's step callback (UNet calls per step vary
    by sampler: Heun and DPM2 call it twice)."""

    def __init__(self) -> None:
        self.step = 0


def advance(run: ControlRun | None, step: int) -> None:
    """Called from the step callback with the number of finished steps."""
    counter: _StepCounter | None = getattr(run, "step_counter", None)
    if counter is not None:
        counter.step = step
    for stepper in run.steppers if run is not None else ():
        stepper(step)


