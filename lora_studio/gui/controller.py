"""``StudioController``: the one object the window talks to.

It owns the :class:`~lora_studio.creator.LoraCreator` (dataset, config, base model, output
folder), the job history (:class:`~lora_studio.core.jobs.JobStore`) and a
:class:`~lora_studio.backends.local.LocalBackend` whose trainer runs on a ``QThread``
(:mod:`lora_studio.gui.trainer_thread`). It runs on the asyncio loop that qasync puts on
the Qt event loop, so ``await`` never blocks the window:

* file work (opening a folder, saving a caption, the job history) goes to worker threads
  with ``asyncio.to_thread``; so does validating the dataset
  (:func:`~lora_studio.core.validate.validate_dataset`), which starts when a folder opens,
  reports progress, and is stopped when another folder opens;
* training is ``await creator.train()`` and then an asyncio task that consumes
  ``creator.watch(job_id)`` and re-emits each :class:`Progress` as a Qt signal. One GPU
  (or the CPU) trains in this process; more than one runs an ``accelerate launch`` child
  process (:class:`~lora_studio.backends.launch.LaunchBackend`). A local run can be paused;
  a run that left a checkpoint can be resumed (``start_training(resume_from=...)``);
* looking for GPUs (importing torch) and placing the images in buckets also run on
  worker threads.

Panels only call the methods below and listen to the signals; they never touch files.
Every :class:`~lora_studio.core.errors.LoraStudioError` becomes a one-line
:attr:`StudioController.message`; anything else is logged with its traceback and also
shown as one line. Nothing the user had is dropped on an error: a folder that fails to
open leaves the current dataset open, a caption that fails to save stays in the grid.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import logging
import os
import shutil
import stat
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QObject, Signal

from lora_studio.backends.base import BackendConfig, TrainingBackend
from lora_studio.backends.factory import backend_for_spec
from lora_studio.backends.launch import LaunchBackend, cuda_device_count, cuda_gpu_memory
from lora_studio.backends.local import LocalBackend
from lora_studio.core import background, paths, secrets
from lora_studio.core.atomic import ensure_writable_dir
from lora_studio.core.background import file_sizes, map_paths, wants_process
from lora_studio.core.base_model import (
    DEFAULT_BASE_MODEL,
    BaseModelRef,
    ModelKind,
    resolve_base_model,
)
from lora_studio.core.caption_files import (
    CaptionChangedOnDisk,
    CaptionStamps,
    captions_changed_on_disk,
    remove_caption_checked,
    write_caption_checked,
)
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import (
    Dataset,
    ImageItem,
    first_images,
)
from lora_studio.core.errors import (
    CaptionError,
    ConfigError,
    DatasetError,
    LoraStudioError,
)
from lora_studio.core.estimates import Estimate
from lora_studio.core.jobs import BackendType, Job, JobSpec, JobStatus, JobStore, Progress
from lora_studio.core.request import TrainingRequest
from lora_studio.core.validate import ValidationReport, min_side_for, validate_dataset
from lora_studio.creator import LoraCreator
from lora_studio.gui.backend_panel import BackendChoice
from lora_studio.gui.bucket_preview import bucket_settings, place_images
from lora_studio.gui.heap import settle
from lora_studio.gui.logs import log_file
from lora_studio.gui.trainer_thread import QtWorkerStarter
from lora_studio.jobqueue import BackendFactory, JobQueue, latest_checkpoint_of
from lora_studio.training.checkpoints import checkpoints_root, latest_checkpoint

log = logging.getLogger(__name__)

T = TypeVar("T")

INFO = "info"
WARNING = "warning"
ERROR = "error"

DEMO_NAME = "papercut_demo"
DEMO_TRIGGER_WORD = "papercut style"
DEMO_RESOLUTION = 256
SAMPLE_COPY_NAME = "sample_dataset"
#: Set to N > 1 to offer N CPU processes (accelerate launch) on a machine without CUDA:
#: the multi-GPU code path, for trying it out; it is not faster.
CPU_PROCESSES_ENV = "LORA_STUDIO_CPU_PROCESSES"


def cpu_processes_offered() -> int:
    """How many CPU training processes to offer without CUDA (1 unless opted in)."""
    try:
        wanted = int(os.environ.get(CPU_PROCESSES_ENV, "1"))
    except ValueError:
        return 1
    return max(1, min(wanted, os.cpu_count() or 1, 8))


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """A checkpoint a run can continue from."""

    path: Path
    step: int
    status: JobStatus  # how the run that wrote it ended


def find_resume_point(output_dir: Path, name: str, status: JobStatus) -> ResumePoint | None:
    """The newest checkpoint of run ``name`` in ``output_dir`` (reads the disk)."""
    folder = latest_checkpoint(checkpoints_root(output_dir, name))
    if folder is None:
        return None
    try:
        step = int(folder.name.rsplit("-", 1)[-1])
    except ValueError:
        step = 0
    return ResumePoint(folder, step, status)


def demo_config() -> LoraConfig:
    """The first-start settings: the Fast preset at 256 px for the sample dataset.

    With the built-in tiny model this trains in seconds on a 2-core CPU.
    """
    return LoraConfig.fast_preset().replace(
        resolution=DEMO_RESOLUTION, name=DEMO_NAME, trigger_word=DEMO_TRIGGER_WORD
    )


def sample_copy_dir() -> Path:
    """Where the user's own, editable copy of the sample dataset lives."""
    return paths.data_dir() / SAMPLE_COPY_NAME


def ensure_sample_copy() -> Path:
    """Copy the bundled sample dataset to :func:`sample_copy_dir` unless it is there.

    An existing copy is never overwritten: it may hold the user's caption edits. Runs on
    a worker thread (it copies files).

    Raises:
        OSError: the copy cannot be made.
    """
    target = sample_copy_dir()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copytree(paths.sample_dataset_dir(), staging)
        # The bundled files may be read-only (a system-wide install); the copy is the
        # user's to edit.
        for folder, _dirs, files in os.walk(staging):
            for name in files:
                file = Path(folder) / name
                file.chmod(file.stat().st_mode | stat.S_IWUSR)
        # Rename is atomic: no half-copied dataset is ever opened.
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():  # another instance made it at the same moment
            return target
        raise
    return target


def describe_base_model(ref: BaseModelRef) -> str:
    """One line about a resolved base model, for the preset form."""
    family = ref.family.label if ref.family is not None else "unknown family"
    if ref.kind is ModelKind.BUILTIN:
        return f"Built-in tiny {family} model (random weights): for trying the app on a CPU."
    if ref.kind is ModelKind.DIFFUSERS_FOLDER:
        return f"{family} \u00b7 diffusers folder"
    if ref.kind is ModelKind.SINGLE_FILE:
        return f"{family} \u00b7 single-file checkpoint"
    return f"{family} \u00b7 from the Hugging Face cache"


#: Images listed ahead of the index (a big window's first page and a little more).
PREVIEW_IMAGES = 96
#: How long an open waits for the window to show its first page (see dataset_preview).
PREVIEW_WAIT_S = 0.2
#: After a big folder opens, the helper process waits this long before its first image
#: (its decodes beside the window's first paints and scrolling made stalls of ~60 ms).
OPEN_HOLD_S = 1.0


def _open_and_count(folder: Path) -> tuple[Dataset, int]:
    """The dataset and how many of its images have a caption. Not ``Dataset.stats()``:
    its file sizes, tag counts and relative names cost ~0.3 s at 10,000 images, time the
    window would wait for."""
    dataset = Dataset.from_directory(folder)
    return dataset, sum(1 for item in dataset.images if item.has_caption)


