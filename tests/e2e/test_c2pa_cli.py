"""`marble generate --c2pa / --no-c2pa` over the C2PA signing setting, read back with the c2pa library."""

from __future__ import annotations

import io
import json

import c2pa
import pytest

from desktop.cli import EXIT_BAD_INPUT
from desktop.engine.paths import AppPaths
from desktop.engine.provenance import create_signing_key
from desktop.engine.settings import SettingsStore
from tests.support.cli_runner import run_cli


def generate(home, model, *extra: str) -> tuple[int, str, str]:
    return run_cli("generate", "--home", str(home), "--model", str(model), "--prompt", "a red circle",
                   "--steps", "2", "--seed", "3", "--width", "64", "--height", "64", "--device", "cpu",
                   "--no-preview", "--json", *extra)


def written(stdout: str) -> bytes:
    finished = [json.loads(line) for line in stdout.splitlines() if '"finished"' in line][-1]
    with open(finished["paths"][0], "rb") as stream:
        return stream.read()


def is_signed(data: bytes) -> bool:
    try:
        with c2pa.Reader("image/png", io.BytesIO(data)) as reader:
            return reader.get_active_manifest()["claim_generator_info"][0]["name"] == "Marble Studio"
    except c2pa.C2paError:
        return False


def set_c2pa(home, on: bool) -> None:
    store = SettingsStore.open(AppPaths.for_root(home).settings_file)
    store.set("c2pa", on)
    store.save()


def test_c2pa_without_a_key_fails_before_loading_and_says_how_to_make_one(tmp_path, tiny_sd15_dir):
    code, stdout, stderr = generate(tmp_path / "home", tiny_sd15_dir, "--c2pa")
    assert code == EXIT_BAD_INPUT
    assert "Create signing key" in stdout + stderr and "Traceback" not in stdout + stderr
    assert not list((tmp_path / "home").rglob("*.png"))


@pytest.mark.parametrize(("setting", "flag", "signed"), [
    (False, None, False), (False, "--c2pa", True), (True, None, True), (True, "--no-c2pa", False),
])
def test_the_flag_overrides_the_setting(tmp_path, tiny_sd15_dir, setting, flag, signed):
    home = tmp_path / "home"
    create_signing_key(AppPaths.for_root(home).config)
    set_c2pa(home, setting)
    code, stdout, stderr = generate(home, tiny_sd15_dir, *([flag] if flag else []))
    assert code == 0, stderr
    assert is_signed(written(stdout)) is signed
