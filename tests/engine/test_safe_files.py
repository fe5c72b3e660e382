"""The helpers every untrusted read and print goes through: regular files only, bounded JSON, file types
by their bytes, control characters escaped; and what the fuzz test found in the prompt parser."""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile

import pytest

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_bytes
from desktop.engine.prompt_syntax import MAX_WEIGHT, parse_prompt
from desktop.engine.safe_files import json_depth_exceeds, loads_json, open_regular, read_json_file
from desktop.engine.terminal_text import library_error, library_text, printable


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")
def test_only_regular_files_open(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would wait for a writer forever
    with pytest.raises(ModelError, match="named pipe"):
        open_regular(tmp_path / "pipe")
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(InvalidRequest, match="device"):
        open_regular(tmp_path / "zero", error=InvalidRequest)
    with pytest.raises(ModelError, match="folder"):
        open_regular(tmp_path)
    assert open_regular(tmp_path / "missing", missing_ok=True) is None
    (tmp_path / "big.json").write_bytes(b"[" + b"0," * 100 + b"0]")
    with pytest.raises(ModelError, match="203 bytes, more than the 10"):
        read_json_file(tmp_path / "big.json", max_bytes=10)
    assert len(read_json_file(tmp_path / "big.json")) == 101


def test_json_nesting_is_bounded_before_parsing(monkeypatch):
    import numpy as np

    from desktop.engine import safe_files

    deep = "[" * 200_000 + "]" * 200_000
    # Counted in chunks, without recursion (json's parser would hit Python's recursion limit first): one pass over
    # the brackets at most, stopping at the first chunk that goes too deep. The work is counted, not timed.
    chunks = []
    cumsum = np.cumsum
    monkeypatch.setattr(safe_files, "_DEPTH_CHUNK", 1000)
    monkeypatch.setattr(np, "cumsum", lambda steps: chunks.append(len(steps)) or cumsum(steps))
    assert json_depth_exceeds(deep, 64) and chunks == [1000]
    with pytest.raises(ValueError, match="nests more than 64"):
        loads_json(deep)
    chunks.clear()
    wide = "[" + "[0]," * 50_000 + "[0]]"  # 100,004 brackets, never deeper than 2
    assert not json_depth_exceeds(wide, 64) and chunks == [1000] * 100 + [4]
    # The depth carries from one chunk to the next: 60 levels open at the end of the first, 10 more in the second.
    chunks.clear()
    assert json_depth_exceeds("[" * 60 + "[]" * 470 + "[" * 10, 64) and chunks == [1000, 10]
    monkeypatch.undo()
    # Brackets inside strings (escaped quotes included) do not count.
    assert not json_depth_exceeds('{"a": "[[[[[[\\"[[[[", "b": [[1]]}', 3)
    assert json_depth_exceeds('{"b": [[[1]]]}', 3)
    assert loads_json('{"b": [[1]]}') == {"b": [[1]]}


@pytest.mark.parametrize("protocol", range(6))
def test_pickles_of_every_protocol_are_recognised_by_their_bytes(protocol):
    assert sniff_bytes(pickle.dumps({"weights": [1.0, 2.0], "name": "x"}, protocol=protocol)) == "pickle"


def test_file_types_by_bytes():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))
    assert sniff_bytes(buffer.getvalue()) == "zip"
    header = b'{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}'
    assert sniff_bytes(struct.pack("<Q", len(header)) + header + b"\0\0") == "safetensors"
    for text in (b"", b"hello world", b"(not a pickle at all", b'{"json": true}', b"Lorem ipsum."):
        assert sniff_bytes(text) == "unknown"


def test_a_header_with_an_integer_past_pythons_digit_limit_is_a_model_error(tmp_path):
    header = b'{"a":{"dtype":"F16","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,2]}}'
    path = tmp_path / "big-int.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    with pytest.raises(ModelError, match="big-int.safetensors is damaged"):
        read_safetensors_header(path)


def test_printable_escapes_terminal_controls():
    hostile = "\x1b[2J\x1b]0;title\x07a\rb\u202ec\u0085d\x7f\ud800"
    shown = printable(hostile)
    assert shown == "\\x1b[2J\\x1b]0;title\\x07a\\rb\\u202ec\\x85d\\x7f\\ud800"
    assert printable("two\nlines\r", multiline=True) == "two\nlines\\r"
    assert printable("café 😀 a\u200db") == "café 😀 a\u200db"  # letters, emoji and joiners stay


def test_library_text_drops_styling_and_controls():
    torch_like = "Weights only load failed. \x1b[1mDo it only if you trust the source\x1b[0m.\nWeightsUnpickler"
    assert library_text(torch_like) == (
        "Weights only load failed. Do it only if you trust the source. WeightsUnpickler"
    )
    assert library_text("\x1b]0;pwned\x07ok\x9b31m") == "ok"


def test_library_error_quotes_the_first_line_cleaned_and_cut():
    # What a loader's message quotes of another library's exception: its first line only, styling gone.
    error = RuntimeError("  \x1b[1mError(s) in loading\x1b[0m state_dict:\n\tsize mismatch for conv.weight  ")
    assert library_error(error) == "Error(s) in loading state_dict:"
    assert library_error(KeyError("pos_embed")) == "'pos_embed'"
    assert library_error(ValueError("x" * 500)) == "x" * 300 and library_error(ValueError("x" * 500), 20) == "x" * 20
    assert library_error(OSError()) == "OSError"  # no text: named by its class


def test_deep_or_huge_prompt_weights_stay_finite():
    # 20,000 open brackets: no recursion error (the parser keeps its own stack), no overflow to infinity.
    pieces = parse_prompt("( " * 20_000 + "fox")
    assert all(math.isfinite(p.weight) and abs(p.weight) <= MAX_WEIGHT for p in pieces)
    (piece,) = parse_prompt("(fox:" + "9" * 400 + ")")
    assert piece.weight == MAX_WEIGHT
    assert parse_prompt("((fox))")[0].weight == pytest.approx(1.21)  # ordinary nesting is unchanged


def test_size_limits_take_a_file_of_exactly_the_limit_and_refuse_one_byte_more(tmp_path):
    from desktop.engine.safe_files import read_regular_bytes

    (tmp_path / "exact.bin").write_bytes(b"x" * 10)
    assert read_regular_bytes(tmp_path / "exact.bin", max_bytes=10) == b"x" * 10
    with open_regular(tmp_path / "exact.bin", max_bytes=10) as stream:
        assert os.get_blocking(stream.fileno())  # opened without blocking (a FIFO), read blocking again
    (tmp_path / "over.bin").write_bytes(b"x" * 11)
    with pytest.raises(ModelError, match=r"^Cannot read over\.bin: it is 11 bytes, more than the 10"):
        read_regular_bytes(tmp_path / "over.bin", max_bytes=10)


def test_errors_name_the_file_and_never_escape_as_another_error(tmp_path):
    with pytest.raises(ModelError, match=r"^Cannot read gone\.json: it does not exist\.$"):
        open_regular(tmp_path / "gone.json")  # missing is an error unless the caller says otherwise
    with pytest.raises(ModelError, match=r"^Cannot read .*embedded null"):
        open_regular(str(tmp_path / "a\0b"))  # a NUL byte in the path: a ValueError, not an OSError
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match=r"^bad\.json is not valid JSON"):
        read_json_file(tmp_path / "bad.json")


def test_json_depth_counts_the_deepest_branch_not_every_bracket():
    assert not json_depth_exceeds("[[[1]], [[2]], {}]", 3)  # six openers, three deep
    assert json_depth_exceeds("[[[[1]]], [2]]", 3)
