"""First start: the shipped demo model goes into the library once, marked as the demo; choosing a model
can bring the size it was trained at."""

from __future__ import annotations

import json
import shutil

from desktop.app import install_demo
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import DEMO_MODEL_NAME, demo_model_name, install_demo_model
from desktop.engine.library.index import Library
from desktop.engine.library.native_size import native_size
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources


def test_first_start_installs_the_demo_once_and_marks_it(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    record = install_demo_model(library, tiny_sd15_dir, paths.config)
    assert record is not None and record.demo and record.name == DEMO_MODEL_NAME
    assert ModelCatalog(paths.models).names() == [DEMO_MODEL_NAME]
    assert demo_model_name(library) == DEMO_MODEL_NAME
    stored = json.loads(paths.library_index.read_text())["entries"]["model"][DEMO_MODEL_NAME]
    assert stored["demo"] is True and stored["architecture"].startswith("SD 1")
    # Second start: nothing to do.
    assert install_demo_model(library, tiny_sd15_dir, paths.config) is None
    # Renamed, it is still the demo; removed, it does not come back.
    library.rename("model", DEMO_MODEL_NAME, "shapes")
    assert demo_model_name(library) == "shapes"
    library.remove("model", "shapes")
    assert install_demo_model(library, tiny_sd15_dir, paths.config) is None
    assert ModelCatalog(paths.models).names() == [] and demo_model_name(library) is None


def test_a_build_without_the_demo_installs_nothing(tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    assert install_demo_model(Library(paths), tmp_path / "missing", paths.config) is None
    assert not (paths.config / "demo-model-installed").exists()


def test_a_failed_install_says_so_and_is_tried_again_next_start(tmp_path, tiny_sd15_dir, capsys):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    broken = tmp_path / "resources"
    shutil.copytree(tiny_sd15_dir, broken / "demo-model")
    (broken / "demo-model" / "unet" / "config.json").write_text("{not json")
    install_demo(paths, Resources(broken))
    assert "could not install the demo model" in capsys.readouterr().err
    assert ModelCatalog(paths.models).names() == []
    (broken / "demo-model" / "unet" / "config.json").write_text((tiny_sd15_dir / "unet" / "config.json").read_text())
    install_demo(paths, Resources(broken))
    assert ModelCatalog(paths.models).names() == [DEMO_MODEL_NAME]


def test_native_size_comes_from_the_folder_configs_or_the_architecture(tiny_sd15_dir, tiny_sdxl_single, tmp_path):
    # Tiny SD 1.5: 8x8 latents, four VAE levels -> 64 px. A single SDXL file: SDXL's published 1024.
    assert native_size(tiny_sd15_dir) == 64
    assert native_size(tiny_sdxl_single[0]) == 1024
    assert native_size(tmp_path / "nothing") is None
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert native_size(tmp_path / "junk.safetensors") is None
