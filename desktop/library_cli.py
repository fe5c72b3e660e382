"""`marble models|loras|embeddings|vaes|controls|upscalers|encoders list|import|remove|info|rename`: the
library from the command line.

Kept apart from desktop/cli.py, which registers these commands and calls `run_library`. Engine only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from desktop.engine.errors import Cancelled, MarbleError
from desktop.engine.library.few_step import FEW_STEP_KINDS, KIND_NAMES, NOT_FEW_STEP, PRESETS
from desktop.engine.library.index import Library, LibraryRecord, record_variant_choices
from desktop.engine.library.ip_adapter import runs_as
from desktop.engine.paths import AppPaths
from desktop.engine.terminal_text import printable
from desktop.exit_codes import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_OK, exit_code

# command word -> (library kind, plural for messages)
GROUPS = {
    "models": ("model", "models"), "loras": ("lora", "LoRAs"), "embeddings": ("embedding", "embeddings"),
    "vaes": ("vae", "VAEs"), "controls": ("control", "control models"), "upscalers": ("upscaler", "upscalers"),
    "encoders": ("encoder", "text encoders"),
}


def add_library_commands(
    commands: argparse._SubParsersAction,
    parser_class: type[argparse.ArgumentParser],
    add_home: Callable[[argparse.ArgumentParser], None],
) -> None:
    for word, (_kind, plural) in GROUPS.items():
        group = commands.add_parser(word, help=f"the {plural} library")
        sub = group.add_subparsers(dest="library_command", required=True, parser_class=parser_class)

        listing = sub.add_parser("list", help=f"list the {plural}")
        listing.add_argument("--json", action="store_true", help="one JSON object per line")
        add_home(listing)

        importing = sub.add_parser("import", help="copy a file (or diffusers folder) into the library")
        importing.add_argument("path")
        importing.add_argument("--name", help="library name (default: the file name without extension)")
        importing.add_argument(
            "--convert-pickle",
            action="store_true",
            help="convert a pickled .ckpt/.pt/.bin to safetensors (tensors only, in a separate process)",
        )
        importing.add_argument("--json", action="store_true")
        add_home(importing)

        removing = sub.add_parser("remove", help="delete an entry and its file from the library")
        removing.add_argument("name")
        add_home(removing)

        info = sub.add_parser("info", help="hashes, architecture and header metadata of an entry")
        info.add_argument("name")
        info.add_argument("--json", action="store_true")
        add_home(info)

        rename = sub.add_parser("rename", help="give an entry a new name")
        rename.add_argument("name")
        rename.add_argument("new_name")
        add_home(rename)

        if _kind == "model":
            variant = sub.add_parser(
                "variant", help="say which model a file is where its tensors cannot (a Qwen-Image or LongCat-Image "
                "file that is their Edit model, a Krea 2 or ERNIE-Image file or an ERNIE-Image folder that is Turbo, a "
                "HiDream-I1 file that is Dev or Fast, a PixArt file in diffusers' names that is PixArt-α 512, an "
                "SD 1.x / SDXL model that is a few-step one); "
                "without VARIANT, list the choices",
            )  # fmt: skip
            variant.add_argument("name")
            variant.add_argument("variant", nargs="?", help="edit, edit-plus, turbo, dev, fast, alpha, lcm, lightning, "
                                 "hyper, dmd2, or base (as the file says)")  # fmt: skip
            add_home(variant)
        if _kind == "lora":
            few_step = sub.add_parser(
                "few-step", help="say which few-step LoRA a file is where its header does not (an LCM-LoRA as "
                "latent-consistency publishes it names nothing); its preset then comes with it; without KIND, show "
                "the choices",
            )  # fmt: skip
            few_step.add_argument("name")
            few_step.add_argument("kind", nargs="?", choices=(*FEW_STEP_KINDS, NOT_FEW_STEP, "header"),
                                  help="a few-step kind, none (not one), or header (as the file's header says)")
            add_home(few_step)


def run_library(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    kind, plural = GROUPS[args.command]
    library = Library(paths)
    try:
        match args.library_command:
            case "list":
                return _list(library, kind, plural, args.json, out)
            case "import":
                return _import(library, kind, args, out, err)
            case "remove":
                record = library.remove(kind, args.name)
                print(printable(f"Removed {record.name} ({record.file})."), file=err)
                return EXIT_OK
            case "info":
                return _info(library, kind, args.name, args.json, out, err)
            case "rename":
                record = library.rename(kind, args.name, args.new_name)
                print(printable(f"Renamed {args.name} to {record.name}."), file=err)
                return EXIT_OK
            case "variant":
                return _variant(library, args.name, args.variant, out, err)
            case "few-step":
                return _few_step(library, args.name, args.kind, out, err)
    except MarbleError as error:
        print(printable(f"marble: error: {error}"), file=err)
        return exit_code(error.kind)
    return EXIT_BAD_INPUT


def _variant(library: Library, name: str, variant: str | None, out: TextIO, err: TextIO) -> int:
    """Lists the variants the model file `name` may be marked as (the current one starred), or marks it."""
    if variant is not None:
        record = library.choose_variant(name, "" if variant == "base" else variant)
        print(printable(f"{record.name} is now run as {record.architecture}."), file=err)
        return EXIT_OK
    record = library.get("model", name)
    choices = record_variant_choices(record)
    if not choices:
        says = "its folder says" if record.format == "diffusers" else "its tensors tell"
        print(printable(f"{record.name} is a {record.architecture} model, which {says}: it has no "
                        "variants to choose."), file=err)  # fmt: skip
        return EXIT_OK
    for key, label in choices.items():
        mark = "*" if key == record.chosen_variant else " "
        print(printable(f"{mark} {key or 'base':10} {label}"), file=out)
    return EXIT_OK


def _few_step(library: Library, name: str, kind: str | None, out: TextIO, err: TextIO) -> int:
    """Lists the few-step kinds the LoRA `name` may be marked as (its current one starred), or marks it."""
    if kind is not None:
        record = library.choose_few_step(name, "" if kind == "header" else kind)
        now = f"a few-step LoRA ({record.few_step_kind})" if record.few_step_kind else "not a few-step LoRA"
        print(printable(f"{record.name} is now {now}."), file=err)
        return EXIT_OK
    record = library.get("lora", name)
    current = record.chosen_few_step or "header"
    header = record.few_step or "no kind"
    for key in (*FEW_STEP_KINDS, NOT_FEW_STEP, "header"):
        mark = "*" if key == current else " "
        label = f"as its header says ({header})" if key == "header" else _preset_words(key)
        print(printable(f"{mark} {key:10} {label}"), file=out)
    return EXIT_OK


def _preset_words(kind: str) -> str:
    if kind not in PRESETS:
        return "not a few-step LoRA"
    preset = PRESETS[kind]
    return f"{KIND_NAMES[kind]}: {preset.steps} steps, CFG {preset.cfg_scale:g}, {preset.sampler}"


def _record_json(library: Library, record: LibraryRecord) -> dict[str, object]:
    path = library.path_of(record)
    # name/path/folder first: what `models list --json` has always printed.
    extra = {"few_step_kind": record.few_step_kind} if record.kind == "lora" else {}
    return {"name": record.name, "path": str(path), "folder": path.is_dir(), **record.to_json(), **extra}


def _list(library: Library, kind: str, plural: str, as_json: bool, out: TextIO) -> int:
    records = library.records(kind)
    if as_json:
        for record in records:
            print(json.dumps(_record_json(library, record)), file=out)
    elif not records:
        word = next(w for w, (k, _) in GROUPS.items() if k == kind)
        print(f"No {plural} yet. Import one with `marble {word} import FILE`.", file=out)
    else:
        for record in records:
            # A hand-copied file's name is data: escapes in it are shown, not obeyed.
            architecture = record.shown_architecture
            if record.kind == "lora" and record.few_step_kind:
                architecture += f", {KIND_NAMES[record.few_step_kind]} few-step"
            row = (record.name, architecture, _size(record.size), record.autov2 or "-")
            print("\t".join(printable(value) for value in row), file=out)
    return EXIT_OK


def _import(library: Library, kind: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cancelled = False

    def on_signal(*_: object) -> None:
        nonlocal cancelled
        cancelled = True

    interactive = err.isatty()

    def on_progress(done: int, total: int) -> None:
        if interactive and total:
            print(f"\r{done * 100 // total:3d}% {_size(done)} of {_size(total)}", end="", file=err, flush=True)

    previous = signal.signal(signal.SIGINT, on_signal) if _main_thread() else None
    try:
        record = library.import_path(
            args.path, kind, args.name, convert_pickle=args.convert_pickle,
            on_progress=on_progress, should_cancel=lambda: cancelled,
        )  # fmt: skip
    except Cancelled as error:
        print(f"\n{printable(error)}" if interactive else printable(error), file=err)
        return EXIT_CANCELLED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if interactive:
            print(file=err)
    if args.json:
        print(json.dumps(_record_json(library, record)), file=out)
    else:
        print(printable(f"Imported {record.name}: {record.architecture}, {_size(record.size)}, "
                        f"AutoV2 {record.autov2 or '-'}"), file=out)  # fmt: skip
    return EXIT_OK


def _info(library: Library, kind: str, name: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    record = library.info(kind, name)
    metadata = library.header_metadata(record)
    if as_json:
        print(json.dumps({**_record_json(library, record), "metadata": metadata}), file=out)
        return EXIT_OK
    rows = [
        ("name", record.name), ("architecture", record.architecture), ("format", record.format),
        ("size", _size(record.size)), ("sha256", record.sha256), ("AutoV2", record.autov2),
        ("AutoV3", record.autov3), ("path", str(library.path_of(record))), ("source", record.source),
        ("imported", record.imported_at), *record.dit_details,
    ]  # fmt: skip
    if (runs := runs_as(record.format, record.name)) is not None:
        rows.append(("runs as", runs))
    if record.kind == "lora" and record.few_step_kind:
        rows.append(("few-step", KIND_NAMES[record.few_step_kind] + (" (chosen)" if record.chosen_few_step else "")))
    # Header metadata is whatever the file's author wrote: escape sequences in it are shown, not obeyed.
    for label, value in rows:
        print(f"{label:>12}: {printable(value) if value is not None else '-'}", file=out)
    for key, value in sorted(metadata.items()):
        text = value if len(value) <= 200 else value[:200] + "..."
        print(f"{printable('meta ' + key):>12}: {printable(text)}", file=out)
    return EXIT_OK


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and sys.platform != "emscripten"
