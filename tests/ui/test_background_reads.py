"""The window's models scan (desktop/ui/background_reads.py): overlapping scans never let an older answer replace a
newer one (the library changing twice in a row starts two)."""

from __future__ import annotations

from PySide6.QtCore import QThreadPool

from desktop.engine.library.catalog import ModelCatalog
from desktop.ui.background_reads import BackgroundReads, _Scan


def _scan(family: str) -> _Scan:
    return _Scan(["m"], {}, {"m": family}, "", frozenset(), {}, frozenset(), None)


def test_an_older_scan_finishing_last_is_dropped(qtbot, tmp_path) -> None:
    pool = QThreadPool()
    reads = BackgroundReads(pool, ModelCatalog(tmp_path))
    families, names = [], []
    reads.families_listed.connect(families.append)
    reads.models_listed.connect(lambda listed, sizes, error: names.append(listed))
    reads._on_scanned(2, _scan("qwen-image-edit-plus"))  # the later scan answers first
    reads._on_scanned(1, _scan("qwen-image"))
    reads._on_scanned(3, _scan("qwen-image-edit"))
    assert families == [{"m": "qwen-image-edit-plus"}, {"m": "qwen-image-edit"}]
    assert names == [["m"], ["m"]]


def test_a_scan_lists_the_models_folder(qtbot, tmp_path) -> None:
    pool = QThreadPool()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "broken.safetensors").write_bytes(b"not a model")
    reads = BackgroundReads(pool, ModelCatalog(tmp_path / "models"), chosen_variants=lambda: {"broken": "edit"})
    with qtbot.waitSignal(reads.models_listed, timeout=10_000) as listed:
        reads.scan_models()
    assert listed.args[0] == ["broken"] and listed.args[2] == ""
    pool.waitForDone(5_000)
