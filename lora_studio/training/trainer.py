"""The local trainer: diffusers + peft + accelerate, headless.

``Trainer(request, callbacks, commands).train()`` runs one LoRA training to the end and
returns a :class:`TrainResult`. It knows nothing about Qt or the CLI: hosts (the GUI's
QThread, the CLI, a test) pass a ``callbacks`` object that receives :class:`Progress`
snapshots and log lines, and a :class:`TrainerCommands` they use to pause, resume or stop
it. Requests are checked after every optimizer step (and between cached images), so
Cancel takes effect within one step; the LoRA as trained so far and a resumable
checkpoint are saved.

The phases:

1. set-up: base model and family, device and precision, images placed in buckets;
2. load and cache: VAE latents of every image and (unless the captions vary or the text
   encoder is trained) caption embeddings, from the disk cache when possible;
3. LoRA layers (peft; DoRA, conv layers) on the denoiser and optionally the CLIP text
   encoders, kept in fp32; optimizer and LR schedule; a checkpoint restored when resuming;
4. the loop: bucketed batches, the family's loss, accumulation, clipping, samples,
   checkpoints, TensorBoard;
5. save: the kohya ``.safetensors`` with ``ss_*`` metadata, optionally diffusers format,
   and the config as TOML.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lora_studio.core.atomic import ensure_writable_dir
from lora_studio.core.base_model import BaseModelRef, ModelKind, resolve_base_model
from lora_studio.core.config import LoraConfig, MixedPrecision, Optimizer
from lora_studio.core.errors import (
    LoraStudioError,
    ModelError,
    TrainingCancelled,
    TrainingError,
)
from lora_studio.core.estimates import plan_steps
from lora_studio.core.jobs import LOG_TAIL, JobStatus, Progress, thin_history
from lora_studio.core.model_lock import MODEL_BUILD_LOCK
from lora_studio.core.request import TrainingRequest
from lora_studio.training import checkpoints as ckpt
from lora_studio.training.cache import RunCaches, latent_key, module_fingerprint, text_key
from lora_studio.training.data import (
    TrainItem,
    batches_per_epoch,
    epoch_batches,
    load_pixels,
    prepare_items,
    varied_caption,
)
from lora_studio.training.export import (
    CONV_TARGETS,
    RunFacts,
    diffusers_adapter_metadata,
    kohya_metadata,
    save_kohya_lora,
    unique_output_path,
)
from lora_studio.training.families import get_family
from lora_studio.training.families.base import LossInputs
from lora_studio.training.graphs import GraphedSteps, graph_blocker
from lora_studio.training.tiny import ensure_builtin_model

if TYPE_CHECKING:
    import torch

    from lora_studio.training.families.base import Components, Family

log = logging.getLogger(__name__)


class TrainerCallbacks(Protocol):
    """What a host receives from a running :class:`Trainer` (called on the trainer's thread)."""

    def on_progress(self, progress: Progress) -> None: ...

    def on_log(self, line: str) -> None: ...


class TrainerCommands:
    """What a host can ask of a running :class:`Trainer`; safe to call from any thread."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused run must wake up to stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a resume (or stop); ``True`` once not paused."""
        return self._running.wait(timeout)


@dataclass(frozen=True)
class TrainResult:
    output_path: Path
    steps: int
    final_loss: float | None
    cancelled: bool
    config_path: Path | None = None
    checkpoint: Path | None = None
    sample_paths: tuple[Path, ...] = ()
    diffusers_path: Path | None = None


@dataclass
class _Run:
    """The state of one run, shared by the trainer's phases."""

    ref: BaseModelRef
    family: Family
    local_path: Path
    device: torch.device
    precision: str
    weight_dtype: torch.dtype
    accelerator: Any
    generator: torch.Generator  # this process's stream: latents, noise, timesteps, captions
    order_generator: torch.Generator  # shared by all processes: the order of batches
    items: list[TrainItem]
    caches: RunCaches
    total_steps: int = 0
    comps: Components = field(init=False)
    latents: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    cached_text: list[dict[str, torch.Tensor]] | None = None
    token_ids: list[torch.Tensor] = field(default_factory=list)
    denoiser: Any = None
    text_encoders: list[Any] = field(default_factory=list)
    trained_encoders: list[int] = field(default_factory=list)
    optimizer: Any = None
    lr_scheduler: Any = None
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    cast_free_layers: list[Any] = field(default_factory=list)  # see redundant_input_casts
    graphs: GraphedSteps | None = None  # steps replayed from CUDA graphs (graphs.py)
    peft_configs: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    epoch_order: list[list[int]] = field(default_factory=list)
    cancelled: bool = False
    resume: ckpt.ResumeState | None = None
    last_checkpoint: Path | None = None
    sample_paths: list[Path] = field(default_factory=list)
    writer: Any = None
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _NullCallbacks:
    def on_progress(self, progress: Progress) -> None:
        pass

    def on_log(self, line: str) -> None:
        pass


def pick_device() -> str:
    """``LORA_STUDIO_DEVICE`` if set, else CUDA, then Apple MPS, then CPU."""
    import torch

    forced = os.environ.get("LORA_STUDIO_DEVICE")
    if forced:
        return forced
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _quiet_libraries() -> None:
    """Keep diffusers/transformers from printing their own progress bars and notices; the
    trainer reports progress itself, and a GUI has no console to print them to."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def launched_processes() -> int:
    """How many processes ``accelerate launch``/``torchrun`` started for this run (1 when
    running on our own)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _fresh_accelerator(mixed_precision: str, grad_accum: int, cpu: bool) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps process-wide singleton state that refuses a second Accelerator with
    # other settings; a desktop app trains many runs in one process, so start each afresh.
    # Under a distributed launcher the process group (partial state) is kept: one run per
    # process there, and the group cannot be set up twice.
    AcceleratorState._reset_state(reset_partial_state=launched_processes() == 1)
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu
    )


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    current = next(module.parameters()).dtype
    if current == dtype:
        module.to(device)
    else:
        module.to(device, dtype=dtype)


