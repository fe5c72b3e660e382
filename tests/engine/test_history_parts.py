"""The history's parts on their own: the image-row builder, the database advice, process liveness,
the record dictionaries. Each check is what a user or the command line would read."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from desktop.engine.history.database import explain_database_error
from desktop.engine.history.processes import alive
from desktop.engine.history.records import ImageRecord, NewImage
from desktop.engine.history.rows import found_image_row, new_image_row
from desktop.engine.metadata import ImageMetadata
from desktop.engine.request import GenerationRequest

DB = Path("/data/home/history.db")


def sqlite_error(message: str, name: str) -> sqlite3.Error:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    return error


def test_each_database_failure_is_one_sentence_that_says_what_to_do(tmp_path: Path):
    lib = Path("/data/outputs")
    rebuild = ("move history.db (and any history.db-wal, history.db-shm beside it) to another name: the next "
               "start rebuilds the history from the images' own metadata (favourites, the trash list and "
               "unfinished jobs are lost).")
    # The error's name decides, whatever its text says.
    assert explain_database_error(DB, sqlite_error("header mismatch", "SQLITE_NOTADB"), lib) == (
        f"The history database {DB} is damaged (header mismatch). Your images are safe in {lib}. "
        f"To recover, {rebuild}")
    assert explain_database_error(DB, sqlite_error("x", "SQLITE_CORRUPT_VTAB")).startswith(
        f"The history database {DB} is damaged (x). Your images are safe. To recover, move")
    assert explain_database_error(DB, sqlite_error("database or disk is full", "SQLITE_FULL")) == (
        f"The disk holding the history database {DB} is full (database or disk is full). Your images are safe. "
        "Free some space and try again; nothing recorded so far is lost.")
    read_only = sqlite_error("attempt to write a readonly database", "SQLITE_READONLY_DBMOVED")
    assert explain_database_error(DB, read_only) == (
        f"Marble may not write to the history database {DB} (attempt to write a readonly database). Your images "
        f"are safe. Make the file and its folder writable for your user, or {rebuild}")
    assert explain_database_error(DB, sqlite_error("disk I/O error", "SQLITE_IOERR_WRITE")) == (
        f"The history database {DB} cannot be used (disk I/O error). Your images are safe. If this persists, "
        f"{rebuild}")
    # Without an error name (older sqlite3 modules), the message alone decides.
    for message, start in [("database disk image is malformed", "The history database"),
                           ("disk is full", "The disk holding"), ("unable to open database file", "Marble may not")]:
        assert explain_database_error(DB, sqlite3.DatabaseError(message)).startswith(start)
    assert "readonly" in explain_database_error(DB, sqlite3.OperationalError("readonly database"))


def test_the_advice_names_the_newest_migration_backup(tmp_path: Path):
    db = tmp_path / "history.db"
    # Newest by time, not by name: a v9 backup left from long ago is not the one to copy.
    older, newer = tmp_path / "history.db.v9.bak", tmp_path / "history.db.v2.bak"
    newer.write_bytes(b"2")
    older.write_bytes(b"1")
    os.utime(older, (time.time() - 100, time.time() - 100))
    advice = explain_database_error(db, sqlite_error("malformed", "SQLITE_CORRUPT"))
    assert f"To recover, copy the backup {newer} over it, or move history.db (and any" in advice
    assert str(older) not in advice


def test_a_found_image_row_takes_each_column_from_its_metadata():
    request = GenerationRequest(prompt="a fox", negative_prompt="blurry", model="sd15", seed=7, steps=20,
                                cfg_scale=6, width=512, height=768, sampler="Euler")
    settings = {"Model hash": "abc123", "Lora hashes": "fox: 99aa", "Sampler": "DPM++ 2M", "Model": "other"}
    metadata = ImageMetadata("a1111", "a fox", "blurry", settings, {}, request)
    row = found_image_row(Path("/x/a.png"), 12.5, metadata, "job-1")
    assert row == {
        "path": "/x/a.png", "created": 12.5, "prompt": "a fox", "negative": "blurry", "model": "sd15",
        "model_hash": "abc123", "lora_hashes": "fox: 99aa", "seed": 7, "sampler": "DPM++ 2M", "steps": 20,
        "cfg": 6.0, "width": 512, "height": 768, "request_json": json.dumps(request.to_dict()),
        "timings_json": "{}", "device": "", "source": "a1111", "job_id": "job-1",
    }
    assert isinstance(row["cfg"], float)
    # Without a Sampler setting the request's own sampler is kept.
    plain = ImageMetadata("marble", "a fox", "", {}, {}, request)
    assert found_image_row(Path("/x/a.png"), 1.0, plain, "")["sampler"] == "Euler"
    assert found_image_row(Path("/x/a.png"), 1.0, plain, "")["job_id"] is None


def test_a_found_image_that_does_not_say_how_it_was_made_has_empty_settings():
    metadata = ImageMetadata("comfyui", "a cat", "", {"Model": "flux"}, {}, None)
    row = found_image_row(Path("/x/c.png"), 3.0, metadata, None)
    assert row == {
        "path": "/x/c.png", "created": 3.0, "prompt": "a cat", "negative": "", "model": "flux",
        "model_hash": None, "lora_hashes": "", "seed": None, "sampler": "", "steps": None, "cfg": None,
        "width": None, "height": None, "request_json": None, "timings_json": "{}", "device": "",
        "source": "comfyui", "job_id": None,
    }
    assert found_image_row(Path("/x/c.png"), 3.0, ImageMetadata("png", "", "", {}, {}, None), None)["model"] == ""


def test_a_new_image_row_has_the_seed_it_used_and_the_model_it_loaded(tmp_path: Path):
    request = GenerationRequest(prompt="p", model="asked", seed=-1, sampler="Euler")
    image = NewImage(str(tmp_path / "a.png"), request, seed=99, model_name="loaded", sampler="",
                     timings={"total": 1.5}, device="cpu", job_id="j")
    row = new_image_row(image, 5.0)
    assert row["seed"] == 99 and json.loads(row["request_json"])["seed"] == 99
    assert row["model"] == "loaded" and json.loads(row["request_json"])["model"] == "loaded"
    assert row["sampler"] == "Euler" and row["timings_json"] == '{"total": 1.5}' and row["device"] == "cpu"
    assert row["source"] == "marble" and row["job_id"] == "j" and row["path"] == str((tmp_path / "a.png").resolve())
    unnamed = new_image_row(NewImage("a.png", request, seed=1, model_name="", sampler="DDIM"), 5.0)
    assert json.loads(unnamed["request_json"])["model"] == "asked" and unnamed["model"] == ""
    assert unnamed["sampler"] == "DDIM"


def test_a_record_as_a_dictionary_has_its_request_and_timings_decoded():
    request_json = json.dumps(GenerationRequest(prompt="p", model="m").to_dict())
    record = ImageRecord(1, "/a.png", 2.0, "p", "", "m", None, "", 3, "Euler", 4, 5.0, 64, 32, request_json,
                         '{"total": 2.0}', "cpu", True, False, None, None, "/t.jpg", "marble", None)
    data = record.to_dict()
    assert data["request"] == json.loads(request_json) and data["timings"] == {"total": 2.0}
    assert "request_json" not in data and "timings_json" not in data
    assert data["favourite"] is True and data["width"] == 64 and data["job_id"] is None and len(data) == 24
    assert record.size == "64x32"
    bare = ImageRecord(1, "/a.png", 2.0, "", "", "", None, "", None, "", None, None, None, 32, None, "[1]", "",
                       False, False, None, None, None, "png", None)
    assert bare.to_dict()["request"] is None and bare.timings == {} and bare.size == ""


def test_a_process_is_alive_until_it_ends_and_a_zombie_is_not():
    assert alive(os.getpid())
    assert not alive(None) and not alive(0) and not alive(-5)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert alive(child.pid)
        child.kill()
        deadline = time.time() + 10
        while alive(child.pid) and time.time() < deadline:  # a zombie until reaped: already not alive
            time.sleep(0.05)
        assert not alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)
