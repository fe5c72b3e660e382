"""Loading and running HiDream-I1 (called from backends/families.py on the generation thread).

Its four text encoders (CLIP-L and CLIP-G with projections, T5-XXL, Llama 3.1 8B Instruct) are some 9B parameters
Marble cannot ship, so a HiDream-I1 model takes its text encoders, tokenizers and VAE from a folder: its own
diffusers folder, or, for a transformer file, the folder the user names (`--text-encoders FOLDER`), a diffusers
HiDream-I1 folder. HiDream.ai's folders leave Llama out (Meta's licence gates it; each user fetches it): the folder
must hold it as `text_encoder_4/` (Meta-Llama-3.1-8B-Instruct's folder, copied or linked there), whose tokenizer files
serve as `tokenizer_4/` when there is none. A transformer file may instead take ComfyUI's four encoder files and the
VAE from the libraries (families.py with encoder_components.py), Llama's tokenizer from the user's tokenizer folder
(llama_tokenizer).

Where Marble differs from diffusers' pipeline as it is:
- diffusers' HiDreamImagePipeline scales every job to its reference area (1024x1024 pixels) whatever size is asked;
  Marble draws the size asked, as ComfyUI does (pipeline_class). Its transformer pads a non-square picture's patches
  to a fixed count (`max_seq`, 4096: one megapixel), so a non-square picture larger than that is refused by name.
- A transformer file's scheduler follows the release the user marked it as (Full: UniPC over flow sigmas at shift 3;
  Dev and Fast: Euler at shift 6 and 3), not the components folder's; a folder runs its own.

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from desktop.engine.backends import user_tokenizer
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.dit_hidream import DISTILLED_SHIFTS, FULL_SHIFT
from desktop.engine.request import GenerationRequest
from desktop.engine.safe_files import read_json_file
from desktop.engine.terminal_text import library_error

# Each encoder slot of the pipeline: its transformers class and what the user knows it as.
_ENCODERS = (
    ("text_encoder", "CLIPTextModelWithProjection", "CLIP-L"),
    ("text_encoder_2", "CLIPTextModelWithProjection", "CLIP-G"),
    ("text_encoder_3", "T5EncoderModel", "T5-XXL"),
    ("text_encoder_4", "LlamaForCausalLM", "Llama 3.1 8B Instruct"),
)
# The tokenizer classes of HiDream.ai's folders (model_index.json names them; a folder may say otherwise).
_TOKENIZERS = {"tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer", "tokenizer_3": "T5Tokenizer",
               "tokenizer_4": "PreTrainedTokenizerFast"}  # fmt: skip
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")
# The schedulers of HiDream.ai's releases (Full's; Dev's and Fast's).
_SCHEDULERS = ("UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler")
# The prompt tokens its pipeline reads with each encoder (its default, as HiDream.ai's inference code).
MAX_SEQUENCE = 128
# What the message for a folder without Llama says to do.
_LLAMA_HINT = (
    " HiDream.ai's folders leave Llama 3.1 out: put (or link) the meta-llama/Meta-Llama-3.1-8B-Instruct folder in it "
    "as text_encoder_4/."
)


@functools.cache
def pipeline_class() -> Any:
    """diffusers' HiDreamImagePipeline drawing the size asked (module docstring)."""
    import diffusers

    class HiDreamPipeline(diffusers.HiDreamImagePipeline):
        def __call__(self, *args: Any, width: int, height: int, **kwargs: Any) -> Any:
            check_size(self, width, height)
            # The pipeline scales the job to the area of default_sample_size; that area made the job's own (a hair
            # above it, so that rounding each side down to whole patches keeps it) leaves the size as asked.
            self.default_sample_size = math.sqrt(width * height * (1 + 1e-6)) / self.vae_scale_factor
            return super().__call__(*args, width=width, height=height, **kwargs)

    return HiDreamPipeline


def check_size(pipe: Any, width: int, height: int) -> None:
    """InvalidRequest for a non-square picture of more patches than the transformer pads to (`max_seq`)."""
    side = pipe.vae_scale_factor * 2
    patches = (width // side) * (height // side)
    limit = pipe.transformer.max_seq
    if width != height and patches > limit:
        pixels = limit * side * side
        raise InvalidRequest(
            f"HiDream-I1 draws a picture that is not square at up to {pixels:,} pixels ({limit:,} patches of "
            f"{side}x{side}, {math.isqrt(pixels)}x{math.isqrt(pixels)}'s worth): {width}x{height} is "
            f"{width * height:,}. Choose a smaller size, or a square one."
        )


def scheduler_for(info: DitInfo, config: Path) -> Any:
    """The scheduler of the release `info` is marked as: Dev's and Fast's Euler at their shifts, Full's UniPC over
    flow sigmas at shift 3 from the config folder `config` (the shipped one, or the user's --config) when it holds a
    UniPC, else from those facts (a Dev folder given as --config holds an Euler)."""
    import diffusers

    shift = DISTILLED_SHIFTS.get(info.variant)
    if shift is not None:
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift,
                                                         use_dynamic_shifting=False)  # fmt: skip
    settings = read_json_file(config / "scheduler" / "scheduler_config.json", label=f"scheduler in {config}",
                              missing_ok=True)  # fmt: skip
    if isinstance(settings, dict) and settings.get("_class_name") == "UniPCMultistepScheduler":
        return diffusers.UniPCMultistepScheduler.from_pretrained(str(config / "scheduler"), local_files_only=True)
    return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             flow_shift=FULL_SHIFT)  # fmt: skip


