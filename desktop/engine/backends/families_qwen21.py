"""Qwen-Image 2.1's prompt reader (called from families_qwen_zimage.py on the generation thread).

Its pipeline prompts Qwen3-VL through a Qwen3VLProcessor: the tokenizer, the image processor (condition images
are shown to the encoder's vision tower) and the chat template, which the pipeline asks how many tokens its
system message takes (the hidden states it drops). transformers' processor also wants a video processor, which
needs torchvision, which Marble does not install, and the pipeline never passes videos: Marble builds the
processor from the folder's parts without one, as it does Qwen-Image-Edit's (families_qwen_edit.py).

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from desktop.engine.backends.flow_edit import FlowEdit
from desktop.engine.errors import ModelError
from desktop.engine.terminal_text import library_error

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


def library_processor(tokenizer_folder: Path | None, config: Path, shipped_tokenizer: Path, info: Any, *,
                      name: str) -> Any:
    """The processor for a transformer file whose Qwen3-VL comes from the library: a whole one where the user's
    tokenizer folder or the --config folder holds it (Qwen-Image 2.1's folder or its processor/, the Qwen3-VL
    repository), else the user's tokenizer (or Marble's Qwen tokenizer, `shipped_tokenizer`) with the image
    settings and chat template shipped in the config folder's processor/ (resources/configs/qwen-image-2.1)."""
    import transformers

    from desktop.engine.backends import qwen_encoders

    for folder in (tokenizer_folder, config):
        for candidate in () if folder is None else (folder / PROCESSOR, folder):
            if (candidate / _PROCESSOR_CONFIG).is_file() and any(
                    (candidate / file).is_file() for file in qwen_encoders.TOKENIZER_FILES):  # fmt: skip
                return _loaded(functools.partial(load_processor, candidate), candidate)
    settings = config / PROCESSOR
    if not (settings / _PROCESSOR_CONFIG).is_file():
        raise ModelError(
            f"The config folder {config} has no {PROCESSOR}/{_PROCESSOR_CONFIG} (Qwen3-VL's image settings), which "
            f"{name} needs with a library text encoder: leave out --config (Marble ships it), or use the diffusers "
            "Qwen-Image 2.1 folder."
        )
    tokenizer = qwen_encoders.tokenizer_parts(tokenizer_folder, info, name=name, edit=False,
                                              shipped=shipped_tokenizer)["tokenizer"]  # fmt: skip
    images = _loaded(functools.partial(transformers.Qwen2VLImageProcessorPil.from_pretrained, str(settings),
                                       local_files_only=True), settings)  # fmt: skip
    return qwen3_vl_processor(images, tokenizer, _chat_template(settings))


def _loaded(load: Any, folder: Path) -> Any:
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"The processor in {folder} does not load: {library_error(error)}") from error


# Where ComfyUI's fused SwiGLU input sits in a LoRA's names, the two layers diffusers' model has for it (gate rows
# first), and kohya's prefix (module names with their dots made underscores).
_FUSED_MLP = "img_mlp.gate_up"
_MLP_HALVES = ("gate_layer", "proj")
_KOHYA = "lora_unet_"
_COMFY = "diffusion_model."


def lora_needs_conversion(names: Iterable[str]) -> bool:
    """Whether a LoRA is in kohya's names or trains ComfyUI's fused `img_mlp.gate_up` (a LoRA made on ComfyUI's
    model), which diffusers' Qwen-Image LoRA loader cannot place on Qwen-Image 2.1: kohya's underscores are made
    dots by rules that break `gate_layer`, and the fused layer does not exist in diffusers' model."""
    return any(name.startswith(_KOHYA) or _FUSED_MLP in name or "img_mlp_gate_up" in name for name in names)


def convert_lora(state: dict[str, Any], modules: Iterable[str]) -> dict[str, Any]:
    """A Qwen-Image 2.1 LoRA in ComfyUI's dotted names (`diffusion_model.<module>.lora_down.weight`, which
    diffusers' loader reads, alphas included) with the fused MLP split: kohya's `lora_unet_<module>` names are
    matched to the transformer's own `modules` (and the fused layer's); on the fused layer, the down (A) matrix
    and alpha serve both halves and the up (B) matrix and a DoRA magnitude are cut in two by rows (the same
    update: the fused layer's first half of rows is the gate)."""
    dotted = {name.replace(".", "_"): name for name in modules}
    dotted |= {key.replace("gate_layer", "gate_up"): name.replace("gate_layer", "gate_up")
               for key, name in dotted.items() if name.endswith("img_mlp.gate_layer")}  # fmt: skip
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.startswith(_KOHYA):
            module, _, part = key[len(_KOHYA):].partition(".")
            key = f"{_COMFY}{dotted.get(module, module)}.{part}"
        if _FUSED_MLP not in key:
            out[key] = tensor
            continue
        shared = key.endswith(("lora_A.weight", "lora_down.weight", ".alpha")) or tensor.ndim == 0
        halves = (tensor, tensor) if shared else tensor.chunk(2, dim=0)
        for half, value in zip(_MLP_HALVES, halves, strict=True):
            out[key.replace(_FUSED_MLP, f"img_mlp.{half}")] = value.contiguous()
    return out


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


@functools.cache
def edit_class() -> Any:
    """QwenImage21Pipeline with image to image and inpainting (flow_edit.FlowEdit): latents normalised by the VAE's
    mean and std from its mode, one token per latent cell; reference pictures are its condition images."""
    import diffusers
    import numpy as np
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

    class QwenImage21EditPipeline(FlowEdit, diffusers.QwenImage21Pipeline):
        def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
            return height // self.vae_scale_factor, width // self.vae_scale_factor

        def _edit_raw_sigmas(self, steps: int) -> Any:
            return self.config.sample_sigmas or np.linspace(1.0, 1 / steps, steps)

        def _edit_mu(self, rows: int, cols: int) -> float:
            config = self.scheduler.config
            return calculate_shift(rows * cols, config.get("base_image_seq_len", 256),
                                   config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                   config.get("max_shift", 1.15))  # fmt: skip

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            # The VAE reads RGBA (the model paints with alpha): an RGB source is opaque.
            pixels = self.image_processor.preprocess(picture.convert("RGBA"), height=height, width=width)
            return self._encode_vae_image(pixels.unsqueeze(2).to(self._execution_device, self.vae.dtype),
                                          generator)[:, :, 0]  # fmt: skip

        def _edit_pack(self, grid: Any) -> Any:
            return self._pack_latents(grid, *grid.shape)

        def _edit_conditions(self, references: Any) -> dict[str, Any]:
            return {"image": references or None}

    return QwenImage21EditPipeline
