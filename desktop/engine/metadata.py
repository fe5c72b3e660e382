"""Image metadata: write A1111's `parameters` text and our own JSON; read what other tools wrote.

Writing: `png_text_chunks` gives the PNG text chunks for one image: A1111's `parameters` text, which
every other tool reads, and a `marble` JSON chunk with the complete request, which only we read and
which reproduces the image exactly.

Reading: `read_image_metadata` opens an untrusted PNG, JPEG or WebP file (docs/architecture.md's rules
for untrusted input: type by magic bytes, decompression bombs refused before any pixel is decoded, PNG
text read after `load()`) and understands Marble, A1111, ComfyUI, InvokeAI (v1 to v3+), NovelAI and
Fooocus metadata, best effort. Every failure is an `InvalidRequest` with a sentence a user can act on.

Pure Python and Pillow: no Qt, no torch.
"""

from __future__ import annotations

import io
import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from PIL import Image, PngImagePlugin

from desktop.engine.backends.base import AdapterHash, ControlHash, ModelInfo, RefinerHash, VaeHash
from desktop.engine.backends.hires import canonical_upscaler
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLERS, SCHEDULE_SWITCHES, canonical_sampler
from desktop.engine.control_preprocess import A1111_MODULES, DEFAULT_THRESHOLDS
from desktop.engine.errors import InvalidRequest, MarbleError
from desktop.engine.library.encoder import forge_module_pairs, modules_from_settings
from desktop.engine.library.lora import prompt_with_lora_tags
from desktop.engine.request import EMPHASIS_MODES, ControlUnit, GenerationRequest
from desktop.engine.safe_files import open_regular
from desktop.engine.untrusted_image import open_untrusted

SCHEMA_VERSION = 1
MARBLE_CHUNK = "marble"
PARAMETERS_CHUNK = "parameters"

# Our own cap, so safety never depends on Pillow's global MAX_IMAGE_PIXELS (which any library may
# change). Pillow's own bomb warning, turned into an error below, usually fires first (~89 Mpx).

FORMATS = ("marble", "a1111", "forge", "swarmui", "comfyui", "invokeai", "novelai", "fooocus", "unknown")

_NEGATIVE_PREFIX = "Negative prompt:"
# Library VAEs are safetensors files; A1111 writes `VAE` as the file name.
VAE_EXTENSION = ".safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")


@dataclass(frozen=True)
class ParsedParameters:
    """A1111 `parameters` text split into its parts; `settings` keeps the file's order and spelling."""

    prompt: str
    negative_prompt: str
    settings: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ImageMetadata:
    """What an image says about how it was made.

    `format` names the tool that wrote it (one of FORMATS); `settings` uses A1111's key names where
    the tool has an equivalent; `raw` holds every text chunk as found; `request` is set when a request
    could be rebuilt (exactly for Marble images, best effort for the others).
    """

    format: str
    prompt: str
    negative_prompt: str
    settings: Mapping[str, str]
    raw: Mapping[str, str]
    request: GenerationRequest | None


# --------------------------------------------------------------------------------------------------
# Writing


