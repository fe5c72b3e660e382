"""The `marble` command line, run as a user runs it: a child process, its output and exit code."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from desktop.cli import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_MODEL, main
from desktop.engine.metadata import read_image_metadata

ROOT = Path(__file__).resolve().parents[2]


def marble(*args: str, home: Path, **kwargs) -> subprocess.Popen:
    env = os.environ | {"MARBLE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "desktop.cli", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def generate_args(model, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", "a red fox in a spacesuit", "--negative", "blurry",
            "--steps", "3", "--cfg", "7.5", "--seed", "42", "--sampler", "DPM++ 2M Karras",
            "--width", "64", "--height", "64", "--device", "cpu", *extra]


def in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):  # argparse writes its own errors to sys.stderr
            code = main(argv, out, err)
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_generate_json_events_and_png(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    process = marble(*generate_args(tiny_sd15_dir, "--json", "--batch-count", "2"), home=home)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    # transformers' "`CLIPImageProcessor` requires torchvision" notices (every start, issue 24) are not shown.
    assert "torchvision" not in stderr and "[transformers]" not in stderr, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    steps = [e for e in events if e["event"] == "step"]
    assert [(s["step"], s["total"], s["batch"]) for s in steps] == [(1, 3, 0), (2, 3, 0), (3, 3, 0),
                                                                    (1, 3, 1), (2, 3, 1), (3, 3, 1)]
    finished = events[-1]
    assert finished["seeds"] == [42, 43] and len(finished["paths"]) == 2
    for path in finished["paths"]:
        assert Path(path).is_file() and Path(path).is_relative_to(home / "outputs")
        request = read_image_metadata(path).request
        assert request.prompt == "a red fox in a spacesuit" and request.sampler == "DPM++ 2M Karras"
    # --home / MARBLE_HOME keeps every file of the app under one folder.
    assert {p.name for p in home.iterdir()} <= {"models", "loras", "outputs", "cache", "logs", "config", "history"}


def test_out_file_and_home_flag(tmp_path, tiny_sd15_dir):
    target = tmp_path / "picked" / "fox.png"
    code, out, err = in_process(generate_args(tiny_sd15_dir, "--out", str(target), "--home", str(tmp_path / "h")))
    assert code == 0, err
    assert out.strip() == str(target) and target.is_file()
    assert "Done: 1 image(s)" in err


def test_emphasis_flag_is_used_and_recorded_as_a1111_records_it(tmp_path, tiny_sd15_dir):
    target = tmp_path / "no-norm.png"
    argv = generate_args(tiny_sd15_dir, "--emphasis", "No norm", "--out", str(target), "--home", str(tmp_path / "h"))
    argv[argv.index("--prompt") + 1] = "a (red:1.4) fox"
    code, _, err = in_process(argv)
    assert code == 0, err
    found = read_image_metadata(target)
    assert found.request.emphasis == "No norm" and "Emphasis: No norm" in found.raw["parameters"]
    argv[argv.index("--emphasis") + 1] = "Quiet"
    code, _, err = in_process(argv)
    assert code == EXIT_BAD_INPUT and "Quiet" in err


def test_models_list_reads_the_library(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    shutil.copytree(tiny_sd15_dir, home / "models" / "tiny-sd15")
    code, out, _ = in_process(["models", "list", "--json", "--home", str(home)])
    assert code == 0
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["tiny-sd15"]
    code, out, err = in_process(generate_args("tiny-sd15", "--home", str(home), "--json"))
    assert code == 0, err and json.loads(out.splitlines()[-1])["event"] == "finished"


@pytest.mark.parametrize("before", [True, False])
def test_home_goes_before_or_after_the_subcommand(tmp_path, tiny_sd15_dir, before):
    home, other = tmp_path / "home", tmp_path / "env-home"
    shutil.copytree(tiny_sd15_dir, home / "models" / "tiny-sd15")
    flag = ["--home", str(home)]
    args = [*flag, "models", "list", "--json"] if before else ["models", "list", "--json", *flag]
    process = marble(*args, home=other)  # MARBLE_HOME points elsewhere: --home must win
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert [json.loads(line)["name"] for line in stdout.splitlines()] == ["tiny-sd15"]


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    # `marble samplers | head -0`: the reader is gone before the first write (the pipe's read end is closed
    # before the child starts, so every write fails, without a race).
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = os.environ | {"MARBLE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, "-m", "desktop.cli", "samplers"], env=env, cwd=ROOT,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr == ""  # no BrokenPipeError traceback
    assert done.returncode == 141  # what a shell reports for a tool SIGPIPE ended, as `yes | head` gives


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (["--width", "513"], "width 513 is not a multiple of 8"),
        (["--steps", "0"], "steps 0 is out of range"),
        (["--sampler", "Euler z"], "Unknown sampler 'Euler z'"),
        (["--device", "tpu"], "invalid choice"),
        (["--threads", "-1"], "'-1' is not a thread count"),
        (["--threads", "two"], "'two' is not a thread count"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, changes, message):
    code, out, err = in_process(generate_args("m", *changes, "--home", str(tmp_path)))
    assert code == EXIT_BAD_INPUT
    assert message in err and "Traceback" not in err


def test_threads_flag_sizes_the_jobs_thread_pool(tmp_path, tiny_sd15_dir):
    import torch  # only here: the other tests run the command line as a child process

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # In this process the job runs on this thread, so the pool it left behind is the one it used.
        code, _, err = in_process(generate_args(tiny_sd15_dir, "--threads", "3", "--home", str(tmp_path)))
        assert code == 0, err
        assert torch.get_num_threads() == 3  # more than the default of 2 that automatic never exceeds
    finally:
        torch.set_num_threads(before)


def test_bad_input_in_json_mode_is_a_failed_event(tmp_path):
    code, out, _ = in_process(generate_args("m", "--width", "100", "--json", "--home", str(tmp_path)))
    assert code == EXIT_BAD_INPUT
    event = json.loads(out)
    assert event["event"] == "failed" and event["error"] == "InvalidRequest"


def test_model_that_cannot_load_exits_3(tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "broken.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    # In this process (the real processes above and below check start-up and exit codes): an exception that
    # escaped would fail the test here as it would print a traceback there.
    for model in ("broken", "does-not-exist"):
        code, stdout, stderr = in_process(generate_args(model, "--json", "--home", str(home)))
        assert code == EXIT_MODEL, stderr
        failed = json.loads(stdout.splitlines()[-1])
        assert failed["event"] == "failed" and failed["error"] == "ModelError"
        assert "Traceback" not in stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_cancels_within_a_step_and_exits_130(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    args = generate_args(tiny_sd15_dir, "--json", "--steps", "150", "--sampler", "Euler")
    process = marble(*args, home=home)
    events = []
    while line := process.stdout.readline():
        events.append(json.loads(line))
        if events[-1]["event"] == "step":
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_CANCELLED, stderr
    events += [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["event"] == "cancelled"
    assert max(e["step"] for e in events if e["event"] == "step") < 150
    assert not list((home / "outputs").rglob("*.png"))


def test_generate_without_a_model_uses_the_demo_model_at_its_native_size(tmp_path):
    from installer.demo_model.checker import measure

    home = tmp_path / "home"
    code, out, err = in_process(["generate", "--prompt", "a large yellow circle in the centre on a purple background",
                                 "--steps", "20", "--seed", "1", "--device", "cpu", "--json", "--home", str(home)])
    assert code == 0, err
    finished = json.loads(out.splitlines()[-1])
    (path,) = finished["paths"]
    seen = measure(Image.open(path))
    assert Image.open(path).size == (128, 128)
    assert seen.background == "purple", seen  # backgrounds are what the demo model does reliably so far
    assert read_image_metadata(path).settings["Model"] == "marble-demo"
    library = json.loads((home / "library.json").read_text())["entries"]["model"]
    assert library["marble-demo"]["demo"] is True
    code, listing, _ = in_process(["models", "list", "--home", str(home)])
    assert code == 0 and listing.startswith("marble-demo\tSD 1.x (Marble demo)\t"), listing
    # Removed by the user, the demo stays removed, and a run without --model says what to do.
    assert in_process(["models", "remove", "marble-demo", "--home", str(home)])[0] == 0
    code, _, err = in_process(["generate", "--prompt", "x", "--home", str(home)])
    assert code == EXIT_BAD_INPUT and "--model" in err and "Traceback" not in err
