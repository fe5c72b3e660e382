"""Derive the CLIP tokenizer files from OpenAI's BPE merge list.

OpenAI's CLIP (MIT licence) ships its tokenizer as one file, ``bpe_simple_vocab_16e6.txt.gz``: a
header line followed by BPE merges. The vocabulary is not stored anywhere; CLIP builds it at run
time from the merges, and this script does the same so Marble can ship ``vocab.json`` and
``merges.txt`` for ``transformers.CLIPTokenizer`` without ever touching the network.

Usage::

    python installer/tools/make_clip_tokenizer.py bpe_simple_vocab_16e6.txt.gz resources/tokenizers

writes ``clip/`` (pads with ``<|endoftext|>``, SD 1.x) under the output folder. SD 2.x and SDXL's second
tokenizer pad with ``!`` (id 0): Marble loads them from the same folder with that pad token overridden
(desktop/engine/backends/diffusers_backend.py, ``clip_tokenizer``), so no second copy is written.

The ``.txt.gz`` travels inside the ``open_clip_torch`` wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``);
``pip download --no-deps open_clip_torch`` and unzip it out of the wheel.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

# CLIP's vocabulary is 49,408 entries: 2 x 256 byte tokens, the merges, and 2 special tokens.
VOCAB_SIZE = 49_408
MERGE_COUNT = VOCAB_SIZE - 256 - 256 - 2  # 48,894: the merge list is longer, CLIP uses only these
START = "<|startoftext|>"
END = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# The reference sentence and the ids the released CLIP tokenizer gives it: a cheap end-to-end check.
REFERENCE_TEXT = "a photo of a cat"
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, in GPT-2's order.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points from 256 up,
    so BPE never has to handle whitespace or control characters. The order matters: it fixes the
    ids of the first 256 tokens.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def read_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    """The first MERGE_COUNT merges of the BPE file (its first line is a header, not a merge)."""
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines[1 : 1 + MERGE_COUNT]:
        left, right = line.split(" ")  # exactly two symbols per merge; anything else is a bad file
        merges.append((left, right))
    if len(merges) != MERGE_COUNT:
        raise ValueError(f"{bpe_gz} holds {len(merges)} merges, CLIP needs {MERGE_COUNT}")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, in CLIP's order (ids are list positions)."""
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += [left + right for left, right in merges]
    tokens += [START, END]
    vocab = {token: i for i, token in enumerate(tokens)}
    # A duplicate would silently shift every later id; the real list has none.
    if len(vocab) != VOCAB_SIZE or len(tokens) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} unique of {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return vocab


def tokenizer_config(pad_token: str) -> dict[str, object]:
    # Plain strings (not AddedToken dicts): every transformers version from 4.x to 5.x reads them.
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": START,
        "eos_token": END,
        "unk_token": END,
        "pad_token": pad_token,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        # False: transformers 5 ignores (and warns about) True for BPE; it only affects decode().
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def write_folder(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # ensure_ascii=False keeps the file readable and about half the size; written as UTF-8.
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8", newline="\n")
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    config = tokenizer_config(pad_token)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def check_folder(folder: Path, pad_token: str, pad_id: int) -> None:
    """Load the written folder with transformers and compare against the reference ids."""
    try:
        from transformers import CLIPTokenizer
    except ImportError:  # generating must work without transformers; the check is a bonus
        print("transformers not installed: skipped the encode check")
        return
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, pad_token=pad_token)
    ids = tok(REFERENCE_TEXT)["input_ids"]
    if ids != REFERENCE_IDS or tok.pad_token_id != pad_id or len(tok) != VOCAB_SIZE:
        raise SystemExit(f"{folder}: got ids {ids}, pad {tok.pad_token_id}, size {len(tok)}")
    print(f"{folder}: {REFERENCE_TEXT!r} -> {ids}, pad id {pad_id}: OK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bpe_gz", type=Path, help="path of bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out", type=Path, help="output folder (gets clip/)")
    parser.add_argument("--no-check", action="store_true", help="skip loading the result with transformers")
    args = parser.parse_args(argv)

    merges = read_merges(args.bpe_gz)
    vocab = build_vocab(merges)
    write_folder(args.out / "clip", vocab, merges, END)
    if not args.no_check:
        # "!" is the first byte token, id 0: what open_clip pads with, hence SD 2.x / SDXL's tokenizer_2.
        # As with the official diffusers tokenizer_2 files, a pad token "!" becomes a special token, so a
        # literal "!" in a prompt encodes as id 0 (diffusers issue #4153); we match diffusers here.
        for pad_token, pad_id in ((END, vocab[END]), ("!", 0)):
            check_folder(args.out / "clip", pad_token, pad_id)


if __name__ == "__main__":
    main()
