from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import pytest

from lora_studio.core import jobs as jobs_module
from lora_studio.core.jobs import (
    SCHEMA_VERSION,
    BackendType,
    Job,
    JobStatus,
    JobStore,
    JobStoreError,
    Progress,
    ProgressRecorder,
    thin_history,
)


def _job(name: str = "demo") -> Job:
    return Job(
        id=Job.new_id(),
        backend=BackendType.LOCAL,
        name=name,
        base_model="builtin:tiny-sd15",
        output_dir="/tmp/out",
        config={"rank": 8},
    )


def test_job_store_round_trip_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    job = _job()
    store.save(job)
    job.status = JobStatus.SUCCEEDED
    job.output_path = "/tmp/out/demo.safetensors"
    store.save(job)
    store.close()
    again = JobStore(db)
    loaded = again.get(job.id)
    assert loaded is not None
    assert loaded.status is JobStatus.SUCCEEDED
    assert loaded.config == {"rank": 8}
    assert loaded.output_path == "/tmp/out/demo.safetensors"
    assert again.get("missing") is None


def test_job_store_lists_newest_first_and_is_thread_safe() -> None:
    store = JobStore()
    jobs = [_job(f"j{i}") for i in range(20)]
    for offset, job in enumerate(jobs):
        job.created_at += offset
    threads = [threading.Thread(target=store.save, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = store.list()
    assert [j.name for j in listed] == [f"j{i}" for i in reversed(range(20))]


def test_progress_fraction_and_finish() -> None:
    assert Progress().fraction == 0.0
    p = Progress(status=JobStatus.RUNNING, step=15, total_steps=60)
    assert p.progress == 25.0 and not p.is_finished()
    done = p.evolve(status=JobStatus.SUCCEEDED)
    assert done.fraction == 1.0 and done.is_finished()
    assert JobStatus.CANCELLED.is_finished and not JobStatus.SAVING.is_finished


def test_old_history_files_are_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(db) as conn:  # a version-1 file, as the first release wrote it
        conn.executescript(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, backend TEXT NOT NULL, name TEXT NOT NULL,"
            " base_model TEXT NOT NULL, output_dir TEXT NOT NULL, dataset_dir TEXT NOT NULL"
            " DEFAULT '', status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT"
            " NULL, config TEXT NOT NULL DEFAULT '{}', output_path TEXT, error TEXT,"
            " remote_id TEXT);"
            "INSERT INTO jobs VALUES ('old1', 'local', 'old', 'builtin:tiny-sd15', '/o', '',"
            " 'succeeded', 1.0, 2.0, '{\"rank\": 8}', '/o/old.safetensors', NULL, NULL);"
        )
    store = JobStore(db)
    old = store.get("old1")
    assert old is not None and old.status is JobStatus.SUCCEEDED and old.config == {"rank": 8}
    assert old.spec is None and old.cost is None and old.position == 0
    assert old.owner is None  # made before owners were recorded: no live process claims it
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


# A history as version 3 wrote it: every table, but no learning rate beside the losses.
_V3_HISTORY = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, backend TEXT NOT NULL, name TEXT NOT NULL,
    base_model TEXT NOT NULL, output_dir TEXT NOT NULL, dataset_dir TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    config TEXT NOT NULL DEFAULT '{}', output_path TEXT, error TEXT, remote_id TEXT,
    spec TEXT, started_at REAL, finished_at REAL, estimated_cost REAL, cost REAL,
    position INTEGER NOT NULL DEFAULT 0, batch_id TEXT, message TEXT NOT NULL DEFAULT '',
    owner TEXT
);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, at REAL NOT NULL,
    status TEXT NOT NULL, message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX job_events_job ON job_events(job_id, at);
CREATE TABLE job_logs (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    line TEXT NOT NULL, PRIMARY KEY (job_id, seq)
);
CREATE TABLE job_losses (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
    loss REAL NOT NULL, PRIMARY KEY (job_id, step)
);
INSERT INTO jobs (id, backend, name, base_model, output_dir, status, created_at, updated_at,
    output_path, started_at, finished_at)
    VALUES ('v3run', 'local', 'v3 run', 'builtin:tiny-sd15', '/o', 'succeeded', 1.0, 9.0,
    '/o/v3.safetensors', 2.0, 9.0);
INSERT INTO job_losses VALUES ('v3run', 1, 0.5), ('v3run', 2, 0.25);
PRAGMA user_version = 3;
"""


def test_a_version_3_history_keeps_its_losses_and_records_learning_rates(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(_V3_HISTORY)
    store = JobStore(db)
    old = store.get("v3run")
    assert old is not None and old.status is JobStatus.SUCCEEDED and old.finished_at == 9.0
    assert store.losses("v3run") == [(1, 0.5), (2, 0.25)]
    assert store.learning_rates("v3run") == []  # recorded before the rates were kept
    store.record_losses("v3run", [(3, 0.2, 1e-4)])
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        # Version 3 still writes into the upgraded file: its points come without a rate.
        conn.execute(
            "INSERT OR REPLACE INTO job_losses (job_id, step, loss) VALUES ('v3run', 4, 0.1)"
        )
    again = JobStore(db)
    assert again.losses("v3run") == [(1, 0.5), (2, 0.25), (3, 0.2), (4, 0.1)]
    assert again.learning_rates("v3run") == [(3, 1e-4)]
    again.close()


def test_an_upgrade_to_version_4_that_fails_leaves_the_version_3_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(_V3_HISTORY)
    # The step fails after its first statement (as a full disk would halfway through).
    failing = jobs_module._MIGRATIONS[4] + "INSERT INTO no_such_table VALUES (1);\n"
    monkeypatch.setitem(jobs_module._MIGRATIONS, 4, failing)
    with pytest.raises(JobStoreError, match="could not be opened"):
        JobStore(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = [row[1] for row in conn.execute("PRAGMA table_info(job_losses)")]
        assert columns == ["job_id", "step", "loss"]  # the column went with the failed step
    monkeypatch.undo()
    store = JobStore(db)  # the next open runs the whole step
    assert store.losses("v3run") == [(1, 0.5), (2, 0.25)] and store.learning_rates("v3run") == []
    store.close()


def test_the_history_keeps_each_steps_learning_rate_beside_its_loss(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    job = _job()
    store.save(job)
    recorder = ProgressRecorder(store)
    running = JobStatus.RUNNING
    for progress in [
        Progress(status=running, step=1, total_steps=5, loss=0.5, learning_rate=1e-4),
        Progress(status=running, step=2, total_steps=5, loss=0.4, learning_rate=5e-5),
        Progress(status=running, step=2, total_steps=5, loss=0.4, learning_rate=5e-5),
        Progress(status=running, step=3, total_steps=5, loss=0.3),  # the backend did not say
        Progress(status=running, step=4, total_steps=5, loss=0.2, learning_rate=math.nan),
        Progress(status=JobStatus.SUCCEEDED, step=5, total_steps=5, loss=0.1, learning_rate=0.0),
    ]:
        recorder.record(job, progress)
    store.close()

    again = JobStore(db)  # as the app finds it after a restart
    assert again.losses(job.id) == [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2), (5, 0.1)]
    assert again.learning_rates(job.id) == [(1, 1e-4), (2, 5e-5), (5, 0.0)]
    # Points recorded directly, with or without their rate; a step again replaces its point.
    again.record_losses(job.id, [(5, 0.15, 2e-5), (6, 0.05), (7, 0.04, None)])
    assert again.losses(job.id)[-3:] == [(5, 0.15), (6, 0.05), (7, 0.04)]
    assert again.learning_rates(job.id) == [(1, 1e-4), (2, 5e-5), (5, 2e-5)]
    again.delete(job.id)
    assert again.losses(job.id) == [] and again.learning_rates(job.id) == []
    again.close()


def test_a_run_whose_loss_became_nan_is_recorded_with_its_end(tmp_path: Path) -> None:
    """A backend that reports a loss of NaN or infinity (a diverged run, as ComfyUI's log
    says "loss=nan"): the history keeps the run's other points and, above all, its end."""
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    job = _job("diverged")
    store.save(job)
    recorder = ProgressRecorder(store)
    running = JobStatus.RUNNING
    for progress in [
        Progress(status=running, step=1, total_steps=4, loss=0.5, log_tail=("step 1",)),
        Progress(status=running, step=2, total_steps=4, loss=math.inf, log_tail=("step 2",)),
        Progress(status=running, step=3, total_steps=4, loss=math.nan, log_tail=("step 3",)),
        Progress(
            status=JobStatus.FAILED,
            step=3,
            total_steps=4,
            loss=math.nan,
            error="The loss became nan at step 3.",
            log_tail=("step 3", "failed"),
        ),
    ]:
        recorder.record(job, progress)
    store.record_losses(job.id, [(4, math.nan, 1e-4), (5, 0.25)])
    store.close()

    again = JobStore(db)
    found = again.get(job.id)
    assert found is not None
    assert found.status is JobStatus.FAILED and found.error == "The loss became nan at step 3."
    assert found.finished_at is not None
    assert again.losses(job.id) == [(1, 0.5), (5, 0.25)]
    assert again.logs(job.id) == ["step 1", "step 2", "step 3", "failed"]
    again.close()


def test_history_keeps_spec_transitions_logs_losses_and_cost(tmp_path: Path) -> None:
    from lora_studio.core.jobs import JobSpec

    store = JobStore(tmp_path / "jobs.sqlite3")
    spec = JobSpec(
        dataset_dir="/data",
        config={"rank": 4},
        base_model="builtin:tiny-sd15",
        output_dir="/out",
        backend=BackendType.REPLICATE,
        backend_options={"destination": "me/lora", "trainer": "ostris/flux-dev-lora-trainer"},
    )
    job = _job("remote")
    job.backend, job.spec, job.estimated_cost = BackendType.REPLICATE, spec, 0.42
    store.save(job)
    recorder = ProgressRecorder(store)
    steps = [
        Progress(status=JobStatus.PREPARING, message="Uploading", log_tail=("a",)),
        Progress(status=JobStatus.RUNNING, step=1, total_steps=3, loss=0.5, log_tail=("a", "b")),
        Progress(status=JobStatus.RUNNING, step=2, total_steps=3, loss=0.4, log_tail=("b", "c")),
        Progress(status=JobStatus.RUNNING, step=2, total_steps=3, loss=0.4, log_tail=("b", "c")),
        Progress(
            status=JobStatus.SUCCEEDED,
            step=3,
            total_steps=3,
            loss=0.3,
            log_tail=("c", "d"),
            output_path="/out/remote.safetensors",
        ),
    ]
    for progress in steps:
        recorder.record(job, progress)
    job.cost = 0.37
    store.save(job)

    again = JobStore(tmp_path / "jobs.sqlite3").get(job.id)
    assert again is not None
    assert again.spec == spec and again.estimated_cost == 0.42 and again.cost == 0.37
    assert again.output_path == "/out/remote.safetensors"
    assert again.started_at is not None and again.finished_at is not None
    assert [e.status for e in store.events(job.id)] == [
        JobStatus.QUEUED,
        JobStatus.PREPARING,
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
    ]
    assert store.logs(job.id) == ["a", "b", "c", "d"]
    assert store.logs(job.id, tail=2) == ["c", "d"]
    assert store.losses(job.id) == [(1, 0.5), (2, 0.4), (3, 0.3)]


def test_unfinished_jobs_come_in_queue_order_and_short_ids_find_them() -> None:
    store = JobStore()
    jobs = [_job(f"q{i}") for i in range(3)]
    jobs[0].position, jobs[1].position, jobs[2].position = 2, 0, 1
    jobs[2].status = JobStatus.RUNNING
    done = _job("done")
    done.status = JobStatus.FAILED
    for job in [*jobs, done]:
        store.save(job)
    assert [j.name for j in store.unfinished()] == ["q1", "q2", "q0"]
    assert [j.id for j in store.find(jobs[0].id[:-2])] == [jobs[0].id]
    assert store.find("no-such") == []
    assert store.find("%") == []  # LIKE wildcards are taken literally
    store.delete(done.id)
    assert store.get(done.id) is None and store.events(done.id) == []


def test_a_job_knows_whether_the_process_that_made_it_still_runs(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from lora_studio.core.jobs import current_process, process_alive

    store = JobStore(tmp_path / "jobs.sqlite3")
    job = _job("mine")
    store.save(job)
    saved = store.get(job.id)
    assert saved is not None and saved.owner == current_process()
    assert process_alive(saved.owner)

    code = "from lora_studio.core.jobs import current_process; print(current_process())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    gone = child.stdout.strip()
    assert gone.endswith("@" + socket.gethostname()) and not process_alive(gone)
    # the same pid with another start time is another process (a reused pid)
    pid = current_process().split(":")[0]
    assert not process_alive(f"{pid}:12.00@{socket.gethostname()}")
    assert not process_alive(None) and not process_alive("garbage")
    assert process_alive("123:1.00@some-other-host")  # not ours to judge
    store.close()


def test_histories_are_thinned_alike_and_survive_to_dict() -> None:
    losses = [float(i) for i in range(2500)]
    rates = [i * 1e-6 for i in range(2500)]
    thin_losses, thin_rates = thin_history(losses), thin_history(rates)
    assert len(thin_losses) == len(thin_rates) <= 1000
    assert thin_losses[1] == 3.0 and thin_rates[1] == 3e-6  # the same steps kept
    assert thin_history([1.0, 2.0]) == (1.0, 2.0)
    progress = Progress(status=JobStatus.RUNNING, loss_history=thin_losses, lr_history=thin_rates)
    assert Progress.from_dict(progress.to_dict()) == progress
