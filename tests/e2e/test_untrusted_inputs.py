"""Hostile files and names through the real command line (issue 22): each ends in one clear line and the
right exit code (2 bad input, 3 a model that cannot be loaded), never a traceback, a hang or a pickle load.
"""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from desktop.cli import EXIT_BAD_INPUT, EXIT_MODEL
from tests.support.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]
no_fifos = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX thing")


cli = run_cli


def marble(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A child process with 2 GB of address space, so a reader that never stops fails fast instead of
    eating the machine; a hang raises TimeoutExpired."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "desktop", *argv], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, preexec_fn=limit_memory, check=False,
    )  # fmt: skip


def generate(model: Path | str, home: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64",
            "--device", "cpu", "--home", str(home), *extra]  # fmt: skip


@pytest.fixture
def no_torch_load(monkeypatch):
    """Fail loudly if anything in this process unpickles weights (torch.load is the only way diffusers does)."""
    calls: list[object] = []

    def forbidden(*args: object, **kwargs: object) -> None:
        calls.append(args[:1])
        raise AssertionError("torch.load was called in the app's process")

    monkeypatch.setattr(torch, "load", forbidden)
    return calls


# -------------------------------------------------------------------------------- 2: pickles, every path


def test_generate_refuses_a_diffusers_folder_with_pickled_weights(tmp_path, tiny_sd15_dir, no_torch_load):
    folder = shutil.copytree(tiny_sd15_dir, tmp_path / "pickled")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    code, out, err = cli(*generate(folder, tmp_path / "home"))
    assert code == EXIT_MODEL, err
    assert "unet/diffusion_pytorch_model.bin" in err and "--convert-pickle" in err
    assert no_torch_load == [] and "Traceback" not in err and not list((tmp_path / "home").rglob("*.png"))


def test_generate_loads_folders_with_safetensors_only(tmp_path, tiny_sd15_dir, no_torch_load):
    # A .bin beside the .safetensors that is not a pickle by its bytes still never gets read.
    folder = shutil.copytree(tiny_sd15_dir, tmp_path / "both")
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle, not read")
    code, out, err = cli(*generate(folder, tmp_path / "home"))
    assert code == 0, err
    assert no_torch_load == []


