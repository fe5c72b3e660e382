"""Every generation setting except the prompts: model, sampler, steps, CFG, seed, size, batch, text
encoder (clip skip, emphasis), device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import QSignalBlocker, Qt, Signal, Slot
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES
from desktop.engine.request import (
    DEVICES,
    EMPHASIS_MODES,
    MAX_BATCH_COUNT,
    MAX_BATCH_SIZE,
    MAX_CFG,
    MAX_CLIP_SKIP,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MEMORY_MODES,
    MIN_SIDE,
    PRECISIONS,
    RANDOM_SEED,
    GenerationRequest,
)
from desktop.ui.lora_list import LoraListWidget

SIZE_PRESETS: tuple[tuple[int, int], ...] = (
    (512, 512),
    (768, 768),
    (1024, 1024),
    (512, 768),
    (768, 512),
    (640, 960),
    (832, 1216),
    (1216, 832),
)
_DEVICE_LABELS = {"auto": "Auto", "cpu": "CPU", "cuda": "CUDA (NVIDIA)", "mps": "Apple (MPS)"}
_PRECISION_LABELS = {"auto": "Auto", "fp32": "fp32 (full)", "fp16": "fp16 (half)", "bf16": "bf16"}
_MEMORY_LABELS = {
    "auto": "Auto",
    "full": "Full (fastest)",
    "tiled": "Tiled VAE + sliced attention",
    "offload": "CPU offload (least VRAM)",
}


class SideSpinBox(QSpinBox):
    """A width or height: only multiples of 8 are acceptable; anything else snaps to the nearest one."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.setRange(MIN_SIDE, MAX_SIDE)
        self.setSingleStep(8)
        self.setSuffix(" px")
        self.setAccelerated(True)

    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        state, text, pos = super().validate(text, pos)
        if state == QValidator.State.Acceptable and self.valueFromText(text) % 8:
            # Intermediate, not Invalid: the user may be half-way through typing "1024".
            state = QValidator.State.Intermediate
        return state, text, pos

    def fixup(self, text: str) -> str:
        try:
            value = int(text.removesuffix(self.suffix()).strip())
        except ValueError:
            return text
        snapped = min(MAX_SIDE, max(MIN_SIDE, round(value / 8) * 8))
        return f"{snapped}{self.suffix()}"


