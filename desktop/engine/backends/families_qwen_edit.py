"""Qwen-Image-Edit, Qwen-Image-Edit-2509 ("Plus") and LongCat-Image-Edit: instruction edits of a source image
(called from families_qwen_zimage.py and families.py on the generation thread).

An Edit model is Qwen-Image's transformer trained to read the source image's latents beside the noise,
prompted through Qwen2.5-VL with the source image itself (its vision tower). So its text encoder must
keep the vision weights, and the prompt goes through a Qwen2VL processor (image processor + tokenizer):
both come from the model's diffusers folder or the `--text-encoders` folder, never shipped.

How it fits Marble's modes (docs/model-families.md): an Edit model has no text-to-image (refused);
"image to image" (a source, no mask) IS the instruction edit through QwenImageEditPipeline or
QwenImageEditPlusPipeline (no strength: the edit always starts from noise, the source conditions it);
inpainting (a mask) runs Edit's QwenImageEditInpaintPipeline (strength and mask as for any inpainting),
and for Plus, which diffusers has no inpainting pipeline for, the Plus edit whose result Marble keeps
inside the mask only. Plus takes further reference images after the source (`reference_images`).

LongCat-Image-Edit is the same kind of model over LongCat-Image's transformer (a Qwen2.5-VL with its vision tower,
a Qwen2VL processor, which its folder keeps as `text_processor`): its instruction edit runs as Plus's does (no
strength; a mask keeps the edit inside it), through families_longcat.instruction_class, at the job's size.

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop.engine.backends import families_longcat as longcat
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.dit_longcat import LONGCAT
from desktop.engine.library.dit_qwen_zimage import EDIT, EDIT_PLUS, QWEN_IMAGE

_PROCESSOR_CONFIG = "preprocessor_config.json"
# Where each family's diffusers folder keeps its processor (the pipeline's component name): Qwen's `processor/`;
# LongCat's `text_processor/` (Meituan's own scripts read it from `tokenizer/`, which is searched last).
_PROCESSOR_FOLDERS = {QWEN_IMAGE: ("processor",), LONGCAT: ("text_processor", "processor", "tokenizer")}
_SOURCES = {QWEN_IMAGE: "Qwen/Qwen-Image-Edit or -2509", LONGCAT: "meituan-longcat/LongCat-Image-Edit"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# Qwen2.5-VL's vision tower, under transformers' old (`visual.`) and current (`model.visual.`) names.
_VISION_PREFIXES = ("visual.", "model.visual.")


def is_edit(info: DitInfo | None) -> bool:
    return info is not None and info.family in _PROCESSOR_FOLDERS and info.variant in (EDIT, EDIT_PLUS)


def pipeline_class(info: DitInfo) -> Any:
    import diffusers

    if info.family == LONGCAT:
        return longcat.instruction_class()
    return diffusers.QwenImageEditPlusPipeline if info.variant == EDIT_PLUS else diffusers.QwenImageEditPipeline


def processor_slot(info: DitInfo) -> str:
    """The pipeline's name for its Qwen2VL processor: LongCat's `text_processor`, Qwen's `processor`."""
    return "text_processor" if info.family == LONGCAT else "processor"


def _keeps_mask_outside(info: DitInfo) -> bool:
    # Edit Plus and LongCat-Image-Edit have no inpainting pipeline: their edit is kept inside the mask.
    return info.variant == EDIT_PLUS or info.family == LONGCAT


def refuse_text_to_image(name: str, info: DitInfo, mode: str) -> None:
    if mode == "txt2img":
        raise ModelError(
            f"{name} is a {info.label} model: it edits a source image by instruction and cannot draw from text "
            "alone. Give it a source image (the canvas, or --init-image) and say in the prompt what to change."
        )


def check_components(folder: Path, info: DitInfo, *, name: str) -> None:
    """Refuse a folder whose text encoder lacks the vision tower or that has no processor, naming what is
    missing: without them the Edit pipeline cannot read the source image (transformers would fill a
    missing vision tower with random weights, silently)."""
    processor = processor_folder(folder, info)
    kept = _PROCESSOR_FOLDERS[info.family][0]
    missing = []
    if processor is None:
        missing.append(f"{kept}/{_PROCESSOR_CONFIG} (the Qwen2VL image processor)")
    readers = (processor or folder / kept, folder / "tokenizer")
    if not any((sub / f).is_file() for sub in readers for f in _TOKENIZER_FILES):
        missing.append(f"tokenizer ({kept}/ or tokenizer/ with tokenizer.json or vocab.json)")
    if missing:
        raise ModelError(
            f"{folder} cannot serve {name}, a {info.label} model: it has no {', no '.join(missing)}. Use the "
            f"model's diffusers folder ({edit_source(info)}), which holds {kept}/."
        )
    weights = sorted((folder / "text_encoder").glob("*.safetensors"))
    names = [key for file in weights for key in read_safetensors_header(file, name=f"text_encoder/{file.name}").tensors]
    if weights and not any(key.startswith(_VISION_PREFIXES) for key in names):
        raise ModelError(
            f"The text encoder in {folder / 'text_encoder'} has no vision tower (no visual.* weights): it is a "
            f"text-only Qwen2.5-VL, but {info.label} shows the source image to it. Use the full Qwen2.5-VL text "
            f"encoder of the model's diffusers folder ({edit_source(info)})."
        )


