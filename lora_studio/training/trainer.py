"""The local trainer: diffusers + peft + accelerate, headless.

``Trainer(request, callbacks, commands).train()`` runs one LoRA training to the end and
returns a :class:`TrainResult`. It knows nothing about Qt or the CLI: hosts (the GUI's
QThread, the CLI, a test) pass a ``callbacks`` object that receives :class:`Progress`
snapshots and log lines, and a :class:`TrainerCommands` they use to ask it to stop. The
stop request is checked after every optimizer step (and between cached images), so Cancel
takes effect within one step; the LoRA as trained so far is saved.

The loop (one optimizer step):
    latents  ~ cached VAE posterior  (sampled, x scaling_factor)
    noise    ~ N(0, I);  t ~ U{0, T-1}
    noisy    = scheduler.add_noise(latents, noise, t)
    target   = noise (epsilon) | scheduler.get_velocity(latents, noise, t) (v-prediction)
    loss     = MSE(unet(noisy, t, text_embedding), target)
Only the LoRA parameters (peft, fp32) are trained, with AdamW.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lora_studio.core.atomic import ensure_writable_dir
from lora_studio.core.base_model import BaseModelRef, ModelKind, resolve_base_model
from lora_studio.core.config import LoraConfig, MixedPrecision
from lora_studio.core.dataset import ImageItem, check_image, training_caption
from lora_studio.core.errors import (
    ModelError,
    OutputError,
    TrainingCancelled,
    TrainingError,
)
from lora_studio.core.estimates import plan_steps
from lora_studio.core.jobs import LOG_TAIL, MAX_HISTORY, JobStatus, Progress
from lora_studio.core.request import TrainingRequest
from lora_studio.training.export import (
    RunFacts,
    kohya_metadata,
    peft_to_kohya,
    save_kohya_lora,
    unique_output_path,
)
from lora_studio.training.families import get_family
from lora_studio.training.images import load_training_image
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

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()


@dataclass(frozen=True)
class TrainResult:
    output_path: Path
    steps: int
    final_loss: float | None
    cancelled: bool
    config_path: Path | None = None


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
    generator: torch.Generator
    items: list[ImageItem]
    total_steps: int
    comps: Components = field(init=False)
    latents_mean: torch.Tensor = field(init=False)
    latents_std: torch.Tensor = field(init=False)
    input_ids: torch.Tensor = field(init=False)
    cached_embeddings: torch.Tensor | None = None
    denoiser: Any = None
    text_encoder: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    step: int = 0
    epoch: int = 0
    cancelled: bool = False


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


def _fresh_accelerator(mixed_precision: str, grad_accum: int, cpu: bool) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps process-wide singleton state that refuses a second Accelerator with
    # other settings; a desktop app trains many runs in one process, so start each afresh.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu
    )


class Trainer:
    """Trains one LoRA for a :class:`TrainingRequest` (see the module docstring)."""

    def __init__(
        self,
        request: TrainingRequest,
        callbacks: TrainerCallbacks | None = None,
        commands: TrainerCommands | None = None,
        device: str | None = None,
    ) -> None:
        self.request = request
        self.config: LoraConfig = request.config.validate()
        self.callbacks = callbacks or _NullCallbacks()
        self.commands = commands or TrainerCommands()
        self._device_name = device
        self._progress = Progress(status=JobStatus.PREPARING)
        self._log_tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._losses: list[float] = []

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
        except (ModelError, OutputError, TrainingError) as exc:
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
                    "The GPU ran out of memory. Lower the resolution, batch size or rank, "
                    "or pick the Fast preset."
                )
            else:
                msg = f"Training failed: {text.splitlines()[0] if text else type(exc).__name__}"
            log.exception("training failed")
            self._publish(status=JobStatus.FAILED, error=msg, message="Failed")
            raise TrainingError(msg) from exc

    def _train(self, started: float) -> TrainResult:
        _quiet_libraries()
        self._publish(status=JobStatus.PREPARING, message="Checking the output folder")
        ensure_writable_dir(self.request.output_dir)
        run = self._setup()
        self._load_and_cache(run)
        self._attach_lora(run)
        self._loop(run)
        return self._save(run, started)

    def _setup(self) -> _Run:
        """Resolve the model and device, pick the images, plan the steps."""
        import torch

        config = self.config
        ref = resolve_base_model(self.request.base_model)
        if ref.family is None:
            raise ModelError(f"Cannot tell which model family {ref.ref} belongs to.")
        family = get_family(ref.family)
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
        torch.manual_seed(config.seed)

        items = self._usable_items()
        plan = plan_steps(sum(item.repeats or config.repeats for item in items), config)
        self._publish(total_steps=plan.total_steps, total_epochs=plan.epochs)
        self._log(
            f"{len(items)} images, {plan.samples_per_epoch} samples per epoch, "
            f"{plan.total_steps} steps ({plan.epochs} epochs) at {config.resolution} px on "
            f"{device_name}"
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
            generator=torch.Generator(device="cpu").manual_seed(config.seed),
            items=items,
            total_steps=plan.total_steps,
        )

    def _load_and_cache(self, run: _Run) -> None:
        """Load the model; encode every image (and, unless the text encoder is trained,
        every caption) once; move what is no longer needed off the GPU."""
        import torch

        self._publish(message=f"Loading {run.ref.display_name}")
        self._log(f"Loading base model {run.ref.ref}")
        comps = run.family.load(run.ref, run.local_path)
        run.comps = comps
        self._check_stop()
        for module in (comps.vae, comps.text_encoder, comps.denoiser):
            module.requires_grad_(False)
        # The VAE stays fp32 on the CPU (half precision there is slow and imprecise).
        vae_dtype = torch.float32 if run.device.type == "cpu" else run.weight_dtype
        _place(comps.vae, run.device, vae_dtype)
        _place(comps.denoiser, run.device, run.weight_dtype)
        _place(comps.text_encoder, run.device, run.weight_dtype)

        run.latents_mean, run.latents_std = self._cache_latents(comps, run.items, run.device)
        captions = [training_caption(item, self.config.trigger_word) for item in run.items]
        run.input_ids = run.family.tokenize(comps, captions)
        if not self.config.train_text_encoder:
            self._publish(message="Caching text embeddings")
            with torch.no_grad():
                chunks = [
                    run.family.encode_tokens(comps.text_encoder, ids.to(run.device)).cpu()
                    for ids in run.input_ids.split(8)
                ]
            run.cached_embeddings = torch.cat(chunks)
            comps.text_encoder.to("cpu")
        comps.vae.to("cpu")
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        self._check_stop()

    def _lora_config(self, targets: tuple[str, ...]) -> Any:
        from peft import LoraConfig as PeftLoraConfig

        return PeftLoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.alpha,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )

    def _attach_lora(self, run: _Run) -> None:
        """peft LoRA layers (fp32) on the denoiser, and on the text encoder if asked;
        AdamW and the LR schedule over them."""
        import torch
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import inject_adapter_in_model

        config = self.config
        comps = run.comps
        comps.denoiser.add_adapter(self._lora_config(run.family.unet_target_modules))
        trained: list[tuple[torch.nn.Module, float]] = [(comps.denoiser, config.learning_rate)]
        if config.train_text_encoder:
            # peft's own injection, not transformers' add_adapter: the latter demands
            # newer peft releases than diffusers needs, for the same result.
            inject_adapter_in_model(
                self._lora_config(run.family.text_encoder_target_modules), comps.text_encoder
            )
            trained.append((comps.text_encoder, config.effective_text_encoder_lr))
        param_groups = []
        for module, lr in trained:
            if run.precision != "no":
                cast_training_params(module, dtype=torch.float32)
            module.train()
            params = [p for p in module.parameters() if p.requires_grad]
            param_groups.append({"params": params, "lr": lr})
            run.trainable.extend(params)
        self._log(
            f"Training {sum(p.numel() for p in run.trainable):,} LoRA parameters "
            f"(rank {config.rank})"
        )
        optimizer = torch.optim.AdamW(param_groups, weight_decay=1e-2)
        run.lr_scheduler = get_scheduler(
            config.lr_scheduler.value,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=max(1, run.total_steps),
        )
        prepared = run.accelerator.prepare(*[m for m, _ in trained], optimizer)
        run.denoiser = prepared[0]
        run.text_encoder = prepared[1] if config.train_text_encoder else comps.text_encoder
        run.optimizer = prepared[-1]

    def _loop(self, run: _Run) -> None:
        """Optimizer steps until ``total_steps`` or a stop request."""
        import torch

        config = self.config
        accelerator = run.accelerator
        trained = [run.denoiser] + ([run.text_encoder] if config.train_text_encoder else [])
        samples = [
            index
            for index, item in enumerate(run.items)
            for _ in range(item.repeats or config.repeats)
        ]
        loop_started = time.time()
        self._publish(status=JobStatus.RUNNING, message="Training", step=0)
        self._log("Training started")
        micro_losses: list[float] = []
        while run.step < run.total_steps:
            run.epoch += 1
            order = torch.randperm(len(samples), generator=run.generator).tolist()
            for start in range(0, len(order), config.batch_size):
                batch = torch.tensor([samples[i] for i in order[start : start + config.batch_size]])
                with accelerator.accumulate(*trained):
                    loss = self._loss(run, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(run.trainable, 1.0)
                    run.optimizer.step()
                    run.optimizer.zero_grad(set_to_none=True)
                    micro_losses.append(float(loss.detach().item()))
                if not accelerator.sync_gradients:
                    continue
                run.lr_scheduler.step()
                run.step += 1
                self._losses.append(sum(micro_losses) / len(micro_losses))
                micro_losses.clear()
                self._report_step(run, loop_started)
                if self.commands.stop_requested:
                    run.cancelled = True
                    self._log(f"Cancel requested: stopping after step {run.step}")
                    return
                if run.step >= run.total_steps:
                    return

    def _loss(self, run: _Run, batch: torch.Tensor) -> torch.Tensor:
        """The noise-prediction (or velocity) MSE of one batch."""
        import torch

        comps, device, gen = run.comps, run.device, run.generator
        scheduler = comps.noise_scheduler
        scaling = float(getattr(comps.vae.config, "scaling_factor", 0.18215))
        mean = run.latents_mean[batch].to(device)
        std = run.latents_std[batch].to(device)
        latents = (mean + std * torch.randn(mean.shape, generator=gen).to(device)) * scaling
        noise = torch.randn(latents.shape, generator=gen).to(device)
        num_timesteps = int(scheduler.config.num_train_timesteps)
        timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), generator=gen).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if comps.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if run.cached_embeddings is not None:
            cond = run.cached_embeddings[batch].to(device, dtype=run.weight_dtype)
        else:
            cond = run.family.encode_tokens(run.text_encoder, run.input_ids[batch].to(device))
        with run.accelerator.autocast():
            pred = run.denoiser(noisy.to(run.weight_dtype), timesteps, cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        if not torch.isfinite(loss):
            raise TrainingError(
                f"The loss became {loss.item()} at step {run.step + 1}. Lower the learning "
                f"rate, or train in bf16/fp32 instead of fp16."
            )
        return loss

    def _save(self, run: _Run, started: float) -> TrainResult:
        """Write the kohya LoRA (and its config beside it); report the outcome."""
        from peft.utils import get_peft_model_state_dict

        config = self.config
        self._publish(status=JobStatus.SAVING, message="Saving the LoRA")
        unwrap = run.accelerator.unwrap_model
        te_state = (
            get_peft_model_state_dict(unwrap(run.text_encoder))
            if config.train_text_encoder
            else None
        )
        tensors = peft_to_kohya(
            get_peft_model_state_dict(unwrap(run.denoiser)),
            te_state,
            alpha=config.alpha,
            text_encoder_prefix=run.family.text_encoder_prefix,
        )
        name = f"{config.name}-step{run.step:05d}" if run.cancelled else config.name
        out_path = unique_output_path(self.request.output_dir, name)
        facts = RunFacts(
            base_model_version=run.ref.version or "sd_v1",
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
        self._release(run)
        final_loss = self._losses[-1] if self._losses else None
        return TrainResult(out_path, run.step, final_loss, run.cancelled, config_path)

    def _release(self, run: _Run) -> None:
        """Drop the run's references to models and optimizer state.

        Not ``accelerator.free_memory()``: that runs ``gc.collect()`` on this (worker)
        thread, which could finalise the host's Qt objects off the GUI thread.
        """
        import torch

        run.accelerator = None
        run.denoiser = run.text_encoder = run.optimizer = run.lr_scheduler = None
        run.trainable.clear()
        del run.comps
        if run.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- pieces ------------------------------------------------------------------------

    def _materialise(self, ref: BaseModelRef) -> Path:
        if ref.kind is ModelKind.BUILTIN:
            name = ref.ref.split(":", 1)[1]
            if not (ref.path / "model_index.json").exists():
                self._publish(message="Building the built-in tiny model (first run only)")
                self._log(f"Building {ref.ref} in {ref.path}")
            return ensure_builtin_model(name)
        return ref.path

    def _usable_items(self) -> list[ImageItem]:
        items: list[ImageItem] = []
        for item in self.request.dataset.images:
            reason = check_image(item.path)
            if reason:
                self._log(f"Skipping {item.name}: {reason}", logging.WARNING)
                continue
            items.append(item)
        if not items:
            raise TrainingError(
                "None of the dataset's images can be read, so there is nothing to train on."
            )
        return items

    def _cache_latents(
        self, comps: Components, items: list[ImageItem], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        means: list[torch.Tensor] = []
        stds: list[torch.Tensor] = []
        vae = comps.vae
        dtype = next(vae.parameters()).dtype
        for number, item in enumerate(items, start=1):
            self._check_stop()
            self._publish(message=f"Caching latents {number}/{len(items)}")
            pixels = load_training_image(item.path, self.config.resolution)
            with torch.no_grad():
                dist = vae.encode(pixels.unsqueeze(0).to(device, dtype=dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        self._log(f"Cached latents of {len(items)} images")
        return torch.cat(means), torch.cat(stds)

    def _report_step(self, run: _Run, loop_started: float) -> None:
        step, total, loss = run.step, run.total_steps, self._losses[-1]
        elapsed = time.time() - loop_started
        rate = step / elapsed if elapsed > 0 else None
        eta = (total - step) / rate if rate else None
        history = self._losses
        if len(history) > MAX_HISTORY:
            stride = math.ceil(len(history) / MAX_HISTORY)
            history = history[::stride]
        lr = float(run.lr_scheduler.get_last_lr()[0])
        if step == 1 or step == total or step % max(1, total // 20) == 0:
            self._log(f"step {step}/{total}  loss {loss:.4f}  lr {lr:.2e}")
        self._publish(
            step=step,
            epoch=run.epoch,
            loss=loss,
            loss_history=tuple(history),
            learning_rate=lr,
            elapsed_s=elapsed,
            eta_s=eta,
            samples_per_s=rate * self.config.effective_batch_size if rate else None,
            message=f"Training: epoch {run.epoch}",
        )


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    current = next(module.parameters()).dtype
    if current == dtype:
        module.to(device)
    else:
        module.to(device, dtype=dtype)


def run_training(
    request: TrainingRequest,
    callbacks: TrainerCallbacks | None = None,
    commands: TrainerCommands | None = None,
) -> TrainResult:
    """Convenience: build a :class:`Trainer` and run it."""
    return Trainer(request, callbacks, commands).train()
