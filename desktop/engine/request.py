"""What the user asks for: one frozen request, validated up front with sentences a user understands."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, canonical_sampler
from desktop.engine.errors import InvalidRequest
from desktop.engine.library.dit import MAX_MODEL_REFERENCES
from desktop.engine.library.few_step import FEW_STEP_KINDS

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_STEPS = 150
MAX_CFG = 30.0
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_PROMPT_CHARS = 100_000
# ComfyUI and Fooocus write seeds up to 2**64 - 1, and torch's generator takes them all: a recipe's
# seed must survive as written. Random seeds are still drawn below 2**32, as A1111 draws them.
MAX_SEED = 2**64 - 1
MAX_DRAWN_SEED = 2**32 - 1
RANDOM_SEED = -1
INPAINT_AREAS = ("whole", "masked")
# A1111's "Masked content" (inpainting_fill 0-3, in this order): what the masked area starts from.
# "original": the source's pixels (A1111's default); "fill": a blurred average of the colours around
# it; "latent noise" / "latent nothing": its latents replaced by noise / zeros before sampling.
INPAINT_FILLS = ("fill", "original", "latent noise", "latent nothing")
RESIZE_MODES = ("resize", "pad")
# auto: full on a roomy GPU, VAE tiling for large images, CPU offload when VRAM is short.
# group, sequential and fp8 are the diffusion transformers' modes (backends/dit_memory.py).
MEMORY_MODES = ("auto", "full", "tiled", "offload", "group", "sequential", "fp8")
# nf4 and int8 quantise the transformer with the optional bitsandbytes package: the command line takes them
# (and auto picks nf4 on CUDA); the window's Memory list shows them, greyed out without bitsandbytes.
BITSANDBYTES_MEMORY_MODES = ("nf4", "int8")
# A1111's emphasis modes: "Original" scales weighted tokens and restores each chunk's mean, "No norm"
# only scales, "None" reads brackets and BREAK as plain text.
EMPHASIS_MODES = ("Original", "No norm", "None")
MAX_CLIP_SKIP = 12  # CLIP ViT-L has 12 layers; A1111's slider stops there too
MAX_LORA_WEIGHT = 5.0
MAX_HIRES_SCALE = 8.0
MAX_UPSCALE = 8.0


@dataclass(frozen=True)
class LoraRef:
    """A LoRA by library name (never a path) and its weight, as in `<lora:name:0.8>`."""

    name: str
    weight: float = 1.0

# FLUX.3's layout boxes: at most this many, each at least this fraction of the canvas on a side (a box on the
# rewriter's 0-1000 grid must keep its two edges apart), with a description of at most this many characters.
MAX_LAYOUT_BOXES = 24
MIN_LAYOUT_BOX_SIDE = 0.01
MAX_LAYOUT_DESCRIPTION_CHARS = 2000


@dataclass(frozen=True)
class LayoutBox:
    """Where FLUX.3's prompt rewriter must place one element of the picture, and what it is: the box's edges as
    fractions of the canvas (0 left or top, 1 right or bottom), so a box keeps its place when the size changes.

    An edit may move (or resize) an element one of its reference pictures shows: `reference` is that picture's
    number (from 1, as the job lists them) and `source` the element's box in it (left, top, right, bottom, fractions
    of that picture). For new content `reference` is 0 and `source` None."""

    description: str
    left: float
    top: float
    right: float
    bottom: float
    reference: int = 0
    source: tuple[float, float, float, float] | None = None

    def validate(self, number: int, described: bool = True) -> None:
        """Raise InvalidRequest unless this is box `number` (from 1) as a job takes it; `described=False` lets the
        description be blank (a box the window has drawn and the user not yet described)."""
        text = self.description
        if not isinstance(text, str) or (described and not text.strip()):
            raise InvalidRequest(f"Layout box {number} needs a description of what it holds.")
        if "\x00" in text:
            raise InvalidRequest(f"Layout box {number}'s description holds a NUL character.")
        if len(text) > MAX_LAYOUT_DESCRIPTION_CHARS:
            raise InvalidRequest(f"Layout box {number}'s description is {len(text)} characters long: use at most "
                                 f"{MAX_LAYOUT_DESCRIPTION_CHARS}.")  # fmt: skip
        _check_edges(f"Layout box {number} ({text[:40]!r})", "the canvas", (self.left, self.top, self.right,
                                                                            self.bottom))  # fmt: skip
        reference = self.reference
        if not isinstance(reference, int) or isinstance(reference, bool) or reference < 0:
            raise InvalidRequest(f"Layout box {number}'s reference must be a picture's number (from 1), or 0 for "
                                 f"new content, not {reference!r}.")  # fmt: skip
        if (reference > 0) != (self.source is not None):
            raise InvalidRequest(f"Layout box {number} takes an element from a reference picture: it needs both the "
                                 "picture's number and the element's box in it.")  # fmt: skip
        if self.source is not None:
            if not isinstance(self.source, tuple) or len(self.source) != 4:
                raise InvalidRequest(f"Layout box {number}'s box in reference {reference} must be four edges "
                                     f"(left, top, right, bottom), not {self.source!r}.")  # fmt: skip
            _check_edges(f"Layout box {number}'s box in reference {reference}", f"reference {reference}",
                         self.source)  # fmt: skip


def boxes_following_references(
    boxes: tuple[LayoutBox, ...], old: tuple[str, ...], new: tuple[str, ...]
) -> tuple[LayoutBox, ...]:
    """`boxes` after the reference pictures `old` became `new`: a box keeps the picture it takes an element from
    under its new number, and one whose picture is gone becomes new content (its number would name another picture).
    A box whose number names no picture of `old` is left as it is."""
    followed = []
    for box in boxes:
        path = old[box.reference - 1] if 0 < box.reference <= len(old) else None
        if path is not None and path in new:
            box = replace(box, reference=new.index(path) + 1)
        elif path is not None:
            box = replace(box, reference=0, source=None)
        followed.append(box)
    return tuple(followed)


def _check_edges(label: str, within: str, edges: tuple[Any, ...]) -> None:
    """Raise InvalidRequest unless `edges` (left, top, right, bottom) are fractions of `within` that make a box of
    at least MIN_LAYOUT_BOX_SIDE a side."""
    if not all(isinstance(edge, (int, float)) and not isinstance(edge, bool) and 0 <= edge <= 1 for edge in edges):
        raise InvalidRequest(f"{label}: its edges must be fractions of {within} from 0 to 1, not {edges!r}.")
    left, top, right, bottom = edges
    if right - left < MIN_LAYOUT_BOX_SIDE or bottom - top < MIN_LAYOUT_BOX_SIDE:
        raise InvalidRequest(f"{label} is empty or inside out: its right edge must lie right of its left edge and its "
                             f"bottom below its top, by at least {MIN_LAYOUT_BOX_SIDE:.0%} of {within}.")


# A1111's ControlNet "Control Mode": balanced, "My prompt is more important", "ControlNet is more important".
CONTROL_MODES = ("balanced", "prompt", "control")
# "ip-adapter": the unit is an IP-Adapter and its image a reference image (desktop/engine/backends/ip_adapter.py).
IP_ADAPTER_PREPROCESSOR = "ip-adapter"
CONTROL_PREPROCESSORS = (
    "none", "canny", "softedge", "scribble", "tile", "inpaint", "depth", "lineart", "openpose",
    IP_ADAPTER_PREPROCESSOR, "openpose_hand", "openpose_face", "openpose_full", "blur", "gray",
)
MAX_CONTROL_UNITS = 8
MAX_CONTROL_WEIGHT = 2.0  # A1111's slider range
# An IP-Adapter unit's reference images (its image plus `more_images`); A1111 sets no limit, memory does.
MAX_REFERENCE_IMAGES = 16


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet / T2I-Adapter unit: a control model by library name, its image file and settings.

    `start`/`end` are fractions of the steps (diffusers' control_guidance_start/end, A1111's Guidance
    Start/End). `mode`: CONTROL_MODES (docs in desktop/engine/backends/control.py). `threshold_a/b`:
    the preprocessor's two settings as A1111 writes them; -1 = the preprocessor's default.
    `more_images`: an IP-Adapter unit's further reference images after `image` (A1111's multi-input
    unit); their embeddings are averaged (desktop/engine/backends/ip_adapter.py). Other units have none.
    """

    model: str
    image: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"
    preprocessor: str = "none"
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    more_images: tuple[str, ...] = ()

    @property
    def images(self) -> tuple[str, ...]:
        """Every image of the unit: `image`, then an IP-Adapter's further reference images."""
        return (self.image, *self.more_images)

    def validate(self, index: int) -> None:
        label = f"Control unit {index}"
        if not isinstance(self.model, str) or not self.model.strip() or "\x00" in self.model:
            raise InvalidRequest(f"{label} needs a control model name (marble controls list).")
        if len(self.model) > MAX_VAE_NAME_CHARS:
            raise InvalidRequest(f"{label}: control model name is too long.")
        if not isinstance(self.image, str) or not self.image.strip() or "\x00" in self.image:
            raise InvalidRequest(f"{label} needs a control image file.")
        numbers = (("weight", self.weight), ("start", self.start), ("end", self.end),
                   ("threshold A", self.threshold_a), ("threshold B", self.threshold_b))  # fmt: skip
        for name, value in numbers:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidRequest(f"{label}: {name} must be a number, not {value!r}.")
        if not 0.0 <= self.weight <= MAX_CONTROL_WEIGHT:
            raise InvalidRequest(f"{label}: weight {self.weight} is out of range: use 0 to {MAX_CONTROL_WEIGHT:g}.")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise InvalidRequest(
                f"{label}: start {self.start} and end {self.end} must be fractions of the steps with "
                "0 <= start <= end <= 1."
            )
        if self.mode not in CONTROL_MODES:
            raise InvalidRequest(f"{label}: unknown control mode {self.mode!r}: use one of {', '.join(CONTROL_MODES)}.")
        if self.preprocessor not in CONTROL_PREPROCESSORS:
            raise InvalidRequest(
                f"{label}: unknown preprocessor {self.preprocessor!r}: use one of {', '.join(CONTROL_PREPROCESSORS)}."
            )
        self._validate_more_images(label)

    def _validate_more_images(self, label: str) -> None:
        if not isinstance(self.more_images, tuple):
            raise InvalidRequest(f"{label}: the further reference images must be a list of files.")
        if not self.more_images:
            return
        if self.preprocessor != IP_ADAPTER_PREPROCESSOR:
            raise InvalidRequest(f"{label}: only an IP-Adapter unit takes several images; give this unit one.")
        if len(self.more_images) + 1 > MAX_REFERENCE_IMAGES:
            raise InvalidRequest(f"{label}: use at most {MAX_REFERENCE_IMAGES} reference images.")
        for path in self.more_images:
            if not isinstance(path, str) or not path.strip() or "\x00" in path:
                raise InvalidRequest(f"{label}: every reference image must be a file, not {path!r}.")


