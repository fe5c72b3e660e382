"""What the window holds survives a restart: prompts, parameters, the canvas's settings, and the last
parameters of each model family.

On close the window's contents go into the settings store's session (saved with the settings); at
start they come back. The model is put back once the background scan has listed it, since the model
box is empty until then. Choosing a model of another family (SD 1.x, SD 2.x, SDXL, ...) brings back
the size, steps, CFG and sampler last used with that family, the way a creator switches between an
SD 1.5 and an SDXL model without retyping them. Device and memory mode are settings (Edit >
Settings): the panel's choice at close is written there, so both places agree.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import QEvent, QObject, QTimer, Slot

from desktop.engine.errors import MarbleError
from desktop.engine.request import ControlUnit, GenerationRequest, LayoutBox, LoraRef, boxes_following_references
from desktop.engine.settings import SettingsStore
from desktop.ui.main_window import MainWindow
from desktop.ui.parameter_model import PARAMETER_FIELDS, Parameters
from desktop.ui.reference_images_row import present_files

log = logging.getLogger(__name__)

# What a model family brings back when it is chosen: what suits one family ruins another.
FAMILY_FIELDS: tuple[str, ...] = (
    "sampler", "steps", "cfg_scale", "distilled_cfg_scale", "width", "height", "clip_skip",
)
# Owned by the settings (Edit > Settings), not by the session.
_SETTING_FIELDS = {"device": "device", "memory_mode": "memory_mode"}
# The canvas toolbar's own settings, by widget attribute; the source image and mask are not kept.
_TOOLBAR_COMBOS = ("mode_combo", "area_combo", "resize_combo")
_TOOLBAR_VALUES = ("strength_slider", "blur_spin", "padding_spin")


def parameters_to_json(parameters: Parameters) -> dict[str, Any]:
    values = dataclasses.asdict(parameters)
    values["loras"] = [[lora.name, lora.weight] for lora in parameters.loras]
    return values


def parameters_from_json(values: Mapping[str, Any], base: Parameters) -> Parameters:
    """`base` with each stored field that has the right type; a damaged field keeps `base`'s value."""
    changes: dict[str, Any] = {}
    for name in PARAMETER_FIELDS:
        if name not in values:
            continue
        value, default = values[name], getattr(base, name)
        if name == "loras":
            loras = _loras(value)
            if loras is not None:
                changes[name] = loras
        elif name == "reference_images":
            if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
                changes[name] = tuple(value)
        elif name == "controls":
            controls = _controls(value)
            if controls is not None:
                changes[name] = controls
        elif name == "layout_boxes":
            boxes = _layout_boxes(value)
            if boxes is not None:
                changes[name] = boxes
        elif isinstance(default, bool):
            if isinstance(value, bool):
                changes[name] = value
        elif isinstance(default, int):
            if isinstance(value, int) and not isinstance(value, bool):
                changes[name] = value
        elif isinstance(default, float):
            if isinstance(value, int | float) and not isinstance(value, bool):
                changes[name] = float(value)
        elif isinstance(value, type(default)):
            changes[name] = value
    return dataclasses.replace(base, **changes)


def _controls(value: Any) -> tuple[ControlUnit, ...] | None:
    """The stored units (`asdict` wrote them), each validated as a request would; None when damaged."""
    if not isinstance(value, list):
        return None
    try:
        units = GenerationRequest.from_dict({"prompt": "", "model": "", "controls": value}).controls
        for index, unit in enumerate(units):
            if unit.image:  # an empty image is allowed here: the panel asks for one
                unit.validate(index)
    except (MarbleError, TypeError, ValueError):
        return None
    return units


def _layout_boxes(value: Any) -> tuple[LayoutBox, ...] | None:
    """The stored boxes (`asdict` wrote them); None when damaged. A box still without its description is kept: the
    panel asks for one."""
    if not isinstance(value, list):
        return None
    try:
        boxes = GenerationRequest.from_dict({"prompt": "", "model": "", "layout_boxes": value}).layout_boxes
        for number, box in enumerate(boxes, 1):
            box.validate(number, described=False)
    except (MarbleError, TypeError, ValueError):
        return None
    return boxes


def _loras(value: Any) -> tuple[LoraRef, ...] | None:
    if not isinstance(value, list):
        return None
    loras = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            return None
        if isinstance(item[1], bool) or not isinstance(item[1], int | float):
            return None
        loras.append(LoraRef(item[0], float(item[1])))
    return tuple(loras)


