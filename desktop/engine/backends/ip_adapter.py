"""IP-Adapter units for the diffusers backend: an image prompt from reference images.

An IP-Adapter is a control unit (as in A1111's ControlNet extension) whose preprocessor is "ip-adapter",
whose model is an IP-Adapter file from the control library and whose image is the reference image. It
goes through diffusers' own machinery: the files' state dicts are given to `pipe.load_ip_adapter` (one
adapter per unit), the unit weights to `set_ip_adapter_scale`, the images as `ip_adapter_image`.

The CLIP image encoder is not downloaded: it is picked from the control library by shape (a plain adapter
reads the encoder's projected embedding, plus/full ones its hidden states; the width must match). All
units of a job share one encoder, as diffusers runs one. Files without a config are built from their
tensors' shapes; every released IP-Adapter encoder (ViT-H/14, ViT-bigG/14) has 16 attention heads.

Several reference images in one unit (A1111's multi-input IP-Adapter): each image is encoded and projected
on its own, as diffusers does with a list of images per adapter, and the projected embeddings are then
averaged, as A1111's ControlNet extension does (`ImageEmbed.average_of`; diffusers alone would concatenate
their tokens). The average is a forward hook on the UNet's image projection; one image averages to itself.

FaceID and FaceID Plus adapters read the reference face's identity embedding (and Plus its aligned crop
through the encoder) from a face analyser the backend's factory makes (desktop/engine/backends/faceid.py);
a job with such a unit hands every unit to diffusers as embeddings. Their embedded LoRA (`N.to_q_lora.*`,
which diffusers would load as a PEFT adapter that outlives the job) is left out: as in A1111, users apply
h94's companion LoRA file from the LoRA library.

Start/end: the scale of a unit is 0 outside its range, set between steps by the step callback with
diffusers' ControlNet rule (step i runs unless i/n < start or (i+1)/n > end). After the job the adapters
are unloaded and the UNet's previous attention processors restored, so the next job is clean.

Loaded only by the diffusers backend during a job; torch, diffusers and transformers are imported inside
functions (the import-linter contract lists this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.control import ControlRun, legacy_hash
from desktop.engine.backends.faceid import (
    FaceAnalyser,
    clip_unit_embeds,
    face_unit_embeds,
    library_face_analyser,
    set_face_crops,
)
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.imaging import load_source
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.ip_adapter import (
    FACEID,
    FACEID_PLUS,
    NO_ENCODER,
    ImageEncoderInfo,
    IpAdapterInfo,
    faceid_v2,
    inspect_image_encoder,
    inspect_ip_adapter,
    is_image_encoder,
)
from desktop.engine.library.lora import AdapterCatalog
from desktop.engine.library.redux import is_redux
from desktop.engine.request import IP_ADAPTER_PREPROCESSOR, ControlUnit, GenerationRequest
from desktop.engine.terminal_text import library_error

# The module names A1111's ControlNet extension writes for an IP-Adapter unit, by the encoder it ran.
A1111_MODULE_SD15 = "ip-adapter_clip_sd15"  # OpenCLIP ViT-H/14
A1111_MODULE_SDXL = "ip-adapter_clip_sdxl"  # OpenCLIP ViT-bigG/14
A1111_MODULE_SDXL_VIT_H = "ip-adapter_clip_sdxl_plus_vith"  # an SDXL adapter trained on ViT-H/14
# FaceID units, by variant; the extension writes the Plus module for v1 and v2 alike (the model name tells).
A1111_FACE_MODULES = {FACEID: "ip-adapter_face_id", FACEID_PLUS: "ip-adapter_face_id_plus"}
_BIG_G_WIDTH = 1664


def is_ip_unit(unit: ControlUnit) -> bool:
    return unit.preprocessor == IP_ADAPTER_PREPROCESSOR


@dataclass(frozen=True)
class _Adapter:
    name: str
    path: Path
    info: IpAdapterInfo
    hash: str


class _Unload:
    """A ControlRun handle: removing it unloads the adapters and puts back what the pipeline had."""

    def __init__(self, pipe: Any, processors: dict[str, Any], feature_extractor: Any, image_encoder: Any) -> None:
        self._pipe, self._processors = pipe, processors
        self._feature_extractor, self._image_encoder = feature_extractor, image_encoder

    def remove(self) -> None:
        pipe = self._pipe
        pipe.unload_ip_adapter()
        # diffusers' unload puts default processors back; the ones before the job may differ.
        pipe.unet.set_attn_processor(self._processors)
        pipe.register_modules(feature_extractor=self._feature_extractor, image_encoder=self._image_encoder)


class _Restore:
    """Puts back another pipeline's encoder and feature extractor (the hires fix's second pass)."""

    def __init__(self, pipe: Any, feature_extractor: Any, image_encoder: Any) -> None:
        self._pipe, self._feature_extractor, self._image_encoder = pipe, feature_extractor, image_encoder

    def remove(self) -> None:
        self._pipe.register_modules(feature_extractor=self._feature_extractor, image_encoder=self._image_encoder)


class IpAdapters:
    """IP-Adapter units of a request: loads adapters and encoders from the control library per job."""

    def __init__(self, catalog: AdapterCatalog, face_analyser: Callable[[], FaceAnalyser] | None = None) -> None:
        self._catalog = catalog
        # Called once per job with an active FaceID unit; raises ModelError when the face models are missing.
        self._face_analyser = face_analyser or library_face_analyser(catalog)
        self._encoders: dict[tuple[str, int, int], Any] = {}

    def forget(self) -> None:
        self._encoders.clear()

    def prepare(self, pipe: Any, request: GenerationRequest, control: ControlRun | None) -> ControlRun | None:
        """`control` (the ControlNet / T2I units' run, or None) with the request's IP-Adapter units added;
        its hashes cover every unit in the request's order. `pipe` is the pipeline the job calls."""
        indexed = [(i, unit) for i, unit in enumerate(request.controls) if is_ip_unit(unit)]
        if not indexed:
            return control
        try:
            return self._prepare(pipe, request, control, indexed)
        except BaseException:
            if control is not None:
                control.close()  # the ControlNet / T2I hooks of a job that will not run
            raise

    def _prepare(
        self,
        pipe: Any,
        request: GenerationRequest,
        control: ControlRun | None,
        indexed: list[tuple[int, ControlUnit]],
    ) -> ControlRun:
        adapters = [self._adapter(unit) for _, unit in indexed]
        unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        for adapter in adapters:
            width = unet.config.cross_attention_dim
            if adapter.info.attention_width is not None and adapter.info.attention_width != width:
                raise ModelError(
                    f"The IP-Adapter {adapter.name!r} is made for {adapter.info.attention_width}-wide text "
                    f"states; the loaded model reads {width}-wide ones. Pick an IP-Adapter for this kind of model."
                )
        active = [
            (unit, adapter)
            for (_, unit), adapter in zip(indexed, adapters, strict=True)
            if unit.weight > 0 and unit.end > unit.start
        ]
        clip = [a for _, a in active if a.info.encoder_output != NO_ENCODER]
        encoder = self._encoder_for(clip, pipe) if clip else None
        family = "sdxl" if "XL" in type(pipe).__name__ else "sd15"  # the model's, as the adapter's width may be odd
        hashes = _merged_hashes(request, control, adapters, encoder, family)
        run = control if control is not None else ControlRun(pipe, {}, ())
        run.hashes = hashes
        if active:
            try:
                faces = self._face_analyser() if any(a.info.reads_faces for _, a in active) else None
                _load(run, [u for u, _ in active], [a for _, a in active], encoder, request, faces)
            except BaseException:
                run.close()
                raise
        return run

    def _adapter(self, unit: ControlUnit) -> _Adapter:
        entry = self._catalog.get(unit.model.strip())
        if sniff_file_type(entry.path) != "safetensors":
            raise ModelError(f"The IP-Adapter {entry.name!r} is not a safetensors file; import it again.")
        header = read_safetensors_header(entry.path, name=entry.name)
        if is_redux(header):
            raise InvalidRequest(f"{entry.name!r} is a Flux.1 Redux model: it works with Flux.1 models, not this one.")
        info = inspect_ip_adapter(header, repr(entry.name))
        return _Adapter(entry.name, entry.path, info, legacy_hash(entry.path))

    def _encoder_for(self, adapters: list[_Adapter], pipe: Any) -> Any:
        """The library's first image encoder (by name) whose widths fit every adapter, loaded."""
        for entry, header in self._catalog.headers():
            if not is_image_encoder(header):
                continue
            info = inspect_image_encoder(header, entry.name)
            if all(info.width_of(a.info.encoder_output) == a.info.encoder_width for a in adapters):
                stat = entry.path.stat()
                key = (str(entry.path.resolve()), stat.st_size, stat.st_mtime_ns)
                if key not in self._encoders:
                    self._encoders[key] = build_encoder(entry.path, info, entry.name)
                encoder = self._encoders[key]
                return encoder.to(device=pipe.device, dtype=pipe.dtype)
        needs = "; ".join(
            f"{a.name!r} needs one with a {a.info.encoder_width}-wide "
            f"{'projection' if a.info.encoder_output == 'image_embeds' else 'hidden size'}"
            for a in adapters
        )
        raise ModelError(
            f"No CLIP image encoder in the control library fits these IP-Adapters ({needs}). Import the encoder "
            "the adapter was trained with (e.g. h94's image_encoder folder) with `marble controls import PATH`."
        )


def _merged_hashes(
    request: GenerationRequest, control: ControlRun | None, adapters: list[_Adapter], encoder: Any, family: str
) -> tuple[ControlHash, ...]:
    others = iter(control.hashes if control is not None else ())
    ours = iter(adapters)
    merged = []
    for unit in request.controls:
        if not is_ip_unit(unit):
            merged.append(next(others))
            continue
        adapter = next(ours)
        merged.append(ControlHash(adapter.name, adapter.hash, a1111_module(family, encoder, adapter.info.variant)))
    return tuple(merged)


def a1111_module(family: str, encoder: Any, variant: str = "") -> str:
    """The module A1111's extension writes: named by the model family and the image encoder that ran, or
    for FaceID adapters by the variant."""
    if variant in A1111_FACE_MODULES:
        return A1111_FACE_MODULES[variant]
    big = encoder.config.hidden_size == _BIG_G_WIDTH if encoder is not None else family == "sdxl"
    if family != "sdxl":
        return A1111_MODULE_SD15
    return A1111_MODULE_SDXL if big else A1111_MODULE_SDXL_VIT_H


def build_encoder(path: Path, info: ImageEncoderInfo, name: str) -> Any:
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=info.hidden_size, intermediate_size=info.intermediate_size, projection_dim=info.projection_dim,
        num_hidden_layers=info.layers, num_attention_heads=16, num_channels=info.channels,
        image_size=info.image_size, patch_size=info.patch_size,
        # OpenAI's ViT-L uses quick GELU; OpenCLIP's ViT-H / bigG (the IP-Adapter encoders) exact GELU.
        hidden_act="quick_gelu" if info.hidden_size == 1024 else "gelu",
    )  # fmt: skip
    state = load_file(str(path))
    state.pop("vision_model.embeddings.position_ids", None)  # a buffer older exports carry
    with init_empty_weights():
        model = CLIPVisionModelWithProjection(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:
        raise ModelError(f"The image encoder {name!r} could not be read: {library_error(error)}.") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        first = (missing + unexpected)[0]
        raise ModelError(f"The image encoder {name!r} does not have the expected tensors ({first}).")
    return model.eval()


def feature_extractor(image_size: int) -> Any:
    import transformers

    # The Pillow-backed processor works without torchvision (which Marble does not ship).
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def _load(
    run: ControlRun,
    units: list[ControlUnit],
    adapters: list[_Adapter],
    encoder: Any,
    request: GenerationRequest,
    faces: FaceAnalyser | None = None,
) -> None:
    from safetensors.torch import load_file

    pipe = run.pipe
    states = []
    for adapter in adapters:
        flat = load_file(str(adapter.path))
        states.append({
            part: {k.removeprefix(f"{part}."): v for k, v in flat.items()
                   if k.startswith(f"{part}.") and "_lora." not in k}
            for part in ("image_proj", "ip_adapter")
        })  # fmt: skip
    unet = pipe.unet
    handle = _Unload(pipe, dict(unet.attn_processors), getattr(pipe, "feature_extractor", None),
                     getattr(pipe, "image_encoder", None))  # fmt: skip
    if encoder is not None:  # FaceID alone reads no CLIP encoder
        pipe.register_modules(image_encoder=encoder,
                              feature_extractor=feature_extractor(encoder.config.image_size))  # fmt: skip
    run.handles.append(handle)  # from here on, close() undoes the loading
    try:
        pipe.load_ip_adapter(states, subfolder=[""] * len(states), weight_name=[""] * len(states),
                             image_encoder_folder=None)  # fmt: skip
    except (RuntimeError, KeyError, ValueError) as error:
        names = ", ".join(repr(a.name) for a in adapters)
        raise ModelError(f"The IP-Adapter {names} does not fit the loaded model: {library_error(error)}.") from None
    weights = [float(unit.weight) for unit in units]
    ranged = any(unit.start > 0 or unit.end < 1 for unit in units)

    def scales_at(step: int, total: int) -> list[float]:
        return [
            0.0 if step / total < unit.start or (step + 1) / total > unit.end else weight
            for unit, weight in zip(units, weights, strict=True)
        ]

    first_total = request.steps if request.mode == "txt2img" else _edit_steps(request.steps, request.strength)
    pipe.set_ip_adapter_scale(scales_at(0, first_total) if ranged else weights)
    # The pipeline running (the hires fix's second pass has its own) and its step count before it sets one: a range
    # counts the steps of the pass it is in, as ControlNet ranges do.
    running: list[Any] = [pipe, first_total]
    if ranged:

        def on_step(done: int) -> None:
            total = getattr(running[0], "_num_timesteps", None) or running[1]
            if done < total:
                pipe.set_ip_adapter_scale(scales_at(done, total))

        run.steppers.append(on_step)
    # One image per adapter as before; a list for a unit with several (diffusers encodes each).
    images = [
        [load_source(path) for path in unit.images] if unit.more_images else load_source(unit.image)
        for unit in units
    ]
    given: dict[str, Any] = {"ip_adapter_image": images}
    if faces is not None:
        given = {"ip_adapter_image_embeds": _embeds(pipe, units, adapters, images, faces, request)}
    run.arguments |= given
    if any(unit.more_images for unit in units):
        unet_module = getattr(unet, "_orig_mod", unet)
        run.handles.append(unet_module.encoder_hid_proj.register_forward_hook(_average_images))

    def second_pass(other: Any, size: tuple[int, int]) -> dict[str, Any]:
        """The hires fix's image-to-image pipeline shares the UNet (with the adapters loaded) but was made
        before the encoder was registered: register it there too (put back on close), and pass the images. A range
        starts again over that pass's steps."""
        if other is not pipe:
            run.handles.append(_Restore(other, getattr(other, "feature_extractor", None),
                                        getattr(other, "image_encoder", None)))  # fmt: skip
            other.register_modules(image_encoder=pipe.image_encoder, feature_extractor=pipe.feature_extractor)
        if ranged:
            running[:] = [other, _edit_steps(request.hires_steps or request.steps, request.hires_denoise)]
            pipe.set_ip_adapter_scale(scales_at(0, running[1]))
        return given

    run.second_passes.append(second_pass)


def _edit_steps(steps: int, strength: float) -> int:
    """The steps an image-to-image pass of `steps` at `strength` runs (diffusers' rule), at least one."""
    return max(1, min(int(steps * strength), steps))


def _embeds(
    pipe: Any,
    units: list[ControlUnit],
    adapters: list[_Adapter],
    images: list[Any],
    faces: FaceAnalyser,
    request: GenerationRequest,
) -> list[Any]:
    """Every unit's `ip_adapter_image_embeds` entry (a job with a FaceID unit); FaceID Plus projections get
    their face crops' hidden states. Guidance as the pipeline decides it (scale above 1, no guidance-distilled
    UNet), since the embeddings must carry the negative half exactly when it does."""
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    guided = request.cfg_scale > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None
    layers = unet.encoder_hid_proj.image_projection_layers
    embeds = []
    for unit, adapter, given, layer in zip(units, adapters, images, layers, strict=True):
        if not adapter.info.reads_faces:
            embeds.append(clip_unit_embeds(pipe, given, adapter.info.encoder_output == "hidden", guided))
            continue
        pictures = given if isinstance(given, list) else [given]
        names = [Path(path).name for path in unit.images]
        plus = adapter.info.variant == FACEID_PLUS
        reads = (adapter.name, adapter.info.face_width, plus)
        identity, crops = face_unit_embeds(pipe, faces, pictures, names, reads, guided)
        embeds.append(identity)
        if plus:
            set_face_crops(layer, crops, request.batch_size, guided, faceid_v2(adapter.name), pipe._execution_device)
    return embeds


def _average_images(_module: Any, _inputs: Any, outputs: Any) -> Any:
    """The projected embeddings of each adapter's images, averaged over the images (A1111's multi-input rule).

    diffusers' MultiIPAdapterImageProjection returns one [batch, images, tokens, width] tensor per adapter;
    the average keeps the images axis (size 1) so the attention processors read it as one image."""
    return [embeds.mean(dim=1, keepdim=True) for embeds in outputs]