def _file_sizes(dataset: Dataset) -> dict[Path, int]:
    """Each image's file size in bytes (for the browser's sort); none for a file deleted
    since indexing. A big folder's are read in the helper process (see map_paths)."""
    paths = [str(item.path) for item in dataset.images]
    sizes = map_paths(file_sizes, paths)
    return {
        item.path: size
        for item, path in zip(dataset.images, paths, strict=True)
        if (size := sizes.get(path, -1)) >= 0
    }


def validation_min_side(config: LoraConfig) -> int:
    """The short side under which the window flags an image: the family's minimum, but
    never above the training resolution (an image that size is not upscaled)."""
    return min(min_side_for(config.family), config.resolution)


class _WriteBehindJobStore(JobStore):
    """A :class:`JobStore` whose ``save`` runs on its own thread.

    ``LoraCreator.watch`` records the job on the GUI thread at every status change, log
    line and step (loss, learning rate); SQLite commits fsync, which must not stall the
    window. Saves are queued in order on one
    thread; :meth:`close` waits for them.

    It records the window's own local runs, which start at once: one is never written as
    ``queued``, which in the store means "waiting for the :class:`JobQueue`" (the queue
    would start it a second time).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")

    def save(self, job: Job) -> None:
        snapshot = copy.deepcopy(job)
        if snapshot.status is JobStatus.QUEUED:
            snapshot.status = JobStatus.PREPARING
        self._later(JobStore.save, snapshot)

    def append_logs(self, job_id: str, lines: Iterable[str]) -> None:
        lines = list(lines)
        if lines:
            self._later(JobStore.append_logs, job_id, lines)

    def record_losses(
        self,
        job_id: str,
        points: Iterable[tuple[int, float] | tuple[int, float, float | None]],
    ) -> None:
        self._later(JobStore.record_losses, job_id, list(points))

    def _later(self, write: Callable[..., None], *args: Any) -> None:
        future = self._writer.submit(write, self, *args)
        future.add_done_callback(_log_store_failure)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        super().close()


_store_failures: set[str] = set()


def _log_store_failure(future: Any) -> None:
    # Once per kind of failure: a full disk fails every step's write the same way.
    exc = future.exception()
    if exc is not None and str(exc) not in _store_failures:
        _store_failures.add(str(exc))
        log.error("Could not record the job in the history", exc_info=exc)


class StudioController(QObject):
    """Owns the creator, the backend and the jobs; the panels talk only to it.

    Signals (payloads are plain domain objects):
        dataset_loading(str): a folder is being opened.
        dataset_preview(list[Path]): the first images of the folder being opened, in the
            order the dataset will list them, before it is indexed (the window shows them
            and makes their thumbnails). With :attr:`waits_for_previews`, the index waits
            for :meth:`preview_shown`, :data:`PREVIEW_WAIT_S` at most.
        dataset_loaded(Dataset): a dataset is open.
        dataset_failed(str): a folder could not be opened (the old dataset stays open).
        file_sizes_read(dict[Path, int]): the open dataset's file sizes in bytes (read on
            a worker thread after ``dataset_loaded``).
        validation_progress(int, int): the open dataset's images checked so far, of all.
        dataset_validated(ValidationReport): every problem of the open dataset's files.
        images_checked(dict[Path, str]): unreadable images of the open dataset, and why
            (sent with ``dataset_validated``).
        caption_saved(Path, str): the caption text was written.
        caption_failed(Path, str, str): the caption text was not written, and why.
        captions_changed_on_disk(dict[Path, str | None]): caption files that another
            program changed since they were read (path -> the text on disk now); a save
            over one of them is refused (``caption_failed`` too) until the user reloads
            it (:meth:`reload_captions`) or keeps their text (``save_caption(force=True)``).
        captions_reloaded(dict[Path, str | None]): these captions were taken from disk.
        config_changed(LoraConfig): the training settings changed.
        base_model_checked(str, str, str): reference, description, error ("" if none).
        output_dir_changed(str): the output folder changed.
        estimate_changed(Estimate): new steps/time/VRAM estimate.
        training_active_changed(bool): a run is starting or running (True) or not.
        job_started(Job), job_progress(Progress), job_finished(Progress): the run; a run
            that cannot start (bad output folder, missing model...) ends at once with a
            FAILED job_finished whose ``error`` says why.
        resume_available(ResumePoint | None): the last run left a checkpoint to resume
            from (``None``: nothing to resume, e.g. a new run started).
        jobs_listed(list[Job]): the job history, newest first (every backend).
        job_updated(Job, Progress): a live update of any job (remote ones from the
            :class:`JobQueue`, and the window's local run).
        job_details(Job, list[str], list[tuple[int, float]], Path | None,
            list[tuple[int, float]]): what the history holds about a job: log lines, loss
            series, the checkpoint it can be resumed from, and the learning-rate series.
        backend_checked(bool, str, tuple[str, ...]): "Test connection" answered: usable,
            what the server said (or why not), and the server's checkpoints (ComfyUI).
        token_state_changed(str): where the Replicate token comes from (never the token).
        remote_cost_changed(str): the estimated Replicate cost of the current settings.
        devices_detected(int, int): CUDA GPUs found, and CPU processes offered without.
        gpu_detected(str, float): the first CUDA GPU's name and memory in GB (``"", 0.0``:
            none), for the estimate's "does it fit" check.
        backend_gpu(str, float): the remote server's GPU and its memory in GB, from "Test
            connection" (ComfyUI), for the same check when the run trains there.
        buckets_changed(dict[Path, Placement | str]): each image's bucket (or why it has
            none) under the current settings.
        message(str, str): a message for the user: level (info/warning/error), text.
    """

    dataset_loading = Signal(str)
    dataset_preview = Signal(object)
    dataset_loaded = Signal(object)
    dataset_failed = Signal(str)
    file_sizes_read = Signal(object)
    validation_progress = Signal(int, int)
    dataset_validated = Signal(object)
    images_checked = Signal(object)
    caption_saved = Signal(object, str)
    caption_failed = Signal(object, str, str)
    captions_changed_on_disk = Signal(object)
    captions_reloaded = Signal(object)
    config_changed = Signal(object)
    base_model_checked = Signal(str, str, str)
    output_dir_changed = Signal(str)
    estimate_changed = Signal(object)
    training_active_changed = Signal(bool)
    job_started = Signal(object)
    job_progress = Signal(object)
    job_finished = Signal(object)
    resume_available = Signal(object)
    devices_detected = Signal(int, int)
    gpu_detected = Signal(str, float)
    backend_gpu = Signal(str, float)
    buckets_changed = Signal(object)
    jobs_listed = Signal(object)
    job_updated = Signal(object, object)
    job_details = Signal(object, object, object, object, object)
    backend_checked = Signal(bool, str, object)
    token_state_changed = Signal(str)
    remote_cost_changed = Signal(str)
    message = Signal(str, str)
    #: the traceback behind the last "Unexpected error" message, for its Details button
    error_details = Signal(str)
    #: a compatibility check ended: (the report in words, every tool loads it, the file)
    compatibility_checked = Signal(str, bool, object)

    def __init__(
        self,
        *,
        base_model: str | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        config: LoraConfig | None = None,
        job_store_path: str | os.PathLike[str] | None = None,
        backend_factory: BackendFactory | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._loop = loop or asyncio.get_event_loop()
        self.threads = QtWorkerStarter(self)
        out = Path(output_dir).expanduser() if output_dir else paths.default_output_dir()
        self.creator = LoraCreator(base_model or DEFAULT_BASE_MODEL, out)
        self.creator.with_config(config or demo_config())
        self.backend = LocalBackend(
            BackendConfig(BackendType.LOCAL, out), start_worker=self.threads
        )
        self.creator.with_backend(self.backend)
        self._launch: LaunchBackend | None = None
        self._run_backend: TrainingBackend = self.backend
        self.processes = 1
        self.cuda_count: int | None = None
        self._resume_point: ResumePoint | None = None
        self._sizes: dict[Path, Any] = {}
        self._sizes_of: Dataset | None = None
        self._buckets_dirty = False
        self._bucket_task: asyncio.Task[None] | None = None
        self._bucket_stop = threading.Event()
        self.placements: dict[Path, Any] = {}
        self._store_path = Path(job_store_path) if job_store_path else paths.job_db_path()
        self._store: JobStore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._items: dict[Path, ImageItem] = {}
        self._dataset_generation = 0
        #: The window shows each folder's first page while it opens and calls
        #: preview_shown() when it has (see dataset_preview).
        self.waits_for_previews = False
        self._preview_shown: asyncio.Event | None = None
        self._image_check_stop: threading.Event | None = None
        # Until this time.monotonic(), the image check waits (the user is scrolling).
        self._background_hold_until = 0.0
        self.validation: ValidationReport | None = None
        self._caption_pending: dict[Path, str | None] = {}  # None: remove the caption
        self._caption_items: dict[Path, ImageItem] = {}
        self._caption_tasks: dict[Path, asyncio.Task[None]] = {}
        self._caption_force: set[Path] = set()
        self._disk_check: asyncio.Task[None] | None = None
        self._caption_stamps = CaptionStamps()  # only touched files are read again
        self._estimate_dirty = False
        self._estimate_task: asyncio.Task[None] | None = None
        self._base_model_generation = 0
        self._base_model_error: str | None = None
        self._job: Job | None = None
        self._starting = False
        self._cancel_when_started = False
        self._cancel_step: int | None = None
        self._last_progress: Progress | None = None
        self._started = False
        self._closed = False
        # Remote runs (and the history view) go through one JobQueue on its own
        # synchronous connection to the same history file.
        self.backend_choice = BackendChoice()
        self.make_backend: BackendFactory = backend_factory or backend_for_spec
        self.queue: JobQueue | None = None
        self._queue_store: JobStore | None = None
        self._run_creator = self.creator  # the creator hosting the current local run
        self._run_spec: JobSpec | None = None
        self._jobs_dirty = False
        self._jobs_task: asyncio.Task[None] | None = None
        self._last_status: dict[str, JobStatus] = {}
        self._forget_queue: Callable[[], None] | None = None

    # ---- state ---------------------------------------------------------------------------

    @property
    def dataset(self) -> Dataset | None:
        return self.creator.dataset

    @property
    def config(self) -> LoraConfig:
        return self.creator.config

    @property
    def base_model(self) -> str:
        return self.creator.base_model

    @property
    def base_model_error(self) -> str | None:
        """Why the base model cannot be used, once checked (``None``: fine or unchecked)."""
        return self._base_model_error

    @property
    def output_dir(self) -> Path:
        return self.creator.output_dir

    @property
    def current_job(self) -> Job | None:
        return self._job

    @property
    def is_training(self) -> bool:
        """A run is being started or is running."""
        return self._starting or self._job is not None

    @property
    def last_progress(self) -> Progress | None:
        return self._last_progress

    @property
    def cancel_requested_at_step(self) -> int | None:
        """The trainer's step when the stop request reached it (``None``: not cancelled)."""
        return self._cancel_step

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    @property
    def can_pause(self) -> bool:
        """The current (or last) run's backend can pause it (in-process runs only)."""
        return hasattr(self._run_backend, "pause")

    @property
    def resume_point(self) -> ResumePoint | None:
        """Where the last run can be resumed from, if it left a checkpoint."""
        return self._resume_point

    def start(self) -> None:
        """Open the job history, check the base model and look for GPUs (call once the
        loop exists)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._open_job_store(), "open the job history")
        self.check_base_model()
        self.refresh_estimate()
        self._spawn(self._detect_devices(), "look for GPUs")

    async def _detect_devices(self) -> None:
        count = await asyncio.to_thread(cuda_device_count)  # imports torch: seconds
        settle("importing torch", collect=False)
        self.cuda_count = count
        self.devices_detected.emit(count, cpu_processes_offered() if count == 0 else 1)
        name, memory = await asyncio.to_thread(cuda_gpu_memory) if count else ("", 0.0)
        self.gpu_detected.emit(name, memory)

    # ---- dataset -------------------------------------------------------------------------

    def open_dataset(self, folder: str | os.PathLike[str]) -> asyncio.Task[None]:
        """Open ``folder`` as the dataset, off the GUI thread."""
        self._dataset_generation += 1
        return self._spawn(
            self._open_dataset(Path(folder).expanduser(), self._dataset_generation),
            "open the dataset",
        )

    def open_sample_dataset(self) -> asyncio.Task[None]:
        """Open the user's copy of the bundled sample dataset (made on first use)."""
        self._dataset_generation += 1
        return self._spawn(self._open_sample(self._dataset_generation), "open the sample dataset")

    async def _open_sample(self, generation: int) -> None:
        try:
            folder = await asyncio.to_thread(ensure_sample_copy)
        except OSError as exc:
            self._say(
                ERROR,
                f"Cannot copy the sample dataset to {sample_copy_dir()}: {exc.strerror or exc}.",
            )
            return
        await self._open_dataset(folder, generation)

    async def _open_dataset(self, folder: Path, generation: int) -> None:
        self.dataset_loading.emit(str(folder))
        # The first page's files first (milliseconds, before the index competes with
        # the listing for the GIL): the window shows them and makes their thumbnails
        # while the folder is indexed.
        await self._preview_dataset(folder, generation)
        try:
            dataset, captioned = await asyncio.to_thread(_open_and_count, folder)
        except (DatasetError, OSError) as exc:
            if generation != self._dataset_generation:
                return
            text = (
                str(exc)
                if isinstance(exc, DatasetError)
                else f"Cannot open {folder}: {exc.strerror or exc}."
            )
            if self.creator.dataset is not None:
                text += f" {self.creator.dataset.root.name} stays open."
            self.dataset_failed.emit(text)
            self._say(ERROR, text)
            return
        if generation != self._dataset_generation:
            return  # the user opened another folder meanwhile; that one wins
        if self._image_check_stop is not None:
            self._image_check_stop.set()
        self._bucket_stop.set()
        self._bucket_stop = threading.Event()
        self.creator.set_dataset(dataset)
        self._items = {item.path: item for item in dataset.images}
        self.placements = {}
        self.validation = None
        self.dataset_loaded.emit(dataset)
        if wants_process(len(dataset)):
            # The window paints the new dataset and the user starts scrolling: the
            # helper's check and bucket preview start a moment later.
            background.hold(OPEN_HOLD_S)
        settle("loading a dataset")
        self._spawn(self._read_file_sizes(dataset), "read the file sizes")
        self._say(
            INFO,
            f"Opened {dataset.root}: {len(dataset.images)} images, {captioned} with captions.",
        )
        odd = [item for item in dataset.images if item.caption_encoding != "utf-8"]
        if odd:
            names = ", ".join(item.name for item in odd[:3]) + (" \u2026" if len(odd) > 3 else "")
            self._say(
                WARNING,
                f"{len(odd)} caption file(s) are not UTF-8 and were read as "
                f"{odd[0].caption_encoding} ({names}). Editing one saves UTF-8 and keeps "
                f"the original as .txt.orig.",
            )
        self.refresh_estimate()
        self.refresh_buckets()
        stop = threading.Event()
        self._image_check_stop = stop
        self.validation_progress.emit(0, len(dataset))
        self._spawn(self._validate(dataset, stop), "check the images")

    async def _preview_dataset(self, folder: Path, generation: int) -> None:
        try:
            first = await asyncio.to_thread(first_images, folder, PREVIEW_IMAGES)
        except OSError:
            return  # the open itself says what is wrong
        if generation != self._dataset_generation or not first:
            return
        shown = self._preview_shown = asyncio.Event()
        self.dataset_preview.emit(first)
        if self.waits_for_previews:
            # Pixels first: the index and the first page's decodes compete for the same
            # cores and GIL (on 2 cores, 50 thumbnails took 0.45 s beside the index and
            # 0.2 s before it); the index waits for the page, a moment at most.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shown.wait(), PREVIEW_WAIT_S)

    def preview_shown(self) -> None:
        """The window has the first page of the folder being opened: index it now."""
        if self._preview_shown is not None:
            self._preview_shown.set()

    def hold_background_work(self, seconds: float = 0.5) -> None:
        """The user is scrolling: the image check starts no new image for ``seconds``.

        Its Python parts hold the GIL on a worker thread; with the window's thread
        waiting behind them, scrolling a 10,000-image grid stalled up to ~0.3 s.
        """
        self._background_hold_until = max(self._background_hold_until, time.monotonic() + seconds)
        background.hold(seconds)  # and the helper process, a big folder's check

    def _held_or_stopped(self, stop: threading.Event) -> bool:
        # On the check's thread, between images (validate_dataset's should_stop).
        while not stop.is_set() and time.monotonic() < self._background_hold_until:
            time.sleep(0.05)
        return stop.is_set()

    async def _read_file_sizes(self, dataset: Dataset) -> None:
        # After the dataset is shown: a stat() per image is ~0.1 s at 10,000 images.
        sizes = await asyncio.to_thread(_file_sizes, dataset)
        if dataset is self.creator.dataset:
            self.file_sizes_read.emit(sizes)

    async def _validate(self, dataset: Dataset, stop: threading.Event) -> None:
        """Validate ``dataset`` on worker threads (one core is left to the window)."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(done: int, total: int) -> None:  # on the worker thread
            now = time.monotonic()
            if done == total or now - last[0] >= 0.25:
                last[0] = now
                loop.call_soon_threadsafe(self._validation_progress, dataset, stop, done, total)

        report = await asyncio.to_thread(
            validate_dataset,
            dataset,
            family=self.creator.config.family,
            min_side=validation_min_side(self.creator.config),
            progress=progress,
            should_stop=functools.partial(self._held_or_stopped, stop),
            workers=max(1, (os.cpu_count() or 2) - 1),
            # A big folder is checked in a low-priority process: no GIL shared with the
            # window's thread (see lora_studio.core.background).
            in_process=wants_process(len(dataset)),
        )
        if stop.is_set() or dataset is not self.creator.dataset:
            return
        # Files left out of the dataset (a GIF, ...) are in the report, but not here.
        bad = {path: why for path, why in report.unreadable().items() if path in self._items}
        for item in dataset.images:
            if item.path in bad:
                item.problem = bad[item.path]
        self.validation = report
        self.dataset_validated.emit(report)
        self.images_checked.emit(bad)
        if bad:
            first_path, first_reason = next(iter(bad.items()))
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            self._say(
                WARNING,
                f"{len(bad)} image(s) cannot be read and will be skipped in training: "
                f"{first_path.name} ({first_reason}){more}.",
            )

    def _validation_progress(
        self, dataset: Dataset, stop: threading.Event, done: int, total: int
    ) -> None:
        if not stop.is_set() and dataset is self.creator.dataset:
            self.validation_progress.emit(done, total)

    # ---- captions ------------------------------------------------------------------------

    def save_caption(self, path: Path, text: str, force: bool = False) -> None:
        """Save ``text`` as the caption of image ``path``, off the GUI thread.

        Edits of one image are written in order and coalesced: only the newest text of a
        burst of edits is written. A file that another program changed since it was read
        is not written over (:attr:`captions_changed_on_disk`) unless ``force``. Answers
        with :attr:`caption_saved` or :attr:`caption_failed`.
        """
        item = self._items.get(path)
        if item is None:
            self.caption_failed.emit(path, text, "This image is not in the open dataset.")
            return
        self._caption_items[path] = item
        self._caption_pending[path] = text
        if force:
            self._caption_force.add(path)
        if path not in self._caption_tasks:
            self._caption_tasks[path] = self._spawn(self._save_captions(path), "save a caption")

    def remove_caption(self, path: Path) -> None:
        """Take image ``path``'s caption away (delete its file), off the GUI thread, in
        order with its saves; answers with :attr:`caption_saved` (text ``""``)."""
        item = self._items.get(path)
        if item is None:
            self.caption_failed.emit(path, "", "This image is not in the open dataset.")
            return
        self._caption_items[path] = item
        self._caption_pending[path] = None
        if path not in self._caption_tasks:
            self._caption_tasks[path] = self._spawn(self._save_captions(path), "save a caption")

    async def _save_captions(self, path: Path) -> None:
        try:
            while path in self._caption_pending:
                wanted = self._caption_pending.pop(path)
                text = wanted if wanted is not None else ""
                item = self._caption_items[path]
                try:
                    # Write through a copy: the live item is only updated here, on the
                    # GUI thread, once the file is safely on disk.
                    force = path in self._caption_force
                    self._caption_force.discard(path)
                    target = dataclasses.replace(item)
                    if wanted is None:
                        job = functools.partial(
                            remove_caption_checked, target, item.caption, force=force
                        )
                    else:
                        job = functools.partial(
                            write_caption_checked, target, text, item.caption, force=force
                        )
                    saved = await asyncio.to_thread(job)
                except CaptionChangedOnDisk as exc:
                    self.caption_failed.emit(path, text, str(exc))
                    self.captions_changed_on_disk.emit({path: exc.disk_text})
                    self._say(WARNING, str(exc))
                    continue
                except CaptionError as exc:
                    self.caption_failed.emit(path, text, str(exc))
                    self._say(
                        ERROR,
                        f"{exc} Your text is kept in the caption grid; edit it again to retry.",
                    )
                    continue
                item.caption = saved.caption
                item.caption_encoding = saved.caption_encoding
                item.problem = saved.problem
                self.caption_saved.emit(path, text)
                self._say(INFO, f"Saved the caption of {item.name}.")
        finally:
            self._caption_tasks.pop(path, None)

    def check_captions_on_disk(self) -> None:
        """Look (off the GUI thread) for caption files that another program changed; answers
        with :attr:`captions_changed_on_disk` when there are some."""
        if self._disk_check is None or self._disk_check.done():
            self._disk_check = self._spawn(self._check_captions_on_disk(), "check captions")

    async def _check_captions_on_disk(self) -> None:
        items = self._items
        known = [
            (dataclasses.replace(item), item.caption)
            for path, item in items.items()
            if path not in self._caption_tasks
        ]
        changed = await asyncio.to_thread(captions_changed_on_disk, known, self._caption_stamps)
        # A save that ran meanwhile wrote its own text: that is no outside change.
        changed = {
            path: text
            for path, text in changed.items()
            if path in items
            and items is self._items
            and path not in self._caption_tasks
            and (items[path].caption or "").strip() != (text or "").strip()
        }
        if changed:
            self.captions_changed_on_disk.emit(changed)

    def reload_captions(self, captions: dict[Path, str | None]) -> None:
        """Take these captions from disk (what :attr:`captions_changed_on_disk` found) as
        the images' captions; answers with :attr:`captions_reloaded`."""
        taken = {}
        for path, text in captions.items():
            item = self._items.get(path)
            if item is not None and path not in self._caption_tasks:
                item.caption = text
                taken[path] = text
        if taken:
            self.captions_reloaded.emit(taken)

    async def flush_captions(self) -> None:
        """Wait until every caption save under way has finished."""
        while self._caption_tasks:
            await asyncio.gather(*list(self._caption_tasks.values()), return_exceptions=True)

    # ---- settings --------------------------------------------------------------------------

    def set_config(self, config: LoraConfig) -> bool:
        """Use ``config`` for the next run; ``False`` (and a message) if it is invalid."""
        if config == self.creator.config:
            return True
        before = bucket_settings(self.creator.config)
        try:
            self.creator.with_config(config)
        except ConfigError as exc:
            self._say(ERROR, str(exc))
            return False
        self.config_changed.emit(config)
        self.refresh_estimate()
        if bucket_settings(config) != before:
            self.refresh_buckets()
        return True

    def set_processes(self, processes: int) -> None:
        """Train the next run on ``processes`` GPUs (more than one: ``accelerate launch``)."""
        self.processes = max(1, int(processes))
        self.refresh_estimate()

    def apply_preset(self, key: str) -> bool:
        """Load preset ``key``'s values, keeping what describes the user's concept rather
        than how to train it: output name, trigger word and sample prompts."""
        current = self.creator.config
        try:
            config = LoraConfig.from_preset(key).replace(
                name=current.name,
                trigger_word=current.trigger_word,
                sample_prompts=current.sample_prompts,
            )
        except ConfigError as exc:
            self._say(ERROR, str(exc))
            return False
        return self.set_config(config)

    def set_base_model(self, ref: str) -> None:
        """Train on ``ref`` (built-in name, diffusers folder, checkpoint file or HF id)."""
        ref = ref.strip()
        if ref == self.creator.base_model:
            return
        self.creator.with_base_model(ref)
        self.check_base_model(announce=True)
        self.refresh_estimate()

    def check_base_model(self, *, announce: bool = False) -> asyncio.Task[None]:
        """Resolve the base model off the GUI thread; answers with :attr:`base_model_checked`."""
        self._base_model_generation += 1
        return self._spawn(
            self._check_base_model(self.creator.base_model, self._base_model_generation, announce),
            "check the base model",
        )

    async def _check_base_model(self, ref: str, generation: int, announce: bool) -> None:
        try:
            resolved = await asyncio.to_thread(resolve_base_model, ref)
        except LoraStudioError as exc:
            if generation == self._base_model_generation:
                self._base_model_error = str(exc)
                self.base_model_checked.emit(ref, "", str(exc))
                if announce:
                    self._say(ERROR, str(exc))
            return
        if generation == self._base_model_generation:
            self._base_model_error = None
            self.base_model_checked.emit(ref, describe_base_model(resolved), "")

    def set_output_dir(self, folder: str | os.PathLike[str]) -> None:
        """Write LoRAs to ``folder`` (checked when training starts)."""
        path = Path(folder).expanduser()
        if path == self.creator.output_dir:
            return
        self.creator.with_output_dir(path)
        self.output_dir_changed.emit(str(path))

    def save_config(self, path: str | os.PathLike[str]) -> asyncio.Task[None]:
        """Save the current settings as TOML, off the GUI thread."""
        return self._spawn(self._save_config(Path(path), self.creator.config), "save the config")

    async def _save_config(self, path: Path, config: LoraConfig) -> None:
        try:
            await asyncio.to_thread(config.save, path)
        except OSError as exc:
            self._say(ERROR, f"Cannot save the settings to {path}: {exc.strerror or exc}.")
            return
        self._say(INFO, f"Saved the settings to {path}.")

    def load_config(self, path: str | os.PathLike[str]) -> asyncio.Task[None]:
        """Load settings from a TOML file, off the GUI thread."""
        return self._spawn(self._load_config(Path(path)), "load the config")

    async def _load_config(self, path: Path) -> None:
        try:
            config = await asyncio.to_thread(LoraConfig.load, path)
        except ConfigError as exc:
            self._say(ERROR, str(exc))
            return
        if self.set_config(config):
            self._say(INFO, f"Loaded the settings from {path}.")

    # ---- estimate ----------------------------------------------------------------------------

    def refresh_estimate(self) -> None:
        """Recompute the estimate soon (coalesced: one computation at a time)."""
        self._estimate_dirty = True
        if self._estimate_task is None:
            self._estimate_task = self._spawn(self._estimate_loop(), "estimate the run")

    async def _estimate_loop(self) -> None:
        try:
            while self._estimate_dirty:
                self._estimate_dirty = False
                # Off the GUI thread: resolving a checkpoint reads its header.
                estimate: Estimate = await asyncio.to_thread(self.creator.estimate, self.processes)
                if not self._estimate_dirty:
                    self.estimate_changed.emit(estimate)
                if self.backend_choice.kind is BackendType.REPLICATE:
                    await self._estimate_remote_cost()
        finally:
            self._estimate_task = None

    async def _estimate_remote_cost(self) -> None:
        if self.creator.dataset is None:
            self.remote_cost_changed.emit("")
            return
        try:
            cost = await self.replicate_cost()
        except LoraStudioError as exc:
            self.remote_cost_changed.emit(f"Cost: cannot estimate ({exc})")
            return
        if cost is None:
            self.remote_cost_changed.emit("Cost: unknown for this GPU (no price in the table).")
        else:
            self.remote_cost_changed.emit(f"Estimated cost: {cost.describe()}.")

    # ---- buckets -----------------------------------------------------------------------------

    def refresh_buckets(self) -> None:
        """Place the images in buckets again soon (coalesced; off the GUI thread)."""
        self._buckets_dirty = True
        if self._bucket_task is None:
            self._bucket_task = self._spawn(self._bucket_loop(), "place the images in buckets")

    async def _bucket_loop(self) -> None:
        try:
            while self._buckets_dirty:
                self._buckets_dirty = False
                dataset, config = self.creator.dataset, self.creator.config
                if dataset is None:
                    return
                if self._sizes_of is not dataset:  # sizes are read once per dataset
                    self._sizes, self._sizes_of = {}, dataset
                stop = self._bucket_stop
                placements = await asyncio.to_thread(
                    place_images, [item.path for item in dataset], self._sizes, config, stop
                )
                if stop.is_set() or dataset is not self.creator.dataset:
                    continue
                if not self._buckets_dirty:
                    self.placements = placements
                    self.buckets_changed.emit(placements)
        finally:
            self._bucket_task = None

    # ---- training ----------------------------------------------------------------------------

    def start_training(
        self, resume_from: str | os.PathLike[str] | None = None
    ) -> asyncio.Task[None] | None:
        """Start a run with the current dataset and settings where :attr:`backend_choice`
        says: locally at once, or queued for ComfyUI/Replicate. With ``resume_from``,
        continue a local run from that checkpoint (see :attr:`resume_point`)."""
        if resume_from is None and self.backend_choice.is_remote:
            return self._spawn(self._enqueue_remote(self.backend_choice), "queue the run")
        return self._start_local(Path(resume_from) if resume_from is not None else None)

    def _start_local(
        self, resume: Path | None, spec: JobSpec | None = None
    ) -> asyncio.Task[None] | None:
        if self.is_training:
            self._say(WARNING, "A training run is already going; cancel it first.")
            return None
        self._starting = True
        self._cancel_when_started = False
        self._cancel_step = None
        self._set_resume_point(None)
        self.training_active_changed.emit(True)
        return self._spawn(self._train(resume, spec), "train")

    def _backend_for(self, processes: int) -> TrainingBackend:
        if processes <= 1:
            return self.backend
        if self._launch is None or self._launch.num_processes != processes:
            self._launch = LaunchBackend(
                BackendConfig(BackendType.LOCAL, self.output_dir), num_processes=processes
            )
        return self._launch

    async def _train(self, resume_from: Path | None = None, spec: JobSpec | None = None) -> None:
        processes = self.processes
        creator = self.creator
        try:
            # Captions typed a moment ago must be on disk before the dataset is snapshot.
            await self.flush_captions()
            if spec is not None:  # a run from the jobs list: its own settings and dataset
                processes = int(spec.backend_options.get("num_processes", 1))
                creator = await asyncio.to_thread(self._creator_for, spec)
            self._run_backend = self._backend_for(processes)
            creator.with_backend(self._run_backend)
            self._run_creator = creator
            # Garbage cycles made since the last settle (a captioner's model, say) are
            # freed here, on this thread: the run freezes the heap after its imports
            # (training/trainer.py, import_training_stack_quietly).
            settle("starting a run")
            # Checks the model and the output folder off the GUI thread, then submits.
            job = await creator.train(resume_from=resume_from)
        except LoraStudioError as exc:
            self._starting = False
            self.training_active_changed.emit(False)
            failed = Progress(status=JobStatus.FAILED, error=str(exc), message="Failed")
            self._last_progress = failed
            self.job_finished.emit(failed)
            self._say(ERROR, str(exc))
            return
        except BaseException:
            self._starting = False
            self.training_active_changed.emit(False)
            raise
        self._job = job
        self._starting = False
        # The spec lets the jobs list retry the run, or resume it after a crash.
        options = {"num_processes": processes} if processes > 1 else {}
        job.spec = JobSpec(
            dataset_dir=job.dataset_dir,
            config=job.config,
            base_model=job.base_model,
            output_dir=job.output_dir,
            backend=BackendType.LOCAL,
            backend_options=options,
            resume_from=str(resume_from) if resume_from is not None else None,
        )
        job.started_at = job.started_at or time.time()
        if self._store is not None:
            self._store.save(job)
        self.job_started.emit(job)
        self.job_updated.emit(job, Progress(status=JobStatus.PREPARING, message="Starting"))
        where = f" on {processes} processes" if processes > 1 else ""
        if resume_from is not None:
            self._say(INFO, f"Resuming {job.name} from {resume_from.name}{where}\u2026")
        else:
            self._say(INFO, f"Training {job.name} with {creator.base_model}{where}\u2026")
        if self._cancel_when_started:
            self.cancel_training()
        final: Progress | None = None
        try:
            async for progress in creator.watch(job.id):
                final = progress
                self._last_progress = progress
                self.job_progress.emit(progress)
                self.job_updated.emit(job, progress)
        finally:
            self._job = None
            self.training_active_changed.emit(False)
        if final is None or not final.is_finished():
            final = (final or Progress()).evolve(
                status=JobStatus.FAILED, error="The training run ended without a result."
            )
        self._last_progress = final
        job.finished_at = job.finished_at or time.time()
        if self._store is not None:
            self._store.save(job)
        self.job_finished.emit(final)
        self.job_updated.emit(job, final)
        self.refresh_jobs()
        self._spawn(self._look_for_checkpoint(job, final.status), "look for a checkpoint")
        if final.status is JobStatus.SUCCEEDED:
            self._say(INFO, f"Training finished: {final.output_path}")
        elif final.status is JobStatus.CANCELLED:
            where = f"; the LoRA so far is in {final.output_path}" if final.output_path else ""
            self._say(WARNING, f"Training cancelled after step {final.step}{where}.")
        else:
            self._say(ERROR, f"Training failed: {final.error or 'no reason given'}")

    def cancel_training(self) -> asyncio.Task[None] | None:
        """Ask the running job to stop; it ends within one training step."""
        job = self._job
        if job is None:
            if self._starting:
                self._cancel_when_started = True
            return None
        return self._spawn(self._cancel(job), "cancel training")

    async def _cancel(self, job: Job) -> None:
        await self._run_creator.cancel(job.id)
        latest = await self._run_creator.monitor_progress(job.id)
        self._cancel_step = latest.step
        self._say(INFO, f"Stopping {job.name} after the current step (step {latest.step})\u2026")

    def pause_training(self) -> asyncio.Task[None] | None:
        """Hold the running job after its current step (in-process runs only)."""
        job = self._job
        if job is None or not self.can_pause:
            return None
        return self._spawn(self._pause(job), "pause training")

    async def _pause(self, job: Job) -> None:
        await self._run_creator.pause(job.id)
        self._say(INFO, f"Pausing {job.name} after the current step\u2026")

    def resume_paused_training(self) -> asyncio.Task[None] | None:
        """Let a paused job go on."""
        job = self._job
        if job is None or not self.can_pause:
            return None
        return self._spawn(self._run_creator.resume(job.id), "resume training")

    async def _look_for_checkpoint(self, job: Job, status: JobStatus) -> None:
        point = await asyncio.to_thread(find_resume_point, Path(job.output_dir), job.name, status)
        if not self.is_training:  # a new run started meanwhile: it has none yet
            self._set_resume_point(point)

    def _set_resume_point(self, point: ResumePoint | None) -> None:
        if point != self._resume_point:
            self._resume_point = point
            self.resume_available.emit(point)

    # ---- where to train, and the job queue ------------------------------------------------

    def set_backend_choice(self, choice: BackendChoice) -> None:
        """Train the next run where ``choice`` says (local, ComfyUI or Replicate)."""
        if choice == self.backend_choice:
            return
        self.backend_choice = choice
        self.refresh_estimate()
        if choice.kind is BackendType.REPLICATE:
            self.refresh_token_state()

    def spec_for(self, choice: BackendChoice | None = None) -> JobSpec:
        """The current dataset and settings as a job for ``choice``'s backend."""
        choice = choice or self.backend_choice
        dataset = self.creator.dataset
        return JobSpec(
            dataset_dir=str(dataset.root) if dataset is not None else "",
            config=self.creator.config.to_dict(),
            base_model=self.creator.base_model,
            output_dir=str(self.output_dir),
            backend=choice.kind,
            backend_options=choice.backend_options(),
        )

    def check_backend(self) -> asyncio.Task[None]:
        """ "Test connection": answers with :attr:`backend_checked`."""
        return self._spawn(self._check_backend(self.backend_choice), "test the connection")

    async def _check_backend(self, choice: BackendChoice) -> None:
        checkpoints: tuple[str, ...] = ()
        backend: TrainingBackend | None = None
        try:
            backend = self.make_backend(self.spec_for(choice))
            status = await backend.check()
            list_checkpoints = getattr(backend, "list_checkpoints", None)
            if status.ok and callable(list_checkpoints):
                checkpoints = tuple(await list_checkpoints())
        except LoraStudioError as exc:
            self.backend_checked.emit(False, str(exc), ())
            return
        finally:
            if backend is not None:
                await _aclose(backend)
        self.backend_checked.emit(status.ok, status.message, checkpoints)
        if status.ok and status.vram_gb:
            self.backend_gpu.emit(status.device or "", float(status.vram_gb))

    def save_replicate_token(self, token: str) -> asyncio.Task[None]:
        """Keep ``token`` in the OS keyring (never in settings, files or logs)."""
        return self._spawn(self._save_token(token), "save the Replicate token")

    async def _save_token(self, token: str) -> None:
        try:
            warning = await asyncio.to_thread(secrets.save_token, secrets.REPLICATE, token)
        except secrets.SecretError as exc:
            self._say(ERROR, str(exc))
            return
        if warning:  # no keyring on this system: kept in the owner-only fallback file
            self._say(WARNING, warning)
        else:
            self._say(INFO, "Saved the Replicate token in the keyring.")
        self.refresh_token_state()

    def refresh_token_state(self) -> asyncio.Task[None]:
        """Find out where the Replicate token would come from (answers
        :attr:`token_state_changed`); the keyring may be slow, so off the GUI thread."""
        return self._spawn(self._token_state(), "look for the Replicate token")

    async def _token_state(self) -> None:
        source = secrets.REPLICATE
        if os.environ.get(source.env_var, "").strip():
            text = f"Using the token in {source.env_var}."
        elif await asyncio.to_thread(secrets.get_token, source):
            in_file = await asyncio.to_thread(secrets.file_token, source)
            text = (
                f"A token is saved in {secrets.fallback_file()} (no keyring on this system)."
                if in_file
                else "A token is saved in the keyring."
            )
        else:
            text = "No token yet: paste yours and press Save token."
        self.token_state_changed.emit(text)

    def _remote_request(self, *, check_output: bool = True) -> TrainingRequest:
        """The request a remote run is made from (the base model lives on the server, so
        only the dataset, the settings and the output folder are checked). Touches disk."""
        dataset = self.creator.dataset
        if dataset is None or len(dataset) == 0:
            raise DatasetError("No dataset loaded: open a folder of images first.")
        problems = self.creator.config.problems()
        if problems:
            raise ConfigError(" ".join(problems))
        if check_output:
            ensure_writable_dir(self.output_dir)
        return TrainingRequest(
            dataset=dataset.snapshot(),
            config=self.creator.config,
            base_model=self.creator.base_model,
            output_dir=self.output_dir,
        )

    async def replicate_cost(self) -> Any:
        """The estimated cost of training the current settings on Replicate (a
        ``CostEstimate``, or ``None`` when the hardware has no price)."""
        request = await asyncio.to_thread(self._remote_request, check_output=False)
        backend = self.make_backend(self.spec_for())
        try:
            describe = getattr(backend, "cost_estimate", None)
            return describe(request) if callable(describe) else None
        finally:
            await _aclose(backend)

    async def _enqueue_remote(self, choice: BackendChoice) -> None:
        problem = choice.problem()
        if problem:
            self._say(ERROR, problem)
            return
        if self.queue is None:
            self._say(ERROR, "The job queue is not ready yet (the history is still opening).")
            return
        await self.flush_captions()
        try:
            await asyncio.to_thread(self._remote_request)
        except LoraStudioError as exc:
            self._say(ERROR, str(exc))
            return
        job = self.queue.enqueue(self.spec_for(choice))
        where = "ComfyUI" if choice.kind is BackendType.COMFYUI else "Replicate"
        self._say(INFO, f"Queued {job.name} on {where}.")

    def _creator_for(self, spec: JobSpec) -> LoraCreator:
        """A creator for a run from the jobs list (its settings and dataset). Reads disk."""
        creator = LoraCreator(spec.base_model, Path(spec.output_dir), job_store=self._store)
        creator.with_config(LoraConfig.from_dict(spec.config))
        creator.load_dataset(spec.dataset_dir)
        return creator

    async def _start_queue(self) -> None:
        try:
            store = await asyncio.to_thread(JobStore, self._store_path)
        except Exception as exc:  # sqlite3.Error or OSError: reported by _open_job_store
            log.warning("Cannot open the job queue's history: %s", exc)
            return
        if self._closed:
            store.close()
            return
        self._queue_store = store
        self.queue = JobQueue(store, self.make_backend)
        self._forget_queue = self.queue.add_listener(self._on_queue_update)
        reattached = await self.queue.start()
        if reattached:
            names = ", ".join(job.name for job in reattached)
            self._say(INFO, f"Following {len(reattached)} remote job(s) again: {names}.")
        self.refresh_jobs()

    def _on_queue_update(self, job: Job, progress: Progress) -> None:
        self.job_updated.emit(job, progress)
        previous = self._last_status.get(job.id)
        self._last_status[job.id] = progress.status
        if previous is progress.status:
            return
        self.refresh_jobs()
        if progress.is_finished() and self.queue is not None:
            # The billed cost is recorded just after the last update: list it once it is.
            self._spawn(self._refresh_when_done(self.queue, job.id), "read the job history")
        where = {BackendType.COMFYUI: "ComfyUI", BackendType.REPLICATE: "Replicate"}.get(
            job.backend, "this computer"
        )
        if progress.status is JobStatus.SUCCEEDED:
            output = progress.output_path or job.output_path
            tail = f": {output}" if output else "."
            if progress.error:
                self._say(WARNING, f"{job.name} on {where}: {progress.error}")
            else:
                self._say(INFO, f"{job.name} finished on {where}{tail}")
        elif progress.status is JobStatus.FAILED:
            self._say(ERROR, f"{job.name} on {where} failed: {progress.error or 'no reason given'}")
        elif progress.status is JobStatus.CANCELLED:
            self._say(WARNING, f"{job.name} on {where} was cancelled.")
        elif progress.status is JobStatus.INTERRUPTED:
            self._say(
                WARNING,
                f"{job.name} was interrupted when the app closed. Select it in the jobs list "
                f"to resume it from its checkpoint.",
            )

    async def _refresh_when_done(self, queue: JobQueue, job_id: str) -> None:
        await queue.wait(job_id)
        self.refresh_jobs()

    def refresh_jobs(self) -> None:
        """Read the job history again soon (coalesced; off the GUI thread)."""
        self._jobs_dirty = True
        if self._jobs_task is None and self._queue_store is not None:
            self._jobs_task = self._spawn(self._jobs_loop(), "read the job history")

    async def _jobs_loop(self) -> None:
        try:
            while self._jobs_dirty and self._queue_store is not None:
                self._jobs_dirty = False
                jobs = await asyncio.to_thread(self._queue_store.list, 200)
                if not self._jobs_dirty:
                    self.jobs_listed.emit(jobs)
        finally:
            self._jobs_task = None

    def load_job_details(self, job_id: str) -> asyncio.Task[None] | None:
        """Read a job's logs, loss and learning-rate series and checkpoint (answers
        :attr:`job_details`)."""
        if self._queue_store is None:
            return None
        return self._spawn(self._job_details(job_id), "read the job's history")

    async def _job_details(self, job_id: str) -> None:
        store = self._queue_store
        assert store is not None

        def read() -> tuple[
            Job | None, list[str], list[tuple[int, float]], Path | None, list[tuple[int, float]]
        ]:
            job = store.get(job_id)
            if job is None:
                return None, [], [], None, []
            checkpoint = (
                latest_checkpoint_of(job.spec)
                if job.spec is not None and job.backend is BackendType.LOCAL
                else None
            )
            logs, losses = store.logs(job_id, tail=400), store.losses(job_id)
            return job, logs, losses, checkpoint, store.learning_rates(job_id)

        job, logs, losses, checkpoint, rates = await asyncio.to_thread(read)
        if job is not None:
            self.job_details.emit(job, logs, losses, checkpoint, rates)

    def cancel_job(self, job_id: str) -> asyncio.Task[None] | None:
        """Cancel job ``job_id`` from the jobs list (the window's local run, or a queued
        or remote one)."""
        if self._job is not None and self._job.id == job_id:
            return self.cancel_training()
        if self.queue is None:
            return None
        return self._spawn(self.queue.cancel(job_id), "cancel the job")

    def retry_job(self, job_id: str) -> asyncio.Task[None] | None:
        """Run job ``job_id`` again with the settings it had."""
        return self._spawn(self._retry(job_id, resume=False), "retry the job")

    def resume_job(self, job_id: str) -> asyncio.Task[None] | None:
        """Continue local job ``job_id`` from the newest checkpoint it left."""
        return self._spawn(self._retry(job_id, resume=True), "resume the job")

    async def _retry(self, job_id: str, *, resume: bool) -> None:
        if self.queue is None or self._queue_store is None:
            return
        job = await asyncio.to_thread(self._queue_store.get, job_id)
        if job is None or job.spec is None:
            self._say(ERROR, "This job has no saved settings to run again.")
            return
        if job.backend is not BackendType.LOCAL:
            again = self.queue.retry(job_id, resume=resume)
            self._say(INFO, f"Queued {again.name} again.")
            return
        checkpoint = None
        if resume:
            checkpoint = await asyncio.to_thread(latest_checkpoint_of, job.spec)
            if checkpoint is None:
                self._say(ERROR, f"{job.name} left no checkpoint to resume from.")
                return
        spec = dataclasses.replace(job.spec, resume_from=None)
        self._start_local(checkpoint, spec)

    def move_job(self, job_id: str, delta: int) -> None:
        """Move a waiting job ``delta`` places (negative: sooner)."""
        if self.queue is None:
            return
        queued = [j for j in self.queue.jobs() if j.status is JobStatus.QUEUED]
        ids = [j.id for j in queued]
        if job_id not in ids:
            return
        try:
            self.queue.move(job_id, max(0, ids.index(job_id) + delta))
        except LoraStudioError as exc:
            self._say(ERROR, str(exc))
            return
        self.refresh_jobs()

    # ---- shutdown ------------------------------------------------------------------------------

    def shutdown(self, timeout: float = 60.0) -> bool:
        """Stop everything before the app exits: cancel a run, wait for its thread.

        Blocking by design (called after the window has closed). Returns ``True`` when no
        worker thread is left running.
        """
        if self._closed:
            return not self.threads.running
        self._closed = True
        if self._image_check_stop is not None:
            self._image_check_stop.set()
        self._bucket_stop.set()
        for job in self.backend.running_jobs():
            _drive(self._run_creator.cancel(job.id))
        if self._launch is not None:
            for job in self._launch.running_jobs():
                self._launch.interrupt(job)
        clean = self.threads.join_all(timeout)
        if not clean:
            log.error("A training thread did not stop within %.0f s", timeout)
        self._stop_queue()
        for task in list(self._tasks):
            task.cancel()
        if self._store is not None:
            self._store.close()
            self._store = None
        return clean

    def _stop_queue(self) -> None:
        """Stop following remote runs (they go on; the next start re-attaches them) and
        close the backends' HTTP clients."""
        queue, self.queue = self.queue, None
        if self._forget_queue is not None:
            # The listener is a bound method: left in place, the queue (held by its tasks
            # until the loop closes) would keep this QObject alive for a collection on
            # some other thread.
            self._forget_queue()
            self._forget_queue = None
        if queue is not None:
            if self._loop.is_closed():
                log.warning("The event loop closed before the job queue stopped.")
            elif self._loop.is_running():
                self._loop.create_task(queue.stop())
            else:
                try:
                    self._loop.run_until_complete(asyncio.wait_for(queue.stop(), 10))
                except (TimeoutError, RuntimeError):
                    log.warning("The job queue did not stop cleanly", exc_info=True)
        if self._queue_store is not None:
            self._queue_store.close()
            self._queue_store = None

    # ---- internals -----------------------------------------------------------------------------

    async def _open_job_store(self) -> None:
        try:
            store = await asyncio.to_thread(_WriteBehindJobStore, self._store_path)
        except Exception as exc:  # sqlite3.Error or OSError: history is optional
            log.warning("Cannot open the job history %s", self._store_path, exc_info=True)
            self._say(
                WARNING,
                f"The job history ({self._store_path}) cannot be opened ({exc}); runs will "
                f"not be recorded.",
            )
            return
        if self._closed:
            store.close()
            return
        self._store = store
        self.creator.job_store = store
        await self._start_queue()

    def spawn(self, coro: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        """Run ``coro`` on the window's loop; a failure is reported as failing to ``what``
        (for the window's other parts, e.g. the caption watcher)."""
        return self._spawn(coro, what)

    def _spawn(self, coro: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        task = self._loop.create_task(coro)
        # asyncio keeps only weak references to tasks: hold them until they end.
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, what))
        return task

    def _task_done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        details = report_failed_task(what, task, self._say)
        if details and not self._closed:
            self.error_details.emit(details)

    def check_compatibility(self, path: Path) -> asyncio.Task[None]:
        """Load ``path`` into diffusers (the family's built-in tiny pipeline) and check its
        key names against ComfyUI's, Automatic1111's and Forge's rules, on a worker thread;
        answers with :attr:`compatibility_checked`."""
        return self._spawn(self._check_compatibility(Path(path)), "check the LoRA file")

    async def _check_compatibility(self, path: Path) -> None:
        from lora_studio.ecosystem.check import check_lora, format_check

        try:
            report = await asyncio.to_thread(check_lora, path)
        except LoraStudioError:
            self.compatibility_checked.emit("", False, path)
            raise
        self.compatibility_checked.emit(format_check(report), report.ok, path)

    def _say(self, level: str, text: str) -> None:
        log.log({INFO: logging.INFO, WARNING: logging.WARNING}.get(level, logging.ERROR), text)
        if not self._closed:
            self.message.emit(level, text)


