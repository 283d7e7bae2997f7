from __future__ import annotations

import pytest

from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.estimates import estimate, format_duration, plan_steps

# (samples per epoch, overrides, expected total steps, expected epochs)
STEP_CASES = [
    (12, {"epochs": 5, "batch_size": 1}, 60, 5),  # 12 images x 1 repeat x 5 epochs / 1
    (12, {"epochs": 5, "batch_size": 2}, 30, 5),
    (13, {"epochs": 2, "batch_size": 4}, 8, 2),  # the last, short batch still counts
    (12, {"epochs": 3, "batch_size": 2, "gradient_accumulation_steps": 3}, 6, 3),
    (100, {"epochs": 10, "max_steps": 250}, 250, 3),  # max steps override epochs
    (0, {"epochs": 10}, 0, 10),
]


@pytest.mark.parametrize(("samples", "changes", "steps", "epochs"), STEP_CASES)
def test_step_plan(samples, changes, steps, epochs) -> None:
    plan = plan_steps(samples, LoraConfig().replace(**changes))
    assert plan.total_steps == steps
    assert plan.epochs == epochs


def test_time_and_vram_grow_with_the_work() -> None:
    base = LoraConfig.sd15_preset()
    small = estimate(20, base, ModelFamily.SD15)
    assert estimate(20, base.replace(resolution=1024), ModelFamily.SD15).seconds > small.seconds
    assert estimate(40, base, ModelFamily.SD15).seconds > small.seconds
    assert estimate(20, base.replace(batch_size=4), ModelFamily.SD15).vram_gb > small.vram_gb
    assert estimate(20, base.replace(rank=128), ModelFamily.SD15).vram_gb > small.vram_gb
    assert (
        estimate(20, base.replace(mixed_precision="no"), ModelFamily.SD15).vram_gb > small.vram_gb
    )


def test_families_are_ordered_by_size() -> None:
    config = LoraConfig.sdxl_preset()  # the same settings for every family
    vram = {f: estimate(20, config, f).vram_gb for f in ModelFamily}
    assert vram[ModelFamily.SDXL] < vram[ModelFamily.SD3] < vram[ModelFamily.FLUX]
    # Well-known ballparks: SD 1.5 LoRA fits 8 GB cards, SDXL wants 12-24 GB, Flux 24+ GB.
    assert estimate(20, LoraConfig.sd15_preset(), ModelFamily.SD15).vram_gb < 8
    assert 10 < estimate(20, LoraConfig.sdxl_preset(), ModelFamily.SDXL).vram_gb < 24
    assert estimate(20, LoraConfig.flux_preset(), ModelFamily.FLUX).vram_gb > 20


def test_tiny_model_estimate_is_for_a_cpu() -> None:
    est = estimate(
        12, LoraConfig.fast_preset().replace(resolution=256), ModelFamily.SD15, tiny=True
    )
    assert est.hardware == "a 2-core CPU"
    assert est.plan.total_steps == 60
    assert est.seconds < 60
    assert est.vram_gb < 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "1 s"), (45, "45 s"), (89, "89 s"), (600, "10 min"), (7500, "2 h 05 min")],
)
def test_format_duration(seconds, text) -> None:
    assert format_duration(seconds) == text


def test_several_processes_split_the_steps() -> None:
    config = LoraConfig.fast_preset().replace(epochs=2)
    one = estimate(12, config, ModelFamily.SD15)
    two = estimate(12, config, ModelFamily.SD15, processes=2)
    three = estimate(13, config, ModelFamily.SD15, processes=2)
    assert (one.plan.total_steps, two.plan.total_steps) == (24, 12)
    assert three.plan.total_steps == 14  # 13 batches: 7 per process, padded like the trainer
    assert two.vram_gb == one.vram_gb  # per GPU
