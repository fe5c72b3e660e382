"""`marble models|loras ...` and `marble generate --lora`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from desktop.cli import EXIT_MODEL
from desktop.engine.library.checkpoint import autov3_hash
from desktop.engine.metadata import read_text_chunks
from tests.support import tiny_loras, tiny_models
from tests.support.cli_runner import run_cli

cli = run_cli


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-lora")
    tensors = tiny_loras.kohya_state_dict(tiny_models.build_tiny_sd15(), seed=11)
    return tiny_loras.save_lora(tensors, folder / "detail.safetensors")


def test_models_import_list_info_remove(tmp_path, tiny_sd15_single):
    home = str(tmp_path / "home")
    source, _ = tiny_sd15_single
    code, out, err = cli("models", "import", str(source), "--name", "tiny", "--json", "--home", home)
    assert code == 0, err
    imported = json.loads(out)
    assert imported["name"] == "tiny" and imported["architecture"] == "SD 1.x" and len(imported["autov2"]) == 10

    code, out, _ = cli("models", "list", "--json", "--home", home)
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert listed["name"] == "tiny" and listed["path"].endswith("tiny.safetensors") and listed["folder"] is False

    code, out, _ = cli("models", "info", "tiny", "--home", home)
    assert code == 0 and "SD 1.x" in out and imported["sha256"] in out

    code, out, err = cli("models", "remove", "tiny", "--home", home)
    assert code == 0 and "Removed tiny" in err
    code, out, _ = cli("models", "list", "--home", home)
    assert "No models yet" in out


def test_pickled_model_is_refused_with_an_explanation(tmp_path):
    source = tmp_path / "old.ckpt"
    torch.save({"w": torch.ones(2)}, source)
    code, out, err = cli("models", "import", str(source), "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL
    assert "pickled PyTorch checkpoint" in err and "--convert-pickle" in err and "Traceback" not in err


def test_unknown_names_are_clear_errors(tmp_path):
    code, _, err = cli("loras", "info", "../../etc/passwd", "--home", str(tmp_path / "home"))
    assert code == EXIT_MODEL and "No LoRA named '../../etc/passwd'" in err


def test_generate_with_lora_flags_and_tags(tmp_path, tiny_sd15_dir, lora_file):
    home = str(tmp_path / "home")
    code, out, err = cli("loras", "import", str(lora_file), "--home", home)
    assert code == 0, err
    assert "LoRA" in out
    code, out, _ = cli("loras", "list", "--json", "--home", home)
    assert json.loads(out)["name"] == "detail"

    def generate(*extra: str) -> tuple[int, Path]:
        target = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.png"
        code, _, err = cli(
            "generate", "--model", str(tiny_sd15_dir), "--prompt", "a fox", "--steps", "2", "--seed", "5",
            "--width", "64", "--height", "64", "--device", "cpu", "--no-preview", "--out", str(target),
            "--home", home, *extra,
        )  # fmt: skip
        assert code == 0, err
        return code, target

    _, plain = generate()
    _, zero = generate("--lora", "detail:0")
    _, full = generate("--lora", "detail:1")
    assert zero.read_bytes() != b"" and _pixels(zero) == _pixels(plain)
    assert _pixels(full) != _pixels(plain)
    parameters = read_text_chunks(full)["parameters"]
    assert f'Lora hashes: "detail: {autov3_hash(lora_file)}"' in parameters
    # Through the prompt tag instead of the flag: the same image.
    code, target = generate("--prompt", "a fox <lora:detail:1>")
    assert _pixels(target) == _pixels(full)

    code, _, err = cli(
        "generate", "--model", str(tiny_sd15_dir), "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64",
        "--device", "cpu", "--home", home, "--lora", "missing:1",
    )  # fmt: skip
    assert code == EXIT_MODEL and "No LoRA named 'missing'" in err


def _pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()