class SessionMemory(QObject):
    """Keeps the window's contents in `store` at close and puts them back with `restore`."""

    def __init__(self, window: MainWindow, store: SettingsStore) -> None:
        super().__init__(window)
        self._window = window
        self._store = store
        self._families: dict[str, str] = {}
        self._pending_model = ""
        self._family = ""
        # The current family's values as the user left them. A model change sets the new family's defaults in
        # the same update as the model (parameter_panel), so by the time "model" is announced the parameters
        # already hold them; the values to remember for the family being left are these.
        self._family_values = self._values_of(window.parameters.parameters)
        window.families_listed.connect(self._on_families_listed)
        window.models_listed.connect(self._on_models_listed)
        window.parameters.field_changed.connect(self._on_field_changed)
        # Filters run newest first: installed after the settings' own, this one fills the store
        # before that one saves it at close.
        window.installEventFilter(self)

    def restore(self) -> None:
        """Put back what the window held at its last close (nothing when there was no such close)."""
        session = self._store.session()
        parameters = session.get("parameters")
        if isinstance(parameters, dict):
            current = self._window.parameters.parameters
            restored = parameters_from_json(parameters, current)
            for name in _SETTING_FIELDS:  # the settings decide these
                restored = dataclasses.replace(restored, **{name: getattr(current, name)})
            # Reference pictures deleted since the last close are left out and named, as a reused recipe's are.
            present, missing = present_files(restored.reference_images)
            if missing:
                boxes = boxes_following_references(restored.layout_boxes, restored.reference_images, present)
                restored = dataclasses.replace(restored, reference_images=present, layout_boxes=boxes)
                self._window.message_bar.show_message(self.tr(
                    "Reference images no longer there, left out: {files}"
                ).format(files=", ".join(missing)), "warning")  # fmt: skip
            # The model box is empty until the scan lists the models; the model waits for it.
            self._pending_model = restored.model
            self._window.parameters.set_parameters(dataclasses.replace(restored, model=current.model))
        prompt, negative = session.get("prompt"), session.get("negative_prompt")
        if isinstance(prompt, str) and isinstance(negative, str):
            self._window.prompt_editor.set_prompts(prompt, negative)
        self._restore_toolbar(session.get("canvas"))

    def remember(self) -> None:
        """Put the window's contents into the store (the settings' save writes them)."""
        parameters = self._window.parameters.parameters
        if self._family:
            self._remember_family(self._family, parameters)
        session = {
            "parameters": parameters_to_json(parameters),
            "prompt": self._window.prompt_editor.prompt(),
            "negative_prompt": self._window.prompt_editor.negative_prompt(),
            "canvas": self._toolbar_values(),
        }
        self._store.set_session(session)
        for field, key in _SETTING_FIELDS.items():
            try:
                self._store.set(key, getattr(parameters, field))
            except (KeyError, ValueError):
                log.warning("not kept as a setting: %s=%r", key, getattr(parameters, field))

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self._window and event.type() == QEvent.Type.Close:
            self.remember()
        return False

    # --------------------------------------------------------------------------- model families

    @Slot(object)
    def _on_families_listed(self, families: dict[str, str]) -> None:
        self._families = dict(families)

    @Slot(list)
    def _on_models_listed(self, names: list[str]) -> None:
        if self._pending_model and self._pending_model in names:
            self._window.parameters.update(model=self._pending_model)
        self._pending_model = ""
        self._family = self._families.get(self._window.parameters.value("model"), "")

    @Slot(str, object)
    def _on_field_changed(self, name: str, value: object) -> None:
        if name in FAMILY_FIELDS:
            self._family_values[name] = value
            return
        if name != "model":
            return
        family = self._families.get(str(value), "")
        if family == self._family:
            return
        if self._family:
            self._store.set_last_parameters(self._family, dict(self._family_values))
        # The rest of this update's announcements (the new family's defaults) then refresh the copy.
        self._family_values = self._values_of(self._window.parameters.parameters)
        self._family = family
        saved = self._store.last_parameters(family) if family else {}
        if saved:
            # After the panel's own reaction to the new model (its native size), which this overrides.
            QTimer.singleShot(0, lambda: self._apply_family(family, saved))

    def _apply_family(self, family: str, saved: Mapping[str, Any]) -> None:
        if family != self._family:
            return  # the user moved on to another model meanwhile
        model = self._window.parameters
        restored = parameters_from_json({k: v for k, v in saved.items() if k in FAMILY_FIELDS}, model.parameters)
        model.set_parameters(restored)

    def _remember_family(self, family: str, parameters: Parameters) -> None:
        self._store.set_last_parameters(family, self._values_of(parameters))

    @staticmethod
    def _values_of(parameters: Parameters) -> dict[str, Any]:
        values = parameters_to_json(parameters)
        return {name: values[name] for name in FAMILY_FIELDS}

    # ---------------------------------------------------------------------------------- canvas

    def _toolbar_values(self) -> dict[str, Any]:
        toolbar = self._window.canvas_toolbar
        values: dict[str, Any] = {name: getattr(toolbar, name).currentData() for name in _TOOLBAR_COMBOS}
        values.update({name: getattr(toolbar, name).value() for name in _TOOLBAR_VALUES})
        return values

    def _restore_toolbar(self, values: object) -> None:
        if not isinstance(values, dict):
            return
        toolbar = self._window.canvas_toolbar
        for name in _TOOLBAR_COMBOS:
            combo = getattr(toolbar, name)
            index = combo.findData(values.get(name))
            if index >= 0:
                combo.setCurrentIndex(index)
        for name in _TOOLBAR_VALUES:
            value = values.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                getattr(toolbar, name).setValue(value)