def format_parameters(
    request: GenerationRequest,
    seed: int,
    model: ModelInfo | None,
    version: str,
    sampler_used: str | None = None,
    batch_pos: int | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    loras: Sequence[AdapterHash] = (),
    embeddings: Sequence[AdapterHash] = (),
    vae: VaeHash | None = None,
    controls: Sequence[ControlHash] = (),
    refiner: RefinerHash | None = None,
) -> str:
    """A1111's `parameters` text for one image made from `request` with `seed`.

    `sampler_used` names the A1111 sampler the model's default scheduler corresponds to; it is only
    used when the request says "default" (without it, `Sampler` is left out rather than guessed).
    `batch_pos` is the image's index within its batch. `extra` pairs (e.g. edit settings), then
    `Lora hashes` and `TI hashes` of the `loras` and `embeddings` used, go just before `Version`, as
    A1111 places its extra generation parameters.
    """
    pairs: list[tuple[str, object]] = [("Steps", request.steps)]
    pairs += _sampler_pairs(request.sampler, sampler_used)
    pairs += [
        # A1111 writes the float as Python's str(): 7.5, and 7.0 for seven.
        ("CFG scale", float(request.cfg_scale)),
        # Forge's key for Flux dev's distilled guidance, right after CFG scale as Forge writes it.
        ("Distilled CFG Scale", float(request.distilled_cfg_scale) if _is_flux_dev(model) else None),
        ("Seed", seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model hash", model.hash if model else None),
        ("Model", _written_model_name(request, model)),
    ]
    pairs += forge_module_pairs(request.text_encoders, request.vae)  # library text encoders, as Forge names them
    if vae is not None:
        # A1111's order and spelling: the hash, then the VAE's file name with its extension.
        pairs += [("VAE hash", vae.autov2), ("VAE", f"{vae.name}{VAE_EXTENSION}")]
    pairs += _variation_pairs(request, seed)
    if request.batch_size > 1:
        pairs += [("Batch size", request.batch_size), ("Batch pos", batch_pos)]
    if request.clip_skip > 1:
        pairs.append(("Clip skip", request.clip_skip))
    if request.emphasis != "Original":  # A1111 writes it only when it is not the default
        pairs.append(("Emphasis", request.emphasis))
    if request.tiling:
        pairs.append(("Tiling", True))
    pairs += hires_pairs(request)
    pairs += refiner_pairs(request, refiner)
    pairs += list((extra or {}).items())
    pairs += control_pairs(request, controls)
    pairs += [("Lora hashes", adapter_hashes_text(loras)), ("TI hashes", adapter_hashes_text(embeddings))]
    pairs.append(("Version", f"marble {version}"))

    settings = ", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs if value not in (None, ""))
    # The panel's LoRAs go into the prompt as tags, as A1111 writes them (the JSON chunk keeps them apart).
    lines = [prompt_with_lora_tags(request.prompt, request.loras)]
    if request.negative_prompt.strip():
        lines.append(f"{_NEGATIVE_PREFIX} {request.negative_prompt}")
    lines.append(settings)
    # A1111 strips the whole text, so an empty prompt does not leave an empty first line.
    return "\n".join(lines).strip()


def _is_flux_dev(model: ModelInfo | None) -> bool:
    # ModelInfo.architecture holds the shipped config's name the model was detected as.
    return model is not None and model.architecture in ("flux-dev", "flux2-dev")


def _variation_pairs(request: GenerationRequest, seed: int) -> list[tuple[str, object]]:
    """A1111's keys, each only when on: this image's variation seed and strength, the seed resize size."""
    pairs: list[tuple[str, object]] = []
    if request.subseed_strength > 0:
        pairs += [("Variation seed", request.subseed_for(seed)),
                  ("Variation seed strength", float(request.subseed_strength))]
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        pairs.append(("Seed resize from", f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"))
    return pairs


def refiner_pairs(request: GenerationRequest, refiner: RefinerHash | None) -> list[tuple[str, object]]:
    """A1111's `Refiner: NAME [hash]` (the hash when there is one file to hash) and `Refiner switch at`."""
    if not request.refiner:
        return []
    name = refiner.name if refiner is not None else request.refiner
    written = f"{name} [{refiner.autov2}]" if refiner is not None and refiner.autov2 else name
    return [("Refiner", written), ("Refiner switch at", f"{float(request.refiner_switch_at):g}")]


def refiner_changes(settings: Mapping[str, str]) -> dict[str, Any] | None:
    """Request fields from A1111's refiner keys (settings keyed in casefold); None without `Refiner`."""
    written = settings.get("refiner", "").strip()
    name = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", written)
    if not name:
        return None
    change: dict[str, Any] = {"refiner": clean_model_name(name) or name}
    if (switch := _to_float(settings.get("refiner switch at"))) is not None:
        change["refiner_switch_at"] = switch
    return change


def hires_pairs(request: GenerationRequest) -> list[tuple[str, object]]:
    """A1111's hires fix keys, in its order, when the hires fix ran: `Denoising strength` (the second
    pass's), `Hires upscale` or `Hires resize`, `Hires steps` (when not "same as steps"), `Hires
    upscaler`, and the hires prompt, negative prompt and sampler when they were given."""
    if not request.hires_active:
        return []
    pairs: list[tuple[str, object]] = [("Denoising strength", f"{float(request.hires_denoise):g}")]
    if request.hires_resize_w or request.hires_resize_h:
        pairs.append(("Hires resize", f"{request.hires_resize_w}x{request.hires_resize_h}"))
    else:
        pairs.append(("Hires upscale", f"{float(request.hires_scale):g}"))
    if request.hires_steps:
        pairs.append(("Hires steps", request.hires_steps))
    pairs.append(("Hires upscaler", request.hires_upscaler))
    if request.hires_prompt:
        pairs.append(("Hires prompt", request.hires_prompt))
    if request.hires_negative_prompt:
        pairs.append(("Hires negative prompt", request.hires_negative_prompt))
    if request.hires_sampler:
        pairs.append(("Hires sampler", request.hires_sampler))
    return pairs


def hires_changes(settings: Mapping[str, str]) -> dict[str, Any] | None:
    """Request fields from A1111's hires keys (settings keyed in casefold), or None when the image was
    not hires-fixed: `Hires upscale` or `Hires resize` says it was. Unreadable values keep the defaults."""
    scale, resize = settings.get("hires upscale"), _to_size(settings.get("hires resize"))
    if scale is None and resize is None:
        return None
    change: dict[str, Any] = {"hires_fix": True}
    if resize is not None:
        change |= {"hires_resize_w": resize[0], "hires_resize_h": resize[1]}
    elif (number := _to_float(scale)) is not None:
        change["hires_scale"] = number
    if (steps := _to_int(settings.get("hires steps"))) is not None:
        change["hires_steps"] = steps
    if (denoise := _to_float(settings.get("denoising strength"))) is not None:
        change["hires_denoise"] = denoise
    if upscaler := settings.get("hires upscaler", "").strip():
        change["hires_upscaler"] = canonical_upscaler(upscaler) or upscaler
    for key, name in (("hires prompt", "hires_prompt"), ("hires negative prompt", "hires_negative_prompt")):
        if key in settings:
            change[name] = settings[key]
    if sampler := settings.get("hires sampler", "").strip():
        # A1111 writes "Use same sampler" when none was picked.
        resolved = resolve_sampler(sampler, settings.get("hires schedule type"))
        if resolved != DEFAULT_SAMPLER:
            change["hires_sampler"] = resolved
    return change


def png_text_chunks(
    request: GenerationRequest,
    seed: int,
    model: ModelInfo | None,
    version: str,
    sampler_used: str | None = None,
    batch_pos: int | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    loras: Sequence[AdapterHash] = (),
    embeddings: Sequence[AdapterHash] = (),
    vae: VaeHash | None = None,
    template: GenerationRequest | None = None,
    controls: Sequence[ControlHash] = (),
    refiner: RefinerHash | None = None,
) -> dict[str, str]:
    """The text chunks to save with one image: A1111's `parameters` and our `marble` JSON.

    `template` is the request as typed when `request` is what was made of it (wildcards chosen): the
    JSON keeps its prompts too, so the image can be made again with other choices."""
    return {
        PARAMETERS_CHUNK: format_parameters(
            request, seed, model, version, sampler_used, batch_pos, extra, loras=loras, embeddings=embeddings,
            vae=vae, controls=controls, refiner=refiner,
        ),
        MARBLE_CHUNK: marble_json(request, seed, model, version, sampler_used, template=template),
    }


def png_info(chunks: Mapping[str, str]) -> PngImagePlugin.PngInfo:
    """A PngInfo for `Image.save(..., pnginfo=...)`; Pillow picks iTXt for text beyond Latin-1."""
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    return info


def marble_json(
    request: GenerationRequest,
    seed: int,
    model: ModelInfo | None,
    version: str,
    sampler_used: str | None = None,
    *,
    template: GenerationRequest | None = None,
) -> str:
    """Our JSON chunk: the complete request with the concrete seed, versioned for migrations."""
    # The model is saved by name, never as a path: names are looked up in the library index, and a
    # shared image should not reveal where its author keeps files.
    concrete = replace(request, seed=seed, model=_written_model_name(request, model))
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "app": "marble",
        "app_version": version,
        "request": concrete.to_dict(),
    }
    if model and model.hash:
        document["model_hash"] = model.hash
    if sampler_used and request.sampler == DEFAULT_SAMPLER:
        document["sampler_used"] = sampler_used
    if template is not None:
        document["prompt_template"] = {"prompt": template.prompt, "negative_prompt": template.negative_prompt}
    # ASCII-only JSON stays a plain tEXt chunk that every PNG reader handles.
    return json.dumps(document, ensure_ascii=True)


def adapter_hashes_text(adapters: Sequence[AdapterHash]) -> str:
    """A1111's `Lora hashes` / `TI hashes` value, `name: hash, name2: hash2` (empty for none): also what
    the history records, so a row and its file's text agree."""
    return ", ".join(f"{adapter.name}: {adapter.autov3}" for adapter in adapters)


def written_sampler(sampler: str, sampler_used: str | None) -> str:
    """The `Sampler` value the parameters text gets for a request's sampler (empty when unknown)."""
    return next((str(value) for key, value in _sampler_pairs(sampler, sampler_used) if key == "Sampler"), "")


def _sampler_pairs(sampler: str, sampler_used: str | None) -> list[tuple[str, object]]:
    name = sampler_used if sampler == DEFAULT_SAMPLER else sampler
    if not name:
        return []
    spec = SAMPLERS.get(canonical_sampler(name) or "")
    if spec is None:
        return [("Sampler", name)]
    # A1111 >= 1.9 writes the Karras/Exponential part as its own `Schedule type`.
    return [("Sampler", spec.base_name), ("Schedule type", spec.schedule or None)]


def _written_model_name(request: GenerationRequest, model: ModelInfo | None) -> str:
    return model.name if model is not None else clean_model_name(request.model)


def _quote(text: str) -> str:
    """A1111's rule: quote a value as JSON when a comma, colon or newline would break the line."""
    if any(mark in text for mark in (",", ":", "\n", "\r")):
        return json.dumps(text, ensure_ascii=False)
    return text


def clean_model_name(value: str) -> str:
    """A model name fit for metadata and library lookups: no folders, no weights extension.

    Applied to names we write and names we read, so a file can never steer a lookup into a path.
    """
    name = re.split(r"[\\/]", str(value).strip())[-1]
    name = "".join(char for char in name if char.isprintable()).strip()
    lowered = name.casefold()
    for suffix in _WEIGHT_SUFFIXES:
        if lowered.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return "" if name in (".", "..") else name


# --------------------------------------------------------------------------------------------------
# A1111 `parameters` text


def parse_parameters(text: str) -> ParsedParameters:
    """Split A1111 `parameters` text into prompt, negative prompt and the settings line.

    Never raises: text that does not look like A1111's comes back whole as the prompt.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        return ParsedParameters("", "", MappingProxyType({}))
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")

    settings: dict[str, str] = {}
    pairs = _split_pairs(lines[-1].strip())
    if pairs is not None and _looks_like_settings(pairs):
        settings = dict(pairs)
        lines = lines[:-1]

    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.lstrip().startswith(_NEGATIVE_PREFIX):
            rest = line.lstrip()[len(_NEGATIVE_PREFIX) :]
            negative_lines = [rest[1:] if rest.startswith(" ") else rest]
        elif negative_lines is None:
            prompt_lines.append(line)
        else:
            negative_lines.append(line)

    if not settings and negative_lines is None:
        return ParsedParameters(text, "", MappingProxyType({}))
    negative = "\n".join(negative_lines or [])
    return ParsedParameters("\n".join(prompt_lines), negative, MappingProxyType(settings))


# A key as A1111 and its extensions write them: "Steps", "Schedule type", "Hires upscale", "TI hashes".
_KEY = re.compile(r"[^\W_][\w \-/().+]*\Z")
_JSON = json.JSONDecoder()


def _split_pairs(line: str) -> list[tuple[str, str]] | None:
    """`key: value, key: "quoted, value", ...` as pairs, or None when the line does not start so.

    A segment without a key is an unquoted value that contained a comma: it is glued back on.
    Linear in the line's length, since a hostile file may hold a megabyte of commas.
    """
    pairs: list[tuple[str, list[str]]] = []
    pos, end, colon = 0, len(line), -1
    while pos < end:
        if colon < pos:
            # Search again only once the last colon found is behind us; `end` means there is none.
            colon = line.find(":", pos)
            colon = end if colon == -1 else colon
        comma = line.find(",", pos)
        is_pair = colon < end and (comma == -1 or colon < comma)
        if is_pair and _KEY.match(key := line[pos:colon].strip()):
            value, pos = _read_value(line, colon + 1)
            pairs.append((key, [value]))
            continue
        stop = comma if comma != -1 else end
        if line[pos:stop].strip():
            if not pairs:
                return None
            pairs[-1][1].append(line[pos:stop])
        pos = stop + 1
    return [(key, ",".join(parts).rstrip()) for key, parts in pairs]


def _read_value(line: str, pos: int) -> tuple[str, int]:
    """One value starting at `pos`; returns it and the position after its comma."""
    while pos < len(line) and line[pos] == " ":
        pos += 1
    if line.startswith('"', pos):
        try:
            value, after = _JSON.raw_decode(line, pos)
        except ValueError:
            value, after = None, pos
        while after < len(line) and line[after] == " ":
            after += 1
        if isinstance(value, str) and (after == len(line) or line[after] == ","):
            return value, after + 1
    comma = line.find(",", pos)
    stop = comma if comma != -1 else len(line)
    return line[pos:stop].strip(), stop + 1


def _looks_like_settings(pairs: list[tuple[str, str]]) -> bool:
    # A1111 always writes Steps; three clean pairs is A1111's own test for texts from other tools.
    return any(key.casefold() == "steps" for key, _ in pairs) or len(pairs) >= 3


def request_from_parameters(parsed: ParsedParameters, model_fallback: str) -> GenerationRequest:
    """A request from parsed A1111 settings; values that are missing or invalid keep the defaults."""
    settings = {key.strip().casefold(): value for key, value in parsed.settings.items()}
    model = clean_model_name(settings.get("model", "")) or model_fallback
    request = GenerationRequest(prompt=parsed.prompt, model=model, negative_prompt=parsed.negative_prompt)

    changes: list[dict[str, Any]] = []
    if (steps := _to_int(settings.get("steps"))) is not None:
        changes.append({"steps": steps})
    if "sampler" in settings:
        changes.append({"sampler": resolve_sampler(settings["sampler"], settings.get("schedule type"))})
    if (cfg := _to_float(settings.get("cfg scale"))) is not None:
        changes.append({"cfg_scale": cfg})
    if (distilled := _to_float(settings.get("distilled cfg scale"))) is not None:
        changes.append({"distilled_cfg_scale": distilled})
    if (seed := _to_int(settings.get("seed"))) is not None:
        changes.append({"seed": seed})
    if (size := _to_size(settings.get("size"))) is not None:
        changes.append({"width": size[0], "height": size[1]})
    if (clip_skip := _to_int(settings.get("clip skip"))) is not None:
        changes.append({"clip_skip": clip_skip})
    emphasis = settings.get("emphasis", "").strip().casefold()
    if known := next((mode for mode in EMPHASIS_MODES if mode.casefold() == emphasis), None):
        changes.append({"emphasis": known})
    changes += _variation_changes(settings)
    if vae_name := vae_library_name(settings.get("vae", "")):
        changes.append({"vae": vae_name})
    if modules := modules_from_settings(settings, vae_name):
        changes.append({"text_encoders": modules})
    if (hires := hires_changes(settings)) is not None:
        changes.append(hires)
    if (refined := refiner_changes(settings)) is not None:
        changes.append(refined)
    for change in changes:
        request = _apply_if_valid(request, change)
    return request


def _variation_changes(settings: Mapping[str, str]) -> list[dict[str, Any]]:
    """Variation seed, its strength (one change: a strength alone would draw a random subseed),
    seed resize and tiling from A1111's keys."""
    changes: list[dict[str, Any]] = []
    subseed, strength = _to_int(settings.get("variation seed")), _to_float(settings.get("variation seed strength"))
    if subseed is not None and strength is not None:
        changes.append({"subseed": subseed, "subseed_strength": strength})
    if (resize := _to_size(settings.get("seed resize from"))) is not None:
        changes.append({"seed_resize_from_w": resize[0], "seed_resize_from_h": resize[1]})
    if settings.get("tiling", "").strip().casefold() == "true":
        changes.append({"tiling": True})
    return changes


def vae_library_name(written: str) -> str:
    """The library name in a `VAE` value: A1111 writes the file name (`vae-ft-mse.safetensors`); "None"
    and "Automatic" mean the model's own VAE."""
    name = written.strip()
    if name.casefold() in ("none", "automatic", "auto"):
        return ""
    if name.casefold().endswith(_WEIGHT_SUFFIXES):
        name = name.rpartition(".")[0]
    return name.strip()


def _apply_if_valid(request: GenerationRequest, change: dict[str, Any]) -> GenerationRequest:
    candidate = replace(request, **change)
    # Validate with a neutral prompt and model so only the changed numbers can fail: a bad prompt is
    # for the caller's validation to report, not a reason to drop the seed.
    try:
        replace(candidate, prompt="", negative_prompt="", model="m").validate()
    except InvalidRequest:
        return request
    return candidate


def _to_int(value: object) -> int | None:
    number = _to_float(value)
    if number is None or not number.is_integer():
        return None
    text = str(value).strip()
    # Large seeds must stay exact, so parse whole numbers as int rather than through the float.
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else int(number)


def _to_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except (ValueError, OverflowError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _to_size(value: object) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d{1,6})\s*[x×]\s*(\d{1,6})\s*", str(value or ""))
    return (int(match[1]), int(match[2])) if match else None


# Sampler identifiers of k-diffusion, ComfyUI, InvokeAI, NovelAI and Fooocus, as A1111 names.
_TOOL_SAMPLERS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "dpm2": "DPM2",
    "dpm_2": "DPM2",
    "kdpm_2": "DPM2",
    "dpm2_a": "DPM2 a",
    "dpm_2_a": "DPM2 a",
    "kdpm_2_a": "DPM2 a",
    "dpm_2_ancestral": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
    "pndm": "PLMS",
    "unipc": "UniPC",
    "uni_pc": "UniPC",
    "lcm": "LCM",
}


def resolve_sampler(name: str, schedule_type: str | None = None) -> str:
    """Our sampler name for what a file says (A1111 or another tool's identifier), else "default".

    When the Karras (or Exponential) variant is not one we have, the plain sampler is the closest
    reproduction.
    """
    name = _a1111_sampler_name(str(name))
    for schedule in SCHEDULE_SWITCHES:
        if _is_schedule(schedule_type, schedule) or name.endswith(f" {schedule}"):
            found = canonical_sampler(name, schedule)
            if found:
                return found
            name = name.removesuffix(f" {schedule}")
    return canonical_sampler(name) or DEFAULT_SAMPLER


def _a1111_sampler_name(name: str) -> str:
    key = name.strip().casefold().replace(" ", "_")
    for prefix in ("sample_", "k_"):
        key = key.removeprefix(prefix)
    key = key.removesuffix("_gpu")
    if key in _TOOL_SAMPLERS:
        return _TOOL_SAMPLERS[key]
    for suffix in ("_karras", "_k"):
        if key.endswith(suffix) and key[: -len(suffix)] in _TOOL_SAMPLERS:
            return f"{_TOOL_SAMPLERS[key[: -len(suffix)]]} Karras"
    return name.strip()


def _is_schedule(schedule_type: str | None, schedule: str) -> bool:
    return bool(schedule_type) and str(schedule_type).strip().casefold() == schedule.casefold()


# --------------------------------------------------------------------------------------------------
# The marble chunk


def from_marble_json(text: str) -> GenerationRequest:
    """The exact request from our `marble` chunk, migrated forward; unknown keys are ignored."""
    try:
        document = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise InvalidRequest("The Marble metadata in this image is not valid JSON.") from None
    if not isinstance(document, dict):
        raise InvalidRequest("The Marble metadata in this image is not a JSON object.")
    version = document.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidRequest(f"The Marble metadata has an unknown schema version {version!r}.")
    document = _migrate(document, version)
    data = document.get("request")
    if not isinstance(data, dict):
        raise InvalidRequest("The Marble metadata in this image has no request.")
    text_fields = ("prompt", "negative_prompt", "model", "sampler", "device", "precision")
    if any(key in data and not isinstance(data[key], str) for key in text_fields):
        raise InvalidRequest("The Marble metadata in this image has a malformed request.")
    if data.get("model_config") is not None and not isinstance(data["model_config"], str):
        raise InvalidRequest("The Marble metadata in this image has a malformed model config.")
    if data.get("tokenizer_folder") is not None and not isinstance(data["tokenizer_folder"], str):
        raise InvalidRequest("The Marble metadata in this image has a malformed tokenizer folder.")
    return GenerationRequest.from_dict(data).validate()


def typed_prompt(raw: Mapping[str, str]) -> str:
    """The prompt as the user typed it, from our chunk's `prompt_template`, when the image was made from another
    (wildcards chosen, or FLUX.3's prompt rewriter's caption); "" when it was made from the prompt as typed, or the
    chunk does not say."""
    try:
        document = json.loads(raw.get(MARBLE_CHUNK, ""))
    except (ValueError, TypeError, RecursionError):
        return ""
    template = document.get("prompt_template") if isinstance(document, dict) else None
    request = document.get("request") if isinstance(document, dict) else None
    typed = template.get("prompt") if isinstance(template, dict) else None
    made = request.get("prompt") if isinstance(request, dict) else None
    return typed if isinstance(typed, str) and typed != made else ""


# Version n -> n + 1. A newer file (a later Marble) is read as is: unknown keys are ignored.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _migrate(document: dict[str, Any], version: int) -> dict[str, Any]:
    while version < SCHEMA_VERSION:
        document = _MIGRATIONS[version](document)
        version += 1
    return document


# --------------------------------------------------------------------------------------------------
# Reading image files


def read_image_metadata(source: str | Path | bytes, model_fallback: str = "") -> ImageMetadata:
    """Metadata of a PNG, JPEG or WebP file (a path, or the file's bytes).

    `model_fallback` becomes the rebuilt request's model when the file names none. Raises
    InvalidRequest for anything that is not a readable image of those types.
    """
    return interpret_chunks(read_text_chunks(source), model_fallback)


def read_text_chunks(source: str | Path | bytes) -> dict[str, str]:
    """Every text chunk of a PNG; for JPEG and WebP, A1111's `parameters` from EXIF."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_stream(io.BytesIO(bytes(source)), "The image data")
    path = Path(source)
    # Only a regular file: a FIFO or a link to a device would hang or never end.
    stream = open_regular(path, label=path.name, error=InvalidRequest)
    assert stream is not None
    with stream:
        return _read_stream(stream, path.name)


def _read_stream(stream: BinaryIO, label: str) -> dict[str, str]:
    with open_untrusted(stream, label) as (image, image_format):
        return _text_of(image, image_format)


def _text_of(image: Image.Image, image_format: str) -> dict[str, str]:
    if image_format == "PNG":
        # Text chunks may follow the image data; Pillow reads those only while loading the pixels.
        image.load()
        text = getattr(image, "text", None) or {}
        return {str(key): str(value) for key, value in text.items()}
    chunks: dict[str, str] = {}
    try:
        user_comment = image.getexif().get_ifd(0x8769).get(0x9286)
    except Exception:
        # Broken EXIF in an otherwise fine photo: there is simply no metadata to show.
        user_comment = None
    parameters = _decode_user_comment(user_comment)
    comment = image.info.get("comment")
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", "replace")
    if isinstance(comment, str) and comment.strip("\x00 \n"):
        chunks["comment"] = comment
    parameters = parameters or chunks.get("comment")
    if parameters:
        chunks[PARAMETERS_CHUNK] = parameters
    return chunks


def _decode_user_comment(value: object) -> str | None:
    """EXIF UserComment: an 8-byte charset tag, then the text (A1111: UNICODE, UTF-16 big-endian)."""
    if isinstance(value, str):
        return value.strip("\x00") or None
    if not isinstance(value, (bytes, bytearray)):
        return None
    tag, body = bytes(value[:8]), bytes(value[8:])
    if tag == b"UNICODE\x00":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", "replace")
        else:
            # No byte-order mark: Latin text in UTF-16 has its zero bytes first when big-endian.
            little = body[1::2].count(0) > body[0::2].count(0)
            text = body[: len(body) // 2 * 2].decode("utf-16-le" if little else "utf-16-be", "replace")
    elif tag in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        text = body.decode("utf-8", "replace")
    else:
        text = bytes(value).decode("utf-8", "replace")
    return text.strip("\x00") or None


# --------------------------------------------------------------------------------------------------
# Understanding the chunks


@dataclass(frozen=True)
class _Found:
    format: str
    parsed: ParsedParameters
    request: GenerationRequest | None = None


def interpret_chunks(raw: Mapping[str, str], model_fallback: str = "") -> ImageMetadata:
    """ImageMetadata from text chunks, trying each tool's format in turn; never raises."""
    raw = MappingProxyType(dict(raw))
    for reader in _READERS:
        try:
            found = reader(raw)
        except (MarbleError, ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError):
            # One tool's malformed chunk must not hide what another chunk says.
            found = None
        if found is not None:
            return _finish(found, raw, model_fallback)
    return ImageMetadata("unknown", "", "", MappingProxyType({}), raw, None)


def _finish(found: _Found, raw: Mapping[str, str], model_fallback: str) -> ImageMetadata:
    parsed = found.parsed
    request = found.request
    if request is None and (parsed.prompt or parsed.settings):
        request = request_from_parameters(parsed, model_fallback)
    return ImageMetadata(found.format, parsed.prompt, parsed.negative_prompt, parsed.settings, raw, request)


def _read_marble(raw: Mapping[str, str]) -> _Found | None:
    if MARBLE_CHUNK not in raw:
        return None
    request = from_marble_json(raw[MARBLE_CHUNK])
    if PARAMETERS_CHUNK in raw:
        settings = parse_parameters(raw[PARAMETERS_CHUNK]).settings
    else:
        settings = parse_parameters(format_parameters(request, request.seed, None, "?")).settings
    return _Found("marble", ParsedParameters(request.prompt, request.negative_prompt, settings), request)


def _read_parameters(raw: Mapping[str, str]) -> _Found | None:
    text = raw.get(PARAMETERS_CHUNK)
    if text is None:
        return None
    fooocus = "fooocus_scheme" in raw
    if text.lstrip().startswith("{"):
        data = _json_object(text)
        if data is not None and isinstance(data.get("sui_image_params"), dict):
            return _swarmui(data["sui_image_params"])
        return _fooocus(data) if data is not None else None
    parsed = parse_parameters(text)
    if fooocus:
        return _Found("fooocus", parsed)
    # Forge writes A1111's text; its version reads like "f2.0.1v1.10.1-previous-...".
    forge = re.match(r"f\d", parsed.settings.get("Version", ""))
    return _Found("forge" if forge else "a1111", parsed)


def _swarmui(data: dict[str, Any]) -> _Found:
    """SwarmUI's `parameters` JSON: {"sui_image_params": {"prompt", "negativeprompt", "cfgscale", ...}}."""
    settings = _settings(
        steps=data.get("steps"),
        sampler=(data.get("sampler"), data.get("scheduler")),
        cfg=data.get("cfgscale"),
        seed=data.get("seed"),
        size=(data.get("width"), data.get("height")),
        model=data.get("model"),
        clip_skip=data.get("clipstopatlayer") and abs(_to_int(data.get("clipstopatlayer")) or 1),
        version=data.get("swarm_version"),
    )
    loras, weights = data.get("loras"), data.get("loraweights")
    if isinstance(loras, list) and loras:
        weights = weights if isinstance(weights, list) else []
        tags = [
            f"<lora:{clean_model_name(str(name))}:{weights[i] if i < len(weights) else 1}>"
            for i, name in enumerate(loras)
        ]
        # A1111's way of naming LoRAs, so one recipe reader handles both.
        prompt = " ".join([str(data.get("prompt") or ""), *tags]).strip()
    else:
        prompt = data.get("prompt")
    return _Found("swarmui", _parsed(prompt, data.get("negativeprompt"), settings))


def _fooocus(data: dict[str, Any]) -> _Found:
    size = re.findall(r"\d+", str(data.get("resolution", "")))
    settings = _settings(
        steps=data.get("steps"),
        sampler=(data.get("sampler"), data.get("scheduler")),
        cfg=data.get("guidance_scale"),
        seed=data.get("seed"),
        size=(size[0], size[1]) if len(size) == 2 else None,
        model=data.get("base_model"),
        model_hash=data.get("base_model_hash"),
        clip_skip=data.get("clip_skip"),
        version=data.get("version"),
    )
    return _Found("fooocus", _parsed(data.get("prompt"), data.get("negative_prompt"), settings))


def _read_comfyui(raw: Mapping[str, str]) -> _Found | None:
    graph = _json_object(raw.get("prompt", ""))
    if graph is None or not any(isinstance(node, dict) and "class_type" in node for node in graph.values()):
        return None
    sampler_id = _comfy_sampler(graph)
    if sampler_id is None:
        return _Found("comfyui", ParsedParameters("", "", MappingProxyType({})))
    inputs = graph[sampler_id].get("inputs", {})
    latent = _comfy_node(graph, inputs.get("latent_image"), ("width",), set())
    size = None
    if latent is not None:
        size = (latent.get("width"), latent.get("height"))
    checkpoint = _comfy_node(graph, inputs.get("model"), ("ckpt_name", "unet_name"), set())
    settings = _settings(
        steps=_comfy_value(graph, inputs.get("steps")),
        sampler=(
            _comfy_value(graph, inputs.get("sampler_name")),
            _comfy_value(graph, inputs.get("scheduler")),
        ),
        cfg=_comfy_value(graph, inputs.get("cfg")),
        seed=_comfy_value(graph, inputs.get("seed", inputs.get("noise_seed"))),
        size=size,
        model=(checkpoint or {}).get("ckpt_name") or (checkpoint or {}).get("unet_name"),
    )
    if checkpoint is not None and "unet_name" in checkpoint and "ckpt_name" not in checkpoint:
        settings |= _comfy_components(graph, inputs.get("positive"))
    positive = _comfy_text(graph, inputs.get("positive"), set())
    negative = _comfy_text(graph, inputs.get("negative"), set())
    return _Found("comfyui", _parsed(positive, negative, settings))


# The inputs ComfyUI's text-encoder loaders name their files by (CLIPLoader's clip_name; Dual-, Triple- and
# QuadrupleCLIPLoader's clip_name1 ... 4; their GGUF nodes alike).
_COMFY_CLIP_NAMES = ("clip_name", "clip_name1", "clip_name2", "clip_name3", "clip_name4")


def _comfy_components(graph: dict[str, Any], positive: object) -> dict[str, str]:
    """A transformer-only model's text encoders and VAE (UNETLoader's separate files) as Forge writes them: `VAE` and
    `Module N` (the VAE first, then the encoders in the loader's order), so a recipe restores them as library names."""
    clip = _comfy_node(graph, positive, _COMFY_CLIP_NAMES, set()) or {}
    encoders = [clean_model_name(clip[key]) for key in _COMFY_CLIP_NAMES if isinstance(clip.get(key), str)]
    names = ",".join(name for name in encoders if name and "," not in name)
    vae = ""
    for node_id in sorted(graph, key=_numeric_id):  # the first VAELoader by id, as the first sampler
        node = graph[node_id]
        if not isinstance(node, dict) or node.get("class_type") != "VAELoader":
            continue
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("vae_name"), str):
            vae = clean_model_name(inputs["vae_name"])
            break
    found = {"VAE": vae} if vae else {}
    return found | dict(forge_module_pairs(names, vae)) if names else found


