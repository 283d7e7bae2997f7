"""The seed's programmatic API, end to end on the tiny model."""

from __future__ import annotations

import pytest

from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ConfigError, DatasetError, ModelError
from lora_studio.core.jobs import JobStatus, JobStore
from lora_studio.creator import LoraCreator


async def test_seed_quick_start_flow(tiny_model, sample_dataset, tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    creator = LoraCreator("builtin:tiny-sd15", tmp_path / "lora_output", job_store=store)
    config = (
        LoraConfig.fast_preset()
        .with_trigger_word("papercut style")
        .replace(resolution=64, max_steps=5, name="papercut")
    )
    creator = creator.with_config(config)
    creator.load_dataset(sample_dataset)
    (sample_dataset / "papercut_05.png").write_bytes(b"broken")

    stats = creator.dataset_stats()
    assert stats is not None and stats.total_images == 12 and stats.images_with_captions == 10
    assert creator.estimate().plan.total_steps == 5
    assert 0 < creator.estimate_training_time() < 5
    assert 0 < creator.estimate_vram() < 1

    report = await creator.prepare_dataset()
    assert report.usable == 11 and report.unreadable[0][0] == "papercut_05.png"
    assert "11 image(s) ready" in report.summary()

    job = await creator.train()
    percents = []
    async for progress in creator.watch(job.id):
        percents.append(progress.progress)
    assert percents[-1] == 100.0
    progress = await creator.monitor_progress(job.id)
    assert progress.is_finished() and progress.status is JobStatus.SUCCEEDED

    weights = await creator.download_weights(job.id)
    assert weights == tmp_path / "lora_output" / "papercut.safetensors"
    recorded = store.get(job.id)
    assert recorded is not None and recorded.status is JobStatus.SUCCEEDED
    assert recorded.output_path == str(weights)
    # The history has the run as it went: every step's loss and learning rate, the log.
    assert [step for step, _ in store.losses(job.id)] == [1, 2, 3, 4, 5]
    assert [step for step, _ in store.learning_rates(job.id)] == [1, 2, 3, 4, 5]
    assert all(rate > 0 for _, rate in store.learning_rates(job.id))
    assert store.logs(job.id), "the run's log lines are kept"


async def test_train_refuses_bad_setups_before_submitting(tmp_path, sample_dataset) -> None:
    creator = LoraCreator("builtin:tiny-sd15", tmp_path / "out")
    with pytest.raises(DatasetError, match="No dataset loaded"):
        await creator.train()
    creator.load_dataset(sample_dataset)
    creator.with_base_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="does not exist"):
        await creator.train()
    with pytest.raises(ConfigError):
        creator.with_config(LoraConfig(rank=0))


def test_estimate_uses_the_base_model_family(sample_dataset, tmp_path) -> None:
    creator = LoraCreator("builtin:tiny-sd15", tmp_path)
    creator.load_dataset(sample_dataset)
    assert creator.estimate().hardware == "a 2-core CPU"
    creator.with_base_model(str(tmp_path / "missing")).with_config(LoraConfig.sdxl_preset())
    est = creator.estimate()  # no model: estimated from the preset's family
    assert est.hardware.startswith("an RTX") and est.vram_gb > 10
    assert est.plan.total_steps == 120
