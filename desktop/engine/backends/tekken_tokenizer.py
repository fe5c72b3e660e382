"""Flux.2 dev's tokenizer from the tekken.json a ComfyUI Mistral text-encoder file carries (or a Mistral
GGUF's tokenizer metadata amounts to).

Mistral's tokenizer ("tekken") is a byte-level BPE kept as tekken.json: byte strings by rank, a pre-split
pattern, and a number of special tokens placed before the vocabulary (ids 0..N-1; the token of rank r
gets id N + r). ComfyUI stores that file's bytes in its Mistral files as the uint8 tensor `tekken_model`.
transformers converts a tekken.json into a fast tokenizer (`convert_tekken_tokenizer`); older files
(Mistral Small 3's and Pixtral's among them) list no special tokens and leave their names to
mistral-common's defaults, written in here (a fact of the format) so the conversion needs no mistral-common.
tests/engine/test_flux2_dev_library.py checks the ids against mistral-common's own tokenizer.

A prompt goes in as FLUX.2 dev's pipeline formats it (its system message, then the prompt) in Mistral's
v7 chat form, `<s>[SYSTEM_PROMPT]system[/SYSTEM_PROMPT][INST]prompt[/INST]` (mistral-common's v7 instruct
encoding, and ComfyUI's Flux.2 template), padded on the left with <pad> to the pipeline's 512 tokens: the
side of the LlamaTokenizerFast that transformers' tekken conversion made for Mistral's Hugging Face
repositories (its class default).

Runs on the generation thread; transformers, safetensors and gguf are imported inside the functions.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.encoder_qwen import TEKKEN_TENSOR

# mistral-common's names for the first special tokens of a tekken.json that lists none (its
# DEPRECATED_SPECIAL_TOKENS); the rest up to the file's count are "<SPECIAL_{rank}>".
_DEFAULT_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip
# Tekken's pre-split pattern (the same in every tekken.json; GGUF files do not keep it).
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
# Mistral's v7 chat form for the messages Flux2Pipeline builds ({"type": "text"} parts; images never reach
# this tokenizer: Marble passes Flux.2 dev no image to the text encoder).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set text = message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% elif message['role'] == 'assistant' %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)


def embedded_tekken(path: Path) -> bytes | None:
    """The tekken.json bytes an encoder file carries: a safetensors file's `tekken_model`, or what a GGUF's
    tokenizer metadata amounts to (gguf_tekken); None when it has none."""
    from safetensors import safe_open

    from desktop.engine.library.checkpoint import sniff_file_type

    kind = sniff_file_type(path, label=str(path))
    if kind == "gguf":
        return gguf_tekken(path)
    if kind != "safetensors":
        return None

    with safe_open(str(path), framework="pt") as handle:
        if TEKKEN_TENSOR not in handle.keys():
            return None
        return handle.get_tensor(TEKKEN_TENSOR).numpy().tobytes()


def gguf_tekken(path: Path) -> bytes | None:
    """The tekken.json a Mistral GGUF's tokenizer metadata amounts to; None when it holds no tekken vocabulary.

    llama.cpp writes Mistral's tokenizer as a "gpt2" vocabulary: every id's token in GPT-2's byte-to-unicode
    spelling, the special tokens (ids 0..N-1, as tekken places them) typed control. Read back in id order,
    the other tokens are tekken's byte strings by rank; the pre-split pattern, which GGUF does not keep, is
    tekken's (the same in every tekken.json). ComfyUI-GGUF rebuilds it the same way."""
    import base64

    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    reader = gguf.GGUFReader(str(path))
    model, tokens, types = (reader.get_field(f"tokenizer.ggml.{key}") for key in ("model", "tokens", "token_type"))
    if model is None or tokens is None or types is None or model.contents() != "gpt2":
        return None
    names, kinds = tokens.contents(), types.contents()
    special = next((i for i, kind in enumerate(kinds) if kind == gguf.TokenType.NORMAL), len(kinds))
    if special == 0 or len(names) != len(kinds) or any(kind != gguf.TokenType.NORMAL for kind in kinds[special:]):
        return None  # not tekken's layout (specials first, then the ranked vocabulary)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = []
    for rank, name in enumerate(names[special:]):
        if any(char not in byte_of for char in name):
            return None
        token = bytes(byte_of[char] for char in name)
        vocab.append({"rank": rank, "token_bytes": base64.b64encode(token).decode("ascii"), "token_str": None})
    tekken = {
        "config": {"pattern": TEKKEN_PATTERN, "default_vocab_size": len(names), "default_num_special_tokens": special,
                   "num_vocab_tokens": len(vocab)},
        "vocab": vocab,
        "special_tokens": [{"rank": i, "token_str": name, "is_control": True}
                           for i, name in enumerate(names[:special])],
    }  # fmt: skip
    return json.dumps(tekken).encode("utf-8")


def tokenizer_from_tekken(data: bytes, *, source: str) -> Any:
    """A fast tokenizer for `data` (a tekken.json's bytes), with Mistral's chat form and left padding;
    ModelError naming `source` when the bytes are no tekken.json."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    try:
        tekken = json.loads(data.decode("utf-8"))
        config = tekken["config"]
        if not isinstance(tekken.get("vocab"), list) or not isinstance(config.get("pattern"), str):
            raise KeyError("vocab")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ModelError(f"{source} carries a tokenizer that is no Mistral tekken.json ({error}).") from None
    if "special_tokens" not in tekken:
        count = int(config.get("default_num_special_tokens") or len(_DEFAULT_SPECIALS))
        names = [*_DEFAULT_SPECIALS, *(f"<SPECIAL_{rank}>" for rank in range(len(_DEFAULT_SPECIALS), count))]
        tekken["special_tokens"] = [{"rank": rank, "token_str": name, "is_control": True}
                                    for rank, name in enumerate(names[:count])]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="marble-tekken-") as folder:
        # The converter reads a file; a folder of its own keeps it from reading a neighbour's chat template.
        file = Path(folder) / "tekken.json"
        file.write_text(json.dumps(tekken), encoding="utf-8")
        try:
            tokenizer = convert_tekken_tokenizer(str(file), chat_template=CHAT_TEMPLATE)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelError(f"{source} carries a tekken.json that does not convert: {error}") from None
    tokenizer.padding_side = "left"
    return tokenizer