_COMFY_SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")


def _comfy_sampler(graph: dict[str, Any]) -> str | None:
    """The first sampler node (by id: a hires pass comes later); stock classes before custom ones."""
    candidates = []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        kind = str(node.get("class_type", ""))
        if kind in _COMFY_SAMPLERS or {"positive", "negative"} <= node["inputs"].keys():
            rank = 0 if kind in _COMFY_SAMPLERS else 1
            candidates.append((rank, _numeric_id(node_id), str(node_id)))
    return min(candidates)[2] if candidates else None


def _numeric_id(node_id: object) -> tuple[int, str]:
    text = str(node_id)
    return (int(text), "") if text.isdigit() else (1 << 62, text)


def _is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))


def _comfy_node(
    graph: dict[str, Any], link: object, wanted: tuple[str, ...], seen: set[str], depth: int = 0
) -> dict[str, Any] | None:
    """Follow links upstream to the first node whose inputs hold one of `wanted` as a plain value."""
    if not _is_link(link) or depth > 20 or str(link[0]) in seen:
        return None
    seen.add(str(link[0]))
    node = graph.get(str(link[0]))
    inputs = node.get("inputs") if isinstance(node, dict) else None
    if not isinstance(inputs, dict):
        return None
    if any(key in inputs and not _is_link(inputs[key]) for key in wanted):
        return inputs
    for value in inputs.values():
        found = _comfy_node(graph, value, wanted, seen, depth + 1)
        if found is not None:
            return found
    return None


