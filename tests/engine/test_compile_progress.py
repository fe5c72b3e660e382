"""Fast mode says "compiling" (issue 29): before the first step of a size it has not compiled for, the
job reports ModelCompiling, so the window and the CLI show that instead of a step counter standing still. A fast job's
"compiling", cold and from the cache, is checked in tests/engine/test_fast_mode.py's first test."""

from __future__ import annotations

import io
import json

from desktop.cli import _TextReporter
from desktop.engine.events import ModelCompiling, ModelLoading, PreviewsFitting, PromptRewriting
from tests.support.cli_runner import run_cli


def generate(home, model, *extra: str) -> tuple[list[dict], str]:
    code, out, err = run_cli(
        "generate", "--home", str(home), "--model", str(model), "--prompt", "a red circle",
        "--steps", "2", "--width", "64", "--height", "64", "--seed", "3", "--device", "cpu", *extra,
    )
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_the_cli_says_compiling_in_words():
    err = io.StringIO()
    _TextReporter(io.StringIO(), err)(ModelCompiling("job", "tiny"))
    assert err.getvalue() == "Compiling the model (first fast-mode image)…\n"


def test_the_cli_says_previews_are_being_prepared_in_words_and_in_json():
    from desktop.cli import _json_record

    err = io.StringIO()
    reporter = _TextReporter(io.StringIO(), err)
    reporter(ModelLoading("job", "tiny"))
    reporter(PreviewsFitting("job", "tiny"))
    assert err.getvalue() == "Loading tiny…\nPreparing live previews for this model (once)…\n"  # the API's words too
    assert _json_record(PreviewsFitting("job", "tiny")) == {"event": "fitting previews", "model": "tiny"}
    reporter(PromptRewriting("job", "tiny"))
    assert err.getvalue().endswith("(once)…\nRewriting the prompt (FLUX.3's prompt rewriter)…\n")
    assert _json_record(PromptRewriting("job", "tiny")) == {"event": "rewriting prompt", "model": "tiny"}


def test_a_normal_job_never_reports_compiling(tmp_path, tiny_sd15_dir):
    events, err = generate(tmp_path / "home", tiny_sd15_dir, "--json")
    kinds = [event["event"] for event in events]
    assert "step" in kinds and "compiling" not in kinds, kinds

