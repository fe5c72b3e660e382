"""The LoRAs of the next job: one row per LoRA, a name picked from the library and a weight."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.request import MAX_LORA_WEIGHT, LoraRef
from desktop.ui.library_combo import chosen_name, fill_names, select_name


class _LoraRow(QWidget):
    def __init__(self, names: Sequence[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name_combo = QComboBox(objectName="lora_name_combo")
        self.name_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.name_combo.setMinimumContentsLength(10)
        self.weight_spin = QDoubleSpinBox(objectName="lora_weight_spin")
        self.weight_spin.setRange(-MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)
        self.weight_spin.setDecimals(2)
        self.weight_spin.setSingleStep(0.05)
        self.weight_spin.setValue(1.0)
        self.weight_spin.setToolTip(self.tr("LoRA weight: 0 turns it off, 1 is full strength"))
        self.remove_button = QToolButton(objectName="lora_remove_button", text="✕")
        self.remove_button.setToolTip(self.tr("Remove this LoRA"))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.name_combo, 1)
        layout.addWidget(self.weight_spin)
        layout.addWidget(self.remove_button)
        self.set_names(names)

    def set_names(self, names: Sequence[str]) -> None:
        fill_names(self.name_combo, names, self.tr("Not in the LoRA library"))

    def select(self, name: str) -> None:
        # Keep a LoRA the library lacks (from history or a PNG): the job then says clearly it is missing.
        select_name(self.name_combo, name, self.tr("Not in the LoRA library"))

    def name(self) -> str:
        return chosen_name(self.name_combo)


class LoraListWidget(QWidget):
    """Rows of (LoRA, weight), an Add button, nothing else.

    Signals:
        loras_changed(): a row was added, removed, or its LoRA or weight changed.
        few_step_chosen(str): the user picked a LoRA of this few-step kind ("lcm", ...; the library record's).
    """

    loras_changed = Signal()
    few_step_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("lora_list")
        self._names: list[str] = []
        self._few_steps: dict[str, str] = {}
        self._rows: list[_LoraRow] = []
        self._rows_layout = QVBoxLayout()
        self._rows_layout.setContentsMargins(0, 0, 0, 0)
        self._rows_layout.setSpacing(2)
        self.add_button = QPushButton(self.tr("Add LoRA"), objectName="add_lora_button")
        self.add_button.setToolTip(self.tr("Apply a LoRA from the library (or type <lora:name:weight> in the prompt)"))
        self.add_button.clicked.connect(self._add_by_user)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.add_button, 0, Qt.AlignmentFlag.AlignLeft)
        self._update_add_button()

    def set_names(self, names: Sequence[str], few_steps: Mapping[str, str] | None = None) -> None:
        """The library's LoRAs; `few_steps` maps the few-step ones to their kind (the library record's)."""
        self._names = list(names)
        self._few_steps = {name: kind for name, kind in (few_steps or {}).items() if kind}
        for row in self._rows:
            row.set_names(self._names)
        self._update_add_button()

    def names(self) -> list[str]:
        return list(self._names)

    def rows(self) -> int:
        return len(self._rows)

    @Slot()
    def add_row(self, name: str | None = None, weight: float = 1.0) -> _LoraRow:
        row = _LoraRow(self._names, self)
        if name:
            row.select(name)
        elif self._names:
            used = {r.name() for r in self._rows}
            row.select(next((n for n in self._names if n not in used), self._names[0]))
        row.weight_spin.setValue(weight)
        row.remove_button.clicked.connect(lambda: self.remove_row(row))
        row.name_combo.currentIndexChanged.connect(self.loras_changed)
        # `activated` is the user's pick only: LoRAs restored from a recipe or history keep its settings.
        row.name_combo.activated.connect(lambda _index: self._announce(row))
        row.weight_spin.valueChanged.connect(self.loras_changed)
        self._rows.append(row)
        self._rows_layout.addWidget(row)
        self.loras_changed.emit()
        return row

    @Slot()
    def _add_by_user(self) -> None:
        self._announce(self.add_row())

    def _announce(self, row: _LoraRow) -> None:
        kind = self._few_steps.get(row.name())
        if kind:
            self.few_step_chosen.emit(kind)

    def remove_row(self, row: _LoraRow) -> None:
        if row in self._rows:
            self._rows.remove(row)
            self._rows_layout.removeWidget(row)
            row.deleteLater()
            self.loras_changed.emit()

    def loras(self) -> tuple[LoraRef, ...]:
        return tuple(LoraRef(row.name(), round(row.weight_spin.value(), 2)) for row in self._rows if row.name())

    def set_loras(self, loras: Sequence[LoraRef]) -> None:
        for row in list(self._rows):
            self.remove_row(row)
        for ref in loras:
            self.add_row(ref.name, float(ref.weight))

    def _update_add_button(self) -> None:
        self.add_button.setEnabled(bool(self._names))
        if not self._names:
            self.add_button.setToolTip(self.tr("No LoRAs in the library yet: import some with File ▸ Library…"))
