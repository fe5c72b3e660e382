"""The frozen app's data list (installer/bundle.py, read by installer/marble.spec) covers what the app
reads from resources/ at run time. Fast: a bundle is laid out from the list, no PyInstaller build."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from desktop.engine.resources import CONFIG_NAMES, Resources
from desktop.engine.token_count import TokenCounter
from installer.bundle import NOT_BUNDLED, data_entries, resource_files
from tests.support.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]


def lay_out_bundle(target: Path) -> Path:
    """Copy exactly what the spec bundles, where it bundles it (PyInstaller's datas semantics)."""
    for source, destination in data_entries(ROOT):
        folder = target / destination
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / Path(source).name)
    return target


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return lay_out_bundle(tmp_path_factory.mktemp("frozen") / "_internal")


def test_every_resource_is_bundled_unless_excluded_with_a_reason():
    on_disk = {path.relative_to(ROOT).as_posix() for path in (ROOT / "resources").rglob("*") if path.is_file()}
    bundled = {path.relative_to(ROOT).as_posix() for path in resource_files(ROOT)}
    assert on_disk - bundled == set(NOT_BUNDLED)
    assert all(reason.strip() for reason in NOT_BUNDLED.values())
    assert bundled and all(destination.startswith("resources") for _, destination in data_entries(ROOT))


def test_only_the_resources_module_locates_resources():
    # Any other module building its own path to resources/ would miss the frozen app's bundle.
    offenders = []
    for path in (ROOT / "desktop").rglob("*.py"):
        if path.name == "resources.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "_MEIPASS" in text or '"resources"' in text or "'resources'" in text:
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_the_app_runs_from_a_bundle_laid_out_from_the_data_list(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    resources = Resources.default()
    assert resources.root == bundle / "resources"
    for name in CONFIG_NAMES:
        folder = resources.config_folder(name)
        source = ROOT / "resources" / "configs" / name
        assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == sorted(
            p.relative_to(source) for p in source.rglob("*")
        )
    # One copy of the CLIP tokenizer files in the data list (issue 23): the configs and the demo model use it.
    assert (resources.tokenizer_folder() / "merges.txt").is_file()
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("vocab.json")) == [
        "resources/tokenizers/clip/vocab.json"
    ]
    counter = TokenCounter.from_merges_file(resources.tokenizers / "clip" / "merges.txt")
    assert counter.tokens("a photo of a cat") == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]

    # The real command line, as the frozen `marble` runs it: demo model installed from the bundle, one image.
    code, out, err = run_cli("generate", "--prompt", "a red circle", "--steps", "2", "--seed", "3", "--no-preview",
                             "--home", str(tmp_path / "home"))
    assert code == 0, err
    (image,) = [Path(line) for line in out.splitlines() if line.endswith(".png")]
    assert image.is_file()
