"""Sampler names as A1111 writes them, mapped to diffusers scheduler classes.

Pure data: the diffusers backend turns an entry into a scheduler. Users type these names and PNG
metadata carries them, so they are the public vocabulary; diffusers class names never are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_SAMPLER = "default"


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: the diffusers class and the config overrides that make it."""

    name: str
    scheduler_class: str
    overrides: Mapping[str, object] = field(default_factory=dict)
    karras: bool = False

    @property
    def base_name(self) -> str:
        """The A1111 >= 1.9 `Sampler:` value; the Karras part goes to `Schedule type:`."""
        return self.name.removesuffix(" Karras") if self.karras else self.name


def _spec(name: str, cls: str, karras: bool = False, **overrides: object) -> SamplerSpec:
    if karras:
        overrides["use_karras_sigmas"] = True
    return SamplerSpec(name, cls, MappingProxyType(dict(overrides)), karras)


_SPECS = (
    _spec("Euler a", "EulerAncestralDiscreteScheduler"),
    _spec("Euler", "EulerDiscreteScheduler"),
    _spec("Heun", "HeunDiscreteScheduler"),
    _spec("LMS", "LMSDiscreteScheduler"),
    _spec("LMS Karras", "LMSDiscreteScheduler", karras=True),
    _spec("DPM2", "KDPM2DiscreteScheduler"),
    _spec("DPM2 Karras", "KDPM2DiscreteScheduler", karras=True),
    _spec("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    _spec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", karras=True),
    _spec("DPM++ 2M", "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++"),
    _spec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", karras=True, algorithm_type="dpmsolver++"),
    _spec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++"),
    _spec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", karras=True, algorithm_type="sde-dpmsolver++"),
    # The SDE variant of A1111 needs torchsde; the single-step solver is its deterministic sibling and
    # needs nothing extra, which keeps installs small.
    _spec("DPM++ SDE", "DPMSolverSinglestepScheduler"),
    _spec("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", karras=True),
    _spec("DDIM", "DDIMScheduler"),
    _spec("PLMS", "PNDMScheduler"),
    _spec("UniPC", "UniPCMultistepScheduler"),
    _spec("LCM", "LCMScheduler"),
)

SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SPECS})
SAMPLER_NAMES: tuple[str, ...] = (DEFAULT_SAMPLER, *SAMPLERS)
_BY_FOLDED = {name.casefold(): name for name in SAMPLER_NAMES}


def canonical_sampler(name: str, schedule_type: str | None = None) -> str | None:
    """The canonical name for what a user typed or a PNG says, or None when unknown.

    Accepts both spellings A1111 has used: `DPM++ 2M Karras` and `DPM++ 2M` + `Schedule type: Karras`.
    Matching ignores case and surrounding spaces.
    """
    name = " ".join(name.split())
    if schedule_type and schedule_type.strip().casefold() == "karras" and not name.endswith("Karras"):
        name = f"{name} Karras"
    return _BY_FOLDED.get(name.casefold())


def sampler_for_scheduler(class_name: str, config: Mapping[str, object]) -> str | None:
    """The A1111 name for a model's own scheduler, so `default` is written as what it really was."""
    karras = bool(config.get("use_karras_sigmas"))
    algorithm = config.get("algorithm_type")
    for spec in _SPECS:
        if spec.scheduler_class != class_name or spec.karras != karras:
            continue
        wanted = spec.overrides.get("algorithm_type")
        if wanted is None or wanted == algorithm:
            return spec.name
    return None