def make_optimizer(config: LoraConfig, groups: list[dict[str, Any]], on_cuda: bool) -> Any:
    """The optimizer ``config`` asks for, over the LoRA parameter groups."""
    import torch

    wd = config.weight_decay
    if config.optimizer is Optimizer.ADAMW:
        # Fused: one kernel for every LoRA tensor instead of a loop over hundreds of them
        # (the same update; about 10% of a small model's step on a CPU).
        try:
            # capturable on CUDA: its step count on the GPU, so a CUDA graph can hold it.
            return torch.optim.AdamW(groups, weight_decay=wd, fused=True, capturable=on_cuda)
        except (RuntimeError, ValueError):  # a device or torch without the fused kernel
            return torch.optim.AdamW(groups, weight_decay=wd, capturable=on_cuda)
    if config.optimizer is Optimizer.ADAMW_8BIT:
        if not on_cuda:
            raise TrainingError(
                "AdamW 8-bit needs an NVIDIA GPU (bitsandbytes); on this device choose AdamW "
                "or Adafactor."
            )
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError(
                "AdamW 8-bit needs the bitsandbytes package: pip install bitsandbytes"
            ) from None
        return bnb.optim.AdamW8bit(groups, weight_decay=wd)
    if config.optimizer is Optimizer.PRODIGY:
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise TrainingError(
                "Prodigy needs the prodigyopt package: pip install prodigyopt"
            ) from None
        return Prodigy(groups, weight_decay=wd, safeguard_warmup=True, use_bias_correction=True)
    from transformers.optimization import Adafactor

    return Adafactor(
        groups, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=wd
    )


