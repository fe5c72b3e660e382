"""The prompt encodings of the last few jobs, reused when a job asks for the same ones again.

Generating again with the same prompt (another seed, another sampler, a batch after a batch) would run
the text encoders again for the same numbers. The backend keeps the encoder outputs of the last few
distinct prompts here, keyed by everything that changes them: the loaded model (a counter bumped on
every load), the text encoder objects, the prompt and negative prompt, clip skip, emphasis, the LoRAs
with their weights and file hashes (a LoRA can change the text encoders), and the embeddings with their
hashes. Anything else changes the key, so a stale encoding is never used; a load clears it all.

Pure Python: the values are whatever the backend stores (its tensors), never looked into here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from desktop.engine.backends.base import AdapterHash
from desktop.engine.request import LoraRef

# A few: the current prompt, and the ones an X/Y plot or a hires pass alternates with it.
DEFAULT_ENTRIES = 4


@dataclass(frozen=True)
class PromptKey:
    load: int  # the backend's load counter: a new model (or the same one loaded again) never matches
    encoders: tuple[int, ...]  # id() of the text encoders used, e.g. a refiner's own
    prompt: str
    negative_prompt: str
    clip_skip: int
    emphasis: str
    loras: tuple[LoraRef, ...]  # names and weights: a text-encoder LoRA's weight changes the encoding
    lora_files: tuple[AdapterHash, ...]  # the files' hashes: a LoRA replaced under the same name
    embeddings: tuple[AdapterHash, ...]


class PromptCache:
    """A least-recently-used map from PromptKey (or, for the DiT families, dit_prompt_cache's call keys) to the
    encodings a pipeline call takes."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self._entries = max(0, entries)
        self._items: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self.hits = 0  # for the log and the tests

    def get(self, key: Hashable) -> dict[str, Any] | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return dict(found)  # a copy: callers add their own arguments
        return None

    def put(self, key: Hashable, arguments: dict[str, Any]) -> None:
        if not self._entries:
            return
        self._items[key] = dict(arguments)
        self._items.move_to_end(key)
        while len(self._items) > self._entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
