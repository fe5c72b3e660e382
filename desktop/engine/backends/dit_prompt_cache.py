"""The DiT families' prompt encodings reused between jobs (issue 29: text encoders cached between jobs with the
same prompt).

Each Flux / SD3 / Chroma / Qwen-Image / Z-Image / Flux.2 pipeline encodes its prompt through its own
`encode_prompt`, on every call: a job of four batches ran T5-XXL (or a 7B Qwen, a 24B Mistral) four times for
the same numbers, and under the offload modes moved it onto the GPU and back each time. `cached_encoding` puts a
wrapper over the pipeline's `encode_prompt` for one call: a call whose arguments are all plain values (the
prompt strings, the device, the image count, the sequence length, the LoRA scale) is answered from the backend's
PromptCache when the same call was made before under the same `context` (the backend's load counter, its
text-encoder objects, LoRAs with their files' hashes, the memory mode); one that passes tensors or images
(precomputed embeddings, Qwen-Image-Edit's source) is passed through. The answer is a copy (lists rebuilt,
tensors cloned), so a pipeline that changes what it got in place cannot reach the cache.

No torch import: the values are the pipeline's own, copied through their `clone()`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from desktop.engine.backends.prompt_cache import PromptCache

_PLAIN = (str, int, float, bool, type(None))


class _NotPlain(Exception):
    """An argument the key cannot hold: the call goes to the encoder."""


def call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
    """A hashable form of an encode_prompt call's arguments; None when one is not a plain value."""
    try:
        return tuple(_plain(value) for value in args), tuple(sorted((k, _plain(v)) for k, v in kwargs.items()))
    except _NotPlain:
        return None


def _plain(value: Any) -> Hashable:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple) and all(isinstance(item, _PLAIN) for item in value):
        return ("sequence", *value)
    if type(value).__name__ == "device" and type(value).__module__ == "torch":
        return ("device", str(value))
    raise _NotPlain


def copied(value: Any) -> Any:
    """`value` (an encoder's outputs: tensors, tuples and lists of them, None) with every container rebuilt and
    every tensor cloned."""
    if isinstance(value, tuple):
        return tuple(copied(item) for item in value)
    if isinstance(value, list):
        return [copied(item) for item in value]
    clone = getattr(value, "clone", None)
    return clone() if callable(clone) else value


@contextmanager
def cached_encoding(pipe: Any, cache: PromptCache, context: Hashable) -> Iterator[None]:
    """Within the block, `pipe.encode_prompt` answers a call made before under `context` from `cache`."""
    real = pipe.encode_prompt
    family = type(pipe).__name__

    def encode(*args: Any, **kwargs: Any) -> Any:
        key = call_key(args, kwargs)
        if key is None:
            return real(*args, **kwargs)
        full = (context, family, key)
        found = cache.get(full)
        if found is not None:
            return copied(found["outputs"])
        outputs = real(*args, **kwargs)
        cache.put(full, {"outputs": copied(outputs)})
        return outputs

    pipe.encode_prompt = encode
    try:
        yield
    finally:
        del pipe.encode_prompt  # the class's method again
