"""The settings store: what is saved is read back at the next start, and a bad file never stops one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from desktop.engine.errors import StorageError
from desktop.engine.settings import INTEGER, SETTINGS, Setting, SettingsStore


def test_saved_settings_and_state_are_read_back_by_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "config" / "settings.json"
    store = SettingsStore.open(path)
    assert store.values() == store.defaults()
    assert store.problems == []
    store.update({"theme": "light", "preview_every": 5, "device": "cpu", "memory_mode": "tiled",
                  "output_folder": str(tmp_path / "pictures")})
    store.set_last_parameters("sdxl", {"steps": 30, "sampler": "DPM++ 2M", "cfg": 6.5})
    store.save_window_state({"geometry": b"\x01\xd9\xd0\xcb\x00", "splitter.main": bytes(range(256))})
    store.save()

    again = SettingsStore.open(path)
    assert again.values() == store.values()
    assert again.get("theme") == "light" and again.get("preview_every") == 5
    assert again.last_parameters("sdxl") == {"steps": 30, "sampler": "DPM++ 2M", "cfg": 6.5}
    assert again.last_parameters("sd15") == {}
    assert again.window_state() == {"geometry": b"\x01\xd9\xd0\xcb\x00", "splitter.main": bytes(range(256))}
    assert json.loads(path.read_text())["schema_version"] == 1
    # Written through a temporary file and a rename: nothing else is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["settings.json"]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe garbage", b"[1, 2, 3]", b"[" * 5000])
def test_a_corrupt_file_gives_the_defaults_and_a_warning(tmp_path: Path, caplog, content: bytes) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="desktop.engine.settings"):
        store = SettingsStore.open(path)
    assert store.values() == store.defaults()
    assert len(store.problems) == 1
    assert str(path) in store.problems[0] and "default settings" in store.problems[0]
    assert store.problems[0] in caplog.text
    # The next save replaces the damaged file with a good one.
    store.set("theme", "light")
    store.save()
    assert SettingsStore.open(path).get("theme") == "light"


def test_bad_values_are_clamped_or_replaced_by_defaults(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"schema_version": 1, "settings": {
        "theme": "purple", "preview_every": 1000, "device": 7, "memory_mode": "tiled",
        "output_folder": ["not", "a", "path"], "no_such_setting": 1,
    }, "window_state": {"geometry": "%%% not base64", "state": "AAE="}, "last_parameters": {"sd15": "x"}}))
    store = SettingsStore.open(path)
    assert store.get("theme") == "dark"
    assert store.get("preview_every") == 50
    assert store.get("device") == "auto"
    assert store.get("memory_mode") == "tiled"
    assert store.get("output_folder") == ""
    assert store.window_state() == {"state": b"\x00\x01"}
    assert store.last_parameters("sd15") == {}
    assert len(store.problems) == 4
    assert any("'purple' is not one of dark, light, system" in problem for problem in store.problems)
    assert any("1000 is out of range; using 50" in problem for problem in store.problems)


def test_set_refuses_what_a_setting_cannot_hold(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "settings.json")
    with pytest.raises(ValueError, match="not one of"):
        store.set("theme", "neon")
    with pytest.raises(ValueError, match="not a whole number"):
        store.set("preview_every", True)
    assert store.set("preview_every", -3) == 0
    with pytest.raises(KeyError):
        store.set("nope", 1)
    assert store.update({"theme": "dark", "preview_every": 2}) == ["preview_every"]


def test_a_missing_file_is_no_problem_and_an_unwritable_folder_is_a_sentence(tmp_path: Path) -> None:
    store = SettingsStore.open(tmp_path / "config" / "settings.json")
    assert store.problems == [] and store.values() == store.defaults()
    blocker = tmp_path / "config"
    blocker.write_text("a file where the config folder should be")
    store = SettingsStore(blocker / "settings.json")
    with pytest.raises(StorageError, match="Could not save the settings"):
        store.save()


def test_every_declaration_has_a_title_help_and_a_valid_default() -> None:
    keys = [setting.key for setting in SETTINGS]
    assert len(keys) == len(set(keys))
    assert {"theme", "preview_every", "memory_mode", "device", "output_folder", "models_folder"} <= set(keys)
    for setting in SETTINGS:
        assert setting.title and setting.help.endswith(".")
        assert setting.coerce(setting.default) == setting.default
    extra = Setting("steps_hint", "Steps", "How many.", INTEGER, 20, minimum=1, maximum=150)
    assert extra.coerce(0) == 1 and extra.coerce(151.0) == 150
