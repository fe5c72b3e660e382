"""Crashes and full disks through the real command line (`python -m desktop generate ...`).

The child process (forked from one that has imported the engine: tests/support/forked_cli.py) gets
tests/support/faults/sitecustomize.py, which kills it (SIGKILL) or fills its
disk at an exact moment of the batch: after a step, with a PNG half written, right after a PNG's rename,
right after its history row. After each fault: the database passes SQLite's integrity check, every PNG
on disk is in the history, and `marble history resume` makes exactly the images that are missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from desktop.cli import main
from desktop.engine.history.store import JOB_CHUNK
from desktop.engine.metadata import read_image_metadata, read_text_chunks
from desktop.engine.paths import AppPaths
from tests.support.forked_cli import ForkedCli

SEED = 400
# The first, a middle and the last image of a batch: every kind of place a kill can land (each kill point is a
# process start, about 7 s; a fourth image added five kill points and nothing new).
IMAGES = 3
STEPS = 2


def generate_args(model: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", "a lighthouse at dusk", "--steps", str(STEPS),
            "--seed", str(SEED), "--width", "64", "--height", "64", "--device", "cpu", "--json", "--no-preview",
            *extra]


@pytest.fixture(scope="module")
def forked() -> Iterator[ForkedCli]:
    server = ForkedCli(os.environ)
    yield server
    server.close()


def run_with_fault(forked: ForkedCli, fault: str, args: list[str], home: Path) -> subprocess.CompletedProcess:
    """`python -m desktop ARGS` in a child process with MARBLE_TEST_FAULT set (forked from a process that has
    imported the engine: tests/support/forked_cli.py)."""
    return forked.run(args, os.environ | {"MARBLE_HOME": str(home), "HF_HUB_OFFLINE": "1", "MARBLE_TEST_FAULT": fault})


def in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def history(home: Path, *args: str) -> list[dict]:
    code, out, err = in_process(["history", *args, "--json", "--home", str(home)])
    assert code == 0, err
    return json_lines(out)


def pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))


def seeds_on_disk(folder: Path) -> list[int]:
    return sorted(read_image_metadata(path).request.seed for path in pngs(folder))


def integrity(paths: AppPaths) -> str:
    conn = sqlite3.connect(paths.history_db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def started_job(stdout: str) -> str:
    return next(event["job"] for event in json_lines(stdout) if event["event"] == "started")


def test_a_disk_filling_mid_batch_records_or_rescues_every_image_and_says_where(tmp_path: Path, tiny_sd15_dir, forked):
    """Issue 22 item 6: the first PNG fits, then the disk (outputs and database) is full."""
    home, rescue_dir = tmp_path / "home", tmp_path / "rescue"
    paths = AppPaths.for_root(home)
    result = run_with_fault(forked, "full:png:1", generate_args(tiny_sd15_dir, "--batch-count", "3",
                                                        "--rescue-dir", str(rescue_dir)), home)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    events = json_lines(result.stdout)
    assert events[-1]["event"] == "failed" and events[-1]["error"] == "StorageError"
    warnings = [event["message"] for event in events if event["event"] == "warning"]
    (saved,) = pngs(paths.outputs)
    assert any(saved.name in text and "could not record" in text for text in warnings), warnings
    # The image that could not be written is rescued, and the user is told where.
    (rescued,) = pngs(rescue_dir)
    assert any(str(rescued) in text for text in warnings), warnings
    assert read_image_metadata(rescued).request.seed == SEED + 1
    assert read_text_chunks(saved)[JOB_CHUNK] == read_text_chunks(rescued)[JOB_CHUNK] == started_job(result.stdout)

    # Space again: the next start finds the unrecorded image, and the job counts what is on disk.
    assert integrity(paths) == "ok"
    (job,) = history(home, "jobs")
    assert job["id"] == started_job(result.stdout)
    assert job["state"] == "interrupted" and job["images_done"] == len(pngs(paths.outputs)) == 1
    (listed,) = history(home, "list")
    assert listed["path"] == str(saved) and listed["job_id"] == job["id"]


def test_resume_counts_an_image_renamed_into_place_before_its_row(tmp_path: Path, tiny_sd15_dir, forked):
    """Issue 22 item 12: killed right after 00002-401.png is renamed, before its history row."""
    home = tmp_path / "home"
    paths = AppPaths.for_root(home)
    result = run_with_fault(forked, "kill:png:2", generate_args(tiny_sd15_dir, "--batch-count", str(IMAGES)), home)
    assert result.returncode == -signal.SIGKILL
    assert [p.name for p in pngs(paths.outputs)] == ["00001-400.png", "00002-401.png"]
    (job,) = history(home, "jobs")
    assert job["images_done"] == 2 and job["remaining"]["seed"] == SEED + 2

    code, out, err = in_process(["history", "resume", job["id"], "--json", "--no-preview", "--home", str(home)])
    assert code == 0, err
    assert json_lines(out)[-1]["seeds"] == list(range(SEED + 2, SEED + IMAGES))
    assert seeds_on_disk(paths.outputs) == list(range(SEED, SEED + IMAGES))


def test_a_writer_killed_half_way_through_a_png_leaves_no_broken_image(tmp_path: Path, tiny_sd15_dir, forked):
    """Issue 23: the real writer, killed with half of the second PNG's bytes written. Those bytes may
    only ever be in a hidden temp file: no half PNG in the outputs folder, none in the history."""
    home = tmp_path / "home"
    paths = AppPaths.for_root(home)
    result = run_with_fault(forked, "kill:half:2", generate_args(tiny_sd15_dir, "--batch-count", "3"), home)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]

    # As the killed process left it: one whole image, and the half one only under a hidden temp name.
    assert [p.name for p in pngs(paths.outputs)] == ["00001-400.png"]
    whole = pngs(paths.outputs)[0]
    with Image.open(whole) as image:
        image.load()  # every byte there: a truncated PNG raises here
    temps = [p for p in paths.outputs.rglob("*") if p.is_file() and p != whole]
    assert [p.name for p in temps] == [".00002-401.png.partial"]
    assert 0 < temps[0].stat().st_size < whole.stat().st_size

    # The next start lists the whole image only and removes the temp file.
    assert [record["path"] for record in history(home, "list")] == [str(whole)]
    assert [p for p in paths.outputs.rglob("*") if p.is_file()] == [whole]


# A step of each image: the first (a kill between steps leaves the disk and the database as a kill after the
# image's last step does: nothing of that image is written before its PNG), then each write of each image.
KILL_POINTS = [("step", 1 + image * STEPS) for image in range(IMAGES)] + [
    (point, n) for point in ("partial", "png", "row") for n in range(1, IMAGES + 1)
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "nth"), KILL_POINTS, ids=[f"{p}-{n}" for p, n in KILL_POINTS])
def test_sigkill_at_every_event_of_a_batch_loses_and_repeats_nothing(tmp_path: Path, tiny_sd15_dir, forked, point, nth):
    home = tmp_path / "home"
    paths = AppPaths.for_root(home)
    args = generate_args(tiny_sd15_dir, "--batch-count", str(IMAGES))
    result = run_with_fault(forked, f"kill:{point}:{nth}", args, home)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    job_id = started_job(result.stdout)

    # As the killed process left it: an intact database, and no image the database knows of is lost.
    assert integrity(paths) == "ok"
    conn = sqlite3.connect(paths.history_db)
    recorded = {row[0] for row in conn.execute("SELECT path FROM images")}
    conn.close()
    assert recorded <= {str(p) for p in pngs(paths.outputs)}

    # The next start: every PNG on disk is in the history, temp files are gone, the job counts the disk.
    made = len(pngs(paths.outputs))
    jobs = history(home, "jobs")
    assert {record["path"] for record in history(home, "list")} == {str(p) for p in pngs(paths.outputs)}
    assert [p for p in paths.outputs.rglob("*") if p.name.endswith(".partial")] == []
    assert seeds_on_disk(paths.outputs) == list(range(SEED, SEED + made))
    if made == IMAGES:
        assert jobs == []  # killed after its last image: nothing is left to make
    else:
        (job,) = jobs
        assert job["id"] == job_id and job["images_done"] == made
        code, out, err = in_process(["history", "resume", job_id, "--json", "--no-preview", "--home", str(home)])
        assert code == 0, err
        assert json_lines(out)[-1]["seeds"] == list(range(SEED + made, SEED + IMAGES))

    assert seeds_on_disk(paths.outputs) == list(range(SEED, SEED + IMAGES))
    assert len({record["path"] for record in history(home, "list")}) == IMAGES
    assert history(home, "jobs") == []
    assert integrity(paths) == "ok"
