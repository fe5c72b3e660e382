"""Every generation setting except the prompts: model, sampler, steps, CFG, seed, size, batch, text
encoder (clip skip, emphasis), device, and A1111's extras (variation seed, seed resize, tiling).
The values live in a `ParameterModel`; the widgets show it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QT_TRANSLATE_NOOP, QSignalBlocker, Qt, QThreadPool, Signal, SignalInstance, Slot
from PySide6.QtGui import QStandardItemModel, QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.backends.hires import BUILT_IN_UPSCALERS
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES
from desktop.engine.library.few_step import FEW_STEP_KINDS
from desktop.engine.library.native_size import FLUX3_FAMILIES, family_defaults, is_dit_family, takes_controls
from desktop.engine.quantised_support import QuantisedSupport, detect_quantised_support
from desktop.engine.request import (
    BITSANDBYTES_MEMORY_MODES,
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
)
from desktop.ui.control_list import ControlListWidget
from desktop.ui.layout_boxes_editor import LayoutBoxesEditor
from desktop.ui.lora_list import LoraListWidget
from desktop.ui.parameter_model import ParameterModel, Parameters
from desktop.ui.reference_images_row import ReferenceImagesRow
from desktop.ui.text_encoder_row import TextEncoderRow
from desktop.ui.translation import translate

_EXTRA_FIELDS = ("subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "tiling")
_SAME_SAMPLER_LABEL = QT_TRANSLATE_NOOP("ParameterPanel", "Same as the first pass")
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
_DEVICE_LABELS = {
    "auto": QT_TRANSLATE_NOOP("ParameterPanel", "Auto"),
    "cpu": QT_TRANSLATE_NOOP("ParameterPanel", "CPU"),
    "cuda": QT_TRANSLATE_NOOP("ParameterPanel", "CUDA (NVIDIA)"),
    "mps": QT_TRANSLATE_NOOP("ParameterPanel", "Apple (MPS)"),
}
_PRECISION_LABELS = {
    "auto": QT_TRANSLATE_NOOP("ParameterPanel", "Auto"),
    "fp32": QT_TRANSLATE_NOOP("ParameterPanel", "fp32 (full)"),
    "fp16": QT_TRANSLATE_NOOP("ParameterPanel", "fp16 (half)"),
    "bf16": QT_TRANSLATE_NOOP("ParameterPanel", "bf16"),
}
_MEMORY_LABELS = {
    "auto": QT_TRANSLATE_NOOP("ParameterPanel", "Auto"),
    "full": QT_TRANSLATE_NOOP("ParameterPanel", "Full (fastest)"),
    "tiled": QT_TRANSLATE_NOOP("ParameterPanel", "Tiled VAE + sliced attention"),
    "offload": QT_TRANSLATE_NOOP("ParameterPanel", "CPU offload (least VRAM)"),
    "group": QT_TRANSLATE_NOOP("ParameterPanel", "Group offload (Flux, SD3)"),
    "sequential": QT_TRANSLATE_NOOP("ParameterPanel", "Sequential offload (Flux, SD3; slowest)"),
    "fp8": QT_TRANSLATE_NOOP("ParameterPanel", "fp8 layer-wise casting (Flux, SD3)"),
    "nf4": QT_TRANSLATE_NOOP("ParameterPanel", "NF4 4-bit (Flux, SD3, Qwen, Z-Image; CUDA)"),
    "int8": QT_TRANSLATE_NOOP("ParameterPanel", "int8 8-bit (Flux, SD3, Qwen, Z-Image; CUDA)"),
}
# A1111's mode names (the request keeps them as they are; only the list shows them translated).
_EMPHASIS_LABELS = {
    "Original": QT_TRANSLATE_NOOP("ParameterPanel", "Original"),
    "No norm": QT_TRANSLATE_NOOP("ParameterPanel", "No norm"),
    "None": QT_TRANSLATE_NOOP("ParameterPanel", "None"),
}


class SideSpinBox(QSpinBox):
    """A width or height: only multiples of 8 are acceptable; anything else snaps to the nearest one."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.setRange(MIN_SIDE, MAX_SIDE)
        self.setSingleStep(8)
        self.setSuffix(self.tr(" px"))
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


class _SeedValidator(QValidator):
    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        stripped = text.strip()
        if stripped in ("", "-", "-1"):
            return QValidator.State.Acceptable if stripped != "-" else QValidator.State.Intermediate, text, pos
        if not stripped.isdigit() or not stripped.isascii():
            return QValidator.State.Invalid, text, pos
        return (QValidator.State.Acceptable if int(stripped) <= MAX_SEED else QValidator.State.Invalid), text, pos


class SeedEdit(QLineEdit):
    """The seed, 0 to 2**64 - 1 exactly (ComfyUI and Fooocus seeds), or empty / -1 for random.

    A line edit, because spin boxes hold a C int or a double, and a double cannot hold 2**64 - 1.
    """

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.setValidator(_SeedValidator(self))
        self.setPlaceholderText(self.tr("Random"))
        self.setToolTip(self.tr("Empty (Random) draws a new seed for every job; up to 18446744073709551615"))

    def value(self) -> int:
        text = self.text().strip()
        return int(text) if text.isdigit() and text.isascii() and int(text) <= MAX_SEED else RANDOM_SEED

    def setValue(self, value: int) -> None:  # noqa: N802 - spin-box spelling, as the other fields
        value = int(value)
        self.setText("" if value == RANDOM_SEED or not 0 <= value <= MAX_SEED else str(value))


