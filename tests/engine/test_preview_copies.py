"""Preview latents reach the host without a GPU sync at every step (PreviewCopies).

On CUDA the copy runs on the GPU's queue and is handed out at a later step; the copy and its event
are replaced here by a copy whose completion the test controls, so the order of events is checked
on this CPU-only machine. The CPU path is the real one (and the backend's preview tests use it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desktop.engine.backends.diffusers_backend import PreviewCopies


class _Event:
    """Stands in for a CUDA event: done when the test says so, or when someone waits for it."""

    def __init__(self, log: list[str]) -> None:
        self.done = False
        self._log = log

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        if not self.done:
            self._log.append("waited")
        self.done = True


class _Copies:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.events: list[_Event] = []

    def start(self, latents: torch.Tensor) -> tuple[torch.Tensor, _Event]:
        self.log.append(f"copy {int(latents[0, 0, 0])}")
        event = _Event(self.log)
        self.events.append(event)
        return latents.detach().float().clone(), event


def latents_of(step: int) -> torch.Tensor:
    return torch.full((4, 8, 8), float(step))


def step_of(array: np.ndarray | None) -> int | None:
    return None if array is None else int(array[0, 0, 0])


def test_on_cuda_a_preview_arrives_a_step_late_and_no_step_waits_but_the_last():
    copies = _Copies()
    previews = PreviewCopies("cuda", start_copy=copies.start)

    assert step_of(previews.step(latents_of(1), last=False)) is None  # its copy has only started
    copies.events[-1].done = True
    assert step_of(previews.step(latents_of(2), last=False)) == 1  # step 1's copy, picked up at step 2
    # Step 2's copy is still running at step 3: nothing to show, and no second copy is queued.
    assert step_of(previews.step(latents_of(3), last=False)) is None
    assert copies.log == ["copy 1", "copy 2"]
    # The last step waits for the copy in flight, then copies its own latents and waits for them.
    assert step_of(previews.step(latents_of(4), last=True)) == 4
    assert copies.log == ["copy 1", "copy 2", "waited", "copy 4", "waited"]


def test_on_cuda_a_step_without_a_preview_still_hands_out_a_finished_copy():
    copies = _Copies()
    previews = PreviewCopies("cuda", start_copy=copies.start)
    previews.step(latents_of(2), last=False)
    copies.events[-1].done = True
    assert step_of(previews.step(None, last=False)) == 2
    assert step_of(previews.step(None, last=True)) is None  # nothing in flight, nothing to wait for
    assert copies.log == ["copy 2"]


def test_off_cuda_each_step_gets_its_own_latents_at_once():
    copies = _Copies()
    previews = PreviewCopies("cpu", start_copy=copies.start)
    assert step_of(previews.step(latents_of(1), last=False)) == 1
    assert previews.step(None, last=False) is None
    assert step_of(previews.step(latents_of(3), last=True)) == 3
    assert copies.log == []  # the asynchronous copy is for CUDA only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_real_cuda_copy_brings_the_latents_to_the_host():
    previews = PreviewCopies("cuda")
    latents = torch.randn(4, 16, 16, device="cuda", dtype=torch.float16)
    shown = previews.step(latents, last=True)
    np.testing.assert_array_equal(shown, latents.float().cpu().numpy())
