"""Seeded fuzzing of every parser that reads untrusted text or bytes (issue 22, "Beyond the list").

Random and mutated safetensors headers, PNG files with hostile text chunks, chunk dictionaries as other
tools write them, A1111 `parameters` text, prompts with weights/BREAK/LoRA tags, and library names go
through the real parsers. Each case must end in success or one of Marble's own errors (MarbleError),
within a time bound; anything else (a RecursionError, a ValueError from deep inside json, a hang) fails.
The seed is fixed, so a failure reproduces; FUZZ_SEED in the environment explores other seeds by hand.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import struct
import time
import unicodedata
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from desktop.engine.errors import MarbleError
from desktop.engine.library.checkpoint import detect_architecture, read_safetensors_header, sniff_file_type
from desktop.engine.library.embedding_vectors import vector_count
from desktop.engine.library.index import MAX_FILE_NAME_BYTES, check_name, guess_kind
from desktop.engine.library.lora import inspect_lora, split_lora_tags
from desktop.engine.metadata import (
    interpret_chunks,
    parse_parameters,
    read_text_chunks,
    request_from_parameters,
)
from desktop.engine.prompt_schedule import has_schedule, per_step, plan_prompts
from desktop.engine.prompt_syntax import pack_prompt, prompt_pieces
from desktop.engine.request import GenerationRequest
from desktop.engine.terminal_text import is_unsafe_char

SEED = int(os.environ.get("FUZZ_SEED", "22"))
CASE_SECONDS = 2.0  # far above any real case (milliseconds); a parser stuck in a loop or a bomb trips it

# Characters that break parsers: structure, quotes, escapes, controls, bidi, combining marks, emoji.
NASTY = list('{}[]()<>:,"\\\'\n\r\t\x00\x07\x1b\x7f\x85\u202e\u2066\u0301\ufeff\ud800') + [
    "\U0001f600", "BREAK", "Negative prompt:", "Steps:", "<lora:", "1e400", "-0", "NaN", "9" * 5000,
]  # fmt: skip


class Counter:
    def __init__(self) -> None:
        self.cases = 0
        self.errors = 0


COUNT = Counter()


def run_case(call: Callable[[], object], label: str, case: object) -> object | None:
    """Run one case: success or a MarbleError, in bounded time; anything else fails with the input."""
    COUNT.cases += 1
    started = time.perf_counter()
    try:
        return call()
    except MarbleError as error:
        COUNT.errors += 1
        assert str(error).strip(), f"{label}: an empty message for {case!r:.300}"
        return None
    except Exception as error:  # noqa: BLE001 - the point: no other type may escape
        pytest.fail(f"{label}: {type(error).__name__}: {error!s:.200} for input {case!r:.300}")
    finally:
        elapsed = time.perf_counter() - started
        assert elapsed < CASE_SECONDS, f"{label} took {elapsed:.1f} s for {case!r:.300}"


def mutate_text(rng: random.Random, text: str, edits: int | None = None) -> str:
    chars = list(text)
    for _ in range(edits if edits is not None else rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.35:
            chars[pos:pos] = list(rng.choice(NASTY))
        elif op < 0.55 and chars:
            del chars[pos : pos + rng.randint(1, 8)]
        elif op < 0.7 and chars:
            start = rng.randrange(len(chars))
            chars[pos:pos] = chars[start : start + rng.randint(1, 40)] * rng.randint(1, 3)
        elif op < 0.8:
            depth = rng.choice([3, 40, 2000])
            chars[pos:pos] = list(rng.choice("([{") * depth)
        elif chars:
            chars[rng.randrange(len(chars))] = chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x10FFFF)]))
    text = "".join(chars)
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if rng.random() < 0.5 else text


# ------------------------------------------------------------------------------------ safetensors


def base_header(rng: random.Random) -> dict[str, object]:
    unet, clip = "model.diffusion_model.", "cond_stage_model.transformer.text_model."
    shapes = {
        unet + "input_blocks.0.0.weight": [8, rng.choice([4, 9]), 3, 3],
        unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [8, 16],
        clip + "embeddings.token_embedding.weight": [4, 16],
        clip + "encoder.layers.0.self_attn.q_proj.weight": [16, 16],
        clip + "final_layer_norm.weight": [16],
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [2, 16],
        "emb_params": [2, 16],
    }
    header: dict[str, object] = {}
    offset = 0
    for name in rng.sample(sorted(shapes), rng.randint(1, len(shapes))):
        size = math.prod(shapes[name]) * 2
        header[name] = {"dtype": "F16", "shape": shapes[name], "data_offsets": [offset, offset + size]}
        offset += size
    if rng.random() < 0.5:
        header["__metadata__"] = {"format": "pt", "modelspec.architecture": "stable-diffusion-v1"}
    return header


def mutate_header(rng: random.Random, header: dict[str, object]) -> dict[str, object]:
    weird: list[object] = [None, True, -1, 2**64, 10**30, 1.5, "x", [], {}, [[[]]], [-1, 2], [1, 0], [0]]
    for _ in range(rng.randint(1, 4)):
        names = list(header)
        if not names:
            header["x"] = rng.choice(weird)
            continue
        name = rng.choice(names)
        entry = header[name]
        op = rng.random()
        if op < 0.5 and isinstance(entry, dict) and entry:
            key = rng.choice([*entry, "dtype", "shape", "data_offsets"])
            entry[key] = rng.choice([*weird, "BF16", "F8_E4M3", "Q4", [2**40, 2**40], ["BIGINT"]])
        elif op < 0.65:
            header[name] = rng.choice(weird)
        elif op < 0.8:
            header[mutate_text(rng, name, 1)] = header.pop(name)
        else:
            header["__metadata__"] = rng.choice([{"k": {"n": [1, {"m": None}]}}, {"k\x1b[2J": "v\x07"}, [], "s"])
    return header


def header_bytes(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        return os.urandom(rng.randint(0, 64))
    raw = json.dumps(mutate_header(rng, base_header(rng)) if roll < 0.7 else base_header(rng)).encode()
    raw = raw.replace(b'"BIGINT"', b"9" * 5000)  # past Python's 4300-digit limit for int parsing
    if roll >= 0.7:
        raw = mutate_text(rng, raw.decode()).encode("utf-8", "surrogatepass")
    declared = len(raw) + rng.choice([0, 0, 0, -1, 1, -len(raw), 2**40])
    data = b"\0" * rng.choice([0, 64, 4096])
    return struct.pack("<Q", max(declared, 0)) + raw + data


def test_fuzz_safetensors_headers(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "fuzz.safetensors"
    for _ in range(900):
        data = header_bytes(rng)
        path.write_bytes(data)
        run_case(lambda: sniff_file_type(path), "sniff", data)
        header = run_case(lambda: read_safetensors_header(path), "read_safetensors_header", data)
        if header is not None:
            run_case(lambda h=header: detect_architecture(h), "detect_architecture", data)
            run_case(lambda h=header: inspect_lora(h), "inspect_lora", data)
            run_case(lambda: vector_count(path), "vector_count", data)
        run_case(lambda: guess_kind(path), "guess_kind", data)


# ------------------------------------------------------------------------------- PNG text chunks

PARAMETERS = (
    "a (red:1.2) fox, [blurry], <lora:detail:0.8>\nBREAK in a field\n"
    "Negative prompt: lowres, \"bad\"\n"
    'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5, Lora hashes: "detail: 0123456789ab", Clip skip: 2, Version: v1.9.0'
)
COMFY = json.dumps({
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                              "scheduler": "karras", "positive": ["6", 0], "negative": ["7", 0],
                                              "model": ["4", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["6", 0]}},
})  # fmt: skip
INVOKE = json.dumps({"positive_prompt": "a cat", "negative_prompt": "x", "seed": 1, "steps": 10,
                     "cfg_scale": 7, "width": 512, "height": 512, "scheduler": "euler", "model": {"name": "m"}})
NOVELAI = json.dumps({"prompt": "a cat", "uc": "x", "steps": 28, "scale": 5, "seed": 3, "sampler": "k_euler"})


def marble_chunk() -> str:
    request = GenerationRequest(prompt="a (cat:1.3)", model="m", negative_prompt="dog", seed=1)
    return json.dumps({"schema_version": 1, "request": request.to_dict()})


def chunk_sets(rng: random.Random) -> dict[str, str]:
    choices = [
        {"parameters": PARAMETERS},
        {"marble": marble_chunk(), "parameters": PARAMETERS},
        {"prompt": COMFY, "workflow": "{}"},
        {"invokeai_metadata": INVOKE},
        {"Comment": NOVELAI, "Software": "NovelAI", "Description": "a cat"},
        {"sd-metadata": json.dumps({"image": {"prompt": [{"prompt": "a cat", "weight": 1}], "seed": 1}})},
    ]
    chunks = dict(rng.choice(choices))
    for key in list(chunks):
        if rng.random() < 0.8:
            chunks[key] = mutate_text(rng, chunks[key])
    return chunks


def png_with_text(chunks: dict[str, str], rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    png = buffer.getvalue()
    iend = png.rindex(b"IEND") - 4
    extra = b""
    for key, value in chunks.items():
        kind = rng.choice([b"tEXt", b"iTXt", b"zTXt"])
        key_bytes = key.encode("latin-1", "replace")[:79]
        text = value.encode("utf-8", "surrogatepass")
        if kind == b"tEXt":
            payload = key_bytes + b"\0" + text
        elif kind == b"zTXt":
            payload = key_bytes + b"\0\0" + zlib.compress(text)
        else:
            payload = key_bytes + b"\0\0\0\0\0" + text
        if rng.random() < 0.2:  # a damaged chunk: flipped bytes under a correct CRC
            payload = bytes(b ^ 0xFF if rng.random() < 0.05 else b for b in payload)
        extra += struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    data = png[:iend] + extra + png[iend:]
    if rng.random() < 0.15:  # raw byte damage anywhere, CRCs and all
        cut = rng.randrange(len(data))
        data = data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1 :] if rng.random() < 0.5 else data[:cut]
    return data


def test_fuzz_png_text_chunks() -> None:
    rng = random.Random(SEED + 1)
    for _ in range(400):
        chunks = chunk_sets(rng)
        # interpret_chunks promises never to raise at all: one tool's bad chunk must not hide another's.
        metadata = run_case(lambda c=chunks: interpret_chunks(c, "fallback"), "interpret_chunks", chunks)
        assert metadata is not None, f"interpret_chunks raised for {chunks!r:.300}"
        data = png_with_text(chunks, rng)
        found = run_case(lambda d=data: read_text_chunks(d), "read_text_chunks", data)
        if found:
            run_case(lambda f=found: interpret_chunks(f), "interpret_chunks(png)", found)


# --------------------------------------------------------------------------- A1111 parameters text


def test_fuzz_a1111_parameters() -> None:
    rng = random.Random(SEED + 2)
    for _ in range(1500):
        text = mutate_text(rng, PARAMETERS, rng.randint(1, 12))
        parsed = run_case(lambda t=text: parse_parameters(t), "parse_parameters", text)
        assert parsed is not None, f"parse_parameters raised for {text!r:.300}"  # documented: never raises
        run_case(lambda p=parsed: request_from_parameters(p, "fallback"), "request_from_parameters", text)


# -------------------------------------------------------------------------------------- prompts

PROMPT_WORDS = ["fox", "a", ",", "(", ")", "[", "]", "(red:1.5)", ":0.5)", "((", "))", "\\(", "\\)", "\\\\",
                "BREAK", "<lora:detail:0.8>", "<lora:x:abc>", "<lyco:y>", "<lora::>", "<lora:z:99>", "\n",
                "\U0001f600", "e\u0301", "\x1b[2J"]  # fmt: skip


def fake_tokenize(text: str) -> list[int]:
    return [sum(map(ord, word)) % 49000 for word in text.replace(",", " , ").split()]


def test_fuzz_prompts() -> None:
    rng = random.Random(SEED + 3)
    for _ in range(1500):
        words = [rng.choice(PROMPT_WORDS) for _ in range(rng.randint(0, 120))]
        if rng.random() < 0.05:
            words = ["("] * rng.choice([500, 20000]) + words
        text = " ".join(words) if rng.random() < 0.5 else "".join(words)
        run_case(lambda t=text: split_lora_tags(t), "split_lora_tags", text)
        for emphasis in ("Original", "No norm", "None"):
            pieces = run_case(lambda t=text, e=emphasis: prompt_pieces(t, e), "prompt_pieces", text)
            if pieces is None:
                continue
            assert all(math.isfinite(p.weight) for p in pieces), f"an infinite weight from {text!r:.300}"
            chunks = run_case(lambda p=pieces: pack_prompt(p, fake_tokenize, 75, 11), "pack_prompt", text)
            assert chunks and all(len(c.ids) <= 75 for c in chunks)


SCHEDULE_PIECES = ["[", "]", "(", ")", ":", "::", "|", "\\", "0.5", "3", "1.0", ".2", "1e3", " ", "AND", "cat",
                   "dog", ":1.2", "BREAK", "[a:b:2]", "[a|b]", "[a::1]", "\n", "\U0001f600"]  # fmt: skip


def test_fuzz_prompt_schedules() -> None:
    rng = random.Random(SEED + 4)
    for _ in range(1500):
        pieces = [rng.choice(SCHEDULE_PIECES) for _ in range(rng.randint(0, 80))]
        if rng.random() < 0.05:
            pieces = ["["] * rng.choice([500, 20000]) + pieces + ["]"] * 300
        text = "".join(pieces)
        steps = rng.choice([1, 2, 7, 30])
        plan = run_case(lambda t=text, s=steps: plan_prompts(t, t, s), "plan_prompts", text)
        if plan is None:
            continue
        for schedule in [part.schedule for part in plan.positive] + [plan.negative]:
            ends = [end for end, _ in schedule.entries]
            assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1, f"{ends} from {text!r:.300}"
            assert len(per_step(schedule, steps)) == steps
        if not has_schedule(text) and "AND" not in text:
            assert per_step(plan.negative, steps) == [text] * steps, f"text changed: {text!r:.300}"


# ---------------------------------------------------------------------------------- library names


NAME_PIECES = ["model", "v1.5", " ", ".", "..", "con", "nul.txt", "café", "e\u0301", "\U0001f600", "\u202e",
               "\u2066", "\x85", "\x7f", "\x00", "\x1b", "/", "\\", ":", "*", "a" * 100, "\u00e9" * 60, "\ud800",
               "\u200d", "\ufeff", "\u3000", "ß", "Ⅻ", "ｆｕｌｌ"]  # fmt: skip


def test_fuzz_library_names(tmp_path: Path) -> None:
    rng = random.Random(SEED + 4)
    for _ in range(2500):
        name = "".join(rng.choice(NAME_PIECES) for _ in range(rng.randint(0, 8)))
        cleaned = run_case(lambda n=name: check_name(n), "check_name", name)
        if cleaned is None:
            continue
        assert isinstance(cleaned, str) and cleaned == unicodedata.normalize("NFC", cleaned)
        assert not any(is_unsafe_char(c) for c in cleaned), f"{cleaned!r} accepted"
        # Every accepted name can really be written, hidden copy included, and lists back as itself.
        for file_name in (f"{cleaned}.safetensors", f".{cleaned}.safetensors.partial"):
            assert len(file_name.encode("utf-8")) <= MAX_FILE_NAME_BYTES
            (tmp_path / file_name).write_bytes(b"")
            assert file_name in os.listdir(tmp_path), f"{file_name!r} was written under another name"
            (tmp_path / file_name).unlink()


def test_report_fuzz_case_count() -> None:
    # Runs last in this file: says how much the fuzzing covered (visible with -rP or -s).
    print(f"fuzz: {COUNT.cases} cases, {COUNT.errors} ended in a MarbleError, seed {SEED}")
