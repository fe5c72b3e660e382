"""A combo box of library names that keeps a name the library lacks (from a recipe, the history or a
restart), so a job can say clearly that it is missing instead of silently using another."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox


def fill_names(combo: QComboBox, names: Sequence[str], missing_tip: str) -> None:
    """The library's names, keeping the chosen one (marked with `missing_tip` when it is not among them)."""
    current = chosen_name(combo)
    combo.clear()
    for name in names:
        combo.addItem(name, name)
    if current:
        select_name(combo, current, missing_tip)


def select_name(combo: QComboBox, name: str, missing_tip: str) -> None:
    index = combo.findData(name)
    if index < 0:
        combo.addItem(name, name)
        index = combo.count() - 1
        combo.setItemData(index, missing_tip, Qt.ItemDataRole.ToolTipRole)
    combo.setCurrentIndex(index)


def chosen_name(combo: QComboBox) -> str:
    data = combo.currentData()
    return data if isinstance(data, str) else ""
