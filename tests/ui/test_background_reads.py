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


def _scan_families(qtbot, models, chosen: dict[str, str]) -> dict[str, str]:
    pool = QThreadPool()
    reads = BackgroundReads(pool, ModelCatalog(models), chosen_variants=lambda: chosen)
    with qtbot.waitSignal(reads.families_listed, timeout=10_000) as listed:
        reads.scan_models()
    pool.waitForDone(5_000)
    return listed.args[0]


def test_a_scan_gives_each_model_the_family_of_the_variant_chosen_for_it(qtbot, tmp_path) -> None:
    # An ERNIE-Image file and folder (Turbo's have the base's tensors and configs): marked Turbo, they have Turbo's
    # family (its defaults, in the window); unmarked, the base's. A broken file is listed without one.
    from tests.support.tiny_ernie import build_tiny_ernie
    from tests.support.tiny_qwen_zimage import save_transformer_file

    models = tmp_path / "models"
    models.mkdir()
    pipe = build_tiny_ernie()
    save_transformer_file(dict(pipe.transformer.state_dict()), models / "ernie.safetensors")
    pipe.save_pretrained(str(models / "ernie-folder"), safe_serialization=True)
    (models / "broken.safetensors").write_bytes(b"not a model")
    marked = _scan_families(qtbot, models, {"ernie": "turbo", "ernie-folder": "turbo", "broken": "edit"})
    assert {name: marked.get(name) for name in ("ernie", "ernie-folder", "broken")} == {
        "ernie": "ernie-image-distilled", "ernie-folder": "ernie-image-distilled", "broken": None}
    plain = _scan_families(qtbot, models, {})
    assert (plain["ernie"], plain["ernie-folder"]) == ("ernie-image", "ernie-image")


def test_a_unet_model_marked_as_a_few_step_kind_has_that_kinds_family(qtbot, tmp_path, tiny_sd15_single) -> None:
    # The window's defaults for a model come from its family: an SD 1.x merge marked Turbo gets Turbo's preset.
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(tiny_sd15_single[0], models / "merge.safetensors")
    assert _scan_families(qtbot, models, {"merge": "turbo"})["merge"] == "sd1-turbo"
    assert _scan_families(qtbot, models, {})["merge"] == "sd1"
