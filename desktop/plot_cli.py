"""`marble plot --x PARAM=V1,V2 [--y ...] [--z ...] [generate options]`: an X/Y/Z plot from the command line.

Each cell is an ordinary job through the runner (a PNG with its metadata, a history row); the grid is
drawn at the end. Ctrl+C cancels the running cell and the rest. Kept apart from desktop/cli.py, which
registers the command and passes in what it shares (the request builder, the reporter). Engine only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from PIL import Image

import desktop
from desktop.engine.errors import ErrorKind, MarbleError
from desktop.engine.events import Event, ImageSaved, JobCancelled, JobFailed, JobWarning
from desktop.engine.jobs import Job, JobState
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.metadata import png_info
from desktop.engine.outputs import ImageWriter, write_atomically
from desktop.engine.paths import AppPaths
from desktop.engine.plot import PARAM_NAMES, Axis, assemble_grid, parse_axis, plan_plot
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.engine.settings import saved_prompt_rewriter, saved_tokenizer_folder
from desktop.engine.terminal_text import printable
from desktop.engine.wildcards import Wildcards
from desktop.exit_codes import EXIT_CANCELLED, EXIT_OK, exit_code
from desktop.history_cli import open_history

RequestBuilder = Callable[[argparse.Namespace, AppPaths], GenerationRequest]
Reporter = Callable[[Event], None]


def add_plot_command(commands: argparse._SubParsersAction, add_home: Callable[[argparse.ArgumentParser], None]) -> None:
    plot = commands.add_parser(
        "plot",
        help="X/Y/Z plot: one image per combination of axis values, and a labelled grid",
        description="Takes every `marble generate` option too (--prompt, --model, --seed, ...). Parameters: "
                    f"{', '.join(PARAM_NAMES)}. Values: V1,V2 | 10-30 (+10) | 1-2 [5]; for prompt, the first "
                    "value is the text replaced.",
    )
    for name in ("x", "y", "z"):
        plot.add_argument(f"--{name}", required=name == "x", metavar="PARAM=V1,V2",
                          help=f"the {name.upper()} axis")
    plot.add_argument("--grid", metavar="FILE.png", help="where the grid goes (default: grids/ in the outputs)")
    add_home(plot)


def run_plot(
    args: argparse.Namespace,
    generate_args: argparse.Namespace,
    paths: AppPaths,
    build_request: RequestBuilder,
    report: Reporter,
    out: TextIO,
) -> int:
    try:
        paths.ensure()
        x = parse_axis(args.x)
        axes = [x, *(parse_axis(text) if text else None for text in (args.y, args.z))]
        base = build_request(generate_args, paths).with_seed()
        cells = plan_plot(base, x, axes[1], axes[2])
    except MarbleError as error:
        report(JobFailed("-", str(error), error.kind))
        return exit_code(error.kind)

    from desktop.engine.backends import create_diffusers_backend

    backend = create_diffusers_backend(paths, Resources.default(), ModelCatalog(paths.models),
                                       0 if generate_args.no_preview else 1,
                                       tokenizer_folder=saved_tokenizer_folder(paths.settings_file),
                                       prompt_rewriter=saved_prompt_rewriter(paths.settings_file,
                                                                             generate_args.prompt_rewriter))
    target = Path(generate_args.out).expanduser() if generate_args.out else None
    writer = ImageWriter(target, dated=False) if target else ImageWriter(paths.outputs)
    try:
        history = open_history(paths)
    except (MarbleError, OSError, sqlite3.Error) as error:
        history = None
        report(JobWarning("-", f"Images will be saved but not recorded in the history: {error}"))
    runner = JobRunner(backend, writer, desktop.__version__, history, Wildcards(paths.wildcards))
    current: list[Job] = []
    stopped: list[bool] = []

    def on_interrupt(*_: object) -> None:
        stopped.append(True)
        if current:
            current[-1].cancel_token.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    images: dict[tuple[int, int, int], Path] = {}
    try:
        for cell in cells:
            if stopped:
                report(JobCancelled("-"))
                return EXIT_CANCELLED
            job = Job(cell.request)
            current.append(job)
            saved: list[str] = []
            failures: list[JobFailed] = []

            def emit(event: Event, saved: list[str] = saved, failures: list[JobFailed] = failures) -> None:
                if isinstance(event, ImageSaved):
                    saved.append(event.path)
                elif isinstance(event, JobFailed):
                    failures.append(event)
                report(event)

            state = runner.run(job, emit)
            if state is JobState.CANCELLED:
                return EXIT_CANCELLED
            if state is not JobState.FINISHED or not saved:
                return exit_code(failures[-1].kind if failures else ErrorKind.INTERNAL)
            images[cell.index] = Path(saved[0])
    finally:
        signal.signal(signal.SIGINT, previous)
        if history is not None:
            history.close_all()
    grid_path = _save_grid(images, axes, args.grid, target, paths, base.seed)
    if getattr(generate_args, "json", False):
        print(json.dumps({"event": "grid", "path": str(grid_path)}), file=out, flush=True)
    else:
        print(printable(grid_path), file=out, flush=True)
    return EXIT_OK


def _save_grid(
    images: dict[tuple[int, int, int], Path],
    axes: list[Axis | None],
    grid_arg: str | None,
    target: Path | None,
    paths: AppPaths,
    seed: int,
) -> Path:
    opened = {index: Image.open(path) for index, path in images.items()}
    try:
        x, y, z = axes
        assert x is not None  # --x is required
        grid = assemble_grid({index: image.convert("RGB") for index, image in opened.items()}, x, y, z)
    finally:
        for image in opened.values():
            image.close()
    if grid_arg:
        path = Path(grid_arg).expanduser()
    else:
        folder = (target if target and target.suffix.lower() != ".png" else paths.outputs) / "grids"
        path = folder / f"{datetime.now():%Y%m%d-%H%M%S}-plot-{seed}.png"
    axes_text = "; ".join(f"{name.upper()}: {axis.param}={','.join(map(str, axis.values))}"
                          for name, axis in zip("xyz", axes, strict=True) if axis is not None)
    write_atomically(path, lambda stream: grid.save(stream, format="PNG", pnginfo=png_info({"marble-plot": axes_text})))
    return path
