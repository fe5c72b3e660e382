"""The CPU thread count a job uses: the choice from cores, load and setting, its measurement, and that
the real backend's job runs with it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from desktop.engine.backends.cpu_threads import choose_threads, others_busy_cores
from desktop.engine.backends.diffusers_backend import DiffusersBackend
from desktop.engine.jobs import CancelToken
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources


@pytest.mark.parametrize(
    ("setting", "default", "cores", "others_busy", "expected"),
    [
        (3, 8, 2, 2.0, 3),  # the user's pin wins, even over a busy machine
        (0, 8, 8, None, 8),  # load not measurable (Windows, macOS): torch's default
        (0, 2, 2, 0.1, 2),  # idle: every core
        (0, 4, 8, 0.0, 4),  # never above torch's default (physical cores where it counts those)
        (0, 2, 2, 1.9, 1),  # the case: another run keeps both cores busy
        (0, 2, 2, 5.0, 1),  # never below one
        (0, 8, 8, 3.5, 4),  # 4.5 free: round down, a thread too many costs more than one too few
        (0, 8, 8, 3.2, 5),  # 4.8 free: that is nearly five cores
    ],
)
def test_thread_choice_from_setting_cores_and_load(setting, default, cores, others_busy, expected):
    choice = choose_threads(setting, default, cores, others_busy)
    assert choice.threads == expected
    assert str(expected) in choice.reason


def _stat_line(busy: int, idle: int) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {busy} 0 0 {idle} 0 0 0 0 7 7\ncpu0 1 2 3 4\n"


def test_busy_cores_of_others_subtract_this_process(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(_stat_line(busy=1000, idle=5000))
    hertz = os.sysconf("SC_CLK_TCK")
    cpus = os.cpu_count() or 1
    own = iter([10.0, 10.0 + 20 / hertz])  # this process used 20 of the 100 busy ticks

    def sleep(_: float) -> None:
        stat.write_text(_stat_line(busy=1100, idle=5100))

    busy = others_busy_cores(stat_path=stat, own_cpu=lambda: next(own), sleep=sleep)
    assert busy == pytest.approx(80 / 200 * cpus)


def test_busy_cores_are_unknown_without_proc_stat(tmp_path: Path) -> None:
    assert others_busy_cores(stat_path=tmp_path / "missing", sleep=lambda _: None) is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert others_busy_cores(stat_path=tmp_path / "odd", sleep=lambda _: None) is None


@pytest.fixture
def torch_threads():
    # torch's pool size is process-wide state: later tests must get the count they started with.
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def _backend(tmp_path: Path, **options) -> DiffusersBackend:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    return DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), 0, **options)


def _threads_seen_by_a_job(backend: DiffusersBackend, model: Path) -> set[int]:
    request = GenerationRequest(prompt="a red circle", model=str(model), steps=2, seed=1, width=64, height=64,
                                device="cpu").validate()
    seen: set[int] = set()
    backend.load(request)
    # The step callback runs on the job's thread, inside the denoising: the count the job really uses.
    backend.generate(request, 0, lambda _: seen.add(torch.get_num_threads()), CancelToken())
    return seen


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell one thread from the default")
def test_a_job_runs_with_the_pinned_or_the_adapted_count(tmp_path, tiny_sd15_dir, torch_threads, caplog):
    torch.set_num_threads(2)
    assert _threads_seen_by_a_job(_backend(tmp_path / "a", cpu_threads=1), tiny_sd15_dir) == {1}
    torch.set_num_threads(2)
    load = iter([64.0, 0.0])
    backend = _backend(tmp_path / "b", busy_cores=lambda: next(load))
    with caplog.at_level(logging.INFO, logger="desktop.engine.backends.diffusers_backend"):
        assert _threads_seen_by_a_job(backend, tiny_sd15_dir) == {1}
    assert "other processes use 64.0 of" in caplog.text
    # The machine idle again: the next job gets torch's default back.
    assert _threads_seen_by_a_job(backend, tiny_sd15_dir) == {2}
