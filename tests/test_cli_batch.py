"""``lora-studio train DIR --presets A,B [--base-models M1,M2]``: one dataset, several runs
queued as one batch in the shared job history."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from lora_studio.cli import main
from lora_studio.core.jobs import JobStatus, JobStore
from lora_studio.core.paths import job_db_path


def test_one_run_per_preset_in_one_batch(tiny_model, small_dataset: Path, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["train", str(small_dataset), "--presets", "fast,sd15", "--name", "pc"]
    code = main([*args, "--max-steps", "2", "--resolution", "64", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 run(s) queued (fast, sd15)" in captured.err
    rows = [line.split() for line in captured.out.strip().splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("fast", "Succeeded"), ("sd15", "Succeeded")]
    for preset in ("fast", "sd15"):
        with safe_open(str(out / f"pc-{preset}.safetensors"), "pt") as f:
            metadata = f.metadata()
        assert metadata["ss_output_name"] == f"pc-{preset}"
    # the presets really differ (fast trains rank 8, sd15 rank 16)
    ranks = {}
    for preset in ("fast", "sd15"):
        with safe_open(str(out / f"pc-{preset}.safetensors"), "pt") as f:
            ranks[preset] = int(f.metadata()["ss_network_dim"])
    assert ranks["fast"] != ranks["sd15"]

    store = JobStore(job_db_path())
    try:
        jobs = store.list()
    finally:
        store.close()
    assert len(jobs) == 2 and len({j.batch_id for j in jobs}) == 1 and jobs[0].batch_id
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED}


def test_a_batch_is_checked_before_anything_is_queued(small_dataset: Path, capsys) -> None:
    assert main(["train", str(small_dataset), "--presets", "fast,nonsense"]) == 1
    assert "Unknown preset nonsense" in capsys.readouterr().err
    assert main(["train", str(small_dataset), "--presets", "fast", "--preset", "sd15"]) == 1
    assert "--presets replaces --preset" in capsys.readouterr().err
    models = "builtin:tiny-sd15,/no/such/model"
    assert main(["train", str(small_dataset), "--base-models", models]) == 1
    err = capsys.readouterr().err
    assert "/no/such/model" in err and "Traceback" not in err
    store = JobStore(job_db_path())
    try:
        assert store.list() == []
    finally:
        store.close()