# Library names are at most 120 characters (library.index.MAX_NAME_CHARS); room for a file extension.
MAX_VAE_NAME_CHARS = 200


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation job needs. Crosses threads and is saved in PNG metadata."""

    prompt: str
    model: str
    negative_prompt: str = ""
    steps: int = 30
    cfg_scale: float = 7.5
    seed: int = RANDOM_SEED
    sampler: str = DEFAULT_SAMPLER
    width: int = 512
    height: int = 512
    batch_count: int = 1
    batch_size: int = 1
    device: str = "auto"
    precision: str = "auto"
    clip_skip: int = 1
    # A1111's "Emphasis" setting: how (word:1.2) weights apply (EMPHASIS_MODES).
    emphasis: str = "Original"
    memory_mode: str = "auto"
    # channels_last and torch.compile on the UNet: faster steps after a slow first image (GPU use).
    fast_mode: bool = False
    # FLUX.3's prompt rewriter (backends/prompt_rewriter.py) expands the prompt into the caption the picture is made
    # from, which then stands as the prompt in what is recorded (text to image, with or without reference pictures).
    rewrite_prompt: bool = False
    # Boxes the rewriter places elements in (its layout captions: the caption cites each one and ends with their
    # table); only with rewrite_prompt.
    layout_boxes: tuple[LayoutBox, ...] = ()
    # A folder of diffusers configs for a single-file checkpoint with non-standard dimensions.
    model_config: str | None = None
    loras: tuple[LoraRef, ...] = ()
    # Image-to-image and inpainting: image files (PNG/JPEG/WebP) the engine reads; mask white = repaint.
    init_image: str | None = None
    strength: float = 0.75
    mask: str | None = None
    mask_blur: int = 4
    inpaint_area: str = "whole"
    padding: int = 32
    resize_mode: str = "resize"
    inpaint_fill: str = "original"
    # Reference images, in order: Qwen-Image-Edit Plus (2509)'s after the source ("Picture 2", ...); Flux.2's
    # with the prompt (Klein's beside a source image too).
    reference_images: tuple[str, ...] = ()
    # A1111's variation seed: the initial noise is the seed's, slerped towards the subseed's by the
    # strength (0 = off). Image k uses subseed + k. docs/samplers.md.
    subseed: int = RANDOM_SEED
    subseed_strength: float = 0.0
    # A1111's "Seed resize from": the seed's noise drawn at this size (0 = off) and pasted centred.
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # Seamless tiling: the UNet's and VAE's convolutions pad circularly, so the image wraps.
    tiling: bool = False
    # A VAE by library name (never a path), decoding instead of the model's own; "" = the model's own.
    vae: str = ""
    # Flux-dev's "Distilled CFG Scale" (Forge's name): the guidance value fed to the transformer, beside
    # the true CFG above (used by Flux only with a negative prompt). Ignored by other families.
    distilled_cfg_scale: float = 3.5
    # A diffusers folder of the same family supplying what a transformer-only file (Flux, SD3, GGUF)
    # lacks: text encoders, tokenizers and VAE. None: the model file or folder must hold them itself.
    text_encoders: str | None = None
    # Where a Qwen-Image / Z-Image file run with a library text encoder finds its tokenizer (and Edit's
    # processor), in place of Marble's own: a folder holding them, or the model's diffusers folder. None:
    # --config's when it is a whole diffusers folder, else the shipped resources/tokenizers/qwen.
    tokenizer_folder: str | None = None
    # ControlNet / T2I-Adapter units, applied together (A1111's ControlNet 0, 1, ...).
    controls: tuple[ControlUnit, ...] = ()
    # A1111's hires fix (text-to-image only): the first pass's image upscaled by `hires_scale`, or to
    # `hires_resize_w` x `hires_resize_h` (0 = by scale), then a second, image-to-image pass at
    # `hires_denoise` with `hires_steps` steps (0 = as many as `steps`). The upscaler is a latent mode
    # ("Latent", "Latent (bicubic)", ...), a pixel resampler ("Lanczos", "Nearest") or a library
    # upscaler model by name. Empty hires prompt / negative / sampler mean the first pass's.
    hires_fix: bool = False
    hires_scale: float = 2.0
    hires_resize_w: int = 0
    hires_resize_h: int = 0
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    hires_denoise: float = 0.7
    hires_prompt: str = ""
    hires_negative_prompt: str = ""
    hires_sampler: str = ""
    # A few-step model or LoRA's kind (library/few_step.py: "lcm", "turbo", ...); "" = none. It adds the
    # kind's timestep spacing to the sampler; steps, CFG and sampler are set by choosing it.
    few_step: str = ""
    # A1111's SDXL refiner: a library SDXL refiner model (by name) continues the base model's latents
    # after `refiner_switch_at` of the steps (backends/refiner.py). "" = no refiner.
    refiner: str = ""
    refiner_switch_at: float = 0.8
    # An upscale job (A1111's extras tab; with `sd_upscale`, its "SD upscale" script): `init_image`
    # upscaled by `upscale_by` (0 = not an upscale job) with `upscale_upscaler` (a pixel resampler or a
    # library upscaler model, run in tiles of `upscale_tile` input pixels); SD upscale then runs
    # image-to-image at `strength` over overlapping tiles of `sd_upscale_tile` px, blended across
    # `sd_upscale_overlap` px. The other fields are the source's recipe (prompt, seed, model, size).
    upscale_by: float = 0.0
    upscale_upscaler: str = "Lanczos"
    upscale_tile: int = 256
    sd_upscale: bool = False
    sd_upscale_tile: int = 512
    sd_upscale_overlap: int = 64

    def validate(self) -> GenerationRequest:
        """Raise InvalidRequest naming the first problem; return self so calls chain."""
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise InvalidRequest("The prompt must be text.")
        for label, text in (("prompt", self.prompt), ("negative prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                raise InvalidRequest(
                    f"The {label} is {len(text):,} characters long; the limit is {MAX_PROMPT_CHARS:,}."
                )
            if "\x00" in text:
                raise InvalidRequest(f"The {label} contains a NUL character.")
        # A plain upscale runs no pipeline: an image without a recipe (a photo) still upscales.
        plain_upscale = bool(self.upscale_by) and not self.sd_upscale
        if (not self.model or not self.model.strip()) and not plain_upscale:
            raise InvalidRequest("No model is selected: pick a model or pass --model.")
        for label, side in (("width", self.width), ("height", self.height)):
            _check_int(label, side)
            if side % 8:
                lower, upper = side - side % 8, side - side % 8 + 8
                raise InvalidRequest(f"{label} {side} is not a multiple of 8 (try {lower} or {upper}).")
            if not MIN_SIDE <= side <= MAX_SIDE:
                raise InvalidRequest(f"{label} {side} is out of range: use {MIN_SIDE} to {MAX_SIDE} pixels.")
        _check_int("steps", self.steps)
        if not 1 <= self.steps <= MAX_STEPS:
            raise InvalidRequest(f"steps {self.steps} is out of range: use 1 to {MAX_STEPS}.")
        if not isinstance(self.cfg_scale, (int, float)) or not 0 <= self.cfg_scale <= MAX_CFG:
            raise InvalidRequest(f"CFG scale {self.cfg_scale} is out of range: use 0 to {MAX_CFG:g}.")
        if not isinstance(self.distilled_cfg_scale, (int, float)) or not 0 <= self.distilled_cfg_scale <= MAX_CFG:
            raise InvalidRequest(
                f"Distilled CFG scale {self.distilled_cfg_scale} is out of range: use 0 to {MAX_CFG:g}."
            )
        _check_int("seed", self.seed)
        if self.seed != RANDOM_SEED and not 0 <= self.seed <= MAX_SEED:
            raise InvalidRequest(f"seed {self.seed} is out of range: use 0 to {MAX_SEED}, or -1 for random.")
        if self.sampler not in SAMPLER_NAMES:
            raise InvalidRequest(
                f"Unknown sampler {self.sampler!r}. Known samplers: {', '.join(SAMPLER_NAMES)}."
            )
        _check_int("batch size", self.batch_size)
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise InvalidRequest(f"batch size {self.batch_size} is out of range: use 1 to {MAX_BATCH_SIZE}.")
        _check_int("batch count", self.batch_count)
        if not 1 <= self.batch_count <= MAX_BATCH_COUNT:
            raise InvalidRequest(
                f"batch count {self.batch_count} is out of range: use 1 to {MAX_BATCH_COUNT}."
            )
        if self.device not in DEVICES:
            raise InvalidRequest(f"Unknown device {self.device!r}: use one of {', '.join(DEVICES)}.")
        if self.precision not in PRECISIONS:
            raise InvalidRequest(f"Unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}.")
        _check_int("clip skip", self.clip_skip)
        if not 1 <= self.clip_skip <= MAX_CLIP_SKIP:
            raise InvalidRequest(f"clip skip {self.clip_skip} is out of range: use 1 to {MAX_CLIP_SKIP}.")
        if self.emphasis not in EMPHASIS_MODES:
            raise InvalidRequest(f"Unknown emphasis {self.emphasis!r}: use one of {', '.join(EMPHASIS_MODES)}.")
        if self.memory_mode not in MEMORY_MODES + BITSANDBYTES_MEMORY_MODES:
            known = ", ".join(MEMORY_MODES + BITSANDBYTES_MEMORY_MODES)
            raise InvalidRequest(f"Unknown memory mode {self.memory_mode!r}: use one of {known}.")
        if not isinstance(self.fast_mode, bool):
            raise InvalidRequest(f"fast mode must be true or false, not {self.fast_mode!r}.")
        if not isinstance(self.rewrite_prompt, bool):
            raise InvalidRequest(f"rewrite prompt must be true or false, not {self.rewrite_prompt!r}.")
        if self.rewrite_prompt and self.init_image is not None:
            raise InvalidRequest(
                "The prompt rewriter writes captions for text to image, with or without reference pictures: turn "
                "it off for image to image, inpainting or an upscale."
            )
        self._validate_layout_boxes()
        self._validate_loras()
        self._validate_image_inputs()
        self._validate_variation()
        if not isinstance(self.vae, str) or "\x00" in self.vae or len(self.vae) > MAX_VAE_NAME_CHARS:
            raise InvalidRequest(f"VAE name {self.vae!r} is not a valid name.")
        self._validate_controls()
        self._validate_hires()
        self._validate_few_step_and_refiner()
        self._validate_upscale()
        return self

    def _validate_layout_boxes(self) -> None:
        boxes = self.layout_boxes
        if not isinstance(boxes, tuple) or not all(isinstance(box, LayoutBox) for box in boxes):
            raise InvalidRequest(f"Layout boxes must be a list of boxes, not {boxes!r}.")
        if boxes and not self.rewrite_prompt:
            raise InvalidRequest("Layout boxes are placed by FLUX.3's prompt rewriter: turn rewriting on "
                                 "(--rewrite-prompt on the command line), or remove the boxes.")  # fmt: skip
        if len(boxes) > MAX_LAYOUT_BOXES:
            raise InvalidRequest(f"{len(boxes)} layout boxes: use at most {MAX_LAYOUT_BOXES}.")
        for number, box in enumerate(boxes, 1):
            box.validate(number)
            if box.reference > len(self.reference_images):
                pictures = f"{len(self.reference_images)} reference picture" + (
                    "" if len(self.reference_images) == 1 else "s")
                raise InvalidRequest(f"Layout box {number} takes an element from reference {box.reference}, but the "
                                     f"job has {pictures}.")  # fmt: skip

    def _validate_upscale(self) -> None:
        if not isinstance(self.upscale_by, (int, float)) or isinstance(self.upscale_by, bool):
            raise InvalidRequest(f"upscale factor {self.upscale_by!r} must be a number.")
        if not self.upscale_by:
            return
        if not 1.0 <= self.upscale_by <= MAX_UPSCALE:
            raise InvalidRequest(f"upscale factor {self.upscale_by:g} is out of range: use 1 to {MAX_UPSCALE:g}.")
        if self.init_image is None or self.mask is not None:
            raise InvalidRequest("An upscale needs a source image and no mask.")
        name = self.upscale_upscaler
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise InvalidRequest(f"upscaler {self.upscale_upscaler!r} is not a valid name.")
        _check_int("upscale tile", self.upscale_tile)
        if not 0 <= self.upscale_tile <= MAX_SIDE:
            raise InvalidRequest(
                f"upscale tile {self.upscale_tile} is out of range: use 0 (whole image) to {MAX_SIDE}."
            )
        if self.hires_fix or self.batch_size != 1 or self.batch_count != 1:
            raise InvalidRequest("An upscale makes one image: turn the hires fix off and use batch size and count 1.")
        if not isinstance(self.sd_upscale, bool):
            raise InvalidRequest(f"SD upscale must be true or false, not {self.sd_upscale!r}.")
        if not self.sd_upscale:
            return
        _check_int("SD upscale tile", self.sd_upscale_tile)
        if self.sd_upscale_tile % 8 or not MIN_SIDE <= self.sd_upscale_tile <= MAX_SIDE:
            raise InvalidRequest(
                f"SD upscale tile {self.sd_upscale_tile} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}."
            )
        _check_int("SD upscale overlap", self.sd_upscale_overlap)
        if not 0 <= self.sd_upscale_overlap <= self.sd_upscale_tile // 2:
            raise InvalidRequest(
                f"SD upscale overlap {self.sd_upscale_overlap} is out of range: use 0 to half the tile "
                f"({self.sd_upscale_tile // 2})."
            )
        if not 0.0 < self.strength <= 1.0:
            raise InvalidRequest(
                f"SD upscale denoising strength {self.strength:g} is out of range: use above 0, up to 1."
            )

    @property
    def upscale_job(self) -> bool:
        """This job upscales `init_image` rather than generating from the recipe."""
        return bool(self.upscale_by)


    def _validate_few_step_and_refiner(self) -> None:
        if self.few_step and self.few_step not in FEW_STEP_KINDS:
            raise InvalidRequest(f"Unknown few-step kind {self.few_step!r}: use one of {', '.join(FEW_STEP_KINDS)}.")
        if not isinstance(self.refiner, str) or "\x00" in self.refiner or len(self.refiner) > MAX_VAE_NAME_CHARS:
            raise InvalidRequest(f"Refiner name {self.refiner!r} is not a valid name.")
        switch = self.refiner_switch_at
        if isinstance(switch, bool) or not isinstance(switch, (int, float)) or not 0.0 < switch < 1.0:
            raise InvalidRequest(f"Refiner switch at {switch!r} is out of range: use a fraction above 0 and below 1.")
        if self.refiner and self.init_image is not None:
            raise InvalidRequest("The refiner runs after text-to-image only; leave it empty for image-to-image.")
        if self.refiner and self.hires_fix:
            raise InvalidRequest("Use either the refiner or the hires fix in one job, not both.")
        if self.refiner and int(self.steps * self.refiner_switch_at) < 1:
            raise InvalidRequest(
                f"With {self.steps} step(s), switching to the refiner at {self.refiner_switch_at:g} leaves the "
                "base model no step: use more steps or a later switch."
            )

    def _validate_controls(self) -> None:
        if not isinstance(self.controls, tuple) or len(self.controls) > MAX_CONTROL_UNITS:
            raise InvalidRequest(f"Use at most {MAX_CONTROL_UNITS} control units.")
        for index, unit in enumerate(self.controls):
            if not isinstance(unit, ControlUnit):
                raise InvalidRequest(f"Control unit {index} must name a control model and an image, not {unit!r}.")
            unit.validate(index)
            if unit.preprocessor == "inpaint" and self.mode != "inpaint":
                raise InvalidRequest(
                    f"Control unit {index}: the inpaint preprocessor needs a source image and a mask."
                )

    def _validate_hires(self) -> None:
        if not isinstance(self.hires_fix, bool):
            raise InvalidRequest(f"hires fix must be true or false, not {self.hires_fix!r}.")
        if not self.hires_fix:
            return
        if not isinstance(self.hires_scale, (int, float)) or not 1.0 <= self.hires_scale <= MAX_HIRES_SCALE:
            raise InvalidRequest(f"hires upscale {self.hires_scale} is out of range: use 1 to {MAX_HIRES_SCALE:g}.")
        for label, side in (("hires resize width", self.hires_resize_w), ("hires resize height", self.hires_resize_h)):
            _check_int(label, side)
            if side and not MIN_SIDE <= side <= MAX_SIDE:
                raise InvalidRequest(f"{label} {side} is out of range: use {MIN_SIDE} to {MAX_SIDE}, or 0 for off.")
        if not isinstance(self.hires_upscaler, str) or not self.hires_upscaler.strip() or "\x00" in self.hires_upscaler:
            raise InvalidRequest(f"hires upscaler {self.hires_upscaler!r} is not a valid name.")
        _check_int("hires steps", self.hires_steps)
        if not 0 <= self.hires_steps <= MAX_STEPS:
            raise InvalidRequest(
                f"hires steps {self.hires_steps} is out of range: use 0 (same as steps) to {MAX_STEPS}."
            )
        if not isinstance(self.hires_denoise, (int, float)) or not 0.0 < self.hires_denoise <= 1.0:
            raise InvalidRequest(
                f"hires denoising strength {self.hires_denoise} is out of range: use above 0, up to 1."
            )
        if self.hires_pass_steps < 1:
            raise InvalidRequest(
                f"At hires denoising strength {self.hires_denoise:g}, {self.hires_steps or self.steps} hires step(s) "
                "leave no step to run: use more hires steps or a higher strength."
            )
        for label, text in (("hires prompt", self.hires_prompt), ("hires negative prompt", self.hires_negative_prompt)):
            if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS or "\x00" in text:
                raise InvalidRequest(f"The {label} must be text without NUL characters, at most {MAX_PROMPT_CHARS:,}.")
        if self.hires_sampler and self.hires_sampler not in SAMPLER_NAMES:
            raise InvalidRequest(
                f"Unknown hires sampler {self.hires_sampler!r}. Known samplers: {', '.join(SAMPLER_NAMES)}."
            )
        width, height = self.hires_size
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise InvalidRequest(
                f"The hires fix would make a {width}x{height} image: keep both sides from {MIN_SIDE} to {MAX_SIDE}."
            )

    @property
    def hires_active(self) -> bool:
        """The hires fix runs: it is on and the request is text-to-image (A1111 offers it there only)."""
        return self.hires_fix and self.init_image is None

    @property
    def hires_size(self) -> tuple[int, int]:
        """The final size of a hires-fixed image (multiples of 8)."""
        return hires_target(self.width, self.height, self.hires_scale, self.hires_resize_w, self.hires_resize_h)[2:]

    @property
    def hires_pass_steps(self) -> int:
        """Steps the second pass runs: int(hires steps x denoising strength), as A1111 and diffusers do."""
        return int((self.hires_steps or self.steps) * self.hires_denoise)

    def _validate_variation(self) -> None:
        _check_int("variation seed", self.subseed)
        if self.subseed != RANDOM_SEED and not 0 <= self.subseed <= MAX_SEED:
            raise InvalidRequest(
                f"variation seed {self.subseed} is out of range: use 0 to {MAX_SEED}, or -1 for random."
            )
        if not isinstance(self.subseed_strength, (int, float)) or not 0.0 <= self.subseed_strength <= 1.0:
            raise InvalidRequest(f"variation strength {self.subseed_strength} is out of range: use 0 to 1.")
        sides = (self.seed_resize_from_w, self.seed_resize_from_h)
        for label, side in zip(("seed resize width", "seed resize height"), sides, strict=True):
            _check_int(label, side)
            if side and (side % 8 or not MIN_SIDE <= side <= MAX_SIDE):
                raise InvalidRequest(
                    f"{label} {side} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, or 0 for off."
                )
        if (sides[0] == 0) != (sides[1] == 0):
            raise InvalidRequest("Seed resize from needs both a width and a height (or neither).")
        if not isinstance(self.tiling, bool):
            raise InvalidRequest(f"tiling must be true or false, not {self.tiling!r}.")

    @property
    def varies_noise(self) -> bool:
        """True when the initial noise is not the plain seed's: variation seed or seed resize is on."""
        return self.subseed_strength > 0 or self.seed_resize_from_w > 0

    def _validate_loras(self) -> None:
        for lora in self.loras:
            if not isinstance(lora, LoraRef):
                raise InvalidRequest(f"A LoRA entry must name a LoRA and a weight, not {lora!r}.")
            if not lora.name.strip() or "\x00" in lora.name:
                raise InvalidRequest(f"LoRA name {lora.name!r} is not a valid name.")
            if not isinstance(lora.weight, (int, float)) or not -MAX_LORA_WEIGHT <= lora.weight <= MAX_LORA_WEIGHT:
                raise InvalidRequest(
                    f"LoRA {lora.name!r} weight {lora.weight} is out of range: use {-MAX_LORA_WEIGHT:g} to "
                    f"{MAX_LORA_WEIGHT:g}."
                )

    def _validate_image_inputs(self) -> None:
        if not isinstance(self.strength, (int, float)) or not 0.0 <= self.strength <= 1.0:
            raise InvalidRequest(f"strength {self.strength} is out of range: use 0 to 1.")
        if self.mask is not None and self.init_image is None:
            raise InvalidRequest("A mask needs a source image to inpaint (--init-image).")
        if not isinstance(self.reference_images, tuple) or not all(
            isinstance(path, str) and path and "\x00" not in path for path in self.reference_images
        ):
            raise InvalidRequest(f"Reference images must be image file paths, not {self.reference_images!r}.")
        # Which model takes how many (and whether beside a source image) is the backend's check, by
        # library.dit.reference_image_limit once the model is known; here only the most any model takes.
        if len(self.reference_images) > MAX_MODEL_REFERENCES:
            raise InvalidRequest(
                f"{len(self.reference_images)} reference images: no model takes more than {MAX_MODEL_REFERENCES} "
                "(Flux.2 dev)."
            )
        # Image to image and inpainting run int(steps * strength) of the steps (diffusers' rule); none
        # at all is an empty job that the pipeline would reject with a bare ValueError.
        if self.init_image is not None and self.strength > 0 and int(self.steps * self.strength) < 1:
            raise InvalidRequest(
                f"At strength {self.strength:g}, {self.steps} step(s) leave no step to run: use at least "
                f"{math.ceil(1 / self.strength)} steps or a higher strength."
            )
        _check_int("mask blur", self.mask_blur)
        if not 0 <= self.mask_blur <= 256:
            raise InvalidRequest(f"mask blur {self.mask_blur} is out of range: use 0 to 256 pixels.")
        _check_int("padding", self.padding)
        if not 0 <= self.padding <= 1024:
            raise InvalidRequest(f"padding {self.padding} is out of range: use 0 to 1024 pixels.")
        if self.inpaint_area not in INPAINT_AREAS:
            raise InvalidRequest(f"Unknown inpaint area {self.inpaint_area!r}: use one of {', '.join(INPAINT_AREAS)}.")
        if self.inpaint_fill not in INPAINT_FILLS:
            raise InvalidRequest(
                f"Unknown masked content {self.inpaint_fill!r}: use one of {', '.join(INPAINT_FILLS)}."
            )
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidRequest(f"Unknown resize mode {self.resize_mode!r}: use one of {', '.join(RESIZE_MODES)}.")

    @property
    def mode(self) -> str:
        """"txt2img", "img2img" or "inpaint": which pipeline the request needs."""
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"

    @property
    def images_total(self) -> int:
        return self.batch_count * self.batch_size

    def with_rewritten_prompt(self, caption: str) -> GenerationRequest:
        """This request as FLUX.3's rewriter left it: `caption` (with a layout table when boxes were asked for) as
        the prompt, and neither rewriting nor boxes, which the caption has used up. The batch runs it and its
        images record it, so a recipe makes the same picture again without the rewriter."""
        return replace(self, prompt=caption, rewrite_prompt=False, layout_boxes=())

    def with_seed(self, rng: random.Random | None = None) -> GenerationRequest:
        """A copy with a concrete seed: the random seed is drawn once, so metadata can reproduce it."""
        rng = rng or random.SystemRandom()
        made = self
        if made.seed == RANDOM_SEED:
            made = replace(made, seed=rng.randint(0, MAX_DRAWN_SEED))
        if made.subseed == RANDOM_SEED and made.subseed_strength > 0:
            made = replace(made, subseed=rng.randint(0, MAX_DRAWN_SEED))
        return made

    def seed_for(self, batch_index: int, image_index: int) -> int:
        """Image k of a job uses seed + k, as A1111 does, so any image can be re-made alone.

        Wraps past 2**64 - 1, the largest seed torch's generator takes."""
        return (self.seed + batch_index * self.batch_size + image_index) % (MAX_SEED + 1)

    def subseed_for(self, seed: int) -> int:
        """The variation seed of the image made with `seed`: it steps along with the seed, as in A1111."""
        return (self.subseed + (seed - self.seed)) % (MAX_SEED + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        """Build from saved JSON, ignoring keys this version does not know (newer files)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "sampler" in values:
            values["sampler"] = canonical_sampler(str(values["sampler"])) or str(values["sampler"])
        if "loras" in values:
            values["loras"] = _loras_from(values["loras"])
        if "controls" in values:
            values["controls"] = _controls_from(values["controls"])
        if isinstance(values.get("reference_images"), list):
            values["reference_images"] = tuple(values["reference_images"])
        if "layout_boxes" in values:
            values["layout_boxes"] = _layout_boxes_from(values["layout_boxes"])
        try:
            return cls(**values)
        except TypeError as error:
            raise InvalidRequest(f"The saved request is incomplete: {error}.") from None


def _loras_from(raw: object) -> tuple[LoraRef, ...]:
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest("The saved request lists its LoRAs in an unknown form.")
    refs = []
    for item in raw:
        if isinstance(item, LoraRef):
            refs.append(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            refs.append(LoraRef(item["name"], float(item.get("weight", 1.0))))
        else:
            raise InvalidRequest(f"The saved request has an unreadable LoRA entry: {item!r}.")
    return tuple(refs)


def _layout_boxes_from(raw: object) -> tuple[LayoutBox, ...]:
    required = {"description", "left", "top", "right", "bottom"}  # a move's reference and source are optional
    return _saved_items(raw, LayoutBox, ("layout box", "layout boxes"), required.issubset, list_field="source")


def _controls_from(raw: object) -> tuple[ControlUnit, ...]:
    def readable(item: dict[str, Any]) -> bool:
        return isinstance(item.get("model"), str) and isinstance(item.get("image"), str)

    return _saved_items(raw, ControlUnit, ("control unit", "control units"), readable, list_field="more_images")


def _saved_items(
    raw: object, kind: type[Any], labels: tuple[str, str], readable: Callable[[dict[str, Any]], bool], list_field: str
) -> tuple[Any, ...]:
    """A saved request's list of `kind` (a frozen dataclass): each item one already, or a dict `readable` accepts
    whose known fields make one (`list_field` back to a tuple: JSON has none); InvalidRequest naming `labels`
    (singular, plural) else."""
    label, plural = labels
    if not isinstance(raw, (list, tuple)):
        raise InvalidRequest(f"The saved request lists its {plural} in an unknown form.")
    known = {f.name for f in fields(kind)}
    items = []
    for item in raw:
        if isinstance(item, kind):
            items.append(item)
        elif isinstance(item, dict) and readable(item):
            values = {key: value for key, value in item.items() if key in known}
            if isinstance(values.get(list_field), list):
                values[list_field] = tuple(values[list_field])
            items.append(kind(**values))
        else:
            raise InvalidRequest(f"The saved request has an unreadable {label}: {item!r}.")
    return tuple(items)


def hires_target(width: int, height: int, scale: float, resize_w: int, resize_h: int) -> tuple[int, int, int, int]:
    """(upscale to w, h, then crop to w, h) for A1111's hires fix, all multiples of 8.

    By scale: both sides times the scale. Resize to one side: the other keeps the aspect ratio. Resize to
    both: upscaled to cover that size, then cropped about the centre, as A1111 does."""
    if not resize_w and not resize_h:
        w, h = _eight(width * scale), _eight(height * scale)
        return w, h, w, h
    if not resize_h:
        w = _eight(resize_w)
        h = _eight(resize_w * height / width)
        return w, h, w, h
    if not resize_w:
        h = _eight(resize_h)
        w = _eight(resize_h * width / height)
        return w, h, w, h
    target_w, target_h = _eight(resize_w), _eight(resize_h)
    if width / height < resize_w / resize_h:
        up_w, up_h = target_w, _eight(math.ceil(resize_w * height / width))
    else:
        up_w, up_h = _eight(math.ceil(resize_h * width / height)), target_h
    return max(up_w, target_w), max(up_h, target_h), target_w, target_h


def upscale_target(size: tuple[int, int], scale: float, sd_upscale: bool) -> tuple[int, int]:
    """The size an upscale job makes of a `size` source: A1111's int(side x scale); multiples of 8 for
    SD upscale, whose tiles go through the VAE."""
    width, height = int(size[0] * scale), int(size[1] * scale)
    return (_eight(width), _eight(height)) if sd_upscale else (width, height)


def _eight(value: float) -> int:
    return int(value) // 8 * 8


def _check_int(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{label} must be a whole number, not {value!r}.")
