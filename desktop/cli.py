"""The `marble` command line: the same engine as the window, without Qt."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import desktop
from desktop.engine.backends.schedulers import SAMPLER_NAMES, canonical_sampler
from desktop.engine.errors import InvalidRequest, MarbleError
from desktop.engine.events import (
    Event,
    ImageSaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    JobWarning,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    StepProgress,
)
from desktop.engine.jobs import Job
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.request import DEVICES, PRECISIONS, GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_CANCELLED = 130

_EXIT_FOR_ERROR = {"InvalidRequest": EXIT_BAD_INPUT, "DeviceError": EXIT_BAD_INPUT, "ModelError": EXIT_MODEL}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad input already; this keeps its message to one clear line."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse override
        self.exit(EXIT_BAD_INPUT, f"marble: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="marble", description="Marble Studio: offline text-to-image.")
    parser.add_argument("--version", action="version", version=f"marble {desktop.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="make images from a prompt")
    gen.add_argument("--model", required=True, help="a library name, a .safetensors file or a diffusers folder")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--steps", type=int, default=30)
    gen.add_argument("--cfg", type=float, default=7.5, help="guidance scale")
    gen.add_argument("--seed", type=int, default=-1, help="-1 draws a random seed")
    gen.add_argument("--sampler", default="default", help="an A1111 sampler name, or 'default' (the model's own)")
    gen.add_argument("--width", type=int, default=512)
    gen.add_argument("--height", type=int, default=512)
    gen.add_argument("--batch-count", type=int, default=1, help="pipeline runs, one after another")
    gen.add_argument("--batch-size", type=int, default=1, help="images per run")
    gen.add_argument("--clip-skip", type=int, default=1, help="A1111 clip skip (1 = none)")
    gen.add_argument("--device", default="auto", choices=DEVICES)
    gen.add_argument("--precision", default="auto", choices=PRECISIONS)
    gen.add_argument("--config", help="diffusers config folder for a single-file checkpoint of unusual size")
    gen.add_argument("--out", help="output folder, or a .png file name")
    gen.add_argument("--json", action="store_true", help="print one JSON object per event")
    gen.add_argument("--no-preview", action="store_true", help="skip the per-step preview")
    _add_home(gen)

    models = commands.add_parser("models", help="the model library")
    model_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    listing = model_commands.add_parser("list", help="list the models in the library")
    listing.add_argument("--json", action="store_true")
    _add_home(listing)

    commands.add_parser("samplers", help="list the sampler names")
    return parser


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="keep every file of the app under this folder (or set MARBLE_HOME)")


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    if args.command == "samplers":
        print("\n".join(SAMPLER_NAMES), file=out)
        return EXIT_OK
    paths = AppPaths.resolve(args.home)
    if args.command == "models":
        return _list_models(ModelCatalog(paths.models), args.json, out)
    return _generate(args, paths, out, err)


def _list_models(catalog: ModelCatalog, as_json: bool, out: TextIO) -> int:
    entries = catalog.entries()
    if as_json:
        for entry in entries:
            print(json.dumps({"name": entry.name, "path": str(entry.path), "folder": entry.is_folder}), file=out)
    elif not entries:
        print(f"No models yet. Put .safetensors files or diffusers folders in {catalog.folder}", file=out)
    else:
        for entry in entries:
            print(f"{entry.name}\t{entry.path}", file=out)
    return EXIT_OK


def _generate(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    report = _JsonReporter(out) if args.json else _TextReporter(out, err)
    try:
        request = _request_from_args(args).with_seed().validate()
        paths.ensure()
    except MarbleError as error:
        report(JobFailed("-", str(error), type(error).__name__))
        return _EXIT_FOR_ERROR.get(type(error).__name__, EXIT_FAILED)
    except OSError as error:
        report(JobFailed("-", f"Cannot create the app folders under {paths.models.parent}: {error}", "OSError"))
        return EXIT_FAILED

    from desktop.engine.backends import create_diffusers_backend

    catalog = ModelCatalog(paths.models)
    backend = create_diffusers_backend(paths, Resources.default(), catalog, 0 if args.no_preview else 1)
    writer = ImageWriter(Path(args.out).expanduser(), dated=False) if args.out else ImageWriter(paths.outputs)
    job = Job(request)
    previous = signal.signal(signal.SIGINT, lambda *_: job.cancel_token.cancel())
    outcome: list[Event] = []

    def emit(event: Event) -> None:
        report(event)
        if isinstance(event, JobFinished | JobFailed | JobCancelled):
            outcome.append(event)

    try:
        JobRunner(backend, writer, desktop.__version__).run(job, emit)
    finally:
        signal.signal(signal.SIGINT, previous)
    final = outcome[-1]
    if isinstance(final, JobFinished):
        return EXIT_OK
    if isinstance(final, JobCancelled):
        return EXIT_CANCELLED
    return _EXIT_FOR_ERROR.get(final.error_type, EXIT_FAILED)


def _request_from_args(args: argparse.Namespace) -> GenerationRequest:
    sampler = canonical_sampler(args.sampler)
    if sampler is None:
        raise InvalidRequest(f"Unknown sampler {args.sampler!r}. Known samplers: {', '.join(SAMPLER_NAMES)}.")
    return GenerationRequest(
        prompt=args.prompt,
        model=args.model,
        negative_prompt=args.negative,
        steps=args.steps,
        cfg_scale=args.cfg,
        seed=args.seed,
        sampler=sampler,
        width=args.width,
        height=args.height,
        batch_count=args.batch_count,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        clip_skip=args.clip_skip,
        model_config=str(Path(args.config).expanduser().resolve()) if args.config else None,
    )


class _JsonReporter:
    """One JSON object per line and event, for scripts and tests."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, event: Event) -> None:
        record = _json_record(event)
        if record is not None:
            print(json.dumps(record), file=self._out, flush=True)