def processor_folder(folder: Path, info: DitInfo) -> Path | None:
    """The first of the family's processor subfolders of `folder`, or `folder` itself (a tokenizer folder), that holds
    the image processor's config; None when none does."""
    found = (*(folder / sub for sub in _PROCESSOR_FOLDERS[info.family]), folder)
    return next((sub for sub in found if (sub / _PROCESSOR_CONFIG).is_file()), None)


def edit_source(info: DitInfo) -> str:
    """Where the family's Edit folders come from, for messages."""
    return _SOURCES[info.family]


def load_processor(folder: Path, info: DitInfo) -> Any:
    """The Qwen2VL processor from `folder`'s processor subfolder (check_components found it): its image processor
    and tokenizer (tokenizer/ when that subfolder holds none). Built without a video processor: transformers' needs
    torchvision, which Marble does not ship, and the Edit pipelines never pass videos."""
    import transformers

    processor = processor_folder(folder, info)
    assert processor is not None  # check_components refused the folder otherwise
    tokenizer_folder = processor if any((processor / f).is_file() for f in _TOKENIZER_FILES) else folder / "tokenizer"
    # The PIL image processor: the default one needs torchvision. Same resizing and normalisation; its
    # bicubic resampling may round a little differently from torchvision's.
    images = transformers.Qwen2VLImageProcessorPil.from_pretrained(str(processor), local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    return image_only_processor(images, tokenizer)


def image_only_processor(images: Any, tokenizer: Any) -> Any:
    """A Qwen2VLProcessor of an image processor and a tokenizer, with no video processor."""
    import transformers

    class ImageOnlyQwen2VLProcessor(transformers.Qwen2VLProcessor):
        # ProcessorMixin takes its parts from __init__'s parameters: without video_processor there, it
        # neither asks for one nor checks its class (which needs torchvision).
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    return ImageOnlyQwen2VLProcessor(image_processor=images, tokenizer=tokenizer)


def edit_pipeline(pipe: Any, mode: str, info: DitInfo) -> Any:
    """The pipeline a job of `mode` runs: the loaded Edit / Plus pipeline for image to image (and for
    Plus's masked edits), Edit's inpainting pipeline built from the same modules for inpainting."""
    import diffusers

    if mode == "img2img" or _keeps_mask_outside(info):
        return pipe
    edit = diffusers.QwenImageEditInpaintPipeline(**pipe.components)
    edit.set_progress_bar_config(disable=True)
    return edit


def call_arguments(
    pipe: Any,
    info: DitInfo,
    mode: str,
    image: Any,
    mask: Any,
    size: tuple[int, int],
    strength: float,
    references: list[Any],
) -> dict[str, Any]:
    """The pipeline's image arguments: the source (Plus: then the reference images) at the working size,
    which is also the output size; for Edit's inpainting the mask and strength, and the size that pipeline
    really works at (its own ~1 MP one; the job's previews unpack its latents at it)."""
    width, height = size
    if mode == "inpaint" and not _keeps_mask_outside(info):
        width, height = inpainting_size(pipe, image.size)
    arguments: dict[str, Any] = {"width": width, "height": height}
    if info.variant == EDIT_PLUS:
        return arguments | {"image": [image, *references]}
    if references:
        raise ModelError(
            f"{info.label} reads one source image; reference images need Qwen-Image-Edit-2509 (Edit Plus)."
        )
    arguments["image"] = image
    if info.family == LONGCAT:  # no inpainting pipeline: the edit is kept inside the mask
        return arguments
    if mode == "inpaint":
        arguments |= {"mask_image": mask, "strength": float(strength)}
    return arguments


def uses_strength(info: DitInfo | None, mode: str) -> bool:
    """Whether the job's strength reaches its pipeline: always, except in an Edit model's instruction
    edits (Edit's inpainting pipeline takes one; the Edit and Plus edits start from noise)."""
    return not is_edit(info) or (mode == "inpaint" and info is not None and not _keeps_mask_outside(info))


def per_image_batch(info: DitInfo | None, mode: str, arguments: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """`arguments` with `num_images_per_prompt`; for Edit's inpainting of a batch, one prompt and one source
    per image instead, so image k's source is encoded with its own seed's generator, as a lone job's is
    (the pipeline samples the source's latents with the first generator only when it gets one source, and
    one source cannot go with several prompts: each prompt shows the vision tower its own copy)."""
    if batch_size == 1 or not (is_edit(info) and info is not None and not _keeps_mask_outside(info)
                               and mode == "inpaint"):
        return arguments | {"num_images_per_prompt": batch_size}
    each = {key: [arguments[key]] * batch_size for key in ("prompt", "negative_prompt", "image")}
    return arguments | each | {"num_images_per_prompt": 1}


def inpainting_size(pipe: Any, source: tuple[int, int]) -> tuple[int, int]:
    """The size QwenImageEditInpaintPipeline works at for a source of `source`'s aspect: it ignores the
    width and height it is given (diffusers 0.42), taking about 1 MP at the source's aspect instead."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_inpaint

    width, height, _ = pipeline_qwenimage_edit_inpaint.calculate_dimensions(1024 * 1024, source[0] / source[1])
    multiple = pipe.vae_scale_factor * 2
    return width // multiple * multiple, height // multiple * multiple