def _comfy_value(graph: dict[str, Any], value: object) -> object:
    """A plain input, or the value of the primitive node it is linked to."""
    if not _is_link(value):
        return value
    keys = ("value", "seed", "int", "float", "string")
    inputs = _comfy_node(graph, value, keys, set())
    if inputs is None:
        return None
    return next((inputs[key] for key in keys if key in inputs and not _is_link(inputs[key])), None)


_COMFY_TEXT_KEYS = ("text", "text_g", "prompt", "string", "value", "text_l")


def _comfy_text(graph: dict[str, Any], link: object, seen: set[str], depth: int = 0) -> str | None:
    """The prompt text feeding a conditioning input, following encoders, combiners and primitives."""
    if not _is_link(link) or depth > 20 or str(link[0]) in seen:
        return None
    seen.add(str(link[0]))
    node = graph.get(str(link[0]))
    inputs = node.get("inputs") if isinstance(node, dict) else None
    if not isinstance(inputs, dict):
        return None
    for key in _COMFY_TEXT_KEYS:
        if isinstance(inputs.get(key), str):
            return inputs[key]
        if key in inputs and (text := _comfy_text(graph, inputs[key], seen, depth + 1)) is not None:
            return text
    for value in inputs.values():
        if (text := _comfy_text(graph, value, seen, depth + 1)) is not None:
            return text
    return None


