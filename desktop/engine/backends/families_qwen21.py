"""Qwen-Image 2.1's prompt reader (called from families_qwen_zimage.py on the generation thread).

Its pipeline prompts Qwen3-VL through a Qwen3VLProcessor: the tokenizer, the image processor (condition images
are shown to the encoder's vision tower) and the chat template, which the pipeline asks how many tokens its
system message takes (the hidden states it drops). transformers' processor also wants a video processor, which
needs torchvision, which Marble does not install, and the pipeline never passes videos: Marble builds the
processor from the folder's parts without one, as it does Qwen-Image-Edit's (families_qwen_edit.py).

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError

PROCESSOR = "processor"  # the pipeline's component and its folder
_PROCESSOR_CONFIG = "preprocessor_config.json"
# Where a processor folder keeps its chat template (transformers writes the first, older folders the second).
_TEMPLATE_JINJA, _TEMPLATE_JSON = "chat_template.jinja", "chat_template.json"


def qwen3_vl_processor(images: Any, tokenizer: Any, chat_template: str | None) -> Any:
    """A Qwen3VLProcessor of an image processor and a tokenizer, with no video processor."""
    import transformers

    class ImageOnlyQwen3VLProcessor(transformers.Qwen3VLProcessor):
        # ProcessorMixin takes its parts from __init__'s parameters: without video_processor there, it neither
        # asks for one nor checks its class (which needs torchvision).
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    return ImageOnlyQwen3VLProcessor(image_processor=images, tokenizer=tokenizer, chat_template=chat_template)


def load_processor(folder: Path) -> Any:
    """The processor saved in `folder` (processor/ of a Qwen-Image 2.1 diffusers folder)."""
    import transformers

    if not (folder / _PROCESSOR_CONFIG).is_file():
        raise ModelError(f"{folder} has no {_PROCESSOR_CONFIG} (Qwen3-VL's image processor settings).")
    # The PIL image processor: the default one needs torchvision. Same resizing and normalisation.
    images = transformers.Qwen2VLImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return qwen3_vl_processor(images, tokenizer, _chat_template(folder) or tokenizer.chat_template)


def _chat_template(folder: Path) -> str | None:
    if (folder / _TEMPLATE_JINJA).is_file():
        return (folder / _TEMPLATE_JINJA).read_text(encoding="utf-8")
    if (folder / _TEMPLATE_JSON).is_file():
        try:
            template = json.loads((folder / _TEMPLATE_JSON).read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError) as error:
            raise ModelError(f"{folder / _TEMPLATE_JSON} is not a chat template file: {error}") from error
        return template if isinstance(template, str) else None
    return None
