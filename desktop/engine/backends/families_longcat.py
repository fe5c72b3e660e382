"""LongCat-Image's pipeline, transformer file and image-to-image / inpainting class (called from families.py and
families_qwen_zimage.py on the generation thread).

diffusers' LongCatImagePipeline (0.42) takes no step callback, which Marble's previews, progress and cancel run on,
and loads no LoRAs: `pipeline_class()` is that pipeline with a callback, called from the scheduler's step for the
length of a call (each step steps the scheduler once, then the callback sees the new latents and may replace them, as
diffusers' callbacks do), and with LoRAs in diffusers' or PEFT's names loaded onto its transformer
(flux_like_loras.py).
diffusers has no single-file entry for its transformer either: Marble converts a file's names itself (Comfy-Org's in
Flux's BFL names through families.convert_flux_bfl; the release's are diffusers' already) and loads it through
single_file_entry.py, the same path as the other families (GGUF and fp8 included). LongCat-Image-Edit's instruction
edits run through `instruction_class()` (families_qwen_edit.py routes them). torch/diffusers are imported inside the
functions (pyproject's import-linter list).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from desktop.engine.backends import flux_like_loras, single_file_entry
from desktop.engine.backends.flow_edit import FluxLatentEdit
from desktop.engine.errors import ModelError


def from_bfl(state: dict[str, Any], convert_flux: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A LongCat-Image transformer in BFL's Flux names (prefix removed) -> LongCatImageTransformer2DModel's names:
    Flux's conversion (`convert_flux`: families.convert_flux_bfl, which reads Comfy-Org's q/k norms saved as `.weight`
    too), its timestep embedder under LongCat's name."""
    return convert_flux(state, time="time_embed.timestep_embedder")


def transformer_class() -> Any:
    """LongCatImageTransformer2DModel, loadable by diffusers' from_single_file from a state dict in its own names."""
    return single_file_entry.loadable("LongCatImageTransformer2DModel")


@functools.cache
def pipeline_class() -> Any:
    """LongCatImagePipeline taking diffusers' `callback_on_step_end` (and `callback_on_step_end_tensor_inputs`,
    latents only)."""
    import diffusers

    # diffusers' pipeline has no LoRA loader of its own (flux_like_loras.py).
    class LongCatImageStepsPipeline(flux_like_loras.loader(), diffusers.LongCatImagePipeline):
        _lora_label = "LongCat-Image"

        # Its processor serves the prompt rewriter only (a sampling LLM call Marble never makes): optional here.
        def __init__(self, scheduler: Any, vae: Any, text_encoder: Any, tokenizer: Any, transformer: Any,
                     text_processor: Any = None) -> None:  # fmt: skip
            super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             text_processor=text_processor, transformer=transformer)  # fmt: skip

        def __call__(
            self, *args: Any, callback_on_step_end: Callable[..., Any] | None = None,
            callback_on_step_end_tensor_inputs: Any = None, **kwargs: Any,
        ) -> Any:  # fmt: skip
            with _step_callback(self, callback_on_step_end):
                return super().__call__(*args, **kwargs)

    return LongCatImageStepsPipeline


@functools.cache
def instruction_class() -> Any:
    """LongCatImageEditPipeline (LongCat-Image-Edit's instruction edits) taking diffusers' `callback_on_step_end`,
    LoRAs (as pipeline_class's), and the `width` and `height` to work at: diffusers' pipeline (0.42) takes none and
    works at about 1 MP at the source's aspect, where Marble's jobs (as Qwen-Image-Edit's pipelines and ComfyUI's
    LongCat workflows) work at the size the user asks for."""
    import diffusers
    from diffusers.pipelines.longcat_image import pipeline_longcat_image_edit

    class LongCatImageInstructionPipeline(flux_like_loras.loader(), diffusers.LongCatImageEditPipeline):
        _lora_label = "LongCat-Image-Edit"

        def __call__(
            self, *args: Any, width: int, height: int, callback_on_step_end: Callable[..., Any] | None = None,
            callback_on_step_end_tensor_inputs: Any = None, **kwargs: Any,
        ) -> Any:  # fmt: skip
            with _working_size(pipeline_longcat_image_edit, width, height), _step_callback(self, callback_on_step_end):
                return super().__call__(*args, **kwargs)

    return LongCatImageInstructionPipeline


@contextlib.contextmanager
def _working_size(module: Any, width: int, height: int) -> Iterator[None]:
    """For one call, the pipeline module's `calculate_dimensions` (the size its __call__ works at, from a target area
    and the source's aspect) answers `width` x `height`. A diffusers whose module has no such function is refused
    rather than left to work at another size than the job's."""
    original = getattr(module, "calculate_dimensions", None)
    if original is None:
        raise ModelError(
            "This diffusers' LongCat-Image-Edit pipeline works out its size in another way than Marble knows: install "
            "the diffusers version Marble ships with."
        )
    module.calculate_dimensions = lambda _area, _ratio: (int(width), int(height))
    try:
        yield
    finally:
        module.calculate_dimensions = original


@contextlib.contextmanager
def _step_callback(pipeline: Any, callback: Callable[..., Any] | None) -> Iterator[None]:
    if callback is None:
        yield
        return
    with _StepCallback(pipeline, callback):
        yield


class _StepCallback:
    """For one call: the pipeline's scheduler steps, then `callback(pipeline, i, t, {"latents": ...})` runs on the
    new latents; what it returns under "latents" replaces them. The scheduler's own step (or a wrapper already on
    it: the preview's x0 watcher) is put back after."""

    def __init__(self, pipeline: Any, callback: Callable[..., Any]) -> None:
        self._pipeline, self._callback = pipeline, callback
        self._scheduler = pipeline.scheduler
        self._wrapped = vars(self._scheduler).get("step")  # an instance wrapper to restore, else None

    def __enter__(self) -> None:
        inner, counter = self._scheduler.step, itertools.count()

        @functools.wraps(inner)
        def step(*args: Any, **kwargs: Any) -> Any:
            output = inner(*args, **kwargs)
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            latents = output[0] if isinstance(output, tuple) else output.prev_sample
            changed = self._callback(self._pipeline, next(counter), timestep, {"latents": latents}) or {}
            if "latents" not in changed:
                return output
            if isinstance(output, tuple):
                return (changed["latents"], *output[1:])
            output.prev_sample = changed["latents"]
            return output

        self._scheduler.step = step

    def __exit__(self, *_: Any) -> None:
        if self._wrapped is not None:
            self._scheduler.step = self._wrapped
        else:
            del self._scheduler.step


@functools.cache
def edit_class() -> Any:
    """LongCat-Image with image to image and inpainting (flow_edit.FluxLatentEdit): its latents are the Flux VAE's in
    2x2 patches as tokens, its schedule shifted by the image's token count (Flux's rule, the pipeline's own)."""

    class LongCatImageEditPipeline(FluxLatentEdit, pipeline_class()):
        def _edit_mu(self, rows: int, cols: int) -> float:
            return self._edit_shift((rows // 2) * (cols // 2))

        def _edit_pack(self, grid: Any) -> Any:
            return self._pack_latents(grid, *grid.shape)

    return LongCatImageEditPipeline
