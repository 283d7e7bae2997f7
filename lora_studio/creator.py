"""``LoraCreator``: the programmatic facade (the seed's API), used by the CLI and the GUI.

Example::

    creator = LoraCreator("builtin:tiny-sd15", "./lora_output")
    creator = creator.with_config(LoraConfig.fast_preset().with_trigger_word("papercut style"))
    creator.load_dataset("./dataset")
    await creator.prepare_dataset()
    job = await creator.train()
    async for progress in creator.watch(job.id):
        print(f"{progress.progress:.0f}%  loss {progress.loss}")
    weights = await creator.download_weights(job.id)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from lora_studio.backends.base import BackendConfig, TrainingBackend
from lora_studio.backends.local import LocalBackend
from lora_studio.core.atomic import ensure_writable_dir
from lora_studio.core.base_model import (
    DEFAULT_BASE_MODEL,
    BaseModelRef,
    ModelKind,
    resolve_base_model,
)
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset, DatasetStats
from lora_studio.core.errors import (
    BackendError,
    ConfigError,
    DatasetError,
    LoraStudioError,
)
from lora_studio.core.estimates import Estimate, estimate
from lora_studio.core.jobs import (
    BackendType,
    Job,
    JobStore,
    JobStoreError,
    Progress,
    ProgressRecorder,
)
from lora_studio.core.paths import default_output_dir
from lora_studio.core.request import TrainingRequest

log = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    """What :meth:`LoraCreator.prepare_dataset` found."""

    usable: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    without_caption: int = 0

    @property
    def ok(self) -> bool:
        return self.usable > 0

    def summary(self) -> str:
        parts = [f"{self.usable} image(s) ready"]
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable and skipped")
        if self.without_caption:
            parts.append(f"{self.without_caption} without a caption")
        return ", ".join(parts)


class LoraCreator:
    """Loads a dataset, holds a config and a backend, and runs training jobs."""

    def __init__(
        self,
        base_model: str = DEFAULT_BASE_MODEL,
        output_dir: str | os.PathLike[str] | None = None,
        *,
        job_store: JobStore | None = None,
    ) -> None:
        self.base_model = base_model
        self.output_dir = Path(output_dir) if output_dir is not None else default_output_dir()
        self.config = LoraConfig.sd15_preset()
        self.dataset: Dataset | None = None
        self.backend: TrainingBackend | None = None
        self.job_store = job_store
        self._jobs: dict[str, tuple[Job, TrainingBackend]] = {}

    # ---- builder-style setters (return self, as the seed's API does) -------------------

    def with_config(self, config: LoraConfig) -> LoraCreator:
        self.config = config.validate()
        return self

    def with_backend(self, backend: TrainingBackend) -> LoraCreator:
        self.backend = backend
        return self

    def with_base_model(self, base_model: str) -> LoraCreator:
        self.base_model = base_model
        return self

    def with_output_dir(self, output_dir: str | os.PathLike[str]) -> LoraCreator:
        self.output_dir = Path(output_dir)
        return self

    # ---- dataset -----------------------------------------------------------------------

    def load_dataset(self, path: str | os.PathLike[str]) -> Dataset:
        """Open the dataset folder at ``path`` (raises :class:`DatasetError`)."""
        self.dataset = Dataset.from_directory(path)
        return self.dataset

    def set_dataset(self, dataset: Dataset) -> None:
        self.dataset = dataset

    async def prepare_dataset(self) -> PrepareReport:
        """Check that every image decodes (in a worker thread) and count missing captions.

        Unreadable images are reported and left out of training; nothing is deleted.
        """
        dataset = self._require_dataset()
        bad = await asyncio.to_thread(dataset.verify_images)
        report = PrepareReport(
            usable=len(dataset) - len(bad),
            unreadable=[(dataset.relative_name(item), why) for item, why in bad],
            without_caption=sum(1 for item in dataset if not item.has_caption),
        )
        if not report.ok:
            raise DatasetError(f"None of the {len(dataset)} images in {dataset.root} can be read.")
        return report

    def dataset_stats(self) -> DatasetStats | None:
        return self.dataset.stats() if self.dataset is not None else None

    # ---- estimates ---------------------------------------------------------------------

    def base_model_ref(self) -> BaseModelRef:
        return resolve_base_model(self.base_model)

    def estimate(self, processes: int = 1) -> Estimate:
        """Steps, time and VRAM for the current dataset, config and base model (on
        ``processes`` GPUs)."""
        samples = self.dataset.samples_per_epoch(self.config.repeats) if self.dataset else 0
        family, tiny = self.config.family, False
        try:
            ref = self.base_model_ref()
            family = ref.family or family
            tiny = ref.kind is ModelKind.BUILTIN
        except LoraStudioError:  # an unresolvable model still gets an estimate from the preset
            pass
        return estimate(samples, self.config, family, tiny=tiny, processes=processes)

    def estimate_training_time(self) -> float:
        """Estimated training time in minutes."""
        return self.estimate().minutes

    def estimate_vram(self) -> float:
        """Estimated peak VRAM in GB."""
        return self.estimate().vram_gb

    # ---- jobs ----------------------------------------------------------------------------

    def _backend(self) -> TrainingBackend:
        if self.backend is None:
            self.backend = LocalBackend(BackendConfig(BackendType.LOCAL, self.output_dir))
        return self.backend

    def _require_dataset(self) -> Dataset:
        if self.dataset is None:
            raise DatasetError("No dataset loaded: open a folder of images first.")
        return self.dataset

    def build_request(self, resume_from: Path | None = None) -> TrainingRequest:
        """Check everything that can be checked cheaply and snapshot the inputs.

        Touches the disk (model folder, output folder): call it off the GUI thread.
        """
        dataset = self._require_dataset()
        if len(dataset) == 0:
            raise DatasetError("The dataset has no images.")
        problems = self.config.problems()
        if problems:
            raise ConfigError(" ".join(problems))
        resolve_base_model(self.base_model)  # raises ModelError with advice
        ensure_writable_dir(self.output_dir)
        return TrainingRequest(
            dataset=dataset.snapshot(),
            config=self.config,
            base_model=self.base_model,
            output_dir=self.output_dir,
            resume_from=resume_from,
        )

    async def train(self, resume_from: str | os.PathLike[str] | None = None) -> Job:
        """Submit a training job to the backend (local by default) and return it.

        Args:
            resume_from: a checkpoint to continue from (a ``step-*`` folder or a run's
                ``<name>-checkpoints`` folder, whose newest checkpoint is used).
        """
        resume = Path(resume_from) if resume_from is not None else None
        # Off the event loop: resolving the model and probing the output folder touch disk.
        request = await asyncio.to_thread(self.build_request, resume)
        backend = self._backend()
        job = await backend.submit(request)
        self._jobs[job.id] = (job, backend)
        self._save(job)
        return job

    def job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id][0]
        except KeyError:
            raise BackendError(f"Unknown job {job_id}.") from None

    async def monitor_progress(self, job_id: str) -> Progress:
        job, backend = self._lookup(job_id)
        return await backend.progress(job)

    async def watch(self, job_id: str) -> AsyncIterator[Progress]:
        """Every progress update of ``job_id`` until it finishes; records the outcome."""
        job, backend = self._lookup(job_id)
        last: Progress | None = None
        # The history gets the run as it goes: status, log lines, each step's loss and
        # learning rate (what the job monitor shows when the job is opened later).
        recorder = ProgressRecorder(self.job_store) if self.job_store is not None else None
        async for progress in backend.watch(job):
            last = progress
            if recorder is not None:
                recorder.record(job, progress)
            else:
                job.status = progress.status
            yield progress
        if recorder is not None:
            recorder.forget(job.id)
        if last is not None:
            job.status = last.status
            job.output_path = last.output_path or job.output_path
            job.error = last.error
            self._save(job)

    async def wait(self, job_id: str) -> Progress:
        """Wait for ``job_id`` to finish and return its final progress."""
        final: Progress | None = None
        async for progress in self.watch(job_id):
            final = progress
        assert final is not None
        return final

    async def cancel(self, job_id: str) -> None:
        job, backend = self._lookup(job_id)
        await backend.cancel(job)

    async def pause(self, job_id: str) -> None:
        """Pause a local run after its current step (remote backends cannot pause)."""
        job, backend = self._lookup(job_id)
        pause = getattr(backend, "pause", None)
        if pause is None:
            raise BackendError(f"The {backend.kind.value} backend cannot pause a run.")
        await pause(job)

    async def resume(self, job_id: str) -> None:
        """Continue a paused run."""
        job, backend = self._lookup(job_id)
        resume = getattr(backend, "resume", None)
        if resume is None:
            raise BackendError(f"The {backend.kind.value} backend cannot pause a run.")
        await resume(job)

    async def download_weights(
        self, job_id: str, dest: str | os.PathLike[str] | None = None
    ) -> Path:
        job, backend = self._lookup(job_id)
        return await backend.download_weights(job, Path(dest) if dest is not None else None)

    def _lookup(self, job_id: str) -> tuple[Job, TrainingBackend]:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise BackendError(f"Unknown job {job_id}.") from None

    def _save(self, job: Job) -> None:
        """Record ``job`` in the history; a history that cannot be written (a full disk)
        is logged and never stops the run."""
        if self.job_store is not None:
            try:
                self.job_store.save(job)
            except JobStoreError as exc:
                log.warning("%s The run goes on without it.", exc)
