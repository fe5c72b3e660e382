"""The converted-model cache: a single-file checkpoint saved once as a diffusers folder, written in the
background while the first job runs.

Why in the background: converting an SD 1.5 file in memory takes about 2 s, but writing its 4.3 GB fp32
folder takes 10-20 s on a disk that writes a few hundred MB/s. The first image need not wait for it (a
later start then loads the folder in a fraction of a second). The first image is the same whether its
weights came from the conversion or, later, from the cached folder (checked by the backend's tests).

Why a snapshot of the state dicts: the job goes on with the pipeline while the writer reads it, and a job
moves modules to CUDA, casts them to fp16 or fp8 and wraps layers for LoRAs. Those operations replace a
module's tensors rather than writing into them, so the tensors taken at load time keep the weights exactly
as loaded (and share their storage: nothing is duplicated). The configs are written at once.

Why its own safetensors writer: the safetensors package copies each tensor into a Python bytes object while
holding the interpreter lock, which starves the generating thread (a 3-step job took 2.3x as long beside it).
Writing each tensor's memory straight to the file releases the lock for the copy into the page cache.

Torch is imported inside the functions: the module runs on the generation thread only (the writer is its own
thread).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ConversionCache:
    """Writes converted pipelines into their cache folders, one background thread per folder."""

    def __init__(self) -> None:
        self._writers: dict[Path, threading.Thread] = {}
        self._failures: list[str] = []
        self._lock = threading.Lock()

    def start(self, pipe: Any, target: Path) -> str | None:
        """Begin saving `pipe` into `target`; returns a note when even starting failed (the job goes on from
        memory, and the next start converts again)."""
        import torch

        self.wait(target)
        _remove_abandoned(target)
        # Named for this process: another Marble process converting the same file writes its own copy, and the
        # first complete one is kept.
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        modules: dict[str, Any] = {}
        try:
            partial.mkdir(parents=True)
            for name, component in pipe.components.items():
                if isinstance(component, torch.nn.Module):
                    modules[name] = _weights_and_config(component, partial / name)
                elif component is not None:
                    # Schedulers, tokenizers, feature extractors: small files, saved now, before a job can
                    # add a textual-inversion token to a tokenizer.
                    component.save_pretrained(str(partial / name))
            pipe.save_config(str(partial))  # model_index.json
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            return _failure_note(target, error)
        writer = threading.Thread(
            target=self._write, args=(modules, partial, target), name=f"cache {target.name}", daemon=False
        )
        # Not a daemon: the command line's process waits for the folder to be complete before it exits.
        with self._lock:
            self._writers[target] = writer
        writer.start()
        return None

    def wait(self, target: Path) -> None:
        """Block until a write into `target` (if one runs) has finished."""
        with self._lock:
            writer = self._writers.get(target)
        if writer is not None:
            writer.join()

    def wait_all(self) -> None:
        with self._lock:
            writers = list(self._writers.values())
        for writer in writers:
            writer.join()

    def take_failures(self) -> list[str]:
        """Notes for writes that failed since the last call (told with the next load)."""
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def _write(self, modules: dict[str, Any], partial: Path, target: Path) -> None:
        _lowest_priority()
        try:
            for name, (weights, state) in modules.items():
                write_safetensors(state, partial / name / weights)
            if (target / "model_index.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)  # another process finished first: its copy serves
            else:
                os.replace(partial, target)
        except (OSError, RuntimeError) as error:
            # Only a cache: the loaded model is unaffected, and the next start converts again.
            shutil.rmtree(partial, ignore_errors=True)
            note = _failure_note(target, error)
            log.warning("%s", note)
            with self._lock:
                self._failures.append(note)
        finally:
            with self._lock:
                if self._writers.get(target) is threading.current_thread():
                    del self._writers[target]


_ABANDONED_AFTER_S = 3600  # a write takes seconds to minutes: an older half-written folder's process died


def _remove_abandoned(target: Path) -> None:
    """Delete half-written copies of `target` left by processes killed while writing (hours old)."""
    with contextlib.suppress(OSError):
        for partial in target.parent.glob(f"{target.name}.partial*"):
            with contextlib.suppress(OSError):
                if time.time() - partial.stat().st_mtime > _ABANDONED_AFTER_S:
                    shutil.rmtree(partial, ignore_errors=True)


def _lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: a thread has its own nice value), so the write
    takes the cores only when the job leaves them idle; elsewhere it runs at normal priority."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _weights_and_config(module: Any, folder: Path) -> tuple[str, dict[str, Any]]:
    """Write `module`'s config into `folder` now; return the weights file name its loader looks for and the
    state dict to write there (tensors over the loaded storage)."""
    from diffusers import ModelMixin

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(module, ModelMixin):
        module.save_config(str(folder))
        weights = "diffusion_pytorch_model.safetensors"
    else:  # a transformers model (the text encoders)
        module.config.save_pretrained(str(folder))
        weights = "model.safetensors"
    return weights, dict(module.state_dict())


_DTYPE_CODES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}  # fmt: skip


def write_safetensors(state: dict[str, Any], path: Path) -> None:
    """`state` as a safetensors file (the format's header, then each tensor's bytes in header order), each
    tensor's memory handed straight to the file so the interpreter lock is free while it is copied."""
    import torch

    names = sorted(state)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        tensor = state[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPE_CODES[str(tensor.dtype).removeprefix("torch.")],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)))
        stream.write(encoded)
        for name in names:
            tensor = state[name].detach().cpu().contiguous().reshape(-1)
            if tensor.numel():
                stream.write(tensor.view(torch.uint8).numpy())


def _failure_note(target: Path, error: BaseException) -> str:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (
        f"Could not cache the converted model in {target.parent} ({reason}); it will be converted again on the "
        "next start."
    )
