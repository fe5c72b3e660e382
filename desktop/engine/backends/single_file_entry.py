"""diffusers' single-file loader for transformer classes it has no entry for (LongCat-Image's, Ovis-Image's).

`from_single_file` only loads classes listed in its table, each with the function that renames a file's tensors. For
these Marble renames the tensors itself (families_longcat.py, families_ovis.py) and hands the loader a state dict in
the class's own names, so the entry it needs maps a checkpoint to itself. Going through from_single_file keeps one
path for every family: GGUF files (its quantiser), fp8 and dtype handling as for the others.
diffusers is imported inside the function (pyproject's import-linter list).
"""

from __future__ import annotations

from typing import Any


def _as_converted(checkpoint: dict[str, Any], **_: Any) -> dict[str, Any]:
    return checkpoint


def loadable(class_name: str) -> Any:
    """diffusers' transformer class `class_name`, loadable by from_single_file from a state dict in its own names. A
    diffusers that converts the class's files itself keeps its own entry."""
    import diffusers
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    SINGLE_FILE_LOADABLE_CLASSES.setdefault(class_name, {"checkpoint_mapping_fn": _as_converted})
    return getattr(diffusers, class_name)