class ParameterPanel(QWidget):
    """The settings of the next job, as widgets bound to a `ParameterModel` both ways: an edit sets the
    model's field, a change of the model shows in its widget. Holds no model list of its own: the
    window fills it.

    Signals:
        models_refresh_requested(): the user asked to scan the models folder again.
        open_models_folder_requested(): the user wants to see the models folder in the file manager.
        emphasis_changed(str): the emphasis mode changed (by the user or a request shown), so the
            prompt editor can count brackets as the job will read them.
        family_shown(object): the selected model's family (`model_family`, or None when unknown), each time
            the model or the families change, so the prompt editor counts as that family reads a prompt.
    """

    models_refresh_requested = Signal()
    open_models_folder_requested = Signal()
    emphasis_changed = Signal(str)
    family_shown = Signal(object)

    def __init__(
        self,
        model: ParameterModel,
        parent: QWidget | None = None,
        *,
        quantised: QuantisedSupport | None = None,
        pool: QThreadPool | None = None,
    ) -> None:
        """`quantised`: whether the NF4/int8 memory modes can run here (found from files when None); `pool`:
        where the References row decodes its thumbnails (the window's)."""
        super().__init__(parent)
        self.model = model
        self._quantised = quantised if quantised is not None else detect_quantised_support()
        self._pool = pool
        self._last_seed: int | None = None
        self._native_sizes: dict[str, int] = {}
        self._sized_for = ""  # the model whose native size the size fields were last set for
        self._families: dict[str, str] = {}  # model name -> family ("sd1", "flux-dev", ...)
        self._unet_settings = True  # the chosen model takes seamless tiling and fast mode (not a DiT)
        self._controls_taken = True  # the chosen model takes control units (not a DiT without ControlNets)
        self._rewriter_shown = False  # the chosen model is FLUX.3: its prompt rewriter's tick shows
        self._component_models: frozenset[str] = frozenset()  # transformer-only files: need text encoders
        self._control_input_models: frozenset[str] = frozenset()  # Flux.1 Canny / Depth dev: a "built-in" unit
        # Models that read reference images -> how many; None until the models folder has been scanned.
        self._reference_limits: dict[str, int] | None = None
        self._create_model_widgets()
        self._create_sampling_widgets()
        self._create_size_widgets()
        self._create_encoder_widgets()
        self._create_device_widgets()
        self._create_extra_widgets()
        self._create_hires_widgets()
        self.lora_list = LoraListWidget()
        # A few-step LoRA (LCM-LoRA, Lightning ...) picked in the list brings its preset, as `--lora` does.
        self.lora_list.few_step_chosen.connect(self.choose_few_step)
        self.control_list = ControlListWidget()
        self._create_vae_widgets()
        self._lay_out()
        self._bindings = self._bind()
        self.layout_editor.set_canvas_size(model.value("width"), model.value("height"))  # then on each change
        self.layout_editor.set_reference_images(model.value("reference_images"))  # the pictures a box may take from

    # ------------------------------------------------------------------------------------ widgets

    def _create_model_widgets(self) -> None:
        self.model_combo = QComboBox(objectName="model_combo")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(12)
        self.model_combo.setPlaceholderText(self.tr("No models found"))
        self.refresh_models_button = QToolButton(objectName="refresh_models_button", text="⟳")
        self.refresh_models_button.setToolTip(self.tr("Scan the models folder again"))
        self.refresh_models_button.clicked.connect(self.models_refresh_requested)

        self.models_hint = QWidget(objectName="models_hint")
        self.models_hint_label = QLabel(objectName="models_hint_label")
        self.models_hint_label.setTextFormat(Qt.TextFormat.PlainText)
        self.models_hint_label.setWordWrap(True)
        self.models_hint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_models_folder_button = QPushButton(
            self.tr("Open models folder"), objectName="open_models_folder_button"
        )
        self.open_models_folder_button.clicked.connect(self.open_models_folder_requested)
        hint_layout = QVBoxLayout(self.models_hint)
        hint_layout.setContentsMargins(0, 0, 0, 0)
        hint_layout.addWidget(self.models_hint_label)
        hint_layout.addWidget(self.open_models_folder_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.models_hint.hide()

    def _create_sampling_widgets(self) -> None:
        self.sampler_combo = _combo(
            "sampler_combo", SAMPLER_NAMES, {DEFAULT_SAMPLER: QT_TRANSLATE_NOOP("ParameterPanel", "Model default")}
        )
        self.steps_spin = QSpinBox(objectName="steps_spin")
        self.steps_spin.setRange(1, MAX_STEPS)
        self.cfg_spin = QDoubleSpinBox(objectName="cfg_spin")
        self.cfg_spin.setRange(0.0, MAX_CFG)
        self.cfg_spin.setDecimals(1)
        self.cfg_spin.setSingleStep(0.5)
        # Flux dev's distilled guidance (Forge's "Distilled CFG Scale"): shown only for Flux dev models.
        self.distilled_cfg_spin = QDoubleSpinBox(objectName="distilled_cfg_spin")
        self.distilled_cfg_spin.setRange(0.0, MAX_CFG)
        self.distilled_cfg_spin.setDecimals(1)
        self.distilled_cfg_spin.setSingleStep(0.5)
        self.distilled_cfg_spin.setToolTip(self.tr("The guidance Flux dev was distilled with (3.5 by default)"))
        self.distilled_cfg_label = QLabel(self.tr("Distilled C&FG"), objectName="distilled_cfg_label")
        self.distilled_cfg_label.setBuddy(self.distilled_cfg_spin)
        # FLUX.3's prompt rewriter (its folder in Settings): the caption it writes becomes the image's prompt.
        self.rewrite_check = QCheckBox(self.tr("&Rewrite the prompt with FLUX.3's prompt rewriter"),
                                       objectName="rewrite_check")  # fmt: skip
        self.rewrite_check.setToolTip(self.tr(
            "Expands a short prompt into the detailed caption FLUX.3 is trained on, before the first step (text to "
            "image, from the reference pictures when there are some). The caption is the prompt the image records, "
            "so a recipe makes the same image again without the rewriter. Its folder is set in Settings (FLUX.3 "
            "prompt rewriter)."
        ))  # fmt: skip
        # FLUX.3's layout boxes, placed by its rewriter: shown while rewriting is on for a FLUX.3 model.
        self.layout_editor = LayoutBoxesEditor(self._pool)
        self.layout_editor.setObjectName("layout_editor")
        self.layout_label = QLabel(self.tr("Layout boxes"), objectName="layout_label")
        self.layout_label.setToolTip(self.tr(
            "Where FLUX.3's prompt rewriter places elements of the picture: its caption cites each box and ends with "
            "their table, which FLUX.3 was trained to follow"
        ))  # fmt: skip
        self.rewrite_check.toggled.connect(self._show_layout_boxes)
        # Few-step models and LoRAs (LCM, Turbo, ...): choosing one sets its published steps, CFG and sampler.
        self.few_step_combo = _combo("few_step_combo", ("", *FEW_STEP_KINDS), _FEW_STEP_LABELS)
        self.few_step_combo.setToolTip(self.tr(
            "For a few-step model or LoRA: sets the steps, CFG and sampler its makers recommend"
        ))
        # A1111's SDXL refiner: shown for SDXL models only.
        self.refiner_combo = QComboBox(objectName="refiner_combo")
        self.refiner_combo.addItem(self.tr("None"), "")
        self.refiner_combo.setToolTip(self.tr("An SDXL refiner model that finishes the last steps"))
        self.refiner_switch_spin = QDoubleSpinBox(objectName="refiner_switch_spin")
        self.refiner_switch_spin.setRange(0.01, 0.99)
        self.refiner_switch_spin.setDecimals(2)
        self.refiner_switch_spin.setSingleStep(0.05)
        self.refiner_switch_spin.setToolTip(self.tr("Fraction of the steps the base model runs before the refiner"))
        self.refiner_label = QLabel(self.tr("Refi&ner"), objectName="refiner_label")
        self.refiner_label.setBuddy(self.refiner_combo)
        self.refiner_row = _row(self.refiner_combo, QLabel(self.tr("switch at")), self.refiner_switch_spin)
        self.text_encoders_row = TextEncoderRow()
        self.text_encoders_edit = self.text_encoders_row.edit
        self.text_encoders_label = QLabel(self.tr("&Text encoders"), objectName="text_encoders_label")
        self.text_encoders_label.setBuddy(self.text_encoders_edit)
        self.references_row = ReferenceImagesRow(self._pool)
        # Before the row's binding takes the new list: a layout box follows the picture it takes from.
        self.references_row.images_changed.connect(self.layout_editor.follow_references)
        self.references_label = QLabel(self.tr("Re&ferences"), objectName="references_label")
        self.references_label.setBuddy(self.references_row.add_button)

        self.seed_spin = SeedEdit("seed_spin")
        self.random_seed_button = QToolButton(objectName="random_seed_button", text="⚄")
        self.random_seed_button.setToolTip(self.tr("Random seed for every job"))
        self.random_seed_button.clicked.connect(self.use_random_seed)
        self.reuse_seed_button = QToolButton(objectName="reuse_seed_button", text="♻")
        self.reuse_seed_button.setToolTip(self.tr("Reuse the seed of the last job"))
        self.reuse_seed_button.setEnabled(False)
        self.reuse_seed_button.clicked.connect(self.reuse_last_seed)

        self.batch_count_spin = QSpinBox(objectName="batch_count_spin")
        self.batch_count_spin.setRange(1, MAX_BATCH_COUNT)
        self.batch_count_spin.setToolTip(self.tr("Pipeline runs, one after another"))
        self.batch_size_spin = QSpinBox(objectName="batch_size_spin")
        self.batch_size_spin.setRange(1, MAX_BATCH_SIZE)
        self.batch_size_spin.setToolTip(self.tr("Images per run (needs more memory)"))

    def _create_size_widgets(self) -> None:
        self.width_spin = SideSpinBox("width_spin")
        self.height_spin = SideSpinBox("height_spin")
        self.swap_size_button = QToolButton(objectName="swap_size_button", text="⇄")
        self.swap_size_button.setToolTip(self.tr("Swap width and height"))
        self.swap_size_button.clicked.connect(self.swap_size)
        self.size_preset_combo = QComboBox(objectName="size_preset_combo")
        self.size_preset_combo.addItem(self.tr("Presets…"), None)
        for width, height in SIZE_PRESETS:
            self.size_preset_combo.addItem(f"{width} × {height}", (width, height))
        self.size_preset_combo.activated.connect(self._on_preset_activated)

    def _create_encoder_widgets(self) -> None:
        # A1111's names and ranges, so settings copied from its PNGs mean the same here.
        self.clip_skip_spin = QSpinBox(objectName="clip_skip_spin")
        self.clip_skip_spin.setRange(1, MAX_CLIP_SKIP)
        self.clip_skip_spin.setToolTip(self.tr(
            "Clip skip: read the prompt from this many layers before the text encoder's last (1: the last). "
            "Many anime models are made for 2."
        ))
        self.emphasis_combo = _combo("emphasis_combo", EMPHASIS_MODES, _EMPHASIS_LABELS)
        self.emphasis_combo.setToolTip(self.tr(
            "How (word:1.2) weights apply. Original: as AUTOMATIC1111 (weights, then the mean restored); "
            "No norm: weights only; None: brackets, weights and BREAK are plain text."
        ))

    def _create_device_widgets(self) -> None:
        self.device_combo = _combo("device_combo", DEVICES, _DEVICE_LABELS)
        self.precision_combo = _combo("precision_combo", PRECISIONS, _PRECISION_LABELS)
        self.memory_combo = _combo("memory_combo", MEMORY_MODES + BITSANDBYTES_MEMORY_MODES, _MEMORY_LABELS)
        # Shown greyed out rather than left out, so the user learns the modes exist and what they need.
        lacks = [self.tr("Needs the optional bitsandbytes package, which this installation lacks.")] * (
            not self._quantised.bitsandbytes
        ) + [self.tr("Needs an NVIDIA GPU with CUDA, which this computer lacks.")] * (not self._quantised.cuda)
        for mode in BITSANDBYTES_MEMORY_MODES if lacks else ():
            _disable_item(self.memory_combo, mode, " ".join(lacks))
        self.memory_combo.setToolTip(self.tr(
            "Auto: everything on the GPU when it fits, VAE tiling above 1024×1024, CPU offload when VRAM is short. "
            "After running out of memory Marble retries once a step lower and says so."
        ))
        self.fast_check = QCheckBox(self.tr("Compile the UNet (GPU)"), objectName="fast_check")
        self._fast_tip = self.tr(
            "Fast mode: channels_last and torch.compile. The first image after loading takes a minute or more "
            "to compile; later ones run faster. Switching it reloads the model."
        )
        self.fast_check.setToolTip(self._fast_tip)

    def _create_extra_widgets(self) -> None:
        """A1111's variation seed, seed resize and tiling, folded away under "Extra" as in A1111."""
        self.extra_button = QToolButton(objectName="extra_button", text=self.tr("Extra"))
        self.extra_button.setCheckable(True)
        self.extra_button.setArrowType(Qt.ArrowType.RightArrow)
        self.extra_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.extra_button.toggled.connect(self.show_extra)
        # The same range as the seed (to 2**64 - 1), so it is the same exact field.
        self.subseed_spin = SeedEdit("subseed_spin")
        self.subseed_spin.setToolTip(self.tr("Variation seed: its noise is mixed into the seed's by the strength; "
                                             "empty (Random) draws one per job"))
        self.subseed_strength_spin = QDoubleSpinBox(objectName="subseed_strength_spin")
        self.subseed_strength_spin.setRange(0.0, 1.0)
        self.subseed_strength_spin.setDecimals(2)
        self.subseed_strength_spin.setSingleStep(0.05)
        self.subseed_strength_spin.setToolTip(self.tr("0: the seed's image; 1: the variation seed's image"))
        self.resize_w_spin = _resize_spin("seed_resize_w_spin")
        self.resize_h_spin = _resize_spin("seed_resize_h_spin")
        self.tiling_check = QCheckBox(self.tr("Seamless tiling"), objectName="tiling_check")
        self._tiling_tip = self.tr("The image wraps: its left edge continues its right, its top its bottom")
        self.tiling_check.setToolTip(self._tiling_tip)
        self.extra = QWidget(objectName="extra")
        form = QFormLayout(self.extra)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.tr("&Variation seed"), _row(self.subseed_spin, QLabel(self.tr("strength")),
                                                     self.subseed_strength_spin))
        form.addRow(self.tr("Resize seed from"), _row(self.resize_w_spin, QLabel("×"), self.resize_h_spin))
        form.addRow("", self.tiling_check)
        self.extra.hide()

    def _create_hires_widgets(self) -> None:
        """A1111's hires fix, folded away under "Hires fix": a second, image-to-image pass at a larger size."""
        self.hires_button = QToolButton(objectName="hires_button", text=self.tr("Hires fix"))
        self.hires_button.setCheckable(True)
        self.hires_button.setArrowType(Qt.ArrowType.RightArrow)
        self.hires_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.hires_button.toggled.connect(self.show_hires)
        self.hires_check = QCheckBox(self.tr("Upscale and denoise again"), objectName="hires_check")
        self.hires_check.setToolTip(self.tr("Text-to-image only: the image is made at the size above, upscaled, then "
                                            "refined by an image-to-image pass at the larger size"))
        self.hires_upscaler_combo = _combo("hires_upscaler_combo", BUILT_IN_UPSCALERS, {})
        self.hires_upscaler_combo.setToolTip(self.tr(
            "Latent modes upscale the latents (fast, needs denoising 0.5 or more); Lanczos and upscaler models upscale "
            "the pixels"
        ))
        self.hires_scale_spin = QDoubleSpinBox(objectName="hires_scale_spin")
        self.hires_scale_spin.setRange(1.0, 8.0)
        self.hires_scale_spin.setDecimals(2)
        self.hires_scale_spin.setSingleStep(0.05)
        self.hires_resize_w_spin = _resize_spin("hires_resize_w_spin")
        self.hires_resize_h_spin = _resize_spin("hires_resize_h_spin")
        for spin in (self.hires_resize_w_spin, self.hires_resize_h_spin):
            spin.setToolTip(self.tr("Resize to this size instead of upscaling by a factor (Off: by the factor)"))
        self.hires_steps_spin = QSpinBox(objectName="hires_steps_spin")
        self.hires_steps_spin.setRange(0, 150)
        self.hires_steps_spin.setSpecialValueText(self.tr("Same as steps"))
        self.hires_denoise_spin = QDoubleSpinBox(objectName="hires_denoise_spin")
        self.hires_denoise_spin.setRange(0.01, 1.0)
        self.hires_denoise_spin.setDecimals(2)
        self.hires_denoise_spin.setSingleStep(0.05)
        self.hires_sampler_combo = _combo(
            "hires_sampler_combo", ("", *(name for name in SAMPLER_NAMES if name != DEFAULT_SAMPLER)),
            {"": _SAME_SAMPLER_LABEL},
        )
        self.hires_prompt_edit = QLineEdit(objectName="hires_prompt_edit",
                                           placeholderText=self.tr("Same as the prompt"))
        self.hires_negative_edit = QLineEdit(objectName="hires_negative_edit",
                                             placeholderText=self.tr("Same as the negative prompt"))
        self.hires = QWidget(objectName="hires")
        form = QFormLayout(self.hires)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("", self.hires_check)
        form.addRow(self.tr("Upscaler"), self.hires_upscaler_combo)
        form.addRow(self.tr("Upscale by"), self.hires_scale_spin)
        form.addRow(self.tr("Resize to"), _row(self.hires_resize_w_spin, QLabel("×"), self.hires_resize_h_spin))
        form.addRow(self.tr("Hires steps"), self.hires_steps_spin)
        form.addRow(self.tr("Denoising"), self.hires_denoise_spin)
        form.addRow(self.tr("Hires sampler"), self.hires_sampler_combo)
        form.addRow(self.tr("Hires prompt"), self.hires_prompt_edit)
        form.addRow(self.tr("Hires negative"), self.hires_negative_edit)
        self.hires.hide()

    @Slot(bool)
    def show_hires(self, shown: bool) -> None:
        self.hires.setVisible(shown)
        self.hires_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        if self.hires_button.isChecked() != shown:
            self.hires_button.setChecked(shown)

    def set_upscalers(self, names: Sequence[str]) -> None:
        """The library's upscaler models after the built-in upscalers, keeping the current choice."""
        current = self.model.value("hires_upscaler")
        with QSignalBlocker(self.hires_upscaler_combo):
            while self.hires_upscaler_combo.count() > len(BUILT_IN_UPSCALERS):
                self.hires_upscaler_combo.removeItem(self.hires_upscaler_combo.count() - 1)
            for name in names:
                self.hires_upscaler_combo.addItem(name, name)
        self._show("hires_upscaler", current, self._bindings["hires_upscaler"])

    @Slot(bool)
    def show_extra(self, shown: bool) -> None:
        self.extra.setVisible(shown)
        self.extra_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        if self.extra_button.isChecked() != shown:
            self.extra_button.setChecked(shown)

    def _create_vae_widgets(self) -> None:
        self.vae_combo = QComboBox(objectName="vae_combo")
        self.vae_combo.addItem(translate("ParameterPanel", _OWN_VAE_LABEL), "")
        self.vae_combo.setToolTip(self.tr(
            "The VAE turns the finished latent into pixels. Automatic: the model's own. A library VAE (marble vaes "
            "import, or drop one on the window) fixes washed-out colours of some models."
        ))

    def _lay_out(self) -> None:
        clip_skip_label = QLabel(self.tr("Clip s&kip"))
        clip_skip_label.setBuddy(self.clip_skip_spin)
        emphasis_label = QLabel(self.tr("Emp&hasis"))
        emphasis_label.setBuddy(self.emphasis_combo)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow(self.tr("&Model"), _row(self.model_combo, self.refresh_models_button))
        form.addRow(self.models_hint)
        form.addRow(self.tr("S&ampler"), self.sampler_combo)
        form.addRow(self.tr("&Steps"), self.steps_spin)
        form.addRow(self.tr("&CFG scale"), self.cfg_spin)
        form.addRow(self.distilled_cfg_label, self.distilled_cfg_spin)
        form.addRow(self.rewrite_check)
        form.addRow(self.layout_label, self.layout_editor)
        form.addRow(self.tr("Few-ste&p"), self.few_step_combo)
        form.addRow(self.refiner_label, self.refiner_row)
        form.addRow(self.text_encoders_label, self.text_encoders_row)
        form.addRow(self.references_label, self.references_row)
        self._show_family_rows()
        form.addRow(self.tr("S&eed"), _row(self.seed_spin, self.random_seed_button, self.reuse_seed_button))
        form.addRow(self.tr("&Width"), _row(self.width_spin, self.swap_size_button))
        form.addRow(self.tr("&Height"), self.height_spin)
        form.addRow(self.tr("Si&ze"), self.size_preset_combo)
        form.addRow(clip_skip_label, _row(self.clip_skip_spin, emphasis_label, self.emphasis_combo))
        form.addRow(self.tr("&Batch count"), self.batch_count_spin)
        form.addRow(self.tr("Batch s&ize"), self.batch_size_spin)
        form.addRow(self.tr("&Device"), self.device_combo)
        form.addRow(self.tr("Precisi&on"), self.precision_combo)
        form.addRow(self.tr("Memor&y"), self.memory_combo)
        form.addRow(self.tr("Fas&t mode"), self.fast_check)
        form.addRow(self.extra_button)
        form.addRow(self.extra)
        form.addRow(self.hires_button)
        form.addRow(self.hires)
        form.addRow(self.tr("&LoRAs"), self.lora_list)
        form.addRow(self.tr("&VAE"), self.vae_combo)
        form.addRow(self.tr("Co&ntrol units"), self.control_list)

    # ------------------------------------------------------------------------------------ binding

    def _bind(self) -> dict[str, _Binding]:
        """One binding per `Parameters` field: the widget that shows it, how to read and show a value,
        and the widget's signal for an edit."""
        model, cfg, seed, fast, loras = self.model_combo, self.cfg_spin, self.seed_spin, self.fast_check, self.lora_list
        bindings = {
            "model": _Binding(model, self.selected_model, self._show_model, model.currentIndexChanged),
            "sampler": _combo_binding(self.sampler_combo),
            "few_step": _combo_binding(self.few_step_combo),
            "refiner": _Binding(self.refiner_combo, self.refiner_combo.currentData, self._show_refiner,
                                self.refiner_combo.currentIndexChanged),
            "refiner_switch_at": _Binding(
                self.refiner_switch_spin, lambda: round(self.refiner_switch_spin.value(), 2),
                self.refiner_switch_spin.setValue, self.refiner_switch_spin.valueChanged,
            ),
            "steps": _spin_binding(self.steps_spin),
            "cfg_scale": _Binding(cfg, lambda: round(cfg.value(), 2), cfg.setValue, cfg.valueChanged),
            "distilled_cfg_scale": _Binding(
                self.distilled_cfg_spin, lambda: round(self.distilled_cfg_spin.value(), 2),
                self.distilled_cfg_spin.setValue, self.distilled_cfg_spin.valueChanged,
            ),
            "seed": _Binding(seed, seed.value, seed.setValue, seed.textChanged),
            "width": _spin_binding(self.width_spin),
            "height": _spin_binding(self.height_spin),
            "batch_count": _spin_binding(self.batch_count_spin),
            "batch_size": _spin_binding(self.batch_size_spin),
            "clip_skip": _spin_binding(self.clip_skip_spin),
            "emphasis": _combo_binding(self.emphasis_combo),
            "device": _combo_binding(self.device_combo),
            "precision": _combo_binding(self.precision_combo),
            "memory_mode": _combo_binding(self.memory_combo),
            "fast_mode": _Binding(fast, fast.isChecked, fast.setChecked, fast.toggled),
            "rewrite_prompt": _Binding(self.rewrite_check, self.rewrite_check.isChecked, self.rewrite_check.setChecked,
                                       self.rewrite_check.toggled),
            "layout_boxes": _Binding(self.layout_editor, self.layout_editor.boxes, self.layout_editor.set_boxes,
                                     self.layout_editor.boxes_changed),
            "loras": _Binding(loras, loras.loras, loras.set_loras, loras.loras_changed),
            "controls": _Binding(self.control_list, self.control_list.controls, self.control_list.set_controls,
                                 self.control_list.controls_changed),
            "subseed": _Binding(self.subseed_spin, self.subseed_spin.value, self.subseed_spin.setValue,
                                self.subseed_spin.textChanged),
            "subseed_strength": _Binding(
                self.subseed_strength_spin, lambda: round(self.subseed_strength_spin.value(), 2),
                self.subseed_strength_spin.setValue, self.subseed_strength_spin.valueChanged,
            ),
            "seed_resize_from_w": _spin_binding(self.resize_w_spin),
            "seed_resize_from_h": _spin_binding(self.resize_h_spin),
            "tiling": _Binding(self.tiling_check, self.tiling_check.isChecked, self.tiling_check.setChecked,
                               self.tiling_check.toggled),
            "text_encoders": _Binding(self.text_encoders_edit, self.text_encoders_edit.text,
                                      self.text_encoders_edit.setText, self.text_encoders_edit.textChanged),
            "vae": _Binding(self.vae_combo, self.selected_vae, self._show_vae, self.vae_combo.currentIndexChanged),
            "reference_images": _Binding(self.references_row, self.references_row.images,
                                         self.references_row.set_images, self.references_row.images_changed),
            **self._hires_bindings(),
        }
        for name, binding in bindings.items():
            if name == "model":
                binding.edited.connect(self._on_model_chosen)
            elif name == "few_step":
                binding.edited.connect(self._on_few_step_chosen)
            else:
                binding.edited.connect(lambda *_, name=name: self._take_edit(name))
            self._show(name, self.model.value(name), binding)
        self.model.field_changed.connect(self._on_field_changed)
        return bindings

    def _hires_bindings(self) -> dict[str, _Binding]:
        check, scale, denoise = self.hires_check, self.hires_scale_spin, self.hires_denoise_spin
        prompt, negative = self.hires_prompt_edit, self.hires_negative_edit
        return {
            "hires_fix": _Binding(check, check.isChecked, check.setChecked, check.toggled),
            "hires_scale": _Binding(scale, lambda: round(scale.value(), 2), scale.setValue, scale.valueChanged),
            "hires_resize_w": _spin_binding(self.hires_resize_w_spin),
            "hires_resize_h": _spin_binding(self.hires_resize_h_spin),
            "hires_upscaler": _combo_binding(self.hires_upscaler_combo),
            "hires_steps": _spin_binding(self.hires_steps_spin),
            "hires_denoise": _Binding(denoise, lambda: round(denoise.value(), 2), denoise.setValue,
                                      denoise.valueChanged),
            "hires_prompt": _Binding(prompt, prompt.text, prompt.setText, prompt.textChanged),
            "hires_negative_prompt": _Binding(negative, negative.text, negative.setText, negative.textChanged),
            "hires_sampler": _combo_binding(self.hires_sampler_combo),
        }

    def _take_edit(self, name: str) -> None:
        self.model.update(**{name: self._bindings[name].read()})

    @Slot(str, object)
    def _on_field_changed(self, name: str, value: object) -> None:
        if name in self._bindings:
            self._show(name, value, self._bindings[name])
        if name == "emphasis":
            self.emphasis_changed.emit(value)
        if name == "model":
            self._show_family_rows()
        if name in ("width", "height"):
            self.layout_editor.set_canvas_size(self.model.value("width"), self.model.value("height"))
        if name == "reference_images":
            self.layout_editor.set_reference_images(value)
        if name in _EXTRA_FIELDS and value != getattr(Parameters(), name):
            self.show_extra(True)  # a recipe that uses an extra shows it
        if name == "hires_fix" and value:
            self.show_hires(True)

    def _show(self, name: str, value: object, binding: _Binding) -> None:
        # A widget that already shows the value (its own edit, coming back) is left alone: rebuilding
        # it would, for one, replace the LoRA row being edited. Blocked, so showing is not an edit.
        # A widget may not hold the value as given (a CFG of 7.55 shows as 7.6, a sampler unknown
        # here stays as it was): the model then takes what the widget shows, so the next job runs
        # with the settings the user sees.
        if binding.read() != value:
            with QSignalBlocker(binding.widget):
                binding.show(value)
        if name == "model":
            self._sized_for = self.selected_model()
        shown = binding.read()
        if shown != value:
            self.model.update(**{name: shown})

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
        refiner = self.refiner_combo.currentData() or ""
        with QSignalBlocker(self.refiner_combo):
            while self.refiner_combo.count() > 1:
                self.refiner_combo.removeItem(1)
            for name in names:
                self.refiner_combo.addItem(name, name)
            self._show_refiner(refiner)
        self.model_combo.setEnabled(bool(names))
        self._on_model_chosen()
        self.models_hint_label.setText(
            self.tr("No models yet. Put .safetensors files or diffusers folders in:\n{folder}\nthen press ⟳.").format(
                folder=folder
            )
        )
        self.models_hint.setVisible(not names)

    def set_vae_names(self, names: Sequence[str]) -> None:
        """Fill the VAE list from the library, keeping the current choice (shown even when it is gone:
        the job then says clearly that it is missing)."""
        current = self.selected_vae()
        with QSignalBlocker(self.vae_combo):
            self.vae_combo.clear()
            self.vae_combo.addItem(translate("ParameterPanel", _OWN_VAE_LABEL), "")
            for name in names:
                self.vae_combo.addItem(name, name)
        self._show_vae(current)

    def selected_vae(self) -> str:
        data = self.vae_combo.currentData()
        return data if isinstance(data, str) else ""

    def _show_vae(self, name: object) -> None:
        name = name if isinstance(name, str) else ""
        index = self.vae_combo.findData(name)
        if index < 0:
            self.vae_combo.addItem(name, name)
            index = self.vae_combo.count() - 1
            self.vae_combo.setItemData(index, self.tr("Not in the VAE library"), Qt.ItemDataRole.ToolTipRole)
        with QSignalBlocker(self.vae_combo):
            self.vae_combo.setCurrentIndex(index)

    def selected_model(self) -> str:
        data = self.model_combo.currentData()
        return data if isinstance(data, str) else ""

    def _show_model(self, name: str) -> None:
        if not name:
            return
        index = self.model_combo.findData(name)
        if index < 0:
            # Keep a model the library lacks visible: the job will then say clearly that it is missing.
            self.model_combo.addItem(name, name)
            index = self.model_combo.count() - 1
            self.model_combo.setItemData(index, self.tr("Not in the models folder"), Qt.ItemDataRole.ToolTipRole)
            self.model_combo.setEnabled(True)
        self.model_combo.setCurrentIndex(index)

    def _on_model_chosen(self) -> None:
        """The user picked a model, or the list was refilled: bring its native size, if it differs, and
        a few-step family's steps and CFG (Flux schnell: 4 steps, CFG 1) when coming from another family."""
        previous, model = self._sized_for, self.selected_model()
        side = self._native_sizes.get(model)
        changes: dict[str, object] = {"model": model}
        if model != previous and side is not None and side != self._native_sizes.get(previous):
            changes |= {"width": side, "height": side}
        family = self._families.get(model)
        old_family = self._families.get(previous)
        if model != previous and family != old_family:
            # Leaving a few-step family brings the usual steps and CFG back (session memory may then
            # restore the new family's own).
            usual = {name: getattr(Parameters, name) for name in family_defaults(old_family)}
            changes |= usual | family_defaults(family)
        self._sized_for = model
        self.model.update(**changes)
        self._show_family_rows()

    def _on_few_step_chosen(self) -> None:
        """A few-step kind chosen by hand brings its preset; "None" brings the usual settings back."""
        self.choose_few_step(self.few_step_combo.currentData() or "")

    def choose_few_step(self, kind: str) -> None:
        """Bring a few-step kind's preset (chosen in the box, or by picking a few-step LoRA)."""
        previous = self.model.value("few_step")
        usual = {name: getattr(Parameters, name) for name in family_defaults(f"-{previous}")} if previous else {}
        self.model.update(**(usual | (family_defaults(f"-{kind}") if kind else {"few_step": ""})))

    def set_families(self, families: Mapping[str, str]) -> None:
        """Each model's family (`model_family`), so family-only rows (Distilled CFG) show for the right models."""
        self._families = dict(families)
        self._show_family_rows()

    def set_component_models(self, names: frozenset[str]) -> None:
        """The models that hold a transformer only (`needs_components`): the Text encoders row shows for them."""
        self._component_models = frozenset(names)
        self._show_family_rows()

    def set_reference_models(self, limits: Mapping[str, int]) -> None:
        """The models that read reference images, and how many each (`reference_image_limit`): the
        References row shows for them."""
        self._reference_limits = dict(limits)
        self._show_family_rows()

    def set_control_input_models(self, names: frozenset[str]) -> None:
        """The models that read a control picture through their own input (Flux.1 Canny / Depth dev): their
        control units offer that input ("built-in") instead of ControlNets."""
        self._control_input_models = frozenset(names)
        self._show_family_rows()

    def ignores_references(self) -> bool:
        """Whether the chosen model is known to read no reference images: the row is hidden and a job must
        not carry the pictures picked for another model (they stay listed for when it comes back)."""
        return self._reference_limits is not None and not self._reference_limits.get(self.selected_model())

    def ignores_controls(self) -> bool:
        """Whether the chosen model takes no control units (a DiT without ControlNets in Marble): the list is
        greyed out and a job must not carry its units (they stay, for the next model that takes them)."""
        return not self._controls_taken

    def ignores_prompt_rewriter(self) -> bool:
        """Whether the chosen model is not FLUX.3: the rewriter's tick is hidden and a job must not ask for it (it
        stays, for when a FLUX.3 model is chosen again)."""
        return not self._rewriter_shown

    @Slot()
    def _show_layout_boxes(self) -> None:
        shown = self._rewriter_shown and self.rewrite_check.isChecked()
        self.layout_label.setVisible(shown)
        self.layout_editor.setVisible(shown)

    def ignores_unet_settings(self) -> bool:
        """Whether the chosen model is a diffusion transformer: seamless tiling and fast mode are greyed out and
        a job must not ask for them (the ticks stay, for when an SD model is chosen again)."""
        return not self._unet_settings

    def _show_family_rows(self) -> None:
        family = self._families.get(self.selected_model())
        self._unet_settings = not is_dit_family(family)
        self._controls_taken = takes_controls(family)
        # Its rows offer the control models made for it, or its own control input.
        self.control_list.set_model_family(family, self.selected_model() in self._control_input_models)
        self.control_list.setEnabled(self._controls_taken)
        self.control_list.setToolTip("" if self._controls_taken else self.tr(
            "Control units work with Stable Diffusion, SD3, Flux.1, Qwen-Image and Z-Image models, not the chosen one"
        ))  # fmt: skip
        for check, own in ((self.tiling_check, self._tiling_tip), (self.fast_check, self._fast_tip)):
            check.setEnabled(self._unet_settings)
            check.setToolTip(own if self._unet_settings else self.tr(
                "Stable Diffusion 1.x, 2.x and SDXL models only: the chosen model is a diffusion transformer"
            ))  # fmt: skip
        flux_dev = self._families.get(self.selected_model()) in ("flux-dev", "flux2-dev")
        self.distilled_cfg_label.setVisible(flux_dev)
        self.distilled_cfg_spin.setVisible(flux_dev)
        self._rewriter_shown = self._families.get(self.selected_model()) in FLUX3_FAMILIES
        self.rewrite_check.setVisible(self._rewriter_shown)
        self._show_layout_boxes()
        sdxl = self._families.get(self.selected_model(), "").startswith("sdxl")
        self.refiner_label.setVisible(sdxl)
        self.refiner_row.setVisible(sdxl)
        needs = self.selected_model() in self._component_models
        self.text_encoders_label.setVisible(needs)
        self.text_encoders_row.setVisible(needs)
        self.text_encoders_row.show_for(self._families.get(self.selected_model()))
        references = (self._reference_limits or {}).get(self.selected_model(), 0)
        self.references_row.set_limit(references)
        self.references_label.setVisible(references > 0)
        self.references_row.setVisible(references > 0)
        self.family_shown.emit(self._families.get(self.selected_model()))

    def _show_refiner(self, name: str) -> None:
        if self.refiner_combo.findData(name) < 0:  # a recipe's refiner not in the folder stays visible
            self.refiner_combo.addItem(name, name)
        _select_data(self.refiner_combo, name)

    # -------------------------------------------------------------------------------------- seed

    @property
    def last_seed(self) -> int | None:
        return self._last_seed

    def set_last_seed(self, seed: int) -> None:
        self._last_seed = seed
        self.reuse_seed_button.setEnabled(True)
        self.reuse_seed_button.setToolTip(self.tr("Reuse the seed of the last job ({seed})").format(seed=seed))

    @Slot()
    def use_random_seed(self) -> None:
        self.model.update(seed=RANDOM_SEED)

    @Slot()
    def reuse_last_seed(self) -> None:
        if self._last_seed is not None:
            self.model.update(seed=self._last_seed)

    # -------------------------------------------------------------------------------------- size

    @Slot()
    def swap_size(self) -> None:
        self.model.update(width=self.model.value("height"), height=self.model.value("width"))

    @Slot(int)
    def _on_preset_activated(self, index: int) -> None:
        size = self.size_preset_combo.itemData(index)
        if size:
            self.model.update(width=size[0], height=size[1])
        # The combo is an action list, not a state: it always reads "Presets…".
        self.size_preset_combo.setCurrentIndex(0)


