"""Loading and running the diffusion-transformer families: Flux.1 and SD3/SD3.5 (Qwen-Image and Z-Image
in families_qwen_zimage.py, Flux.2 in families_flux2.py, FLUX.3 in families_flux3.py, called from here).

Called by diffusers_backend on the generation thread; torch, diffusers and transformers are imported
inside the functions (this module is listed with the backend's helpers in pyproject's import-linter
contract). Detection (which family, which layout, which quantisation) happened already, from the
tensors, in desktop.engine.library.dit.

A model comes as
- a diffusers folder: loaded as it is;
- a single file (BFL/SAI names, ComfyUI's prefixed names, or diffusers names; safetensors or GGUF):
  the transformer is read from it and the rest (text encoders, tokenizers, VAE) comes from a diffusers
  folder of the same family the user names (`text_encoders`), from text-encoder files and a VAE the
  user names from the library (encoder_components.py), or, for an SD3 file that holds its own text
  encoders and VAE, from the file itself.
Configs come from resources/configs/ (or the user's --config folder); nothing is fetched.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from desktop.engine.backends import encoder_components, flux2_latents, qwen_encoders
from desktop.engine.backends import families_auraflow as auraflow
from desktop.engine.backends import families_chroma as chroma
from desktop.engine.backends import families_ernie as ernie
from desktop.engine.backends import families_flux2 as flux2
from desktop.engine.backends import families_flux3 as flux3
from desktop.engine.backends import families_hidream as hidream
from desktop.engine.backends import families_krea2 as krea2
from desktop.engine.backends import families_longcat as longcat
from desktop.engine.backends import families_lumina2 as lumina2
from desktop.engine.backends import families_ovis as ovis
from desktop.engine.backends import families_pixart as pixart
from desktop.engine.backends import families_qwen21 as qwen21
from desktop.engine.backends import families_qwen_edit as qwen_edit
from desktop.engine.backends import families_qwen_zimage as qwen_zimage
from desktop.engine.backends import families_sana as sana
from desktop.engine.backends.dit_memory import DitSizes
from desktop.engine.backends.fp8_storage import keep_fp8
from desktop.engine.backends.quantised_weights import bnb_folder_components, dequantise, quantise_linear_layers
from desktop.engine.errors import ModelError
from desktop.engine.library import dit_flux2, dit_flux3, dit_pixart, quant_formats
from desktop.engine.library.checkpoint import ArchitectureInfo, with_variant
from desktop.engine.library.dit import COMFY_PREFIX, DitInfo, edit_variant
from desktop.engine.library.dit_auraflow import AURAFLOW
from desktop.engine.library.dit_hidream import HIDREAM
from desktop.engine.library.dit_pixart import PIXART
from desktop.engine.library.dit_qwen_zimage import LUMINA2, components_class
from desktop.engine.library.dit_sana import SANA, SPRINT
from desktop.engine.library.native_size import T5_TOKENS
from desktop.engine.library.quant_formats import BNB_NF4
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources
from desktop.engine.terminal_text import library_error

# Where a pipeline holds its text encoders (HiDream-I1's Llama is the fourth).
ENCODER_SLOTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")
# The T5 tokenizer shipped once under resources/tokenizers/ (LICENSE-NOTE there).
# A tokenizer folder holds one of these (CLIP's vocabulary, a fast tokenizer's file, T5's SentencePiece model).
_TOKENIZER_FILES = ("vocab.json", "tokenizer.json", "spiece.model")
T5_TOKENIZER_FOLDER = "t5"
# Flux.1's T5 prompt length: dev was trained with 512 tokens, schnell with 256 (BFL's reference code).


def pipeline_class(family: str) -> Any:
    import diffusers

    if family in qwen_zimage.FAMILIES:
        return qwen_zimage.pipeline_class(family)
    if family == "flux-fill":
        return diffusers.FluxFillPipeline
    if family == "flux-control":
        return diffusers.FluxControlPipeline
    if family == "flux":
        return diffusers.FluxPipeline
    if family in ("sd3", "sd3.5"):
        return diffusers.StableDiffusion3Pipeline
    if family == "chroma":
        return chroma.pipeline_class()
    if family == HIDREAM:
        return hidream.pipeline_class()
    if family == AURAFLOW:
        return auraflow.pipeline_class()
    if family == SANA:
        return sana.pipeline_class()  # Sana Sprint's: load_pipeline picks it by the variant
    if family == PIXART:
        return pixart.pipeline_class("")  # Alpha's: load_pipeline picks it by the variant
    raise ModelError(f"Marble cannot run {family} models yet (docs/model-families.md).")


# The image-to-image and inpainting pipeline of each family (diffusers' class names).
_EDIT_PIPELINES = {
    ("flux", "img2img"): "FluxImg2ImgPipeline",
    ("flux", "inpaint"): "FluxInpaintPipeline",
    ("sd3", "img2img"): "StableDiffusion3Img2ImgPipeline",
    ("sd3", "inpaint"): "StableDiffusion3InpaintPipeline",
    ("sd3.5", "img2img"): "StableDiffusion3Img2ImgPipeline",
    ("sd3.5", "inpaint"): "StableDiffusion3InpaintPipeline",
    ("qwen-image", "img2img"): "QwenImageImg2ImgPipeline",
    ("qwen-image", "inpaint"): "QwenImageInpaintPipeline",
    ("z-image", "img2img"): "ZImageImg2ImgPipeline",
    ("z-image", "inpaint"): "ZImageInpaintPipeline",
    ("chroma", "img2img"): "ChromaImg2ImgPipeline",
    ("chroma", "inpaint"): "ChromaInpaintPipeline",
    # Flux.2 Klein has an inpainting pipeline only: image-to-image is inpainting with everything masked
    # (img2img_by_inpainting). Flux.2 dev's pipeline takes reference images to edit by instruction, which is
    # another thing than image-to-image: Marble's own over it (families_flux2.dev_edit_class).
    (dit_flux2.FLUX2, "img2img"): "Flux2KleinInpaintPipeline",
    (dit_flux2.FLUX2, "inpaint"): "Flux2KleinInpaintPipeline",
}


# The families diffusers has no image-to-image or inpainting pipelines for: Marble's own over their text-to-image
# pipelines (flow_edit.py), made from the loaded one by each family's module.
_OWN_EDITS = {qwen_zimage.QWEN_IMAGE_21: qwen21.edit_class, LUMINA2: lumina2.edit_class,
              qwen_zimage.KREA2: krea2.edit_class, qwen_zimage.ERNIE_IMAGE: ernie.edit_class,
              qwen_zimage.LONGCAT: longcat.edit_class, qwen_zimage.OVIS: ovis.edit_class,
              HIDREAM: hidream.edit_class, AURAFLOW: auraflow.edit_class, SANA: sana.edit_class,
              dit_flux3.FLUX3: flux3.edit_class}  # fmt: skip


def edits(family: str, variant: str = "", mode: str = "img2img") -> bool:
    """Whether Marble runs image-to-image and inpainting (`mode`) for `family` (diffusers' own pipelines; for Qwen-Image
    2.1, Lumina Image 2.0, Krea 2, ERNIE-Image, LongCat-Image, Ovis-Image, HiDream-I1, AuraFlow, Sana and Flux.2 dev
    Marble's own over their text-to-image pipelines; Sana Sprint's through diffusers' image-to-image pipeline, whose
    sampler Marble's inpainting steers, `families_sana.img2img_class`)."""
    if family in _OWN_EDITS or family == dit_flux2.FLUX2 or family == PIXART:
        return True
    return (family, "img2img") in _EDIT_PIPELINES or family == "flux-fill"


def side_multiple(pipe: Any, info: DitInfo) -> int:
    """The pixels a side is a multiple of: the VAE's factor times the 2x2 patches the transformer reads (ERNIE-Image's
    pipeline counts its VAE's patches in its factor already; Sana reads one latent a token, and its pipeline takes
    sides of whole 32 pixels, its DC-AE's factor)."""
    if info.family == SANA:
        return max(pipe.vae_scale_factor, sana.SIDE_MULTIPLE)
    return pipe.vae_scale_factor if info.family == qwen_zimage.ERNIE_IMAGE else pipe.vae_scale_factor * 2


def check_size(pipe: Any, info: DitInfo, *sizes: tuple[int, int]) -> None:
    """InvalidRequest for a (width, height) the family cannot draw (HiDream-I1: a picture that is not square over its
    transformer's patch count), before any work is done."""
    if info.family == HIDREAM:
        for width, height in sizes:
            hidream.check_size(pipe, width, height)


def hires_vae_latents(pipe: Any, info: DitInfo, latents: Any, size: tuple[int, int]) -> tuple[Any, int] | None:
    """The first pass's latents (of a picture of `size`, padded) as the VAE's (B, C, h, w), which a latent upscaler
    interpolates, and their pixel factor, for the families whose latents are not the packed tokens their previews
    read: ERNIE-Image's, Flux.2 dev's and FLUX.3's (normalised 2x2 patches: ERNIE's a grid, dev's and FLUX.3's packed
    into tokens in row order) and Flux.2 Klein's (its pipeline gives back the VAE's latents already). None for the
    others."""
    if info.family == dit_flux2.FLUX2 and not flux2.is_dev(info):
        return latents, pipe.vae_scale_factor
    if info.family in (dit_flux2.FLUX2, dit_flux3.FLUX3):
        rows, cols = size[1] // (pipe.vae_scale_factor * 2), size[0] // (pipe.vae_scale_factor * 2)
        grid = latents.transpose(1, 2).reshape(latents.shape[0], latents.shape[2], rows, cols)
        return flux2_latents.vae_latents(pipe, grid, pipe.vae.config.batch_norm_eps), pipe.vae_scale_factor
    if info.family != qwen_zimage.ERNIE_IMAGE:
        return None
    return flux2_latents.vae_latents(pipe, latents, ernie.BATCH_NORM_EPS), pipe.vae_scale_factor // 2


def hires_edit_latents(pipe: Any, info: DitInfo, latents: Any) -> Any:
    """Upscaled VAE latents from `hires_vae_latents` as the family's image-to-image pipeline takes them as they are:
    ERNIE-Image's, Flux.2 dev's and FLUX.3's patched and normalised again (Marble's edits over their pipelines take the
    transformer's latents); Flux.2 Klein's in 2x2 patches as channels (4C), which its inpainting pipeline takes as
    latents and normalises itself (a tensor of any other channel count is read as a picture); Sana Sprint's times its
    sampler's sigma_data, as its image-to-image pipeline scales an encoded picture."""
    if flux2.is_dev_model(info) or info.family == dit_flux3.FLUX3:
        return flux2_latents.normalised_patches(pipe, latents, pipe.vae.config.batch_norm_eps)
    if info.family == dit_flux2.FLUX2:
        return pipe._patchify_latents(latents)
    if info.family == SANA and info.variant == SPRINT:
        return sana.sprint_latents(pipe, latents)
    if info.family == qwen_zimage.ERNIE_IMAGE:
        return flux2_latents.normalised_patches(pipe, latents, ernie.BATCH_NORM_EPS)
    return latents


def img2img_by_inpainting(info: DitInfo, mode: str) -> bool:
    """Whether `mode` runs as inpainting with everything masked (a family with an inpainting pipeline only)."""
    return mode == "img2img" and info.family == dit_flux2.FLUX2 and not flux2.is_dev(info)


# The families whose pipelines run CFG (against the negative prompt) only above 1 (families_qwen_zimage.py).
_GUIDED_ABOVE_ONE = (qwen_zimage.QWEN_IMAGE_21, qwen_zimage.KREA2, qwen_zimage.ERNIE_IMAGE, qwen_zimage.LONGCAT,
                     qwen_zimage.OVIS, HIDREAM, AURAFLOW, SANA, PIXART, dit_flux3.FLUX3)  # fmt: skip


def ignored_negative_note(pipe: Any, request: GenerationRequest, info: DitInfo) -> str | None:
    """A note for a job whose negative prompt the model does not use (Flux.2 dev; Klein without true CFG; Flux.1
    Fill and Canny/Depth dev, whose pipelines have no true CFG; Qwen-Image 2.1, Krea 2, ERNIE-Image, LongCat-Image,
    Ovis-Image and FLUX.3 at CFG 1 and below; FLUX.3 distilled)."""
    if request.negative_prompt and info.family == dit_flux3.FLUX3 and info.variant == dit_flux3.DISTILLED:
        return f"{info.label} runs without CFG, so without a negative prompt; it was ignored."
    if request.negative_prompt and info.family == SANA and info.variant == SPRINT:
        return f"{info.label} takes no negative prompt (its guidance is embedded, as Flux.1 dev's); it was ignored."
    if request.negative_prompt and (info.fill or info.control_input):
        return f"{info.label} models run without true CFG in diffusers, so without a negative prompt; it was ignored."
    if request.negative_prompt and info.family in _GUIDED_ABOVE_ONE and request.cfg_scale <= 1:
        return f"{info.label} uses a negative prompt only with CFG above 1; the negative prompt was ignored."
    if not request.negative_prompt or info.family != dit_flux2.FLUX2 or not flux2.ignores_negative(pipe, request, info):
        return None
    why = "takes no negative prompt" if flux2.is_dev(info) else "uses a negative prompt only with CFG above 1"
    if not flux2.is_dev(info) and pipe.config.is_distilled:
        why = "is step-distilled: it runs without CFG, so without a negative prompt"
    return f"{info.label} {why}; the negative prompt was ignored."


def takes_samplers(info: DitInfo) -> bool:
    """Whether A1111's samplers run a DiT: PixArt's, a noise-prediction model over SD's kind of schedule (the others
    are flow-matching models, run by their pipelines' own sampler)."""
    return info.family == PIXART


# The distilled guidance BFL's model cards give Flux.1 Depth dev (10) and Canny dev (30): far above the 3.5 that
# suits the other dev models, below which their control picture barely steers the image.
CONTROL_INPUT_GUIDANCE = 10.0


def low_guidance_note(request: GenerationRequest, info: DitInfo) -> str | None:
    """A note for a Canny / Depth dev job run at a distilled CFG below what those models were made for."""
    if not info.control_input or request.distilled_cfg_scale >= CONTROL_INPUT_GUIDANCE:
        return None
    return (
        f"{info.label} models were made for a distilled CFG of 30 (Canny dev) or 10 (Depth dev), not "
        f"{request.distilled_cfg_scale:g}: the control picture may barely steer the image."
    )


def fixed_schedule_note(pipe: Any, request: GenerationRequest, info: DitInfo) -> str | None:
    """A note for a job whose step count the model's own fixed schedule overrides (Qwen-Image-2.1-Turbo)."""
    sigmas = getattr(pipe.config, "sample_sigmas", None) if info.family == qwen_zimage.QWEN_IMAGE_21 else None
    if not sigmas or len(sigmas) == request.steps:
        return None
    return (f"{info.label} runs its own {len(sigmas)}-step schedule (its model_index.json): {request.steps} steps "
            "were not used.")  # fmt: skip


# Where each family's long-prompt encoder's tokenizer sits (CLIP's 77 tokens are cut in every tool: not said).
_LONG_TOKENIZER = {"flux": "tokenizer_2", "sd3": "tokenizer_3", "sd3.5": "tokenizer_3", HIDREAM: "tokenizer_3"}
# The families whose prompt note counts with T5 (HiDream-I1's Llama reads as many tokens of its own beside it).
_T5_COUNTED = ("flux", "sd3", "sd3.5", "chroma", HIDREAM, AURAFLOW, PIXART)


def long_prompt_notes(pipe: Any, arguments: dict[str, Any], info: DitInfo) -> list[str]:
    """A note for each prompt (and negative prompt) longer than the family's encoder reads
    (`max_sequence_length` of `arguments`): the pipeline cuts the rest silently. Counted by the encoder's
    own tokenizer: T5's count is exact (its end token included); an LLM encoder's (Qwen, Mistral) counts the
    prompt alone, without the chat template around it, so a prompt just under the limit may still lose its
    last few tokens unsaid."""
    limit = arguments.get("max_sequence_length", qwen_zimage.SEQUENCE_LIMITS.get(info.family))
    tokenizer = getattr(pipe, _LONG_TOKENIZER.get(info.family, "tokenizer"), None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor (Flux.2 dev's folder) holds one
    if not isinstance(limit, int) or tokenizer is None:
        return []
    t5 = info.family in _T5_COUNTED
    notes = []
    for key, what in (("prompt", "prompt"), ("negative_prompt", "negative prompt")):
        text = arguments.get(key)
        if not isinstance(text, str) or not text:
            continue
        if info.family == LUMINA2 and key == "prompt":  # read after its system prompt, within the same limit
            system = arguments.get("system_prompt") or getattr(pipe, "system_prompt", "")
            text = f"{system} {qwen_zimage.PROMPT_START} {text}"
            what = "prompt with its system prompt"
        try:
            count = len(tokenizer(text, add_special_tokens=t5, truncation=False, verbose=False).input_ids)
        except (TypeError, ValueError, AttributeError):
            return notes  # a tokenizer that cannot count this way: the job runs without the note
        if count > limit:
            notes.append(
                f"The {what} is {count:,} tokens long for {info.label}'s {'T5' if t5 else 'text'} encoder, which "
                f"reads the first {limit}: the rest had no effect. Shorten it, or put what matters first."
            )
    return notes


def edit_pipeline(pipe: Any, mode: str, info: DitInfo) -> Any:
    """The loaded pipeline's image-to-image or inpainting sibling (`mode`), sharing its modules (no tensor
    is copied). A Flux Fill model (loaded as FluxFillPipeline) does both itself: image-to-image is
    inpainting with everything masked, as for an SD inpainting model."""
    import diffusers

    if info.fill:
        return pipe
    if qwen_edit.is_edit(info):
        return qwen_edit.edit_pipeline(pipe, mode, info)
    if info.control_input:  # Canny / Depth dev: the control picture's latents beside the source's
        return control_input_pipeline(pipe, mode)
    if info.family == SANA and info.variant == SPRINT:
        return sibling(pipe, sana.img2img_class())  # image to image and inpainting (families_sana.py)
    if info.family == PIXART:  # its release's pipeline under Marble's edits (flow_edit.py)
        return sibling(pipe, pixart.edit_class(info.variant))
    if info.family in _OWN_EDITS:  # one pipeline does both (flow_edit.py)
        return own_edit_pipeline(pipe, info.family)
    if flux2.is_dev_model(info):  # Marble's own over its pipeline, as above
        return sibling(pipe, flux2.dev_edit_class())
    name = _EDIT_PIPELINES.get((info.family, mode))
    if name is None:
        raise ModelError(f"Marble cannot run {info.label} models for {mode} yet (docs/model-families.md).")
    if info.family == "chroma" and "guidance_embeds" not in pipe.transformer.config:
        # diffusers 0.42's ChromaInpaintPipeline asks the transformer's config whether it embeds guidance, which
        # Chroma's never does and whose config has no such field (an AttributeError in the first step).
        pipe.transformer.register_to_config(guidance_embeds=False)
    return sibling(pipe, getattr(diffusers, name))


# The pipelines of a Flux.1 transformer that reads a control picture beside the noise, for each mode.
_CONTROL_INPUT_PIPELINES = {"txt2img": "FluxControlPipeline", "img2img": "FluxControlImg2ImgPipeline",
                            "inpaint": "FluxControlInpaintPipeline"}  # fmt: skip


def control_input_pipeline(pipe: Any, mode: str) -> Any:
    """A Flux.1 pipeline's sibling for a transformer that reads a control picture's latents beside the noise (Canny
    / Depth dev, or Flux.1 dev with their Control-LoRA loaded) in `mode`."""
    import diffusers

    return sibling(pipe, getattr(diffusers, _CONTROL_INPUT_PIPELINES[mode]))


def kontext_pipeline(pipe: Any) -> Any:
    """A Flux.1 pipeline's FluxKontextPipeline sibling: the reference picture's latents read beside the noise
    (FLUX.1 Kontext's instruction edits; other Flux.1 dev models run it too, as ComfyUI lets them)."""
    import diffusers

    return sibling(pipe, diffusers.FluxKontextPipeline)


def own_edit_pipeline(pipe: Any, family: str) -> Any:
    """The image-to-image and inpainting pipeline Marble makes for a family diffusers has none for (flow_edit.py)."""
    return sibling(pipe, _OWN_EDITS[family]())


def sibling(pipe: Any, cls: Any) -> Any:
    """A pipeline of `cls` over the loaded `pipe`'s modules and settings.

    Built from the loaded modules as they are: from_pipe would cast them (undoing fp8 storage) and move them
    (fighting the offload hooks); a constructor only registers them. The settings the loaded pipeline registered
    beside its modules (Flux.2 Klein's and Krea 2's `is_distilled`, a Qwen-Image 2.1 Turbo's `sample_sigmas`,
    Krea 2's tapped layers) go with them where `cls` takes them."""
    accepted = inspect.signature(cls.__init__).parameters
    modules = {key: module for key, module in pipe.components.items() if key in accepted}
    settings = {key: value for key, value in pipe.config.items()
                if key in accepted and key not in pipe.components and not key.startswith("_")}  # fmt: skip
    edit = cls(**modules, **settings)
    edit.set_progress_bar_config(disable=True)
    return edit


def with_components_variant(arch: ArchitectureInfo, text_encoders: Path | None) -> ArchitectureInfo:
    """A Qwen-Image or LongCat-Image transformer file whose tensors and metadata cannot tell an Edit model, or a PixArt
    file in diffusers' names that cannot tell Alpha's 512-pixel model from Sigma: the user's `--text-encoders` folder
    decides (a Qwen-Image-Edit or LongCat-Image-Edit folder makes it one, a PixArt-α folder makes it Alpha;
    dit_qwen_zimage.py, dit_longcat.py, dit_pixart.py)."""
    info = arch.dit
    if info is None or text_encoders is None:
        return arch
    if info.family == PIXART and info.layout == "diffusers":
        # diffusers' names carry no caption table, so Alpha's 512-pixel model reads as Sigma (dit_pixart.py): an Alpha
        # folder lending its parts says which it is (Sigma's transformer would draw nothing with Alpha's VAE anyway).
        told = dit_pixart.folder_variant(components_class(text_encoders))
        return with_variant(arch, told) if told == dit_pixart.ALPHA else arch
    if info.variant:
        return arch
    variant = edit_variant(info.family, components_class(text_encoders))
    return replace(arch, dit=replace(info, variant=variant)) if variant else arch


def transformer_class(family: str) -> Any:
    import diffusers

    if family in qwen_zimage.FAMILIES:
        return qwen_zimage.transformer_class(family)
    if family == "chroma":
        return chroma.transformer_class()
    if family == dit_flux2.FLUX2:
        return flux2.transformer_class()
    if family == HIDREAM:
        return diffusers.HiDreamImageTransformer2DModel
    if family == AURAFLOW:
        return auraflow.transformer_class()
    if family == SANA:
        return sana.transformer_class()
    if family == PIXART:
        return pixart.transformer_class()
    return diffusers.FluxTransformer2DModel if family == "flux" else diffusers.SD3Transformer2DModel


def shipped_tokenizers(resources: Resources, folder: Path, family: str) -> dict[str, Any]:
    """Tokenizers for each tokenizer component `folder`'s model_index.json names but does not hold:
    the shipped CLIP files (SD3's second one padding with "!", as OpenCLIP bigG was trained) and the
    shipped T5 files."""
    import transformers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    found: dict[str, Any] = {}
    for component, entry in index.items():
        if not component.startswith("tokenizer") or not isinstance(entry, list) or entry[0] is None:
            continue
        if any((folder / component / file).is_file() for file in _TOKENIZER_FILES):
            continue
        if entry[1].startswith("T5"):
            found[component] = transformers.T5TokenizerFast.from_pretrained(
                str(resources.tokenizers / T5_TOKENIZER_FOLDER), local_files_only=True
            )
        elif entry[1].startswith("CLIP"):  # another family's own (AuraFlow's Pile-T5) is not shipped
            pad_zero = family in ("sd3", "sd3.5") and component == "tokenizer_2"
            overrides = {"pad_token": "!"} if pad_zero else {}
            found[component] = transformers.CLIPTokenizer.from_pretrained(
                str(resources.tokenizer_folder()), local_files_only=True, **overrides
            )
    return found


def folder_tokenizers(folder: Path, *, name: str) -> dict[str, Any]:
    """The tokenizers a config folder holds itself, each by the class its model_index.json names: a whole model's
    folder given as --config beside library encoders serves them (nothing loaded them before, and the pipeline lacked
    its tokenizer)."""
    import transformers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    found: dict[str, Any] = {}
    for component, entry in index.items():
        if not component.startswith("tokenizer") or not isinstance(entry, list) or entry[0] is None:
            continue
        if not any((folder / component / file).is_file() for file in _TOKENIZER_FILES):
            continue
        cls = getattr(transformers, str(entry[1]), None) or transformers.AutoTokenizer
        try:
            found[component] = cls.from_pretrained(str(folder / component), local_files_only=True)
        except (OSError, ValueError, TypeError) as error:
            raise ModelError(f"{name}: the tokenizer in {folder / component} does not load "
                             f"({library_error(error)}).") from error  # fmt: skip
    return found


def load_pipeline(
    path: Path,
    arch: ArchitectureInfo,
    *,
    name: str,
    dtype: Any,
    resources: Resources,
    config_folder: Path | None,
    text_encoders: Path | None,
    library_parts: LibraryParts | None = None,
    tokenizer_folder: Path | None = None,
) -> Any:
    """A FluxPipeline / StableDiffusion3Pipeline for `path` (a folder or a single file), offline.

    `library_parts`: text encoders and a VAE chosen from the library for a transformer-only file;
    `tokenizer_folder`: where a Qwen-Image / Z-Image file with a library encoder finds its tokenizer."""
    info = arch.dit
    assert info is not None
    if info.family == HIDREAM:
        return _load_hidream(path, arch, name, dtype, resources, config_folder, text_encoders, library_parts,
                             tokenizer_folder)  # fmt: skip
    if info.family == SANA:
        return _load_sana(path, arch, name, dtype, resources, config_folder, text_encoders, library_parts,
                          tokenizer_folder)  # fmt: skip
    if info.family == PIXART:
        return _load_pixart(path, arch, name, dtype, resources, config_folder, text_encoders, library_parts)
    if info.family == AURAFLOW and not path.is_dir():
        return _load_auraflow_file(path, arch, name, dtype, resources, config_folder, text_encoders, library_parts,
                                   tokenizer_folder)  # fmt: skip
    if library_parts is not None and info.family in (*qwen_zimage.FAMILIES, dit_flux2.FLUX2) and not path.is_dir():
        config = config_folder or _config_folder(resources, arch, name)
        return qwen_encoders.assemble(
            info, config, library_parts, name=name, dtype=dtype, tokenizer_folder=tokenizer_folder,
            shipped_tokenizer=resources.tokenizers / qwen_encoders.SHIPPED_FOLDER,
            load_transformer=lambda: load_transformer(path, info, config, name=name, dtype=dtype),
        )  # fmt: skip
    if info.family == dit_flux2.FLUX2:
        return _load_flux2(path, arch, name, dtype, resources, config_folder, text_encoders)
    cls = pipeline_class("flux-fill" if info.fill else "flux-control" if info.control_input else info.family)
    if info.family in qwen_zimage.FAMILIES:
        return _load_qwen_zimage(path, arch, name, dtype, resources, config_folder, text_encoders)
    if path.is_dir():
        parts = bnb_folder_components(path, dtype, name=name)
        return _from_pretrained(cls, path, name, dtype, resources, info.family, **parts)
    config = config_folder or _config_folder(resources, arch, name)
    if library_parts is not None:
        return _with_library_parts(cls, path, info, config, library_parts, name, dtype, resources)
    if info.family == "chroma" and text_encoders is not None:
        chroma.check_components(text_encoders, name=name)  # before the slow transformer load
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    if info.family == "chroma" and text_encoders is not None:
        tokenizer = shipped_tokenizers(resources, config, info.family)["tokenizer"]
        return chroma.assemble(
            text_encoders, name=name, dtype=dtype, shipped=config, tokenizer=tokenizer, transformer=transformer
        )
    if text_encoders is not None:
        if not (text_encoders / "model_index.json").is_file():
            raise ModelError(
                f"The text-encoder folder {text_encoders} is not a diffusers model folder (no model_index.json)."
            )
        return _from_pretrained(cls, text_encoders, name, dtype, resources, info.family, transformer=transformer)
    if not info.needs_components:
        # An all-in-one file (SAI's, or ComfyUI's with `text_encoders.*` and `vae.*`): diffusers converts
        # its text encoders and VAE too; the transformer was converted above.
        import diffusers

        try:
            pipe = cls.from_single_file(
                str(path), config=str(config), local_files_only=True, dtype=dtype, transformer=transformer,
                **shipped_tokenizers(resources, config, info.family),
            )  # fmt: skip
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            diffusers.loaders.single_file_utils.SingleFileComponentError,
        ) as error:
            raise ModelError(f"{name}: could not load its text encoders and VAE ({library_error(error)}).") from error
        # diffusers builds a T5 found in a single file in training mode: its dropout would make every
        # prompt encode differently. Inference mode for every component, as from_pretrained leaves them.
        for component in pipe.components.values():
            if hasattr(component, "eval"):
                component.eval()
        return pipe
    raise ModelError(
        f"{name} holds the {info.label} transformer only ({', '.join(info.components)}): choose the text "
        "encoders and VAE to use with it, a diffusers folder of the same family (--text-encoders FOLDER), or "
        "text encoders and a VAE from the library (--text-encoders clip_l,t5xxl --vae ae)."
    )


@dataclass(frozen=True)
class LibraryParts:
    """Text encoders and a VAE by library entry, for a transformer-only file (encoder_components.py)."""

    encoders: tuple[encoder_components.Component, ...]
    vae: encoder_components.Component | None
    convert_ldm: encoder_components.ConvertLdm


def _with_library_parts(
    cls: Any, path: Path, info: DitInfo, config: Path, parts: LibraryParts, name: str, dtype: Any,
    resources: Resources, tokenizers: dict[str, Any] | None = None,
    chosen: dict[str, tuple[encoder_components.Component, Any]] | None = None,
) -> Any:
    """`tokenizers`: the family's own beside the shipped CLIP and T5 ones (HiDream-I1's Llama tokenizer); `chosen`:
    the encoders by slot, when not the library's (an all-in-one file's own)."""
    # Which encoder fills which slot, and whether the VAE is there, before the slow transformer load.
    chosen = chosen or encoder_components.match_slots(config, parts.encoders, name)
    if parts.vae is None:
        raise ModelError(
            f"{name} holds the transformer only: choose its VAE too (--vae NAME from `marble vaes list`; for "
            "Flux.1 and Chroma the Flux VAE, ae.safetensors)."
        )
    # A --config folder that is a whole model's holds its tokenizers (which shipped_tokenizers leaves to it).
    found = folder_tokenizers(config, name=name) | shipped_tokenizers(resources, config, info.family)
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    return encoder_components.assemble(
        cls, config, chosen, parts.vae, model_name=name, dtype=dtype, transformer=transformer,
        tokenizers=found | (tokenizers or {}),
        convert_ldm=parts.convert_ldm,
    )  # fmt: skip


def _load_qwen_zimage(
    path: Path, arch: ArchitectureInfo, name: str, dtype: Any, resources: Resources, config_folder: Path | None,
    text_encoders: Path | None,
) -> Any:
    """Their text encoder, tokenizer and VAE always come from a folder (the model's own, or --text-encoders)."""
    info = arch.dit
    assert info is not None
    config = config_folder or _config_folder(resources, arch, name)
    if config_folder is None and qwen_edit.is_edit(info) and text_encoders is not None:
        # The Edit model's own folder holds its transformer config (Edit-2511's `zero_cond_t` differs from
        # the base model's, in the config only): it serves a transformer file of that model.
        if (text_encoders / "transformer" / "config.json").is_file():
            config = text_encoders
    if path.is_dir():
        return qwen_zimage.assemble(path, info, name=name, dtype=dtype, shipped=config)
    if text_encoders is None:
        raise qwen_zimage.needs_folder_error(name, info)
    # Before the slow transformer load.
    qwen_zimage.check_components(text_encoders, info.family, name=name,
                                 text_width=qwen_zimage.text_width(config, info.family))  # fmt: skip
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    return qwen_zimage.assemble(text_encoders, info, name=name, dtype=dtype, shipped=config, transformer=transformer)


def _load_hidream(
    path: Path, arch: ArchitectureInfo, name: str, dtype: Any, resources: Resources, config_folder: Path | None,
    text_encoders: Path | None, library_parts: LibraryParts | None, tokenizer_folder: Path | None,
) -> Any:
    """Its text encoders, tokenizers and VAE from a folder (the model's own, or --text-encoders), or from the
    libraries with Llama's tokenizer from --tokenizer-folder; families_hidream.py."""
    info = arch.dit
    assert info is not None
    config = config_folder or _config_folder(resources, arch, name)
    if path.is_dir():
        scheduler = hidream.folder_scheduler(path, info, config)
        return hidream.assemble(path, info, name=name, dtype=dtype, scheduler=scheduler)
    if library_parts is not None:
        llama = {"tokenizer_4": hidream.llama_tokenizer(tokenizer_folder, name=name)}
        pipe = _with_library_parts(hidream.pipeline_class(), path, info, config, library_parts, name, dtype, resources,
                                   tokenizers=llama)  # fmt: skip
        pipe.scheduler = hidream.scheduler_for(info, config)  # the release the file is marked as
        return pipe
    if text_encoders is None:
        raise hidream.needs_folder_error(name)
    hidream.check_components(text_encoders, name=name)  # before the slow transformer load
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    return hidream.assemble(text_encoders, info, name=name, dtype=dtype, scheduler=hidream.scheduler_for(info, config),
                            transformer=transformer)  # fmt: skip


def _load_auraflow_file(
    path: Path, arch: ArchitectureInfo, name: str, dtype: Any, resources: Resources, config_folder: Path | None,
    text_encoders: Path | None, library_parts: LibraryParts | None, tokenizer_folder: Path | None,
) -> Any:
    """A transformer file with Pile-T5-XL, its tokenizer and SDXL's VAE from a folder (--text-encoders), or the encoder
    and VAE from the libraries with the tokenizer from --tokenizer-folder; families_auraflow.py."""
    info = arch.dit
    assert info is not None
    config = config_folder or _config_folder(resources, arch, name)
    cls = auraflow.pipeline_class()
    if library_parts is not None:
        tokenizer = {"tokenizer": auraflow.tokenizer(tokenizer_folder, name=name)}
        return _with_library_parts(cls, path, info, config, library_parts, name, dtype, resources, tokenizers=tokenizer)
    if text_encoders is None and not info.needs_components:
        # An all-in-one file (fal's and ComfyUI's checkpoints, Pony V7's): its own encoder and VAE.
        tokenizer = {"tokenizer": auraflow.tokenizer(tokenizer_folder, name=name)}
        bundled = encoder_components.bundled_encoder(path, auraflow.ENCODER_PREFIX, name)
        parts = LibraryParts((), encoder_components.Component(name, path), _convert_ldm_vae)
        return _with_library_parts(cls, path, info, config, parts, name, dtype, resources, tokenizers=tokenizer,
                                   chosen={"text_encoder": bundled})  # fmt: skip
    if text_encoders is None:
        raise auraflow.needs_folder_error(name)
    auraflow.check_components(text_encoders, name=name)  # before the slow transformer load
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    return _from_pretrained(cls, text_encoders, name, dtype, resources, info.family, transformer=transformer)


def _load_sana(
    path: Path, arch: ArchitectureInfo, name: str, dtype: Any, resources: Resources, config_folder: Path | None,
    text_encoders: Path | None, library_parts: LibraryParts | None, tokenizer_folder: Path | None,
) -> Any:
    """A folder as it is, or a transformer file with Gemma-2, its tokenizer and DC-AE from a folder (--text-encoders)
    or Gemma-2 and DC-AE from the libraries with the tokenizer from --tokenizer-folder, in Sana's pipeline or Sana
    Sprint's; families_sana.py."""
    info = arch.dit
    assert info is not None
    cls = sana.pipeline_class(info.variant)
    if path.is_dir():
        return _from_pretrained(cls, path, name, dtype, resources, info.family)
    config = config_folder or _config_folder(resources, arch, name)
    if library_parts is not None:
        # A whole Sana folder as --config holds the tokenizer itself (folder_tokenizers).
        own = (config / "tokenizer").is_dir()
        tokenizers = {} if own else {"tokenizer": sana.library_tokenizer(tokenizer_folder, name=name)}
        return _with_library_parts(cls, path, info, config, library_parts, name, dtype, resources,
                                   tokenizers=tokenizers)  # fmt: skip
    if text_encoders is None:
        raise sana.needs_folder_error(name)
    sana.check_components(text_encoders, name=name)  # before the slow transformer load
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    # The variant's own scheduler (Sprint's SCM, Sana's DPM-Solver) whatever folder lends the encoders.
    return _from_pretrained(cls, text_encoders, name, dtype, resources, info.family, transformer=transformer,
                            scheduler=_scheduler_of(config))  # fmt: skip


def _load_pixart(
    path: Path, arch: ArchitectureInfo, name: str, dtype: Any, resources: Resources, config_folder: Path | None,
    text_encoders: Path | None, library_parts: LibraryParts | None,
) -> Any:
    """A folder as it is, or a transformer file with T5-XXL and the VAE from a folder (--text-encoders) or the
    libraries (the T5 tokenizer ships), in its release's pipeline; families_pixart.py."""
    info = arch.dit
    assert info is not None
    cls = pixart.pipeline_class(info.variant)
    if path.is_dir():
        # Its transformer as the class that takes LoRAs (diffusers' own has no adapter methods).
        try:
            transformer = pixart.transformer_class().from_pretrained(
                str(path), subfolder="transformer", dtype=dtype, local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
            raise ModelError(f"Could not load {name!r} from {path}: {library_error(error)}") from error
        return _from_pretrained(cls, path, name, dtype, resources, info.family, transformer=transformer)
    config = config_folder or _config_folder(resources, arch, name)
    if library_parts is not None:
        return _with_library_parts(cls, path, info, config, library_parts, name, dtype, resources)
    if text_encoders is None:
        raise pixart.needs_folder_error(name, info.variant)
    pixart.check_components(text_encoders, info.variant, name=name)  # before the transformer load
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    return _from_pretrained(cls, text_encoders, name, dtype, resources, info.family, transformer=transformer,
                            scheduler=_scheduler_of(config))  # fmt: skip


def _load_flux2(
    path: Path, arch: ArchitectureInfo, name: str, dtype: Any, resources: Resources, config_folder: Path | None,
    text_encoders: Path | None,
) -> Any:
    """As Qwen-Image: the text encoder, tokenizer and VAE come from a folder (families_flux2.py)."""
    info = arch.dit
    assert info is not None
    if path.is_dir():
        # Its scheduler is the folder's own; the shipped one serves a folder without one.
        shipped = config_folder or (_config_folder(resources, arch, name) if arch.config_name else path)
        return flux2.assemble(path, info, name=name, dtype=dtype, shipped=shipped)
    config = config_folder or _config_folder(resources, arch, name)
    if text_encoders is None:
        raise flux2.needs_folder_error(name, info)
    # Before the slow transformer load: the folder's kind, and its encoder's width where the variant says it.
    flux2.check_components(text_encoders, info, name=name, text_width=dit_flux2.text_width(info.variant))
    transformer = load_transformer(path, info, config, name=name, dtype=dtype)
    return flux2.assemble(text_encoders, info, name=name, dtype=dtype, shipped=config, transformer=transformer)


def _from_pretrained(
    cls: Any, folder: Path, name: str, dtype: Any, resources: Resources, family: str, **components: Any
) -> Any:
    try:
        return cls.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, use_safetensors=True,
            **shipped_tokenizers(resources, folder, family), **components,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"Could not load {name!r} from {folder}: {library_error(error)}") from error


def _scheduler_of(config: Path) -> Any:
    """The scheduler a config folder names (model_index.json), built from its scheduler/ config."""
    import diffusers

    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    return getattr(diffusers, index["scheduler"][1]).from_pretrained(str(config), subfolder="scheduler",
                                                                     local_files_only=True)  # fmt: skip


def _config_folder(resources: Resources, arch: ArchitectureInfo, name: str) -> Path:
    if not arch.config_name:
        raise ModelError(f"{name}: Marble ships no configuration for {arch.label} yet; pass a diffusers config folder.")
    return resources.config_folder(arch.config_name)


def load_transformer(path: Path, info: DitInfo, config: Path, *, name: str, dtype: Any) -> Any:
    """The transformer of a single file (safetensors or GGUF, any layout) as a diffusers model; an fp8
    file's stays stored in fp8 (fp8_storage.py)."""
    return keep_fp8(_load_transformer(path, info, config, name=name, dtype=dtype), info, dtype)


# What a family calls its first kind of blocks, in the message for a file with fewer than its config.
_BLOCK_KINDS = {"sd3": "joint ", "sd3.5": "joint ", AURAFLOW: "joint ", SANA: "", PIXART: ""}


def _load_transformer(path: Path, info: DitInfo, config: Path, *, name: str, dtype: Any) -> Any:
    import diffusers

    expected = json.loads((config / "transformer" / "config.json").read_text(encoding="utf-8"))
    layers = expected.get("num_mmdit_layers" if info.family == AURAFLOW else "num_layers")
    if info.family == dit_flux3.FLUX3:
        pass  # its config is its tensors' (checked below)
    elif info.family in qwen_zimage.FAMILIES:
        qwen_zimage.check_blocks(info, expected, name=name)
    elif isinstance(layers, int) and info.blocks[0] != layers:
        raise ModelError(
            f"{name} has {info.blocks[0]} {_BLOCK_KINDS.get(info.family, 'double ')}blocks but the "
            f"{info.label} configuration has {layers}: the file is incomplete, or a variant with other dimensions "
            "(pass its diffusers config folder)."
        )
    single = expected.get("num_single_dit_layers" if info.family == AURAFLOW else "num_single_layers")
    if info.family in ("flux", "chroma", dit_flux2.FLUX2, HIDREAM, AURAFLOW) and isinstance(single, int) and (
        info.blocks[1] != single
    ):
        raise ModelError(
            f"{name} has {info.blocks[1]} single blocks but the {info.label} configuration has {single}: the "
            "file is incomplete, or a variant with other dimensions (pass its diffusers config folder)."
        )
    gguf = info.quantization is not None
    if info.layout == "diffusers" and info.family not in (PIXART, dit_flux3.FLUX3):  # theirs: checked below
        _check_names(_transformer_names(path, gguf, name), transformer_class(info.family), expected, info, name=name)
    kwargs: dict[str, Any] = {"config": str(config), "subfolder": "transformer", "local_files_only": True,
                              "dtype": dtype}  # fmt: skip
    if gguf:
        kwargs["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
    cls = transformer_class(info.family)
    try:
        if info.family in ("flux", "chroma"):
            # diffusers' own BFL conversion assumes FLUX.1's 3072 width; convert here from the tensors.
            state = dequantise(_read_state(path, gguf), info, dtype, name=name)
            if info.layout == "bfl":
                guidance = chroma.pop_guidance_layer(state) if info.family == "chroma" else {}
                state = convert_flux_bfl(state) | guidance
            return cls.from_single_file(state, **kwargs, **_flux_channels(state))
        if info.family == dit_flux3.FLUX3:
            # Its config from its tensors (diffusers publishes none to fetch; a file of other dimensions is another
            # model), its names checked against the model that config makes.
            state = dequantise(_read_state(path, gguf), info, dtype, name=name)
            state = flux3.diffusers_state(state) if info.layout == "bfl" else state
            shape = flux3.settings(state)
            flux3.check_blocks(shape, expected, label=info.label, name=name)
            _check_names(set(state), cls, expected | shape, info, name=name)
            return cls.from_single_file(state, **kwargs, **shape)
        if info.family == SANA:
            # Its makers' names converted here (diffusers' converter misses Sana 1.5's norms); its query-key norm as
            # the file holds it.
            state = dequantise(_read_state(path, gguf), info, dtype, name=name)
            if info.layout == "original":
                state = sana.from_original(state)
            return _dequantised_bare(cls.from_single_file(state, **kwargs, **sana.settings(state)), dtype)
        if info.family == PIXART:
            # diffusers has no single-file loader for it: the tensors go into the model built from the config.
            state = dequantise(_read_state(path, gguf), info, dtype, name=name)
            state = pixart.plain_state(state, dtype) if gguf else state
            state = pixart.from_original(state) if info.layout == "original" else state
            return pixart.transformer_from_state(state, expected, dtype)
        if info.family == AURAFLOW:
            # Read here to drop ComfyUI's prefix (diffusers' AuraFlow converter expects bare names); the position
            # table's size is the file's.
            state = dequantise(_read_state(path, gguf), info, dtype, name=name)
            model = cls.from_single_file(state, **kwargs, **auraflow.position_settings(state, info.layout))
            return _dequantised_bare(model, dtype)
        if info.family in (*qwen_zimage.FAMILIES, dit_flux2.FLUX2, HIDREAM):
            # Read here to drop ComfyUI's prefix: Qwen-Image's loader keeps names as they are. diffusers
            # converts Z-Image's and Flux.2's original names and leaves their own (it checks them against the
            # model); Lumina's are converted here, cut by the config (diffusers' cut assumes the real sizes).
            state = dequantise(_read_state(path, gguf), info, dtype, name=name)
            if info.family == LUMINA2 and info.layout == "original":
                state = lumina2.diffusers_names(state, expected)
            if info.family == qwen_zimage.LONGCAT and info.layout == "bfl":
                state = longcat.from_bfl(state, convert_flux_bfl)
            if info.family == qwen_zimage.OVIS and info.layout == "bfl":
                state = ovis.from_bfl(state, convert_flux_bfl)
            model = cls.from_single_file(state, **kwargs)
            return _dequantised_bare(model, dtype) if info.family == HIDREAM else model
        if info.scaled_fp8 or info.bitsandbytes:
            return cls.from_single_file(dequantise(_read_state(path, gguf), info, dtype, name=name), **kwargs)
        return cls.from_single_file(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as error:
        raise ModelError(f"{name}: its {info.label} transformer does not load ({library_error(error)}).") from error


def _check_names(names: set[str], cls: Any, config: Mapping[str, Any], info: DitInfo, *, name: str) -> None:
    """Refuse, naming it, a tensor a transformer file in diffusers' names lacks or holds beyond the model's (from its
    config on the meta device, with the settings the file's own tensors decide: Sana 1.5's query-key norms). diffusers
    took such a file for its makers' names and failed in its converter (an IndexError traceback for Flux.1, SD3 and
    Chroma, KeyError 'pos_embed' for Sana), or failed to move a weight it never got ("Cannot copy out of meta tensor"),
    or loaded it leaving the unknown tensor out unsaid."""
    import torch

    settings = sana.settings(dict.fromkeys(names)) if info.family == SANA else {}
    with torch.device("meta"):  # the model's names from its config, no weights made
        known = set(cls.from_config({**config, **settings}).state_dict())
    unknown, missing = sorted(names - known), sorted(known - names)
    if unknown:
        raise ModelError(
            f"{name}: its {info.label} transformer holds {unknown[0]!r}"
            f"{f' and {len(unknown) - 1} more tensors' if len(unknown) > 1 else ''}, which {info.label}'s has not: "
            "the file is damaged, or another model's (or a variant of other dimensions: pass its diffusers config "
            "folder)."
        )
    if missing:
        raise ModelError(
            f"{name}: its {info.label} transformer lacks {missing[0]!r}"
            f"{f' and {len(missing) - 1} more tensors' if len(missing) > 1 else ''}: the file is damaged or "
            "incomplete (or a variant of other dimensions: pass its diffusers config folder)."
        )


def _transformer_names(path: Path, gguf: bool, name: str) -> set[str]:
    """The transformer's tensor names in a single file, from its header (no tensor read): ComfyUI's prefix removed,
    text encoders, VAE and the quantisation's bookkeeping (scales, states) left out."""
    from desktop.engine.library.checkpoint import read_safetensors_header
    from desktop.engine.library.dit import read_gguf_tensors

    tensors = read_gguf_tensors(path, name=name)[0] if gguf else read_safetensors_header(path, name=name).tensors
    return {key.removeprefix(COMFY_PREFIX) for key in tensors
            if not key.startswith(_NOT_TRANSFORMER) and not quant_formats.is_bookkeeping(key)}  # fmt: skip


def _dequantised_bare(model: Any, dtype: Any) -> Any:
    """`model` (loaded from a GGUF file) with its bare parameters dequantised: tables and matrices the model uses by
    themselves (HiDream-I1's expert gates, Sana's modulation tables, AuraFlow's register tokens and position table),
    not linear layers, which diffusers' GGUF layers dequantise as they run: quantised, they fail in the first step.
    A few thousand values a block; nothing for a file that keeps them in float, as most GGUF writers do."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    for module in model.modules():
        if isinstance(module, GGUFLinear):
            continue
        for name, parameter in list(module.named_parameters(recurse=False)):
            if hasattr(parameter, "quant_type"):
                setattr(module, name, torch.nn.Parameter(dequantize_gguf_tensor(parameter).to(dtype),
                                                         requires_grad=False))  # fmt: skip
    return model


def _flux_channels(state: Mapping[str, Any]) -> dict[str, int]:
    """The channels a Flux transformer reads and writes, from its tensors: Fill (384 in) and Canny/Depth dev (128
    in) files share Flux.1 dev's config, which says 64 (and no out_channels: as many as it reads)."""
    found = {}
    for key, name, axis in (("x_embedder.weight", "in_channels", -1), ("proj_out.weight", "out_channels", 0)):
        if key in state:
            tensor = state[key]
            found[name] = tuple(getattr(tensor, "quant_shape", tensor.shape))[axis]  # a GGUF tensor's true shape
    return found


# What an all-in-one file holds beside its transformer.
_NOT_TRANSFORMER = ("text_encoders.", "vae.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def _read_state(path: Path, gguf: bool) -> dict[str, Any]:
    if gguf:
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        state = load_gguf_checkpoint(str(path))
    else:
        from safetensors.torch import load_file

        state = load_file(str(path))
    return {
        key.removeprefix(COMFY_PREFIX): value
        for key, value in state.items()
        if not key.startswith(_NOT_TRANSFORMER)
    }


def convert_flux_bfl(state: dict[str, Any], time: str = "time_text_embed.timestep_embedder") -> dict[str, Any]:
    """Flux.1 tensors in Black Forest Labs' names -> FluxTransformer2DModel's names, any width.

    The fused projections split by the widths read from the tensors themselves (img_in's output is the
    model width; linear1 of a single block holds q, k, v and the MLP input). The q/k norms are BFL's `.scale`, or
    `.weight` as some repackaged files save them (Comfy-Org's LongCat-Image). `time`: where the model keeps its
    timestep embedder (Flux.1's name by default; LongCat-Image and Ovis-Image name it otherwise)."""
    import torch

    out: dict[str, Any] = {}
    take = state.pop
    width = state["img_in.weight"].shape[0]

    def norm(module: str) -> Any:
        return take(f"{module}.scale") if f"{module}.scale" in state else take(f"{module}.weight")

    def pair(src: str, dst: str) -> None:
        for suffix in ("weight", "bias"):
            key = f"{src}.{suffix}"
            if key in state:
                out[f"{dst}.{suffix}"] = take(key)

    pair("time_in.in_layer", f"{time}.linear_1")
    pair("time_in.out_layer", f"{time}.linear_2")
    pair("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    pair("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    pair("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
    pair("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    pair("txt_in", "context_embedder")
    pair("img_in", "x_embedder")
    double = sorted({int(k.split(".")[1]) for k in state if k.startswith("double_blocks.")})
    for i in double:
        src, dst = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        pair(src + "img_mod.lin", dst + "norm1.linear")
        pair(src + "txt_mod.lin", dst + "norm1_context.linear")
        for stream, names in (
            ("img_attn", ("to_q", "to_k", "to_v")),
            ("txt_attn", ("add_q_proj", "add_k_proj", "add_v_proj")),
        ):
            for suffix in ("weight", "bias"):
                for part, target in zip(torch.chunk(take(f"{src}{stream}.qkv.{suffix}"), 3, dim=0), names, strict=True):
                    out[f"{dst}attn.{target}.{suffix}"] = part
        out[dst + "attn.norm_q.weight"] = norm(src + "img_attn.norm.query_norm")
        out[dst + "attn.norm_k.weight"] = norm(src + "img_attn.norm.key_norm")
        out[dst + "attn.norm_added_q.weight"] = norm(src + "txt_attn.norm.query_norm")
        out[dst + "attn.norm_added_k.weight"] = norm(src + "txt_attn.norm.key_norm")
        pair(src + "img_mlp.0", dst + "ff.net.0.proj")
        pair(src + "img_mlp.2", dst + "ff.net.2")
        pair(src + "txt_mlp.0", dst + "ff_context.net.0.proj")
        pair(src + "txt_mlp.2", dst + "ff_context.net.2")
        pair(src + "img_attn.proj", dst + "attn.to_out.0")
        pair(src + "txt_attn.proj", dst + "attn.to_add_out")
    single = sorted({int(k.split(".")[1]) for k in state if k.startswith("single_blocks.")})
    for i in single:
        src, dst = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        pair(src + "modulation.lin", dst + "norm.linear")
        for suffix in ("weight", "bias"):
            fused = take(f"{src}linear1.{suffix}")
            q, k, v, mlp = torch.split(fused, (width, width, width, fused.shape[0] - 3 * width), dim=0)
            out[f"{dst}attn.to_q.{suffix}"], out[f"{dst}attn.to_k.{suffix}"] = q, k
            out[f"{dst}attn.to_v.{suffix}"], out[f"{dst}proj_mlp.{suffix}"] = v, mlp
        out[dst + "attn.norm_q.weight"] = norm(src + "norm.query_norm")
        out[dst + "attn.norm_k.weight"] = norm(src + "norm.key_norm")
        pair(src + "linear2", dst + "proj_out")
    pair("final_layer.linear", "proj_out")
    for suffix in ("weight", "bias"):
        if f"final_layer.adaLN_modulation.1.{suffix}" not in state:
            continue  # Chroma: its final norm takes its modulation from the distilled-guidance network
        # BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift).
        shift, scale = take(f"final_layer.adaLN_modulation.1.{suffix}").chunk(2, dim=0)
        out[f"norm_out.linear.{suffix}"] = torch.cat([scale, shift], dim=0)
    if state:
        raise KeyError(f"unexpected tensor {next(iter(state))!r}")
    return out


def generation_arguments(pipe: Any, request: GenerationRequest, info: DitInfo) -> dict[str, Any]:
    """The family's own prompt and guidance arguments: T5 prompts whole (no 77-token chunks), Flux-dev's
    distilled guidance beside true CFG, a negative prompt only where the family uses one."""
    if info.family in qwen_zimage.FAMILIES:
        return qwen_zimage.generation_arguments(request, info)
    if info.family == dit_flux2.FLUX2:
        return flux2.generation_arguments(pipe, request, info)
    if info.family == "chroma":
        return chroma.generation_arguments(request)
    if info.family == HIDREAM:
        return hidream.generation_arguments(request)
    if info.family == AURAFLOW:
        return auraflow.generation_arguments(request)
    if info.family == SANA:
        return sana.generation_arguments(request, info.variant)
    if info.family == PIXART:
        return pixart.generation_arguments(request, info.variant)
    negative = request.negative_prompt or None
    if info.family == "flux":
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "max_sequence_length": T5_TOKENS.get(f"flux-{info.variant}", T5_TOKENS["flux-dev"]),
            # dev: the distilled guidance the transformer embeds; schnell has no guidance embedder.
            "guidance_scale": float(request.distilled_cfg_scale) if info.variant == "dev" else 0.0,
        }
        if negative and not (info.fill or info.control_input):  # their pipelines have no true CFG
            # True CFG (two passes a step) only with a negative prompt, as diffusers and Forge do.
            arguments |= {"negative_prompt": negative, "true_cfg_scale": float(request.cfg_scale)}
        return arguments
    return {
        "prompt": request.prompt,
        "negative_prompt": negative,
        "guidance_scale": float(request.cfg_scale),
        "max_sequence_length": T5_TOKENS["sd3"],
    }


def noise_layout(pipe: Any, info: DitInfo, width: int, height: int) -> tuple[tuple[int, int, int], int, Any]:
    """How the family's text-to-image pipeline draws one picture's starting noise: its shape (C, h, w), the
    pixels one cell of it spans, and what makes a batch of it (B, C, h, w) the pipeline's `latents=`. Variation
    seeds mix noise of this very shape (variation.py), so a strength of 1 gives the variation seed's picture."""
    channels, factor = pipe.transformer.config.in_channels, pipe.vae_scale_factor
    if info.family in ("sd3", "sd3.5"):  # SD3 patchifies inside its transformer
        return (channels, height // factor, width // factor), factor, _unchanged
    if info.family in (qwen_zimage.ERNIE_IMAGE, SANA):  # as they are, (4C, h, w) 2x2 patches or DC-AE's (C, h, w)
        return (channels, height // factor, width // factor), factor, _unchanged
    rows, cols = 2 * (height // (factor * 2)), 2 * (width // (factor * 2))
    if info.family in (qwen_zimage.Z_IMAGE, LUMINA2, HIDREAM, AURAFLOW, PIXART):  # (C, h, w); they patchify
        return (channels, rows, cols), factor, _unchanged
    if info.family in (dit_flux2.FLUX2, dit_flux3.FLUX3):  # drawn as 2x2 patches (4C, h/2, w/2); packed by the pipeline
        return (channels, rows // 2, cols // 2), factor * 2, _unchanged
    if info.family == qwen_zimage.KREA2:  # (C, h, w) packed into tokens of 2x2 patches, as Flux's
        latent_channels = channels // pipe.patch_size**2

        def patched(noise: Any) -> Any:
            return pipe._pack_latents(noise, noise.shape[0], latent_channels, rows, cols)

        return (latent_channels, rows, cols), factor, patched
    if info.family == qwen_zimage.QWEN_IMAGE_21:  # (C, h, w) as tokens of one latent each: no patches

        def flattened(noise: Any) -> Any:
            return pipe._pack_latents(noise, noise.shape[0], channels, rows, cols)

        return (channels, rows, cols), factor, flattened
    # Flux.1, Chroma and Qwen-Image draw (C, h, w) (Qwen-Image as one video frame, the same values) and take
    # them packed into tokens of 2x2 patches. The noise has the channels the transformer writes: it may read more
    # (Fill's masked picture and mask, Canny / Depth dev's or a Control-LoRA's control picture beside the noise).
    latent = pipe.transformer.proj_out.out_features // 4

    def packed(noise: Any) -> Any:
        return pipe._pack_latents(noise, noise.shape[0], latent, rows, cols)

    return (latent, rows, cols), factor, packed


def _unchanged(noise: Any) -> Any:
    return noise


def memory_sizes(pipe: Any, info: DitInfo) -> DitSizes:
    """What the loaded pipeline weighs, component by component, for the auto memory mode."""

    def weight(module: Any) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0

    transformer = pipe.transformer
    # Flux's double and single blocks, SD3's and Qwen-Image's joint ones, Z-Image's and Lumina's layers and
    # refiners: what group offload moves one at a time (a family counted as one block would be estimated whole).
    kinds = ("transformer_blocks", "single_transformer_blocks", "layers", "noise_refiner", "context_refiner",
             "double_stream_blocks", "single_stream_blocks", "joint_transformer_blocks")  # fmt: skip
    blocks = sum(len(getattr(transformer, kind, ())) for kind in kinds)
    encoders = tuple(weight(getattr(pipe, name, None)) for name in ENCODER_SLOTS)
    # At the compute dtype, whatever fp8 casting did to the storage: the sizes are those of the loaded
    # model, which is what a mode change that reloads it gets. A GGUF transformer stays as stored.
    stored = weight(transformer)
    computed = sum(p.numel() for p in transformer.parameters()) * pipe.vae.dtype.itemsize
    # A folder diffusers loaded through its bitsandbytes quantizer is quantised already, as a GGUF file is.
    quantised = info.quantization is not None or getattr(transformer, "hf_quantizer", None) is not None
    return DitSizes(
        transformer=stored if quantised else computed, transformer_blocks=blocks,
        encoders=tuple(e for e in encoders if e), vae=weight(pipe.vae),
        # GGUF is quantised already, and an fp8 file keeps its fp8 storage: casting again would stack.
        fp8_possible=not quantised and info.fp8_storage is None,
        bitsandbytes_possible=importlib.util.find_spec("bitsandbytes") is not None,
        nf4_file=info.bitsandbytes == BNB_NF4 and not quantised,
    )  # fmt: skip


def apply_memory_mode(pipe: Any, mode: str, current: str | None, device: str, dtype: Any) -> None:
    """Put the loaded pipeline in `mode` (dit_memory.py). `current` is the mode it is in (None: as
    loaded, on the CPU); the backend reloads the model before leaving a STICKY mode, so only model
    offload's hooks are ever undone here."""
    import torch

    if current == "offload":
        pipe.remove_all_hooks()
    if mode in ("full", "tiled"):
        pipe.to(device)
    if mode == "tiled":
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    if mode == "offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "fp8":
        # Stored as float8, computed in the pipeline's dtype layer by layer; norms and embeddings stay as
        # they are (diffusers' default skip list), as the fp8 checkpoints people share keep them.
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        if device == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    elif mode == "group":
        pipe.enable_group_offload(
            onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="leaf_level",
            use_stream=True,
        )  # fmt: skip
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode in ("nf4", "int8"):
        quantise_linear_layers(pipe.transformer, mode, device, dtype)
        if device == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)


def _convert_ldm_vae(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """An LDM-named VAE state dict in diffusers' names (diffusers' converter; an all-in-one file's own VAE)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, config)