def _json_record(event: Event) -> dict[str, Any] | None:
    match event:
        case JobStarted(job_id=job_id, request=request):
            return {"event": "started", "job": job_id, "request": request.to_dict()}
        case ModelLoading(model=model):
            return {"event": "loading", "model": model}
        case ModelLoaded(model=model, seconds=seconds, reused=reused):
            return {"event": "loaded", "model": model, "seconds": round(seconds, 3), "reused": reused}
        case StepProgress(step=step, total=total, batch_index=batch, batch_count=batches):
            return {"event": "step", "step": step, "total": total, "batch": batch, "batches": batches}
        case ImageSaved(path=path, seed=seed, index=index):
            return {"event": "image", "path": path, "seed": seed, "index": index}
        case JobWarning(message=message):
            return {"event": "warning", "message": message}
        case JobFinished(paths=paths, seeds=seeds, seconds=seconds):
            return {"event": "finished", "paths": list(paths), "seeds": list(seeds), "seconds": round(seconds, 3)}
        case JobFailed(message=message, error_type=error_type):
            return {"event": "failed", "message": message, "error": error_type}
        case JobCancelled():
            return {"event": "cancelled"}
    return None  # previews carry pixels: not for a line-oriented stream


class _TextReporter:
    """Human output: progress on stderr, written files on stdout."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err = out, err
        self._interactive = err.isatty()

    def __call__(self, event: Event) -> None:
        match event:
            case ModelLoading(model=model):
                self._say(f"Loading {model} ...")
            case ModelLoaded(model=model, seconds=seconds, reused=reused):
                if not reused:
                    self._say(f"Loaded {model} in {seconds:.1f} s")
            case StepProgress(step=step, total=total, batch_index=batch, batch_count=batches):
                line = f"batch {batch + 1}/{batches} step {step}/{total}"
                if self._interactive:
                    print(f"\r{line}", end="" if step < total else "\n", file=self._err, flush=True)
                elif step == total:
                    self._say(line)
            case JobWarning(message=message):
                self._say(f"warning: {message}")
            case ImageSaved(path=path):
                print(path, file=self._out, flush=True)
            case JobFinished(paths=paths, seconds=seconds):
                self._say(f"Done: {len(paths)} image(s) in {seconds:.1f} s")
            case JobFailed(message=message):
                self._say(f"marble: error: {message}")
            case JobCancelled():
                self._say("Cancelled.")
            case PreviewReady():
                pass

    def _say(self, text: str) -> None:
        print(text, file=self._err, flush=True)


if __name__ == "__main__":
    sys.exit(main())