def needs_folder_error(name: str) -> ModelError:
    return ModelError(
        f"{name} holds the HiDream-I1 transformer only. HiDream-I1 also needs its four text encoders (CLIP-L, CLIP-G, "
        "T5-XXL and Llama 3.1 8B Instruct), their tokenizers and its VAE, which Marble cannot ship: pass "
        "--text-encoders FOLDER, a diffusers HiDream-I1 folder (such as HiDream-ai/HiDream-I1-Full) holding "
        "Llama 3.1 as text_encoder_4/, or the four encoder files from the library with Flux's VAE "
        "(--text-encoders clip_l_hidream,clip_g_hidream,t5xxl,llama_3.1_8b_instruct --vae ae) and Llama's tokenizer "
        "(--tokenizer-folder)."
    )


def _llama_tokenizer(folder: Path) -> Path | None:
    """Where Llama's tokenizer is: tokenizer_4/, else beside its weights in text_encoder_4/ (Meta's folder)."""
    for place in (folder / "tokenizer_4", folder / "text_encoder_4"):
        if any((place / file).is_file() for file in _TOKENIZER_FILES):
            return place
    return None


def llama_tokenizer(folder: Path | None, *, name: str) -> Any:
    """Llama 3.1's tokenizer for a file run with library encoders, from the user's tokenizer folder: Meta's
    Meta-Llama-3.1-8B-Instruct folder (tokenizer.json), or a HiDream-I1 folder holding tokenizer_4/ (or Llama as
    text_encoder_4/). Meta's licence keeps it out of Marble."""
    import transformers

    place = None
    if folder is not None:
        own = folder if any((folder / file).is_file() for file in _TOKENIZER_FILES) else None
        place = own or _llama_tokenizer(folder)
    return user_tokenizer.load(
        place, folder, name=name, encoder="Llama 3.1 text encoder",
        where="the meta-llama/Meta-Llama-3.1-8B-Instruct folder (its tokenizer.json), or a HiDream-I1 folder holding "
              "tokenizer_4/",
        loader=lambda found: transformers.PreTrainedTokenizerFast.from_pretrained(found, local_files_only=True),
    )  # fmt: skip


def check_components(folder: Path, *, name: str) -> None:
    """Refuse, naming what is missing, a folder that lacks an encoder, a tokenizer or the VAE, or holds another
    model's Llama or VAE (before the slow transformer load)."""
    missing = [f"{slot}/ ({what})" for slot, _cls, what in _ENCODERS if not (folder / slot / "config.json").is_file()]
    for slot in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        if not any((folder / slot / file).is_file() for file in _TOKENIZER_FILES):
            missing.append(f"{slot}/")
    if (folder / "text_encoder_4" / "config.json").is_file() and _llama_tokenizer(folder) is None:
        missing.append("tokenizer_4/ (Llama 3.1's tokenizer.json; or beside its weights in text_encoder_4/)")
    if not (folder / "vae" / "config.json").is_file():
        missing.append("vae/ (Flux.1's VAE)")
    if missing:
        hint = _LLAMA_HINT if not (folder / "text_encoder_4" / "config.json").is_file() else ""
        raise ModelError(
            f"{folder} cannot serve {name}: it has no {', no '.join(missing)}. HiDream-I1 needs a diffusers HiDream-I1 "
            f"folder.{hint}"
        )
    llama = read_json_file(folder / "text_encoder_4" / "config.json", label=f"text_encoder_4/config.json in {folder}")
    vae = read_json_file(folder / "vae" / "config.json", label=f"vae/config.json in {folder}")
    kind = llama.get("model_type") if isinstance(llama, dict) else None
    channels = vae.get("latent_channels") if isinstance(vae, dict) else None
    if kind != "llama" or channels != 16:
        raise ModelError(
            f"{folder} cannot serve {name}: its text_encoder_4/ is {kind or 'not a language model'} and its VAE has "
            f"{channels} latent channels, but HiDream-I1 needs Llama 3.1 8B Instruct (llama) and Flux.1's VAE (16)."
        )


