"""The history panel's search box and filter row, and the query they describe."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from PySide6.QtCore import QT_TRANSLATE_NOOP, QTimer, Signal, Slot
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QLineEdit, QVBoxLayout, QWidget

from desktop.engine.history import HistoryQuery
from desktop.ui.flow_layout import flow_row

SEARCH_DELAY_MS = 250
_DAY = 86_400.0
DATE_RANGES = (
    (QT_TRANSLATE_NOOP("HistoryFilters", "Any time"), None),
    (QT_TRANSLATE_NOOP("HistoryFilters", "Today"), 0),
    (QT_TRANSLATE_NOOP("HistoryFilters", "Last 7 days"), 7),
    (QT_TRANSLATE_NOOP("HistoryFilters", "Last 30 days"), 30),
)


class HistoryFilters(QWidget):
    """Search text, model, date range, favourites, trash and order.

    Signals:
        changed(): the query changed (typing is debounced by SEARCH_DELAY_MS; Enter applies at once).
        trash_toggled(bool): the trash view was switched on or off (`changed` follows).
    """

    changed = Signal()
    trash_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.apply)
        self.search_edit = QLineEdit(objectName="history_search", placeholderText=self.tr("Search prompts"))
        self.search_edit.setClearButtonEnabled(True)
        self.model_combo = QComboBox(objectName="history_model_filter")
        self.date_combo = QComboBox(objectName="history_date_filter")
        for label, days in DATE_RANGES:
            self.date_combo.addItem(self.tr(label), days)
        self.favourites_check = QCheckBox(self.tr("★ only"), objectName="history_favourites_filter")
        self.sort_combo = QComboBox(objectName="history_sort")
        self.sort_combo.addItem(self.tr("Newest first"), True)
        self.sort_combo.addItem(self.tr("Oldest first"), False)
        self.trash_check = QCheckBox(self.tr("Trash"), objectName="history_trash_view")
        self.count_label = QLabel(objectName="history_count")
        self.set_models([])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.search_edit)
        # A row that wraps, so the docked panel fits a narrow column of a 1280 px window.
        layout.addWidget(flow_row(self.model_combo, self.date_combo, self.favourites_check, self.trash_check,
                                  self.sort_combo, self.count_label))

        self.search_edit.textChanged.connect(lambda _: self._search_timer.start())
        self.search_edit.returnPressed.connect(self.apply)
        for combo in (self.model_combo, self.date_combo, self.sort_combo):
            combo.activated.connect(lambda _: self.apply())
        self.favourites_check.toggled.connect(lambda _: self.apply())
        self.trash_check.toggled.connect(self._on_trash_toggled)

    def query(self) -> HistoryQuery:
        days = self.date_combo.currentData()
        since = None
        if days is not None:
            midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
            since = midnight - days * _DAY
        return HistoryQuery(
            text=self.search_edit.text().strip(),
            model=self.model_combo.currentData() or None,
            favourites_only=self.favourites_check.isChecked(),
            since=since,
            trashed=self.trash_check.isChecked(),
            newest_first=bool(self.sort_combo.currentData()),
        )

    @Slot()
    def apply(self) -> None:
        self._search_timer.stop()
        self.changed.emit()

    def set_models(self, names: Sequence[str]) -> None:
        """The models the history holds, keeping the chosen one when it is still there."""
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem(self.tr("All models"), None)
        for name in names:
            self.model_combo.addItem(name, name)
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(current)))
        self.model_combo.blockSignals(False)

    def set_count(self, total: int) -> None:
        text = self.tr("1 image") if total == 1 else self.tr("{count} images").format(count=f"{total:,}")
        self.count_label.setText(text)

    @Slot(bool)
    def _on_trash_toggled(self, trash: bool) -> None:
        self.trash_toggled.emit(trash)
        self.apply()