class Trainer:
    """Trains one LoRA for a :class:`TrainingRequest` (see the module docstring)."""

    def __init__(
        self,
        request: TrainingRequest,
        callbacks: TrainerCallbacks | None = None,
        commands: TrainerCommands | None = None,
        device: str | None = None,
        *,
        resume_from: Path | None = None,
        cache_root: Path | None = None,
    ) -> None:
        self.request = request
        self.config: LoraConfig = request.config.validate()
        self.callbacks = callbacks or _NullCallbacks()
        self.commands = commands or TrainerCommands()
        self._device_name = device
        self._resume_from = resume_from or request.resume_from
        self._cache_root = cache_root
        self._progress = Progress(status=JobStatus.PREPARING)
        self._log_tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._losses: list[float] = []
        self._lrs: list[float] = []  # the learning rate at each step, beside the losses

    # ---- reporting -------------------------------------------------------------------

    def _log(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, message)
        line = time.strftime("%H:%M:%S ") + message
        self._log_tail.append(line)
        try:
            self.callbacks.on_log(line)
        except Exception:  # a broken host must not kill training, but must be seen
            log.exception("on_log callback failed")

    def _publish(self, **changes: Any) -> None:
        changes.setdefault("log_tail", tuple(list(self._log_tail)[-50:]))
        self._progress = self._progress.evolve(**changes)
        try:
            self.callbacks.on_progress(self._progress)
        except Exception:
            log.exception("on_progress callback failed")

    def _check_stop(self) -> None:
        if self.commands.stop_requested:
            raise TrainingCancelled("Training was cancelled.")

    # ---- the run ---------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Run the training; returns where the LoRA was written.

        Raises:
            ModelError, OutputError, TrainingError: with a user-facing message.
            TrainingCancelled: only if cancelled before any step ran (nothing to save).
        """
        started = time.time()
        try:
            return self._train(started)
        except TrainingCancelled:
            self._publish(status=JobStatus.CANCELLED, message="Cancelled before training began")
            raise
        except LoraStudioError as exc:
            self._publish(status=JobStatus.FAILED, error=str(exc), message="Failed")
            raise
        except MemoryError:
            msg = "Out of memory. Lower the resolution, batch size or rank."
            self._publish(status=JobStatus.FAILED, error=msg, message="Failed")
            raise TrainingError(msg) from None
        except RuntimeError as exc:
            text = str(exc)
            if "out of memory" in text.lower():
                msg = (
                    "The GPU ran out of memory. Lower the resolution, batch size or rank, turn "
                    "on gradient checkpointing, or pick the Fast preset."
                )
            else:
                msg = f"Training failed: {text.splitlines()[0] if text else type(exc).__name__}"
            log.exception("training failed")
            self._publish(status=JobStatus.FAILED, error=msg, message="Failed")
            raise TrainingError(msg) from exc

    def _train(self, started: float) -> TrainResult:
        import_training_stack_quietly()
        _quiet_libraries()
        self._publish(status=JobStatus.PREPARING, message="Checking the output folder")
        ensure_writable_dir(self.request.output_dir)
        run = self._setup()
        try:
            self._load_and_cache(run)
            self._attach_lora(run)
            self._restore(run)
            self._plan_graphs(run)
            with lora_input_casts(run.cast_free_layers, enabled=False):
                self._loop(run)
            if run.graphs is not None:
                run.graphs.release()
            return self._save(run, started)
        finally:
            if run.writer is not None:
                run.writer.close()
            run.caches.hashes.save()

    # ---- phase 1: set-up -----------------------------------------------------------------

    def _setup(self) -> _Run:
        import torch

        config = self.config
        resume = ckpt.read_checkpoint(self._resume_from) if self._resume_from else None
        ref = resolve_base_model(self.request.base_model)
        if ref.family is None:
            raise ModelError(f"Cannot tell which model family {ref.ref} belongs to.")
        family = get_family(ref.family)
        import_training_stack_quietly(family)
        local_path = self._materialise(ref)

        device_name = self._device_name or pick_device()
        on_cpu = device_name == "cpu"
        precision = config.mixed_precision.value
        if device_name != "cuda" and config.mixed_precision is not MixedPrecision.NO:
            self._log(
                f"{config.mixed_precision.value} mixed precision needs a CUDA GPU; training "
                f"in fp32 on {device_name}."
            )
            precision = "no"
        accelerator = _fresh_accelerator(precision, config.gradient_accumulation_steps, on_cpu)
        rank, world = accelerator.process_index, accelerator.num_processes
        if world > 1 and rank == 0:
            self._log(f"Distributed training: {world} processes ({accelerator.distributed_type})")
        torch.manual_seed(config.seed)

        items = prepare_items(self.request.dataset.images, config, self._skip)
        if not items:
            raise TrainingError(
                "None of the dataset's images can be read, so there is nothing to train on."
            )
        return _Run(
            ref=ref,
            family=family,
            local_path=local_path,
            device=accelerator.device if on_cpu else torch.device(device_name),
            precision=precision,
            weight_dtype={"fp16": torch.float16, "bf16": torch.bfloat16}.get(
                precision, torch.float32
            ),
            accelerator=accelerator,
            generator=torch.Generator(device="cpu").manual_seed(config.seed + 7919 * (rank + 1)),
            order_generator=torch.Generator(device="cpu").manual_seed(config.seed),
            items=items,
            caches=RunCaches(config.cache_to_disk, self._cache_root),
            resume=resume,
            rank=rank,
            world=world,
        )

    def _skip(self, item: Any, reason: str) -> None:
        self._log(f"Skipping {item.name}: {reason}", logging.WARNING)

    def _materialise(self, ref: BaseModelRef) -> Path:
        if ref.kind is ModelKind.BUILTIN:
            name = ref.ref.split(":", 1)[1]
            if not (ref.path / "model_index.json").exists():
                self._publish(message="Building the built-in tiny model (first run only)")
                self._log(f"Building {ref.ref} in {ref.path}")
            return ensure_builtin_model(name)
        return ref.path

    # ---- phase 2: load and cache ---------------------------------------------------------

    def _load_and_cache(self, run: _Run) -> None:
        import torch

        self._publish(message=f"Loading {run.ref.display_name}")
        self._log(f"Loading base model {run.ref.ref}")
        with MODEL_BUILD_LOCK:  # see core/model_lock.py: a captioner may load meanwhile
            comps = run.family.load(run.ref, run.local_path, run.weight_dtype)
        run.comps = comps
        self._check_stop()
        for module in (comps.vae, *comps.text_encoders, comps.denoiser):
            module.requires_grad_(False)
        # The VAE stays fp32 on the CPU (half precision there is slow and imprecise) and
        # on CUDA too for fp16 (SD VAEs overflow in fp16); bf16 is safe.
        vae_dtype = torch.bfloat16 if run.weight_dtype == torch.bfloat16 else torch.float32
        # Caching first, with only the VAE and text encoders on the device; the denoiser
        # comes after they leave, so the peak is the larger phase, not both together.
        _place(comps.vae, run.device, vae_dtype)
        for encoder in comps.text_encoders:
            _place(encoder, run.device, run.weight_dtype)

        self._cache_latents(run)
        if self.config.uses_text_cache:
            self._cache_text(run)
            for encoder in comps.text_encoders:
                encoder.to("cpu")
        else:
            why = (
                "the text encoder is trained"
                if self.config.train_text_encoder
                else "captions vary (dropout/shuffle)"
            )
            self._log(f"Encoding captions every step: {why}")
        comps.vae.to("cpu")
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        _place(comps.denoiser, run.device, run.weight_dtype)
        self._check_stop()

        # Each process runs its share of every epoch's batches (see _shard).
        per_process = -(-batches_per_epoch(run.items, self.config.batch_size) // run.world)
        plan = plan_steps(
            sum(item.repeats for item in run.items),
            self.config,
            batches_per_epoch=per_process,
        )
        run.total_steps = plan.total_steps
        buckets = sorted({str(item.bucket) for item in run.items})
        self._publish(total_steps=plan.total_steps, total_epochs=plan.epochs)
        self._log(
            f"{len(run.items)} images in {len(buckets)} bucket(s) ({', '.join(buckets[:6])}"
            f"{'...' if len(buckets) > 6 else ''}), {plan.samples_per_epoch} samples per "
            f"epoch, {plan.total_steps} steps ({plan.epochs} epochs) on {run.device.type}"
        )

    def _cache_latents(self, run: _Run) -> None:
        import torch

        vae = run.comps.vae
        dtype = next(vae.parameters()).dtype
        fingerprint = module_fingerprint(vae)
        kept: list[TrainItem] = []
        computed = 0
        for number, item in enumerate(run.items, start=1):
            self._check_stop()
            self._publish(message=f"Caching latents {number}/{len(run.items)}")
            try:
                key = latent_key(
                    run.caches.hashes.hash(item.item.path), item.placement, fingerprint
                )
                entry = run.caches.latents.get(key)
                if entry is None:
                    pixels = load_pixels(item.item.path, item.placement)
                    with torch.no_grad():
                        dist = vae.encode(
                            pixels.unsqueeze(0).to(run.device, dtype=dtype)
                        ).latent_dist
                    entry = {"mean": dist.mean[0].float().cpu(), "std": dist.std[0].float().cpu()}
                    run.caches.latents.put(key, entry)
                    computed += 1
            except (OSError, ValueError, SyntaxError) as exc:
                self._skip(item.item, f"Image cannot be decoded ({exc}).")
                continue
            run.latents.append((entry["mean"], entry["std"]))
            kept.append(item)
        if not kept:
            raise TrainingError(
                "None of the dataset's images can be read, so there is nothing to train on."
            )
        run.items = kept
        self._log(
            f"Latents of {len(kept)} images: {len(kept) - computed} from the cache, "
            f"{computed} encoded"
        )

    def _cache_text(self, run: _Run) -> None:
        import torch

        comps = run.comps
        fingerprint = module_fingerprint(
            comps.text_encoders[0],
            extra=":".join(
                [module_fingerprint(e) for e in comps.text_encoders[1:]]
                + [str(getattr(t, "model_max_length", "")) for t in comps.tokenizers]
                + [type(run.family).__name__]
            ),
        )
        self._publish(message="Caching text embeddings")
        run.cached_text = []
        computed = 0
        for item in run.items:
            key = text_key(item.caption, fingerprint)
            entry = run.caches.text.get(key)
            if entry is None:
                ids = [t.to(run.device) for t in run.family.tokenize(comps, [item.caption])]
                with torch.no_grad():
                    encoded = run.family.encode_text(comps, comps.text_encoders, ids)
                entry = {k: v[0].float().cpu() for k, v in encoded.items()}
                run.caches.text.put(key, entry)
                computed += 1
            run.cached_text.append(entry)
        self._log(
            f"Text embeddings of {len(run.items)} captions: {len(run.items) - computed} from "
            f"the cache, {computed} encoded"
        )

    # ---- phase 3: LoRA layers, optimizer, resume ---------------------------------------------

    def _targets(self, run: _Run) -> list[str]:
        config = self.config
        custom = [t.strip() for t in config.target_modules.split(",") if t.strip()]
        targets = custom or list(run.family.denoiser_target_modules)
        if config.conv_rank and run.family.has_conv_layers:
            targets += [t for t in CONV_TARGETS if t not in targets]
        elif config.conv_rank:
            self._log(f"Conv rank ignored: {run.family.family.label} has no UNet convolutions")
        return targets

    def _lora_config(self, targets: list[str], *, conv: bool) -> Any:
        from peft import LoraConfig as PeftLoraConfig

        config = self.config
        kwargs: dict[str, Any] = {}
        if conv and config.conv_rank:
            # peft patterns are matched against the end of module names.
            kwargs["rank_pattern"] = {t: config.conv_rank for t in CONV_TARGETS}
            kwargs["alpha_pattern"] = {t: config.conv_alpha for t in CONV_TARGETS}
        return PeftLoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            init_lora_weights="gaussian",
            target_modules=targets,
            use_dora=config.use_dora,
            **kwargs,
        )

    def _attach_lora(self, run: _Run) -> None:
        import torch
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import inject_adapter_in_model

        config = self.config
        comps = run.comps
        targets = self._targets(run)
        run.peft_configs["denoiser"] = self._lora_config(targets, conv=run.family.has_conv_layers)
        with MODEL_BUILD_LOCK:  # new parameters: not while another thread loads a model
            try:
                comps.denoiser.add_adapter(run.peft_configs["denoiser"])
            except ValueError as exc:
                raise TrainingError(f"Cannot put LoRA layers on {targets}: {exc}") from None
        trained: list[tuple[torch.nn.Module, float]] = [(comps.denoiser, config.learning_rate)]
        run.text_encoders = list(comps.text_encoders)
        if config.train_text_encoder:
            run.trained_encoders = [
                i for i, prefix in enumerate(run.family.text_encoder_prefixes) if prefix
            ]
            for i in run.trained_encoders:
                # peft's own injection, not transformers' add_adapter: the latter demands
                # newer peft releases than diffusers needs, for the same result.
                peft_config = self._lora_config(
                    list(run.family.text_encoder_target_modules), conv=False
                )
                run.peft_configs[f"text_encoder_{i}"] = peft_config
                with MODEL_BUILD_LOCK:
                    inject_adapter_in_model(peft_config, comps.text_encoders[i])
                trained.append((comps.text_encoders[i], config.effective_text_encoder_lr))
        if config.gradient_checkpointing:
            comps.denoiser.enable_gradient_checkpointing()
            for i in run.trained_encoders:
                encoder = comps.text_encoders[i]
                if hasattr(encoder, "gradient_checkpointing_enable"):
                    encoder.gradient_checkpointing_enable()
        groups = []
        for module, lr in trained:
            if run.precision != "no":
                cast_training_params(module, dtype=torch.float32)
            module.train()
            params = [p for p in module.parameters() if p.requires_grad]
            groups.append({"params": params, "lr": lr})
            run.trainable.extend(params)
        self._log(
            f"Training {sum(p.numel() for p in run.trainable):,} LoRA parameters (rank "
            f"{config.rank}{', DoRA' if config.use_dora else ''}"
            f"{f', conv rank {config.conv_rank}' if config.conv_rank else ''}; "
            f"{config.optimizer.value})"
        )
        optimizer = make_optimizer(config, groups, run.device.type == "cuda")
        run.lr_scheduler = get_scheduler(
            config.lr_scheduler.value,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=max(1, run.total_steps),
            num_cycles=config.lr_cycles,
            power=config.lr_power,
        )
        prepared = run.accelerator.prepare(*[m for m, _ in trained], optimizer)
        run.denoiser = prepared[0]
        for slot, i in enumerate(run.trained_encoders, start=1):
            run.text_encoders[i] = prepared[slot]
        run.optimizer = prepared[-1]
        run.cast_free_layers = redundant_input_casts(
            run.accelerator.unwrap_model(run.denoiser), run.precision
        )
        if config.torch_compile:
            self._compile(run)

    def _compile(self, run: _Run) -> None:
        """torch.compile the denoiser's repeated blocks in place (regional compilation).

        One graph per block shape instead of one for the whole denoiser: on the GPU
        benchmark (docs/benchmarks.md, item 6) SDXL's 70 blocks compiled in ~30 s, where
        the whole UNet had not finished in minutes, and its steps took 0.42 s, not 0.59.
        """
        import torch

        # LORA_STUDIO_COMPILE_BACKEND picks another torch.compile backend (e.g. "eager" or
        # "aot_eager" to debug a graph break without inductor's code generation).
        backend = os.environ.get("LORA_STUDIO_COMPILE_BACKEND", "inductor")
        names = set(run.family.repeated_blocks)
        blocks = [
            module
            for module in run.accelerator.unwrap_model(run.denoiser).modules()
            if type(module).__name__ in names
        ]
        if blocks:
            self._log(
                f"Compiling the denoiser's {len(blocks)} transformer blocks with torch.compile "
                f"({backend}; the first step is slower)"
            )
            for block in blocks:
                block.compile(backend=backend)
        else:
            self._log(
                f"Compiling the denoiser with torch.compile ({backend}; the first step is slow)"
            )
            run.denoiser = torch.compile(run.denoiser, backend=backend)

    def _fingerprint(self, run: _Run) -> dict[str, Any]:
        config = self.config
        dataset = [
            [
                self.request.dataset.relative_name(item.item),
                item.repeats,
                str(item.bucket),
            ]
            for item in run.items
        ]
        return {
            "family": run.family.family.value,
            "base_model_version": run.ref.version,
            "rank": config.rank,
            "alpha": config.alpha,
            "target_modules": ",".join(self._targets(run)),
            "use_dora": config.use_dora,
            "conv_rank": config.conv_rank,
            "conv_alpha": config.conv_alpha,
            "train_text_encoder": config.train_text_encoder,
            "batch_size": config.batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "dataset": dataset,
        }

    def _adapter_modules(self, run: _Run) -> dict[str, torch.nn.Module]:
        unwrap = run.accelerator.unwrap_model
        modules = {"denoiser": unwrap(run.comps.denoiser)}
        for i in run.trained_encoders:
            modules[f"text_encoder_{i}"] = unwrap(run.comps.text_encoders[i])
        return modules

    def _restore(self, run: _Run) -> None:
        state = run.resume
        if state is None:
            return
        ckpt.check_compatible(state.fingerprint, self._fingerprint(run))
        ckpt.load_training_state(
            state,
            modules=self._adapter_modules(run),
            optimizer=run.optimizer,
            lr_scheduler=run.lr_scheduler,
            generator=run.generator,
            order_generator=run.order_generator,
        )
        run.step, run.epoch = state.step, state.epoch
        run.batch_index, run.epoch_order = state.batch_index, state.epoch_batches
        self._losses = list(state.losses)
        self._lrs = [math.nan] * len(self._losses)  # checkpoints keep no LR series
        changed = [
            name
            for name, value in self.config.to_dict().items()
            if state.config.to_dict().get(name) != value and name not in ("name",)
        ]
        self._log(
            f"Resumed from {state.folder.name} (step {state.step}, epoch {state.epoch})"
            + (f"; changed since: {', '.join(changed)}" if changed else "")
        )

    # ---- phase 4: the loop ---------------------------------------------------------------

    def _batch_inputs(self, run: _Run, batch: list[int]) -> LossInputs:
        import torch

        config = self.config
        device = run.device
        means = torch.stack([run.latents[i][0] for i in batch])
        stds = torch.stack([run.latents[i][1] for i in batch])
        eps = torch.randn(means.shape, generator=run.generator)
        latents = run.family.scale_latents(run.comps, means + stds * eps).to(device)
        if run.cached_text is not None:
            cond = {
                key: torch.stack([run.cached_text[i][key] for i in batch]).to(
                    device, dtype=run.weight_dtype
                )
                for key in run.cached_text[batch[0]]
            }
        else:
            captions = [varied_caption(run.items[i].caption, config, run.generator) for i in batch]
            ids = [t.to(device) for t in run.family.tokenize(run.comps, captions)]
            with contextlib.nullcontext() if run.trained_encoders else _no_grad():
                encoded = run.family.encode_text(run.comps, run.text_encoders, ids)
            cond = {k: v.to(dtype=run.weight_dtype) for k, v in encoded.items()}
        meta = torch.tensor([run.items[i].meta for i in batch], dtype=torch.float32).to(device)
        return LossInputs(
            comps=run.comps,
            denoiser=run.denoiser,
            latents=latents,
            cond=cond,
            image_meta=meta,
            generator=run.generator,
            config=config,
            weight_dtype=run.weight_dtype,
            autocast=run.accelerator.autocast,
        )

    def _loop(self, run: _Run) -> None:
        import torch

        config = self.config
        accelerator = run.accelerator
        trained = [run.denoiser] + [run.text_encoders[i] for i in run.trained_encoders]
        self._open_tensorboard(run)
        loop_started = time.time()
        start_step = run.step
        self._publish(status=JobStatus.RUNNING, message="Training", step=run.step)
        self._log(
            "Training started" if not start_step else f"Training resumed at step {start_step}"
        )
        micro_losses: list[float] = []
        while run.step < run.total_steps:
            if run.batch_index >= len(run.epoch_order):
                run.epoch += 1
                run.epoch_order = _shard(
                    epoch_batches(run.items, config.batch_size, run.order_generator),
                    run.rank,
                    run.world,
                )
                run.batch_index = 0
            batch = run.epoch_order[run.batch_index]
            run.batch_index += 1
            with accelerator.accumulate(*trained):
                inputs = self._batch_inputs(run, batch)
                if run.graphs is not None:
                    loss = run.graphs.step(inputs)
                    _check_finite(loss, run.step)  # (after the update: the run ends here)
                else:
                    loss = self._eager_step(run, inputs)
                micro_losses.append(float(loss.detach().item()))
            if not accelerator.sync_gradients:
                continue
            run.lr_scheduler.step()
            run.step += 1
            step_loss = sum(micro_losses) / len(micro_losses)
            if run.world > 1:  # the loss of the step is the mean over all processes
                step_loss = float(
                    accelerator.reduce(torch.tensor([step_loss], device=run.device), "mean")[0]
                )
            self._losses.append(step_loss)
            micro_losses.clear()
            self._report_step(run, loop_started, start_step)
            epoch_done = run.batch_index >= len(run.epoch_order)
            if (
                epoch_done
                and config.save_every_n_epochs
                and run.epoch % config.save_every_n_epochs == 0
                and run.step < run.total_steps
            ):
                self._checkpoint(run)
            if self._after_step(run):
                return

    def _eager_step(self, run: _Run, inputs: LossInputs) -> torch.Tensor:
        """Loss, backward, clipping and the optimizer's update, launched op by op."""
        accelerator = run.accelerator
        loss = run.family.loss(inputs)
        _check_finite(loss, run.step)
        accelerator.backward(loss)
        if accelerator.sync_gradients and self.config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.trainable, self.config.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        return loss

    def _plan_graphs(self, run: _Run) -> None:
        """Replay the steps from CUDA graphs where this run allows it (see graphs.py)."""
        blocker = graph_blocker(
            self.config,
            run.family,
            device=run.device.type,
            processes=run.world,
        )
        if blocker is None:
            run.graphs = GraphedSteps(
                run.family,
                run.trainable,
                run.optimizer,
                self.config.max_grad_norm,
                lambda inputs: self._eager_step(run, inputs),
                self._log,
            )
        elif run.device.type == "cuda" and self.config.cuda_graphs:
            self._log(f"CUDA graphs not used: {blocker}")

    def _after_step(self, run: _Run) -> bool:
        """Samples, checkpoints, pause and stop after an optimizer step; ``True`` to stop."""
        config = self.config
        if (
            config.sample_every_n_steps
            and config.sample_prompt_list
            and run.step % config.sample_every_n_steps == 0
            and run.step < run.total_steps
        ):
            self._samples(run)
        if config.save_every_n_steps and run.step % config.save_every_n_steps == 0:
            self._checkpoint(run)
        if run.world > 1:
            return self._after_step_distributed(run)
        if self.commands.paused and not self.commands.stop_requested:
            self._log(f"Paused after step {run.step}")
            self._publish(status=JobStatus.PAUSED, message="Paused")
            while not self.commands.wait_while_paused(0.25):
                pass
            if not self.commands.stop_requested:
                self._log("Resumed")
                self._publish(status=JobStatus.RUNNING, message=f"Training: epoch {run.epoch}")
        if self.commands.stop_requested:
            run.cancelled = True
            self._log(f"Cancel requested: stopping after step {run.step}")
            self._checkpoint(run)
            return True
        return False

    def _after_step_distributed(self, run: _Run) -> bool:
        """Stop together: every process must leave the loop after the same step, or the
        others would wait for it forever. (Pausing is not offered across processes.)"""
        import torch

        wanted = torch.tensor([1.0 if self.commands.stop_requested else 0.0], device=run.device)
        if float(run.accelerator.reduce(wanted, "sum")[0]) == 0:
            return False
        run.cancelled = True
        self._log(f"Cancel requested: stopping after step {run.step}")
        self._checkpoint(run)
        return True

    def _report_step(self, run: _Run, loop_started: float, start_step: int) -> None:
        step, total, loss = run.step, run.total_steps, self._losses[-1]
        elapsed = time.time() - loop_started
        done = step - start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        eta = (total - step) / rate if rate else None
        lr = float(run.lr_scheduler.get_last_lr()[0])
        self._lrs.append(lr)
        if step == 1 or step == total or step % max(1, total // 20) == 0:
            self._log(f"step {step}/{total}  loss {loss:.4f}  lr {lr:.2e}")
        if run.writer is not None:
            run.writer.add_scalar("loss", loss, step)
            run.writer.add_scalar("learning_rate", lr, step)
        self._publish(
            step=step,
            epoch=run.epoch,
            loss=loss,
            loss_history=thin_history(self._losses),
            learning_rate=lr,
            lr_history=thin_history(self._lrs),
            elapsed_s=elapsed,
            eta_s=eta,
            samples_per_s=rate * self.config.effective_batch_size if rate else None,
            message=f"Training: epoch {run.epoch}",
        )

    def _open_tensorboard(self, run: _Run) -> None:
        if not self.config.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._log(
                "TensorBoard logs need the tensorboard package (pip install tensorboard); "
                "training goes on without them.",
                logging.WARNING,
            )
            return
        folder = self.request.output_dir / f"{self.config.name}-logs"
        run.writer = SummaryWriter(log_dir=str(folder))
        self._log(f"TensorBoard logs in {folder}")

    def _samples(self, run: _Run) -> None:
        from lora_studio.training.samples import draw_samples

        prompts = self.config.sample_prompt_list
        if not prompts or not run.is_main:
            return
        self._publish(message=f"Drawing {len(prompts)} sample image(s)")
        folder = self.request.output_dir / f"{self.config.name}-samples"
        try:
            # The pipeline may run parts of the model outside autocast: casts back on.
            with eager_blocks(), lora_input_casts(run.cast_free_layers, enabled=True):
                paths = draw_samples(
                    run.family,
                    run.comps,
                    run.accelerator.unwrap_model(run.denoiser),
                    run.text_encoders,
                    prompts,
                    folder=folder,
                    step=run.step,
                    size=self.config.resolution,
                    inference_steps=self.config.sample_inference_steps,
                    seed=self.config.seed,
                    device=run.device,
                )
        except (OSError, RuntimeError, ValueError) as exc:  # a sample must not end the run
            self._log(f"Could not draw samples at step {run.step}: {exc}", logging.WARNING)
            return
        run.sample_paths.extend(paths)
        self._log(f"Samples at step {run.step}: {', '.join(p.name for p in paths)}")
        self._publish(
            sample_paths=tuple(str(p) for p in paths), message=f"Training: epoch {run.epoch}"
        )

    def _checkpoint(self, run: _Run) -> None:
        from peft.utils import get_peft_model_state_dict

        if not run.is_main:
            run.accelerator.wait_for_everyone()
            return

        root = ckpt.checkpoints_root(self.request.output_dir, self.config.name)
        adapters = {
            owner: get_peft_model_state_dict(module)
            for owner, module in self._adapter_modules(run).items()
        }
        run.last_checkpoint = ckpt.save_checkpoint(
            root,
            step=run.step,
            epoch=run.epoch,
            batch_index=run.batch_index,
            epoch_batches=run.epoch_order,
            losses=self._losses,
            config=self.config,
            fingerprint=self._fingerprint(run),
            adapters=adapters,
            optimizer=run.optimizer,
            lr_scheduler=run.lr_scheduler,
            generator=run.generator,
            order_generator=run.order_generator,
            keep_last=self.config.keep_last_checkpoints,
        )
        self._log(f"Checkpoint saved: {run.last_checkpoint}")
        if run.world > 1:
            run.accelerator.wait_for_everyone()

    # ---- phase 5: save -----------------------------------------------------------------

    def _save(self, run: _Run, started: float) -> TrainResult:
        from peft.utils import get_peft_model_state_dict

        config = self.config
        if not run.is_main:  # the main process writes the files
            run.accelerator.wait_for_everyone()
            self._publish(
                status=JobStatus.CANCELLED if run.cancelled else JobStatus.SUCCEEDED,
                message="Done by the main process",
                eta_s=0.0,
            )
            result = TrainResult(
                output_path=self.request.output_dir / f"{config.name}.safetensors",
                steps=run.step,
                final_loss=self._losses[-1] if self._losses else None,
                cancelled=run.cancelled,
            )
            self._release(run)
            return result
        if config.sample_prompt_list and not run.cancelled:
            self._samples(run)
        self._publish(status=JobStatus.SAVING, message="Saving the LoRA")
        modules = self._adapter_modules(run)
        denoiser_state = get_peft_model_state_dict(modules["denoiser"])
        encoder_states: list[dict[str, Any] | None] = []
        tensors = dict(run.family.kohya_keys(denoiser_state, config))
        for i in range(len(run.family.text_encoder_prefixes)):
            state = (
                get_peft_model_state_dict(modules[f"text_encoder_{i}"])
                if i in run.trained_encoders
                else None
            )
            encoder_states.append(state)
            if state is not None:
                tensors.update(run.family.text_encoder_kohya_keys(i, state, config))
        name = f"{config.name}-step{run.step:05d}" if run.cancelled else config.name
        out_path = unique_output_path(self.request.output_dir, name)
        facts = RunFacts(
            base_model_version=run.ref.version or run.family.kohya_version,
            base_model_name=run.ref.display_name,
            num_train_images=len(run.items),
            num_reg_images=0,
            max_train_steps=run.total_steps,
            steps_done=run.step,
            epochs=run.epoch,
            started_at=started,
            finished_at=time.time(),
            mixed_precision=run.precision,
        )
        meta = kohya_metadata(config, self.request.dataset, facts, out_path.stem)
        save_kohya_lora(out_path, tensors, meta)
        diffusers_path = None
        if config.save_diffusers_format:
            folder = out_path.with_name(f"{out_path.stem}-diffusers")
            metadata = {k: diffusers_adapter_metadata(v) for k, v in run.peft_configs.items()}
            diffusers_path = run.family.save_diffusers_lora(
                folder, denoiser_state, encoder_states, metadata
            )
            self._log(f"Diffusers-format LoRA: {diffusers_path}")
        config_path: Path | None = out_path.with_suffix(".toml")
        try:
            config.replace(name=out_path.stem).save(config_path)
        except OSError:
            config_path = None  # the LoRA itself is saved; a missing sidecar is not fatal
        verb = "Cancelled; saved the LoRA so far to" if run.cancelled else "Saved"
        self._log(f"{verb} {out_path}")
        self._publish(
            status=JobStatus.CANCELLED if run.cancelled else JobStatus.SUCCEEDED,
            message="Cancelled" if run.cancelled else "Done",
            output_path=str(out_path),
            eta_s=0.0,
        )
        if run.world > 1:
            run.accelerator.wait_for_everyone()
        result = TrainResult(
            output_path=out_path,
            steps=run.step,
            final_loss=self._losses[-1] if self._losses else None,
            cancelled=run.cancelled,
            config_path=config_path,
            checkpoint=run.last_checkpoint,
            sample_paths=tuple(run.sample_paths),
            diffusers_path=diffusers_path,
        )
        self._release(run)
        return result

    def _release(self, run: _Run) -> None:
        """Drop the run's references to models and optimizer state.

        Not ``accelerator.free_memory()``: that runs ``gc.collect()`` on this (worker)
        thread, which could finalise the host's Qt objects off the GUI thread.
        """
        import torch

        with leaving_process_group(run.world > 1):
            run.accelerator = None
            run.denoiser = run.optimizer = run.lr_scheduler = None
            run.text_encoders = []
            run.trainable.clear()
            run.latents = []
            run.cached_text = None
            del run.comps
        if run.device.type == "cuda":
            torch.cuda.empty_cache()


@contextlib.contextmanager
def leaving_process_group(distributed: bool = True) -> Iterator[None]:
    """Close the run's process group; drop the DDP model and whatever else uses the group
    inside the ``with`` (a gloo/NCCL group left open aborts the process at exit).

    Every process first meets once more, through a barrier whose work this thread holds
    until the group's last user is gone. gloo's worker thread drops its reference to a
    finished work while holding the group's lock, and when that reference is the last one
    it takes the GIL to free what the work captured; the group's destructor runs with the
    GIL held and waits for that lock. Right after a plain barrier (the save's
    ``wait_for_everyone``) the two deadlocked: a CPU run of two processes hung after
    writing its LoRA (a two-process loop of step, barrier, teardown hung within 20
    rounds; tests/training/test_process_group.py). Held here, the last work is freed on
    this thread, after the group.
    """
    import torch

    if not (distributed and torch.distributed.is_initialized()):
        yield
        return
    last_barrier = torch.distributed.barrier(async_op=True)
    if last_barrier is not None:
        last_barrier.wait()
    torch.distributed.destroy_process_group()
    try:
        yield
    finally:
        del last_barrier


def _shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's share of an epoch's batches. Every process gets the same number
    (the list is padded by wrapping around, as torch's DistributedSampler does), so they
    all reach each optimizer step together."""
    if world == 1:
        return batches
    per_process = -(-len(batches) // world)
    padded = batches + batches[: per_process * world - len(batches)]
    return padded[rank::world]


_QUIETLY_IMPORTED: set[str] = set()


def import_training_stack_quietly(family: Family | None = None) -> None:
    """Import what a run needs — transformers, diffusers, accelerate, peft and, given a
    ``family``, its pipeline and with it the model classes its :meth:`~Family.load`
    uses — with the garbage collector paused, then freeze the heap.

    Those imports make hundreds of thousands of objects, and the collector's full passes
    over them as they arrive hold the GIL: on the tiny SD 1.5, passes of 10-108 ms at the
    start of the first run, each a stall of the window's thread. Paused, there are none;
    frozen, later passes skip what was imported, which lives as long as the process (as
    ``gui/heap.py`` does after the app's own imports). Once per process (and family).
    Garbage cycles alive at the freeze would wait for the process to end, so the window
    collects them just before it starts a run (``gui/controller.py``); a command-line
    run's end is near anyway.
    """
    key = family.pipeline_class_name if family is not None else ""
    if key in _QUIETLY_IMPORTED:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        import accelerate  # noqa: F401
        import diffusers
        import diffusers.optimization  # noqa: F401
        import diffusers.training_utils  # noqa: F401
        import peft  # noqa: F401
        import transformers  # noqa: F401

        if family is not None:
            getattr(diffusers, family.pipeline_class_name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    _QUIETLY_IMPORTED.add(key)


def eager_blocks() -> Any:
    """Run compiled blocks eagerly: sampling (no grad, a doubled batch for guidance) would
    otherwise compile them a second time, for a few images."""
    import torch

    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()


def _check_finite(loss: torch.Tensor, step: int) -> None:
    import torch

    if not torch.isfinite(loss):
        raise TrainingError(
            f"The loss became {loss.item()} at step {step + 1}. Lower the learning rate, "
            f"or train in bf16/fp32 instead of fp16."
        )


def redundant_input_casts(denoiser: Any, precision: str) -> list[Any]:
    """The denoiser's plain LoRA layers whose input casts do nothing under mixed precision.

    peft casts each LoRA layer's input to the LoRA weights' dtype (fp32, as they are
    trained) before the two small products; under bf16/fp16 autocast those products cast
    it straight back to half precision, so the round trip costs two kernels forward and two
    backward per layer and changes no value (half -> fp32 -> half is exact). On SDXL that is
    ~2,800 of a step's ~12,600 kernels, on a step bound by launching kernels
    (docs/benchmarks.md, item 6). Empty in fp32, where nothing is cast; DoRA layers (and
    other peft variants, which compute more in the input's dtype) keep their casts.
    """
    if precision == "no":
        return []
    from peft.tuners.lora import LoraLayer

    return [
        module
        for module in denoiser.modules()
        if isinstance(module, LoraLayer)
        and hasattr(module, "cast_input_dtype_enabled")
        and not getattr(module, "lora_variant", None)
        and not any(getattr(module, "use_dora", {}).values())
    ]


@contextlib.contextmanager
def lora_input_casts(layers: list[Any], *, enabled: bool) -> Iterator[None]:
    """peft's input casts on ``layers`` switched on or off for a block, then as before."""
    before = [layer.cast_input_dtype_enabled for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = enabled
    try:
        yield
    finally:
        for layer, value in zip(layers, before, strict=True):
            layer.cast_input_dtype_enabled = value


def _no_grad() -> Any:
    import torch

    return torch.no_grad()


def run_training(
    request: TrainingRequest,
    callbacks: TrainerCallbacks | None = None,
    commands: TrainerCommands | None = None,
    *,
    resume_from: Path | None = None,
) -> TrainResult:
    """Convenience: build a :class:`Trainer` and run it."""
    return Trainer(request, callbacks, commands, resume_from=resume_from).train()
