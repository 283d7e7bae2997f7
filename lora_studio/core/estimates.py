"""Step counts, training-time and VRAM estimates, before anything is loaded.

Steps are exact (they are what the trainer will run). Time and VRAM are models: per-family
reference numbers scaled by resolution, batch size and rank. The reference numbers are for
an RTX 4090-class 24 GB GPU training with the settings LoRA Studio uses (frozen model in
the chosen precision, fp32 LoRA weights, AdamW, latents and text embeddings cached). They
are meant to be right within a factor of about 1.5; the benchmarks (``make bench``)
compare them with measured runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_studio.core.config import LoraConfig, MixedPrecision, ModelFamily


@dataclass(frozen=True)
class StepPlan:
    """How a run splits into epochs and optimizer steps."""

    samples_per_epoch: int
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int


def plan_steps(
    samples_per_epoch: int, config: LoraConfig, *, batches_per_epoch: int | None = None
) -> StepPlan:
    """Optimizer steps for ``samples_per_epoch`` (images x repeats) under ``config``.

    ``steps = ceil(batches / grad_accum) x epochs`` with ``batches = ceil(samples / batch)``,
    or ``max_steps`` when set (then the epoch count is whatever that takes). With
    aspect-ratio buckets a batch never mixes buckets, so the trainer passes its exact
    ``batches_per_epoch`` (a few more than ``samples / batch`` when buckets are partly
    filled).
    """
    samples = max(0, samples_per_epoch)
    if batches_per_epoch is None:
        batches = math.ceil(samples / config.batch_size) if samples else 0
    else:
        batches = batches_per_epoch
    steps_per_epoch = math.ceil(batches / config.gradient_accumulation_steps) if batches else 0
    if config.max_steps:
        total = config.max_steps
        epochs = math.ceil(total / steps_per_epoch) if steps_per_epoch else 0
    else:
        epochs = config.epochs
        total = steps_per_epoch * epochs
    return StepPlan(samples, batches, steps_per_epoch, epochs, total)


@dataclass(frozen=True)
class _FamilyCost:
    ref_resolution: int
    seconds_per_step: float  # batch 1 at ref_resolution on the reference GPU
    frozen_params_b: float  # billions of parameters kept on the GPU while training
    text_encoder_params_b: float  # only resident during caching unless TE is trained
    lora_params_per_rank_m: float  # millions of LoRA parameters per unit of rank
    activations_gb: float  # batch 1 at ref_resolution
    load_seconds: float


_COSTS: dict[ModelFamily, _FamilyCost] = {
    ModelFamily.SD15: _FamilyCost(512, 0.13, 0.95, 0.12, 0.20, 3.0, 15),
    ModelFamily.SDXL: _FamilyCost(1024, 0.55, 2.65, 0.82, 0.72, 8.0, 40),
    ModelFamily.SD3: _FamilyCost(1024, 1.10, 8.2, 5.5, 0.95, 6.0, 90),
    ModelFamily.FLUX: _FamilyCost(1024, 1.60, 12.0, 4.9, 1.20, 6.0, 120),
}

# The built-in tiny model (a few MB, random weights) trains on a 2-core CPU. Measured on
# the development machine: about 0.1 s per step at 256 px and 0.5 s at 512 px, plus ~4 s
# to import the libraries and load the model.
_TINY = _FamilyCost(256, 0.10, 0.002, 0.0003, 0.0001, 0.05, 4)
REFERENCE_HARDWARE = "an RTX 4090-class GPU"
TINY_HARDWARE = "a 2-core CPU"


@dataclass(frozen=True)
class Estimate:
    """What the preset form shows next to the settings."""

    plan: StepPlan
    seconds: float
    vram_gb: float
    hardware: str

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0


def _cost(family: ModelFamily, tiny: bool) -> _FamilyCost:
    return _TINY if tiny else _COSTS[family]


def estimate_seconds(
    config: LoraConfig, plan: StepPlan, family: ModelFamily, *, tiny: bool = False
) -> float:
    """Wall-clock seconds for the whole run, model loading and caching included."""
    cost = _cost(family, tiny)
    scale = (config.resolution / cost.ref_resolution) ** 2
    # Larger batches use the GPU better: each extra image costs ~85% of the first.
    batch_factor = 1 + 0.85 * (config.batch_size - 1)
    per_step = cost.seconds_per_step * scale * batch_factor * config.gradient_accumulation_steps
    if config.train_text_encoder:
        per_step *= 1.15
    if config.mixed_precision is MixedPrecision.NO and not tiny:
        per_step *= 2.0
    caching = plan.samples_per_epoch * 0.04 * scale
    return cost.load_seconds + caching + per_step * plan.total_steps


def estimate_vram_gb(config: LoraConfig, family: ModelFamily, *, tiny: bool = False) -> float:
    """Peak GPU memory in GB for one training step."""
    cost = _cost(family, tiny)
    bytes_per_param = 4 if config.mixed_precision is MixedPrecision.NO else 2
    resident = cost.frozen_params_b
    if config.train_text_encoder:
        resident += cost.text_encoder_params_b
    weights = resident * bytes_per_param
    # fp32 weight + fp32 grad + two AdamW moments = 16 bytes per trained parameter.
    lora_params = cost.lora_params_per_rank_m * 1e6 * config.rank
    if config.train_text_encoder:
        lora_params *= 1.3
    lora = lora_params * 16 / 1e9
    scale = (config.resolution / cost.ref_resolution) ** 2
    activations = cost.activations_gb * scale * config.batch_size
    if config.mixed_precision is MixedPrecision.NO:
        activations *= 2
    runtime_overhead = 0.05 if tiny else 0.8
    return weights + lora + activations + runtime_overhead


def estimate(
    samples_per_epoch: int,
    config: LoraConfig,
    family: ModelFamily | None = None,
    *,
    tiny: bool = False,
) -> Estimate:
    """Steps, time and VRAM for training ``config`` on ``samples_per_epoch`` samples."""
    fam = family or config.family
    plan = plan_steps(samples_per_epoch, config)
    return Estimate(
        plan=plan,
        seconds=estimate_seconds(config, plan, fam, tiny=tiny),
        vram_gb=estimate_vram_gb(config, fam, tiny=tiny),
        hardware=TINY_HARDWARE if tiny else REFERENCE_HARDWARE,
    )


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2 h 05 min"``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{round(minutes)} min"
    hours, mins = divmod(round(minutes), 60)
    return f"{hours} h {mins:02d} min"
