"""Backends turn requests into images. The diffusers one is imported only when first needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from desktop.engine.backends.base import Backend
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.paths import AppPaths
    from desktop.engine.resources import Resources


# What loading an SD/SDXL pipeline imports on demand: transformers and diffusers resolve these lazily.
_LOADED_LAZILY = (
    "transformers:CLIPTextModel",
    "transformers:CLIPTextModelWithProjection",
    "transformers:CLIPTokenizer",
    "transformers:CLIPTokenizerFast",
    "diffusers:UNet2DConditionModel",
    "diffusers:AutoencoderKL",
    "diffusers:PNDMScheduler",
    "diffusers:EulerDiscreteScheduler",
)


def create_diffusers_backend(
    paths: AppPaths, resources: Resources, catalog: ModelCatalog, preview_every: int = 1, cpu_threads: int = 0,
    tokenizer_folder: str = "", prompt_rewriter: str = "",
) -> Backend:
    """Import torch and diffusers now, on the calling thread, and build the backend."""
    from desktop.engine.backends.gentle_import import import_gently

    module = import_gently("desktop.engine.backends.diffusers_backend", _LOADED_LAZILY)
    return module.DiffusersBackend(
        paths, resources, catalog, preview_every, cpu_threads=cpu_threads, tokenizer_folder=tokenizer_folder,
        prompt_rewriter=prompt_rewriter,
    )
