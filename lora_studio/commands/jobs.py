"""``lora-studio jobs list | show ID | cancel ID``: the job history from the command line.

It reads the same SQLite history as the window (under the user data dir, which honours
``XDG_DATA_HOME``; ``LORA_STUDIO_HOME`` moves it). A job id may be shortened to any
unique prefix. A local run whose process is gone (killed, crashed) is shown, and recorded,
as interrupted, with the checkpoint it can resume from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from lora_studio.core.errors import BackendError
from lora_studio.core.jobs import BackendType, Job, JobStatus, JobStore
from lora_studio.core.paths import job_db_path


def register_top_level(subparsers: Any) -> None:
    jobs = subparsers.add_parser("jobs", help="list, show and cancel training jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    listing = jsub.add_parser("list", help="recent jobs, newest first")
    listing.add_argument("--limit", type=int, default=30)
    listing.add_argument("--json", action="store_true")
    show = jsub.add_parser(
        "show", help="one job: spec, status history, log tail, losses, learning rates"
    )
    show.add_argument("id", help="job id (or a unique prefix)")
    show.add_argument("--json", action="store_true")
    show.add_argument("--log", type=int, default=20, metavar="N", help="log lines to show")
    cancel = jsub.add_parser("cancel", help="cancel a queued job, or stop a remote run")
    cancel.add_argument("id", help="job id (or a unique prefix)")
    jobs.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.jobqueue import reconcile_local_jobs

    store = JobStore(job_db_path())
    try:
        reconcile_local_jobs(store)  # a run whose process died shows as interrupted
        if args.jobs_command == "list":
            return _list(store, args)
        job = _find(store, args.id)
        if args.jobs_command == "show":
            return _show(store, job, args)
        return asyncio.run(_cancel(store, job))
    finally:
        store.close()


def _find(store: JobStore, ident: str) -> Job:
    job = store.get(ident)
    if job is not None:
        return job
    matches = store.find(ident)
    if not matches:
        raise BackendError(f"No job {ident} in the history ({job_db_path()}).")
    if len(matches) > 1:
        ids = ", ".join(j.id for j in matches[:5])
        raise BackendError(f"{ident} matches {len(matches)} jobs ({ids}); give more of the id.")
    return matches[0]


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"


def _list(store: JobStore, args: argparse.Namespace) -> int:
    jobs = store.list(limit=args.limit)
    if args.json:
        print(json.dumps([_summary(j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print(f"No jobs yet ({job_db_path()}).")
        return 0
    print(f"{'id':<25} {'status':<11} {'backend':<9} {'created':<16} name")
    for job in jobs:
        print(
            f"{job.id:<25} {job.status.value:<11} {job.backend.value:<9} "
            f"{_when(job.created_at):<16} {job.name}"
        )
    return 0


def _summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status.value,
        "backend": job.backend.value,
        "base_model": job.base_model,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "output_path": job.output_path,
        "error": job.error,
        "remote_id": job.remote_id,
        "estimated_cost": job.estimated_cost,
        "cost": job.cost,
    }


def _show(store: JobStore, job: Job, args: argparse.Namespace) -> int:
    events = store.events(job.id)
    losses = store.losses(job.id)
    rates = store.learning_rates(job.id)
    logs = store.logs(job.id, tail=args.log)
    if args.json:
        data = _summary(job)
        data["spec"] = job.spec.to_dict() if job.spec else None
        data["events"] = [
            {"at": e.at, "status": e.status.value, "message": e.message} for e in events
        ]
        data["losses"] = losses
        data["learning_rates"] = rates
        data["log_tail"] = logs
        print(json.dumps(data, indent=2))
        return 0
    print(f"{job.name}  ({job.id})")
    print(f"  status:      {job.status.value}" + (f" - {job.error}" if job.error else ""))
    print(f"  backend:     {job.backend.value}" + (f" ({job.remote_id})" if job.remote_id else ""))
    print(f"  base model:  {job.base_model}")
    print(f"  dataset:     {job.dataset_dir}")
    if job.output_path:
        print(f"  output:      {job.output_path}")
    if job.estimated_cost is not None or job.cost is not None:
        estimated = f"${job.estimated_cost:.2f}" if job.estimated_cost is not None else "-"
        actual = f"${job.cost:.2f}" if job.cost is not None else "-"
        print(f"  cost:        estimated {estimated}, actual {actual}")
    for event in events:
        suffix = f"  {event.message}" if event.message else ""
        print(f"  {_when(event.at)}  {event.status.value}{suffix}")
    if losses:
        first, last = losses[0], losses[-1]
        print(
            f"  loss:        {first[1]:.4f} at step {first[0]} -> {last[1]:.4f} at step "
            f"{last[0]} ({len(losses)} points)"
        )
    if rates:
        first, last = rates[0], rates[-1]
        print(
            f"  lr:          {first[1]:.3g} at step {first[0]} -> {last[1]:.3g} at step {last[0]}"
        )
    for line in logs:
        print(f"  | {line}")
    return 0


async def _cancel(store: JobStore, job: Job) -> int:
    if job.status.is_finished:
        print(f"{job.name} has already {job.status.value}.")
        return 0
    if job.status is JobStatus.QUEUED:
        job.status, job.finished_at, job.message = JobStatus.CANCELLED, time.time(), "Cancelled"
        store.save(job)
        print(f"Cancelled {job.name} (it had not started).")
        return 0
    if job.backend is BackendType.LOCAL:
        raise BackendError(
            f"{job.name} trains in another LoRA Studio process on this machine; stop it "
            f"there (its Cancel button, or Ctrl+C in its terminal)."
        )
    if job.spec is None or not job.remote_id:
        raise BackendError(f"{job.name} has no remote run id to cancel.")
    from lora_studio.backends.factory import backend_for_spec

    backend = backend_for_spec(job.spec)
    await backend.reattach(job)
    await backend.cancel(job)
    print(f"Asked {job.backend.value} to stop {job.name} ({job.remote_id}).")
    return 0
