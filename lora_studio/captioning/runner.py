"""The batch run: caption a dataset's images with one provider.

:class:`CaptionRun` takes a provider, a :class:`~lora_studio.core.dataset.Dataset` and
:class:`RunOptions`, and:

* picks the images by mode (``fill`` skips captioned ones; ``overwrite`` and ``append``
  take all), reading each image's caption from disk just before captioning it;
* decodes each image in a worker thread with :mod:`lora_studio.core.imaging` (EXIF
  upright, alpha flattened on white, 16-bit and CMYK converted) and downscales it to the
  provider's ``max_side``, only when a worker is ready for it;
* keeps at most ``concurrency`` images in flight (the provider's ``default_concurrency``
  unless set), and hands local models ``batch_size`` images per call;
* bounds each attempt by ``timeout_s`` and retries 429, 5xx, time-outs and dropped or
  refused connections with exponential backoff, honouring ``Retry-After`` (capped at
  ``max_retry_after_s``), at most ``retries`` times;
* never lets one image stop the others: a failed image is listed with its reason. Only
  a fatal error (a refused token, a missing model) or ``give_up_after`` images in a row
  that could not reach the server stop the run (:attr:`RunReport.error` says why);
* post-processes each caption (:mod:`lora_studio.captioning.postprocess`) and applies the
  mode, then gives the result to a sink: :class:`StoreSink` adds it to the dataset's
  proposals, or writes it at once (``write=True``) with its provenance;
* reports a frozen :class:`CaptionProgress` after every image (done/total, images/s,
  ETA) through ``on_progress`` and :meth:`CaptionRun.stream`.

Cancel at any time with :meth:`CaptionRun.stop` (in-flight requests are cancelled, the
run returns a report with state ``cancelled``) or by cancelling the task running
:meth:`CaptionRun.run`. Either way every caption finished so far reaches the sink, which
is flushed before the run ends.

Example::

    run = CaptionRun(provider, dataset, RunOptions(mode=CaptionMode.FILL),
                     sink=StoreSink(ProposalStore(dataset)))
    async for progress in run.stream():
        print(progress.done, progress.total, progress.eta_s)  # or on_progress=callback
    report = run.report()
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from lora_studio.captioning.base import (
    Caption,
    CaptionerError,
    CaptionProvider,
    CaptionTimeout,
    ImageUnreadable,
    ProviderUnavailable,
    one_line,
)
from lora_studio.captioning.postprocess import CaptionMode, PostProcessOptions, apply_mode
from lora_studio.core.dataset import Dataset, ImageItem, read_item_caption
from lora_studio.core.errors import DatasetError, LoraStudioError
from lora_studio.core.imaging import EXIF_ORIENTATION, to_rgb, undo_orientation
from lora_studio.core.proposals import AcceptReport, Proposal, ProposalStore, now_iso

log = logging.getLogger(__name__)


class RunState(enum.StrEnum):
    """Where a run is: ``loading`` -> ``running`` -> (``stopping`` ->) a final state."""

    PENDING = "pending"
    LOADING = "loading"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (RunState.FINISHED, RunState.CANCELLED, RunState.FAILED)


class ResultStatus(enum.StrEnum):
    """What happened to one image."""

    #: a new caption was made (``ImageResult.text``)
    CAPTIONED = "captioned"
    #: captioned, but the caption it would get is the one it has (append added nothing)
    UNCHANGED = "unchanged"
    #: not captioned: it has a caption and the mode is ``fill``
    SKIPPED = "skipped"
    #: the captioner failed on it (``ImageResult.error`` says why)
    FAILED = "failed"
    #: the run stopped before this image was done
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunOptions:
    """How a batch run behaves."""

    mode: CaptionMode = field(
        default=CaptionMode.FILL,
        metadata={
            "help": "fill: only images without a caption; overwrite: all; append: add to the caption"
        },
    )
    prompt: str | None = field(
        default=None, metadata={"help": "prompt for the captioner (e.g. 'a photo of' for BLIP)"}
    )
    concurrency: int | None = field(
        default=None, metadata={"help": "images in flight at once (default: the provider's)"}
    )
    timeout_s: float | None = field(
        default=None,
        metadata={"help": "seconds one attempt at one image may take (none: no limit)"},
    )
    retries: int = field(
        default=3,
        metadata={"help": "retries of an image after 429, 5xx, time-outs, connection errors"},
    )
    backoff_s: float = field(
        default=1.0, metadata={"help": "first wait between retries (doubles each time)"}
    )
    max_backoff_s: float = field(default=30.0, metadata={"help": "longest wait between retries"})
    max_retry_after_s: float = field(
        default=120.0, metadata={"help": "longest wait a server's Retry-After may ask for"}
    )
    batch_size: int | None = field(
        default=None,
        metadata={"help": "images per call for local models (default: the provider's)"},
    )
    give_up_after: int = field(
        default=5,
        metadata={
            "help": "stop the run after this many images in a row could not reach the server"
        },
    )
    postprocess: PostProcessOptions = field(
        default_factory=PostProcessOptions, metadata={"help": "caption clean-up"}
    )


@dataclass(frozen=True)
class ImageResult:
    """The outcome for one image.

    Attributes:
        path: the image file.
        name: its path relative to the dataset folder (the proposal key).
        status: see :class:`ResultStatus`.
        text: the caption it should get (post-processed, mode applied).
        previous: its caption when it was captioned.
        caption: the captioner's raw answer.
        error: why it failed or was not captioned.
        attempts: how many times the captioner was asked.
        created_at: when the caption was made (UTC, ISO 8601).
    """

    path: Path
    name: str
    status: ResultStatus
    text: str | None = None
    previous: str | None = None
    caption: Caption | None = None
    error: str | None = None
    attempts: int = 0
    created_at: str = ""

    def proposal(self, mode: CaptionMode | str, prompt: str | None = None) -> Proposal | None:
        """The proposal for this result (``None`` unless it was captioned); ``prompt`` is
        recorded with it (the run's prompt; a provider's built-in one is not repeated in
        every proposal)."""
        if self.status is not ResultStatus.CAPTIONED or self.text is None or self.caption is None:
            return None
        return Proposal(
            path=self.name,
            text=self.text,
            provider=self.caption.provider,
            model=self.caption.model,
            created_at=self.created_at or now_iso(),
            mode=str(CaptionMode(mode)),
            previous=self.previous,
            prompt=prompt,
        )


@dataclass(frozen=True)
class CaptionProgress:
    """A snapshot of a run, sent after every image.

    Attributes:
        state: see :class:`RunState`.
        done: images finished (captioned, unchanged or failed) of ``total``.
        total: images to caption (images skipped by ``fill`` are not counted).
        captioned, failed: counts so far.
        skipped: images ``fill`` left alone.
        elapsed_s: seconds since the run started.
        images_per_s: finished images per second (``None`` before the first one).
        eta_s: seconds left at that pace (``None`` when unknown).
        result: the image that just finished, if any.
        message: a line for a status bar ("Loading the model...", the fatal error...).
    """

    state: RunState
    done: int
    total: int
    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    images_per_s: float | None = None
    eta_s: float | None = None
    result: ImageResult | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class RunReport:
    """The end of a run.

    Attributes:
        state: ``finished``, ``cancelled`` or ``failed`` (a fatal error stopped it).
        provider, model: who captioned.
        results: one per image considered, in dataset order.
        elapsed_s: seconds the run took.
        error: why the run stopped early (``None`` when it did not).
        sink_report: what the sink did (captions written, conflicts), when it says.
    """

    state: RunState
    provider: str
    model: str
    results: tuple[ImageResult, ...]
    elapsed_s: float
    error: str | None = None
    sink_report: AcceptReport | None = None

    def with_status(self, *statuses: ResultStatus) -> list[ImageResult]:
        return [r for r in self.results if r.status in statuses]

    @property
    def captioned(self) -> list[ImageResult]:
        return self.with_status(ResultStatus.CAPTIONED)

    @property
    def failed(self) -> list[ImageResult]:
        return self.with_status(ResultStatus.FAILED)

    @property
    def skipped(self) -> list[ImageResult]:
        return self.with_status(ResultStatus.SKIPPED)

    @property
    def cancelled(self) -> list[ImageResult]:
        return self.with_status(ResultStatus.CANCELLED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "provider": self.provider,
            "model": self.model,
            "elapsed_s": round(self.elapsed_s, 3),
            "error": self.error,
            "counts": {s.value: len(self.with_status(s)) for s in ResultStatus},
            "results": [
                {
                    "image": r.name,
                    "status": str(r.status),
                    "caption": r.text,
                    "previous": r.previous,
                    "error": r.error,
                    "attempts": r.attempts,
                }
                for r in self.results
            ],
            "written": sorted(self.sink_report.accepted) if self.sink_report else [],
            "conflicts": list(self.sink_report.conflicts) if self.sink_report else [],
        }


# ---- images -------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """Decode ``path`` for a captioner: upright, 8-bit RGB (alpha on white), its longest
    side at most ``max_side``. JPEGs are decoded at a reduced scale when that is enough.

    Raises:
        ImageUnreadable: missing, corrupt, truncated, too large to decode safely.
    """
    source = Path(path)
    try:
        with Image.open(source) as img:
            if max_side and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
            rgb = to_rgb(img)
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise ImageUnreadable(f"{source.name} no longer exists.") from None
    except Image.DecompressionBombError:
        raise ImageUnreadable(f"{source.name} is too large to decode safely.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageUnreadable(f"{source.name} cannot be decoded ({exc}).") from None
    rgb = undo_orientation(rgb, orientation if isinstance(orientation, int) else 1)
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


# ---- sinks --------------------------------------------------------------------------------


class ResultSink(Protocol):
    """Where captioned results go. ``add`` is called on the event loop, one at a time."""

    async def add(self, result: ImageResult, proposal: Proposal) -> None: ...

    async def close(self) -> AcceptReport | None:
        """Flush everything; the run awaits it before it ends (also when cancelled)."""
        ...


class StoreSink:
    """Results into a :class:`~lora_studio.core.proposals.ProposalStore`: as proposals
    (default) or, with ``write=True``, written to the caption files at once with their
    provenance (a caption changed since it was read is kept as a proposal instead).

    Saves are batched (``flush_every`` results or ``flush_interval_s`` seconds) and run
    in a worker thread; :meth:`close` saves the rest.
    """

    def __init__(
        self,
        store: ProposalStore,
        *,
        write: bool = False,
        flush_every: int = 50,
        flush_interval_s: float = 5.0,
    ) -> None:
        self.store = store
        self.write = write
        self.flush_every = max(1, flush_every)
        self.flush_interval_s = flush_interval_s
        self.report = AcceptReport()
        self.stored = 0
        self._pending: list[Proposal] = []
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def add(self, result: ImageResult, proposal: Proposal) -> None:
        self._pending.append(proposal)
        due = time.monotonic() - self._last >= self.flush_interval_s
        if len(self._pending) >= self.flush_every or due:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            self._last = time.monotonic()
            if not batch:
                return
            if self.write:
                report = await asyncio.to_thread(self.store.apply, batch)
                self.report.accepted.update(report.accepted)
                self.report.conflicts.extend(report.conflicts)
                self.report.missing.extend(report.missing)
                self.report.failed.update(report.failed)
            else:
                await asyncio.to_thread(self.store.add, batch)
            self.stored += len(batch)

    async def close(self) -> AcceptReport | None:
        await self.flush()
        return self.report


# ---- the run ------------------------------------------------------------------------------


class _Fatal(Exception):
    def __init__(self, error: CaptionerError) -> None:
        super().__init__(str(error))
        self.error = error


class _Failed(Exception):
    def __init__(self, error: CaptionerError, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


ProgressCallback = Callable[[CaptionProgress], None]


class CaptionRun:
    """One batch run (see the module docstring). Run it once.

    Args:
        provider: the captioner; the run does not close it.
        dataset: the images (and where their captions are read from).
        options: see :class:`RunOptions`.
        paths: caption only these images (paths or names relative to the dataset);
            ``None``: every image.
        sink: where results go (``None``: nowhere, read them from :meth:`report`).
        on_progress: called on the event loop with every :class:`CaptionProgress`;
            it must return quickly. An exception it raises ends the run (it is a bug).
    """

    def __init__(
        self,
        provider: CaptionProvider,
        dataset: Dataset,
        options: RunOptions | None = None,
        *,
        paths: Iterable[str | os.PathLike[str]] | None = None,
        sink: ResultSink | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.provider = provider
        self.dataset = dataset
        self.options = options or RunOptions()
        self.mode = CaptionMode(self.options.mode)
        self.sink = sink
        self.on_progress = on_progress
        self._items = self._select(paths)
        self._state = RunState.PENDING
        self._results: dict[str, ImageResult] = {}
        self._todo: list[ImageItem] = []
        self._next = 0
        self._workers: list[asyncio.Task[None]] = []
        self._listeners: list[asyncio.Queue[CaptionProgress]] = []
        self._stop_requested = False
        self._error: str | None = None
        self._sink_report: AcceptReport | None = None
        self._start = 0.0
        self._run_start = 0.0
        self._elapsed = 0.0
        self._unreachable_in_a_row = 0
        self._total = 0
        self._task: asyncio.Task[RunReport] | None = None

    # ---- public ------------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self._state

    def stop(self) -> None:
        """Stop soon: no new image starts, the ones in flight are cancelled, everything
        finished so far is kept. :meth:`run` then returns a ``cancelled`` report."""
        if self._state.is_final or self._stop_requested:
            return
        self._stop_requested = True
        if self._state is not RunState.PENDING:
            self._state = RunState.STOPPING
            self._emit(message="Stopping\u2026")
        for worker in self._workers:
            worker.cancel()

    async def run(self) -> RunReport:
        """Caption every selected image; returns when done, stopped or failed.

        Raises:
            asyncio.CancelledError: the task running it was cancelled (the sink is
                flushed first, and :meth:`report` holds what was done).
        """
        if self._task is not None or self._state is not RunState.PENDING:
            raise RuntimeError("A CaptionRun runs once; make a new one.")
        self._task = asyncio.current_task()  # type: ignore[assignment]
        self._start = time.monotonic()
        cancelled = False
        try:
            await self._run()
        except asyncio.CancelledError:
            cancelled = True
            raise
        except BaseException as exc:
            self._error = self._error or f"Captioning failed: {one_line(str(exc), 200)}"
            raise
        finally:
            await self._finish(cancelled)
        return self.report()

    async def stream(self) -> AsyncIterator[CaptionProgress]:
        """Run (unless already running) and yield every :class:`CaptionProgress`, the
        last one final.

        Closing the iterator early stops the run; ``break`` alone does not close an async
        generator at once, so wrap it: ``async with contextlib.aclosing(run.stream()) as
        events: async for progress in events: ...``.
        """
        queue: asyncio.Queue[CaptionProgress] = asyncio.Queue()
        self._listeners.append(queue)
        task = self._task if self._task is not None else asyncio.ensure_future(self.run())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _pending = await asyncio.wait(
                    {getter, task}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    progress = getter.result()
                    yield progress
                    if progress.state.is_final:
                        break
                else:
                    getter.cancel()
                    while not queue.empty():
                        progress = queue.get_nowait()
                        yield progress
                    break
            if task.done() and not task.cancelled():
                task.result()  # an unexpected error in the run surfaces here
        finally:
            self._listeners.remove(queue)
            if not task.done():
                self.stop()
                await asyncio.gather(task, return_exceptions=True)

    def report(self) -> RunReport:
        """What was done so far (final once the run ended)."""
        order = {self.dataset.relative_name(item): i for i, item in enumerate(self._items)}
        results = sorted(self._results.values(), key=lambda r: order.get(r.name, len(order)))
        state = self._state if self._state.is_final else RunState.RUNNING
        name = getattr(self.provider, "name", type(self.provider).__name__)
        return RunReport(
            state=state,
            provider=str(name),
            model=str(getattr(self.provider, "model", "")),
            results=tuple(results),
            elapsed_s=self._elapsed or (time.monotonic() - self._start if self._start else 0.0),
            error=self._error,
            sink_report=self._sink_report,
        )

    def progress(self, result: ImageResult | None = None, message: str = "") -> CaptionProgress:
        """The current :class:`CaptionProgress`."""
        counts = {status: 0 for status in ResultStatus}
        for r in self._results.values():
            counts[r.status] += 1
        done = (
            counts[ResultStatus.CAPTIONED]
            + counts[ResultStatus.UNCHANGED]
            + counts[ResultStatus.FAILED]
        )
        now = time.monotonic()
        elapsed = now - self._start if self._start else 0.0
        running = now - self._run_start if self._run_start else 0.0
        rate = done / running if done and running > 0 else None
        remaining = max(0, self._total - done)
        eta = remaining / rate if rate else (0.0 if not remaining else None)
        return CaptionProgress(
            state=self._state,
            done=done,
            total=self._total,
            captioned=counts[ResultStatus.CAPTIONED] + counts[ResultStatus.UNCHANGED],
            failed=counts[ResultStatus.FAILED],
            skipped=counts[ResultStatus.SKIPPED],
            elapsed_s=elapsed,
            images_per_s=rate,
            eta_s=eta,
            result=result,
            message=message,
        )

    # ---- the work ----------------------------------------------------------------------

    def _select(self, paths: Iterable[str | os.PathLike[str]] | None) -> list[ImageItem]:
        if paths is None:
            return list(self.dataset.images)
        store = ProposalStore(self.dataset)  # only for its path -> key rule
        wanted = {store.key(p) for p in paths}
        return [item for item in self.dataset.images if self.dataset.relative_name(item) in wanted]

    async def _run(self) -> None:
        for item in self._items:
            reason = self._skip_reason(item.caption if item.has_caption else None)
            if reason:
                self._record(self._result(item, ResultStatus.SKIPPED, error=reason))
            else:
                self._todo.append(item)
        self._total = len(self._todo)
        if self._stop_requested:
            return
        load = getattr(self.provider, "load", None)
        if self._todo and callable(load):
            self._state = RunState.LOADING
            self._emit(message=f"Loading {getattr(self.provider, 'model', 'the model')}\u2026")
            try:
                await load()
            except CaptionerError as exc:
                self._error = str(exc)
                self._state = RunState.FAILED
                return
        if self._stop_requested:
            return
        self._state = RunState.RUNNING
        self._run_start = time.monotonic()
        self._emit()
        concurrency = self.options.concurrency or getattr(self.provider, "default_concurrency", 1)
        count = max(1, min(int(concurrency), max(1, len(self._todo))))
        self._workers = [asyncio.ensure_future(self._worker()) for _ in range(count)]
        try:
            await asyncio.gather(*self._workers, return_exceptions=True)
        except asyncio.CancelledError:
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            raise
        for worker in self._workers:
            if not worker.cancelled() and worker.exception() is not None:
                raise worker.exception()  # type: ignore[misc]  # a bug: surface it

    def _take(self) -> list[ImageItem]:
        size = 1
        if callable(getattr(self.provider, "caption_batch", None)):
            size = self.options.batch_size or getattr(self.provider, "batch_size", 1) or 1
        batch = self._todo[self._next : self._next + max(1, int(size))]
        self._next += len(batch)
        return batch

    async def _worker(self) -> None:
        while not self._stop_requested and self._error is None:
            batch = self._take()
            if not batch:
                return
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                for item in batch:
                    name = self.dataset.relative_name(item)
                    if name not in self._results:
                        self._record(
                            self._result(item, ResultStatus.CANCELLED, error=self._stop_reason())
                        )
                raise

    async def _process(self, batch: list[ImageItem]) -> None:
        ready: list[tuple[ImageItem, str | None, Image.Image]] = []
        for item in batch:
            try:
                previous = await asyncio.to_thread(read_item_caption, item)
            except DatasetError as exc:
                await self._finish_image(self._result(item, ResultStatus.FAILED, error=str(exc)))
                continue
            reason = self._skip_reason(previous)
            if reason:
                self._total -= 1
                await self._finish_image(
                    self._result(item, ResultStatus.SKIPPED, previous=previous, error=reason)
                )
                continue
            try:
                image = await self._load_input(item, previous)
            except ImageUnreadable as exc:
                await self._finish_image(
                    self._result(item, ResultStatus.FAILED, previous=previous, error=str(exc))
                )
                continue
            ready.append((item, previous, image))
        if not ready:
            return
        images = [image for _, _, image in ready]
        try:
            captions, attempts = await self._with_retries(images)
        except _Fatal as fatal:
            self._fail_run(fatal.error)
            for item, previous, _ in ready:
                await self._finish_image(
                    self._result(
                        item,
                        ResultStatus.FAILED,
                        previous=previous,
                        error=str(fatal.error),
                        attempts=1,
                    )
                )
            return
        except _Failed as failed:
            unreachable = isinstance(failed.error, ProviderUnavailable)
            for item, previous, _ in ready:
                await self._finish_image(
                    self._result(
                        item,
                        ResultStatus.FAILED,
                        previous=previous,
                        error=str(failed.error),
                        attempts=failed.attempts,
                    )
                )
                if unreachable:
                    self._unreachable_in_a_row += 1
            if unreachable and self._unreachable_in_a_row >= max(1, self.options.give_up_after):
                self._fail_run(
                    CaptionerError(
                        f"Stopped after {self._unreachable_in_a_row} images in a row could not "
                        f"reach the captioner: {failed.error}"
                    )
                )
            return
        self._unreachable_in_a_row = 0
        for (item, previous, _), caption in zip(ready, captions, strict=True):
            await self._finish_image(self._captioned(item, previous, caption, attempts))

    # ---- what subclasses change (see lora_studio.captioning.enhance) ----------------------

    def _skip_reason(self, previous: str | None) -> str | None:
        """Why an image with caption ``previous`` is left alone (``None``: caption it)."""
        if self.mode is CaptionMode.FILL and (previous or "").strip():
            return "has a caption"
        return None

    async def _load_input(self, item: ImageItem, previous: str | None) -> Any:
        """What the captioner is given for ``item``: the decoded, downscaled image.

        Raises:
            ImageUnreadable: the image cannot be read.
        """
        return await asyncio.to_thread(load_image, item.path, self._max_side())

    def _max_side(self) -> int | None:
        side = getattr(self.provider, "max_side", None)
        return int(side) if side else None

    async def _with_retries(self, images: Sequence[Any]) -> tuple[list[Caption], int]:
        opts = self.options
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(images), attempt
            except CaptionerError as exc:
                error = exc
            if error.fatal:
                raise _Fatal(error)
            if not error.retryable or attempt > max(0, opts.retries):
                raise _Failed(error, attempt)
            if error.retry_after is not None:
                delay = min(error.retry_after, opts.max_retry_after_s)
            else:
                delay = min(opts.max_backoff_s, opts.backoff_s * 2 ** (attempt - 1))
            log.info("Retrying in %.2f s after: %s", delay, error)
            await asyncio.sleep(max(0.0, delay))

    async def _ask(self, images: Sequence[Any]) -> list[Caption]:
        """The captioner's captions for ``images`` (what :meth:`_load_input` made)."""
        prompt = self.options.prompt or None
        batch_call = getattr(self.provider, "caption_batch", None)
        if callable(batch_call) and len(images) > 1:
            return list(await batch_call(images, prompt))
        return [await self.provider.caption(image, prompt) for image in images]

    async def _attempt(self, images: Sequence[Any]) -> list[Caption]:
        timeout = self.options.timeout_s
        try:
            async with asyncio.timeout(timeout if timeout and timeout > 0 else None):
                captions = await self._ask(images)
        except TimeoutError:
            raise CaptionTimeout(
                f"{getattr(self.provider, 'name', 'The captioner')} gave no caption within "
                f"{timeout:g} s."
            ) from None
        except CaptionerError:
            raise
        except LoraStudioError as exc:
            raise CaptionerError(str(exc)) from None
        except Exception as exc:
            # A provider bug or a library error mid-generation: this image fails, the
            # run goes on; the traceback goes to the log.
            log.exception("The captioner failed")
            raise CaptionerError(f"The captioner failed: {one_line(str(exc), 160)}") from None
        if len(captions) != len(images):
            raise CaptionerError(
                f"The captioner returned {len(captions)} captions for {len(images)} images."
            )
        return captions

    def _captioned(
        self, item: ImageItem, previous: str | None, caption: Caption, attempts: int
    ) -> ImageResult:
        text = apply_mode(previous, caption.text, self.mode, self.options.postprocess)
        if not text.strip():
            return self._result(
                item,
                ResultStatus.FAILED,
                previous=previous,
                caption=caption,
                error="The captioner returned an empty caption.",
                attempts=attempts,
            )
        same = (previous or "").strip() == text.strip()
        return self._result(
            item,
            ResultStatus.UNCHANGED if same else ResultStatus.CAPTIONED,
            text=text,
            previous=previous,
            caption=caption,
            attempts=attempts,
            created_at=now_iso(),
        )

    def _result(self, item: ImageItem, status: ResultStatus, **fields: Any) -> ImageResult:
        return ImageResult(item.path, self.dataset.relative_name(item), status, **fields)

    def _record(self, result: ImageResult) -> None:
        self._results[result.name] = result

    async def _finish_image(self, result: ImageResult) -> None:
        self._record(result)
        if self.sink is not None and result.status is ResultStatus.CAPTIONED:
            proposal = result.proposal(self.mode, self.options.prompt or None)
            if proposal is not None:
                # Shielded: a stop must not lose a caption halfway into the sink.
                await asyncio.shield(self.sink.add(result, proposal))
        self._emit(result)

    def _fail_run(self, error: CaptionerError) -> None:
        if self._error is None:
            self._error = str(error)
            for worker in self._workers:
                if worker is not asyncio.current_task():
                    worker.cancel()

    def _stop_reason(self) -> str:
        return f"not captioned: {self._error}" if self._error else "stopped before it was captioned"

    def _emit(self, result: ImageResult | None = None, message: str = "") -> None:
        progress = self.progress(result, message)
        for queue in self._listeners:
            queue.put_nowait(progress)
        if self.on_progress is not None:
            self.on_progress(progress)

    async def _finish(self, cancelled: bool) -> None:
        for item in self._todo[self._next :]:
            self._record(self._result(item, ResultStatus.CANCELLED, error=self._stop_reason()))
        if self.sink is not None:
            try:
                self._sink_report = await self.sink.close()
            except LoraStudioError as exc:
                self._error = self._error or str(exc)
                self._state = RunState.FAILED
        if self._error is not None:
            self._state = RunState.FAILED
        elif cancelled or self._stop_requested:
            self._state = RunState.CANCELLED
        else:
            self._state = RunState.FINISHED
        self._elapsed = time.monotonic() - self._start
        try:
            self._emit(message=self._error or "")
        except Exception:  # the callback failed; the run's own outcome must still stand
            log.exception("The progress callback failed on the final progress")
