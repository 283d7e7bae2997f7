"""The main window: the four panels, the File menu, messages, drag and drop.

Layout (splitters, so every border can be dragged)::

    ┌ dataset browser ┬ caption grid ┬ preset form ┐
    │                 │              │  estimate   │
    │                 │              │  [ Train ]  │
    ├─────────────────┴──────────────┴─────────────┤
    │ job monitor: status, progress, loss, log      │
    └───────────────────────────────────────────────┘

The window wires panels to the :class:`~lora_studio.gui.controller.StudioController`; it
reads and writes no files itself (QSettings aside).
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
from pathlib import Path

from PySide6.QtCore import (
    QByteArray,
    QItemSelection,
    QItemSelectionModel,
    QMimeData,
    QSettings,
    Qt,
    QTimer,
)
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDragMoveEvent,
    QDropEvent,
    QKeySequence,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QSplitter,
    QTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lora_studio.captioning.runner import CaptionProgress
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.estimates import Estimate
from lora_studio.core.formats import image_extensions
from lora_studio.core.jobs import BackendType, Job, JobStatus, Progress
from lora_studio.core.user_presets import PERSONAL_FIELDS, USER_PREFIX, is_user_key, user_key
from lora_studio.gui import artwork
from lora_studio.gui import settings as app_settings
from lora_studio.gui.backend_panel import KEY_BACKEND, BackendChoice, BackendPanel
from lora_studio.gui.caption_controller import CaptionController
from lora_studio.gui.caption_dialog import CaptionRunDialog, progress_text
from lora_studio.gui.caption_grid import CaptionGrid
from lora_studio.gui.caption_watch import CaptionWatcher
from lora_studio.gui.controller import ERROR, INFO, WARNING, StudioController, sample_copy_dir
from lora_studio.gui.dataset_browser import DatasetBrowser
from lora_studio.gui.dataset_model import Column, DatasetModel, ListingModel
from lora_studio.gui.estimate_panel import GpuInfo
from lora_studio.gui.frames_dialog import FramesDialog, is_frame_source
from lora_studio.gui.job_monitor import JobMonitor, MonitorState
from lora_studio.gui.preset_form import PresetForm
from lora_studio.gui.preset_library import PresetLibrary
from lora_studio.gui.recent_datasets import RecentMenu, remember_recent
from lora_studio.gui.settings_dialog import SettingsDialog, SettingsService, SettingsValues
from lora_studio.gui.thumbnail_loader import ThumbnailLoader

log = logging.getLogger(__name__)

APP_TITLE = "LoRA Studio"


def dataset_folder_from_mime(mime: QMimeData) -> Path | None:
    """The folder a drop means: a dropped folder, or the folder of dropped image files."""
    if not mime.hasUrls():
        return None
    for url in mime.urls():
        if not url.isLocalFile():
            continue
        path = Path(url.toLocalFile())
        if path.is_dir():
            return path
        if path.suffix.lower() in image_extensions():
            return path.parent
    return None


def frame_source_from_mime(mime: QMimeData) -> Path | None:
    """A dropped video or edit timeline (frames can be extracted from it), if any."""
    if not mime.hasUrls():
        return None
    for url in mime.urls():
        if url.isLocalFile() and is_frame_source(Path(url.toLocalFile())):
            return Path(url.toLocalFile())
    return None


class MessageBar(QFrame):
    """A one-line banner for warnings and errors, dismissible."""

    _STYLES = {
        INFO: ("#e8eaf6", "#3949ab", "\u2139"),
        WARNING: ("#fff4e5", "#8a5300", "\u26a0"),
        ERROR: ("#fdecea", "#b71c1c", "\u2716"),
    }

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.icon = QLabel()
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QToolButton()
        self.details_button.setText("Details\u2026")
        self.details_button.setAutoRaise(True)
        self.details_button.setToolTip("What exactly went wrong (to copy into a bug report)")
        self.details_button.clicked.connect(self.show_details)
        self.details_button.hide()
        self.details = ""
        self.close_button = QToolButton()
        self.close_button.setText("\u2715")
        self.close_button.setAutoRaise(True)
        self.close_button.setToolTip("Dismiss")
        self.close_button.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(self.icon)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.details_button)
        layout.addWidget(self.close_button)
        self.level = INFO
        self.hide()

    def text(self) -> str:
        return self.label.text()

    def show_message(self, level: str, text: str) -> None:
        background, color, icon = self._STYLES.get(level, self._STYLES[ERROR])
        self.level = level
        self.setStyleSheet(
            f"#messageBar {{ background: {background}; border: 1px solid {color};"
            f" border-radius: 4px; }} QLabel {{ color: {color}; }}"
        )
        self.icon.setText(icon)
        self.label.setText(text)
        self.set_details("")  # a new message; its details (if any) follow it
        self.show()

    def set_details(self, details: str) -> None:
        """Offer ``details`` (a traceback) behind the Details button; empty: no button."""
        self.details = details
        self.details_button.setVisible(bool(details))

    def show_details(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Critical, "Details", self.label.text(), parent=self)
        box.setDetailedText(self.details)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.open()
        self.details_box = box


class DropHint(QLabel):
    """Covers the window while something droppable is dragged over it."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__("Drop to open as the dataset", parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setStyleSheet(
            "background: rgba(63, 81, 181, 150); color: white; font-size: 24pt;"
            " font-weight: bold; border: 4px dashed white; border-radius: 12px;"
        )
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.hide()


