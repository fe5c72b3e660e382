"""Backends turn requests into images. The diffusers one is imported only when first needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from desktop.engine.backends.base import Backend
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.paths import AppPaths
    from desktop.engine.resources import Resources


def create_diffusers_backend(
    paths: AppPaths, resources: Resources, catalog: ModelCatalog, preview_every: int = 1
) -> Backend:
    """Import torch and diffusers now, on the calling thread, and build the backend."""
    from desktop.engine.backends.diffusers_backend import DiffusersBackend

    return DiffusersBackend(paths, resources, catalog, preview_every)