def assemble(folder: Path, info: DitInfo, *, name: str, dtype: Any, scheduler: Any, transformer: Any = None) -> Any:
    """The pipeline from `folder`'s encoders, tokenizers and VAE, with `scheduler` and `transformer` (None: the
    folder's own)."""
    import diffusers
    import transformers

    check_components(folder, name=name)
    index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}", missing_ok=True)
    index = index if isinstance(index, dict) else {}
    try:
        if transformer is None:
            transformer = diffusers.HiDreamImageTransformer2DModel.from_pretrained(
                str(folder / "transformer"), dtype=dtype, local_files_only=True, use_safetensors=True
            )
        parts: dict[str, Any] = {
            slot: getattr(transformers, cls).from_pretrained(
                str(folder / slot), dtype=dtype, local_files_only=True, use_safetensors=True
            )
            for slot, cls, _what in _ENCODERS
        }
        for slot, default in _TOKENIZERS.items():
            place = _llama_tokenizer(folder) if slot == "tokenizer_4" else folder / slot
            parts[slot] = getattr(transformers, _class_named(index, slot, default)).from_pretrained(
                str(place), local_files_only=True
            )
        parts["vae"] = diffusers.AutoencoderKL.from_pretrained(
            str(folder / "vae"), dtype=dtype, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as error:
        raise ModelError(f"Could not load {name!r} with the components in {folder}: {library_error(error)}") from error
    return pipeline_class()(transformer=transformer, scheduler=scheduler, **parts)


def folder_scheduler(folder: Path, info: DitInfo, shipped: Path) -> Any:
    """A HiDream-I1 folder's own scheduler (its release's: library/dit_hidream.py folder_variant read it); the
    release's from Marble's table when the folder has none."""
    import diffusers

    config = read_json_file(folder / "scheduler" / "scheduler_config.json", label=f"scheduler in {folder}",
                            missing_ok=True)  # fmt: skip
    named = config.get("_class_name") if isinstance(config, dict) else None
    if named not in _SCHEDULERS:  # only the releases' own: a folder's JSON names no other class to build
        return scheduler_for(info, shipped)
    try:
        return getattr(diffusers, named).from_pretrained(str(folder / "scheduler"), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"The scheduler in {folder} does not load: {library_error(error)}") from error


def _class_named(index: dict[str, Any], slot: str, default: str) -> str:
    entry = index.get(slot)
    named = entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None
    return named or default


def generation_arguments(request: GenerationRequest) -> dict[str, Any]:
    """The prompt for all four encoders (128 tokens each, the pipeline's default); CFG above 1 against the negative
    prompt (blank when none is given, the pipeline's own); at 1 and below (Dev, Fast) no CFG."""
    guided = request.cfg_scale > 1
    return {"prompt": request.prompt, "negative_prompt": (request.negative_prompt or None) if guided else None,
            "guidance_scale": float(request.cfg_scale), "max_sequence_length": MAX_SEQUENCE}  # fmt: skip


@functools.cache
def edit_class() -> Any:
    """HiDream-I1's image to image and inpainting (diffusers has none), over its text-to-image pipeline as diffusers'
    image-to-image pipelines do it: the schedule of the job's step count is made, the source's latents (Flux's VAE's
    mode, shifted and scaled) are noised to the sigma where its last `strength` starts, `(1 - s) x0 + s noise`, and
    only that tail runs. Full's UniPC, to which the pipeline hands no schedule, gets the tail by its `set_timesteps`
    being wrapped for the call (Dev's and Fast's Euler the same way: flow_edit.ScheduleTailEdit). Strength 1 runs the
    whole schedule from the noise text to image draws for the seed: the same picture. Inpainting puts the source,
    noised to where each step landed, back outside the mask after every step (flow_edit.blended); `image` may be
    latents already, (B, C, h, w) in the transformer's space (the hires fix's latent upscalers)."""
    from diffusers import UniPCMultistepScheduler
    from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift

    from desktop.engine.backends.flow_edit import ScheduleTailEdit

    class HiDreamEditPipeline(ScheduleTailEdit, pipeline_class()):  # type: ignore[misc, valid-type]
        def _edit_schedule(self, scheduler: Any, steps: int, device: Any) -> None:
            # As the pipeline sets its scheduler's (the shift argument only counts for a dynamic shift).
            if isinstance(scheduler, UniPCMultistepScheduler):
                scheduler.set_timesteps(steps, device=device)
            else:
                scheduler.set_timesteps(steps, device=device, mu=calculate_shift(self.transformer.max_seq))

        def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
            side = self.vae_scale_factor * 2
            return 2 * (height // side), 2 * (width // side)

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
            latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.mode()
            return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

        def _edit_pack(self, grid: Any) -> Any:
            return grid

    return HiDreamEditPipeline