def _read_invokeai(raw: Mapping[str, str]) -> _Found | None:
    if "invokeai_metadata" in raw:
        return _invokeai_v3(_json_object(raw["invokeai_metadata"]) or {})
    if "sd-metadata" in raw:
        return _invokeai_v2(_json_object(raw["sd-metadata"]) or {})
    if "Dream" in raw:
        return _invokeai_v1(raw["Dream"])
    return None


def _invokeai_v3(data: dict[str, Any]) -> _Found | None:
    if not data:
        return None
    model = data.get("model")
    if isinstance(model, dict):
        model = model.get("model_name") or model.get("name")
    settings = _settings(
        steps=data.get("steps"),
        sampler=(data.get("scheduler"), None),
        cfg=data.get("cfg_scale"),
        seed=data.get("seed"),
        size=(data.get("width"), data.get("height")),
        model=model,
        clip_skip=data.get("clip_skip"),
    )
    return _Found("invokeai", _parsed(data.get("positive_prompt"), data.get("negative_prompt"), settings))


def _invokeai_v2(data: dict[str, Any]) -> _Found | None:
    image = data.get("image")
    if not isinstance(image, dict):
        return None
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        # A part without a prompt (a weight alone) adds nothing, not an empty ", , " piece.
        prompt = ", ".join(str(part["prompt"]) for part in prompt if isinstance(part, dict) and part.get("prompt"))
    positive, negative = _split_invoke_negative(str(prompt or ""))
    settings = _settings(
        steps=image.get("steps"),
        sampler=(image.get("sampler"), None),
        cfg=image.get("cfg_scale"),
        seed=image.get("seed"),
        size=(image.get("width"), image.get("height")),
        model=data.get("model_weights"),
        version=data.get("app_version"),
    )
    return _Found("invokeai", _parsed(positive, negative, settings))


