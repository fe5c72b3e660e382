"""A tokenizer Marble cannot ship (Meta's Llama's, Pile-T5's LLaMA one), loaded from the folder the user points at
(`--tokenizer-folder`, the window's Tokenizer folder setting) for a text encoder that comes from a file rather than
its model's folder. Called on the generation thread; what loads it is passed in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError


def place_in(folder: Path | None, files: tuple[str, ...]) -> Path | None:
    """Where the user's `folder` keeps a tokenizer (one of `files`): its tokenizer/ (a diffusers folder of the
    family), or the folder itself (the tokenizer's own repository, or a tokenizer/ folder named directly); None."""
    if folder is None:
        return None
    return next((place for place in (folder / "tokenizer", folder) if any((place / f).is_file() for f in files)), None)


def load(place: Path | None, folder: Path | None, *, name: str, encoder: str, where: str,
         loader: Callable[[str], Any]) -> Any:  # fmt: skip
    """`loader(place)`'s tokenizer; a ModelError naming the model `name`, its `encoder` and `where` to point when
    there is no `place` (none found in the user's `folder`, or no folder), or when it does not load."""
    if place is None:
        found = f"{folder} holds none" if folder is not None else "none was given"
        raise ModelError(
            f"{name} runs with its {encoder} from a file, whose tokenizer Marble cannot ship ({found}): point "
            f"--tokenizer-folder (in the window: Settings, Tokenizer folder) at {where}."
        )
    try:
        return loader(str(place))
    except (OSError, ValueError, KeyError, TypeError) as error:
        lines = str(error).strip().splitlines()
        raise ModelError(f"The tokenizer in {place} does not load for {name}: {(lines or [''])[0][:300]}") from error
