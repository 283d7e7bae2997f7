"""Step counts, and training-time and VRAM estimates, before anything is loaded.

Steps are exact: they are what the trainer will run.

VRAM comes from a model of what sits on the GPU, in two phases (the trainer caches
latents and caption embeddings first, with the VAE and text encoders on the GPU, then
moves them off and trains the denoiser):

* weights: parameter counts of each component x bytes per parameter of its precision;
* LoRA: trainable parameters, computed from the architecture (every targeted projection
  adds ``rank x (in + out)``), x bytes per trainable parameter (fp32 weight and gradient
  plus the optimizer's state: AdamW 8, AdamW 8-bit 2, Prodigy 16, Adafactor ~1 bytes);
* activations: bytes per image token per sample (calibrated per family, at 16-bit
  precision, without gradient checkpointing) x tokens x batch, x 2 in fp32, x the
  checkpointing factor;
* the CUDA context and allocator slack.

Time is ``load + caching + steps x seconds per step``. A step is a fixed overhead plus
compute that grows linearly with the image tokens, except attention's share, which grows
with their square; then scaled by the batch, fp32 (x2), gradient checkpointing (a second
forward pass) and per-step caption encoding, from a per-family reference step time on the
reference GPU (an RTX 4090-class card).

The parameter counts are the published model sizes; the activation and step-time
coefficients are calibrated and their measured error is in ``docs/estimates.md``
(``benchmarks/bench_estimates.py`` reproduces the CPU measurements of the tiny model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_studio.core.config import LoraConfig, MixedPrecision, ModelFamily, Optimizer


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


# ---- architecture: parameter counts --------------------------------------------------


@dataclass(frozen=True)
class UNetSpec:
    """The parts of a diffusers ``UNet2DConditionModel`` config that decide its LoRA size.

    ``attention[i]`` is the number of transformer blocks per attention in down block ``i``
    (0: a block without attention); up blocks mirror it, the mid block uses the last.
    """

    channels: tuple[int, ...]
    attention: tuple[int, ...]
    layers_per_block: int
    context: int


def unet_lora(spec: UNetSpec) -> tuple[int, int]:
    """``(attention, conv)`` LoRA parameters per unit of rank, counted the way diffusers
    lays the UNet out and peft adds LoRA layers.

    A transformer block at width C with context width X has self-attention q, k, v, out
    (C -> C) and cross-attention q, out (C -> C) and k, v (X -> C): ``14 C + 2 X``. A
    k x k convolution from ``i`` to ``o`` channels gets ``i k^2 + o`` (LoCon).
    """
    chans, attn, n = spec.channels, spec.attention, spec.layers_per_block

    def block(width: int, count: int) -> int:
        return count * (14 * width + 2 * spec.context)

    def conv(i: int, o: int, k: int = 3) -> int:
        return i * k * k + o

    attention = conv_params = 0
    previous = chans[0]
    for index, out in enumerate(chans):  # down blocks
        for layer in range(n):
            first_in = previous if layer == 0 else out
            conv_params += conv(first_in, out) + conv(out, out)
            if first_in != out:
                conv_params += conv(first_in, out, 1)
            if attn[index]:
                attention += block(out, attn[index])
        if index < len(chans) - 1:
            conv_params += conv(out, out)  # downsampler
        previous = out
    last = chans[-1]
    conv_params += 2 * (conv(last, last) + conv(last, last))  # mid resnets
    attention += block(last, attn[-1] or 1)
    up_chans, up_attn = chans[::-1], attn[::-1]
    previous = last
    for index, out in enumerate(up_chans):  # up blocks: n + 1 resnets, skip concatenated
        skip_in = up_chans[min(index + 1, len(up_chans) - 1)]
        for layer in range(n + 1):
            skip = skip_in if layer == n else out
            first = previous if layer == 0 else out
            conv_params += conv(first + skip, out) + conv(out, out) + conv(first + skip, out, 1)
            if up_attn[index]:
                attention += block(out, up_attn[index])
        if index < len(up_chans) - 1:
            conv_params += conv(out, out)  # upsampler
        previous = out
    return attention, conv_params


def mmdit_attention_lora(
    width: int, joint_blocks: int, single_blocks: int = 0, *, last_context_only: bool = False
) -> int:
    """LoRA parameters per rank of an MMDiT's attention projections (SD 3.5, Flux).

    A joint block has eight ``width -> width`` projections (q, k, v, out for the image and
    for the text stream); a Flux single block has q, k, v. SD 3.5's last joint block
    produces no text output (no ``to_add_out``).
    """
    params = joint_blocks * 16 * width + single_blocks * 6 * width
    return params - 2 * width if last_context_only else params


def clip_lora(width: int, layers: int) -> int:
    """LoRA parameters per rank of a CLIP text encoder's q, k, v, out projections."""
    return 8 * width * layers


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs to know about one base model.

    Attributes:
        denoiser_params: UNet/transformer parameters.
        text_encoder_params: per text encoder, in the trainer's order.
        vae_params: autoencoder parameters.
        lora_per_rank: trainable LoRA parameters per unit of rank (default targets).
        text_lora_per_rank: the same for each trainable text encoder (0: never trained).
        conv_lora_per_rank: LoCon parameters per unit of conv rank (0: no convolutions).
        tokens_per_latent_pixel: 1 for UNets; 1/4 when 2x2 latent patches are one token.
        text_tokens: text tokens that join the image tokens in attention (MMDiT).
        act_bytes_per_token: activation bytes per token per sample (16-bit, no
            checkpointing), calibrated.
        ref_tokens: tokens of the reference step.
        ref_seconds: seconds per step at ``ref_tokens``, batch 1, on the reference hardware.
        step_overhead: the part of a step that does not grow with the image (optimizer,
            Python, launches).
        attention_share: the share of the rest spent in attention at ``ref_tokens``; it
            grows with the square of the token count, everything else linearly.
        checkpointing_time: step-time factor of gradient checkpointing (a second forward).
        load_seconds: loading the model from disk.
        reference: what these numbers describe.
    """

    denoiser_params: float
    text_encoder_params: tuple[float, ...]
    vae_params: float
    lora_per_rank: float
    text_lora_per_rank: tuple[float, ...]
    conv_lora_per_rank: float
    tokens_per_latent_pixel: float
    text_tokens: int
    act_bytes_per_token: float
    ref_tokens: int
    ref_seconds: float
    load_seconds: float
    reference: str
    step_overhead: float = 0.02
    attention_share: float = 0.25
    checkpointing_time: float = 1.3
    hardware: str = "an RTX 4090-class GPU"
    extra: dict[str, float] = field(default_factory=dict)

    def tokens(self, width: int, height: int) -> float:
        """Image tokens of a ``width x height`` training image."""
        return (width // 8) * (height // 8) * self.tokens_per_latent_pixel


SD15_UNET = UNetSpec((320, 640, 1280, 1280), (1, 1, 1, 0), 2, 768)
SDXL_UNET = UNetSpec((320, 640, 1280), (0, 2, 10), 2, 2048)
TINY_UNET = UNetSpec((32, 32, 64, 64), (1, 1, 1, 0), 2, 32)
_SD15_LORA, _SD15_CONV = unet_lora(SD15_UNET)
_SDXL_LORA, _SDXL_CONV = unet_lora(SDXL_UNET)
_TINY_LORA, _TINY_CONV = unet_lora(TINY_UNET)

ARCHITECTURES: dict[ModelFamily, Architecture] = {
    ModelFamily.SD15: Architecture(
        denoiser_params=859_520_964,
        text_encoder_params=(123_060_480,),
        vae_params=83_653_863,
        lora_per_rank=_SD15_LORA,
        text_lora_per_rank=(clip_lora(768, 12),),
        conv_lora_per_rank=_SD15_CONV,
        tokens_per_latent_pixel=1.0,
        text_tokens=0,
        act_bytes_per_token=0.70e6,
        ref_tokens=64 * 64,
        ref_seconds=0.13,
        load_seconds=15,
        reference="Stable Diffusion 1.5 (UNet 860M, CLIP-L)",
        attention_share=0.35,
    ),
    ModelFamily.SDXL: Architecture(
        denoiser_params=2_567_463_684,
        text_encoder_params=(123_060_480, 694_659_840),
        vae_params=83_653_863,
        lora_per_rank=_SDXL_LORA,
        text_lora_per_rank=(clip_lora(768, 12), clip_lora(1280, 32)),
        conv_lora_per_rank=_SDXL_CONV,
        tokens_per_latent_pixel=1.0,
        text_tokens=0,
        act_bytes_per_token=0.55e6,
        ref_tokens=128 * 128,
        ref_seconds=0.55,
        load_seconds=40,
        reference="SDXL base 1.0 (UNet 2.6B, CLIP-L + OpenCLIP-bigG)",
        attention_share=0.25,
    ),
    ModelFamily.SD3: Architecture(
        denoiser_params=8_056_627_520,
        text_encoder_params=(123_650_304, 694_659_840, 4_762_310_656),
        vae_params=83_821_011,
        lora_per_rank=mmdit_attention_lora(2432, 38, last_context_only=True),
        text_lora_per_rank=(clip_lora(768, 12), clip_lora(1280, 32), 0),
        conv_lora_per_rank=0,
        tokens_per_latent_pixel=0.25,
        text_tokens=333,
        act_bytes_per_token=3.8e6,
        ref_tokens=4096,
        ref_seconds=1.10,
        load_seconds=90,
        reference="SD 3.5 Large (MMDiT 8B, CLIP-L + CLIP-G + T5-XXL)",
        attention_share=0.2,
    ),
    ModelFamily.FLUX: Architecture(
        denoiser_params=11_901_408_320,
        text_encoder_params=(123_060_480, 4_762_310_656),
        vae_params=83_821_011,
        lora_per_rank=mmdit_attention_lora(3072, 19, 38),
        text_lora_per_rank=(clip_lora(768, 12), 0),
        conv_lora_per_rank=0,
        tokens_per_latent_pixel=0.25,
        text_tokens=512,
        act_bytes_per_token=4.2e6,
        ref_tokens=4096,
        ref_seconds=1.60,
        load_seconds=120,
        reference="FLUX.1-dev (MMDiT 12B, CLIP-L + T5-XXL)",
        attention_share=0.2,
    ),
}

#: The built-in tiny SD 1.5 model (random weights) on the 2-core CPU it was measured on.
TINY = Architecture(
    denoiser_params=2_446_788,
    text_encoder_params=(49_440,),
    vae_params=1_028_935,
    lora_per_rank=_TINY_LORA,
    text_lora_per_rank=(clip_lora(32, 2),),
    conv_lora_per_rank=_TINY_CONV,
    tokens_per_latent_pixel=1.0,
    text_tokens=0,
    act_bytes_per_token=0.02e6,
    ref_tokens=32 * 32,
    ref_seconds=0.076,
    load_seconds=4,
    reference="builtin:tiny-sd15 on a 2-core CPU",
    hardware="a 2-core CPU",
    step_overhead=0.025,
    attention_share=0.3,
    checkpointing_time=1.9,
)

REFERENCE_HARDWARE = "an RTX 4090-class GPU"
TINY_HARDWARE = TINY.hardware

_OPTIMIZER_STATE_BYTES = {
    Optimizer.ADAMW: 8.0,
    Optimizer.ADAMW_8BIT: 2.0,
    Optimizer.PRODIGY: 16.0,
    Optimizer.ADAFACTOR: 1.0,
}
#: fp32 LoRA weight + fp32 gradient.
_TRAINABLE_BYTES = 8.0
#: Activation memory kept with gradient checkpointing, relative to without.
CHECKPOINTING_ACTIVATIONS = 0.3
CUDA_OVERHEAD_GB = 0.8


@dataclass(frozen=True)
class Estimate:
    """What the preset form shows next to the settings."""

    plan: StepPlan
    seconds: float
    vram_gb: float
    hardware: str
    #: the VRAM terms of the peak phase, in GB (weights, lora, activations, overhead).
    vram_parts: dict[str, float] = field(default_factory=dict)
    trainable_params: int = 0
    #: the family and model size the numbers are for (what :func:`fit_suggestions` redoes)
    family: ModelFamily | None = None
    tiny: bool = False

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0


def architecture_for(family: ModelFamily, *, tiny: bool = False) -> Architecture:
    return TINY if tiny else ARCHITECTURES[family]


def _weight_bytes(config: LoraConfig) -> int:
    return 4 if config.mixed_precision is MixedPrecision.NO else 2


def trainable_parameters(config: LoraConfig, arch: Architecture) -> int:
    """LoRA parameters the run trains (DoRA adds a magnitude per output: ~1%)."""
    params = config.rank * arch.lora_per_rank
    if config.conv_rank and arch.conv_lora_per_rank:
        params += config.conv_rank * arch.conv_lora_per_rank
    if config.train_text_encoder:
        params += config.rank * sum(arch.text_lora_per_rank)
    if config.use_dora:
        params *= 1.01
    return int(params)


def vram_parts(config: LoraConfig, arch: Architecture) -> dict[str, float]:
    """The GB terms of the peak phase (caching or training, whichever is larger)."""
    weight = _weight_bytes(config)
    gb = 1e9
    vae_bytes = 4 if config.mixed_precision is not MixedPrecision.BF16 else 2
    caching = (arch.vae_params * vae_bytes + sum(arch.text_encoder_params) * weight) / gb
    resident = arch.denoiser_params
    if not config.uses_text_cache:  # captions encoded every step: encoders stay
        resident += sum(arch.text_encoder_params)
    lora_params = trainable_parameters(config, arch)
    per_param = _TRAINABLE_BYTES + _OPTIMIZER_STATE_BYTES[config.optimizer]
    tokens = arch.tokens(config.resolution, config.resolution) + arch.text_tokens
    act_scale = 2.0 if config.mixed_precision is MixedPrecision.NO else 1.0
    if config.gradient_checkpointing:
        act_scale *= CHECKPOINTING_ACTIVATIONS
    activations = arch.act_bytes_per_token * tokens * config.batch_size * act_scale / gb
    overhead = 0.05 if arch is TINY else CUDA_OVERHEAD_GB
    training = {
        "weights": resident * weight / gb,
        "lora": lora_params * per_param / gb,
        "activations": activations,
        "overhead": overhead,
    }
    if caching + overhead > sum(training.values()):
        return {"weights": caching, "lora": 0.0, "activations": 0.0, "overhead": overhead}
    return training


def estimate_vram_gb(config: LoraConfig, family: ModelFamily, *, tiny: bool = False) -> float:
    """Peak GPU memory in GB (see the module docstring for the model)."""
    return sum(vram_parts(config, architecture_for(family, tiny=tiny)).values())


def seconds_per_step(config: LoraConfig, arch: Architecture) -> float:
    """Seconds per optimizer step on the architecture's reference hardware.

    ``overhead + batch x compute(tokens)``, where compute grows linearly with the tokens
    except attention's share, which grows with their square.
    """
    tokens = arch.tokens(config.resolution, config.resolution) + arch.text_tokens
    ratio = tokens / (arch.ref_tokens + arch.text_tokens)
    compute = (arch.ref_seconds - arch.step_overhead) * (
        (1 - arch.attention_share) * ratio + arch.attention_share * ratio**2
    )
    # Larger batches use the hardware better: each extra image costs ~85% of the first.
    compute *= 1 + 0.85 * (config.batch_size - 1)
    if config.mixed_precision is MixedPrecision.NO and arch is not TINY:
        compute *= 2.0
    if config.gradient_checkpointing:
        compute *= arch.checkpointing_time
    if config.train_text_encoder or not config.uses_text_cache:
        compute *= 1.12
    return (arch.step_overhead + compute) * config.gradient_accumulation_steps


def estimate_seconds(
    config: LoraConfig, plan: StepPlan, family: ModelFamily, *, tiny: bool = False
) -> float:
    """Wall-clock seconds for the whole run: loading, caching and the steps."""
    arch = architecture_for(family, tiny=tiny)
    tokens_ratio = arch.tokens(config.resolution, config.resolution) / arch.ref_tokens
    caching = plan.samples_per_epoch * 0.04 * tokens_ratio
    return arch.load_seconds + caching + seconds_per_step(config, arch) * plan.total_steps


def estimate(
    samples_per_epoch: int,
    config: LoraConfig,
    family: ModelFamily | None = None,
    *,
    tiny: bool = False,
    processes: int = 1,
) -> Estimate:
    """Steps, time and VRAM for training ``config`` on ``samples_per_epoch`` samples.

    With ``processes`` GPUs (data parallel) each runs ``ceil(batches / processes)`` of an
    epoch's batches, so a run has that many steps; VRAM is per GPU.
    """
    fam = family or config.family
    arch = architecture_for(fam, tiny=tiny)
    plan = plan_steps(samples_per_epoch, config)
    if processes > 1:
        per_process = -(-plan.batches_per_epoch // processes)
        plan = plan_steps(samples_per_epoch, config, batches_per_epoch=per_process)
    parts = vram_parts(config, arch)
    return Estimate(
        plan=plan,
        seconds=estimate_seconds(config, plan, fam, tiny=tiny),
        vram_gb=sum(parts.values()),
        hardware=arch.hardware,
        vram_parts=parts,
        trainable_params=trainable_parameters(config, arch),
        family=fam,
        tiny=tiny,
    )


@dataclass(frozen=True)
class FitSuggestion:
    """A change of settings that brings the VRAM estimate under a limit.

    Attributes:
        label: what it does, for a button ("Gradient checkpointing").
        changes: the config fields to set (``LoraConfig.replace(**changes)``).
        vram_gb: the estimate with the change.
        cost: what it costs, in a few words ("~25% slower steps").
    """

    label: str
    changes: dict[str, Any]
    vram_gb: float
    cost: str = ""


_RANK_STEPS = (128, 64, 32, 16, 8, 4)
_RESOLUTION_STEPS = (1536, 1280, 1024, 896, 768, 640, 512, 384, 256)


def _vram_with(
    config: LoraConfig, changes: Mapping[str, Any], family: ModelFamily, tiny: bool
) -> float:
    return estimate_vram_gb(config.replace(**changes), family, tiny=tiny)


def fit_suggestions(
    config: LoraConfig,
    limit_gb: float,
    family: ModelFamily | None = None,
    *,
    tiny: bool = False,
) -> list[FitSuggestion]:
    """The changes that each bring ``config``'s VRAM estimate to ``limit_gb`` or under.

    Tried one at a time: gradient checkpointing, the 8-bit optimizer, batch 1, the largest
    lower rank that fits (alpha scaled with it, so the update's scale stays), the largest
    lower resolution that fits. When none fits alone, one suggestion combines them (the
    cheap ones first, then rank and resolution as far as needed); an empty list means even
    that does not fit. Every number comes from :func:`estimate_vram_gb`: pure arithmetic,
    well under a millisecond.
    """
    fam = family or config.family
    if estimate_vram_gb(config, fam, tiny=tiny) <= limit_gb:
        return []
    singles: list[tuple[str, dict[str, Any], str]] = []
    if not config.gradient_checkpointing:
        singles.append(
            ("Gradient checkpointing", {"gradient_checkpointing": True}, "~25% slower steps")
        )
    if config.optimizer not in (Optimizer.ADAMW_8BIT, Optimizer.ADAFACTOR):
        singles.append(
            ("AdamW 8-bit optimizer", {"optimizer": Optimizer.ADAMW_8BIT.value}, "CUDA only")
        )
    if config.batch_size > 1:
        singles.append(
            ("Batch size 1", {"batch_size": 1}, f"{config.batch_size}x the steps, noisier")
        )
    found: list[FitSuggestion] = []
    for label, changes, cost in singles:
        vram = _vram_with(config, changes, fam, tiny)
        if vram <= limit_gb:
            found.append(FitSuggestion(label, changes, vram, cost))
    rank = _largest_fitting_rank(config, {}, limit_gb, fam, tiny)
    if rank is not None:
        found.append(rank)
    resolution = _largest_fitting_resolution(config, {}, limit_gb, fam, tiny)
    if resolution is not None:
        found.append(resolution)
    combined: dict[str, Any] = {}
    for _, changes, _ in singles:
        combined.update(changes)
    labels = [label for label, _, _ in singles]
    if found:
        # Rank and resolution keep quality better when the cheap changes together fit.
        vram = _vram_with(config, combined, fam, tiny)
        if len(singles) > 1 and vram <= limit_gb:
            found.append(FitSuggestion(" + ".join(labels), combined, vram, "all of these"))
        return found
    # Nothing alone is enough: everything cheap at once, then rank and resolution.
    if _vram_with(config, combined, fam, tiny) > limit_gb:
        for step in (_largest_fitting_rank, _largest_fitting_resolution):
            best = step(config, combined, limit_gb, fam, tiny, lowest_if_none=True)
            if best is None:
                continue
            combined.update(best.changes)
            labels.append(best.label)
            if _vram_with(config, combined, fam, tiny) <= limit_gb:
                break
    vram = _vram_with(config, combined, fam, tiny)
    if not combined or vram > limit_gb:
        return []
    return [FitSuggestion(" + ".join(labels), combined, vram, "all of these")]


def _largest_fitting_rank(
    config: LoraConfig,
    base: Mapping[str, Any],
    limit_gb: float,
    family: ModelFamily,
    tiny: bool,
    *,
    lowest_if_none: bool = False,
) -> FitSuggestion | None:
    candidates = [r for r in _RANK_STEPS if r < config.rank]
    last: FitSuggestion | None = None
    for rank in candidates:
        alpha = round(config.alpha * rank / config.rank, 4)
        changes = {**base, "rank": rank, "alpha": alpha}
        vram = _vram_with(config, changes, family, tiny)
        last = FitSuggestion(
            f"Rank {rank} (alpha {alpha:g})",
            {"rank": rank, "alpha": alpha},
            vram,
            "less capacity for detail",
        )
        if vram <= limit_gb:
            return last
    return last if lowest_if_none else None


def _largest_fitting_resolution(
    config: LoraConfig,
    base: Mapping[str, Any],
    limit_gb: float,
    family: ModelFamily,
    tiny: bool,
    *,
    lowest_if_none: bool = False,
) -> FitSuggestion | None:
    last: FitSuggestion | None = None
    for side in (s for s in _RESOLUTION_STEPS if s < config.resolution):
        vram = _vram_with(config, {**base, "resolution": side}, family, tiny)
        last = FitSuggestion(
            f"Resolution {side} px", {"resolution": side}, vram, "less fine detail"
        )
        if vram <= limit_gb:
            return last
    return last if lowest_if_none else None


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2 h 05 min"``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{round(minutes)} min"
    hours, mins = divmod(round(minutes), 60)
    return f"{hours} h {mins:02d} min"
