"""Fast mode says "compiling" (issue 29): before the first step of a size it has not compiled for, the
job reports ModelCompiling, so the window and the CLI show that instead of a step counter standing still."""

from __future__ import annotations

import io
import json

import pytest
import torch

from desktop.cli import _TextReporter
from desktop.engine.backends.compile_cache import INDUCTOR_DIR_ENV, TRITON_DIR_ENV
from desktop.engine.events import ModelCompiling
from tests.support.cli_runner import run_cli
from tests.support.fixtures import share_compile_cache


@pytest.fixture
def fresh_dynamo(monkeypatch, tmp_path):
    # The job points the compile caches at its home: put the process's settings back afterwards.
    monkeypatch.setenv(INDUCTOR_DIR_ENV, str(tmp_path / "inductor"))
    monkeypatch.setenv(TRITON_DIR_ENV, str(tmp_path / "triton"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def generate(home, model, *extra: str) -> tuple[list[dict], str]:
    code, out, err = run_cli(
        "generate", "--home", str(home), "--model", str(model), "--prompt", "a red circle",
        "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "--device", "cpu", *extra,
    )
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


@pytest.mark.slow
def test_fast_mode_reports_compiling_before_its_first_step_once(
    tmp_path, tiny_sd15_dir, fresh_dynamo, shared_compile_cache
):
    # Reported even when the kernels come from the cache: dynamo's tracing and the cache lookup take time too.
    home = share_compile_cache(tmp_path / "home", shared_compile_cache)
    events, _ = generate(home, tiny_sd15_dir, "--fast", "--batch-count", "2", "--json")
    kinds = [event["event"] for event in events]
    assert kinds.count("compiling") == 1, kinds  # the second batch has the same size: nothing to compile
    assert kinds.index("loaded") < kinds.index("compiling") < kinds.index("step"), kinds
    assert events[kinds.index("compiling")]["model"]



def test_the_cli_says_compiling_in_words():
    err = io.StringIO()
    _TextReporter(io.StringIO(), err)(ModelCompiling("job", "tiny"))
    assert err.getvalue() == "Compiling the model (first fast-mode image)…\n"


def test_a_normal_job_never_reports_compiling(tmp_path, tiny_sd15_dir):
    events, err = generate(tmp_path / "home", tiny_sd15_dir, "--json")
    kinds = [event["event"] for event in events]
    assert "step" in kinds and "compiling" not in kinds, kinds
