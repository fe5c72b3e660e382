"""The `marble` command line: the same engine as the window, without Qt."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

import desktop
from desktop.engine.backends.hires import canonical_upscaler
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, canonical_sampler
from desktop.engine.edit_inputs import inputs_folder, request_size, step_words
from desktop.engine.errors import ErrorKind, InvalidRequest, MarbleError, StorageError
from desktop.engine.events import (
    COMPILING_TEXT,
    FITTING_TEXT,
    LOADING_TEXT,
    REWRITING_TEXT,
    Event,
    ImageSaved,
    ImageUnsaved,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobStarted,
    JobWarning,
    ModelCompiling,
    ModelLoaded,
    ModelLoading,
    PreviewReady,
    PreviewsFitting,
    PromptRewriting,
    StepProgress,
)
from desktop.engine.history.store import RESUMED, explain_database_error
from desktop.engine.imaging import (
    Margins,
    check_source_size,
    load_mask,
    load_source,
    outpaint_canvas,
    save_png_by_hash,
)
from desktop.engine.jobs import Job
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import demo_model_name, install_demo_control, install_demo_model
from desktop.engine.library.few_step import FEW_STEP_KINDS, split_family
from desktop.engine.library.index import Library
from desktop.engine.library.lora import AdapterCatalog, parse_lora_arg
from desktop.engine.library.native_size import family_defaults, model_family, native_size
from desktop.engine.metadata import read_image_metadata
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.provenance import signer_for
from desktop.engine.recipe import read_recipe, recipe_text
from desktop.engine.request import (
    BITSANDBYTES_MEMORY_MODES,
    CONTROL_MODES,
    CONTROL_PREPROCESSORS,
    DEVICES,
    EMPHASIS_MODES,
    INPAINT_AREAS,
    IP_ADAPTER_PREPROCESSOR,
    MEMORY_MODES,
    PRECISIONS,
    RESIZE_MODES,
    ControlUnit,
    GenerationRequest,
    LayoutBox,
    LoraRef,
)
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.engine.settings import SettingsStore, saved_prompt_rewriter, saved_tokenizer_folder
from desktop.engine.styles import StyleStore, apply_styles
from desktop.engine.terminal_text import printable
from desktop.engine.wildcards import Wildcards
from desktop.exit_codes import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, exit_code
from desktop.exit_codes import EXIT_MODEL as EXIT_MODEL  # re-exported: tests and scripts import the statuses here
from desktop.history_cli import add_history_commands, default_rescue_dir, open_history, rescue, run_history
from desktop.library_cli import GROUPS as LIBRARY_GROUPS
from desktop.library_cli import add_library_commands, run_library
from desktop.plot_cli import add_plot_command, run_plot
from desktop.serve_cli import add_serve_command, run_serve
from desktop.styles_cli import add_styles_commands, run_styles
from desktop.upscale_cli import sd_upscale_command


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad input already; this keeps its message to one clear line."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse override
        self.exit(EXIT_BAD_INPUT, f"marble: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="marble", description="Marble Studio: offline text-to-image.")
    parser.add_argument("--version", action="version", version=f"marble {desktop.__version__}")
    # Before the subcommand too (`marble --home X generate ...`); the subcommands' own --home, after it,
    # leaves this value alone when absent (SUPPRESS in _add_home).
    parser.add_argument("--home", default=None, help=_HOME_HELP)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser("generate", help="make images from a prompt")
    gen.add_argument("--model", help="a library name, a .safetensors file or a diffusers folder (default: the demo)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--steps", type=int, default=None, help="default 30; 4 for a Flux schnell model")
    gen.add_argument("--cfg", type=float, default=None,
                     help="guidance scale (default 7.5; 1 for Flux schnell, 4 for Qwen-Image)")
    gen.add_argument("--distilled-cfg", type=float, metavar="F",
                     help="Flux dev's distilled guidance (Forge's Distilled CFG Scale; default 3.5, 4 for Flux.2 "
                          "dev); other models ignore it")
    gen.add_argument("--text-encoders", metavar="DIR_OR_NAME",
                     help="for a transformer-only Flux/SD3/Qwen-Image/Z-Image/Flux.2/FLUX.3/Lumina/Krea 2/ERNIE-Image/"
                          "LongCat-Image/Ovis-Image/HiDream-I1/AuraFlow/Sana/PixArt file: "
                          "a diffusers folder (or library model) of the same family that supplies the text encoders, "
                          "tokenizers and VAE (Qwen-Image/Z-Image/Flux.2/FLUX.3/Lumina/ERNIE-Image/LongCat-Image/"
                          "Ovis-Image: or a folder holding "
                          "text_encoder/, tokenizer/ and vae/; Qwen-Image 2.1: processor/ in place of tokenizer/); "
                          "for Flux/SD3/Chroma also text encoders from `marble encoders`, by name "
                          "(clip_l,t5xxl_fp16), with --vae NAME (Krea 2: qwen3vl_4b_fp8_scaled with qwen_image_vae; "
                          "ERNIE-Image: ministral-3-3b with flux2-vae; FLUX.3: qwen3vl_4b with flux2-vae; "
                          "Qwen-Image 2.1: qwen3vl_8b with its folder's vae file; "
                          "LongCat-Image: qwen_2.5_vl_7b with ae; "
                          "Ovis-Image: ovis_2.5 with ae; HiDream-I1: clip_l_hidream,clip_g_hidream,t5xxl,"
                          "llama_3.1_8b_instruct with ae and --tokenizer-folder, or its diffusers folder holding "
                          "Llama 3.1 as text_encoder_4/; AuraFlow and Pony V7: pile_t5xl with sdxl_vae and "
                          "--tokenizer-folder; PixArt: t5xxl with sdxl_vae, Alpha with SD 1.5's VAE)")
    gen.add_argument("--tokenizer-folder", metavar="DIR",
                     help="for a Qwen-Image/Z-Image/Flux.2 file run with a library text encoder: a folder holding "
                          "the tokenizer to use instead of Marble's own Qwen tokenizer (tokenizer.json or vocab.json "
                          "+ merges.txt, tokenizer_config.json; for Qwen-Image-Edit and LongCat-Image-Edit also "
                          "preprocessor_config.json), "
                          "or the model's diffusers folder; for Flux.2 dev, whose Mistral file from ComfyUI carries "
                          "its tokenizer, FLUX.2-dev's tokenizer/ folder or a Mistral tekken.json's folder; for "
                          "Lumina Image 2.0 with a Gemma-2 file (needed: Gemma's tokenizer cannot ship), "
                          "Lumina-Image-2.0's tokenizer/ folder; for HiDream-I1 with library encoders (needed: Llama "
                          "3.1's cannot ship), Meta-Llama-3.1-8B-Instruct's folder or HiDream's tokenizer_4/; for "
                          "AuraFlow and Pony V7 with a library or all-in-one Pile-T5-XL (needed: its LLaMA tokenizer "
                          "cannot ship), an AuraFlow or Pony V7 diffusers folder or its tokenizer/")
    gen.add_argument("--seed", type=int, default=-1, help="-1 draws a random seed")
    gen.add_argument("--sampler", default="default", help="an A1111 sampler name, or 'default' (the model's own)")
    gen.add_argument("--few-step", choices=FEW_STEP_KINDS, default=None, metavar="KIND",
                     help=f"a few-step model or LoRA ({', '.join(FEW_STEP_KINDS)}): its published steps, CFG "
                          "and sampler unless given; detected from the model's or --lora's header when it says")
    gen.add_argument("--refiner", default="", metavar="NAME", help="an SDXL refiner model to finish the image")
    gen.add_argument("--refiner-switch-at", type=float, default=0.8, metavar="F",
                     help="fraction of the steps the base model runs before the refiner takes over (default 0.8)")
    gen.add_argument("--subseed", type=int, default=-1, metavar="N",
                     help="A1111's variation seed (-1 draws one when --subseed-strength is above 0)")
    gen.add_argument("--subseed-strength", type=float, default=0.0, metavar="F",
                     help="how far the noise moves from --seed's towards --subseed's: 0 off, 1 all the way")
    gen.add_argument("--seed-resize-from", metavar="WxH",
                     help="draw the seed's noise at this size and centre it (A1111's Seed resize from)")
    gen.add_argument("--tiling", action="store_true", help="seamless tiling: the image wraps at its edges")
    gen.add_argument("--width", type=int, help="the model's native size; the source's with --init-image")
    gen.add_argument("--height", type=int, help="the model's native size; the source's with --init-image")
    gen.add_argument("--batch-count", type=int, default=1, help="pipeline runs, one after another")
    gen.add_argument("--batch-size", type=int, default=1, help="images per run")
    gen.add_argument("--clip-skip", type=int, default=1, help="A1111 clip skip (1 = none)")
    gen.add_argument("--emphasis", default="Original", choices=EMPHASIS_MODES,
                     help="A1111's emphasis: how (word:1.2) weights apply")
    gen.add_argument("--device", default="auto", choices=DEVICES)
    gen.add_argument("--precision", default="auto", choices=PRECISIONS)
    gen.add_argument("--memory-mode", default="auto", choices=MEMORY_MODES + BITSANDBYTES_MEMORY_MODES,
                     help="full: all on the device; tiled: VAE tiling + attention slicing; offload: model CPU offload; "
                          "Flux/SD3 also group (group offload), sequential (layer by layer), fp8 (float8 weights), "
                          "nf4/int8 (bitsandbytes-quantised weights; needs the bitsandbytes package)")
    gen.add_argument("--rewrite-prompt", action="store_true",
                     help="FLUX.3: expand the prompt with FLUX.3's prompt rewriter into the detailed caption the "
                          "picture is made from (and that its metadata records as the prompt); text to image, with "
                          "or without --reference-image")
    gen.add_argument("--layout-box", action="append", default=[], metavar="LEFT,TOP,RIGHT,BOTTOM:TEXT",
                     help="with --rewrite-prompt: a box the rewriter places what TEXT describes in, its edges as "
                          "fractions of the picture (0,0 top left; 1,1 bottom right), e.g. '0.1,0.2,0.5,0.9:a red "
                          "fox' (repeatable)")
    gen.add_argument("--layout-move", action="append", default=[], metavar="REF:FROM_EDGES:TO_EDGES:TEXT",
                     help="with --rewrite-prompt and --reference-image: move (or resize) the element TEXT describes "
                          "from its box in reference picture REF (from 1) to a box in the picture, both as "
                          "LEFT,TOP,RIGHT,BOTTOM fractions, e.g. '1:0.1,0.5,0.3,0.9:0.6,0.5,0.8,0.9:the red cup' "
                          "(repeatable; numbered after the --layout-box boxes)")
    gen.add_argument("--prompt-rewriter", metavar="DIR",
                     help="the prompt rewriter's folder (flux-3-image-klein-pup: weights, tokenizer, "
                          "system_prompts.json) instead of the Settings' FLUX.3 prompt rewriter")
    gen.add_argument("--fast", action="store_true",
                     help="fast mode for GPUs: channels_last and torch.compile on the UNet (the first image compiles)")
    gen.add_argument("--config", help="diffusers config folder for a single-file checkpoint of unusual size")
    gen.add_argument("--out", help="output folder, or a .png file name")
    gen.add_argument("--json", action="store_true", help="print one JSON object per event")
    gen.add_argument("--no-preview", action="store_true", help="skip the per-step preview")
    gen.add_argument("--vae", default="", metavar="NAME",
                     help="decode with a library VAE (marble vaes import FILE) instead of the model's own")
    gen.add_argument("--threads", type=_thread_count, default=0, metavar="N",
                     help="CPU threads for the job; 0 (default): the cores other programs leave free")
    gen.add_argument("--lora", action="append", default=[], metavar="NAME:WEIGHT",
                     help="apply a library LoRA (repeatable; weight 1 if omitted); <lora:NAME:WEIGHT> in the "
                          "prompt works too")
    gen.add_argument("--style", action="append", default=[], metavar="NAME",
                     help="apply a saved style to the prompt and negative (repeatable; `marble styles list`)")
    control = gen.add_argument_group("ControlNet / T2I-Adapter units")
    control.add_argument("--control", action="append", default=[], metavar="NAME:IMAGE[:WEIGHT[:START:END]]",
                         help="a control unit: a library control model (marble controls import FILE; built-in: "
                              "a Flux.1 Canny / Depth dev model's own control input), its image, "
                              "weight (default 1) and guidance range as fractions of the steps (repeatable)")
    control.add_argument("--control-preprocessor", action="append", default=[], choices=CONTROL_PREPROCESSORS,
                         help="preprocess the control image (once for every unit, or once per --control in order)")
    control.add_argument("--control-mode", action="append", default=[], choices=CONTROL_MODES,
                         help="balanced, prompt (A1111's 'My prompt is more important') or control ('ControlNet "
                              "is more important'); once for every unit, or once per --control")
    control.add_argument("--ip-adapter", action="append", default=[], metavar="NAME:IMAGE[|IMAGE...][:WEIGHT]",
                         help="an image prompt: a library IP-Adapter, its reference image(s) and weight (default 1); "
                              "several images joined by | (quote it) are averaged as A1111 does; the CLIP image "
                              "encoder is picked from the control library (repeatable)")
    edit = gen.add_argument_group("image-to-image, inpainting and outpainting")
    edit.add_argument("--init-image", metavar="PATH", help="source image (PNG, JPEG or WebP)")
    edit.add_argument("--strength", type=float, default=0.75, help="0 keeps the source, 1 ignores it")
    edit.add_argument("--reference-image", action="append", default=[], metavar="PATH",
                      help="a reference image the prompt can refer to (repeatable): Qwen-Image-Edit Plus, after "
                           "the source ('Picture 2', ...; at most 2); Flux.2 in text-to-image (dev up to 10, Klein 4)")
    edit.add_argument("--mask", metavar="PATH", help="inpainting mask image: white = repaint")
    edit.add_argument("--mask-blur", type=int, default=4, metavar="PX", help="feather the mask edge (A1111 Mask blur)")
    edit.add_argument("--inpaint-area", choices=INPAINT_AREAS, default="whole",
                      help="'masked' generates only the mask's box (plus padding) at --width x --height")
    edit.add_argument("--padding", type=int, default=32, metavar="PX", help="padding around the mask for 'masked'")
    edit.add_argument("--resize-mode", choices=RESIZE_MODES, default="resize",
                      help="make a source that is not a multiple of 8 fit by resizing or by padding")
    edit.add_argument("--outpaint", metavar="L,T,R,B",
                      help="grow the source canvas by these pixels (or one number for all sides) and fill them")
    hires = gen.add_argument_group("hires fix (A1111's: a second, image-to-image pass at a larger size)")
    hires.add_argument("--hires-scale", type=float, metavar="F", help="upscale by F (turns the hires fix on)")
    hires.add_argument("--hires-resize", metavar="WxH",
                       help="upscale to this size instead (0 on one side keeps the aspect ratio)")
    hires.add_argument("--hires-steps", type=int, default=0, metavar="N", help="second-pass steps (0 = --steps)")
    hires.add_argument("--hires-denoise", type=float, default=0.7, metavar="D", help="second-pass denoising strength")
    hires.add_argument("--hires-upscaler", default="Latent", metavar="NAME",
                       help="Latent, Latent (antialiased), Latent (bicubic), Latent (nearest), Lanczos, Nearest, or "
                       "a library upscaler")
    hires.add_argument("--hires-prompt", default="", metavar="TEXT", help="second-pass prompt (default: --prompt)")
    hires.add_argument("--hires-negative", default="", metavar="TEXT", help="second-pass negative prompt")
    hires.add_argument("--hires-sampler", default="", metavar="NAME", help="second-pass sampler (default: --sampler)")
    gen.add_argument("--c2pa", action=argparse.BooleanOptionalAction, default=None,
                     help="sign the images with a C2PA manifest (default: the C2PA signing setting)")
    gen.add_argument("--rescue-dir", metavar="DIR",
                     help="where images go when the output folder cannot be written (disk full); "
                          "default: marble-rescue in the temp folder")
    _add_home(gen)

    add_library_commands(commands, _Parser, _add_home)

    add_history_commands(commands, _Parser, _add_home)
    add_styles_commands(commands, _Parser, _add_home)
    add_plot_command(commands, _add_home)
    add_serve_command(commands, _Parser, _add_home)
    commands.add_parser("samplers", help="list the sampler names")
    up = commands.add_parser("upscale", help="upscale an image with a library upscaler model (docs/upscalers.md)")
    up.add_argument("image", help="a PNG, JPEG or WebP image")
    up.add_argument("--upscaler", required=True, metavar="NAME", help="a library upscaler (marble upscalers list)")
    up.add_argument("--scale", type=float, default=None, metavar="F",
                    help="final scale (default: the model's own); other scales resize its result with Lanczos")
    up.add_argument("--tile", type=int, default=None, metavar="PX",
                    help="tile size: the upscaler's, in source pixels (default 256; 0 = whole image); with "
                    "--sd-upscale the image-to-image tiles' (default 512)")
    up.add_argument("--device", default="cpu", choices=DEVICES)
    up.add_argument("--out", required=True, metavar="FILE", help="the PNG to write")
    sd = up.add_argument_group("SD upscale (A1111's script: image-to-image over overlapping tiles)")
    sd.add_argument("--sd-upscale", action="store_true", help="denoise the upscaled image again, tile by tile")
    sd.add_argument("--model", default=None, metavar="NAME", help="the model (default: the source's recipe's)")
    sd.add_argument("--prompt", default=None, help="the prompt (default: the source's)")
    sd.add_argument("--negative", default=None, help="the negative prompt (default: the source's)")
    sd.add_argument("--seed", type=int, default=None, help="the seed (default: the source's)")
    sd.add_argument("--steps", type=int, default=None, help="steps (default: the source's)")
    sd.add_argument("--denoise", type=float, default=0.3, metavar="D", help="denoising strength (default 0.3)")
    sd.add_argument("--overlap", type=int, default=64, metavar="PX", help="tile overlap in pixels (default 64)")
    _add_home(up)
    info = commands.add_parser("info", help="print an image's recipe (A1111, ComfyUI, InvokeAI, ... metadata)")
    info.add_argument("file", help="a PNG, JPEG or WebP image")
    info.add_argument("--json", action="store_true", help="print the recipe as one JSON object")
    _add_home(info)
    return parser


_HOME_HELP = "keep every file of the app under this folder (or set MARBLE_HOME)"


def _thread_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count (0 = automatic, or 1 and up)")
    return count


def _add_home(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: without it a subcommand's default (None) would overwrite a --home given before the subcommand.
    parser.add_argument("--home", default=argparse.SUPPRESS, help=_HOME_HELP)


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    try:
        return _main(argv, stdout, stderr)
    except BrokenPipeError:
        # The reader of our output closed it (`| head`): stop quietly, as other tools do. Point stdout at
        # devnull so the interpreter's final flush at exit does not raise (and print) the error again.
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's StringIO): nothing to flush
        pass


def _main(argv: Sequence[str] | None, stdout: TextIO | None, stderr: TextIO | None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    # `marble plot` takes every `marble generate` option: those it leaves unknown are read below as such.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "plot":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "samplers":
        print("\n".join(SAMPLER_NAMES), file=out)
        return EXIT_OK
    paths = AppPaths.resolve(args.home)
    if args.command == "info":
        return _info(args, paths, out, err)
    if args.command == "upscale":
        return _upscale(args, paths, out, err)
    if args.command in LIBRARY_GROUPS:
        return run_library(args, paths, out, err)
    if args.command == "history" and args.history_command == "resume":
        return _resume(args, paths, out, err)
    if args.command == "history":
        return run_history(args, paths, out, err)
    if args.command == "styles":
        return run_styles(args, paths, out, err)
    if args.command == "plot":
        generate_args = parser.parse_args([*(["--home", args.home] if args.home else []), "generate", *unknown])
        return run_plot(args, generate_args, paths, _request_from_args,
                        _JsonReporter(out) if generate_args.json else _TextReporter(out, err), out)
    if args.command == "serve":
        return run_serve(args, paths, out, err)
    return _generate(args, paths, out, err)


def _info(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    """The same recipe the window's PNG info view shows, matched against this library."""
    try:
        library = Library(paths)
        recipe = read_recipe(read_image_metadata(args.file), library.records("model"), library.records("lora"),
                             library.records("vae"), library.records("control"),
                             library.records("upscaler"))
    except MarbleError as error:
        print(f"marble: {printable(str(error))}", file=err)
        return exit_code(error.kind)
    if args.json:
        print(json.dumps(recipe.to_json(), ensure_ascii=False), file=out)
    else:
        print(printable(recipe_text(recipe), multiline=True), file=out)
    return EXIT_OK