_DREAM_OPTIONS = {
    "-s": "steps", "--steps": "steps",
    "-S": "seed", "--seed": "seed",
    "-W": "width", "--width": "width",
    "-H": "height", "--height": "height",
    "-C": "cfg", "--cfg_scale": "cfg",
    "-A": "sampler", "-m": "sampler", "--sampler": "sampler",
}  # fmt: skip


def _invokeai_v1(text: str) -> _Found | None:
    """InvokeAI 1.x `Dream` text: `"prompt" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms`."""
    match = re.match(r'\s*"((?:[^"\\]|\\.)*)"(.*)\Z', text, re.S)
    if match:
        prompt, rest = re.sub(r"\\(.)", r"\1", match[1]), match[2]
    else:
        prompt, _, rest = text.partition(" -")
        rest = "-" + rest if rest else ""
    try:
        tokens = shlex.split(rest)
    except ValueError:
        tokens = rest.split()
    # Each flag takes the token after it; pairs overlap on purpose, so the lengths differ by one.
    pairs = zip(tokens, tokens[1:], strict=False)
    options = {_DREAM_OPTIONS[flag]: value for flag, value in pairs if flag in _DREAM_OPTIONS}
    positive, negative = _split_invoke_negative(prompt)
    settings = _settings(
        steps=options.get("steps"),
        sampler=(options.get("sampler"), None),
        cfg=options.get("cfg"),
        seed=options.get("seed"),
        size=(options.get("width"), options.get("height")),
    )
    return _Found("invokeai", _parsed(positive, negative, settings))


