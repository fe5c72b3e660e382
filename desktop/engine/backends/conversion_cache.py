"""The converted-model cache: a single-file checkpoint saved once as a diffusers folder, written in the
background while the first job runs.

Why in the background: converting an SD 1.5 file in memory takes about 2 s, but writing its 4.3 GB fp32
folder takes 10-20 s on a disk that writes a few hundred MB/s. The first image need not wait for it (a
later start then loads the folder in a fraction of a second). The first image is the same whether its
weights came from the conversion or, later, from the cached folder (checked by the backend's tests).

Why a detached copy: the job goes on with the pipeline while the writer reads it, and a job moves modules
to CUDA, casts them to fp16 or fp8 and wraps layers for LoRAs. The writer therefore saves copies of the
modules made at load time: new module objects whose tensors share storage with the loaded ones (nothing is
duplicated). Those operations replace a module's tensors rather than writing into them, so the copies keep
the weights exactly as loaded.

Torch is imported inside the functions: the module runs on the generation thread only (the writer is its own
thread).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import shutil
import threading
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
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        modules: dict[str, Any] = {}
        try:
            partial.mkdir(parents=True)
            for name, component in pipe.components.items():
                if isinstance(component, torch.nn.Module):
                    modules[name] = _detached(component)
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
        try:
            for name, module in modules.items():
                module.save_pretrained(str(partial / name))
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


def _detached(module: Any) -> Any:
    """A copy of `module` whose tensors are new tensor objects over the same storage: a later `.to()`, cast or
    layer wrap on the original does not reach it, and no weight is duplicated."""
    shared = {id(t): t.detach() for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, shared)


def _failure_note(target: Path, error: BaseException) -> str:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (
        f"Could not cache the converted model in {target.parent} ({reason}); it will be converted again on the "
        "next start."
    )
