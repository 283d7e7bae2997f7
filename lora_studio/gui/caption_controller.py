"""``CaptionController``: automatic captions for the window, beside the StudioController.

It captions the open dataset with a :class:`~lora_studio.captioning.runner.CaptionRun`
and keeps its proposals (:class:`~lora_studio.core.proposals.ProposalStore`, in the
dataset's ``dataset.json``) in step with the caption grid:

* a run is an asyncio task on the qasync loop: remote captioners speak HTTP with
  ``httpx`` there; a local BLIP/BLIP-2 loads and generates in worker threads (the
  provider's ``asyncio.to_thread``), so the window never waits. Making the provider
  (which may ask the OS keyring for a token) and every ``dataset.json`` read or write
  run in worker threads too;
* :meth:`stop_run` stops at once: a model still loading is abandoned, requests in
  flight are cancelled, and every caption made so far is kept as a proposal;
* each caption arrives as a proposal (:attr:`proposals_added`), never in the caption
  file; :meth:`accept` writes proposals through the store, so a caption edited since it
  was proposed is a conflict and is only overwritten with ``force``; :meth:`reject`
  drops them and leaves the files alone;
* when a folder opens, the proposals and provenance already in its ``dataset.json``
  (from an earlier run, or ``lora-studio caption``) are read (:attr:`proposals_loaded`).

Accepting writes through a snapshot of the dataset's items (in a worker thread); the live
items, which the StudioController and the grid share, are updated on the GUI thread.
Every error is one line on :attr:`message`; nothing the user wrote is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from PySide6.QtCore import QObject, QTimer, Signal

from lora_studio.captioning.base import CaptionerError, CaptionProvider
from lora_studio.captioning.credentials import SOURCES, store_token
from lora_studio.captioning.request import CaptionRequest
from lora_studio.captioning.runner import (
    CaptionProgress,
    CaptionRun,
    ResultStatus,
    RunReport,
    RunState,
    StoreSink,
)
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.proposals import Proposal, ProposalStore, Provenance
from lora_studio.gui.controller import (
    ERROR,
    INFO,
    WARNING,
    StudioController,
    report_failed_task,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: New proposals reach the grid at most this often (ms): with thousands of images and a
#: fast server, redrawing the review state after every single image would be wasted work.
ADDED_BATCH_MS = 250


def _read_store(store: ProposalStore) -> tuple[dict[str, Proposal], dict[str, Provenance]]:
    return store.proposals(), store.provenance()


def failed_report(request: CaptionRequest, error: str) -> RunReport:
    """The report of a run that could not start."""
    return RunReport(
        state=RunState.FAILED,
        provider=request.provider,
        model=request.model or "",
        results=(),
        elapsed_s=0.0,
        error=error,
    )


def summary(report: RunReport) -> tuple[str, str]:
    """``(level, one line)`` about a finished run."""
    who = f"{report.provider} ({report.model})" if report.model else report.provider
    made = len(report.captioned)
    failed = report.failed
    considered = len(report.results) - len(report.skipped)
    if report.state is RunState.FAILED:
        return ERROR, report.error or "Captioning failed."
    if report.state is RunState.CANCELLED:
        return INFO, (
            f"Captioning stopped; the {made} caption(s) made so far are kept as proposals "
            f"to review."
        )
    if failed and not made:
        reasons = {r.error for r in failed}
        if len(reasons) == 1:
            return ERROR, f"No image could be captioned: {next(iter(reasons))}"
        return ERROR, f"None of the {len(failed)} image(s) could be captioned (see the list)."
    line = f"{made} caption(s) proposed by {who} in {report.elapsed_s:.1f} s"
    if report.skipped:
        line += f"; {len(report.skipped)} image(s) already had a caption (fill)"
    if failed:
        return WARNING, line + f"; {len(failed)} of {considered} image(s) failed (see the list)."
    if made:
        return INFO, line + "; review them in the caption grid."
    return INFO, line + "; nothing new to review."


class CaptionController(QObject):
    """Caption runs and proposal review for the window (see the module docstring).

    Args:
        studio: the window's controller (it owns the open dataset and says when it changes).
        loop: the asyncio loop (qasync's); default: the current one.

    Signals:
        run_started(CaptionRequest): a run began.
        run_progress(CaptionProgress): after each image (done/total, images/s, ETA).
        run_finished(RunReport): the run ended (finished, cancelled, or failed: a run
            that could not start ends at once with a failed report saying why).
        proposals_loaded(Dataset, dict[Path, Proposal], dict[Path, Provenance]): the
            proposals and provenance in the dataset's ``dataset.json``.
        proposals_added(dict[Path, Proposal]): new proposals from the running batch (a
            few at a time, at most every :data:`ADDED_BATCH_MS` ms).
        proposals_resolved(dict[Path, str], list[Path], dict[Path, Provenance]):
            captions written by accepting (path -> text; the items are updated), proposals
            rejected, and the provenance of the accepted captions.
        running_changed(bool): a run started or ended.
        message(str, str): level (info/warning/error), one line for the user.
    """

    run_started = Signal(object)
    run_progress = Signal(object)
    run_finished = Signal(object)
    proposals_loaded = Signal(object, object, object)
    proposals_added = Signal(object)
    proposals_resolved = Signal(object, object, object)
    running_changed = Signal(bool)
    message = Signal(str, str)

    def __init__(
        self,
        studio: StudioController,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.studio = studio
        self._loop = loop or asyncio.get_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._run: CaptionRun | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._inner: asyncio.Task[RunReport] | None = None
        self._stop_requested = False
        self._closed = False
        self.last_report: RunReport | None = None
        self._added: dict[Path, Proposal] = {}
        self._added_timer = QTimer(self)
        self._added_timer.setSingleShot(True)
        self._added_timer.setInterval(ADDED_BATCH_MS)
        self._added_timer.timeout.connect(self._flush_added)
        studio.dataset_loaded.connect(self.load_proposals)

    # ---- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run_task is not None and not self._run_task.done()

    @property
    def stopping(self) -> bool:
        return self.running and self._stop_requested

    # ---- running -------------------------------------------------------------------------

    def start_run(
        self,
        request: CaptionRequest,
        paths: Iterable[Path] | None = None,
        *,
        token: str | None = None,
        remember_token: bool = False,
    ) -> asyncio.Task[None] | None:
        """Caption the open dataset's images (``paths``: only these) as ``request`` says.

        Args:
            token: a token typed by the user (``None``: the environment or keyring's).
            remember_token: save ``token`` in the OS keyring first.

        Returns:
            the run's task; ``None`` (and a message) when a run is already going or no
            dataset is open.
        """
        if self.running:
            self._say(WARNING, "A caption run is already going; stop it first.")
            return None
        dataset = self.studio.dataset
        if dataset is None:
            self._say(ERROR, "Open a dataset folder first.")
            return None
        self._stop_requested = False
        chosen = None if paths is None else [Path(p) for p in paths]
        task = self._spawn(
            self._caption(request, dataset, chosen, token, remember_token), "caption images"
        )
        self._run_task = task
        self.running_changed.emit(True)
        self.run_started.emit(request)
        return task

    def stop_run(self) -> None:
        """Stop the run now; the captions made so far stay as proposals."""
        if not self.running:
            return
        self._stop_requested = True
        run = self._run
        if run is not None:
            run.stop()
            if run.state in (RunState.PENDING, RunState.LOADING) and self._inner is not None:
                # A model load can take minutes and cannot be interrupted: stop waiting.
                self._inner.cancel()
        elif self._run_task is not None:
            self._run_task.cancel()  # still making the provider

    async def _caption(
        self,
        request: CaptionRequest,
        dataset: Dataset,
        paths: list[Path] | None,
        token: str | None,
        remember_token: bool,
    ) -> None:
        report: RunReport | None = None
        provider: CaptionProvider | None = None
        try:
            report, provider = await self._prepare(request, dataset, token, remember_token)
            if report is None and provider is not None:
                report = await self._drive(request, dataset, paths, provider)
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise
            report = self._run.report() if self._run is not None else None
            if report is None:
                report = dataclasses.replace(
                    failed_report(request, ""), state=RunState.CANCELLED, error=None
                )
        finally:
            if not self._closed:  # else the window (and this object's timer) may be gone
                self._added_timer.stop()
                self._flush_added()
            if provider is not None:
                await _close(provider)
            self._run = None
            self._inner = None
            self._run_task = None
            if report is not None:
                self._finished(report, dataset)
            if not self._closed:
                self.running_changed.emit(False)

    async def _prepare(
        self, request: CaptionRequest, dataset: Dataset, token: str | None, remember: bool
    ) -> tuple[RunReport | None, CaptionProvider | None]:
        token = (token or "").strip() or None
        if token and remember and request.provider in SOURCES:
            try:
                await asyncio.to_thread(store_token, request.provider, token)
            except LoraStudioError as exc:
                self._say(WARNING, f"{exc} The token is used for this run only.")
            else:
                self._say(INFO, "Saved the token in the OS keyring.")
        try:
            request.check()
            await asyncio.to_thread(ProposalStore(dataset).proposals)  # readable manifest?
            provider = await asyncio.to_thread(request.make_provider, token=token)
        except LoraStudioError as exc:
            return failed_report(request, str(exc)), None
        return None, provider

    async def _drive(
        self,
        request: CaptionRequest,
        dataset: Dataset,
        paths: list[Path] | None,
        provider: CaptionProvider,
    ) -> RunReport:
        store = ProposalStore(dataset)
        options = request.run_options()

        def on_progress(progress: CaptionProgress) -> None:
            if self._closed:
                return  # the window is gone; the run is winding down
            self.run_progress.emit(progress)
            result = progress.result
            if result is not None and result.status is ResultStatus.CAPTIONED:
                proposal = result.proposal(options.mode, options.prompt)
                if proposal is not None and dataset is self.studio.dataset:
                    self._added[result.path] = proposal
                    if not self._added_timer.isActive():
                        self._added_timer.start()

        run = CaptionRun(
            provider,
            dataset,
            options,
            paths=[str(p) for p in paths] if paths is not None else None,
            sink=StoreSink(store),
            on_progress=on_progress,
        )
        self._run = run
        self._inner = asyncio.ensure_future(run.run())
        if self._stop_requested:
            self.stop_run()
        return await self._inner

    def _flush_added(self) -> None:
        added, self._added = self._added, {}
        if added and not self._closed:
            self.proposals_added.emit(added)

    def _finished(self, report: RunReport, dataset: Dataset) -> None:
        self.last_report = report
        if self._closed:
            return
        level, line = summary(report)
        self._say(level, line)
        self.run_finished.emit(report)
        if dataset is self.studio.dataset:
            self.load_proposals(dataset)  # what the store holds now is what counts

    # ---- proposals ------------------------------------------------------------------------

    def load_proposals(self, dataset: Dataset) -> asyncio.Task[None]:
        """Read the proposals and provenance in ``dataset``'s ``dataset.json``."""
        return self._spawn(self._load(dataset), "read the caption proposals")

    async def _load(self, dataset: Dataset) -> None:
        store = ProposalStore(dataset)

        def read() -> tuple[Any, Any, dict[str, Path]]:
            proposals, provenance = _read_store(store)
            # The keys of 10,000 images take ~0.1 s: only worked out when needed, here.
            paths = _paths_by_key(dataset) if proposals or provenance else {}
            return proposals, provenance, paths

        proposals, provenance, paths = await asyncio.to_thread(read)
        if dataset is not self.studio.dataset or self._closed:
            return
        self.proposals_loaded.emit(
            dataset,
            {paths[k]: v for k, v in proposals.items() if k in paths},
            {paths[k]: v for k, v in provenance.items() if k in paths},
        )
        missing = [k for k in proposals if k not in paths]
        if missing:
            log.info("Proposals for images no longer in %s: %s", dataset.root, missing)

    def accept(self, paths: Iterable[Path], force: bool = False) -> asyncio.Task[None] | None:
        """Write the proposed captions of ``paths``; ``force`` also over captions edited
        since they were proposed (Overwrite)."""
        dataset = self.studio.dataset
        if dataset is None:
            return None
        return self._spawn(self._accept(dataset, list(paths), force), "accept captions")

    async def _accept(self, dataset: Dataset, paths: list[Path], force: bool) -> None:
        keys = _keys_of(dataset, paths)
        copy = dataset.snapshot()  # written to off the GUI thread
        store = ProposalStore(copy)

        def work() -> tuple[Any, dict[str, Provenance]]:
            return store.accept(keys, force=force), store.provenance()

        report, provenance = await asyncio.to_thread(work)
        if dataset is not self.studio.dataset or self._closed:
            return
        by_key = _paths_by_key(dataset)
        live = {item.path: item for item in dataset.images}
        written = {item.path: item for item in copy.images}
        accepted: dict[Path, str] = {}
        for key, text in report.accepted.items():
            path = by_key.get(key)
            if path is None:
                continue
            for name in ("caption", "caption_encoding", "caption_error", "problem"):
                setattr(live[path], name, getattr(written[path], name))
            accepted[path] = text
        records = {by_key[k]: v for k, v in provenance.items() if by_key.get(k) in accepted}
        self.proposals_resolved.emit(accepted, [], records)
        if accepted:
            self._say(INFO, f"Wrote {len(accepted)} accepted caption(s).")
        if report.conflicts:
            self._say(
                WARNING,
                f"{len(report.conflicts)} caption(s) were edited after they were proposed and "
                f"were not overwritten; use Overwrite on those rows to replace your edit.",
            )
        for key, why in report.failed.items():
            self._say(ERROR, f"{key}: {why}")
        if report.missing:
            self._say(
                WARNING,
                f"{len(report.missing)} proposal(s) are for images no longer in the folder.",
            )

    def reject(self, paths: Iterable[Path]) -> asyncio.Task[None] | None:
        """Drop the proposals of ``paths``; no caption file changes."""
        dataset = self.studio.dataset
        if dataset is None:
            return None
        return self._spawn(self._reject(dataset, list(paths)), "reject captions")

    async def _reject(self, dataset: Dataset, paths: list[Path]) -> None:
        keys = _keys_of(dataset, paths)
        dropped = await asyncio.to_thread(ProposalStore(dataset).reject, keys)
        if dataset is not self.studio.dataset or self._closed:
            return
        by_key = _paths_by_key(dataset)
        rejected = [by_key[k] for k in dropped if k in by_key]
        self.proposals_resolved.emit({}, rejected, {})
        if rejected:
            self._say(INFO, f"Rejected {len(rejected)} proposed caption(s); captions unchanged.")

    # ---- life --------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until every task of this controller has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def shutdown(self) -> None:
        """Stop the run (the window is closing); what was captioned stays proposed."""
        self.stop_run()
        self._closed = True

    def _spawn(self, coro: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, what))
        return task

    def _task_done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        report_failed_task(what, task, self._say)

    def _say(self, level: str, text: str) -> None:
        log.log({INFO: logging.INFO, WARNING: logging.WARNING}.get(level, logging.ERROR), text)
        if not self._closed:
            self.message.emit(level, text)


def _keys_of(dataset: Dataset, paths: list[Path]) -> list[str]:
    """The manifest keys of images ``paths`` (paths not in the dataset are left out)."""
    keys = {item.path: dataset.relative_name(item) for item in dataset.images}
    return [keys[p] for p in paths if p in keys]


def _paths_by_key(dataset: Dataset) -> dict[str, Path]:
    return {dataset.relative_name(item): item.path for item in dataset.images}


async def _close(provider: CaptionProvider) -> None:
    try:
        await provider.aclose()
    except (CaptionerError, OSError) as exc:
        log.warning("Closing the captioner: %s", exc)


__all__ = ["CaptionController", "failed_report", "summary"]
