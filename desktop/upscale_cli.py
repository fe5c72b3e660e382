"""`marble upscale --sd-upscale`: an upscale job through the same runner, history and writer as
`marble generate`, its PNG (with the recipe and the upscale keys) then copied to --out."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from desktop.engine.errors import MarbleError, StorageError
from desktop.engine.events import Event, JobFailed, JobFinished
from desktop.engine.library.index import Library
from desktop.engine.metadata import read_image_metadata
from desktop.engine.paths import AppPaths
from desktop.engine.recipe import read_recipe
from desktop.engine.request import GenerationRequest
from desktop.engine.terminal_text import printable
from desktop.engine.upscale_job import UpscaleSettings, upscale_request
from desktop.exit_codes import EXIT_FAILED, EXIT_OK, exit_code

RunRequest = Callable[[GenerationRequest, argparse.Namespace, AppPaths, Callable[[Event], None]], int]


def sd_upscale_command(
    args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO, run: RunRequest,
    report: Callable[[Event], None],
) -> int:
    finished: list[JobFinished] = []

    def keep(event: Event) -> None:
        if isinstance(event, JobFinished):
            finished.append(event)
        else:
            report(event)

    try:
        paths.ensure()
        library = Library(paths)
        recipe = read_recipe(read_image_metadata(args.image), library.records("model"), library.records("lora"),
                             library.records("vae"))
        settings = UpscaleSettings(
            upscaler=args.upscaler, scale=2.0 if args.scale is None else args.scale,
            sd_upscale=True, sd_tile=512 if args.tile is None else args.tile, sd_overlap=args.overlap,
            denoise=args.denoise,
        )
        request = upscale_request(
            str(Path(args.image).expanduser()), recipe.fields, settings, model=args.model, prompt=args.prompt,
            negative_prompt=args.negative, seed=args.seed, steps=args.steps,
        ).with_seed().validate()
    except MarbleError as error:
        report(JobFailed("-", str(error), error.kind))
        return exit_code(error.kind)
    runner_args = argparse.Namespace(out=None, no_preview=True, rescue_dir=None, threads=0, c2pa=None)
    code = run(request, runner_args, paths, keep)
    if code != EXIT_OK or not finished or not finished[-1].paths:
        return code if code != EXIT_OK else EXIT_FAILED
    target = Path(args.out).expanduser()
    partial = target.with_name(f".{target.name}.partial")
    try:
        # The history keeps its own copy in the outputs folder; --out gets the same bytes.
        shutil.copyfile(finished[-1].paths[0], partial)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        failure = StorageError(f"Could not write {target}: {error.strerror or error}.")
        print(f"marble: error: {printable(str(failure))}", file=err)
        return exit_code(failure.kind)
    print(printable(str(target)), file=out)
    return EXIT_OK



