"""Sampler names as A1111 writes them, mapped to diffusers scheduler classes.

Pure data: the diffusers backend turns an entry into a scheduler. Users type these names and PNG
metadata carries them, so they are the public vocabulary; diffusers class names never are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_SAMPLER = "default"


# A1111's `Schedule type:` values we reproduce, and the diffusers switch for each.
SCHEDULE_SWITCHES: Mapping[str, str] = MappingProxyType(
    {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas"}
)


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: the diffusers class and the config overrides that make it."""

    name: str
    scheduler_class: str
    overrides: Mapping[str, object] = field(default_factory=dict)
    # "" for the sampler's own schedule, else a SCHEDULE_SWITCHES key; the name ends with it.
    schedule: str = ""

    @property
    def karras(self) -> bool:
        return self.schedule == "Karras"

    @property
    def base_name(self) -> str:
        """The A1111 >= 1.9 `Sampler:` value; the schedule part goes to `Schedule type:`."""
        return self.name.removesuffix(f" {self.schedule}") if self.schedule else self.name


def _spec(name: str, cls: str, schedule: str = "", **overrides: object) -> SamplerSpec:
    if schedule:
        overrides[SCHEDULE_SWITCHES[schedule]] = True
    full = f"{name} {schedule}" if schedule else name
    return SamplerSpec(full, cls, MappingProxyType(dict(overrides)), schedule)


def _sde(name: str, cls: str, **overrides: object) -> tuple[SamplerSpec, ...]:
    """An SDE sampler with each schedule type A1111 offers for it (it wrote them as names before 1.9)."""
    return tuple(_spec(name, cls, schedule, **overrides) for schedule in ("", *SCHEDULE_SWITCHES))


_MULTISTEP_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_type": "midpoint"}

_SPECS = (
    _spec("Euler a", "EulerAncestralDiscreteScheduler"),
    _spec("Euler", "EulerDiscreteScheduler"),
    _spec("Heun", "HeunDiscreteScheduler"),
    _spec("LMS", "LMSDiscreteScheduler"),
    _spec("LMS", "LMSDiscreteScheduler", "Karras"),
    _spec("DPM2", "KDPM2DiscreteScheduler"),
    _spec("DPM2", "KDPM2DiscreteScheduler", "Karras"),
    _spec("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    _spec("DPM2 a", "KDPM2AncestralDiscreteScheduler", "Karras"),
    _spec("DPM++ 2M", "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++"),
    _spec("DPM++ 2M", "DPMSolverMultistepScheduler", "Karras", algorithm_type="dpmsolver++"),
    # The SDE samplers are stochastic, as in A1111: docs/samplers.md says how the noise is drawn.
    *_sde("DPM++ 2M SDE", "DPMSolverMultistepScheduler", solver_order=2, **_MULTISTEP_SDE),
    *_sde("DPM++ 3M SDE", "DPMSolverMultistepScheduler", solver_order=3, **_MULTISTEP_SDE),
    *_sde("DPM++ SDE", "DPMSolverSDEScheduler"),
    _spec("DDIM", "DDIMScheduler"),
    # A1111's PLMS is CompVis' (Adams-Bashforth from the first step): diffusers' PNDM does that with skip_prk_steps,
    # which SD 1.x's config sets and SDXL's, SD 2's and the DiTs' (other schedulers') do not. Without it, PNDM warms up
    # with Runge-Kutta steps, another sampler, and fails below 4 steps with linspace spacing.
    _spec("PLMS", "PNDMScheduler", skip_prk_steps=True),
    _spec("UniPC", "UniPCMultistepScheduler"),
    _spec("LCM", "LCMScheduler"),
)

SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({s.name: s for s in _SPECS})
SAMPLER_NAMES: tuple[str, ...] = (DEFAULT_SAMPLER, *SAMPLERS)
_BY_FOLDED = {name.casefold(): name for name in SAMPLER_NAMES}
# DPMSolverMultistepScheduler's defaults, for model configs that leave them out.
_DIFFUSERS_DEFAULTS = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}
_SCHEDULE_BY_FOLDED = {schedule.casefold(): schedule for schedule in SCHEDULE_SWITCHES}


def canonical_sampler(name: str, schedule_type: str | None = None) -> str | None:
    """The canonical name for what a user typed or a PNG says, or None when unknown.

    Accepts both spellings A1111 has used: `DPM++ 2M Karras` and `DPM++ 2M` + `Schedule type: Karras`
    (likewise Exponential). Matching ignores case and surrounding spaces.
    """
    name = " ".join(name.split())
    schedule = _SCHEDULE_BY_FOLDED.get((schedule_type or "").strip().casefold())
    if schedule and not name.casefold().endswith(schedule.casefold()):
        name = f"{name} {schedule}"
    return _BY_FOLDED.get(name.casefold())


def sampler_for_scheduler(class_name: str, config: Mapping[str, object]) -> str | None:
    """The A1111 name for a model's own scheduler, so `default` is written as what it really was."""
    schedule = next((name for name, switch in SCHEDULE_SWITCHES.items() if config.get(switch)), "")
    for spec in _SPECS:
        if spec.scheduler_class != class_name or spec.schedule != schedule:
            continue
        # A key the model's config lacks has diffusers' default.
        if all(config.get(key, _DIFFUSERS_DEFAULTS.get(key)) == value for key, value in spec.overrides.items()):
            return spec.name
    return None