def _split_invoke_negative(prompt: str) -> tuple[str, str]:
    """InvokeAI 1.x and 2.x put the negative prompt inside the prompt, in square brackets."""
    negative = [part.strip() for part in re.findall(r"\[([^\[\]]*)\]", prompt)]
    positive = re.sub(r"\s*\[[^\[\]]*\]", "", prompt).strip()
    return positive, ", ".join(part for part in negative if part)


def _read_novelai(raw: Mapping[str, str]) -> _Found | None:
    data = _json_object(raw.get("Comment", ""))
    if data is None or not (raw.get("Software") == "NovelAI" or {"uc", "scale"} & data.keys()):
        return None
    settings = _settings(
        steps=data.get("steps"),
        sampler=(data.get("sampler"), None),
        cfg=data.get("scale"),
        seed=data.get("seed"),
        size=(data.get("width"), data.get("height")),
        source=raw.get("Source"),
    )
    prompt = data.get("prompt") if isinstance(data.get("prompt"), str) else raw.get("Description", "")
    return _Found("novelai", _parsed(prompt, data.get("uc"), settings))


_READERS: tuple[Callable[[Mapping[str, str]], _Found | None], ...] = (
    _read_marble,
    _read_parameters,
    _read_comfyui,
    _read_invokeai,
    _read_novelai,
)


def _json_object(text: object) -> dict[str, Any] | None:
    if not isinstance(text, str) or not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _parsed(prompt: object, negative: object, settings: Mapping[str, str]) -> ParsedParameters:
    return ParsedParameters(
        prompt if isinstance(prompt, str) else "",
        negative if isinstance(negative, str) else "",
        MappingProxyType(dict(settings)),
    )