def _upscale(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    """`marble upscale`: a library upscaler over the image in overlapping tiles, written atomically."""
    if args.sd_upscale:
        return sd_upscale_command(args, paths, out, err, _run_request, _TextReporter(out, err))
    args.tile = 256 if args.tile is None else args.tile
    try:
        if args.tile < 0 or 0 < args.tile < 32:
            raise InvalidRequest(f"--tile {args.tile} is too small: use 32 pixels or more, or 0 for the whole image.")
        if args.scale is not None and not 0.25 <= args.scale <= 16:
            raise InvalidRequest(f"--scale {args.scale:g} is out of range: use 0.25 to 16.")
        entry = AdapterCatalog(paths.upscalers, "upscaler", "upscalers").get(args.upscaler)
        source = load_source(args.image)
        from desktop.engine.backends.upscale import load_upscaler, upscale  # torch: only when it is needed

        network, info = load_upscaler(entry.path, args.device)
        result = upscale(network, info.scale, source, tile=args.tile)
        if args.scale is not None and args.scale != info.scale:
            size = (max(1, round(source.width * args.scale)), max(1, round(source.height * args.scale)))
            result = result.resize(size, Image.Resampling.LANCZOS)
        target = Path(args.out).expanduser()
        partial = target.with_name(f".{target.name}.partial")
        try:
            result.save(partial, format="PNG")
            os.replace(partial, target)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise StorageError(f"Could not write {target}: {error.strerror or error}.") from None
    except MarbleError as error:
        print(f"marble: error: {printable(str(error))}", file=err)
        return exit_code(error.kind)
    print(printable(str(target)), file=out)
    return EXIT_OK


def _generate(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    report = _JsonReporter(out) if args.json else _TextReporter(out, err)
    try:
        paths.ensure()
        request = _request_from_args(args, paths).with_seed().validate()
    except MarbleError as error:
        report(JobFailed("-", str(error), error.kind))
        return exit_code(error.kind)
    except OSError as error:
        report(JobFailed("-", f"Cannot create the app folders under {paths.models.parent}: {error}",
                          ErrorKind.STORAGE))
        return EXIT_FAILED
    return _run_request(request, args, paths, report)


def _c2pa_wanted(args: argparse.Namespace, paths: AppPaths) -> bool:
    """--c2pa / --no-c2pa, else the setting the window saved (`marble resume` has no flag)."""
    chosen = getattr(args, "c2pa", None)
    if chosen is not None:
        return bool(chosen)
    return bool(SettingsStore.open(paths.settings_file).get("c2pa"))


def _run_request(
    request: GenerationRequest,
    args: argparse.Namespace,
    paths: AppPaths,
    report: Callable[[Event], None],
    resumes: str | None = None,
) -> int:
    """Run one validated request (`args` gives --no-preview, --out, --rescue-dir); `resumes` names
    the unfinished job this one finishes, which the history then records as resumed."""
    from desktop.engine.backends import create_diffusers_backend

    try:
        # Checked before the model loads: a missing key should not cost a minute of loading first.
        signer = signer_for(paths.config, _c2pa_wanted(args, paths))
    except MarbleError as error:
        report(JobFailed("-", str(error), error.kind))
        return exit_code(error.kind)
    catalog = ModelCatalog(paths.models)
    backend = create_diffusers_backend(
        paths, Resources.default(), catalog, 0 if args.no_preview else 1, getattr(args, "threads", 0),
        saved_tokenizer_folder(paths.settings_file),
        saved_prompt_rewriter(paths.settings_file, getattr(args, "prompt_rewriter", None)),
    )
    writer = ImageWriter(Path(args.out).expanduser(), dated=False) if args.out else ImageWriter(paths.outputs)
    writer.signer = signer
    job = Job(request)
    try:
        # Opening also tidies up after a crash: leftover temp files, jobs of dead processes.
        history = open_history(paths)
    except (MarbleError, OSError, sqlite3.Error) as error:
        history = None
        report(JobWarning(job.id, f"Images will be saved but not recorded in the history: {error}"))
    if history is not None and resumes is not None:
        try:
            history.set_job_state(resumes, RESUMED, f"resumed as {job.id}")
        except sqlite3.Error as error:
            # Unrecorded, the old job would be offered again and its images made twice: make none now.
            history.close_all()
            report(JobFailed(job.id, explain_database_error(paths.history_db, error, paths.outputs), ErrorKind.STORAGE))
            return EXIT_FAILED
    rescue_dir = Path(args.rescue_dir).expanduser() if args.rescue_dir else default_rescue_dir()
    previous = signal.signal(signal.SIGINT, lambda *_: job.cancel_token.cancel())
    outcome: list[Event] = []

    def emit(event: Event) -> None:
        if isinstance(event, ImageUnsaved):
            # A command line has no later "save elsewhere" button: put the image somewhere at once.
            try:
                saved = rescue(event, rescue_dir, history)
                event = JobWarning(event.job_id, f"Could not save image {event.index + 1} ({event.message}); "
                                                 f"saved it to {saved} instead.")
            except MarbleError as error:
                event = JobWarning(event.job_id, f"Image {event.index + 1} is lost: {event.message} {error}")
        report(event)
        if isinstance(event, JobFinished | JobFailed | JobCancelled):
            outcome.append(event)

    try:
        JobRunner(backend, writer, desktop.__version__, history, Wildcards(paths.wildcards)).run(job, emit)
    finally:
        signal.signal(signal.SIGINT, previous)
        if history is not None:
            history.close_all()
    final = outcome[-1]
    if isinstance(final, JobFinished):
        return EXIT_OK
    if isinstance(final, JobCancelled):
        return EXIT_CANCELLED
    return exit_code(final.kind)


def _resume(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    """`marble history resume JOB`: make what an interrupted job left undone."""
    report = _JsonReporter(out) if args.json else _TextReporter(out, err)
    try:
        paths.ensure()
        history = open_history(paths)
        try:
            record = next((job for job in history.unfinished_jobs() if job.id == args.job), None)
        finally:
            history.close_all()
    except (MarbleError, OSError) as error:
        kind = error.kind if isinstance(error, MarbleError) else ErrorKind.STORAGE
        report(JobFailed("-", f"Cannot open the history: {error}", kind))
        return EXIT_FAILED
    except sqlite3.Error as error:
        report(JobFailed("-", explain_database_error(paths.history_db, error, paths.outputs), ErrorKind.STORAGE))
        return EXIT_FAILED
    if record is None:
        report(JobFailed("-", f"No unfinished job {args.job!r}; `marble history jobs` lists them.",
                         ErrorKind.INVALID_REQUEST))
        return EXIT_BAD_INPUT
    return _run_request(record.remaining_request(), args, paths, report, resumes=record.id)


def _size_arg(text: str, option: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if match is None:
        raise InvalidRequest(f"{option} {text!r} is not a size: write it as WIDTHxHEIGHT, e.g. 768x512.")
    return int(match[1]), int(match[2])


def _request_from_args(args: argparse.Namespace, paths: AppPaths) -> GenerationRequest:
    sampler = canonical_sampler(args.sampler)
    if sampler is None:
        raise InvalidRequest(f"Unknown sampler {args.sampler!r}. Known samplers: {', '.join(SAMPLER_NAMES)}.")
    init_image, mask = _edit_inputs(args, paths)
    resize_from = _size_arg(args.seed_resize_from, "--seed-resize-from") if args.seed_resize_from else (0, 0)
    model = args.model or _default_model(paths)
    prompt, negative = args.prompt, args.negative
    if args.style:
        prompt, negative = apply_styles(prompt, negative, StyleStore(paths.styles_file).get_many(args.style))
    width, height = args.width, args.height
    for reference in args.reference_image:
        load_source(Path(reference).expanduser(), "The reference image")  # refused before the model loads
    if init_image is not None:
        source_size = load_source(init_image).size
        # Before the model loads: a source the model cannot work on is refused with the reason.
        check_source_size(source_size, args.resize_mode, whole=mask is None or args.inpaint_area == "whole")
        if width is None or height is None:
            # Default to the source's own size (as a multiple of 8): "whole" then works at full detail.
            size = request_size(source_size, args.resize_mode)
            width, height = width or size[0], height or size[1]
    if width is None or height is None:
        side = _model_native_size(model, paths) or 512
        width, height = width or side, height or side
    # A few-step family (Flux schnell, an LCM/Turbo/... model or LoRA) gets its own steps, CFG and sampler
    # unless the user gave them.
    loras = tuple(parse_lora_arg(value) for value in args.lora)
    family = f"-{args.few_step}" if args.few_step else _model_family(model, paths)
    if not split_family(family)[1]:
        family = next((f"-{kind}" for kind in _lora_few_steps(loras, paths)), family)
    defaults = {"steps": 30, "cfg_scale": 7.5, "distilled_cfg_scale": 3.5, "sampler": sampler, "few_step": ""}
    defaults |= family_defaults(family)
    if args.sampler.strip().casefold() != DEFAULT_SAMPLER:
        defaults["sampler"] = sampler
    return GenerationRequest(
        prompt=prompt,
        model=model,
        negative_prompt=negative,
        steps=args.steps if args.steps is not None else defaults["steps"],
        cfg_scale=args.cfg if args.cfg is not None else defaults["cfg_scale"],
        few_step=str(defaults.get("few_step", "")),
        refiner=args.refiner,
        refiner_switch_at=args.refiner_switch_at,
        distilled_cfg_scale=args.distilled_cfg if args.distilled_cfg is not None else defaults["distilled_cfg_scale"],
        text_encoders=_text_encoders(args.text_encoders, paths),
        tokenizer_folder=str(Path(args.tokenizer_folder).expanduser().resolve()) if args.tokenizer_folder else None,
        seed=args.seed,
        sampler=str(defaults["sampler"]),
        width=width,
        height=height,
        batch_count=args.batch_count,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        memory_mode=args.memory_mode,
        fast_mode=args.fast,
        rewrite_prompt=args.rewrite_prompt,
        layout_boxes=parse_layout_box_args(args.layout_box) + parse_layout_move_args(args.layout_move),
        clip_skip=args.clip_skip,
        emphasis=args.emphasis,
        model_config=str(Path(args.config).expanduser().resolve()) if args.config else None,
        init_image=init_image,
        reference_images=tuple(str(Path(path).expanduser().resolve()) for path in args.reference_image),
        strength=args.strength,
        mask=mask,
        mask_blur=args.mask_blur,
        inpaint_area=args.inpaint_area,
        padding=args.padding,
        resize_mode=args.resize_mode,
        loras=loras,
        subseed=args.subseed,
        subseed_strength=args.subseed_strength,
        seed_resize_from_w=resize_from[0],
        seed_resize_from_h=resize_from[1],
        tiling=args.tiling,
        vae=args.vae,
        controls=parse_control_args(args.control, args.control_preprocessor, args.control_mode)
        + parse_ip_adapter_args(args.ip_adapter),
        **_hires_fields(args),
    )


def parse_layout_box_args(values: list[str]) -> tuple[LayoutBox, ...]:
    """`--layout-box LEFT,TOP,RIGHT,BOTTOM:TEXT` values as layout boxes (the edges checked by the request)."""
    boxes = []
    for value in values:
        edges, _, text = value.partition(":")
        try:
            left, top, right, bottom = _edges(edges)
        except ValueError:
            raise InvalidRequest(f"--layout-box {value!r}: use LEFT,TOP,RIGHT,BOTTOM:TEXT with the edges as fractions "
                                 "of the picture, e.g. 0.1,0.2,0.5,0.9:a red fox.") from None  # fmt: skip
        boxes.append(LayoutBox(text.strip(), left, top, right, bottom))
    return tuple(boxes)


def parse_layout_move_args(values: list[str]) -> tuple[LayoutBox, ...]:
    """`--layout-move REF:FROM_EDGES:TO_EDGES:TEXT` values as layout boxes moving an element from a reference picture
    (the numbers checked by the request); the text may hold colons."""
    boxes = []
    for value in values:
        try:
            reference, source, target, text = [*value.split(":", 3), ""][:4]
            number = int(reference)
            left, top, right, bottom = _edges(target)
            source_edges = _edges(source)
        except ValueError:
            raise InvalidRequest(f"--layout-move {value!r}: use REF:FROM_EDGES:TO_EDGES:TEXT, the reference picture's "
                                 "number (from 1), then the element's box in it and its box in the picture as "
                                 "LEFT,TOP,RIGHT,BOTTOM fractions, e.g. 1:0.1,0.5,0.3,0.9:0.6,0.5,0.8,0.9:the red "
                                 "cup.") from None  # fmt: skip
        boxes.append(LayoutBox(text.strip(), left, top, right, bottom, reference=number,
                               source=source_edges))  # fmt: skip
    return tuple(boxes)


def _edges(value: str) -> tuple[float, float, float, float]:
    """LEFT,TOP,RIGHT,BOTTOM as four numbers; ValueError otherwise."""
    left, top, right, bottom = (float(edge) for edge in value.split(","))
    return left, top, right, bottom


def parse_ip_adapter_args(values: list[str]) -> tuple[ControlUnit, ...]:
    """`--ip-adapter NAME:IMAGE[|IMAGE...][:WEIGHT]` values as IP-Adapter units (after the --control units).
    The image path may hold colons: a last part that is a number is the weight. Several reference images
    are joined by `|`, which no Windows path can hold (and, unlike `+` or `;`, Windows names cannot); a
    Linux file whose name holds `|` is still taken whole when it exists."""
    units = []
    for value in values:
        name, _, rest = value.partition(":")
        image, sep, last = rest.rpartition(":")
        try:
            weight = float(last) if sep else 1.0
        except ValueError:
            image, weight = rest, 1.0
        if not sep:
            image = rest
        pieces = [image] if "|" not in image or Path(image).expanduser().exists() else image.split("|")
        if not name.strip() or not all(piece.strip() for piece in pieces):
            raise InvalidRequest(f"--ip-adapter {value!r}: use NAME:IMAGE[|IMAGE...][:WEIGHT].")
        paths = [str(Path(piece).expanduser().resolve()) for piece in pieces]
        units.append(ControlUnit(name, paths[0], weight, preprocessor=IP_ADAPTER_PREPROCESSOR,
                                 more_images=tuple(paths[1:])))  # fmt: skip
    return tuple(units)


def parse_control_args(values: list[str], preprocessors: list[str], modes: list[str]) -> tuple[ControlUnit, ...]:
    """`--control NAME:IMAGE[:WEIGHT[:START:END]]` values as units. The image path may hold colons
    (C:\\...): numbers are taken from the end, the rest after the name is the path."""
    units = []
    for value in values:
        name, _, rest = value.partition(":")
        parts = rest.split(":")
        numbers: list[float] = []
        for count in (3, 1):
            tail = parts[-count:] if len(parts) > count else []
            try:
                numbers = [float(part) for part in tail]
            except ValueError:
                continue
            if numbers:
                parts = parts[:-count]
                break
        image = ":".join(parts)
        if not name.strip() or not image.strip():
            raise InvalidRequest(f"--control {value!r}: use NAME:IMAGE[:WEIGHT[:START:END]].")
        weight, start, end = (numbers + [0.0, 1.0])[:3] if numbers else (1.0, 0.0, 1.0)
        units.append(ControlUnit(name, str(Path(image).expanduser().resolve()), weight, start, end))
    for label, chosen, field in (("--control-preprocessor", preprocessors, "preprocessor"),
                                 ("--control-mode", modes, "mode")):  # fmt: skip
        if not chosen:
            continue
        if len(chosen) not in (1, len(units)):
            raise InvalidRequest(f"Give {label} once for every unit, or once per --control ({len(units)}).")
        picks = chosen * len(units) if len(chosen) == 1 else chosen
        units = [replace(unit, **{field: pick}) for unit, pick in zip(units, picks, strict=True)]
    return tuple(units)


def _hires_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The hires fix's request fields: on when --hires-scale or --hires-resize is given."""
    if args.hires_scale is None and args.hires_resize is None:
        return {}
    resize = _size_arg(args.hires_resize, "--hires-resize") if args.hires_resize else (0, 0)
    sampler = ""
    if args.hires_sampler:
        sampler = canonical_sampler(args.hires_sampler) or ""
        if not sampler or sampler == "default":
            raise InvalidRequest(f"Unknown hires sampler {args.hires_sampler!r}. Known samplers: "
                                 f"{', '.join(SAMPLER_NAMES)}.")
    return {
        "hires_fix": True,
        "hires_scale": args.hires_scale if args.hires_scale is not None else 2.0,
        "hires_resize_w": resize[0],
        "hires_resize_h": resize[1],
        "hires_upscaler": canonical_upscaler(args.hires_upscaler) or args.hires_upscaler,
        "hires_steps": args.hires_steps,
        "hires_denoise": args.hires_denoise,
        "hires_prompt": args.hires_prompt,
        "hires_negative_prompt": args.hires_negative,
        "hires_sampler": sampler,
    }


def _default_model(paths: AppPaths) -> str:
    """No --model: the demo model, installed first if this is the first start."""
    library = Library(paths)
    try:
        install_demo_model(library, Resources.default().demo_model, paths.config)
        install_demo_control(library, Resources.default().demo_control, paths.config)
    except (MarbleError, OSError) as error:
        raise InvalidRequest(f"No --model given, and the demo model could not be installed: {error}") from error
    name = demo_model_name(library)
    if name is None:
        raise InvalidRequest("No --model given, and the library has no demo model. Name one with --model.")
    return name


def _model_native_size(model: str, paths: AppPaths) -> int | None:
    try:
        return native_size(ModelCatalog(paths.models).resolve(model).path)
    except MarbleError:
        return None  # the job will say clearly what is wrong with the model


def _model_family(model: str, paths: AppPaths) -> str | None:
    try:
        entry = ModelCatalog(paths.models).resolve(model)
        # The variant chosen for a library file (`marble models variant`) has its own defaults (an Edit model's).
        return model_family(entry.path, Library(paths).chosen_variant_of(entry.path))
    except MarbleError:
        return None  # the job will say clearly what is wrong with the model


def _lora_few_steps(loras: tuple[LoraRef, ...], paths: AppPaths) -> list[str]:
    """The few-step kinds of the chosen LoRAs (an LCM-LoRA, a Lightning LoRA ...): the one the user chose in the
    library (`marble loras few-step`), else the one their headers name."""
    library = Library(paths)
    records = [library.find("lora", lora.name) for lora in loras]
    return [record.few_step_kind for record in records if record is not None and record.few_step_kind]


def _text_encoders(value: str | None, paths: AppPaths) -> str | None:
    """--text-encoders: text-encoder library names, or a library model name or a path, resolved to the
    diffusers folder it names."""
    if not value:
        return None
    # Text-encoder files from the library by name ("clip_l,t5xxl"): passed on as their library names.
    library = Library(paths)
    parts = [part.strip() for part in value.split(",") if part.strip()]
    found = [library.find("encoder", part) for part in parts]
    if parts and all(found):
        return ",".join(record.name for record in found if record is not None)
    if len(parts) > 1:
        library.get("encoder", parts[found.index(None)])  # names the one missing from the library
    entry = ModelCatalog(paths.models).resolve(value)
    if not entry.is_folder:
        raise InvalidRequest(
            f"--text-encoders {value!r} is a file; name a diffusers folder of the same family (with model_index.json)."
        )
    return str(entry.path)


def _edit_inputs(args: argparse.Namespace, paths: AppPaths) -> tuple[str | None, str | None]:
    """The source and mask paths the request names; for --outpaint, the grown canvas and its mask."""
    init = str(Path(args.init_image).expanduser().resolve()) if args.init_image else None
    mask = str(Path(args.mask).expanduser().resolve()) if args.mask else None
    if args.outpaint is None:
        return init, mask
    if init is None:
        raise InvalidRequest("--outpaint grows a source image: pass it with --init-image.")
    margins = Margins.parse(args.outpaint)
    source = load_source(init)
    old_mask = load_mask(mask, source.size) if mask else None
    grown, grown_mask = outpaint_canvas(source, margins, old_mask)
    folder = inputs_folder(paths)
    return str(save_png_by_hash(grown, folder)), str(save_png_by_hash(grown_mask, folder))


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
        case ModelCompiling(model=model):
            return {"event": "compiling", "model": model}
        case PreviewsFitting(model=model):
            return {"event": "fitting previews", "model": model}
        case PromptRewriting(model=model):
            return {"event": "rewriting prompt", "model": model}
        case StepProgress(step=step, total=total, batch_index=batch, batch_count=batches):
            return {"event": "step", "step": step, "total": total, "batch": batch, "batches": batches}
        case ImageSaved(path=path, seed=seed, index=index):
            return {"event": "image", "path": path, "seed": seed, "index": index}
        case JobWarning(message=message):
            return {"event": "warning", "message": message}
        case JobFinished(paths=paths, seeds=seeds, seconds=seconds):
            return {"event": "finished", "paths": list(paths), "seeds": list(seeds), "seconds": round(seconds, 3)}
        case JobFailed(message=message, kind=kind):
            return {"event": "failed", "message": message, "error": kind.value}
        case JobCancelled():
            return {"event": "cancelled"}
    return None  # previews carry pixels: not for a line-oriented stream


class _TextReporter:
    """Human output: progress on stderr, written files on stdout."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out, self._err = out, err
        self._interactive = err.isatty()
        self._request: GenerationRequest | None = None  # the running job's, for its step words

    def __call__(self, event: Event) -> None:
        match event:
            case ModelLoading(model=model):
                self._say(LOADING_TEXT.format(model=model))
            case ModelLoaded(model=model, seconds=seconds, reused=reused):
                if not reused:
                    self._say(f"Loaded {model} in {seconds:.1f} s")
            case ModelCompiling():
                self._say(COMPILING_TEXT)
            case PreviewsFitting():
                self._say(FITTING_TEXT)
            case PromptRewriting():
                self._say(REWRITING_TEXT)
            case JobStarted(request=request):
                self._request = request
            case StepProgress(step=step, total=total, batch_index=batch, batch_count=batches):
                words = step_words(step, total, self._request) if self._request else f"step {step}/{total}"
                line = f"batch {batch + 1}/{batches}, {words}"
                if self._interactive:
                    print(f"\r{line}", end="" if step < total else "\n", file=self._err, flush=True)
                elif step == total:
                    self._say(line)
            case JobWarning(message=message):
                self._say(f"warning: {message}")
            case ImageSaved(path=path):
                print(printable(path), file=self._out, flush=True)
            case JobFinished(paths=paths, seconds=seconds):
                self._say(f"Done: {len(paths)} image(s) in {seconds:.1f} s")
            case JobFailed(message=message):
                self._say(f"marble: error: {message}")
            case JobCancelled():
                self._say("Cancelled.")
            case PreviewReady():
                pass

    def _say(self, text: str) -> None:
        # Messages quote names, prompts and file contents: their control characters are shown, not obeyed.
        print(printable(text), file=self._err, flush=True)


if __name__ == "__main__":
    sys.exit(main())
