"""``lora-studio jobs``: the history from the command line."""

from __future__ import annotations

import json

from lora_studio.cli import main
from lora_studio.core.jobs import BackendType, Job, JobSpec, JobStatus, JobStore
from lora_studio.core.paths import job_db_path


def _store_with_jobs() -> tuple[Job, Job]:
    store = JobStore(job_db_path())
    spec = JobSpec("/data", {"name": "done", "rank": 4}, "builtin:tiny-sd15", "/out")
    done = Job(
        id=Job.new_id(),
        backend=BackendType.LOCAL,
        name="done",
        base_model="builtin:tiny-sd15",
        output_dir="/out",
        spec=spec,
    )
    store.save(done)
    done.status, done.output_path = JobStatus.RUNNING, None
    store.save(done)
    store.append_logs(done.id, ["step 1/2", "step 2/2"])
    store.record_losses(done.id, [(1, 0.5, 1e-4), (2, 0.25, 5e-5)])
    done.status, done.output_path = JobStatus.SUCCEEDED, "/out/done.safetensors"
    store.save(done)
    waiting = Job(
        id="zz-" + Job.new_id(),
        backend=BackendType.REPLICATE,
        name="waiting",
        base_model="me/flux",
        output_dir="/out",
        spec=spec,
    )
    store.save(waiting)
    store.close()
    return done, waiting


def test_list_show_and_cancel(capsys) -> None:
    done, waiting = _store_with_jobs()
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert done.id in out and "succeeded" in out and "waiting" in out

    assert main(["jobs", "show", done.id[:-3]]) == 0  # a unique prefix is enough
    out = capsys.readouterr().out
    assert "output:      /out/done.safetensors" in out
    assert "loss:        0.5000 at step 1 -> 0.2500 at step 2 (2 points)" in out
    assert "lr:          0.0001 at step 1 -> 5e-05 at step 2" in out
    assert "| step 2/2" in out and "running" in out

    assert main(["jobs", "show", done.id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["status"] for e in data["events"]] == ["queued", "running", "succeeded"]
    assert data["spec"]["config"]["rank"] == 4
    assert data["learning_rates"] == [[1, 1e-4], [2, 5e-5]]

    assert main(["jobs", "cancel", "zz-"]) == 0
    assert "Cancelled waiting" in capsys.readouterr().out
    assert JobStore(job_db_path()).get(waiting.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert main(["jobs", "cancel", done.id]) == 0
    assert "already succeeded" in capsys.readouterr().out


def test_unknown_and_ambiguous_ids_are_one_line_errors(capsys) -> None:
    _store_with_jobs()
    _store_with_jobs()
    assert main(["jobs", "show", "nope"]) == 1
    assert "No job nope in the history" in capsys.readouterr().err
    assert main(["jobs", "show", "zz-"]) == 1
    assert "matches 2 jobs" in capsys.readouterr().err


def test_an_empty_history(capsys) -> None:
    assert main(["jobs", "list"]) == 0
    assert "No jobs yet" in capsys.readouterr().out