def _settings(
    *,
    steps: object = None,
    sampler: tuple[object, object] = (None, None),
    cfg: object = None,
    seed: object = None,
    size: tuple[object, object] | None = None,
    model: object = None,
    model_hash: object = None,
    clip_skip: object = None,
    version: object = None,
    source: object = None,
) -> dict[str, str]:
    """Another tool's values under A1111's key names, in A1111's order; missing values left out."""
    pairs: list[tuple[str, object]] = [("Steps", steps), *_display_sampler(*sampler), ("CFG scale", cfg)]
    pairs.append(("Seed", seed))
    if size is not None and all(_to_int(side) is not None for side in size):
        pairs.append(("Size", f"{_to_int(size[0])}x{_to_int(size[1])}"))
    pairs += [("Model hash", model_hash), ("Model", clean_model_name(str(model)) if model else None)]
    pairs += [("Clip skip", clip_skip), ("Source", source), ("Version", version)]
    return {key: _as_text(value) for key, value in pairs if value is not None and _as_text(value) != ""}


def _display_sampler(name: object, scheduler: object) -> Iterable[tuple[str, object]]:
    if not isinstance(name, str) or not name.strip():
        return []
    schedule = scheduler if isinstance(scheduler, str) and scheduler.strip() else None
    resolved = resolve_sampler(name, schedule)
    if resolved == DEFAULT_SAMPLER:
        return [("Sampler", name), ("Schedule type", schedule)]
    spec = SAMPLERS[resolved]
    return [("Sampler", spec.base_name), ("Schedule type", spec.schedule or schedule)]


def _as_text(value: object) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# --------------------------------------------------------------------------------------------------
# ControlNet units, as A1111's ControlNet extension writes them

CONTROL_MODE_NAMES = {
    "balanced": "Balanced", "prompt": "My prompt is more important", "control": "ControlNet is more important",
}  # fmt: skip
_CONTROL_KEY = re.compile(r"controlnet (\d+)\Z", re.IGNORECASE)
# The extension's value is itself `Key: value, Key: value`; split before each known key.
_CONTROL_FIELD = re.compile(
    r",\s*(?=(?:Module|Model|Weight|Resize Mode|Low Vram|Processor Res|Threshold A|Threshold B|Guidance Start|"
    r"Guidance End|Pixel Perfect|Control Mode|Hr Option|Save Detected Map)\s*:)"
)
_CONTROL_MODEL = re.compile(r"(?P<name>.*?)\s*(?:\[(?P<hash>[0-9a-fA-F]{8,64})\])?\s*\Z")


@dataclass(frozen=True)
class ParsedControl:
    """One `ControlNet N` entry read back: the unit (its image is not in the file: ""), the model's
    hash in brackets and the extension's module name."""

    index: int
    unit: ControlUnit
    model_hash: str
    module: str


def control_pairs(request: GenerationRequest, controls: Sequence[ControlHash]) -> list[tuple[str, str]]:
    """`ControlNet 0`, `ControlNet 1`, ... for the request's units, in the extension's words and order.

    The model is written `name [hash]` with A1111's old 8-hex model hash, as the extension names models.
    Marble fits control images by cropping and resizing ("Crop and Resize") and runs the preprocessor at
    the working size (Processor Res: the shorter side); it has no pixel-perfect mode."""
    hashes = {index: entry for index, entry in enumerate(controls)}
    pairs = []
    for index, unit in enumerate(request.controls):
        entry = hashes.get(index)
        model = f"{unit.model} [{entry.hash}]" if entry is not None and entry.hash else unit.model
        default_a, default_b = DEFAULT_THRESHOLDS.get(unit.preprocessor, (-1.0, -1.0))
        a = unit.threshold_a if unit.threshold_a >= 0 else default_a
        b = unit.threshold_b if unit.threshold_b >= 0 else default_b
        fields = [
            ("Module", entry.module if entry is not None and entry.module else
             A1111_MODULES.get(unit.preprocessor, unit.preprocessor)), ("Model", model),
            ("Weight", float(unit.weight)), ("Resize Mode", "Crop and Resize"),
            ("Processor Res", min(request.width, request.height)), ("Threshold A", float(a)),
            ("Threshold B", float(b)), ("Guidance Start", float(unit.start)), ("Guidance End", float(unit.end)),
            ("Pixel Perfect", False), ("Control Mode", CONTROL_MODE_NAMES.get(unit.mode, unit.mode)),
        ]  # fmt: skip
        pairs.append((f"ControlNet {index}", ", ".join(f"{key}: {value}" for key, value in fields)))
    return pairs


def parse_control_units(settings: Mapping[str, str]) -> list[ParsedControl]:
    """The `ControlNet N` entries of A1111 settings, in order; entries that do not parse are skipped.

    Values out of range are clamped to what a unit takes; the module is kept as written (the recipe
    decides whether Marble has that preprocessor)."""
    found = []
    for key, value in settings.items():
        match = _CONTROL_KEY.match(key.strip())
        if match is None or not isinstance(value, str):
            continue
        fields = {}
        for part in _CONTROL_FIELD.split(value.strip()):
            name, sep, rest = part.partition(":")
            if sep:
                fields[name.strip().casefold()] = rest.strip()
        model = _CONTROL_MODEL.match(fields.get("model", ""))
        name = clean_model_name(model["name"]) if model else ""
        if not name or name.casefold() == "none":
            continue
        mode_text = fields.get("control mode", "").casefold()
        mode = next((m for m, label in CONTROL_MODE_NAMES.items() if label.casefold() == mode_text), "balanced")

        start = _clamped(fields, "guidance start", 0.0, 0.0, 1.0)
        unit = ControlUnit(
            model=name,
            image="",
            weight=_clamped(fields, "weight", 1.0, 0.0, 2.0),
            start=start,
            end=_clamped(fields, "guidance end", 1.0, start, 1.0),
            mode=mode,
            preprocessor="none",
            threshold_a=_clamped(fields, "threshold a", -1.0, -1.0, 1e6),
            threshold_b=_clamped(fields, "threshold b", -1.0, -1.0, 1e6),
        )
        found.append(ParsedControl(int(match[1]), unit, (model["hash"] or "").casefold() if model else "",
                                   fields.get("module", "none")))  # fmt: skip
    return sorted(found, key=lambda parsed: parsed.index)


def _clamped(fields: Mapping[str, str], label: str, default: float, low: float, high: float) -> float:
    value = _to_float(fields.get(label))
    return default if value is None else min(max(value, low), high)