def _text_value(value: object) -> str | None:
    return value if isinstance(value, str) else None


class MainWindow(QMainWindow):
    """LoRA Studio's window (see the module docstring).

    Args:
        controller: the controller the panels talk to.
        settings: where geometry, the last dataset and settings are remembered.
        confirm_close: ask before quitting during a run or dropping unsaved captions;
            tests and scripts turn it off (then a close during a run just cancels it).
        thumbnails: the thumbnail loader (one is made if not given).
    """

    def __init__(
        self,
        controller: StudioController,
        settings: QSettings | None = None,
        *,
        confirm_close: bool = True,
        thumbnails: ThumbnailLoader | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.settings = settings if settings is not None else app_settings.open_settings()
        self.confirm_close = confirm_close
        self.messages: list[tuple[str, str]] = []
        self._close_when_stopped = False
        self._syncing_selection = False
        self._closed = False

        self.setWindowTitle(APP_TITLE)
        self.setWindowIcon(artwork.app_icon())
        self.setAcceptDrops(True)

        self.thumbnails = thumbnails or ThumbnailLoader(parent=self)
        self.dataset_model = DatasetModel(self.thumbnails, self)
        self.browser = DatasetBrowser(
            self.dataset_model, listing=ListingModel(self.thumbnails, self)
        )
        self.caption_grid = CaptionGrid(self.dataset_model)
        self.preset_form = PresetForm(controller.config)
        self.preset_form.set_base_model(controller.base_model)
        self.preset_form.set_output_dir(str(controller.output_dir))
        self.job_monitor = JobMonitor()
        self.backend_panel = BackendPanel()
        self.preset_form.add_backend_panel(self.backend_panel)
        choice = BackendChoice.from_json(_text_value(self.settings.value(KEY_BACKEND)))
        self.backend_panel.set_choice(choice)
        self.preset_form.set_base_model_required(not choice.is_remote)
        self._show_backend_in_estimate(choice)
        controller.set_backend_choice(choice)
        self.cost_dialog: QMessageBox | None = None
        self.frames_dialog: FramesDialog | None = None
        self.message_bar = MessageBar()
        self.captions = CaptionController(controller, parent=self)
        self.caption_watcher = CaptionWatcher(controller, self)
        self.caption_grid.set_training(controller.config.trigger_word, controller.config.family)
        self.caption_dialog: CaptionRunDialog | None = None
        self.settings_dialog: SettingsDialog | None = None
        self.preset_library = PresetLibrary(self)
        preferences = app_settings.read_preferences(self.settings)
        if preferences.device != "auto":  # "auto" leaves a LORA_STUDIO_DEVICE of the shell
            app_settings.apply_device(preferences.device)
        processes, sections = app_settings.read_form_state(self.settings)
        self.preset_form.advanced.set_expanded_sections(sections)
        self.preset_form.set_processes(processes)
        controller.set_processes(self.preset_form.processes)

        self.top_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.top_splitter.addWidget(self.browser)
        self.top_splitter.addWidget(self.caption_grid)
        self.top_splitter.addWidget(self.preset_form)
        self.top_splitter.setStretchFactor(0, 3)
        self.top_splitter.setStretchFactor(1, 5)
        self.top_splitter.setStretchFactor(2, 4)
        self.top_splitter.setChildrenCollapsible(False)
        self.main_splitter = QSplitter(Qt.Orientation.Vertical)
        self.main_splitter.addWidget(self.top_splitter)
        self.main_splitter.addWidget(self.job_monitor)
        self.main_splitter.setStretchFactor(0, 3)
        self.main_splitter.setStretchFactor(1, 1)
        self.main_splitter.setChildrenCollapsible(False)
        for splitter in (self.top_splitter, self.main_splitter):
            splitter.setHandleWidth(6)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addWidget(self.message_bar)
        layout.addWidget(self.main_splitter, 1)
        self.setCentralWidget(central)
        self.drop_hint = DropHint(central)

        self._build_menus()
        # The status bar: the last message on the left, the dataset and the device on the right.
        self.status_dataset = QLabel("No dataset")
        self.status_dataset.setObjectName("statusDataset")
        self.status_device = QLabel("Looking for a GPU\u2026")
        self.status_device.setObjectName("statusDevice")
        # A caption run going on with its dialog closed: click to bring the dialog back.
        self.status_captioning = QToolButton()
        self.status_captioning.setObjectName("statusCaptioning")
        self.status_captioning.setAutoRaise(True)
        self.status_captioning.setToolTip("A caption run is going on: click to show it")
        self.status_captioning.clicked.connect(self.open_caption_dialog)
        self.status_captioning.hide()
        self.statusBar().addPermanentWidget(self.status_captioning)
        self.statusBar().addPermanentWidget(self.status_dataset)
        self.statusBar().addPermanentWidget(self.status_device)
        self.statusBar().showMessage("Ready")
        self._connect()
        self._restore_geometry()

    # ---- setup ---------------------------------------------------------------------------

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open dataset folder\u2026", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.choose_dataset_folder)
        self.sample_action = QAction("Open &sample dataset", self)
        self.sample_action.triggered.connect(self.open_sample_dataset)
        self.load_config_action = QAction("&Load settings\u2026", self)
        self.load_config_action.triggered.connect(self.choose_config_to_load)
        self.save_config_action = QAction("Sa&ve settings\u2026", self)
        self.save_config_action.setShortcut(QKeySequence.StandardKey.Save)
        self.save_config_action.triggered.connect(self.choose_config_to_save)
        self.train_action = QAction("&Train", self)
        self.train_action.setShortcut(QKeySequence("Ctrl+Return"))
        self.train_action.triggered.connect(self._train_if_enabled)
        self.quit_action = QAction("&Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.close)
        self.recent_menu = RecentMenu(self.settings, self)
        self.recent_menu.folder_chosen.connect(self.open_dataset)
        self.frames_action = QAction("E&xtract frames from a video\u2026", self)
        self.frames_action.triggered.connect(self.choose_video)
        file_menu.addAction(self.open_action)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.sample_action)
        file_menu.addAction(self.frames_action)
        file_menu.addSeparator()
        file_menu.addAction(self.load_config_action)
        file_menu.addAction(self.save_config_action)
        file_menu.addSeparator()
        file_menu.addAction(self.train_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)

        edit_menu = self.menuBar().addMenu("&Edit")
        for action in self.caption_grid.edit_actions():
            if action is None:
                edit_menu.addSeparator()
            else:
                edit_menu.addAction(action)
        edit_menu.addMenu(self.caption_grid.batch_menu)
        edit_menu.addSeparator()
        self.settings_action = QAction("&Settings\u2026", self)
        self.settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.settings_action.setShortcut(QKeySequence.StandardKey.Preferences)
        self.settings_action.triggered.connect(self.open_settings_dialog)
        edit_menu.addAction(self.settings_action)

        captions_menu = self.menuBar().addMenu("&Captions")
        self.caption_action = QAction("&Caption images\u2026", self)
        self.caption_action.setShortcut(QKeySequence("Ctrl+Shift+C"))
        self.caption_action.triggered.connect(self.open_caption_dialog)
        self.review_action = QAction("Show images with a &proposed caption", self)
        self.review_action.triggered.connect(self.caption_grid.show_proposals)
        self.accept_all_action = QAction("&Accept all proposed captions", self)
        self.accept_all_action.triggered.connect(self.caption_grid.review_bar.accept_all)
        self.reject_all_action = QAction("&Reject all proposed captions", self)
        self.reject_all_action.triggered.connect(self.caption_grid.review_bar.reject_all)
        for action in (self.caption_action, self.review_action):
            captions_menu.addAction(action)
        captions_menu.addSeparator()
        captions_menu.addAction(self.accept_all_action)
        captions_menu.addAction(self.reject_all_action)

    def _connect(self) -> None:
        c = self.controller
        c.dataset_loading.connect(self.browser.set_loading)
        c.dataset_preview.connect(self._on_dataset_preview)
        c.waits_for_previews = True
        # The index waits for the listing's visible thumbnails (or all prefetched
        # ones, when the browser shows no listing).
        self.browser.listing.page_shown.connect(self._on_first_page_shown)
        self.thumbnails.prefetch_finished.connect(self._on_first_page_shown)
        c.dataset_loaded.connect(self._on_dataset_loaded)
        c.dataset_failed.connect(self._on_dataset_failed)
        c.file_sizes_read.connect(self.browser.proxy.set_file_sizes)
        c.validation_progress.connect(self.dataset_model.set_validation_progress)
        c.dataset_validated.connect(self.dataset_model.set_validation)
        c.caption_saved.connect(self.dataset_model.caption_saved)
        c.caption_failed.connect(self.dataset_model.caption_failed)
        c.captions_changed_on_disk.connect(self.dataset_model.mark_changed_on_disk)
        self.dataset_model.caption_remove_requested.connect(c.remove_caption)
        c.captions_reloaded.connect(self.dataset_model.captions_reloaded)
        self.caption_grid.reload_requested.connect(c.reload_captions)
        self.caption_grid.keep_requested.connect(self._keep_captions)
        c.config_changed.connect(self._on_config_changed)
        c.base_model_checked.connect(self._on_base_model_checked)
        c.output_dir_changed.connect(self._on_output_dir_changed)
        c.estimate_changed.connect(self._on_estimate)
        c.training_active_changed.connect(self._on_training_active)
        c.job_started.connect(self._on_job_started)
        c.job_progress.connect(self._on_local_progress)
        c.jobs_listed.connect(self.job_monitor.jobs.model.set_jobs)
        c.job_updated.connect(self._on_job_updated)
        c.job_details.connect(self._on_job_details)
        c.backend_checked.connect(self._on_backend_checked)
        c.token_state_changed.connect(self.backend_panel.set_token_state)
        c.remote_cost_changed.connect(self.preset_form.estimate_panel.set_remote_cost)
        c.job_finished.connect(self._on_job_finished)
        c.resume_available.connect(self.job_monitor.set_resume_point)
        c.devices_detected.connect(self._on_devices_detected)
        c.gpu_detected.connect(self._on_gpu_detected)
        c.backend_gpu.connect(
            lambda name, memory: self.preset_form.estimate_panel.set_remote_gpu(
                GpuInfo(name, memory)
            )
        )
        c.caption_saved.connect(self._update_status_dataset)
        c.buckets_changed.connect(self.dataset_model.set_placements)
        c.message.connect(self.show_message)
        c.error_details.connect(self.message_bar.set_details)
        self.job_monitor.check_requested.connect(c.check_compatibility)
        c.compatibility_checked.connect(self._on_compatibility_checked)

        self.dataset_model.caption_edit_requested.connect(c.save_caption)
        self.browser.open_folder_requested.connect(self.choose_dataset_folder)
        self.browser.open_sample_requested.connect(self.open_sample_dataset)
        self.browser.show_problems_requested.connect(self.caption_grid.show_problems)
        self.caption_grid.caption_images_requested.connect(self.open_caption_dialog)
        self.caption_grid.accept_requested.connect(self.captions.accept)
        self.caption_grid.reject_requested.connect(self.captions.reject)
        self.caption_grid.notice.connect(self.show_message)
        self.captions.proposals_loaded.connect(self._on_proposals_loaded)
        self.captions.proposals_added.connect(self.dataset_model.add_proposals)
        self.captions.proposals_resolved.connect(self.dataset_model.resolve_proposals)
        self.captions.message.connect(self.show_message)
        self.captions.running_changed.connect(self._on_captioning)
        self.captions.run_progress.connect(self._on_caption_progress)
        self.preset_form.config_edited.connect(c.set_config)
        self.preset_form.preset_selected.connect(self._on_preset_selected)
        self.preset_form.save_preset_requested.connect(
            lambda name: self.preset_library.save(name, self.controller.config)
        )
        self.preset_form.delete_preset_requested.connect(self.preset_library.delete)
        self.preset_library.presets_changed.connect(self.preset_form.set_user_presets)
        self.preset_library.saved.connect(self._on_preset_saved)
        self.preset_library.message.connect(self.show_message)
        self.preset_form.base_model_edited.connect(c.set_base_model)
        self.preset_form.output_dir_edited.connect(c.set_output_dir)
        self.preset_form.train_requested.connect(self.train)
        self.preset_form.save_config_requested.connect(self.choose_config_to_save)
        self.preset_form.load_config_requested.connect(self.choose_config_to_load)
        self.preset_form.processes_edited.connect(self._on_processes_edited)
        self.job_monitor.cancel_requested.connect(c.cancel_training)
        self.job_monitor.pause_requested.connect(c.pause_training)
        self.job_monitor.unpause_requested.connect(c.resume_paused_training)
        self.job_monitor.resume_checkpoint_requested.connect(c.start_training)
        jobs = self.job_monitor.jobs
        jobs.job_selected.connect(self._on_job_selected)
        jobs.cancel_requested.connect(c.cancel_job)
        jobs.retry_requested.connect(c.retry_job)
        jobs.resume_requested.connect(c.resume_job)
        jobs.move_requested.connect(c.move_job)
        self.backend_panel.choice_changed.connect(self._on_backend_choice)
        self.backend_panel.test_requested.connect(c.check_backend)
        self.backend_panel.token_save_requested.connect(c.save_replicate_token)

        self.browser.view.selectionModel().selectionChanged.connect(self._sync_from_browser)
        self.browser.view.verticalScrollBar().valueChanged.connect(
            lambda _value: self.controller.hold_background_work()
        )
        self.caption_grid.table.selectionModel().selectionChanged.connect(self._sync_from_grid)
        self.browser.view.doubleClicked.connect(
            lambda index: self.caption_grid.edit_caption(self.browser.source_row(index))
        )

    # ---- session -------------------------------------------------------------------------

    def start_session(self, dataset: str | Path | None = None) -> None:
        """Start the controller and open ``dataset``, the remembered one, or the sample."""
        self.controller.start()
        self.preset_library.load()
        if dataset:
            self.controller.open_dataset(dataset)
            return
        last = app_settings.read_session(self.settings).last_dataset
        if not last:
            self.controller.open_sample_dataset()
            return
        task = self.controller.open_dataset(last)

        def fall_back(done: asyncio.Task[None]) -> None:
            # The remembered folder is gone (moved, unplugged): show the sample instead
            # of an empty window; the error message says what happened.
            if not done.cancelled() and self.controller.dataset is None and not self._closed:
                self.controller.open_sample_dataset()

        task.add_done_callback(fall_back)

    # ---- actions -------------------------------------------------------------------------

    def choose_dataset_folder(self) -> None:
        start = str(self.controller.dataset.root) if self.controller.dataset else ""
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images", start)
        if folder:
            self.open_dataset(folder)

    def choose_video(self) -> None:
        """Pick a video or an edit timeline and open the frame-extraction dialog."""
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Extract frames from a video",
            "",
            "Videos and timelines (*.mp4 *.m4v *.mov *.mkv *.webm *.avi *.wmv *.mpg *.mpeg"
            " *.ts *.mts *.m2ts *.otio *.edl *.xml *.fcpxml);;All files (*)",
        )
        if path:
            self.open_frames_dialog(Path(path))

    def open_frames_dialog(self, source: Path) -> FramesDialog:
        """Offer to extract frames from ``source``; the frames open as the dataset."""
        dialog = self.frames_dialog
        if dialog is not None and dialog.worker.running:
            dialog.raise_()
            dialog.activateWindow()
            return dialog
        if dialog is not None:
            dialog.deleteLater()
        dialog = FramesDialog(source, self)
        dialog.dataset_ready.connect(self.open_dataset)
        self.frames_dialog = dialog
        dialog.show()
        return dialog

    def open_dataset(self, folder: str | Path) -> None:
        """Open ``folder`` as the dataset (after asking, if captions are unsaved)."""
        if self._may_discard_unsaved():
            self.controller.open_dataset(folder)

    def open_sample_dataset(self) -> None:
        """Open the user's copy of the sample dataset (after asking, if captions are unsaved)."""
        if self._may_discard_unsaved():
            self.controller.open_sample_dataset()

    def _may_discard_unsaved(self, action: str = "Open another dataset") -> bool:
        """``True`` when no caption edit is unsaved, or the user agrees to lose them."""
        unsaved = self.dataset_model.unsaved()
        if not unsaved or not self.confirm_close:
            return True
        answer = QMessageBox.warning(
            self,
            "Captions not saved",
            f"{len(unsaved)} caption(s) could not be saved (see the caption grid). "
            f"{action} and lose those edits?",
            QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Discard

    def choose_config_to_save(self) -> None:
        name = f"{self.controller.config.name}.toml"
        path, _ = QFileDialog.getSaveFileName(self, "Save settings", name, "Settings (*.toml)")
        if path:
            self.controller.save_config(path)

    def choose_config_to_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load settings", "", "Settings (*.toml);;All files (*)"
        )
        if path:
            self.controller.load_config(path)

    # ---- settings ------------------------------------------------------------------------

    def settings_values(self) -> SettingsValues:
        """What the Settings dialog shows: the remembered choices (never a token)."""
        choice = self.backend_panel.choice
        captioning = app_settings.read_caption_choices(self.settings)
        preferences = app_settings.read_preferences(self.settings)
        return SettingsValues(
            comfyui_url=choice.comfyui_url,
            replicate_url=choice.replicate_url,
            hf_endpoint=preferences.hf_endpoint,
            openai_url=captioning.get("openai/url", ""),
            openai_model=captioning.get("openai/model", ""),
            output_dir=str(self.controller.output_dir),
            device=preferences.device,
        )

    def open_settings_dialog(self) -> SettingsDialog:
        """Edit › Settings: servers, tokens, output folder, device."""
        dialog = self.settings_dialog
        if dialog is not None and dialog.isVisible():
            dialog.raise_()
            dialog.activateWindow()
            return dialog
        if dialog is not None:
            dialog.deleteLater()
        service = SettingsService(self.controller.output_dir)
        dialog = SettingsDialog(self.settings_values(), service, self)
        service.setParent(dialog)
        service.token_saved.connect(self._on_token_saved)
        service.token_failed.connect(lambda _service, text: self.show_message(ERROR, text))
        dialog.accepted.connect(lambda: self.apply_settings(dialog.values()))
        self.settings_dialog = dialog
        dialog.show()
        return dialog

    def apply_settings(self, values: SettingsValues) -> None:
        """Use and remember what the Settings dialog says."""
        choice = self.backend_panel.choice
        if values.comfyui_url and values.comfyui_url != choice.comfyui_url:
            choice = dataclasses.replace(choice, comfyui_url=values.comfyui_url)
            self.backend_panel.set_choice(choice)
            self._on_backend_choice(choice)
        if values.output_dir:
            self.controller.set_output_dir(values.output_dir)
        app_settings.remember_caption_choices(
            self.settings, {"openai/url": values.openai_url, "openai/model": values.openai_model}
        )
        app_settings.remember_preferences(
            self.settings, app_settings.Preferences(values.device, values.hf_endpoint)
        )
        app_settings.apply_device(values.device)
        self.show_message(INFO, "Settings saved.")

    def _on_token_saved(self, service: str, warning: str) -> None:
        if warning:  # no keyring on this system: kept in the owner-only fallback file
            self.show_message(WARNING, warning)
        if service == "replicate":
            self.controller.refresh_token_state()

    def open_caption_dialog(self) -> CaptionRunDialog | None:
        """Open (or bring forward) the "Caption images" dialog for the open dataset."""
        dataset = self.controller.dataset
        if dataset is None:
            self.show_message(WARNING, "Open a dataset folder first, then caption its images.")
            return None
        dialog = self.caption_dialog
        if dialog is not None and (dialog.isVisible() or self.captions.running or dialog.unseen):
            # The same dialog while a run goes on, or one that ended unseen: it kept its
            # progress and failures.
            dialog.show()
            dialog.raise_()
            dialog.activateWindow()
            self.status_captioning.setVisible(self.captions.running)
            return dialog
        if dialog is not None:
            dialog.deleteLater()
        dialog = CaptionRunDialog(
            self.captions,
            self.settings,
            trigger_word=self.controller.config.trigger_word or "",
            image_count=len(dataset),
            selected=self.caption_grid.selected_paths(),
            parent=self,
        )
        self.caption_dialog = dialog
        dialog.show()
        return dialog

    def _on_captioning(self, running: bool) -> None:
        dialog = self.caption_dialog
        if running:
            self.status_captioning.setText("Captioning\u2026")
        elif dialog is not None and dialog.unseen:
            # Ended with its dialog closed: the result stays until the user looks.
            self.status_captioning.setText(f"Captioning: {dialog.progress_label.text()}")
        self.status_captioning.setVisible(running or (dialog is not None and dialog.unseen))

    def _on_caption_progress(self, progress: CaptionProgress) -> None:
        self.status_captioning.setText(f"Captioning: {progress_text(progress)}")

    def _on_proposals_loaded(self, dataset: Dataset, proposals: object, provenance: object) -> None:
        if dataset is self.dataset_model.dataset:
            self.dataset_model.set_proposals(proposals, provenance)  # type: ignore[arg-type]

    def _keep_captions(self, captions: dict[Path, str]) -> None:
        """Save the captions shown over files another program changed (the user chose)."""
        for path, text in captions.items():
            self.controller.save_caption(path, text, force=True)

    def select_image(self, row: int) -> None:
        """Select the image in ``row`` in both the browser and the caption grid."""
        index = self.browser.view_index(row)
        if not index.isValid():  # hidden by the browser's filters: show every image
            self.browser.clear_filters()
            index = self.browser.view_index(row)
        self.browser.view.selectionModel().select(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect
        )
        self.browser.view.setCurrentIndex(index)
        self.browser.view.scrollTo(index)

    def show_message(self, level: str, text: str) -> None:
        """Show a message: errors and warnings in the banner, everything in the status bar."""
        self.messages.append((level, text))
        del self.messages[:-200]
        first_line = text.splitlines()[0] if text else ""
        self.statusBar().showMessage(first_line, 15_000 if level == INFO else 0)
        if level in (WARNING, ERROR):
            self.message_bar.show_message(level, text)

    def train(self) -> None:
        """Train where the backend panel says; a Replicate run is confirmed with its
        estimated cost first."""
        if self.controller.backend_choice.kind is not BackendType.REPLICATE:
            self.controller.start_training()
            return
        task = asyncio.ensure_future(self.controller.replicate_cost())

        def confirm(done: asyncio.Future[object]) -> None:
            if done.cancelled() or self._closed:
                return
            exc = done.exception()
            if exc is not None:
                self.show_message(ERROR, f"Cannot train on Replicate: {exc}")
                return
            self._confirm_cost(done.result())

        task.add_done_callback(confirm)

    def _confirm_cost(self, estimate: object) -> None:
        describe = getattr(estimate, "describe", None)
        cost = describe() if callable(describe) else "unknown (no price for this GPU)"
        dialog = QMessageBox(
            QMessageBox.Icon.Question,
            "Train on Replicate?",
            f"This run is billed to your Replicate account: {cost}.\n\n"
            f"The real cost is what the trainer takes; it is shown in the jobs list when "
            f"the run ends.",
            QMessageBox.StandardButton.Cancel,
            self,
        )
        start = dialog.addButton("Train on Replicate", QMessageBox.ButtonRole.AcceptRole)
        dialog.setDefaultButton(QMessageBox.StandardButton.Cancel)
        start.clicked.connect(lambda: self.controller.start_training())
        dialog.finished.connect(dialog.deleteLater)
        self.cost_dialog = dialog
        dialog.open()

    def _on_compatibility_checked(self, text: str, ok: bool, path: Path) -> None:
        self.job_monitor.show_check_done()
        if not text:  # the check itself failed: the message bar says why
            return
        icon = QMessageBox.Icon.Information if ok else QMessageBox.Icon.Warning
        verdict = "loads in every tool checked" if ok else "some tools would leave keys out"
        box = QMessageBox(icon, "Compatibility", f"{Path(path).name} {verdict}.", parent=self)
        lines = text.splitlines()[1:]  # the first line names the file and its format
        box.setInformativeText(
            f"{text.splitlines()[0]}<pre>{html.escape(chr(10).join(lines))}</pre>"
        )
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.open()
        self.compatibility_box = box

    def _train_if_enabled(self) -> None:
        # Ctrl+Return while typing a caption ends the edit (as in the editor's own keys),
        # it must not start a training run by surprise.
        focused = QApplication.focusWidget()
        if isinstance(focused, QLineEdit | QPlainTextEdit | QTextEdit) and not (
            self.preset_form.isAncestorOf(focused)
        ):
            return
        if self.preset_form.train_button.isEnabled():
            self.preset_form.train_button.click()

    # ---- controller signals --------------------------------------------------------------------

    def _on_dataset_preview(self, paths: list[Path]) -> None:
        self.thumbnails.prefetch(paths)
        self.browser.show_listing(paths)

    def _on_first_page_shown(self) -> None:
        self.thumbnails.end_prefetch()
        self.controller.preview_shown()

    def _on_dataset_loaded(self, dataset: Dataset) -> None:
        self.dataset_model.set_dataset(dataset)
        shown = self.browser.listing.icons()
        self.dataset_model.adopt_icons(shown)
        self.thumbnails.discard_prefetched(shown)
        self.browser.loading_ended()
        self.preset_form.set_image_count(len(dataset))
        self._update_status_dataset()
        self.setWindowTitle(f"{dataset.root.name} \u2014 {APP_TITLE}")
        app_settings.remember(self.settings, app_settings.KEY_LAST_DATASET, str(dataset.root))
        if dataset.root != sample_copy_dir():
            remember_recent(self.settings, dataset.root)
        if self.message_bar.isVisible() and self.message_bar.level == ERROR:
            self.message_bar.hide()  # the error that came before is dealt with

    def _on_dataset_failed(self, message: str) -> None:
        self.browser.loading_ended()
        self.browser.update_counts()

    def _on_config_changed(self, config: LoraConfig) -> None:
        self.preset_form.set_config(config)
        self.caption_grid.set_training(config.trigger_word, config.family)
        app_settings.remember_config(self.settings, config)

    def _on_base_model_checked(self, ref: str, description: str, error: str) -> None:
        self.preset_form.set_base_model(ref, description, error)
        if not error:
            app_settings.remember(self.settings, app_settings.KEY_BASE_MODEL, ref)

    def _on_output_dir_changed(self, folder: str) -> None:
        self.preset_form.set_output_dir(folder)
        app_settings.remember(self.settings, app_settings.KEY_OUTPUT_DIR, folder)

    def _on_estimate(self, estimate: Estimate) -> None:
        self.preset_form.set_estimate(estimate)

    def _on_training_active(self, active: bool) -> None:
        self.preset_form.set_training_active(active)
        self.job_monitor.set_training_active(active)
        self.train_action.setEnabled(not active)
        if active and self.message_bar.isVisible() and self.message_bar.level == ERROR:
            self.message_bar.hide()  # an error from before this run would only confuse
        if not active and self._close_when_stopped:
            QTimer.singleShot(0, self.close)

    def _on_job_started(self, job: Job) -> None:
        self.job_monitor.set_pause_supported(self.controller.can_pause)
        self.job_monitor.on_job_started(job)

    def _on_job_finished(self, progress: Progress) -> None:
        if self.job_monitor.shows_local_run:
            self.job_monitor.on_finished(progress)

    def _on_local_progress(self, progress: Progress) -> None:
        if self.job_monitor.shows_local_run:
            self.job_monitor.on_progress(progress)

    def _on_job_updated(self, job: Job, progress: Progress) -> None:
        jobs = self.job_monitor.jobs
        new = jobs.model.row_of(job.id) < 0
        jobs.model.update_job(job, progress)
        self.job_monitor.on_job_update(job, progress)
        if not new:
            return
        local_active = self.controller.is_training and self.job_monitor.shows_local_run
        current = self.controller.current_job
        if current is not None and current.id == job.id:  # the run just started here
            jobs.select_job(job.id, notify=False)
        elif progress.status is JobStatus.QUEUED and not local_active:
            jobs.select_job(job.id)  # follow the run just queued

    def _on_job_selected(self, job: Job | None) -> None:
        if job is None:
            return
        current = self.controller.current_job
        if current is not None and current.id == job.id:
            if not self.job_monitor.shows_local_run:
                self.job_monitor.show_local_run()
                self.job_monitor.set_training_active(True)
                self.job_monitor.on_job_started(current)
                if self.controller.last_progress is not None:
                    self.job_monitor.on_progress(self.controller.last_progress)
            return
        self.controller.load_job_details(job.id)

    def _on_job_details(
        self,
        job: Job,
        logs: list[str],
        losses: list[tuple[int, float]],
        checkpoint: object,
        rates: list[tuple[int, float]] | None = None,
    ) -> None:
        jobs = self.job_monitor.jobs
        jobs.set_resumable(job.id, checkpoint is not None)
        selected = jobs.selected_job()
        if selected is None or selected.id != job.id:
            return  # the user moved on meanwhile
        live = jobs.model.progress(job.id)
        if job.status.is_finished and live is not None and not live.is_finished():
            live = None  # the history is newer
        self.job_monitor.show_job(job, live, logs, losses, rates)

    def _on_backend_choice(self, choice: BackendChoice) -> None:
        self._show_backend_in_estimate(choice)
        self.controller.set_backend_choice(choice)
        self.preset_form.set_base_model_required(not choice.is_remote)
        self.settings.setValue(KEY_BACKEND, choice.to_json())

    def _show_backend_in_estimate(self, choice: BackendChoice) -> None:
        where = {BackendType.COMFYUI: "the ComfyUI server", BackendType.REPLICATE: "Replicate"}
        self.preset_form.estimate_panel.set_remote(where.get(choice.kind, ""))

    def _on_backend_checked(self, ok: bool, message: str, checkpoints: object) -> None:
        if ok and isinstance(checkpoints, tuple) and checkpoints:
            self.backend_panel.set_checkpoints(checkpoints)
        self.backend_panel.set_check_result(ok, message)

    def _on_devices_detected(self, cuda_count: int, cpu_processes: int) -> None:
        self.preset_form.set_devices(cuda_count, cpu_processes)
        self.controller.set_processes(self.preset_form.processes)

    def _on_preset_selected(self, key: str) -> None:
        if not is_user_key(key):
            self.controller.apply_preset(key)
            return
        preset = self.preset_library.presets.get(key.removeprefix(USER_PREFIX))
        if preset is None:
            self.show_message(ERROR, f"The preset {key.removeprefix(USER_PREFIX)!r} is gone.")
            return
        current = self.controller.config  # the user's own concept stays, as with built-ins
        self.controller.set_config(
            preset.replace(**{name: getattr(current, name) for name in PERSONAL_FIELDS})
        )

    def _on_preset_saved(self, name: str) -> None:
        self.controller.set_config(self.controller.config.replace(preset=user_key(name)))

    def _on_gpu_detected(self, name: str, memory_gb: float) -> None:
        self.preset_form.estimate_panel.set_gpu(GpuInfo(name, memory_gb))
        if name:
            self.status_device.setText(f"{name}, {memory_gb:.0f} GB")
        else:
            self.status_device.setText("No CUDA GPU: CPU")
        self.status_device.setToolTip("The device local training runs on (Edit \u203a Settings)")

    def _update_status_dataset(self, *_: object) -> None:
        dataset = self.controller.dataset
        if dataset is None:
            self.status_dataset.setText("No dataset")
            return
        images = dataset.images
        captioned = sum(1 for item in images if (item.caption or "").strip())
        self.status_dataset.setText(
            f"{dataset.root.name}: {len(images)} image{'s' if len(images) != 1 else ''}, "
            f"{captioned} captioned"
        )

    def _on_processes_edited(self, processes: int) -> None:
        self.controller.set_processes(processes)
        app_settings.remember(self.settings, app_settings.KEY_PROCESSES, str(processes))

    # ---- selection shared by the browser and the grid --------------------------------------------

    def _sync_from_browser(self, *_: object) -> None:
        if self._syncing_selection:
            return
        browser = self.browser
        rows = sorted(
            {browser.source_row(i) for i in browser.view.selectionModel().selectedIndexes()}
        )
        grid = self.caption_grid
        selection = QItemSelection()
        for row in rows:
            index = grid.proxy_index(self.dataset_model.index(row, Column.IMAGE))
            if index.isValid():
                selection.select(index, index)
        self._syncing_selection = True
        try:
            flags = (
                QItemSelectionModel.SelectionFlag.ClearAndSelect
                | QItemSelectionModel.SelectionFlag.Rows
            )
            grid.table.selectionModel().select(selection, flags)
            if not selection.isEmpty():
                first = selection.indexes()[0]
                grid.table.selectionModel().setCurrentIndex(
                    first, QItemSelectionModel.SelectionFlag.NoUpdate
                )
                grid.table.scrollTo(first)
        finally:
            self._syncing_selection = False

    def _sync_from_grid(self, *_: object) -> None:
        if self._syncing_selection:
            return
        grid = self.caption_grid
        rows = sorted(
            {grid.source_index(i).row() for i in grid.table.selectionModel().selectedIndexes()}
        )
        selection = QItemSelection()
        for row in rows:
            if row >= 0:
                index = self.browser.view_index(row)
                if index.isValid():  # not hidden by the browser's filters
                    selection.select(index, index)
        self._syncing_selection = True
        try:
            view = self.browser.view
            view.selectionModel().select(
                selection, QItemSelectionModel.SelectionFlag.ClearAndSelect
            )
            if not selection.isEmpty():
                first = selection.indexes()[0]
                view.selectionModel().setCurrentIndex(
                    first, QItemSelectionModel.SelectionFlag.NoUpdate
                )
                view.scrollTo(first)
        finally:
            self._syncing_selection = False

    # ---- drag and drop ------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
            self._show_drop_hint(True)
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:  # noqa: N802
        self._show_drop_hint(False)
        event.accept()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        self._show_drop_hint(False)
        folder = dataset_folder_from_mime(event.mimeData())
        video = frame_source_from_mime(event.mimeData()) if folder is None else None
        if video is not None:
            event.acceptProposedAction()
            self.open_frames_dialog(video)
            return
        if folder is None:
            self.show_message(
                WARNING,
                "Drop a folder of images (or image files: their folder is opened, or a video "
                "or .otio timeline: its frames are extracted) to use it as the dataset.",
            )
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_dataset(folder)

    def _show_drop_hint(self, visible: bool) -> None:
        if visible:
            self.drop_hint.setGeometry(self.centralWidget().rect().adjusted(12, 12, -12, -12))
            self.drop_hint.raise_()
            self.drop_hint.show()
        else:
            self.drop_hint.hide()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.drop_hint.isVisible():
            self._show_drop_hint(True)

    # ---- closing ------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self.controller.is_training:
            event.ignore()
            if self._close_when_stopped:
                return  # already stopping; the window closes when the run has ended
            if self.confirm_close:
                answer = QMessageBox.question(
                    self,
                    "Training is running",
                    "A training run is going. Stop it and quit?\n\n"
                    "It stops after the current step; what was trained so far is saved.",
                )
                if answer != QMessageBox.StandardButton.Yes:
                    return
            self._close_when_stopped = True
            self.statusBar().showMessage("Stopping the training run before quitting\u2026")
            if self.job_monitor.state is not MonitorState.STOPPING:
                self.job_monitor.cancel_button.click()
            return
        if self.captions.running and self.confirm_close:
            # Its dialog may be closed: the run goes on in the status bar, easy to forget.
            # (Runs start from the dialog, which shows how far this one is.)
            dialog = self.caption_dialog
            done = f" ({dialog.progress_label.text()})" if dialog is not None else ""
            answer = QMessageBox.question(
                self,
                "Captioning is running",
                f"A caption run is going{done}. Stop it and quit?\n\n"
                f"The captions made so far are kept as proposals to review.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        if not self._may_discard_unsaved("Quit anyway"):
            event.ignore()
            return
        self._save_window_state()
        self.captions.shutdown()
        self.thumbnails.shutdown()
        self.job_monitor.shutdown()
        self._closed = True
        event.accept()

    def _save_window_state(self) -> None:
        s = self.settings
        s.setValue(app_settings.KEY_GEOMETRY, self.saveGeometry())
        s.setValue(app_settings.KEY_WINDOW_STATE, self.saveState())
        s.setValue(
            app_settings.KEY_SPLITTERS,
            [self.top_splitter.saveState(), self.main_splitter.saveState()],
        )
        s.setValue(
            app_settings.KEY_ADVANCED_SECTIONS,
            " ".join(self.preset_form.advanced.expanded_sections()),
        )
        s.sync()

    def _restore_geometry(self) -> None:
        geometry = self.settings.value(app_settings.KEY_GEOMETRY)
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1440, 900)
        state = self.settings.value(app_settings.KEY_WINDOW_STATE)
        if isinstance(state, QByteArray):
            self.restoreState(state)
        splitters = self.settings.value(app_settings.KEY_SPLITTERS)
        if isinstance(splitters, list) and len(splitters) == 2:
            for splitter, saved in zip(
                (self.top_splitter, self.main_splitter), splitters, strict=True
            ):
                if isinstance(saved, QByteArray):
                    splitter.restoreState(saved)
        else:
            # Wide enough for two columns of thumbnails at 1440 px; narrower windows scale
            # these down (the browser then shows one column).
            self.top_splitter.setSizes([318, 542, 580])
            self.main_splitter.setSizes([570, 290])
