"""The settings of the next job as one value, apart from the widgets that show them.

`Parameters` is a Qt-free frozen dataclass: every generation setting except the prompts and what the
canvas adds (source image, mask). `ParameterModel` holds the current `Parameters` and says which field
changed; the parameter panel binds its widgets to it both ways, a reused recipe sets it, and the
request of the next job is built from it (`build_request`), so no field is copied by hand twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from desktop.engine.backends.schedulers import DEFAULT_SAMPLER
from desktop.engine.request import RANDOM_SEED, ControlUnit, GenerationRequest, LayoutBox, LoraRef


@dataclass(frozen=True)
class Parameters:
    """Every setting of the parameter panel; field names and defaults are `GenerationRequest`'s."""

    model: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: int = 30
    cfg_scale: float = 7.5
    distilled_cfg_scale: float = 3.5  # Flux dev's guidance; the panel shows it for Flux dev models only
    seed: int = RANDOM_SEED
    width: int = 512
    height: int = 512
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    emphasis: str = "Original"
    device: str = "auto"
    precision: str = "auto"
    memory_mode: str = "auto"
    fast_mode: bool = False
    rewrite_prompt: bool = False  # FLUX.3's prompt rewriter; the panel shows it for FLUX.3 models only
    layout_boxes: tuple[LayoutBox, ...] = ()  # placed by the rewriter; shown while rewriting is on
    loras: tuple[LoraRef, ...] = ()
    subseed: int = RANDOM_SEED
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    tiling: bool = False
    vae: str = ""  # a library VAE's name; "" = the model's own
    # The diffusers folder a transformer-only model takes its text encoders and VAE from; "" = none
    # (the request's None). Shown for such models only.
    text_encoders: str = ""
    hires_fix: bool = False
    hires_scale: float = 2.0
    hires_resize_w: int = 0
    hires_resize_h: int = 0
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    hires_denoise: float = 0.7
    hires_prompt: str = ""
    hires_negative_prompt: str = ""
    hires_sampler: str = ""
    controls: tuple[ControlUnit, ...] = ()  # ControlNet / T2I-Adapter units
    few_step: str = ""  # library/few_step.py kind; "" = none
    refiner: str = ""  # an SDXL refiner model's name; "" = none
    refiner_switch_at: float = 0.8
    # Further pictures for models that read them (Flux.2, Qwen-Image-Edit Plus); shown for those only.
    reference_images: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, request: GenerationRequest) -> Parameters:
        values = {name: getattr(request, name) for name in PARAMETER_FIELDS}
        return cls(**values | {"text_encoders": request.text_encoders or ""})


PARAMETER_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Parameters))


def build_request(parameters: Parameters, prompt: str, negative_prompt: str = "") -> GenerationRequest:
    """The request these settings describe, not yet validated (the controller validates)."""
    values = {name: getattr(parameters, name) for name in PARAMETER_FIELDS}
    values["text_encoders"] = parameters.text_encoders or None
    return GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, **values)


class ParameterModel(QObject):
    """The current `Parameters`; setting a field to the value it has changes nothing and says nothing.

    Signals:
        field_changed(str, object): this field (a `PARAMETER_FIELDS` name) now has this value.
    """

    field_changed = Signal(str, object)

    def __init__(self, parameters: Parameters | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._parameters = parameters or Parameters()

    @property
    def parameters(self) -> Parameters:
        return self._parameters

    def value(self, name: str) -> Any:
        return getattr(self._parameters, name)

    def update(self, **changes: Any) -> None:
        """Set some fields; `field_changed` follows for each one whose value differs, after all are set."""
        unknown = set(changes) - set(PARAMETER_FIELDS)
        if unknown:
            raise ValueError(f"Not a parameter: {', '.join(sorted(unknown))}")
        changed = [name for name, value in changes.items() if getattr(self._parameters, name) != value]
        if not changed:
            return
        self._parameters = dataclasses.replace(self._parameters, **changes)
        for name in changed:
            self.field_changed.emit(name, getattr(self._parameters, name))

    def set_parameters(self, parameters: Parameters) -> None:
        self.update(**{name: getattr(parameters, name) for name in PARAMETER_FIELDS})

    def set_from_request(self, request: GenerationRequest) -> None:
        """Take a request's settings (from history or a PNG); a request without a model keeps the current one."""
        parameters = Parameters.from_request(request)
        if not parameters.model:
            parameters = dataclasses.replace(parameters, model=self._parameters.model)
        self.set_parameters(parameters)

    def request(self, prompt: str, negative_prompt: str = "") -> GenerationRequest:
        return build_request(self._parameters, prompt, negative_prompt)
