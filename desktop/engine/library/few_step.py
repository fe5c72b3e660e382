"""Few-step (distilled) models and LoRAs: LCM, Turbo, Lightning, Hyper-SD, DMD2.

They are trained to finish in 1-8 steps with little or no guidance; the UNet defaults (30 steps, CFG 7.5,
the model's own scheduler) burn or blur their images. Each kind gets the settings its makers publish:

- LCM (latent-consistency LCM-LoRA model cards): the LCM scheduler, 4 steps (4-8), guidance 1 (1-2).
- Turbo (stabilityai/sdxl-turbo card): 1 step (1-4), guidance 0 in diffusers (= CFG 1 here: no
  guidance), Euler a with trailing timesteps (the scheduler config the model ships).
- Lightning (ByteDance/SDXL-Lightning card): Euler with trailing timesteps, CFG 0/1 (no guidance), the
  step count of the checkpoint (2, 4 or 8; 4 is the common one).
- Hyper-SD (ByteDance/Hyper-SD card): DDIM with trailing timesteps, no guidance, 8 steps for the 8-step
  LoRA (the most used one).
- DMD2 (tianweiy/DMD2 card): the LCM scheduler, 4 steps, no guidance, at the timesteps the card passes
  (999, 749, 499, 249: trailing spacing, where LCM's own 4 steps are 999, 759, 499, 259).

A kind is detected from what the file itself says (header metadata written by the trainers: SAI's
`modelspec.*`, kohya's `ss_*`), never from the file name; the user can always choose one instead.
Pure data and header reading: no torch here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import MarbleError
from desktop.engine.library.checkpoint import read_safetensors_header

FEW_STEP_KINDS = ("lcm", "turbo", "lightning", "hyper", "dmd2")
# What a user chooses for a LoRA whose header wrongly names a kind (library/index.py choose_few_step).
NOT_FEW_STEP = "none"
# Each kind's product name, as lists show it, in FEW_STEP_KINDS' order (the Library window offers them so).
KIND_NAMES = {"lcm": "LCM", "turbo": "Turbo", "lightning": "Lightning", "hyper": "Hyper-SD", "dmd2": "DMD2"}
# The model families a file may be a few-step model of, and how their variants are labelled.
UNET_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def few_step_variants(family: str) -> dict[str, str]:
    """The few-step kinds a UNet model file of `family` may be marked as, where its header names none (a Lightning
    or Turbo merge shared without metadata), each with its label; "" is the file as its header says."""
    base = UNET_LABELS[family]
    return {"": f"{base} (as the file says)", **{kind: f"{base} {KIND_NAMES[kind]}" for kind in FEW_STEP_KINDS}}


@dataclass(frozen=True)
class FewStepPreset:
    kind: str
    steps: int
    cfg_scale: float
    sampler: str  # an A1111 sampler name (backends/schedulers.py)
    timestep_spacing: str = ""  # "" = the sampler's own; "trailing" starts at the last training step

    def request_fields(self) -> dict[str, object]:
        """What choosing this kind sets in a request (the family_defaults shape)."""
        return {"steps": self.steps, "cfg_scale": self.cfg_scale, "sampler": self.sampler, "few_step": self.kind}


PRESETS: Mapping[str, FewStepPreset] = {
    "lcm": FewStepPreset("lcm", 4, 1.0, "LCM"),
    "turbo": FewStepPreset("turbo", 1, 1.0, "Euler a", "trailing"),
    "lightning": FewStepPreset("lightning", 4, 1.0, "Euler", "trailing"),
    "hyper": FewStepPreset("hyper", 8, 1.0, "DDIM", "trailing"),
    "dmd2": FewStepPreset("dmd2", 4, 1.0, "LCM", "trailing"),
}

# Header fields where trainers and converters name what a file is. kohya writes ss_output_name (the run's
# output name, chosen by the trainer, kept whatever the file is renamed to) and ss_network_module;
# SAI's ModelSpec writes modelspec.title / .description / .name.
_NAMING_FIELDS = (
    "modelspec.title", "modelspec.name", "modelspec.description", "modelspec.architecture",
    "ss_output_name", "ss_network_module", "ss_training_comment", "name", "title",
)  # fmt: skip
# Words (split on anything but letters and digits) that name each kind; "hyper" alone is too common a
# word, so Hyper-SD needs "hypersd" / "hyper sd".
_WORDS = {
    "lcm": ("lcm",),
    "turbo": ("turbo",),
    "lightning": ("lightning",),
    "hyper": ("hypersd", "hyper sd"),
    "dmd2": ("dmd2", "dmd"),
}


def few_step_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The few-step kind a safetensors header's metadata names, or None."""
    texts = [str(metadata.get(key, "")) for key in _NAMING_FIELDS]
    words = " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()) for text in texts if text)
    joined = words.replace(" ", "")
    padded = f" {words} "
    for kind in FEW_STEP_KINDS:
        for word in _WORDS[kind]:
            if f" {word} " in padded or (" " in word and word.replace(" ", "") in joined):
                return kind
    return None


def few_step_of_file(path: Path) -> str | None:
    """The few-step kind a single `.safetensors` model or LoRA names in its header; None otherwise
    (a folder, another format, unreadable: detection is a convenience, the job reports real errors)."""
    try:
        if not path.is_file():
            return None
        return few_step_from_metadata(read_safetensors_header(path).metadata)
    except (MarbleError, OSError, ValueError):
        return None


def preset(kind: str) -> FewStepPreset:
    return PRESETS[kind]


def split_family(family: str | None) -> tuple[str, str | None]:
    """"sdxl-turbo" -> ("sdxl", "turbo"); "sdxl" -> ("sdxl", None): model_family marks few-step models so."""
    base, _, kind = (family or "").rpartition("-")
    if kind in PRESETS:
        return base, kind
    return family or "", None
