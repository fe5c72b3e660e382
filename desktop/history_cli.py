"""`marble history ...`: the history database from the command line (engine only, no Qt).

Kept apart from desktop/cli.py so the generate command and the history commands can change
independently; cli.py registers these subcommands and calls `run_history`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from desktop.engine.errors import InvalidRequest, MarbleError, StorageError
from desktop.engine.events import ImageUnsaved
from desktop.engine.history import (
    HistoryQuery,
    HistoryStore,
    ImageRecord,
    explain_database_error,
    export_image,
    save_unsaved,
)
from desktop.engine.paths import AppPaths
from desktop.engine.terminal_text import printable
from desktop.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

# `history show` fields that may span lines (a prompt); every other field is printed on one line.
MULTILINE_FIELDS = frozenset({"Prompt", "Negative prompt"})


def open_history(paths: AppPaths) -> HistoryStore:
    """The store of this home, in step with its image folder (what "the next start" does).

    Raises StorageError with a sentence saying what is wrong with the database and how to recover.
    """
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    try:
        store.reconcile()
    except sqlite3.Error as error:
        store.close_all()
        raise StorageError(explain_database_error(paths.history_db, error, paths.outputs)) from error
    return store


def default_rescue_dir() -> Path:
    return Path(tempfile.gettempdir()) / "marble-rescue"


def rescue(event: ImageUnsaved, folder: Path, store: HistoryStore | None) -> Path:
    """Save an image that could not be written where planned into `folder`, and record it there."""
    path = save_unsaved(event, folder)
    if store is not None:
        try:
            store.index_file(path)
        except (MarbleError, OSError, sqlite3.Error):
            # The picture is safe, and the caller reports where; the history cannot follow it there
            # (a full disk under the database too): the file's own metadata still names its job.
            pass
    return path


def add_history_commands(
    commands: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser],
    add_home: Callable[[argparse.ArgumentParser], None],
) -> None:
    history = commands.add_parser("history", help="the images made so far, and unfinished jobs")
    sub = history.add_subparsers(dest="history_command", required=True, parser_class=parser_class)

    listing = sub.add_parser("list", help="list images, newest first")
    listing.add_argument("--search", default="", help="words of the prompt (full-text, prefixes match)")
    listing.add_argument("--model", help="only images of this model")
    listing.add_argument("--favourites", action="store_true", help="only favourites")
    listing.add_argument("--trash", action="store_true", help="list the trash instead")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--oldest-first", action="store_true")
    listing.add_argument("--json", action="store_true", help="one JSON object per image")

    show = sub.add_parser("show", help="every parameter of one image")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    export = sub.add_parser("export", help="copy an image out of the library")
    export.add_argument("id", type=int)
    export.add_argument("--out", required=True, help="a .png file or a folder")
    export.add_argument("--strip-metadata", action="store_true", help="drop prompt, settings and all text chunks")
    export.add_argument("--json", action="store_true")

    delete = sub.add_parser("delete", help="move images to the trash (restorable until emptied)")
    delete.add_argument("ids", type=int, nargs="+")
    restore = sub.add_parser("restore", help="put trashed images back")
    restore.add_argument("ids", type=int, nargs="+")
    favourite = sub.add_parser("favourite", help="mark (or with --off, unmark) images as favourites")
    favourite.add_argument("ids", type=int, nargs="+")
    favourite.add_argument("--off", action="store_true")
    sub.add_parser("empty-trash", help="delete the trashed images for good")

    jobs = sub.add_parser("jobs", help="jobs a crash or a kill left unfinished")
    jobs.add_argument("--json", action="store_true")
    # Run by desktop/cli.py, which owns generation: what remains of the job, as `generate` runs it.
    resume = sub.add_parser("resume", help="make the images an unfinished job did not get to")
    resume.add_argument("job", help="a job id from `marble history jobs`")
    resume.add_argument("--json", action="store_true", help="print one JSON object per event")
    resume.add_argument("--no-preview", action="store_true", help="skip the per-step preview")
    resume.add_argument("--out", help="output folder, or a .png file name")
    resume.add_argument("--rescue-dir", metavar="DIR", help="where images go if the output folder cannot be written")
    for parser in (listing, show, export, delete, restore, favourite, jobs, resume, sub.choices["empty-trash"]):
        add_home(parser)


def run_history(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    try:
        paths.ensure()
        store = open_history(paths)
    except StorageError as error:
        print(f"marble: error: {printable(error)}", file=err)
        return EXIT_FAILED
    except (MarbleError, OSError) as error:
        print(f"marble: error: cannot open the history: {printable(error)}", file=err)
        return EXIT_FAILED
    try:
        return _COMMANDS[args.history_command](store, args, out, err)
    except (StorageError, InvalidRequest) as error:
        print(f"marble: error: {printable(error)}", file=err)
        return EXIT_FAILED
    except sqlite3.Error as error:
        print(f"marble: error: {printable(explain_database_error(paths.history_db, error, paths.outputs))}", file=err)
        return EXIT_FAILED
    finally:
        store.close_all()


def _list(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    query = HistoryQuery(text=args.search, model=args.model, favourites_only=args.favourites,
                         trashed=args.trash, newest_first=not args.oldest_first)
    records = store.query(query, limit=max(1, args.limit))
    if args.json:
        for record in records:
            print(json.dumps(record.to_dict()), file=out)
        return EXIT_OK
    if not records:
        print("No images match." if store.count() else f"No images yet. They will appear in {store.library}.", file=err)
    for record in records:
        flags = ("*" if record.favourite else " ") + ("!" if record.missing else " ")
        prompt = " ".join(record.prompt.split())
        print(f"{record.id:>6} {flags} {_when(record.created)}  {printable(record.model[:24]):<24} "
              f"{record.seed if record.seed is not None else '-':>10}  {printable(prompt[:60])}", file=out)
    return EXIT_OK


def _show(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    record = _get(store, args.id, err)
    if record is None:
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(record.to_dict(), indent=2), file=out)
        return EXIT_OK
    lines = [
        ("Image", str(record.id)), ("File", record.path + ("  (missing)" if record.missing else "")),
        ("Created", _when(record.created)), ("Prompt", record.prompt), ("Negative prompt", record.negative),
        ("Model", record.model), ("Model hash", record.model_hash or ""), ("LoRA hashes", record.lora_hashes),
        ("Seed", "" if record.seed is None else str(record.seed)), ("Sampler", record.sampler),
        ("Steps", "" if record.steps is None else str(record.steps)),
        ("CFG scale", "" if record.cfg is None else f"{record.cfg:g}"), ("Size", record.size),
        ("Device", record.device), ("Favourite", "yes" if record.favourite else "no"),
        ("Timings", ", ".join(f"{k} {v:.2f}" for k, v in record.timings.items())),
        ("Source", record.source), ("Job", record.job_id or ""),
    ]
    if record.trashed:
        lines.append(("In the trash", record.trash_path or "(file gone)"))
    for label, value in lines:
        if value:
            print(f"{label + ':':<17}{printable(value, multiline=label in MULTILINE_FIELDS)}", file=out)
    return EXIT_OK


def _export(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    record = _get(store, args.id, err)
    if record is None:
        return EXIT_BAD_INPUT
    source = record.trash_path if record.trashed and record.trash_path else record.path
    target = export_image(source, Path(args.out).expanduser(), strip_metadata=args.strip_metadata)
    if args.json:
        print(json.dumps({"id": record.id, "path": str(target), "metadata": not args.strip_metadata}), file=out)
    else:
        print(printable(target), file=out)
    return EXIT_OK


def _delete(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    moved = store.trash(args.ids)
    print(f"Moved {len(moved)} image(s) to {store.trash_folder}; `marble history restore ID` brings them back.",
          file=err)
    return EXIT_OK if len(moved) == len(args.ids) else EXIT_BAD_INPUT


def _restore(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    restored = store.restore(args.ids)
    for record in restored:
        print(printable(record.path), file=out)
    return EXIT_OK if len(restored) == len(args.ids) else EXIT_BAD_INPUT


def _favourite(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    for image_id in args.ids:
        store.set_favourite(image_id, not args.off)
    return EXIT_OK


def _empty_trash(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    print(f"Deleted {store.empty_trash()} image(s) for good.", file=err)
    return EXIT_OK


def _jobs(store: HistoryStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    jobs = store.unfinished_jobs()
    for job in jobs:
        if args.json:
            print(json.dumps({"id": job.id, "state": job.state, "images_done": job.images_done,
                              "images_total": job.request.images_total, "request": job.request.to_dict(),
                              "remaining": job.remaining_request().to_dict()}), file=out)
        else:
            print(f"{job.id}  {job.state:<12} {job.images_done}/{job.request.images_total} images  "
                  f"{printable(' '.join(job.request.prompt.split())[:60])}", file=out)
    if not jobs and not args.json:
        print("No unfinished jobs.", file=err)
    return EXIT_OK


def _get(store: HistoryStore, image_id: int, err: TextIO) -> ImageRecord | None:
    record = store.get(image_id)
    if record is None:
        print(f"marble: error: no image {image_id} in the history (see `marble history list`).", file=err)
    return record


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


_COMMANDS: dict[str, Callable[[HistoryStore, argparse.Namespace, TextIO, TextIO], int]] = {
    "list": _list,
    "show": _show,
    "export": _export,
    "delete": _delete,
    "restore": _restore,
    "favourite": _favourite,
    "empty-trash": _empty_trash,
    "jobs": _jobs,
}
