"""XLabs' Flux.1 IP-Adapter in image-prompt units (the ip-adapter preprocessor with an XLabs file as the model): a
reference picture steering a Flux.1 job through extra keys and values in the transformer's double blocks.

The file (library/ip_adapter.py: `ip_adapter_proj_model.*` and `double_blocks.N.processor.ip_adapter_double_stream_
k_proj / v_proj`) is renamed as diffusers' own loader renames it when it reads such a file, and handed to the
pipeline's `load_ip_adapter`, which puts FluxIPAdapterAttnProcessor in the double blocks; the unit's weight is
`set_ip_adapter_scale`. The picture is encoded here, with the control library's CLIP image encoder whose projection
the adapter reads (OpenAI's ViT-L/14, 768 wide, for XLabs' files) and the processor diffusers would make for it, as
the pipelines' `encode_image` does; the embeddings (and a black picture's, which diffusers' true CFG reads against)
go to whichever Flux pipeline runs, the hires pass's too. After the job `unload_ip_adapter` puts the processors back.

One unit, one picture, at every step; with the memory modes that keep the transformer's layers whole (full, tiled,
model offload) and a transformer whose weights are not kept quantised (GGUF, fp8 files): the adapter's layers are
made on the transformer's device and in its dtype when it loads.

torch and diffusers are used inside the functions: only the diffusers backend loads this module.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.control import legacy_hash
from desktop.engine.backends.ip_adapter import build_encoder, feature_extractor
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.imaging import load_source
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.ip_adapter import (
    inspect_image_encoder,
    inspect_xlabs_flux_ip_adapter,
    is_image_encoder,
    is_xlabs_flux_ip_adapter,
)
from desktop.engine.library.lora import AdapterCatalog, HeaderFacts, file_identity
from desktop.engine.request import ControlUnit
from desktop.engine.terminal_text import library_text

# The memory modes whose hooks move the transformer whole (or none): the adapter's layers move with it.
_MODES = ("full", "tiled", "offload")
_BLOCK_KEY = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")


@dataclass
class FluxIpRun:
    """The pipeline arguments that carry the picture's embeddings, and what puts the model back."""

    arguments: dict[str, Any]
    hashes: dict[ControlUnit, ControlHash]
    _pipe: Any = field(repr=False)

    def close(self) -> None:
        self._pipe.unload_ip_adapter()


class FluxIpAdapters:
    """Which image-prompt units name XLabs' Flux.1 IP-Adapter (headers read once per file), and running one."""

    def __init__(self, catalog: AdapterCatalog) -> None:
        self._catalog = catalog
        self._is_adapter = HeaderFacts(catalog, is_xlabs_flux_ip_adapter)
        self._encoders: dict[tuple[str, int, int], Any] = {}

    def forget(self) -> None:
        self._encoders.clear()

    def find(self, units: Sequence[ControlUnit]) -> list[ControlUnit]:
        """The units whose model is XLabs' Flux.1 IP-Adapter in the control library."""
        return [unit for unit in units if self._is_adapter(unit.model)]

    def prepare(
        self, base: Any, pipe: Any, units: Sequence[ControlUnit], size: tuple[int, int], mode: str, label: str,
        quantised: bool = False,
    ) -> FluxIpRun:
        """The one unit's adapter loaded on `base` (the loaded Flux.1 pipeline; `pipe` the one this job calls) and
        its picture's embeddings for a job at `size` in memory `mode`. `quantised`: the model keeps its transformer's
        weights quantised (a GGUF or fp8 file), in whose storage type diffusers would make the adapter's layers."""
        import torch

        unit = _refuse(units, pipe, mode, label)
        if quantised:
            raise InvalidRequest(
                f"The IP-Adapter {unit.model.strip()!r} runs with a Flux.1 file in bf16 / fp16, not {label}'s "
                "quantised one: diffusers would make its layers in the file's storage type."
            )
        entry = self._catalog.get(unit.model.strip())
        header = read_safetensors_header(entry.path, name=entry.name)
        info = inspect_xlabs_flux_ip_adapter(header, repr(entry.name))
        width = base.transformer.config.joint_attention_dim
        if info.attention_width != width:
            raise ModelError(
                f"{library_text(entry.name)!r} feeds {info.attention_width}-wide image tokens; {label}'s transformer "
                f"reads {width}-wide ones. Pick the IP-Adapter made for Flux.1."
            )
        dtype, device = base.vae.dtype, base._execution_device
        encoder, extractor = self._encoder(info.encoder_width, entry.name)
        encoder = encoder.to(device=device, dtype=dtype)
        state = _diffusers_state(Path(entry.path))
        run = FluxIpRun({}, {unit: ControlHash(entry.name, legacy_hash(Path(entry.path)), "ip-adapter")}, base)
        try:
            try:
                base.load_ip_adapter(state, weight_name="", image_encoder_pretrained_model_name_or_path=None)
            except (ValueError, KeyError, RuntimeError, TypeError) as error:
                raise ModelError(
                    f"{library_text(entry.name)!r} does not fit {label}: {str(error).splitlines()[0][:200]}. Pick "
                    "XLabs' IP-Adapter made for Flux.1."
                ) from None
            base.set_ip_adapter_scale(float(unit.weight))
            picture = load_source(unit.image, "The IP-Adapter unit's image")
            black = _black(size)  # what diffusers' true CFG reads the negative prompt against
            with torch.inference_mode():
                embeds, negative = (_embed(encoder, extractor, image, device, dtype) for image in (picture, black))
        except BaseException:
            run.close()
            raise
        finally:
            encoder.to("cpu")  # only the embeddings stay on the device for the job
        run.arguments = {"ip_adapter_image_embeds": [embeds], "negative_ip_adapter_image_embeds": [negative]}
        return run

    def _encoder(self, projection: int, name: str) -> tuple[Any, Any]:
        """The control library's first CLIP image encoder (by name) with the projection width the adapter reads,
        and its processor."""
        for entry, header in self._catalog.headers():
            if not is_image_encoder(header):
                continue
            info = inspect_image_encoder(header, entry.name)
            if info.projection_dim == projection:
                key = file_identity(entry.path)
                if key not in self._encoders:
                    self._encoders[key] = build_encoder(Path(entry.path), info, entry.name)
                return self._encoders[key], feature_extractor(info.image_size)
        raise ModelError(
            f"{library_text(name)!r} reads pictures with a CLIP image encoder whose projection is {projection} wide, "
            "and the control library has none. Import OpenAI's clip-vit-large-patch14 (its model.safetensors) with "
            "marble controls import FILE."
        )


