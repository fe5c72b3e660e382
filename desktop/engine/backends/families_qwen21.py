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
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.safe_files import read_json_file

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


def sample_sigmas(folder: Path) -> list[float] | None:
    """The fixed schedule a Qwen-Image 2.1 folder's model_index.json names (Qwen-Image-2.1-Turbo's eight sigmas;
    its steps follow it), else None (the base model: as many steps as asked)."""
    try:
        index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}")
    except (ModelError, OSError, ValueError):
        return None
    sigmas = index.get("sample_sigmas") if isinstance(index, dict) else None
    if isinstance(sigmas, list) and sigmas and all(isinstance(s, int | float) for s in sigmas):
        return [float(s) for s in sigmas]
    return None


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


def edit_pipeline(pipe: Any) -> Any:
    """The loaded pipeline's image-to-image and inpainting sibling (sharing its modules: no tensor is copied)."""
    edit = _edit_class()(**pipe.components, sample_sigmas=pipe.config.sample_sigmas)
    edit.set_progress_bar_config(disable=True)
    return edit


@functools.cache
def _edit_class() -> Any:
    """QwenImage21Pipeline with image to image and inpainting, which diffusers does not have for Qwen-Image 2.1.

    Done as diffusers' flow-matching image-to-image pipelines do it (Flux's, Qwen-Image's), over the text-to-image
    pipeline's own loop: the source's latents (the VAE's mode, normalised by its mean and std) are noised to the
    sigma where the last `strength` of the schedule starts, `(1 - s) x0 + s noise` (the scheduler's
    `scale_noise`), and the pipeline runs that tail of its schedule (`sigmas`: the schedule is shifted element by
    element, so the tail of the unshifted one shifts to the tail of the shifted one). Inpainting keeps, after
    every step, the source noised to the next sigma outside the mask (diffusers' inpainting pipelines' blend), so
    the last step leaves the source itself there. `image` may be latents already, (B, C, h, w) in the
    transformer's space (the hires fix's latent upscalers). `references` are the pipeline's condition images
    (`image=` in text to image)."""
    import diffusers
    import numpy as np
    import torch
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift
    from diffusers.utils.torch_utils import randn_tensor

    class QwenImage21EditPipeline(diffusers.QwenImage21Pipeline):
        def __call__(  # type: ignore[override]
            self, *, image: Any, strength: float, width: int, height: int, mask_image: Any = None,
            references: Any = None, num_inference_steps: int = 40, num_images_per_prompt: int = 1,
            generator: Any = None, callback_on_step_end: Any = None, **rest: Any,
        ) -> Any:  # fmt: skip
            sources = image if isinstance(image, list) else [image]
            generators = generator if isinstance(generator, list) else [generator]
            count = max(len(generators), num_images_per_prompt)
            device, dtype = self._execution_device, self.vae.dtype
            rows, cols = height // self.vae_scale_factor, width // self.vae_scale_factor
            channels = self.transformer.config.in_channels
            raw = self.config.sample_sigmas or np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
            raw = np.asarray(raw, dtype=np.float64)
            start = min(int(max(len(raw) - min(len(raw) * strength, len(raw)), 0)), len(raw) - 1)
            tail = raw[start:].tolist()
            scheduler = type(self.scheduler).from_config(self.scheduler.config)
            config = self.scheduler.config
            mu = calculate_shift(rows * cols, config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15))  # fmt: skip
            scheduler.set_timesteps(sigmas=tail, mu=mu, device=device)
            sigma = float(scheduler.sigmas[0])
            if torch.is_tensor(image):  # latents already (B, C, h, w) (the hires fix's latent upscalers)
                clean = image.to(device, dtype)
            else:
                with torch.no_grad():
                    encoded = [
                        self._encode_vae_image(self._pixels(picture, width, height).to(device, dtype), generators[k])
                        for k, picture in enumerate(sources)
                    ]
                clean = torch.cat(encoded)[:, :, 0]
            clean = clean.expand(count, -1, -1, -1) if clean.shape[0] == 1 else clean
            noise = randn_tensor((count, 1, channels, rows, cols), generator=generator, device=device, dtype=dtype)
            clean = self._pack_latents(clean, count, channels, rows, cols)
            noise = self._pack_latents(noise[:, 0], count, channels, rows, cols)
            latents = (1 - sigma) * clean + sigma * noise
            step_end = callback_on_step_end
            if mask_image is not None:
                keep = self._latent_mask(mask_image, rows, cols).to(device, dtype)
                step_end = _blended(clean, noise, keep, callback_on_step_end)
            return super().__call__(
                image=references or None, width=width, height=height, sigmas=tail, latents=latents,
                num_images_per_prompt=count,
                generator=generator, callback_on_step_end=step_end, **rest,
            )  # fmt: skip

        def _pixels(self, picture: Any, width: int, height: int) -> Any:
            # The VAE reads RGBA (the model paints with alpha): an RGB source is opaque.
            return self.image_processor.preprocess(picture.convert("RGBA"), height=height, width=width).unsqueeze(2)

        def _latent_mask(self, mask: Any, rows: int, cols: int) -> Any:
            """1 where the latents are repainted: a cell with any masked pixel (white) in it; (1, cells, 1)."""
            pixels = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
            cells = torch.nn.functional.adaptive_max_pool2d(pixels, (rows, cols))
            return (cells >= 0.5).float().reshape(1, rows * cols, 1)

    def _blended(clean: Any, noise: Any, repaint: Any, then: Any) -> Any:
        def step_end(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            sigma = pipeline.scheduler.sigmas[i + 1].to(clean.dtype)  # where the step landed
            known = (1 - sigma) * clean + sigma * noise
            tensors = {**tensors, "latents": repaint * tensors["latents"] + (1 - repaint) * known}
            outputs = then(pipeline, i, t, tensors) if then is not None else {}
            return {"latents": tensors["latents"], **(outputs or {})}

        return step_end

    return QwenImage21EditPipeline
