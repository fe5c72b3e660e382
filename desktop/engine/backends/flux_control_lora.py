"""Flux.1 Control-LoRAs in control units: BFL's Canny / Depth dev LoRAs on a loaded Flux.1 dev model, for the jobs
that ask.

The unit's file (library/flux_control_lora.py) is loaded with diffusers' `load_lora_weights`, which widens the
transformer's input layer to read the control picture's latents beside the noise and swaps its query/key norms
in; the job then runs FluxControlPipeline (or its image-to-image / inpainting sibling) with the unit's picture,
at the unit's weight as the LoRA's scale.

It stays loaded while the next batches and jobs ask for the same file (a 1.2 GB file takes seconds to load), and
is taken off (`unload_lora_weights(reset_to_overwritten_params=True)`, the model put back as it was) at the start
of the first job that does not, before anything else touches the model: `release`. It goes on the model's plain
layers: the LoRA manager's adapters are unloaded before it loads (diffusers widens a layer only when no other
adapter wraps it) and load again on top of it, so the job's LoRAs run beside it (the manager switches the job's
adapters and this one together: lora_adapters.py `also_active`). The memory modes that replace or hook
single layers (group and sequential offload, fp8, nf4, int8) and quantised model files (GGUF, fp8, bitsandbytes)
are refused: the widened layer would miss their hooks or their storage.

torch and diffusers are used through the pipeline's own methods: only the diffusers backend loads this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop.engine.backends.base import ControlHash
from desktop.engine.backends.control import legacy_hash
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.flux_control_lora import control_lora_layout
from desktop.engine.library.lora import AdapterCatalog, HeaderFacts, file_identity
from desktop.engine.request import ControlUnit
from desktop.engine.terminal_text import library_error, library_text

ADAPTER = "marble-flux-control-lora"
# The memory modes whose hooks hold the whole transformer (or none): a widened layer inside it moves with it.
_MODES = ("full", "offload")


class FluxControlLoras:
    """Which control units name a Flux.1 Control-LoRA (headers read once per file), and loading one for a job."""

    def __init__(self, catalog: AdapterCatalog) -> None:
        self._catalog = catalog
        self._layout = HeaderFacts(catalog, control_lora_layout)
        # The file loaded on the model now (path, size, mtime) and that pipeline's id; None when none is.
        self._kept: tuple[tuple[str, int, int], int] | None = None

    def forget(self) -> None:
        """The pipeline is gone (unloaded or replaced): the Control-LoRA went with it."""
        self._kept = None

    def release(self, pipe: Any) -> bool:
        """The model put back as it was, if a Control-LoRA is loaded on it (a job that asks for none); whether it
        was (every LoRA adapter on the model went with it: the LoRA manager's load again when asked)."""
        released = self._kept is not None and self._kept[1] == id(pipe)
        if released:
            pipe.unload_lora_weights(reset_to_overwritten_params=True)
        self._kept = None
        return released

    def find(self, units: tuple[ControlUnit, ...]) -> list[ControlUnit]:
        """The units whose model is a Flux.1 Control-LoRA in the control library."""
        return [unit for unit in units if self._layout(unit.model.strip()) is not None]

    def load(self, pipe: Any, unit: ControlUnit, clear: Callable[[], None]) -> ControlHash:
        """The unit's Control-LoRA on `pipe` at the unit's weight: kept from the last batch, or loaded on the model's
        plain layers (`clear` takes the LoRA manager's adapters off first); the unit's hash for the metadata."""
        entry = self._catalog.get(unit.model.strip())
        wanted = (file_identity(entry.path), id(pipe))
        try:
            if self._kept != wanted:
                self.release(pipe)
                clear()
                pipe.load_lora_weights(str(entry.path), adapter_name=ADAPTER, use_safetensors=True)
                self._kept = wanted
            pipe.set_adapters([ADAPTER], [float(unit.weight)])
        except (ValueError, KeyError, RuntimeError, TypeError, OSError, AssertionError) as error:
            self._kept = wanted  # whatever part of it was loaded goes
            self.release(pipe)
            raise ModelError(
                f"The Control-LoRA {library_text(entry.name)!r} does not fit this model: {library_error(error)}. BFL's "
                "Canny / Depth LoRAs are made for Flux.1 dev."
            ) from error
        return ControlHash(entry.name, legacy_hash(Path(entry.path)))


def refuse(info: DitInfo, units: list[ControlUnit], others: int, mode: str, label: str) -> None:
    """InvalidRequest for what a Control-LoRA job cannot run: more than one, ControlNets beside it (`others`), a step
    range or control mode, a model other than a plain unquantised Flux.1 dev, a memory mode that hooks single
    layers."""
    name = repr(units[0].model.strip())
    if len(units) > 1 or others:
        raise InvalidRequest(
            f"A Flux.1 Control-LoRA ({name}) runs alone: it turns the model into its Canny / Depth form for the job. "
            "Remove the other control units (a Redux unit may stay)."
        )
    unit = units[0]
    if unit.start != 0.0 or unit.end != 1.0 or unit.mode != "balanced":
        raise InvalidRequest(
            f"A Flux.1 Control-LoRA ({name}) acts at every step, as its model was trained: set its range to 0-1 and "
            "its control mode to Balanced (its weight scales it)."
        )
    plain = info.family == "flux" and info.variant == "dev" and not (info.fill or info.control_input)
    if not plain:
        raise InvalidRequest(f"{name} is a Flux.1 Control-LoRA, made for Flux.1 dev; {label} is not one.")
    if info.quantization or info.fp8_storage or info.scaled_fp8 or info.bitsandbytes:
        raise InvalidRequest(
            f"A Flux.1 Control-LoRA ({name}) widens the model's input layer, which {label}'s quantised file cannot "
            "hold: use a bf16 / fp16 Flux.1 dev file (its memory mode may still be offload)."
        )
    if mode not in _MODES:
        raise InvalidRequest(
            f"A Flux.1 Control-LoRA ({name}) runs with the memory modes full and offload, not {mode}: set Memory to "
            "one of them, or use the Canny / Depth dev model itself."
        )


