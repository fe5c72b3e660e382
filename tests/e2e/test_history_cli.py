"""History through the real command line: a killed batch, a full disk, and `marble history ...`."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from desktop.cli import main
from desktop.engine.history import HistoryStore
from desktop.engine.metadata import parse_parameters, read_image_metadata, read_text_chunks
from desktop.engine.paths import AppPaths

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red fox in a spacesuit"


def marble_process(*args: str, home: Path) -> subprocess.Popen:
    env = os.environ | {"MARBLE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "desktop.cli", *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def marble_json(*args: str, home: Path) -> list[dict]:
    process = marble_process(*args, home=home)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def generate_args(model: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", PROMPT, "--negative", "blurry", "--steps", "2",
            "--seed", "42", "--sampler", "Euler a", "--width", "64", "--height", "64", "--device", "cpu", *extra]


def in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv, out, err)
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_sigkill_during_a_batch_loses_nothing_that_was_reported(tmp_path: Path, tiny_sd15_dir: Path):
    home = tmp_path / "home"
    process = marble_process(*generate_args(tiny_sd15_dir, "--json", "--no-preview", "--batch-count", "60"),
                             home=home)
    reported: list[str] = []
    job_id = None
    try:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "started":
                job_id = event["job"]
            if event["event"] == "image":
                reported.append(event["path"])
                if len(reported) == 3:
                    process.send_signal(signal.SIGKILL)
                    break
    finally:
        process.stdout.close()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the batch finished before the kill; make it longer"
    paths = AppPaths.for_root(home)

    # Before anything tidies up: the database as the killed process left it.
    conn = sqlite3.connect(paths.history_db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    recorded = {row[0] for row in conn.execute("SELECT path FROM images")}
    conn.close()
    for seed, path in enumerate(reported, start=42):
        assert path in recorded
        with Image.open(path) as image:
            image.load()
            assert image.size == (64, 64)
        parsed = parse_parameters(read_text_chunks(path)["parameters"])
        assert parsed.prompt == PROMPT and parsed.settings["Seed"] == str(seed)
    pngs = list(paths.outputs.rglob("*.png"))
    assert len(pngs) >= 3 and all(png.stat().st_size > 0 for png in pngs)

    # A kill in the middle of a write leaves its temp file; plant one so the clean-up is always tested.
    day = Path(reported[0]).parent
    (day / ".00099-999.png.partial").write_bytes(b"\x89PNG half a file")

    # The next start: the job is offered again, with what remains of it; the temp file is gone.
    jobs = marble_json("history", "jobs", "--json", home=home)
    assert [job["id"] for job in jobs] == [job_id]
    (job,) = jobs
    assert job["state"] == "interrupted" and job["images_done"] >= 3 and job["images_total"] == 60
    done = job["images_done"]
    assert job["remaining"]["seed"] == 42 + done and job["remaining"]["batch_count"] == 60 - done
    leftovers = [p for p in paths.outputs.rglob("*") if p.name.endswith(".partial") or p.stat().st_size == 0]
    assert leftovers == []
    listed = {record["path"] for record in marble_json("history", "list", "--json", "--limit", "500", home=home)}
    assert set(reported) <= listed
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    assert store.integrity_check() == "ok"
    store.close_all()

    # Run again: only the images the killed job did not get to, with the seeds it would have used.
    events = marble_json("history", "resume", job_id, "--json", "--no-preview", home=home)
    finished = events[-1]
    assert finished["event"] == "finished" and finished["seeds"] == list(range(42 + done, 42 + 60))
    assert marble_json("history", "jobs", "--json", home=home) == []
    seeds = {record["seed"] for record in marble_json("history", "list", "--json", "--limit", "500", home=home)}
    assert seeds == set(range(42, 42 + 60))


def test_disk_full_while_saving_rescues_the_image_elsewhere(tmp_path: Path, tiny_sd15_dir: Path, monkeypatch):
    home, rescue_dir = tmp_path / "home", tmp_path / "rescue"
    outputs = AppPaths.for_root(home).outputs
    real_fsync = os.fsync

    def full_outputs_disk(fd: int) -> None:
        # Only the output folder's disk is full; the rescue folder is on another one.
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(outputs)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("desktop.engine.outputs.os.fsync", full_outputs_disk)
    code, out, _ = in_process([*generate_args(tiny_sd15_dir, "--json", "--no-preview", "--home", str(home)),
                               "--rescue-dir", str(rescue_dir)])
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    warning = next(event for event in events if event["event"] == "warning")
    assert "disk is full" in warning["message"] and str(rescue_dir) in warning["message"]
    failed = events[-1]
    assert failed["event"] == "failed" and failed["error"] == "StorageError"
    assert "kept in memory" in failed["message"]
    (rescued,) = rescue_dir.iterdir()
    assert read_image_metadata(rescued).request.seed == 42
    assert [p for p in outputs.rglob("*") if p.is_file()] == []  # no partial, no zero-byte file

    code, out, _ = in_process(["history", "list", "--json", "--home", str(home)])
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(rescued)]


@pytest.fixture
def library(tmp_path: Path, tiny_sd15_dir: Path) -> Path:
    home = tmp_path / "home"
    code, _, _ = in_process([*generate_args(tiny_sd15_dir, "--batch-count", "2", "--no-preview"), "--home", str(home)])
    assert code == 0
    return home


def test_history_list_show_export(library: Path, tmp_path: Path):
    home = ["--home", str(library)]
    code, out, _ = in_process(["history", "list", "--json", *home])
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seed"] for r in records] == [43, 42]
    newest = records[0]
    assert newest["model"] == "tiny-sd15" and newest["prompt"] == PROMPT and newest["request"]["seed"] == 43
    assert newest["device"].startswith("cpu") and newest["sampler"] == "Euler a"

    code, out, _ = in_process(["history", "list", *home, "--search", "spacesu"])
    assert code == 0 and len(out.splitlines()) == 2 and PROMPT in out
    code, out, err = in_process(["history", "list", *home, "--search", "whale"])
    assert out == "" and "No images match" in err

    code, out, _ = in_process(["history", "show", str(newest["id"]), *home])
    assert code == 0 and f"Prompt:          {PROMPT}" in out and "Seed:            43" in out
    code, out, _ = in_process(["history", "show", str(newest["id"]), "--json", *home])
    assert json.loads(out)["negative"] == "blurry"

    shared = tmp_path / "shared.png"
    code, out, _ = in_process(["history", "export", str(newest["id"]), "--out", str(shared), *home])
    assert code == 0 and out.strip() == str(shared)
    assert read_image_metadata(shared).request.seed == 43
    private = tmp_path / "private.png"
    code, _, _ = in_process(["history", "export", str(newest["id"]), "--out", str(private), "--strip-metadata",
                             *home])
    assert code == 0 and read_text_chunks(private) == {}

    code, _, err = in_process(["history", "show", "999", *home])
    assert code == 2 and "no image 999" in err


def test_history_delete_restore_favourite_and_jobs(library: Path):
    home = ["--home", str(library)]
    _, out, _ = in_process(["history", "list", "--json", *home])
    first = json.loads(out.splitlines()[0])
    assert in_process(["history", "delete", str(first["id"]), *home])[0] == 0
    assert not Path(first["path"]).exists()
    _, out, _ = in_process(["history", "list", "--trash", "--json", *home])
    assert [json.loads(line)["id"] for line in out.splitlines()] == [first["id"]]
    code, out, _ = in_process(["history", "restore", str(first["id"]), *home])
    assert code == 0 and out.strip() == first["path"] and Path(first["path"]).exists()

    assert in_process(["history", "favourite", str(first["id"]), *home])[0] == 0
    _, out, _ = in_process(["history", "list", "--favourites", "--json", *home])
    assert [json.loads(line)["id"] for line in out.splitlines()] == [first["id"]]

    code, out, err = in_process(["history", "jobs", *home])
    assert code == 0 and out == "" and "No unfinished jobs" in err


def test_history_prints_prompts_with_terminal_escapes_shown_not_obeyed(tmp_path: Path, tiny_sd15_dir: Path):
    # A prompt pasted from anywhere can hold a screen clear, an OSC window title, a bell and a CR.
    hostile = "a fox \x1b[2J\x1b]0;pwned\x07 in snow\rX \u202eevil"
    home = ["--home", str(tmp_path / "home")]
    argv = generate_args(tiny_sd15_dir, "--no-preview", *home)
    argv[argv.index(PROMPT)] = hostile
    code, _, err = in_process(argv)
    assert code == 0, err
    for command in (["history", "list"], ["history", "show", "1"]):
        code, out, _ = in_process([*command, *home])
        assert code == 0
        assert not any(char in out for char in "\x1b\x07\r\u202e"), (command, out)
        assert "\\x1b[2J" in out and "\\x07" in out and "\\u202e" in out
