"""Training configuration: :class:`LoraConfig`, its presets, and TOML files.

Every field carries its help text, unit and limits in ``field(metadata=...)`` (as peft's
``LoraConfig`` does). That one place drives validation, the preset form's tooltips and
ranges, the CLI's ``--help`` and the docs.

Saved configs carry ``config_version``; :func:`migrate` upgrades older files so they keep
loading.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.errors import ConfigError

CONFIG_VERSION = 1


class MixedPrecision(enum.StrEnum):
    """Numeric precision of the forward/backward pass (the LoRA weights stay fp32)."""

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class ModelFamily(enum.StrEnum):
    """The architecture family of a base model."""

    SD15 = "sd15"
    SDXL = "sdxl"
    SD3 = "sd3"
    FLUX = "flux"

    @property
    def label(self) -> str:
        return _FAMILY_LABELS[self]


_FAMILY_LABELS = {
    ModelFamily.SD15: "SD 1.5",
    ModelFamily.SDXL: "SDXL",
    ModelFamily.SD3: "SD 3.5",
    ModelFamily.FLUX: "Flux",
}


class LrScheduler(enum.StrEnum):
    """Learning-rate schedule over the run."""

    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"


class Optimizer(enum.StrEnum):
    """The optimizer of the LoRA weights."""

    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"
    PRODIGY = "prodigy"
    ADAFACTOR = "adafactor"


class TimestepSampling(enum.StrEnum):
    """How flow-matching families (SD 3.5, Flux) draw training timesteps."""

    LOGIT_NORMAL = "logit_normal"
    UNIFORM = "uniform"
    MODE = "mode"


def _meta(
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
    label: str = "",
    flag: bool = True,
    group: str = "basic",
) -> dict[str, Any]:
    return {
        "help": help,
        "min": minimum,
        "max": maximum,
        "unit": unit,
        "label": label,
        "flag": flag,
        "group": group,
    }


@dataclass(frozen=True)
class LoraConfig:
    """Everything that decides how a LoRA is trained.

    Instances are immutable; use :meth:`replace` (or the ``with_*`` helpers) to derive a
    changed copy.
    """

    config_version: int = field(
        default=CONFIG_VERSION, metadata=_meta("Version of the config file format.", flag=False)
    )
    preset: str = field(
        default="sd15",
        metadata=_meta("The preset these settings started from.", label="Preset", flag=False),
    )
    name: str = field(
        default="my_lora",
        metadata=_meta(
            "Output name: the LoRA is written as <name>.safetensors.", label="Output name"
        ),
    )
    family: ModelFamily = field(
        default=ModelFamily.SD15,
        metadata=_meta(
            "Model family the preset is tuned for (the base model decides what is trained).",
            label="Model family",
        ),
    )
    trigger_word: str = field(
        default="",
        metadata=_meta(
            "A rare word that calls up the trained concept; put in front of every caption "
            "that lacks it.",
            label="Trigger word",
        ),
    )
    rank: int = field(
        default=16,
        metadata=_meta(
            "LoRA rank (network dim): size of the low-rank update. Quality: higher learns "
            "more detail (and overfits sooner); 4-8 for a simple style, 16-32 balanced, 64+ "
            "for detail. Speed: little effect. VRAM and file size grow with it.",
            minimum=1,
            maximum=1024,
            label="Rank",
        ),
    )
    alpha: float = field(
        default=16.0,
        metadata=_meta(
            "LoRA alpha: the update is scaled by alpha / rank, so a lower alpha acts like a "
            "lower learning rate. Usually equal to the rank (or half of it). No effect on "
            "speed or VRAM.",
            minimum=0.0,
            maximum=4096,
            label="Alpha",
        ),
    )
    resolution: int = field(
        default=512,
        metadata=_meta(
            "Training resolution: images are resized to about this many pixels squared "
            "(the model's native size is best: 512 for SD 1.5, 1024 for SDXL, SD 3.5 and "
            "Flux). Lower is faster and needs much less VRAM but loses fine detail.",
            minimum=64,
            maximum=2048,
            unit="px",
            label="Resolution",
        ),
    )
    epochs: int = field(
        default=15,
        metadata=_meta(
            "Passes over the dataset (each image counted repeats times). More epochs learn "
            "the concept more strongly (too many overfit: samples copy the training images); "
            "time grows with them, VRAM does not.",
            minimum=1,
            maximum=10000,
            label="Epochs",
        ),
    )
    max_steps: int | None = field(
        default=None,
        metadata=_meta(
            "Stop after this many optimizer steps; overrides epochs when set. A fixed "
            "budget: time is proportional to it, VRAM does not change.",
            minimum=1,
            maximum=1_000_000,
            label="Max steps",
        ),
    )
    repeats: int = field(
        default=1,
        metadata=_meta(
            "How often each image is seen per epoch (kohya 'N_' folders override it). Like "
            "more epochs: more steps and time, no extra VRAM; useful to balance small "
            "datasets.",
            minimum=1,
            maximum=1000,
            label="Repeats",
        ),
    )
    learning_rate: float = field(
        default=1e-4,
        metadata=_meta(
            "Learning rate of the UNet/transformer LoRA: how big each update is. Too high "
            "burns in artefacts and overfits fast, too low learns little in the steps "
            "given (1e-4 is a safe start; Prodigy wants 1.0). No effect on speed or VRAM.",
            minimum=1e-7,
            maximum=1.0,
            label="Learning rate",
        ),
    )
    text_encoder_lr: float | None = field(
        default=None,
        metadata=_meta(
            "Learning rate of the text-encoder LoRA (defaults to half the learning rate). "
            "Keep it lower than the UNet's: the text encoder overfits quickly.",
            minimum=1e-7,
            maximum=1.0,
            label="Text encoder LR",
        ),
    )
    lr_scheduler: LrScheduler = field(
        default=LrScheduler.CONSTANT,
        metadata=_meta(
            "How the learning rate changes over the run. Cosine and linear decay usually "
            "give cleaner results than constant; no effect on speed or VRAM.",
            label="LR schedule",
        ),
    )
    lr_warmup_steps: int = field(
        default=0,
        metadata=_meta(
            "Steps over which the learning rate ramps up from zero: steadier first steps "
            "(helps high learning rates). No effect on speed or VRAM.",
            minimum=0,
            maximum=100_000,
            label="Warmup steps",
        ),
    )
    batch_size: int = field(
        default=1,
        metadata=_meta(
            "Images per forward pass. Higher gives smoother gradients and uses the GPU "
            "better (faster per image) but needs much more VRAM, roughly in proportion; "
            "raise the learning rate a little with it.",
            minimum=1,
            maximum=64,
            label="Batch size",
        ),
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata=_meta(
            "Batches summed before each optimizer step (effective batch = batch x this): "
            "the quality of a bigger batch without its VRAM, at the cost of time per step.",
            minimum=1,
            maximum=256,
            label="Grad. accumulation",
        ),
    )
    mixed_precision: MixedPrecision = field(
        default=MixedPrecision.FP16,
        metadata=_meta(
            "Precision of the frozen model during training. fp16/bf16 halve the model's "
            "VRAM and are about twice as fast as fp32 with no visible quality loss; bf16 "
            "is more stable but needs an Ampere or newer GPU. On a CPU training runs in fp32 "
            "(slower).",
            label="Mixed precision",
        ),
    )
    train_text_encoder: bool = field(
        default=False,
        metadata=_meta(
            "Also train a LoRA on the text encoder: the trigger word and prompts bind "
            "better (faces, characters), at the risk of overfitting; ~10% slower and the "
            "text encoders stay in VRAM.",
            label="Train text encoder",
        ),
    )
    seed: int = field(
        default=42,
        metadata=_meta(
            "Random seed: the same seed, data and settings give the same LoRA. Try "
            "another when a run came out oddly; no effect on speed or VRAM.",
            minimum=0,
            maximum=2**32 - 1,
            label="Seed",
        ),
    )

    # ---- network -------------------------------------------------------------------

    target_modules: str = field(
        default="",
        metadata=_meta(
            "Comma-separated module names that get LoRA layers; empty means the model "
            "family's default (the attention projections). More modules learn more (and "
            "need more VRAM and a larger file).",
            label="Target modules",
            group="network",
        ),
    )
    use_dora: bool = field(
        default=False,
        metadata=_meta(
            "DoRA: learn a magnitude per output as well as the low-rank direction "
            "(often better quality, ~20% slower).",
            label="DoRA",
            group="network",
        ),
    )
    conv_rank: int = field(
        default=0,
        metadata=_meta(
            "LoCon: also put LoRA layers of this rank on the UNet's convolutions (0 = off; "
            "UNet families only). Learns textures and styles better; more VRAM, a larger "
            "file, a little slower.",
            minimum=0,
            maximum=512,
            label="Conv rank",
            group="network",
        ),
    )
    conv_alpha: float = field(
        default=1.0,
        metadata=_meta(
            "Alpha of the convolution LoRA layers (scale = conv alpha / conv rank).",
            minimum=0.0,
            maximum=4096,
            label="Conv alpha",
            group="network",
        ),
    )

    # ---- data ----------------------------------------------------------------------

    enable_bucket: bool = field(
        default=True,
        metadata=_meta(
            "Aspect-ratio bucketing: train each image at the bucket (sides multiples of 64, "
            "about resolution x resolution pixels) closest to its shape instead of a "
            "centre-cropped square. Better compositions (nothing cropped off); same VRAM.",
            label="Aspect-ratio buckets",
            group="data",
        ),
    )
    min_bucket_side: int = field(
        default=256,
        metadata=_meta(
            "Smallest bucket side: narrower images are cropped to it.",
            minimum=64,
            maximum=4096,
            unit="px",
            label="Min bucket side",
            group="data",
        ),
    )
    max_bucket_side: int = field(
        default=2048,
        metadata=_meta(
            "Largest bucket side: longer images are cropped to it.",
            minimum=64,
            maximum=8192,
            unit="px",
            label="Max bucket side",
            group="data",
        ),
    )
    bucket_no_upscale: bool = field(
        default=False,
        metadata=_meta(
            "Never enlarge an image that is smaller than the training resolution: it gets a "
            "bucket of its own size instead.",
            label="No upscaling",
            group="data",
        ),
    )
    caption_dropout: float = field(
        default=0.0,
        metadata=_meta(
            "Chance that an image is trained with an empty caption (helps the LoRA work "
            "without its trigger). Turns the text-embedding cache off: slower steps and "
            "the text encoders stay in VRAM.",
            minimum=0.0,
            maximum=1.0,
            label="Caption dropout",
            group="data",
        ),
    )
    shuffle_tags: bool = field(
        default=False,
        metadata=_meta(
            "Shuffle the comma-separated tags of each caption every time it is used "
            "(after the kept tokens): less dependence on tag order. Turns the "
            "text-embedding cache off: slower steps and the text encoders stay in VRAM.",
            label="Shuffle tags",
            group="data",
        ),
    )
    keep_tokens: int = field(
        default=0,
        metadata=_meta(
            "Tags at the start of a caption that stay in place when tags are shuffled.",
            minimum=0,
            maximum=75,
            label="Keep tokens",
            group="data",
        ),
    )
    cache_to_disk: bool = field(
        default=True,
        metadata=_meta(
            "Keep VAE latents and text embeddings in the cache folder, so the next run on the "
            "same images and model starts training at once (disk space; no VRAM).",
            label="Cache to disk",
            group="data",
        ),
    )

    # ---- optimizer -----------------------------------------------------------------

    optimizer: Optimizer = field(
        default=Optimizer.ADAMW,
        metadata=_meta(
            "AdamW: the reliable default. AdamW 8-bit (bitsandbytes, CUDA only): same "
            "quality, a quarter of the optimizer's VRAM. Prodigy: finds its own learning "
            "rate (set learning rate 1.0), most VRAM. Adafactor: least VRAM. Step speed "
            "is about the same for all.",
            label="Optimizer",
            group="optimizer",
        ),
    )
    weight_decay: float = field(
        default=0.01,
        metadata=_meta(
            "Weight decay of the optimizer: pulls weights towards zero, a mild guard "
            "against overfitting. No effect on speed or VRAM.",
            minimum=0.0,
            maximum=1.0,
            label="Weight decay",
            group="optimizer",
        ),
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata=_meta(
            "Clip the gradient norm to this value (0 = no clipping): keeps a bad batch "
            "from wrecking the run. No effect on speed or VRAM.",
            minimum=0.0,
            maximum=1000.0,
            label="Max grad norm",
            group="optimizer",
        ),
    )
    lr_cycles: int = field(
        default=1,
        metadata=_meta(
            "Restarts of the cosine_with_restarts schedule.",
            minimum=1,
            maximum=100,
            label="LR cycles",
            group="optimizer",
        ),
    )
    lr_power: float = field(
        default=1.0,
        metadata=_meta(
            "Power of the polynomial schedule (1 = linear decay).",
            minimum=0.0,
            maximum=10.0,
            label="LR power",
            group="optimizer",
        ),
    )

    # ---- objective -----------------------------------------------------------------

    noise_offset: float = field(
        default=0.0,
        metadata=_meta(
            "Add this much per-channel offset noise (0.05-0.1 lets the model learn very "
            "dark and very bright images; too much washes colours out). Free: no speed or "
            "VRAM cost.",
            minimum=0.0,
            maximum=1.0,
            label="Noise offset",
            group="objective",
        ),
    )
    min_snr_gamma: float = field(
        default=0.0,
        metadata=_meta(
            "Min-SNR loss weighting gamma (5 is the paper's value; 0 = off): converges "
            "faster and steadier. SD 1.5 and SDXL only; free in speed and VRAM.",
            minimum=0.0,
            maximum=100.0,
            label="Min-SNR gamma",
            group="objective",
        ),
    )
    timestep_sampling: TimestepSampling = field(
        default=TimestepSampling.LOGIT_NORMAL,
        metadata=_meta(
            "How SD 3.5 and Flux draw timesteps: logit-normal (the SD3 paper), uniform, or mode.",
            label="Timestep sampling",
            group="objective",
        ),
    )
    logit_mean: float = field(
        default=0.0,
        metadata=_meta(
            "Mean of the logit-normal timestep distribution.",
            minimum=-10.0,
            maximum=10.0,
            label="Logit mean",
            group="objective",
        ),
    )
    logit_std: float = field(
        default=1.0,
        metadata=_meta(
            "Standard deviation of the logit-normal timestep distribution.",
            minimum=0.01,
            maximum=10.0,
            label="Logit std",
            group="objective",
        ),
    )
    guidance_scale: float = field(
        default=1.0,
        metadata=_meta(
            "Guidance fed to a guidance-distilled model (Flux dev) while training.",
            minimum=0.0,
            maximum=30.0,
            label="Guidance (Flux)",
            group="objective",
        ),
    )

    # ---- performance ---------------------------------------------------------------

    gradient_checkpointing: bool = field(
        default=False,
        metadata=_meta(
            "Recompute activations in the backward pass: much less VRAM (often the "
            "difference between fitting or not), ~25% slower steps, same quality.",
            label="Gradient checkpointing",
            group="performance",
        ),
    )
    torch_compile: bool = field(
        default=False,
        metadata=_meta(
            "Compile the model's transformer blocks with torch.compile: faster steps after a "
            "slower first one (SDXL at 1024 px on an H200: 0.081 s per step instead of 0.099 "
            "with CUDA graphs, 0.35 instead of 0.49 without; the first step ~30 s longer); "
            "same quality, a little less VRAM. Worth it for long runs on a GPU.",
            label="torch.compile",
            group="performance",
        ),
    )
    cuda_graphs: bool = field(
        default=True,
        metadata=_meta(
            "Replay each training step from a CUDA graph where the run allows it (SD 1.5 and "
            "SDXL; bf16 or fp32; AdamW; no gradient accumulation or checkpointing; text "
            "encoders frozen): one launch per step instead of thousands of Python calls, so "
            "faster steps where the GPU is fast (SDXL at 1024 px on an H200: 0.10 s per step "
            "instead of 0.50), the same training and about the same VRAM. Other runs train "
            "as usual, and the log says why.",
            label="CUDA graphs",
            group="performance",
        ),
    )

    # ---- samples, checkpoints, logs ------------------------------------------------

    sample_prompts: str = field(
        default="",
        metadata=_meta(
            "Prompts to draw sample images from, one per line; [trigger] is replaced by the "
            "trigger word.",
            label="Sample prompts",
            group="samples",
        ),
    )
    sample_every_n_steps: int = field(
        default=0,
        metadata=_meta(
            "Draw the sample prompts every N steps and at the end (0 = only at the end, if "
            "there are prompts). Each round pauses training for a few seconds.",
            minimum=0,
            maximum=1_000_000,
            label="Sample every N steps",
            group="samples",
        ),
    )
    sample_inference_steps: int = field(
        default=20,
        metadata=_meta(
            "Denoising steps per sample image: more look better and take longer.",
            minimum=1,
            maximum=200,
            label="Sample steps",
            group="samples",
        ),
    )
    save_every_n_steps: int = field(
        default=0,
        metadata=_meta(
            "Save a resumable checkpoint every N steps (0 = off). Each takes disk space "
            "and a moment of training time.",
            minimum=0,
            maximum=1_000_000,
            label="Checkpoint every N steps",
            group="checkpoints",
        ),
    )
    save_every_n_epochs: int = field(
        default=0,
        metadata=_meta(
            "Save a resumable checkpoint every N epochs (0 = off).",
            minimum=0,
            maximum=10_000,
            label="Checkpoint every N epochs",
            group="checkpoints",
        ),
    )
    keep_last_checkpoints: int = field(
        default=3,
        metadata=_meta(
            "How many checkpoints to keep (older ones are deleted).",
            minimum=1,
            maximum=1000,
            label="Keep checkpoints",
            group="checkpoints",
        ),
    )
    save_diffusers_format: bool = field(
        default=False,
        metadata=_meta(
            "Also write the LoRA in diffusers/peft format (a folder beside the .safetensors).",
            label="Diffusers format too",
            group="output",
        ),
    )
    tensorboard: bool = field(
        default=False,
        metadata=_meta(
            "Write TensorBoard logs of loss and learning rate beside the output "
            "(needs the tensorboard package).",
            label="TensorBoard logs",
            group="output",
        ),
    )

    # ---- presets ---------------------------------------------------------------------

    @classmethod
    def sdxl_preset(cls) -> LoraConfig:
        """SDXL: rank 32, alpha 32, 1024x1024, 10 epochs, bf16."""
        return cls(
            preset="sdxl",
            family=ModelFamily.SDXL,
            rank=32,
            alpha=32.0,
            resolution=1024,
            epochs=10,
            mixed_precision=MixedPrecision.BF16,
        )

    @classmethod
    def sd15_preset(cls) -> LoraConfig:
        """SD 1.5: rank 16, alpha 16, 512x512, 15 epochs, fp16."""
        return cls(
            preset="sd15",
            family=ModelFamily.SD15,
            rank=16,
            alpha=16.0,
            resolution=512,
            epochs=15,
            mixed_precision=MixedPrecision.FP16,
        )

    @classmethod
    def fast_preset(cls) -> LoraConfig:
        """Fast iteration: rank 8, alpha 8, 512x512, 5 epochs."""
        return cls(
            preset="fast",
            rank=8,
            alpha=8.0,
            resolution=512,
            epochs=5,
            learning_rate=2e-4,
            mixed_precision=MixedPrecision.FP16,
        )

    @classmethod
    def high_quality_preset(cls) -> LoraConfig:
        """High quality: rank 64, alpha 64, 768x768, 20 epochs, text-encoder training."""
        return cls(
            preset="high_quality",
            rank=64,
            alpha=64.0,
            resolution=768,
            epochs=20,
            train_text_encoder=True,
            text_encoder_lr=5e-5,
            lr_scheduler=LrScheduler.COSINE,
            lr_warmup_steps=50,
            mixed_precision=MixedPrecision.BF16,
        )

    @classmethod
    def flux_preset(cls) -> LoraConfig:
        """Flux: rank 16, alpha 16, 1024x1024, 10 epochs, bf16, learning rate 4e-4."""
        return cls(
            preset="flux",
            family=ModelFamily.FLUX,
            rank=16,
            alpha=16.0,
            resolution=1024,
            epochs=10,
            learning_rate=4e-4,
            mixed_precision=MixedPrecision.BF16,
        )

    @classmethod
    def sd35_preset(cls) -> LoraConfig:
        """SD 3.5: rank 16, alpha 16, 1024x1024, 10 epochs, bf16."""
        return cls(
            preset="sd35",
            family=ModelFamily.SD3,
            rank=16,
            alpha=16.0,
            resolution=1024,
            epochs=10,
            mixed_precision=MixedPrecision.BF16,
        )

    @classmethod
    def from_preset(cls, name: str) -> LoraConfig:
        """The config of the preset called ``name`` (see :data:`PRESETS`)."""
        try:
            return PRESETS[name.lower().replace("-", "_").replace(" ", "_")].factory()
        except KeyError:
            known = ", ".join(PRESETS)
            raise ConfigError(f"Unknown preset {name!r}; choose one of: {known}.") from None

    # ---- derived copies --------------------------------------------------------------

    def replace(self, **changes: Any) -> LoraConfig:
        """A copy with ``changes`` applied, coerced to the field types and validated."""
        return coerce_config({**self.to_dict(), **changes})

    def with_trigger_word(self, word: str) -> LoraConfig:
        return self.replace(trigger_word=word.strip())

    # ---- checks and numbers ----------------------------------------------------------

    @property
    def uses_text_cache(self) -> bool:
        """Whether caption embeddings can be computed once: not when the text encoder is
        trained or the caption text changes from step to step."""
        return not (self.train_text_encoder or self.caption_dropout > 0 or self.shuffle_tags)

    @property
    def graph_blocker(self) -> str | None:
        """What in these settings keeps training steps from being replayed from CUDA
        graphs (``training/graphs.py``), whether or not ``cuda_graphs`` is on; ``None``:
        nothing (the device and the number of processes are the trainer's to check)."""
        if self.family not in (ModelFamily.SD15, ModelFamily.SDXL):
            return f"not available for {self.family.label} yet"
        if self.mixed_precision is MixedPrecision.FP16:
            return "fp16's loss scaler reads the GPU every step (bf16 has none)"
        if self.optimizer is not Optimizer.ADAMW:
            return f"{self.optimizer.value} cannot be captured (AdamW can)"
        if self.gradient_accumulation_steps > 1:
            return "gradient accumulation"
        if self.gradient_checkpointing:
            return "gradient checkpointing"
        if self.train_text_encoder:
            return "the text encoders are trained"
        return None

    @property
    def sample_prompt_list(self) -> list[str]:
        """The sample prompts, the trigger word put in for ``[trigger]``."""
        trigger = self.trigger_word or ""
        return [
            line.strip().replace("[trigger]", trigger)
            for line in self.sample_prompts.splitlines()
            if line.strip()
        ]

    def problems(self) -> list[str]:
        """Every reason this config cannot be trained, as user-facing sentences."""
        issues: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if value is None or isinstance(value, (bool, str, enum.Enum)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                issues.append(f"{_label(f)} must be a finite number.")
                continue
            if lo is not None and value < lo:
                issues.append(f"{_label(f)} must be at least {lo:g} (got {value:g}).")
            if hi is not None and value > hi:
                issues.append(f"{_label(f)} must be at most {hi:g} (got {value:g}).")
        if self.resolution % 8:
            issues.append(
                f"Resolution must be a multiple of 8 (got {self.resolution}); try "
                f"{max(64, round(self.resolution / 64) * 64)}."
            )
        if self.min_bucket_side > self.max_bucket_side:
            issues.append(
                f"Min bucket side ({self.min_bucket_side}) is larger than max bucket side "
                f"({self.max_bucket_side})."
            )
        if not self.name.strip():
            issues.append("Output name must not be empty.")
        elif any(ch in self.name for ch in '/\\:*?"<>|') or self.name.strip(". ") == "":
            issues.append(f"Output name {self.name!r} cannot be used as a file name.")
        return issues

    def validate(self) -> LoraConfig:
        """Return ``self``, or raise :class:`ConfigError` naming every problem."""
        issues = self.problems()
        if issues:
            raise ConfigError(" ".join(issues))
        return self

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else self.learning_rate / 2

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    # ---- (de)serialisation -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able values (enums as strings, ``None`` kept)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraConfig:
        """Build a config from a (possibly older) saved dict; unknown keys are an error."""
        return coerce_config(migrate(dict(data)))

    def to_toml(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if v is not None}
        return tomli_w.dumps({"lora": body})

    def save(self, path: str | Path) -> Path:
        """Write the config as TOML (atomically)."""
        return atomic_write_text(path, self.to_toml())

    @classmethod
    def load(cls, path: str | Path) -> LoraConfig:
        """Read a TOML config written by :meth:`save` (or by hand)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Config file {p} does not exist.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Config file {p} cannot be read: {exc}.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file {p} is not valid TOML: {exc}.") from None
        section = data.get("lora", data)
        if not isinstance(section, dict):
            raise ConfigError(f"Config file {p} has no [lora] table.")
        return cls.from_dict(section)


def _label(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("label") or f.name.replace("_", " ").capitalize())


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(LoraConfig)}


def field_help(name: str) -> str:
    """The help text of config field ``name``."""
    return str(FIELDS[name].metadata.get("help", ""))


def field_label(name: str) -> str:
    return _label(FIELDS[name])


def field_range(name: str) -> tuple[float | None, float | None]:
    meta = FIELDS[name].metadata
    return meta.get("min"), meta.get("max")


#: Upgrade steps: ``MIGRATIONS[n]`` turns a saved config dict of version ``n`` into one of
#: version ``n + 1`` (rename, split or drop settings; fill new ones whose default would
#: change what an old file meant). Bump :data:`CONFIG_VERSION` and add the step together;
#: ``tests/core/test_config_versions.py`` checks that no step is missing.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a saved config dict to :data:`CONFIG_VERSION`, one step at a time.

    A file without ``config_version`` is version 1 (the files written before versioning).

    Raises:
        ConfigError: the version is not a number, is newer than this LoRA Studio reads, or
            has no upgrade path.
    """
    raw = data.get("config_version", 1)
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"config_version {raw!r} is not a version number.") from None
    if (isinstance(raw, float) and not raw.is_integer()) or version < 1:
        raise ConfigError(f"config_version {raw!r} is not a version number.")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"This config was written by a newer LoRA Studio (config version {version}); "
            f"this one reads up to version {CONFIG_VERSION}."
        )
    while version < CONFIG_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ConfigError(f"No upgrade from config version {version} to {version + 1}.")
        data = step(dict(data))
        version += 1
    data["config_version"] = CONFIG_VERSION
    return data


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = "None" in kind
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ConfigError(f"{_label(f)} must be set.")
    base = kind.replace("| None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered in {"1", "true", "yes", "on"}:
                    return True
                if lowered in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base == "float":
            return float(value)
        if base == "str":
            return str(value)
        enum_type = _ENUMS.get(base)
        if enum_type is not None:
            return enum_type(value.value if isinstance(value, enum.Enum) else str(value).lower())
    except (TypeError, ValueError):
        allowed = ""
        enum_type = _ENUMS.get(base)
        if enum_type is not None:
            allowed = " (one of: " + ", ".join(m.value for m in enum_type) + ")"
        raise ConfigError(f"{_label(f)}: {value!r} is not a valid value{allowed}.") from None
    return value


_ENUMS: dict[str, type[enum.Enum]] = {
    "MixedPrecision": MixedPrecision,
    "ModelFamily": ModelFamily,
    "LrScheduler": LrScheduler,
    "Optimizer": Optimizer,
    "TimestepSampling": TimestepSampling,
}


def enum_for_field(name: str) -> type[enum.Enum] | None:
    """The enum type of config field ``name``, or ``None`` for plain fields."""
    f = FIELDS[name]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return _ENUMS.get(kind.replace("| None", "").strip())


def coerce_config(data: Mapping[str, Any]) -> LoraConfig:
    """Build a validated :class:`LoraConfig` from loosely typed values (strings from a form,
    a CLI or a TOML file)."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"Unknown config setting(s): {', '.join(unknown)}.")
    kwargs = {name: _coerce(FIELDS[name], value) for name, value in data.items()}
    return LoraConfig(**kwargs).validate()


@dataclass(frozen=True)
class Preset:
    """A named starting point for :class:`LoraConfig`."""

    key: str
    label: str
    description: str
    factory: Callable[[], LoraConfig]


PRESETS: dict[str, Preset] = {
    p.key: p
    for p in (
        Preset("sdxl", "SDXL", "Rank 32, 1024 px, 10 epochs, bf16.", LoraConfig.sdxl_preset),
        Preset("sd15", "SD 1.5", "Rank 16, 512 px, 15 epochs, fp16.", LoraConfig.sd15_preset),
        Preset("flux", "Flux", "Rank 16, 1024 px, 10 epochs, bf16.", LoraConfig.flux_preset),
        Preset("sd35", "SD 3.5", "Rank 16, 1024 px, 10 epochs, bf16.", LoraConfig.sd35_preset),
        Preset(
            "fast", "Fast", "Rank 8, 512 px, 5 epochs: quick iteration.", LoraConfig.fast_preset
        ),
        Preset(
            "high_quality",
            "High quality",
            "Rank 64, 768 px, 20 epochs, trains the text encoder too.",
            LoraConfig.high_quality_preset,
        ),
    )
}
