"""The live estimate under the preset form: steps, time, VRAM, what they are for, the
Replicate cost, and a warning with one-click fixes when the run will not fit the GPU.

::

    Estimate                                    for this computer: RTX 3060, 12 GB
    12 images × 1 repeat × 10 epochs ÷ batch 2 = 60 steps
    ≈ 4 min on an RTX 4090-class GPU · ≈ 24.7 GB VRAM
    ┌ ⚠ Needs ≈ 24.7 GB of VRAM; the RTX 3060 has 12 GB. Any one of these fits: ┐
    │ [Apply]  Gradient checkpointing → 12.1 GB (~25% slower steps)              │
    │ [Apply]  Resolution 512 px → 11.2 GB (less fine detail)                    │
    └────────────────────────────────────────────────────────────────────────────┘
    Estimated cost on Replicate: about $0.42 …

The numbers arrive from the controller (computed off the GUI thread); the fixes are
:func:`lora_studio.core.estimates.fit_suggestions`, plain arithmetic. "Apply" emits the
changed fields; the form turns them into a new config.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.config import LoraConfig
from lora_studio.core.estimates import Estimate, FitSuggestion, fit_suggestions, format_duration
from lora_studio.gui import artwork


@dataclass(frozen=True)
class GpuInfo:
    """The GPU the estimate is compared with (``memory_gb`` 0: unknown)."""

    name: str
    memory_gb: float


def steps_formula(estimate: Estimate, config: LoraConfig, images: int) -> str:
    """``12 images × 1 repeat × 5 epochs ÷ batch 1 = 60 steps``, spelled out."""
    plan = estimate.plan
    if images <= 0:
        return "Open a dataset to see how many steps this is."
    repeat_word = "repeat" if config.repeats == 1 else "repeats"
    if plan.samples_per_epoch == images * config.repeats:
        samples = f"{images} images \u00d7 {config.repeats} {repeat_word}"
    else:
        samples = f"{plan.samples_per_epoch} samples ({images} images with folder repeats)"
    if config.gradient_accumulation_steps > 1:
        divisor = (
            f"(batch {config.batch_size} \u00d7 accumulation {config.gradient_accumulation_steps})"
        )
    else:
        divisor = f"batch {config.batch_size}"
    if config.max_steps:
        return (
            f"{plan.total_steps} steps (max steps) \u2248 {plan.epochs} epochs of "
            f"{samples} \u00f7 {divisor}"
        )
    epoch_word = "epoch" if plan.epochs == 1 else "epochs"
    return (
        f"{samples} \u00d7 {plan.epochs} {epoch_word} \u00f7 {divisor} = {plan.total_steps} steps"
    )


def cost_text(estimate: Estimate) -> str:
    """``≈ 9 s on a 2-core CPU · ≈ 0.1 GB VRAM``."""
    return (
        f"\u2248 {format_duration(estimate.seconds)} on {estimate.hardware} \u00b7 "
        f"\u2248 {estimate.vram_gb:.1f} GB VRAM"
    )


def cache_note(config: LoraConfig) -> str:
    """Why caption embeddings cannot be cached for ``config`` ("" when they can)."""
    if config.uses_text_cache:
        return ""
    varying = [
        what
        for what, on in (
            ("caption dropout", config.caption_dropout > 0),
            ("tag shuffling", config.shuffle_tags),
        )
        if on
    ]
    if varying:
        verb = "vary" if len(varying) > 1 else "varies"
        return f"Text cache off: {' and '.join(varying)} {verb} the captions."
    return "Text cache off: the text encoder is trained."


def device_text(
    estimate: Estimate | None,
    gpu: GpuInfo | None,
    remote: str = "",
    remote_gpu: GpuInfo | None = None,
) -> str:
    """What the numbers are for: the GPU found here (or on the server that trains), or the
    reference hardware."""
    if remote and remote_gpu is not None and remote_gpu.memory_gb > 0:
        return (
            f"Training on {remote}: {remote_gpu.name or 'its GPU'}, "
            f"{remote_gpu.memory_gb:.0f} GB. Time is for {_hardware(estimate)}."
        )
    if remote:
        return f"Training on {remote}: time and VRAM are for {_hardware(estimate)}."
    if gpu is None:
        return "Looking for a GPU\u2026"
    if gpu.memory_gb <= 0 and not gpu.name:
        return f"No CUDA GPU here: the time and VRAM are for {_hardware(estimate)}" + (
            " (the built-in tiny model trains on this CPU)." if _tiny(estimate) else "."
        )
    memory = f", {gpu.memory_gb:.0f} GB" if gpu.memory_gb > 0 else ""
    return f"This computer: {gpu.name}{memory}. Time is for {_hardware(estimate)}."


def _hardware(estimate: Estimate | None) -> str:
    return estimate.hardware if estimate is not None else "an RTX 4090-class GPU"


def _tiny(estimate: Estimate | None) -> bool:
    return estimate is not None and estimate.tiny


class EstimatePanel(QFrame):
    """Steps, time and VRAM, and how to make a run fit (see the module docstring).

    Signals:
        apply_requested(dict): set these config fields (an "Apply" button was pressed).
    """

    apply_requested = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("estimateBox")
        self._estimate: Estimate | None = None
        self._config: LoraConfig | None = None
        self._images = 0
        self._gpu: GpuInfo | None = None
        self._remote = ""
        self._remote_gpu: GpuInfo | None = None
        self.suggestions: list[FitSuggestion] = []
        self.apply_buttons: list[QPushButton] = []
        self._dark: bool | None = None

        title = QLabel("Estimate")
        title.setObjectName("estimateTitle")
        self.device_label = QLabel()
        self.device_label.setObjectName("estimateDevice")
        self.device_label.setWordWrap(True)
        self.device_label.setToolTip(
            "The VRAM estimate is compared with the GPU found on this computer. Times are "
            "for the reference hardware named here; a slower GPU takes longer."
        )
        self.steps_label = QLabel()
        self.steps_label.setWordWrap(True)
        self.steps_label.setStyleSheet("font-weight: bold;")
        self.cost_label = QLabel()
        self.cost_label.setWordWrap(True)
        self.cost_label.setToolTip(
            "Estimated from the model family, resolution, batch size and rank "
            "(docs/estimates.md); real runs vary with the hardware."
        )
        self.cache_label = QLabel()
        self.cache_label.setWordWrap(True)
        self.cache_label.setObjectName("estimateMuted")
        self.cache_label.setToolTip(
            "Caption embeddings are normally computed once and reused every epoch (and by the "
            "next run, when cached to disk). When the caption text changes from step to step, "
            "or the text encoder itself is trained, they are encoded at every step instead: "
            "a little slower, and the text encoders stay in memory."
        )
        self.cache_label.hide()
        self.remote_cost_label = QLabel()
        self.remote_cost_label.setWordWrap(True)
        self.remote_cost_label.setToolTip(
            "Replicate bills the seconds the trainer runs; the estimate uses the trainer's "
            "typical speed and the published price per second"
        )
        self.remote_cost_label.hide()

        self.warning = QFrame()
        self.warning.setObjectName("vramWarning")
        self.warning_label = QLabel()
        self.warning_label.setWordWrap(True)
        self.warning_label.setObjectName("vramWarningText")
        self.fixes = QGridLayout()
        self.fixes.setContentsMargins(0, 0, 0, 0)
        self.fixes.setHorizontalSpacing(8)
        self.fixes.setVerticalSpacing(3)
        self.fixes.setColumnStretch(1, 1)
        warning_layout = QVBoxLayout(self.warning)
        warning_layout.setContentsMargins(8, 6, 8, 6)
        warning_layout.setSpacing(4)
        warning_layout.addWidget(self.warning_label)
        warning_layout.addLayout(self.fixes)
        self.warning.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(3)
        layout.addWidget(title)
        layout.addWidget(self.steps_label)
        layout.addWidget(self.cost_label)
        layout.addWidget(self.cache_label)
        layout.addWidget(self.warning)
        layout.addWidget(self.remote_cost_label)
        layout.addWidget(self.device_label)
        self.apply_palette()
        self._show()

    # ---- input -----------------------------------------------------------------------

    def set_estimate(self, estimate: Estimate, config: LoraConfig) -> None:
        self._estimate, self._config = estimate, config
        self._show()

    def set_config(self, config: LoraConfig) -> None:
        self._config = config
        self._show()

    def set_image_count(self, images: int) -> None:
        self._images = images
        self._show()

    def set_gpu(self, gpu: GpuInfo | None) -> None:
        """The GPU found here (``GpuInfo("", 0)``: none)."""
        self._gpu = gpu
        self._show()

    def set_remote(self, where: str) -> None:
        """Training elsewhere (``""``: here): no comparison with this computer's GPU (but
        with the server's, once :meth:`set_remote_gpu` says what it has)."""
        if where != self._remote:
            self._remote_gpu = None
        self._remote = where
        self._show()

    def set_remote_gpu(self, gpu: GpuInfo | None) -> None:
        """The GPU of the server that trains (from its Test connection)."""
        if gpu is not None:  # ComfyUI names it "cuda:0 NVIDIA GeForce RTX 4090"
            gpu = GpuInfo(re.sub(r"^(cuda|mps|xpu):\d+\s+", "", gpu.name), gpu.memory_gb)
        self._remote_gpu = gpu if self._remote else None
        self._show()

    @property
    def compared_gpu(self) -> GpuInfo | None:
        """The GPU the VRAM estimate is compared with (``None``: none known)."""
        return self._remote_gpu if self._remote else self._gpu

    def set_remote_cost(self, text: str) -> None:
        """The Replicate cost line ("" hides it)."""
        self.remote_cost_label.setText(text)
        self.remote_cost_label.setVisible(bool(text) and bool(self._remote))

    @property
    def over_budget(self) -> bool:
        """The VRAM estimate is more than the GPU here has."""
        return not self.warning.isHidden()

    def apply_palette(self) -> None:
        """Colours that read on the current palette (light or dark)."""
        dark = artwork.is_dark(self.palette())
        if dark == self._dark:
            return
        self._dark = dark
        box_bg, box_border = ("#262b45", "#4a5590") if dark else ("#eef1fb", "#c5cae9")
        warn_bg, warn_border, warn_text = (
            ("#3d2a12", "#b26a00", "#ffcc80") if dark else ("#fff4e5", "#e0a040", "#8a5300")
        )
        muted = artwork.muted_color(self.palette()).name()
        self.setStyleSheet(
            f"#estimateBox {{ background: {box_bg}; border: 1px solid {box_border};"
            " border-radius: 6px; }"
            f" #estimateTitle, #estimateDevice, #estimateMuted {{ color: {muted}; }}"
            f" #vramWarning {{ background: {warn_bg}; border: 1px solid {warn_border};"
            " border-radius: 4px; }"
            f" #vramWarningText, #vramFix {{ color: {warn_text}; }}"
        )

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self.apply_palette()  # the system switched between light and dark

    # ---- display ---------------------------------------------------------------------

    def _show(self) -> None:
        estimate, config = self._estimate, self._config
        self.device_label.setText(device_text(estimate, self._gpu, self._remote, self._remote_gpu))
        note = cache_note(config) if config is not None else ""
        self.cache_label.setText(note)
        self.cache_label.setVisible(bool(note))
        self.remote_cost_label.setVisible(
            bool(self.remote_cost_label.text()) and bool(self._remote)
        )
        if estimate is None or config is None:
            self.steps_label.setText("Estimating\u2026")
            self.cost_label.setText("")
            self._show_fit([], 0.0)
            return
        self.steps_label.setText(steps_formula(estimate, config, self._images))
        self.cost_label.setText(cost_text(estimate) if self._images else "")
        gpu = self.compared_gpu
        if gpu is None or gpu.memory_gb <= 0 or estimate.vram_gb <= gpu.memory_gb:
            self._show_fit([], 0.0)
            return
        found = fit_suggestions(config, gpu.memory_gb, estimate.family, tiny=estimate.tiny)
        self._show_fit(found, estimate.vram_gb)

    def _show_fit(self, found: list[FitSuggestion], needed: float) -> None:
        for button in self.apply_buttons:
            button.deleteLater()
        while self.fixes.count():
            item = self.fixes.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.apply_buttons = []
        self.suggestions = found
        gpu = self.compared_gpu
        if gpu is None or needed <= 0:
            self.warning.hide()
            return
        name = gpu.name or ("the server's GPU" if self._remote else "the GPU here")
        head = (
            f"\u26a0 Needs \u2248 {needed:.1f} GB of VRAM; {name} has {gpu.memory_gb:.0f} GB. "
            "Training would run out of memory."
        )
        if found:
            head += " Any one of these makes it fit:" if len(found) > 1 else " This makes it fit:"
        else:
            head += (
                " No change of rank, batch, resolution, checkpointing or optimizer brings it "
                "under: train on a GPU with more memory (ComfyUI, Replicate) or a smaller model."
            )
        self.warning_label.setText(head)
        for row, suggestion in enumerate(found):
            button = QPushButton("Apply")
            button.setObjectName(f"fit_{row}")
            button.setToolTip("Change " + ", ".join(_describe(suggestion.changes)))
            button.clicked.connect(functools.partial(self._apply, suggestion))
            text = QLabel(
                f"{suggestion.label} \u2192 \u2248 {suggestion.vram_gb:.1f} GB"
                + (f" ({suggestion.cost})" if suggestion.cost else "")
            )
            text.setObjectName("vramFix")
            text.setWordWrap(True)
            self.fixes.addWidget(button, row, 0, Qt.AlignmentFlag.AlignTop)
            self.fixes.addWidget(text, row, 1)
            self.apply_buttons.append(button)
        self.warning.show()

    def _apply(self, suggestion: FitSuggestion) -> None:
        self.apply_requested.emit(dict(suggestion.changes))


def _describe(changes: dict[str, Any]) -> list[str]:
    return [f"{name.replace('_', ' ')} to {value}" for name, value in changes.items()]
