"""An image's recipe as settings Marble can use: metadata -> request fields, warnings, unsupported fields.

`read_recipe` turns what `metadata.read_image_metadata` found (any tool's format) into the fields of a
`GenerationRequest` that Marble can honour, matched against the library: a model by its AutoV2 hash
first (A1111's `Model hash`), then by name; a LoRA by its AutoV3 hash (`Lora hashes`), then by name.
A model or LoRA the library lacks is named in a warning and left out, never passed on as a name the
library does not know. Every setting that cannot be honoured (an extension's setting, a sampler
Marble lacks, a value out of range) is listed as unsupported, so the user knows what will differ.

The window's PNG info view and `marble info` both show this, so they always agree. Pure Python.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from desktop.engine.backends.hires import canonical_upscaler
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLERS
from desktop.engine.control_preprocess import preprocessor_from_module
from desktop.engine.errors import InvalidRequest
from desktop.engine.library.control import BUILT_IN, is_built_in
from desktop.engine.library.lora import split_lora_tags
from desktop.engine.metadata import (
    ImageMetadata,
    clean_model_name,
    hires_changes,
    parse_control_units,
    refiner_changes,
    resolve_sampler,
    typed_prompt,
    vae_library_name,
)
from desktop.engine.request import EMPHASIS_MODES, ControlUnit, GenerationRequest, LoraRef

HIRES_FIELDS = (
    "hires_fix", "hires_scale", "hires_resize_w", "hires_resize_h", "hires_upscaler", "hires_steps", "hires_denoise",
    "hires_prompt", "hires_negative_prompt", "hires_sampler",
)  # fmt: skip
_HIRES_KEYS = {
    "hires upscale", "hires resize", "hires steps", "hires upscaler", "hires prompt", "hires negative prompt",
    "hires sampler", "hires schedule type",
}  # fmt: skip
# The request fields a recipe sets, in the order a change list shows them. Machine settings (device,
# precision, memory, batch) belong to this computer, not to the image.
RECIPE_FIELDS = (
    "prompt", "negative_prompt", "model", "loras", "sampler", "steps", "cfg_scale", "distilled_cfg_scale", "seed",
    "width", "height", "clip_skip", "emphasis", "vae", "subseed", "subseed_strength", "seed_resize_from_w",
    "seed_resize_from_h",
    "tiling", "controls", *HIRES_FIELDS, "few_step", "refiner", "refiner_switch_at",
)  # fmt: skip
# "Use prompt only" takes these: A1111 writes LoRAs into the prompt, so they travel with it.
PROMPT_FIELDS = ("prompt", "negative_prompt", "loras")

# Settings that describe the file rather than ask for anything: read, never reported as unsupported.
_INFORMATIONAL = {
    "model hash", "lora hashes", "ti hashes", "vae hash", "version", "source", "batch size", "batch pos",
    # How the image was upscaled after it was made (A1111's extras tab and SD upscale script): the recipe
    # above it remakes the source.
    "postprocess upscale by", "postprocess upscaler", "sd upscale overlap", "sd upscale upscaler", "sd upscale tile",
}  # fmt: skip
# Settings turned into fields below.
_HANDLED = {
    "steps", "sampler", "schedule type", "cfg scale", "distilled cfg scale", "seed", "size", "model", "clip skip",
    "emphasis", "vae", "variation seed", "variation seed strength", "seed resize from", "tiling", "refiner",
    "refiner switch at",
}  # fmt: skip
# What our own chunk carries beside the prompt, the model and the LoRAs: honoured exactly as saved.
_MARBLE_FIELDS = (
    "sampler", "steps", "cfg_scale", "seed", "width", "height", "clip_skip", "emphasis", "subseed",
    "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "tiling", *HIRES_FIELDS, "few_step", "refiner",
    "refiner_switch_at",
)  # fmt: skip
# Schedules that are every sampler's default, so naming them asks for nothing Marble lacks.
_PLAIN_SCHEDULES = {"", "automatic", "normal", "default", "simple"}
_FORMAT_NAMES = {
    "marble": "Marble", "a1111": "AUTOMATIC1111", "forge": "Forge", "swarmui": "SwarmUI", "comfyui": "ComfyUI",
    "invokeai": "InvokeAI", "novelai": "NovelAI", "fooocus": "Fooocus", "unknown": "no recipe",
}  # fmt: skip


class LibraryEntry(Protocol):
    """What matching needs of a library record (`LibraryRecord` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def autov2(self) -> str | None: ...
    @property
    def autov3(self) -> str | None: ...


@dataclass(frozen=True)
class Recipe:
    """What an image asks for, as Marble can honour it.

    `fields` maps `GenerationRequest` field names (a subset of RECIPE_FIELDS) to values; `warnings`
    name what is missing from the library; `unsupported` lists each setting that will not be honoured,
    as `Key: value (why)`.
    """

    format: str
    prompt: str
    negative_prompt: str
    settings: Mapping[str, str]
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()
    # The prompt as typed when the image was made from another (wildcards chosen, FLUX.3's rewritten caption).
    typed_prompt: str = ""

    @property
    def has_recipe(self) -> bool:
        return self.format != "unknown"

    @property
    def format_name(self) -> str:
        return _FORMAT_NAMES.get(self.format, self.format)

    def prompt_fields(self) -> dict[str, Any]:
        return {name: value for name, value in self.fields.items() if name in PROMPT_FIELDS}

    def to_json(self) -> dict[str, Any]:
        fields = dict(self.fields)
        if "loras" in fields:
            fields["loras"] = [{"name": ref.name, "weight": ref.weight} for ref in fields["loras"]]
        if "controls" in fields:
            fields["controls"] = [asdict(unit) for unit in fields["controls"]]
        return {
            "format": self.format,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "settings": dict(self.settings),
            "fields": fields,
            "warnings": list(self.warnings),
            "unsupported": list(self.unsupported),
        } | ({"typed_prompt": self.typed_prompt} if self.typed_prompt else {})


def read_recipe(
    metadata: ImageMetadata,
    models: Sequence[LibraryEntry] = (),
    loras: Sequence[LibraryEntry] = (),
    vaes: Sequence[LibraryEntry] = (),
    controls: Sequence[LibraryEntry] = (),
    upscalers: Sequence[LibraryEntry] = (),
) -> Recipe:
    """The recipe of an image, matched against the library's `models`, `loras`, `vaes`, `controls` and
    `upscalers`."""
    if metadata.format == "unknown":
        return Recipe("unknown", "", "", MappingProxyType({}))
    settings = {key.strip().casefold(): value for key, value in metadata.settings.items()}
    fields: dict[str, Any] = {}
    warnings: list[str] = []
    unsupported: list[str] = []

    prompt, negative = metadata.prompt, metadata.negative_prompt
    tagged: tuple[LoraRef, ...] = ()
    try:
        prompt, tagged = split_lora_tags(prompt)
    except InvalidRequest as error:
        warnings.append(f"{error} The tag stays in the prompt.")
    fields["prompt"], fields["negative_prompt"] = prompt, negative

    marble = metadata.request if metadata.format == "marble" else None
    _read_model(settings, marble, models, fields, warnings)
    wanted_loras = (*(marble.loras if marble else ()), *tagged)
    _read_loras(wanted_loras, _hash_table(settings.get("lora hashes", "")), loras, fields, warnings)
    _read_vae(settings, marble, vaes, fields, warnings)
    _read_controls(metadata.settings, marble, controls, fields, warnings, unsupported)

    if marble is not None:
        # Our own chunk is the exact request: every field is honoured as saved.
        for name in _MARBLE_FIELDS:
            fields[name] = getattr(marble, name)
        if "distilled cfg scale" in settings:
            # Written for Flux dev only: other images leave the current value alone.
            fields["distilled_cfg_scale"] = marble.distilled_cfg_scale
        if marble.refiner and _by_name(models, marble.refiner) is None:
            warnings.append(
                f"The refiner {marble.refiner!r} is not in the library: no refiner is used. Import it (drop the file "
                "on the window) to reproduce this image."
            )
            fields["refiner"] = ""
        if marble.init_image is not None:
            unsupported.append("Source image: the image was made from a source image, which the file does not hold")
    else:
        _read_settings(settings, metadata.settings, fields, unsupported)
        _read_hires(settings, upscalers, fields, unsupported)
        _read_refiner(settings, models, fields, warnings, unsupported)
        # Unsaid means off: an image without a variation seed, tiling, hires fix or refiner was made without
        # them. Other tools have no few-step setting (its timestep spacing is Marble's), so it is off too.
        for name, off in (("subseed_strength", 0.0), ("seed_resize_from_w", 0), ("seed_resize_from_h", 0),
                          ("tiling", False), ("hires_fix", False), ("refiner", ""), ("few_step", "")):
            fields.setdefault(name, off)
    handled = _HANDLED | (_HIRES_KEYS | {"denoising strength"} if fields.get("hires_fix") else _HIRES_KEYS)
    for key, value in metadata.settings.items():
        folded = key.strip().casefold()
        if folded not in handled and folded not in _INFORMATIONAL and not _CONTROL_KEY.match(folded):
            unsupported.append(f"{key}: {value} (Marble has no such setting)")
    ordered = {name: fields[name] for name in RECIPE_FIELDS if name in fields}
    return Recipe(
        metadata.format,
        metadata.prompt,
        metadata.negative_prompt,
        MappingProxyType(dict(metadata.settings)),
        MappingProxyType(ordered),
        tuple(warnings),
        tuple(unsupported),
        typed_prompt(metadata.raw),
    )


# -------------------------------------------------------------------------------------------- library


def _read_model(
    settings: Mapping[str, str],
    marble: GenerationRequest | None,
    models: Sequence[LibraryEntry],
    fields: dict[str, Any],
    warnings: list[str],
) -> None:
    name = clean_model_name(marble.model if marble else settings.get("model", ""))
    model_hash = settings.get("model hash", "").strip().casefold()
    if not name and not model_hash:
        return
    found = _by_hash(models, model_hash, "autov2") or _by_name(models, name)
    label = f" {name!r}" if name else ""  # a hash alone: "The model (hash 6ce0161689) is not ..."
    hashed = f" (hash {model_hash})" if model_hash else ""
    if found is None:
        warnings.append(
            f"The model{label}{hashed} is not in the library: the current model is kept. Import it (drop the "
            "file on the window) to reproduce this image."
        )
        return
    fields["model"] = found.name
    if model_hash and not _hash_matches(found, model_hash, "autov2") and found.autov2:
        warnings.append(
            f"The model {found.name!r} was matched by name, but its hash {found.autov2} differs from the "
            f"image's {model_hash}: the result may differ."
        )


def _read_loras(
    wanted: Sequence[LoraRef],
    hashes: Mapping[str, str],
    loras: Sequence[LibraryEntry],
    fields: dict[str, Any],
    warnings: list[str],
) -> None:
    if not wanted:
        return
    found: list[LoraRef] = []
    for ref in wanted:
        lora_hash = hashes.get(ref.name.casefold(), "")
        record = _by_hash(loras, lora_hash, "autov3") or _by_name(loras, clean_model_name(ref.name))
        if record is None:
            hashed = f" (hash {lora_hash})" if lora_hash else ""
            warnings.append(
                f"The LoRA {ref.name!r}{hashed} is not in the library: it is left out. Import it to use it."
            )
        elif all(existing.name != record.name for existing in found):
            found.append(LoraRef(record.name, ref.weight))
    fields["loras"] = tuple(found)


def _read_vae(
    settings: Mapping[str, str],
    marble: GenerationRequest | None,
    vaes: Sequence[LibraryEntry],
    fields: dict[str, Any],
    warnings: list[str],
) -> None:
    name = marble.vae if marble is not None else vae_library_name(settings.get("vae", ""))
    vae_hash = settings.get("vae hash", "").strip().casefold()
    if not name and not vae_hash:
        fields["vae"] = ""  # the model's own, as the image was made
        return
    found = _by_hash(vaes, vae_hash, "autov2") or _by_name(vaes, name)
    if found is None:
        hashed = f" (hash {vae_hash})" if vae_hash else ""
        warnings.append(
            f"The VAE {name or 'of this image'!r}{hashed} is not in the library: the model's own is used. "
            "Import it (drop the file on the window) to reproduce this image."
        )
        fields["vae"] = ""
        return
    fields["vae"] = found.name


_CONTROL_KEY = re.compile(r"controlnet \d+\Z")


def _read_controls(
    settings: Mapping[str, str],
    marble: GenerationRequest | None,
    controls: Sequence[LibraryEntry],
    fields: dict[str, Any],
    warnings: list[str],
    unsupported: list[str],
) -> None:
    """Control units: our chunk's exactly (with their image files); A1111's `ControlNet N` entries with
    the model matched by library name (the extension's bracketed hash is A1111's old model hash, which
    the library does not record) and no image, since the PNG does not hold it. Unsaid means none."""
    if marble is not None:
        wanted = [(unit, "") for unit in marble.controls]
    else:
        wanted = []
        for parsed in parse_control_units(settings):
            preprocessor = preprocessor_from_module(parsed.module)
            if preprocessor is None:
                unsupported.append(
                    f"ControlNet {parsed.index}: preprocessor {parsed.module} (not built in; the image is used as is)"
                )
            wanted.append((replace(parsed.unit, preprocessor=preprocessor or "none"), parsed.model_hash))
    found: list[ControlUnit] = []
    for index, (unit, model_hash) in enumerate(wanted):
        if is_built_in(unit.model):
            name = BUILT_IN  # a Canny / Depth dev model's own input: no library file
        elif (record := _by_name(controls, unit.model)) is not None:
            name = record.name
        else:
            hashed = f" (hash {model_hash})" if model_hash else ""
            warnings.append(
                f"The control model {unit.model!r}{hashed} is not in the library: control unit {index} is left out. "
                "Import it (marble controls import FILE) to use it."
            )
            continue
        found.append(replace(unit, model=name))
        if not unit.image:
            # An IP-Adapter unit's image is the reference picture it copies, not a control map.
            kind = "reference" if unit.preprocessor == "ip-adapter" else "control"
            warnings.append(
                f"Control unit {index} ({name}): the PNG does not hold its {kind} image; choose one before generating."
            )
    fields["controls"] = tuple(found)


def _by_hash(entries: Sequence[LibraryEntry], wanted: str, kind: str) -> LibraryEntry | None:
    if not re.fullmatch(r"[0-9a-f]{8,64}", wanted):
        return None
    return next((entry for entry in entries if _hash_matches(entry, wanted, kind)), None)


def _hash_matches(entry: LibraryEntry, wanted: str, kind: str) -> bool:
    short = (getattr(entry, kind) or "").casefold()
    full = (entry.sha256 or "").casefold()
    # A1111's short hashes are prefixes of the file's (AutoV2) or the tensors' (AutoV3) sha256.
    return bool(short) and short == wanted or (kind == "autov2" and bool(full) and full.startswith(wanted))


def _by_name(entries: Sequence[LibraryEntry], name: str) -> LibraryEntry | None:
    if not name:
        return None
    exact = next((entry for entry in entries if entry.name == name), None)
    return exact or next((entry for entry in entries if entry.name.casefold() == name.casefold()), None)


def _hash_table(text: str) -> dict[str, str]:
    """A1111's `Lora hashes` value, `name: hash, name2: hash2`, keyed by folded name."""
    table = {}
    for part in text.split(","):
        name, sep, value = part.rpartition(":")
        if sep and name.strip():
            table[name.strip().casefold()] = value.strip().casefold()
    return table


# ------------------------------------------------------------------------------------------- settings


def _read_settings(
    settings: Mapping[str, str], original: Mapping[str, str], fields: dict[str, Any], unsupported: list[str]
) -> None:
    shown = {key.strip().casefold(): key for key in original}

    def take(key: str, values: dict[str, Any] | None, why: str = "not a valid value") -> None:
        if values is None:
            unsupported.append(f"{shown[key]}: {settings[key]} ({why})")
            return
        problem = _problem(values)
        if problem:
            unsupported.append(f"{shown[key]}: {settings[key]} ({problem})")
        else:
            fields.update(values)

    if "steps" in settings:
        take("steps", _whole("steps", settings["steps"]))
    if "cfg scale" in settings:
        cfg = _number(settings["cfg scale"])
        take("cfg scale", None if cfg is None else {"cfg_scale": cfg})
    if "distilled cfg scale" in settings:
        distilled = _number(settings["distilled cfg scale"])
        take("distilled cfg scale", None if distilled is None else {"distilled_cfg_scale": distilled})
    if "seed" in settings:
        take("seed", _whole("seed", settings["seed"]))
    if "size" in settings:
        match = re.fullmatch(r"\s*(\d{1,6})\s*[x×]\s*(\d{1,6})\s*", settings["size"])
        take("size", {"width": int(match[1]), "height": int(match[2])} if match else None)
    if "clip skip" in settings:
        take("clip skip", _whole("clip_skip", settings["clip skip"]))
    if "emphasis" in settings:
        mode = next((m for m in EMPHASIS_MODES if m.casefold() == settings["emphasis"].strip().casefold()), None)
        take("emphasis", None if mode is None else {"emphasis": mode}, "Marble has no such emphasis mode")
    if "sampler" in settings:
        _read_sampler(settings, shown, fields, unsupported)
    _read_variation(settings, take)


def _read_variation(settings: Mapping[str, str], take: Any) -> None:
    """A1111's variation seed (with its strength: a strength alone would draw a random one), seed
    resize and tiling."""
    if "variation seed" in settings:
        subseed = _whole("subseed", settings["variation seed"])
        strength = _number(settings.get("variation seed strength", "0"))
        values = None if subseed is None or strength is None else {**subseed, "subseed_strength": strength}
        take("variation seed", values)
    if "seed resize from" in settings:
        match = re.fullmatch(r"\s*(\d{1,6})\s*[x×]\s*(\d{1,6})\s*", settings["seed resize from"])
        take("seed resize from", {"seed_resize_from_w": int(match[1]), "seed_resize_from_h": int(match[2])}
             if match else None)
    if "tiling" in settings:
        value = settings["tiling"].strip().casefold()
        take("tiling", {"tiling": value == "true"} if value in ("true", "false") else None)


def _read_hires(
    settings: Mapping[str, str], upscalers: Sequence[LibraryEntry], fields: dict[str, Any], unsupported: list[str]
) -> None:
    """A1111's hires fix keys; an upscaler model the library lacks leaves the default ("Latent")."""
    change = hires_changes(settings)
    if change is None:
        return
    upscaler = change.get("hires_upscaler", "Latent")
    if canonical_upscaler(upscaler) is None:
        found = _by_name(upscalers, upscaler)
        if found is None:
            unsupported.append(f"Hires upscaler: {upscaler} (not in the upscaler library; Latent is used)")
            change.pop("hires_upscaler")
        else:
            change["hires_upscaler"] = found.name
    problem = _problem(change)
    if problem:
        unsupported.append(f"Hires fix: {problem}")
        return
    fields.update(change)


def _read_refiner(
    settings: Mapping[str, str],
    models: Sequence[LibraryEntry],
    fields: dict[str, Any],
    warnings: list[str],
    unsupported: list[str],
) -> None:
    """A1111's `Refiner: NAME [hash]` and `Refiner switch at`: the refiner matched in the model library by
    its AutoV2 hash, then by name, as the main model is."""
    change = refiner_changes(settings)
    if change is None:
        return
    written = settings.get("refiner", "").strip()
    hashed = re.search(r"\[([0-9a-fA-F]{8,64})\]\Z", written)
    refiner_hash = hashed[1].casefold() if hashed else ""
    found = _by_hash(models, refiner_hash, "autov2") or _by_name(models, change["refiner"])
    if found is None:
        warnings.append(
            f"The refiner {written!r} is not in the library: no refiner is used. Import it (drop the file on the "
            "window) to reproduce this image."
        )
        return
    change["refiner"] = found.name
    # Checked with what the refiner depends on (the steps, the hires fix), not with units still lacking images.
    related = {name: value for name, value in fields.items() if name == "steps" or name in HIRES_FIELDS}
    problem = _problem({**related, **change})
    if problem:
        unsupported.append(f"Refiner: {written} ({problem})")
        return
    fields.update(change)


def _read_sampler(
    settings: Mapping[str, str], shown: Mapping[str, str], fields: dict[str, Any], unsupported: list[str]
) -> None:
    name, schedule = settings["sampler"], settings.get("schedule type", "")
    resolved = resolve_sampler(name, schedule or None)
    if resolved == DEFAULT_SAMPLER:
        unsupported.append(f"{shown['sampler']}: {name} (Marble has no such sampler; the model's default is used)")
        return
    fields["sampler"] = resolved
    karras_asked = schedule.strip().casefold() == "karras" or name.strip().endswith(" Karras")
    if karras_asked and not SAMPLERS[resolved].karras:
        unsupported.append(f"Schedule type: Karras (Marble has no Karras {SAMPLERS[resolved].base_name})")
    elif schedule.strip().casefold() not in _PLAIN_SCHEDULES | {"karras"}:
        unsupported.append(f"{shown['schedule type']}: {schedule} (Marble has no such schedule)")


def _whole(name: str, text: str) -> dict[str, Any] | None:
    text = text.strip()
    # Parsed as an int, never through a float: a seed of 2**64 - 1 must stay exact.
    if re.fullmatch(r"[+-]?\d{1,30}", text):
        return {name: int(text)}
    number = _number(text)
    return {name: int(number)} if number is not None and number.is_integer() else None


def _number(text: str) -> float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _problem(values: dict[str, Any]) -> str | None:
    """Why these values would make an invalid request, checked on an otherwise valid one."""
    try:
        replace(GenerationRequest(prompt="", model="m"), **values).validate()
    except InvalidRequest as error:
        return str(error).rstrip(".")
    return None


# ------------------------------------------------------------------------------------------ showing


def recipe_text(recipe: Recipe) -> str:
    """The recipe as plain text: what the file says, then what Marble will not honour."""
    if not recipe.has_recipe:
        return "This image carries no recipe (no generation settings in its metadata)."
    lines = [f"Written by: {recipe.format_name}", "", "Prompt:", recipe.prompt]
    if recipe.typed_prompt:
        lines += ["", "Prompt as typed:", recipe.typed_prompt]
    if recipe.negative_prompt:
        lines += ["", "Negative prompt:", recipe.negative_prompt]
    if recipe.settings:
        lines += ["", "Settings:", *(f"{key}: {value}" for key, value in recipe.settings.items())]
    if recipe.warnings:
        lines += ["", "Warnings:", *(f"- {text}" for text in recipe.warnings)]
    if recipe.unsupported:
        lines += ["", "Not used by Marble:", *(f"- {text}" for text in recipe.unsupported)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Change:
    field: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{_LABELS.get(self.field, self.field)}: {self.old} -> {self.new}"


_LABELS = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "model": "Model", "loras": "LoRAs",
    "sampler": "Sampler", "steps": "Steps", "cfg_scale": "CFG scale",
    "distilled_cfg_scale": "Distilled CFG Scale", "seed": "Seed", "width": "Width",
    "height": "Height", "clip_skip": "Clip skip", "emphasis": "Emphasis", "vae": "VAE", "subseed": "Variation seed",
    "subseed_strength": "Variation strength", "seed_resize_from_w": "Seed resize from (width)",
    "seed_resize_from_h": "Seed resize from (height)", "tiling": "Tiling", "controls": "Control units",
    "hires_fix": "Hires fix",
    "hires_scale": "Hires upscale", "hires_resize_w": "Hires resize (width)", "hires_resize_h": "Hires resize (height)",
    "hires_upscaler": "Hires upscaler", "hires_steps": "Hires steps", "hires_denoise": "Hires denoising strength",
    "hires_prompt": "Hires prompt", "hires_negative_prompt": "Hires negative prompt", "hires_sampler": "Hires sampler",
    "few_step": "Few-step", "refiner": "Refiner", "refiner_switch_at": "Refiner switch at",
}  # fmt: skip


def changes(fields: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
    """What applying `fields` to the `current` values would change, as short `old -> new` texts."""
    return [
        Change(name, _short(name, current.get(name)), _short(name, value))
        for name, value in fields.items()
        if current.get(name) != value
    ]


def _short(name: str, value: Any) -> str:
    if name == "loras":
        return ", ".join(f"{ref.name}:{ref.weight:g}" for ref in value or ()) or "none"
    if name in ("seed", "subseed") and value == -1:
        return "random"
    if name == "controls":
        return ", ".join(f"{unit.model}:{unit.weight:g}" for unit in value or ()) or "none"
    if name == "vae" and value == "":
        return "the model's own"
    if name in ("refiner", "few_step") and value == "":
        return "none"
    text = " ".join(str(value).split()) if value is not None else ""
    if not text:
        return "(empty)"
    return text if len(text) <= 40 else text[:39] + "…"