def test_a_safetensors_file_named_ckpt_is_read_as_safetensors(tmp_path, tiny_sd15_single, no_torch_load):
    source, config = tiny_sd15_single
    renamed = shutil.copy(source, tmp_path / "model.ckpt")
    code, out, err = cli(*generate(renamed, tmp_path / "home", "--config", str(config)))
    assert code == 0, err
    assert Path(out.strip()).is_file() and no_torch_load == []


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_import_recognises_legacy_pickles_of_every_protocol(tmp_path, protocol):
    source = tmp_path / f"old-{protocol}.bin"
    torch.save({"w": torch.ones(2)}, source, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    code, _, err = cli("models", "import", str(source), "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL
    assert "pickled PyTorch checkpoint" in err and "--convert-pickle" in err


def test_import_recognises_a_plain_protocol_0_pickle(tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=0))
    code, _, err = cli("loras", "import", str(source), "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL and "pickled PyTorch checkpoint" in err


# ------------------------------------------------------------------------- 3: a header nested too deep


def _deep_header_file(path: Path) -> Path:
    header = b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_a_deeply_nested_header_is_refused_by_import_info_and_generate(tmp_path):
    home = tmp_path / "home"
    deep = _deep_header_file(tmp_path / "deep.safetensors")
    code, _, err = cli("models", "import", str(deep), "--home", str(home))
    assert code == EXIT_MODEL and "nests more than" in err and "deep.safetensors" in err
    _deep_header_file(home / "models" / "copied.safetensors")  # dropped into the folder by hand
    code, _, err = cli("models", "info", "copied", "--home", str(home))
    assert code == EXIT_MODEL and "nests more than" in err
    code, _, err = cli(*generate(deep, home))
    assert code == EXIT_MODEL and "nests more than" in err and "Traceback" not in err


# --------------------------------------------------------------------- 4: FIFOs and devices as files


@no_fifos
def test_model_index_that_is_a_fifo_or_dev_zero_is_refused_not_read(tmp_path, tiny_sd15_dir):
    fifo = shutil.copytree(tiny_sd15_dir, tmp_path / "fifo")
    (fifo / "model_index.json").unlink()
    os.mkfifo(fifo / "model_index.json")
    zero = shutil.copytree(tiny_sd15_dir, tmp_path / "zero")
    (zero / "model_index.json").unlink()
    (zero / "model_index.json").symlink_to("/dev/zero")
    home = str(tmp_path / "home")
    for folder, kind in ((fifo, "named pipe"), (zero, "device")):
        done = marble("models", "import", str(folder), "--home", home, timeout=60)
        assert done.returncode == EXIT_MODEL, done.stderr
        assert "model_index.json" in done.stderr and kind in done.stderr and "Traceback" not in done.stderr
    done = marble(*generate(fifo, tmp_path / "home"), timeout=120)
    assert done.returncode == EXIT_MODEL and "named pipe" in done.stderr


@no_fifos
def test_a_fifo_among_a_folders_configs_or_as_the_library_index_is_refused(tmp_path, tiny_sd15_dir):
    folder = shutil.copytree(tiny_sd15_dir, tmp_path / "model")
    (folder / "text_encoder" / "config.json").unlink()
    os.mkfifo(folder / "text_encoder" / "config.json")
    done = marble("models", "import", str(folder), "--home", str(tmp_path / "home"), timeout=60)
    assert done.returncode == EXIT_MODEL and "text_encoder/config.json" in done.stderr
    assert "named pipe" in done.stderr
    home = tmp_path / "other"
    home.mkdir()
    os.mkfifo(home / "library.json")
    done = marble("models", "list", "--home", str(home), timeout=60)
    assert done.returncode == EXIT_MODEL and "library index" in done.stderr and "named pipe" in done.stderr


# -------------------------------------------------------------------- 5: parts missing from a checkpoint


def _without(source: Path, target: Path, prefix: str, keep: str = "\0") -> Path:
    tensors = {k: v for k, v in load_file(str(source)).items() if not k.startswith(prefix) or k.endswith(keep)}
    save_file(tensors, str(target))
    return target


def test_a_checkpoint_without_text_encoder_weights_is_a_model_error(tmp_path, tiny_sd15_single):
    source, config = tiny_sd15_single
    # The token embedding alone keeps it detectable as SD 1.x.
    broken = _without(source, tmp_path / "unet-only.safetensors", "cond_stage_model.", "token_embedding.weight")
    code, _, err = cli(*generate(broken, tmp_path / "home", "--config", str(config)))
    assert code == EXIT_MODEL, err
    assert "text-encoder weights are missing" in err and "Traceback" not in err and len(err.splitlines()) <= 2
    code, _, err = cli("models", "import", str(broken), "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL and "text-encoder weights are missing" in err


def test_a_checkpoint_missing_another_part_is_a_model_error(tmp_path, tiny_sd15_single):
    source, config = tiny_sd15_single
    broken = _without(source, tmp_path / "no-vae.safetensors", "first_stage_model.")
    code, _, err = cli(*generate(broken, tmp_path / "home", "--config", str(config)))
    assert code == EXIT_MODEL, err
    assert "no-vae.safetensors" in err and "Traceback" not in err


# ---------------------------------------------------------------------- 8 and 11: names, by the bytes


EMOJI = "\U0001f600"  # 4 bytes in UTF-8, 2 units in UTF-16


def test_names_are_limited_by_the_file_systems_bytes(tmp_path, tiny_sd15_single):
    home = str(tmp_path / "home")
    source = str(tiny_sd15_single[0])
    code, _, err = cli("models", "import", source, "--name", EMOJI * 70, "--home", home)
    assert code == EXIT_BAD_INPUT and "bytes" in err and "Traceback" not in err
    # The hidden copy ".NAME.safetensors.partial" is the longest name written: 21 bytes over the name.
    longest = EMOJI * 58 + "ab"  # 234 bytes: 255 with the additions
    code, out, err = cli("models", "import", source, "--name", longest, "--home", home)
    assert code == 0, err
    assert (tmp_path / "home" / "models" / f"{longest}.safetensors").is_file()
    code, _, err = cli("models", "rename", longest, longest + "c", "--home", home)
    assert code == EXIT_BAD_INPUT and "255" in err
    code, _, err = cli(*generate(EMOJI * 70, tmp_path / "home"))
    assert code == EXIT_MODEL and "No model named" in err


@pytest.mark.parametrize("name", ["c1\u0085x", "del\x7fname", "evil\u202egnp", "iso\u2066late", "bell\x07"])
def test_control_and_bidi_characters_are_refused_in_names(tmp_path, tiny_sd15_single, name):
    code, _, err = cli("models", "import", str(tiny_sd15_single[0]), "--name", name, "--home", str(tmp_path))
    assert code == EXIT_BAD_INPUT and "control or text-direction character" in err
    assert not list((tmp_path / "models").glob("*.safetensors"))


def test_names_are_stored_nfc_and_found_however_typed(tmp_path, tiny_sd15_single):
    home = str(tmp_path / "home")
    decomposed = unicodedata.normalize("NFD", "café")
    code, _, err = cli("models", "import", str(tiny_sd15_single[0]), "--name", decomposed, "--home", home)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "home" / "models").iterdir()] == ["café.safetensors"]
    for typed in ("café", decomposed):
        code, out, err = cli("models", "info", typed, "--home", home)
        assert code == 0 and "SD 1.x" in out, err


# ------------------------------------------------------------------------ 10: escapes reach no terminal


def test_models_info_and_list_print_control_characters_escaped(tmp_path, tiny_sd15_single):
    home = tmp_path / "home"
    tensors = load_file(str(tiny_sd15_single[0]))
    hostile = "\x1b[2J\x1b]0;pwned\x07line\rover\u202eevil"
    models = home / "models"
    models.mkdir(parents=True)
    save_file(tensors, str(models / "meta.safetensors"), metadata={"notes": hostile, "key\x1b[31m": "v"})
    shutil.copy(models / "meta.safetensors", models / "file\x1b[2J.safetensors")  # a hand-copied name
    code, out, err = cli("models", "info", "meta", "--home", str(home))
    assert code == 0, err
    assert not any(c in out for c in "\x1b\x07\r\u202e")
    assert "\\x1b[2J\\x1b]0;pwned\\x07line\\rover\\u202eevil" in out and "key\\x1b[31m" in out
    code, out, _ = cli("models", "list", "--home", str(home))
    assert code == 0 and "file\\x1b[2J" in out and "\x1b" not in out


def test_generate_prints_names_from_paths_escaped(tmp_path):
    model = tmp_path / "x\x1b]0;pwned\x07.safetensors"
    model.write_bytes(b"garbage, not a model")
    code, out, err = cli(*generate(model, tmp_path / "home"))
    assert code == EXIT_MODEL
    assert "\x1b" not in err + out and "\x07" not in err + out and "\\x1b]0;pwned\\x07" in err


# ------------------------------------------------------- 14: messages name the user's file, clean text


def test_import_messages_name_the_users_file_not_the_hidden_copy(tmp_path, tiny_sd15_single):
    data = tiny_sd15_single[0].read_bytes()
    truncated = tmp_path / "x.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = cli("models", "import", str(truncated), "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL
    assert "x.safetensors is truncated" in err and ".partial" not in err


def test_torch_refusal_text_reaches_the_user_without_terminal_codes(tmp_path):
    # A pickle of an object of a class torch does not allow: weights_only refuses it (nothing is run),
    # and torch's refusal of a global bolds words with ANSI codes.
    source = tmp_path / "evil.ckpt"
    source.write_bytes(b"\x80\x02cmarble_test\nThing\nq\x00)\x81q\x01.")
    code, _, err = cli("models", "import", str(source), "--convert-pickle", "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL and "evil.ckpt was not converted" in err
    assert "\x1b" not in err and "\\x1b" not in err
    assert not any(unicodedata.category(c) == "Cc" for c in err.replace("\n", ""))  # no control characters
