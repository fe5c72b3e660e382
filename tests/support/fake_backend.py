"""A scripted stand-in for the diffusers backend, for UI edge cases only.

It follows the Backend protocol and the threading rules of the real one: it runs on the thread that
calls it, checks the CancelToken at every step, and hands out owned numpy previews. It can fail on
purpose, warn, and stop at a chosen step until a test lets it go, so cancel tests need no timing.
Every capability still has an end-to-end test through the real backend; this one only makes the
awkward cases (a failure, a job stuck mid-run) easy to produce.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from desktop.engine.backends.base import GeneratedBatch, LoadReport, ModelInfo, StepInfo, Waiting
from desktop.engine.errors import Cancelled, MarbleError
from desktop.engine.jobs import CancelToken
from desktop.engine.request import GenerationRequest

# A stuck test must end in a clear failure, never hang the suite.
BLOCK_LIMIT_S = 30.0


@dataclass
class FakeBackend:
    """Configure it before the job starts; read the records after it ended.

    steps: steps per pipeline call; None uses the request's.
    preview_every: a preview every N steps (0: none).
    fail_with / fail_at: raise this error in `load` or at `generate` step `fail_at_step`.
    block_at_step: after finishing this step, wait until `release` is set or the job is cancelled;
        `blocked` is set when it starts waiting.
    load_notes / generate_notes: become JobWarning events, as the real backend's notes do.
    compiles: report compiling before the first step of each pipeline call, as fast mode does.
    fits_previews: report fitting the preview colours before the first step, as a Sana job's first does.
    rewrites: report rewriting the prompt before the first step and answer "<prompt>, rewritten" as the caption the
        images were made from, as FLUX.3's prompt rewriter does.
    """

    steps: int | None = None
    preview_every: int = 1
    fail_with: MarbleError | None = None
    fail_at: str = "generate"
    fail_at_step: int = 1
    block_at_step: int | None = None
    load_notes: tuple[str, ...] = ()
    generate_notes: tuple[str, ...] = ()
    sampler_used: str = "Euler"
    compiles: bool = False
    fits_previews: bool = False
    rewrites: bool = False
    blocked: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    # Records, written on the worker thread and read by the test after the job's last event.
    loaded: list[GenerationRequest] = field(default_factory=list)
    generated: list[tuple[GenerationRequest, int]] = field(default_factory=list)
    thread_ids: set[int] = field(default_factory=set)
    unloads: int = 0

    def load(self, request: GenerationRequest) -> LoadReport:
        self.thread_ids.add(threading.get_ident())
        if self.fail_with is not None and self.fail_at == "load":
            raise self.fail_with
        reused = bool(self.loaded) and self.loaded[-1].model == request.model
        self.loaded.append(request)
        model = ModelInfo(name=request.model, path=f"/fake/{request.model}", architecture="fake", hash=None)
        return LoadReport(
            model, seconds=0.0, reused=reused, device="cpu", dtype="fp32", notes=self.load_notes
        )

    def generate(
        self,
        request: GenerationRequest,
        batch_index: int,
        on_step: Callable[[StepInfo], None],
        cancel: CancelToken,
    ) -> GeneratedBatch:
        self.thread_ids.add(threading.get_ident())
        self.generated.append((request, batch_index))
        total = self.steps if self.steps is not None else request.steps
        seeds = tuple(request.seed_for(batch_index, k) for k in range(request.batch_size))
        if self.fits_previews:
            on_step(StepInfo(0, 0, batch_index, None, Waiting.FITTING_PREVIEWS))
        if self.rewrites:
            on_step(StepInfo(0, total, batch_index, None, Waiting.REWRITING_PROMPT))
        if self.compiles:
            on_step(StepInfo(0, total, batch_index, None, Waiting.COMPILING))
        for step in range(1, total + 1):
            if cancel.cancelled:
                raise Cancelled("Cancelled.")
            if self.fail_with is not None and self.fail_at == "generate" and step == self.fail_at_step:
                raise self.fail_with
            preview = None
            if self.preview_every and step % self.preview_every == 0:
                preview = preview_array(request, seeds[0], step, total)
            on_step(StepInfo(step, total, batch_index, preview))
            if step == self.block_at_step:
                self._wait_for_release(cancel)
        if cancel.cancelled:
            raise Cancelled("Cancelled.")
        images = tuple(Image.new("RGB", (request.width, request.height), colour_for(seed)) for seed in seeds)
        rewritten = f"{request.prompt}, rewritten" if self.rewrites else None
        return GeneratedBatch(images, seeds, batch_index, self.sampler_used, self.generate_notes,
                              rewritten_prompt=rewritten)  # fmt: skip

    def unload(self) -> None:
        self.unloads += 1

    def _wait_for_release(self, cancel: CancelToken) -> None:
        self.blocked.set()
        waited = 0.0
        # Polls the token so a cancel (or a test's teardown, which cancels) always frees the worker.
        while not self.release.wait(0.01):
            if cancel.cancelled:
                raise Cancelled("Cancelled.")
            waited += 0.01
            if waited > BLOCK_LIMIT_S:
                raise MarbleError("The fake backend was never released; the test forgot `release.set()`.")


def colour_for(seed: int) -> tuple[int, int, int]:
    """A solid colour per seed, so images of one batch differ and tests can tell them apart."""
    return (seed % 251, (seed // 251) % 241, 40 + seed % 200)


def preview_array(request: GenerationRequest, seed: int, step: int, total: int) -> np.ndarray:
    """A latent-sized (1/8) RGB picture that brightens as the steps go by."""
    height, width = max(1, request.height // 8), max(1, request.width // 8)
    value = int(255 * step / max(1, total))
    preview = np.empty((height, width, 3), dtype=np.uint8)
    preview[...] = (value, colour_for(seed)[1], 255 - value)
    return preview
