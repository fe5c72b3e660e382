"""Errors cross layers as an ErrorKind; each kind has its exit status and its stable JSON name."""

from __future__ import annotations

import json

import pytest

import desktop.library_cli
from desktop.cli import _json_record
from desktop.engine.errors import (
    Cancelled,
    DeviceError,
    ErrorKind,
    InvalidRequest,
    MarbleError,
    ModelError,
    OutOfMemory,
    StorageError,
    error_kind,
)
from desktop.engine.events import JobFailed
from desktop.exit_codes import EXIT_FOR_KIND, exit_code
from tests.support.cli_runner import run_cli

# error class, its kind, the exit status scripts rely on
CASES = [
    (InvalidRequest, ErrorKind.INVALID_REQUEST, 2),
    (DeviceError, ErrorKind.DEVICE, 2),
    (ModelError, ErrorKind.MODEL, 3),
    (Cancelled, ErrorKind.CANCELLED, 130),
    (OutOfMemory, ErrorKind.OUT_OF_MEMORY, 1),
    (StorageError, ErrorKind.STORAGE, 1),
]


@pytest.mark.parametrize(("error_class", "kind", "status"), CASES)
def test_each_error_declares_its_kind_and_the_kind_its_exit_status(error_class, kind, status):
    error = error_class("something went wrong")
    assert error.kind is kind and error_kind(error) is kind
    assert exit_code(kind) == status


def test_every_kind_has_an_exit_status_and_other_exceptions_are_internal():
    assert set(EXIT_FOR_KIND) == set(ErrorKind)
    assert error_kind(RuntimeError("a bug")) is ErrorKind.INTERNAL
    assert error_kind(MarbleError("no kind of its own")) is ErrorKind.INTERNAL
    assert exit_code(ErrorKind.INTERNAL) == 1


@pytest.mark.parametrize(("error_class", "kind", "status"), CASES)
def test_json_failed_event_keeps_the_error_names_scripts_match(error_class, kind, status):
    # `marble generate --json` printed the class name as `error` before the enum: the value stays.
    line = json.dumps(_json_record(JobFailed("job", "message", kind)))
    assert json.loads(line) == {"event": "failed", "message": "message", "error": error_class.__name__}


@pytest.mark.parametrize(("error_class", "kind", "status"), CASES)
def test_library_commands_exit_with_the_status_of_the_error_kind(
    tmp_path, monkeypatch, error_class, kind, status
):
    class FailingLibrary:
        def __init__(self, paths):
            pass

        def remove(self, kind_word, name):
            raise error_class(f"cannot remove {name}")

    monkeypatch.setattr(desktop.library_cli, "Library", FailingLibrary)
    code, _, err = run_cli("loras", "remove", "detail", "--home", str(tmp_path))
    assert code == status
    assert "cannot remove detail" in err and "Traceback" not in err