def report_failed_task(
    what: str, task: asyncio.Task[Any], say: Callable[[str, str], None]
) -> str | None:
    """Tell the user (through ``say``) why the task that was to ``what`` failed: a
    :class:`LoraStudioError` as its own line, anything else as one line that points at the
    log. Returns the traceback of an unexpected error (for a Details button), else ``None``."""
    if task.cancelled():
        return None
    exc = task.exception()
    if exc is None:
        return None
    if isinstance(exc, LoraStudioError):
        log.warning("Could not %s: %s", what, exc)
        say(ERROR, str(exc))
        return None
    log.error("Unexpected error while trying to %s", what, exc_info=exc)
    say(
        ERROR,
        f"Unexpected error while trying to {what}: {type(exc).__name__}: {exc} "
        f"(details in {log_file()}).",
    )
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"While trying to {what}:\n\n{details}"


async def _aclose(backend: TrainingBackend) -> None:
    """Close a backend made for one question (its HTTP client)."""
    aclose: Callable[[], Coroutine[Any, Any, None]] | None = getattr(backend, "aclose", None)
    if aclose is not None:
        await aclose()


def _drive(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a coroutine that never suspends, without an event loop.

    At shutdown the asyncio loop has stopped, but ``LocalBackend.cancel`` only sets the
    trainer's stop flag; driving it by hand stops the run without restarting the loop.
    """
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    log.error("Cancelling at shutdown needed the event loop; the run was not cancelled.")