def _refuse(units: Sequence[ControlUnit], pipe: Any, mode: str, label: str) -> ControlUnit:
    if len(units) > 1:
        raise InvalidRequest(f"{label} runs one XLabs IP-Adapter unit a job ({len(units)} are on).")
    (unit,) = units
    name = repr(unit.model.strip())
    if unit.more_images:
        count = 1 + len(unit.more_images)
        raise InvalidRequest(f"The IP-Adapter {name} reads one picture with {label} ({count} are on).")
    if unit.start > 0 or unit.end < 1:
        raise InvalidRequest(f"The IP-Adapter {name} acts at every step with {label}: set its range to 0-1.")
    if mode not in _MODES:
        raise InvalidRequest(
            f"The IP-Adapter {name} runs with the memory modes full, tiled and offload, not {mode}: set Memory to one "
            "of them."
        )
    if "ip_adapter_image_embeds" not in inspect.signature(pipe.__call__).parameters:
        raise InvalidRequest(
            f"The IP-Adapter {name} does not run with {type(pipe).__name__} (its job's other units or model): "
            "remove it, or the other units."
        )
    return unit


def _diffusers_state(path: Path) -> dict[str, dict[str, Any]]:
    """The file's tensors as diffusers' `load_ip_adapter` reads a state dict: `image_proj` without the
    `ip_adapter_proj_model.` level, `ip_adapter` keyed "N.to_k_ip.weight" per double block (diffusers' own
    renaming of such a file)."""
    from safetensors.torch import load_file

    state: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in load_file(str(path)).items():
        if key.startswith("ip_adapter_proj_model."):
            state["image_proj"][key.removeprefix("ip_adapter_proj_model.")] = value
        elif (match := _BLOCK_KEY.match(key)) is not None:
            index, kind, param = match.groups()
            state["ip_adapter"][f"{index}.to_{kind}_ip.{param}"] = value
        else:
            raise ModelError(f"{path.name} holds a tensor XLabs' Flux.1 IP-Adapter does not have: {key}")
    return state


def _black(size: tuple[int, int]) -> Any:
    import numpy as np

    width, height = size
    return np.zeros((width, height, 3), dtype=np.uint8)  # diffusers' own, in its (width, height) order


def _embed(encoder: Any, extractor: Any, image: Any, device: Any, dtype: Any) -> Any:
    """The picture's projected CLIP embedding, (1, 1, width), as the pipelines' `encode_image` makes it."""
    pixels = extractor(image, return_tensors="pt").pixel_values.to(device=device, dtype=dtype)
    return encoder(pixels).image_embeds[None, :]
