"""First start: the shipped demo model goes into the library once, marked as the demo; choosing a model
can bring the size it was trained at."""

from __future__ import annotations

import json
import shutil

from desktop.app import install_demo
from desktop.engine.errors import MarbleError
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import (
    DEMO_CONTROL_NAME,
    DEMO_MODEL_NAME,
    demo_model_name,
    install_demo_control,
    install_demo_model,
)
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


def shipped_copy(tiny_sd15_dir, folder, scheduler_note: str | None = None):
    """A shipped demo folder; with a note, a later build whose scheduler config differs."""
    shutil.copytree(tiny_sd15_dir, folder)
    if scheduler_note is not None:
        config_file = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(config_file.read_text()) | {"_marble_note": scheduler_note}
        config_file.write_text(json.dumps(config))
    return folder


def installed_scheduler(library: Library, name: str) -> dict:
    record = library.get("model", name)
    return json.loads((library.path_of(record) / "scheduler" / "scheduler_config.json").read_text())


def test_a_new_build_brings_the_installed_demo_up_to_date_under_the_users_name(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    install_demo_model(library, shipped_copy(tiny_sd15_dir, tmp_path / "v1"), paths.config)
    library.rename("model", DEMO_MODEL_NAME, "shapes")
    newer = shipped_copy(tiny_sd15_dir, tmp_path / "v2", scheduler_note="build 2")

    record = install_demo_model(library, newer, paths.config)
    assert record is not None and record.name == "shapes" and record.demo
    assert installed_scheduler(library, "shapes")["_marble_note"] == "build 2"
    assert ModelCatalog(paths.models).names() == ["shapes"]  # replaced, not added beside it
    assert install_demo_model(library, newer, paths.config) is None  # and then current


def test_an_earlier_marker_with_the_same_files_changes_nothing(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    source = shipped_copy(tiny_sd15_dir, tmp_path / "v1")
    install_demo_model(library, source, paths.config)
    marker = paths.config / "demo-model-installed"
    marker.write_text("1\n")  # what the first builds wrote
    before = library.get("model", DEMO_MODEL_NAME)
    assert install_demo_model(library, source, paths.config) is None
    assert library.get("model", DEMO_MODEL_NAME) == before and marker.read_text().strip() != "1"


def test_a_removed_demo_stays_removed_when_a_new_build_ships_another(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    install_demo_model(library, shipped_copy(tiny_sd15_dir, tmp_path / "v1"), paths.config)
    library.remove("model", DEMO_MODEL_NAME)
    newer = shipped_copy(tiny_sd15_dir, tmp_path / "v2", scheduler_note="build 2")
    assert install_demo_model(library, newer, paths.config) is None
    assert ModelCatalog(paths.models).names() == []


def test_a_failed_update_keeps_the_installed_copy_and_is_tried_again(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    install_demo_model(library, shipped_copy(tiny_sd15_dir, tmp_path / "v1"), paths.config)
    newer = shipped_copy(tiny_sd15_dir, tmp_path / "v2", scheduler_note="build 2")
    unet_config = newer / "unet" / "config.json"
    good = unet_config.read_text()
    unet_config.write_text("{not json")
    try:
        install_demo_model(library, newer, paths.config)
    except (MarbleError, OSError):
        pass
    else:
        raise AssertionError("a broken shipped folder must not be installed")
    assert ModelCatalog(paths.models).names() == [DEMO_MODEL_NAME]
    assert "_marble_note" not in installed_scheduler(library, DEMO_MODEL_NAME)
    unet_config.write_text(good)
    assert install_demo_model(library, newer, paths.config) is not None
    assert installed_scheduler(library, DEMO_MODEL_NAME)["_marble_note"] == "build 2"
    assert ModelCatalog(paths.models).names() == [DEMO_MODEL_NAME]


def test_an_update_cut_short_after_the_old_copy_went_keeps_the_new_one(tmp_path, tiny_sd15_dir):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    library = Library(paths)
    install_demo_model(library, shipped_copy(tiny_sd15_dir, tmp_path / "v1"), paths.config)
    newer = shipped_copy(tiny_sd15_dir, tmp_path / "v2", scheduler_note="build 2")
    # The state a crash between removing the old copy and renaming the new one leaves.
    library.import_path(newer, "model", "marble-demo-update")
    library.remove("model", DEMO_MODEL_NAME)
    record = install_demo_model(library, newer, paths.config)
    assert record is not None and record.name == DEMO_MODEL_NAME and record.demo
    assert ModelCatalog(paths.models).names() == [DEMO_MODEL_NAME]
    assert installed_scheduler(library, DEMO_MODEL_NAME)["_marble_note"] == "build 2"


def test_first_start_installs_the_demo_controlnet_once(tmp_path):
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    install_demo(paths, Resources.default())
    library = Library(paths)
    record = library.find("control", DEMO_CONTROL_NAME)
    assert record is not None and record.kind == "control" and "ControlNet" in record.architecture
    assert ModelCatalog(paths.models).names() == [DEMO_MODEL_NAME]
    # Second start: nothing to do; removed by the user, it does not come back.
    assert install_demo_control(library, Resources.default().demo_control, paths.config) is None
    library.remove("control", DEMO_CONTROL_NAME)
    install_demo(paths, Resources.default())
    assert library.find("control", DEMO_CONTROL_NAME) is None
    # A build without it installs nothing and leaves no marker, so a later build with it installs it.
    other = AppPaths.for_root(tmp_path / "other").ensure()
    assert install_demo_control(Library(other), tmp_path / "missing.safetensors", other.config) is None
    assert install_demo_control(Library(other), Resources.default().demo_control, other.config) is not None
