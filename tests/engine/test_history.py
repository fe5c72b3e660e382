"""The history store: what a user would check after a crash, a full disk, or a tidy-up of the folder."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

import desktop
from desktop.engine.backends.base import ModelInfo
from desktop.engine.errors import ErrorKind, StorageError
from desktop.engine.events import ImageSaved, ImageUnsaved, JobFailed, JobFinished
from desktop.engine.history import (
    HistoryQuery,
    HistoryStore,
    NewImage,
    export_image,
    make_thumbnail,
    save_unsaved,
    schema,
)
from desktop.engine.history.store import INTERRUPTED
from desktop.engine.jobs import Job, JobState
from desktop.engine.metadata import parse_parameters, png_text_chunks, read_image_metadata, read_text_chunks
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import GenerationRequest
from desktop.engine.runner import JobRunner
from tests.support.fake_backend import FakeBackend

VERSION = desktop.__version__


@pytest.fixture
def paths(tmp_path: Path) -> AppPaths:
    return AppPaths.for_root(tmp_path / "home").ensure()


@pytest.fixture
def store(paths: AppPaths):
    history = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    yield history
    history.close_all()


def request_for(**changes) -> GenerationRequest:
    values = dict(prompt="a red fox in a spacesuit", negative_prompt="blurry", model="fake-model", steps=4,
                  seed=42, width=64, height=64, sampler="Euler")
    return GenerationRequest(**(values | changes))


def write_png(path: Path, request: GenerationRequest | None = None, seed: int = 42, a1111_only: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 64), (seed % 255, 20, 30))
    if request is None:
        image.save(path)
        return path
    chunks = png_text_chunks(request, seed, ModelInfo(request.model, "/x", "sd15", "abcdef0123"), VERSION)
    if a1111_only:
        del chunks["marble"]
    ImageWriter(path).save(image, chunks, seed)
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------------------- database


def test_database_is_wal_with_busy_timeout_foreign_keys_and_a_version(store: HistoryStore):
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.target_version()
    conn.close()
    # The store's own connection carries the per-connection settings.
    own = store._db.connection()
    assert own.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert own.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.has_full_text_search
    assert store.integrity_check() == "ok"


def test_migration_backs_up_the_database_first(paths: AppPaths, monkeypatch):
    first = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    first.record_image(NewImage(str(paths.outputs / "a.png"), request_for(), 42, "fake-model"))
    first.close_all()

    def to_v2(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE images ADD COLUMN rating INTEGER NOT NULL DEFAULT 0")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, to_v2])
    second = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    backup = paths.history_db.with_name("history.db.v1.bak")
    assert backup.exists()
    old = sqlite3.connect(backup)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    assert old.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    old.close()
    conn = second._db.connection()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT rating FROM images").fetchall() == [(0,)]
    second.close_all()


def test_a_newer_database_is_refused_with_a_clear_message(paths: AppPaths):
    paths.history_db.parent.mkdir(parents=True)
    conn = sqlite3.connect(paths.history_db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StorageError, match="newer Marble"):
        HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)


def test_each_thread_gets_its_own_connection(store: HistoryStore, paths: AppPaths):
    errors: list[BaseException] = []

    def record(n: int) -> None:
        try:
            for k in range(10):
                store.record_image(NewImage(str(paths.outputs / f"{n}-{k}.png"), request_for(), k, "fake-model"))
            store.close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 30


# ---------------------------------------------------------------------------------- search, filter


def test_search_filters_and_sort(store: HistoryStore, paths: AppPaths):
    clock = iter(range(1000, 2000))
    prompts = [("a red fox in a spacesuit", "model-a"), ("a blue whale, underwater", "model-b"),
               ("portrait of a fox, oil painting", "model-b"), ("100% pure_ocean", "model-a")]
    ids = []
    for n, (prompt, model) in enumerate(prompts):
        entry = NewImage(str(paths.outputs / f"{n}.png"), request_for(prompt=prompt), n, model, created=next(clock))
        ids.append(store.record_image(entry).id)
    store.set_favourite(ids[2])

    def prompts_of(query: HistoryQuery) -> list[str]:
        return [record.prompt for record in store.query(query)]

    assert prompts_of(HistoryQuery(text="fox")) == [prompts[2][0], prompts[0][0]]
    assert prompts_of(HistoryQuery(text="fox", newest_first=False)) == [prompts[0][0], prompts[2][0]]
    assert prompts_of(HistoryQuery(text="FOX spacesu")) == [prompts[0][0]]  # case-insensitive prefixes
    # User text never becomes FTS syntax: quotes, stars and operators are plain words or ignored.
    assert prompts_of(HistoryQuery(text='"fox*')) == [prompts[2][0], prompts[0][0]]
    assert prompts_of(HistoryQuery(text="NEAR(fox")) == []
    assert prompts_of(HistoryQuery(model="model-b")) == [prompts[2][0], prompts[1][0]]
    assert prompts_of(HistoryQuery(favourites_only=True)) == [prompts[2][0]]
    assert prompts_of(HistoryQuery(since=1001, until=1003)) == [prompts[2][0], prompts[1][0]]
    assert store.count(HistoryQuery(text="fox")) == 2
    assert store.models() == ["model-a", "model-b"]
    assert [r.id for r in store.query(limit=2, offset=1)] == [ids[2], ids[1]]


def test_search_without_fts5_falls_back_to_like(store: HistoryStore, paths: AppPaths, monkeypatch):
    for n, prompt in enumerate(["a red fox", "100% pure_ocean", "blue whale"]):
        store.record_image(NewImage(str(paths.outputs / f"{n}.png"), request_for(prompt=prompt), n, "m"))
    monkeypatch.setattr(store._images, "full_text", False)
    assert [r.prompt for r in store.query(HistoryQuery(text="FOX"))] == ["a red fox"]
    assert [r.prompt for r in store.query(HistoryQuery(text="100%"))] == ["100% pure_ocean"]
    assert store.count(HistoryQuery(text="whale blue")) == 1


# ------------------------------------------------------------------------------------------- trash


def test_delete_moves_to_trash_and_restore_puts_it_back(store: HistoryStore, paths: AppPaths):
    path = write_png(paths.outputs / "2026-01-01" / "00001-42.png", request_for())
    record = store.index_file(path)
    (trashed,) = store.trash([record.id])
    assert not path.exists() and trashed.trashed
    assert Path(trashed.trash_path).parent == paths.outputs / ".trash"
    assert Path(trashed.trash_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.count() == 0 and store.count(HistoryQuery(trashed=True)) == 1
    # Reconcile neither re-indexes the trash nor counts the trashed image as missing.
    report = store.reconcile()
    assert report.indexed == 0 and report.marked_missing == 0

    (restored,) = store.restore([record.id])
    assert path.exists() and restored.path == str(path) and not restored.trashed and not restored.missing
    assert store.count() == 1

    store.trash([record.id])
    assert store.empty_trash() == 1
    assert store.get(record.id) is None and not any((paths.outputs / ".trash").iterdir())


def test_restore_beside_a_new_file_that_took_the_name(store: HistoryStore, paths: AppPaths):
    path = write_png(paths.outputs / "00001-42.png", request_for())
    first = store.index_file(path)
    store.trash([first.id])
    write_png(path, request_for(prompt="another picture"), seed=7)
    store.index_file(path)
    (restored,) = store.restore([first.id])
    assert restored.path != str(path) and Path(restored.path).exists() and path.exists()
    assert store.count() == 2


# --------------------------------------------------------------------------------------- reconcile


def test_reconcile_indexes_files_marks_missing_and_deletes_nothing_but_partials(store: HistoryStore, paths: AppPaths):
    day = paths.outputs / "2026-01-01"
    ours = write_png(day / "00001-42.png", request_for(prompt="made by marble"))
    theirs = write_png(day / "00002-7.png", request_for(prompt="made by a1111"), seed=7, a1111_only=True)
    plain = write_png(day / "plain.png")
    junk = day / "notes.png"
    junk.write_text("not an image")
    partial = day / ".00003-8.png.partial"
    partial.write_bytes(b"\x89PNG half")
    gone = store.record_image(NewImage(str(day / "00000-1.png"), request_for(), 1, "fake-model"))

    report = store.reconcile(partial_grace_s=3600)
    assert report.indexed == 3 and report.marked_missing == 1 and report.partials_removed == 1
    assert report.unreadable == (str(junk.resolve()),)
    assert not partial.exists()
    assert ours.exists() and theirs.exists() and plain.exists() and junk.exists()  # nothing else deleted
    assert store.get(gone.id).missing

    marble = store.find_by_path(ours)
    assert marble.source == "marble" and marble.seed == 42 and marble.model == "fake-model"
    assert marble.request() == replace(request_for(prompt="made by marble"), seed=42)
    a1111 = store.find_by_path(theirs)
    assert a1111.source == "a1111" and a1111.prompt == "made by a1111" and a1111.seed == 7
    assert a1111.model_hash == "abcdef0123"
    assert store.find_by_path(plain).source == "unknown"

    # The file comes back: the record is no longer missing. A second pass finds nothing new.
    write_png(day / "00000-1.png", request_for(), seed=1)
    again = store.reconcile()
    assert again.found_again == 1 and again.indexed == 0
    assert not store.get(gone.id).missing


def test_a_partial_file_of_a_live_writer_is_left_alone(store: HistoryStore, paths: AppPaths):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        store.add_job("job-live", request_for(), "running")
        conn = store._db.connection()
        conn.execute("UPDATE jobs SET pid = ? WHERE id = 'job-live'", (writer.pid,))
        partial = paths.outputs / ".00001-1.png.partial"
        partial.write_bytes(b"being written")
        assert store.reconcile().partials_removed == 0 and partial.exists()
        os.utime(partial, (time.time() - 7200, time.time() - 7200))
        assert store.reconcile().partials_removed == 1 and not partial.exists()
        assert store.unfinished_jobs() == []  # a live process's job is still in hand
    finally:
        writer.kill()
        writer.wait()


# -------------------------------------------------------------------------------------------- jobs


def test_unfinished_jobs_of_dead_processes_are_offered_with_what_remains(store: HistoryStore, paths: AppPaths):
    request = request_for(batch_count=5, batch_size=2, seed=100)
    store.add_job("job-dead", request, "running")
    store.add_job("job-queued", request_for(prompt="queued"), "queued")
    store.add_job("job-done", request_for(), "finished")
    conn = store._db.connection()
    conn.execute("UPDATE jobs SET pid = ?", (dead_pid(),))
    for k in range(5):  # batches 0 and 1 written, batch 2 half written
        store.record_image(NewImage(str(paths.outputs / f"{k}.png"), request, 100 + k, "m", job_id="job-dead"))

    assert store.reconcile().jobs_interrupted == 1
    jobs = {job.id: job for job in store.unfinished_jobs()}
    assert set(jobs) == {"job-dead", "job-queued"}
    assert jobs["job-dead"].state == INTERRUPTED and jobs["job-dead"].images_done == 5
    remaining = jobs["job-dead"].remaining_request()
    assert (remaining.seed, remaining.batch_count, remaining.batch_size) == (104, 3, 2)
    assert jobs["job-queued"].remaining_request() == jobs["job-queued"].request

    store.dismiss_job("job-dead")
    assert [job.id for job in store.unfinished_jobs()] == ["job-queued"]


# ------------------------------------------------------------------------------------------ runner


def run_job(runner: JobRunner, request: GenerationRequest) -> tuple[Job, list]:
    events: list = []
    job = Job(request)
    runner.run(job, events.append)
    return job, events


def test_runner_records_each_image_before_reporting_it(store: HistoryStore, paths: AppPaths):
    recorded_when_reported: list[bool] = []
    runner = JobRunner(FakeBackend(steps=2), ImageWriter(paths.outputs), VERSION, history=store)
    events: list = []

    def emit(event) -> None:
        if isinstance(event, ImageSaved):
            # Read through another connection, as a second process would: the record is committed.
            other = sqlite3.connect(store.db_path)
            row = other.execute("SELECT count(*) FROM images WHERE path = ?", (event.path,)).fetchone()
            other.close()
            recorded_when_reported.append(row[0] == 1)
        events.append(event)

    job = Job(request_for(batch_count=2, batch_size=2, seed=5))
    assert runner.run(job, emit) is JobState.FINISHED
    assert recorded_when_reported == [True] * 4
    finished = events[-1]
    assert isinstance(finished, JobFinished)
    records = store.query(HistoryQuery(newest_first=False))
    assert [r.seed for r in records] == [5, 6, 7, 8]
    first = records[0]
    assert first.job_id == job.id and first.model == "fake-model" and first.sampler == "Euler"
    assert first.device == "cpu fp32" and set(first.timings) == {"load_s", "generate_s"}
    assert first.request() == replace(job.request, seed=5)
    job_record = store.job(job.id)
    assert job_record.state == "finished" and job_record.images_done == 4
    # What Marble writes, other tools read: A1111's own parser sees every setting.
    parsed = parse_parameters(read_text_chunks(first.path)["parameters"])
    assert parsed.prompt == "a red fox in a spacesuit" and parsed.negative_prompt == "blurry"
    assert parsed.settings["Steps"] == "4" and parsed.settings["Sampler"] == "Euler"
    assert parsed.settings["CFG scale"] == "7.5" and parsed.settings["Seed"] == "5"
    assert parsed.settings["Size"] == "64x64" and parsed.settings["Model"] == "fake-model"
    assert parsed.settings["Batch size"] == "2" and parsed.settings["Batch pos"] == "0"
    assert parsed.settings["Version"] == f"marble {VERSION}"


def test_runner_without_history_still_works(paths: AppPaths):
    runner = JobRunner(FakeBackend(steps=1), ImageWriter(paths.outputs), VERSION)
    _, events = run_job(runner, request_for())
    assert isinstance(events[-1], JobFinished)


def test_failed_and_cancelled_jobs_are_journaled(store: HistoryStore, paths: AppPaths):
    from desktop.engine.errors import ModelError

    runner = JobRunner(FakeBackend(steps=2, fail_with=ModelError("broken")), ImageWriter(paths.outputs),
                       VERSION, history=store)
    job, _ = run_job(runner, request_for())
    assert store.job(job.id).state == "failed" and store.job(job.id).message == "broken"
    runner = JobRunner(FakeBackend(steps=2), ImageWriter(paths.outputs), VERSION, history=store)
    job = Job(request_for())
    job.cancel_token.cancel()
    runner.run(job, lambda event: None)
    assert store.job(job.id).state == "cancelled"
    assert store.unfinished_jobs() == []


def disk_full(monkeypatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("desktop.engine.outputs.os.fsync", no_space)


def test_disk_full_keeps_the_images_in_memory_and_they_can_be_saved_elsewhere(
    store: HistoryStore, paths: AppPaths, tmp_path: Path, monkeypatch
):
    runner = JobRunner(FakeBackend(steps=1), ImageWriter(paths.outputs), VERSION, history=store)
    disk_full(monkeypatch)
    job, events = run_job(runner, request_for(batch_size=3, seed=10))
    monkeypatch.undo()

    failed = events[-1]
    assert isinstance(failed, JobFailed) and failed.kind is ErrorKind.STORAGE
    assert "disk is full" in failed.message and "3 images are kept in memory" in failed.message
    unsaved = [event for event in events if isinstance(event, ImageUnsaved)]
    assert [(e.seed, e.index) for e in unsaved] == [(10, 0), (11, 1), (12, 2)]
    assert not [p for p in paths.outputs.rglob("*") if p.is_file()]  # no partial file left behind
    assert store.count() == 0 and store.job(job.id).state == "failed"

    elsewhere = tmp_path / "usb-stick"
    saved = [save_unsaved(event, elsewhere) for event in unsaved]
    assert [p.name for p in saved] == ["marble-10.png", "marble-11.png", "marble-12.png"]
    metadata = read_image_metadata(saved[1])
    assert metadata.request == replace(job.request, seed=11)
    assert save_unsaved(unsaved[0], elsewhere).name == "marble-10-2.png"  # never overwrites
    record = store.index_file(saved[0])
    assert record.seed == 10 and record.source == "marble"


# ----------------------------------------------------------------------------- thumbnails, export


def test_thumbnail_is_made_once_and_cached(store: HistoryStore, paths: AppPaths):
    path = paths.outputs / "big.png"
    Image.new("RGB", (1024, 512), (200, 10, 10)).save(path)
    record = store.index_file(path)
    thumb = make_thumbnail(path, record.thumbnail)
    assert thumb == Path(record.thumbnail) and thumb.parent == paths.thumbnails
    with Image.open(thumb) as image:
        assert image.size == (256, 128) and image.format == "JPEG"
    stamp = thumb.stat().st_mtime_ns
    assert make_thumbnail(path, record.thumbnail).stat().st_mtime_ns == stamp


def test_export_with_and_without_metadata(paths: AppPaths, tmp_path: Path):
    source = write_png(paths.outputs / "00001-42.png", request_for())
    kept = export_image(source, tmp_path / "share.png")
    assert kept.read_bytes() == source.read_bytes()
    stripped = export_image(source, tmp_path / "private.png", strip_metadata=True)
    assert read_text_chunks(stripped) == {}
    with Image.open(source) as a, Image.open(stripped) as b:
        assert a.tobytes() == b.tobytes()
    assert b"fox" not in stripped.read_bytes()


def test_seeds_up_to_two_to_the_64_are_kept_by_the_runner_the_index_and_a_reread(
    store: HistoryStore, paths: AppPaths
):
    # ComfyUI and Fooocus seeds reach 2**64 - 1; SQLite's INTEGER stops at 2**63 - 1.
    top = 2**64 - 1
    runner = JobRunner(FakeBackend(steps=1), ImageWriter(paths.outputs), VERSION, history=store)
    job, events = run_job(runner, request_for(seed=top - 1, batch_size=2))
    assert isinstance(events[-1], JobFinished), events[-1]
    records = sorted(store.query(), key=lambda record: record.seed)
    assert [record.seed for record in records] == [top - 1, top]
    assert all(record.request().seed == record.seed for record in records)
    assert store.job(job.id).images_done == 2
    # Indexed from the file alone (a lost database), and read back by a new store.
    path = records[-1].path
    store.close_all()
    paths.history_db.unlink()
    fresh = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    try:
        assert fresh.index_file(path).seed == top
        assert fresh.find_by_path(path).seed == top
        middle = write_png(paths.outputs / "mid.png", request_for(seed=2**63), seed=2**63)
        assert fresh.index_file(middle).seed == 2**63
    finally:
        fresh.close_all()
