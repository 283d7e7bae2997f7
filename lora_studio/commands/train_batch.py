"""``lora-studio train DIR --presets A,B --base-models M1,M2``: one dataset, several runs.

The seed's multi-model orchestration from the command line: one job per preset × base
model, queued together as a batch in the same :class:`~lora_studio.jobqueue.JobQueue` and
history as the window's (local runs one at a time, remote runs side by side). Every other
``train`` flag applies to each run. Progress is one line per job when it changes state or
moves on (at most every few seconds), and a table of the outcomes at the end.

Exit codes: 0 every run succeeded; 1 one or more failed (each with its reason); 130 Ctrl+C
(queued runs are cancelled, running ones are asked to stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from lora_studio.core.errors import ConfigError
from lora_studio.core.jobs import Job, JobSpec, JobStatus, JobStore, Progress
from lora_studio.core.paths import job_db_path

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130
#: seconds between two progress lines of the same job
LINE_EVERY_S = 5.0


@dataclass(frozen=True)
class Variation:
    """One run of the batch: a preset and/or a base model, and its label."""

    preset: str | None
    base_model: str
    label: str


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def variations(presets: list[str], base_models: list[str], default_model: str) -> list[Variation]:
    """Every preset with every base model (in that order); labels name what differs."""
    models = base_models or [default_model]
    chosen: list[str | None] = list(presets) or [None]
    out = []
    for model in models:
        for preset in chosen:
            parts = [preset] if preset and len(chosen) > 1 else []
            if len(models) > 1:
                parts.append(_model_label(model))
            out.append(Variation(preset, model, "-".join(parts) or "run"))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise ConfigError("The batch names the same preset or base model twice.")
    return out


def _model_label(ref: str) -> str:
    tail = ref.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    tail = tail.split(":", 1)[-1]
    for suffix in (".safetensors", ".ckpt"):
        tail = tail.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tail) or "model"


def run_batch(specs: list[tuple[str, JobSpec]], make_backend: Callable[[JobSpec], object]) -> int:
    """Queue ``specs`` (label, spec) as one batch and follow them to the end."""
    return asyncio.run(_run(specs, make_backend))


async def _run(specs: list[tuple[str, JobSpec]], make_backend: Callable[[JobSpec], object]) -> int:
    from lora_studio.jobqueue import JobQueue

    store = JobStore(job_db_path())
    queue = JobQueue(store, make_backend)  # type: ignore[arg-type]
    batch_id = uuid.uuid4().hex[:8]
    jobs = [queue.enqueue(spec, batch_id=batch_id) for _, spec in specs]
    labels = {job.id: label for job, (label, _) in zip(jobs, specs, strict=True)}
    width = max(len(label) for label in labels.values())
    last_line: dict[str, tuple[JobStatus, float]] = {}

    def on_update(job: Job, progress: Progress) -> None:
        if job.id not in labels:
            return
        now = time.monotonic()
        previous = last_line.get(job.id)
        changed = previous is None or previous[0] is not progress.status
        if not changed and (now - previous[1] < LINE_EVERY_S) and not progress.is_finished():
            return
        last_line[job.id] = (progress.status, now)
        text = f"[{labels[job.id]:<{width}}] {progress.status.label}"
        if progress.total_steps:
            text += f"  step {progress.step}/{progress.total_steps}"
        if progress.loss is not None:
            text += f"  loss {progress.loss:.4f}"
        if progress.error:
            text += f"  {progress.error}"
        print(text, file=sys.stderr, flush=True)

    remove = queue.add_listener(on_update)
    print(
        f"Batch {batch_id}: {len(jobs)} run(s) queued ("
        + ", ".join(labels[j.id] for j in jobs)
        + "); history: lora-studio jobs list",
        file=sys.stderr,
    )
    interrupted = False
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        print("\nStopping the batch...", file=sys.stderr)
        for job in jobs:
            loop.create_task(_cancel_quietly(queue, job.id))

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await queue.start()
        finals = [await queue.wait(job.id) for job in jobs]
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        remove()
        await queue.stop()
        store.close()
    for final in finals:
        where = final.output_path or final.error or ""
        print(f"{labels[final.id]:<{width}}  {final.status.label:<10}  {where}")
    if interrupted:
        return EXIT_CANCELLED
    return EXIT_OK if all(f.status is JobStatus.SUCCEEDED for f in finals) else EXIT_ERROR


async def _cancel_quietly(queue: object, job_id: str) -> None:
    from lora_studio.core.errors import LoraStudioError

    with contextlib.suppress(LoraStudioError):
        await queue.cancel(job_id)  # type: ignore[attr-defined]
