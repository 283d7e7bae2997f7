"""Which settings bring a run's VRAM estimate under a GPU's memory (the preset form's
"make it fit" buttons)."""

from __future__ import annotations

from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.estimates import estimate, estimate_vram_gb, fit_suggestions

SDXL_BATCH_2 = LoraConfig.sdxl_preset().replace(batch_size=2)


def test_nothing_to_suggest_when_it_fits() -> None:
    assert fit_suggestions(LoraConfig.sd15_preset(), 24.0) == []


def test_every_suggestion_fits_and_says_what_it_changes() -> None:
    limit = 16.0
    assert estimate_vram_gb(SDXL_BATCH_2, ModelFamily.SDXL) > limit
    found = fit_suggestions(SDXL_BATCH_2, limit)
    labels = [s.label for s in found]
    assert "Gradient checkpointing" in labels
    assert "Batch size 1" in labels
    assert any(label.startswith("Resolution ") for label in labels)
    for suggestion in found:
        changed = SDXL_BATCH_2.replace(**suggestion.changes)
        assert estimate_vram_gb(changed, ModelFamily.SDXL) == suggestion.vram_gb <= limit


def test_a_lower_rank_keeps_the_alpha_ratio() -> None:
    config = LoraConfig.sdxl_preset().replace(rank=128, alpha=64.0, gradient_checkpointing=True)
    limit = estimate_vram_gb(config.replace(rank=32, alpha=16.0), ModelFamily.SDXL) + 0.01
    (rank,) = [s for s in fit_suggestions(config, limit) if "rank" in s.changes]
    assert rank.changes == {"rank": 32, "alpha": 16.0}  # the largest that fits, alpha/rank kept


def test_when_nothing_fits_alone_one_suggestion_combines_them() -> None:
    config = SDXL_BATCH_2
    cheap = config.replace(gradient_checkpointing=True, optimizer="adamw8bit", batch_size=1)
    limit = estimate_vram_gb(cheap, ModelFamily.SDXL) - 0.5
    found = fit_suggestions(config, limit)
    if len(found) == 1 and " + " in found[0].label:
        assert found[0].vram_gb <= limit
    else:  # a resolution alone was enough
        assert all(s.vram_gb <= limit for s in found)


def test_no_suggestion_when_nothing_can_fit() -> None:
    assert fit_suggestions(LoraConfig.flux_preset(), 8.0) == []


def test_the_estimate_remembers_what_it_was_for() -> None:
    est = estimate(20, LoraConfig.sdxl_preset(), ModelFamily.SDXL)
    assert est.family is ModelFamily.SDXL and not est.tiny