class ParameterPanel(QWidget):
    """The settings of the next job, as widgets. Holds no model list of its own: the window fills it.

    Signals:
        models_refresh_requested(): the user asked to scan the models folder again.
        open_models_folder_requested(): the user wants to see the models folder in the file manager.
        emphasis_changed(str): the emphasis mode changed (by the user or a request shown), so the
            prompt editor can count brackets as the job will read them.
    """

    models_refresh_requested = Signal()
    open_models_folder_requested = Signal()
    emphasis_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._last_seed: int | None = None

        self.model_combo = QComboBox(objectName="model_combo")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(12)
        self.model_combo.setPlaceholderText("No models found")
        self._native_sizes: dict[str, int] = {}
        self._sized_for = ""  # the model whose native size the size fields were last set for
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.refresh_models_button = QToolButton(objectName="refresh_models_button", text="⟳")
        self.refresh_models_button.setToolTip("Scan the models folder again")
        self.refresh_models_button.clicked.connect(self.models_refresh_requested)

        self.models_hint = QWidget(objectName="models_hint")
        self.models_hint_label = QLabel(objectName="models_hint_label")
        self.models_hint_label.setTextFormat(Qt.TextFormat.PlainText)
        self.models_hint_label.setWordWrap(True)
        self.models_hint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_models_folder_button = QPushButton(
            "Open models folder", objectName="open_models_folder_button"
        )
        self.open_models_folder_button.clicked.connect(self.open_models_folder_requested)
        hint_layout = QVBoxLayout(self.models_hint)
        hint_layout.setContentsMargins(0, 0, 0, 0)
        hint_layout.addWidget(self.models_hint_label)
        hint_layout.addWidget(self.open_models_folder_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.models_hint.hide()

        self.sampler_combo = QComboBox(objectName="sampler_combo")
        for name in SAMPLER_NAMES:
            self.sampler_combo.addItem("Model default" if name == DEFAULT_SAMPLER else name, name)

        self.steps_spin = QSpinBox(objectName="steps_spin")
        self.steps_spin.setRange(1, MAX_STEPS)
        self.steps_spin.setValue(30)

        self.cfg_spin = QDoubleSpinBox(objectName="cfg_spin")
        self.cfg_spin.setRange(0.0, MAX_CFG)
        self.cfg_spin.setDecimals(1)
        self.cfg_spin.setSingleStep(0.5)
        self.cfg_spin.setValue(7.5)

        # QSpinBox stops at 2**31 - 1; a double with no decimals holds every 32-bit seed exactly.
        self.seed_spin = QDoubleSpinBox(objectName="seed_spin")
        self.seed_spin.setDecimals(0)
        self.seed_spin.setRange(RANDOM_SEED, MAX_SEED)
        self.seed_spin.setSpecialValueText("Random")
        self.seed_spin.setValue(RANDOM_SEED)
        self.seed_spin.setToolTip("-1 (Random) draws a new seed for every job")
        self.random_seed_button = QToolButton(objectName="random_seed_button", text="⚄")
        self.random_seed_button.setToolTip("Random seed for every job")
        self.random_seed_button.clicked.connect(self.use_random_seed)
        self.reuse_seed_button = QToolButton(objectName="reuse_seed_button", text="♻")
        self.reuse_seed_button.setToolTip("Reuse the seed of the last job")
        self.reuse_seed_button.setEnabled(False)
        self.reuse_seed_button.clicked.connect(self.reuse_last_seed)

        self.width_spin = SideSpinBox("width_spin")
        self.height_spin = SideSpinBox("height_spin")
        self.width_spin.setValue(512)
        self.height_spin.setValue(512)
        self.swap_size_button = QToolButton(objectName="swap_size_button", text="⇄")
        self.swap_size_button.setToolTip("Swap width and height")
        self.swap_size_button.clicked.connect(self.swap_size)
        self.size_preset_combo = QComboBox(objectName="size_preset_combo")
        self.size_preset_combo.addItem("Presets…", None)
        for width, height in SIZE_PRESETS:
            self.size_preset_combo.addItem(f"{width} × {height}", (width, height))
        self.size_preset_combo.activated.connect(self._on_preset_activated)

        self.batch_count_spin = QSpinBox(objectName="batch_count_spin")
        self.batch_count_spin.setRange(1, MAX_BATCH_COUNT)
        self.batch_count_spin.setToolTip("Pipeline runs, one after another")
        self.batch_size_spin = QSpinBox(objectName="batch_size_spin")
        self.batch_size_spin.setRange(1, MAX_BATCH_SIZE)
        self.batch_size_spin.setToolTip("Images per run (needs more memory)")

        # A1111's names and ranges, so settings copied from its PNGs mean the same here.
        self.clip_skip_spin = QSpinBox(objectName="clip_skip_spin")
        self.clip_skip_spin.setRange(1, MAX_CLIP_SKIP)
        self.clip_skip_spin.setToolTip(
            "Clip skip: read the prompt from this many layers before the text encoder's last (1: the last). "
            "Many anime models are made for 2."
        )
        self.emphasis_combo = QComboBox(objectName="emphasis_combo")
        for name in EMPHASIS_MODES:
            self.emphasis_combo.addItem(name, name)
        self.emphasis_combo.setToolTip(
            "How (word:1.2) weights apply. Original: as AUTOMATIC1111 (weights, then the mean restored); "
            "No norm: weights only; None: brackets, weights and BREAK are plain text."
        )
        self.emphasis_combo.currentIndexChanged.connect(
            lambda _: self.emphasis_changed.emit(self.emphasis_combo.currentData())
        )
        clip_skip_label = QLabel("Clip s&kip")
        clip_skip_label.setBuddy(self.clip_skip_spin)
        emphasis_label = QLabel("Emp&hasis")
        emphasis_label.setBuddy(self.emphasis_combo)

        self.device_combo = QComboBox(objectName="device_combo")
        for name in DEVICES:
            self.device_combo.addItem(_DEVICE_LABELS.get(name, name), name)
        self.precision_combo = QComboBox(objectName="precision_combo")
        for name in PRECISIONS:
            self.precision_combo.addItem(_PRECISION_LABELS.get(name, name), name)
        self.memory_combo = QComboBox(objectName="memory_combo")
        for name in MEMORY_MODES:
            self.memory_combo.addItem(_MEMORY_LABELS.get(name, name), name)
        self.memory_combo.setToolTip(
            "Auto: everything on the GPU when it fits, VAE tiling above 1024×1024, CPU offload when VRAM is short. "
            "After running out of memory Marble retries once a step lower and says so."
        )
        self.fast_check = QCheckBox("Compile the UNet (GPU)", objectName="fast_check")
        self.fast_check.setToolTip(
            "Fast mode: channels_last and torch.compile. The first image after loading takes a minute or more "
            "to compile; later ones run faster. Switching it reloads the model."
        )

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("&Model", _row(self.model_combo, self.refresh_models_button))
        form.addRow(self.models_hint)
        form.addRow("S&ampler", self.sampler_combo)
        form.addRow("&Steps", self.steps_spin)
        form.addRow("&CFG scale", self.cfg_spin)
        form.addRow("S&eed", _row(self.seed_spin, self.random_seed_button, self.reuse_seed_button))
        form.addRow("&Width", _row(self.width_spin, self.swap_size_button))
        form.addRow("&Height", self.height_spin)
        form.addRow("Si&ze", self.size_preset_combo)
        form.addRow(clip_skip_label, _row(self.clip_skip_spin, emphasis_label, self.emphasis_combo))
        form.addRow("&Batch count", self.batch_count_spin)
        form.addRow("Batch s&ize", self.batch_size_spin)
        form.addRow("&Device", self.device_combo)
        form.addRow("Precisi&on", self.precision_combo)
        form.addRow("Memor&y", self.memory_combo)
        form.addRow("Fas&t mode", self.fast_check)
        self.lora_list = LoraListWidget()
        form.addRow("&LoRAs", self.lora_list)

    # ------------------------------------------------------------------------------------ models

    def set_models(self, names: Sequence[str], folder: str, native_sizes: Mapping[str, int] | None = None) -> None:
        """Fill the model list, keeping the current choice when it is still there.

        `native_sizes` (name -> side) lets a change of model bring the size the new model was trained at,
        as the best tools do: the demo model draws at 128, SD 1.x at 512, SDXL at 1024. The size is
        left alone when the new model's native size equals the old one's, so a chosen size survives
        switching between two models of the same kind."""
        current = self.selected_model()
        self._native_sizes = dict(native_sizes or {})
        with QSignalBlocker(self.model_combo):
            self.model_combo.clear()
            for name in names:
                self.model_combo.addItem(name, name)
            index = self.model_combo.findData(current) if current else -1
            self.model_combo.setCurrentIndex(index if index >= 0 else (0 if names else -1))
        self.model_combo.setEnabled(bool(names))
        self._on_model_changed()
        self.models_hint_label.setText(
            f"No models yet. Put .safetensors files or diffusers folders in:\n{folder}\nthen press ⟳."
        )
        self.models_hint.setVisible(not names)

    def selected_model(self) -> str:
        data = self.model_combo.currentData()
        return data if isinstance(data, str) else ""

    def _on_model_changed(self) -> None:
        model = self.selected_model()
        side = self._native_sizes.get(model)
        if model != self._sized_for and side is not None and side != self._native_sizes.get(self._sized_for):
            self.width_spin.setValue(side)
            self.height_spin.setValue(side)
        self._sized_for = model

    # -------------------------------------------------------------------------------------- seed

    @property
    def last_seed(self) -> int | None:
        return self._last_seed

    def set_last_seed(self, seed: int) -> None:
        self._last_seed = seed
        self.reuse_seed_button.setEnabled(True)
        self.reuse_seed_button.setToolTip(f"Reuse the seed of the last job ({seed})")

    @Slot()
    def use_random_seed(self) -> None:
        self.seed_spin.setValue(RANDOM_SEED)

    @Slot()
    def reuse_last_seed(self) -> None:
        if self._last_seed is not None:
            self.seed_spin.setValue(self._last_seed)

    # -------------------------------------------------------------------------------------- size

    @Slot()
    def swap_size(self) -> None:
        width, height = self.width_spin.value(), self.height_spin.value()
        self.width_spin.setValue(height)
        self.height_spin.setValue(width)

    @Slot(int)
    def _on_preset_activated(self, index: int) -> None:
        size = self.size_preset_combo.itemData(index)
        if size:
            self.width_spin.setValue(size[0])
            self.height_spin.setValue(size[1])
        # The combo is an action list, not a state: it always reads "Presets…".
        self.size_preset_combo.setCurrentIndex(0)

    # ----------------------------------------------------------------------------------- request

    def request(self, prompt: str, negative_prompt: str = "") -> GenerationRequest:
        """The request these settings describe, not yet validated (the controller validates)."""
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            model=self.selected_model(),
            steps=self.steps_spin.value(),
            cfg_scale=round(self.cfg_spin.value(), 2),
            seed=int(round(self.seed_spin.value())),
            sampler=self.sampler_combo.currentData(),
            width=self.width_spin.value(),
            height=self.height_spin.value(),
            batch_count=self.batch_count_spin.value(),
            batch_size=self.batch_size_spin.value(),
            device=self.device_combo.currentData(),
            precision=self.precision_combo.currentData(),
            memory_mode=self.memory_combo.currentData(),
            fast_mode=self.fast_check.isChecked(),
            clip_skip=self.clip_skip_spin.value(),
            emphasis=self.emphasis_combo.currentData(),
            loras=self.lora_list.loras(),
        )

    def set_from_request(self, request: GenerationRequest) -> None:
        """Show a request's settings (from history or a PNG); the prompts belong to the prompt editor."""
        if request.model:
            index = self.model_combo.findData(request.model)
            if index < 0:
                # Keep a model the library lacks visible: the job will then say clearly that it is missing.
                self.model_combo.addItem(request.model, request.model)
                index = self.model_combo.count() - 1
                self.model_combo.setItemData(index, "Not in the models folder", Qt.ItemDataRole.ToolTipRole)
                self.model_combo.setEnabled(True)
            self.model_combo.setCurrentIndex(index)
        _select_data(self.sampler_combo, request.sampler)
        _select_data(self.device_combo, request.device)
        _select_data(self.precision_combo, request.precision)
        _select_data(self.memory_combo, request.memory_mode)
        self.fast_check.setChecked(request.fast_mode)
        self.steps_spin.setValue(request.steps)
        self.cfg_spin.setValue(request.cfg_scale)
        self.seed_spin.setValue(request.seed)
        self.width_spin.setValue(request.width)
        self.height_spin.setValue(request.height)
        self.batch_count_spin.setValue(request.batch_count)
        self.batch_size_spin.setValue(request.batch_size)
        self.clip_skip_spin.setValue(request.clip_skip)
        _select_data(self.emphasis_combo, request.emphasis)
        self.lora_list.set_loras(request.loras)


def _select_data(combo: QComboBox, value: object) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    for position, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if position == 0 else 0)
    return row