@dataclass(frozen=True)
class _Binding:
    widget: QWidget
    read: Callable[[], Any]
    show: Callable[[Any], object]
    edited: SignalInstance


def _resize_spin(name: str) -> QSpinBox:
    spin = QSpinBox(objectName=name)
    spin.setRange(0, MAX_SIDE)
    spin.setSingleStep(8)
    spin.setSpecialValueText(translate("ParameterPanel", "Off"))
    spin.setToolTip(translate("ParameterPanel",
                              "Draw the seed's noise at this size and centre it: keeps a seed's look at a new size"))
    return spin


def _spin_binding(spin: QSpinBox) -> _Binding:
    return _Binding(spin, spin.value, spin.setValue, spin.valueChanged)


def _combo_binding(combo: QComboBox) -> _Binding:
    return _Binding(combo, combo.currentData, lambda value: _select_data(combo, value), combo.currentIndexChanged)


# Product names, but through translation like every text of the panel (a script may transliterate them).
_FEW_STEP_LABELS = {
    "": QT_TRANSLATE_NOOP("ParameterPanel", "None"), "lcm": QT_TRANSLATE_NOOP("ParameterPanel", "LCM"),
    "turbo": QT_TRANSLATE_NOOP("ParameterPanel", "Turbo"),
    "lightning": QT_TRANSLATE_NOOP("ParameterPanel", "Lightning"),
    "hyper": QT_TRANSLATE_NOOP("ParameterPanel", "Hyper-SD"), "dmd2": QT_TRANSLATE_NOOP("ParameterPanel", "DMD2"),
}
_OWN_VAE_LABEL = QT_TRANSLATE_NOOP("ParameterPanel", "Automatic (the model's own)")


def _combo(name: str, values: Sequence[str], labels: Mapping[str, str]) -> QComboBox:
    combo = QComboBox(objectName=name)
    for value in values:
        combo.addItem(translate("ParameterPanel", labels[value]) if value in labels else value, value)
    return combo


def _disable_item(combo: QComboBox, value: str, why: str) -> None:
    """Greys out `value`'s entry (shown, so the mode is known to exist) and says why in its tooltip."""
    index = combo.findData(value)
    item = combo.model().item(index) if isinstance(combo.model(), QStandardItemModel) else None
    if item is not None:
        item.setEnabled(False)
        item.setToolTip(why)


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
