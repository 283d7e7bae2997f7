"""Benchmark our trainer against the diffusers LoRA example, step for step.

    python benchmarks/bench_train.py [--steps 30] [--resolution 512] [--batch 1] [--rank 4]
                                     [--rounds 2] [--last 20] [--json]

Both sides train the built-in tiny SD 1.5 model (``builtin:tiny-sd15``: SD 1.5's layout at
toy size) on the same images (``resources/sample_dataset``: 12 captioned 512 px PNGs), at the
same resolution and batch, for the same number of steps, with the same seed, LoRA targets
(UNet attention ``to_q``/``to_k``/``to_v``/``to_out.0``), rank, AdamW settings, constant
learning rate and gradient clipping. The tiny model's own resolution is 256 px (its UNet's
sample size is 32 latents, as SD 1.5's 64 make 512 px); ``make bench`` runs 256 and 512.

* **reference**: the loop of diffusers' ``examples/text_to_image/train_text_to_image_lora.py``
  rewritten here without the ``datasets`` and ``torchvision`` packages: every step opens,
  resizes and centre-crops the batch's images, encodes them with the VAE
  (``latent_dist.sample()``), encodes the captions with the text encoder, adds noise with the
  DDPM scheduler and takes the MSE against the noise (epsilon). No caching.
* **ours**: ``lora_studio.training.trainer.Trainer`` (what ``lora-studio train`` and the
  window run): VAE latents (mean and std; a sample is drawn each step) and caption
  embeddings computed once per image before the first step, kept in the disk cache.

Steps are timed **paired**: one process holds both, and after every step of our trainer
(from its progress callback, off its clock) it runs one step of the reference, so a busy
machine slows both alike. Reported: the median seconds per step of each (the first two
left out), the ratio ours / reference (target ≤ 0.6), the CPU seconds per step, and the
mean loss over the last ``--last`` steps of each with its standard error (parity: the
difference within 3 combined standard errors).

**Start-up** is timed in fresh processes, ``--rounds`` times: the reference, ours with an
empty cache (cold: it encodes every image and caption before its first step), ours again
over the same cache (warm). Reported: seconds from process start (before torch is
imported) to the end of the first step, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # a child's clock starts before torch is imported

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATASET = REPO / "resources" / "sample_dataset"
#: diffusers' defaults for the example (``--adam_*``, ``--max_grad_norm``).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 1e-4
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
SEED = 42


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the reference: diffusers' train_text_to_image_lora.py loop ----------------------------


def _caption(image: Path) -> str:
    """The caption beside ``image`` (empty when it has none, as for two sample images)."""
    sidecar = image.with_suffix(".txt")
    return sidecar.read_text(encoding="utf-8").strip() if sidecar.exists() else ""


class Reference:
    """The example's set-up (``__init__``) and its loop body (:meth:`step`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import numpy as np
        import torch
        from accelerate import Accelerator
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig
        from PIL import Image
        from transformers import CLIPTextModel, CLIPTokenizer

        from lora_studio.training.tiny import ensure_builtin_model

        model = ensure_builtin_model("tiny-sd15")
        accelerator = Accelerator(mixed_precision="no", gradient_accumulation_steps=1, cpu=True)
        torch.manual_seed(SEED)  # accelerate's set_seed(args.seed)

        noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
        unet.requires_grad_(False)
        vae.requires_grad_(False)
        text_encoder.requires_grad_(False)
        weight_dtype = torch.float32  # no mixed precision on the CPU
        unet.to(accelerator.device, dtype=weight_dtype)
        vae.to(accelerator.device, dtype=weight_dtype)
        text_encoder.to(accelerator.device, dtype=weight_dtype)
        unet.add_adapter(
            LoraConfig(
                r=args.rank,
                lora_alpha=args.rank,
                init_lora_weights="gaussian",
                target_modules=TARGETS,
            )
        )
        cast_training_params(unet, dtype=torch.float32)
        lora_layers = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            lora_layers,
            lr=LEARNING_RATE,
            betas=ADAM_BETAS,
            weight_decay=WEIGHT_DECAY,
            eps=ADAM_EPS,
        )

        resolution = args.resolution
        images = sorted(Path(args.data).glob("*.png"))
        captions = [_caption(p) for p in images]

        def transform(path: Path) -> torch.Tensor:
            # transforms.Resize(res, BILINEAR) -> CenterCrop(res) -> ToTensor -> Normalize(0.5)
            with Image.open(path) as opened:
                img = opened.convert("RGB")
            w, h = img.size
            scale = resolution / min(w, h)
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
            left = (img.width - resolution) // 2
            top = (img.height - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
            array = np.asarray(img, dtype=np.float32) / 255.0
            return torch.from_numpy(array.transpose(2, 0, 1).copy()) * 2.0 - 1.0

        class ImageCaptions(torch.utils.data.Dataset):  # type: ignore[type-arg]
            def __len__(self) -> int:
                return len(images)

            def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
                ids = tokenizer(
                    captions[index],
                    max_length=tokenizer.model_max_length,
                    padding="max_length",
                    truncation=True,
                    return_tensors="pt",
                ).input_ids[0]
                return {"pixel_values": transform(images[index]), "input_ids": ids}

        def collate_fn(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            pixel_values = torch.stack([e["pixel_values"] for e in examples])
            pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
            return {
                "pixel_values": pixel_values,
                "input_ids": torch.stack([e["input_ids"] for e in examples]),
            }

        train_dataloader = torch.utils.data.DataLoader(
            ImageCaptions(),
            shuffle=True,
            collate_fn=collate_fn,
            batch_size=args.batch,
            num_workers=0,
            drop_last=True,
        )
        lr_scheduler = get_scheduler(
            "constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps
        )
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, optimizer, train_dataloader, lr_scheduler
        )
        unet.train()
        self.accelerator = accelerator
        self.noise_scheduler = noise_scheduler
        self.text_encoder = text_encoder
        self.vae = vae
        self.unet = unet
        self.weight_dtype = weight_dtype
        self.lora_layers = lora_layers
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.dataloader = train_dataloader
        self._batches = iter(train_dataloader)

    def _next_batch(self) -> dict[str, Any]:
        try:
            return next(self._batches)
        except StopIteration:  # the next epoch
            self._batches = iter(self.dataloader)
            return next(self._batches)

    def step(self) -> float:
        """One optimizer step of the example's loop (``for step, batch in ...``); its loss."""
        import torch
        import torch.nn.functional as F

        accelerator, vae, unet = self.accelerator, self.vae, self.unet
        batch = self._next_batch()
        with accelerator.accumulate(unet):
            latents = vae.encode(
                batch["pixel_values"].to(dtype=self.weight_dtype)
            ).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
            ).long()
            noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = self.text_encoder(batch["input_ids"], return_dict=False)[0]
            target = noise  # epsilon prediction
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.lora_layers, MAX_GRAD_NORM)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        return float(loss.detach().item())


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The reference alone in a fresh process: how long until its first step is done."""
    reference = Reference(args)
    stamps: list[float] = []
    cpu: list[float] = []
    losses: list[float] = []
    for _ in range(args.steps):
        losses.append(reference.step())
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
    return {
        "stamps": stamps,
        "cpu": cpu,
        "losses": losses,
        "first_step_s": stamps[0] - STARTED,
        "first_step_cpu_s": cpu[0],
        "peak_rss_mb": _peak_rss_mb(),
    }


# ---- ours: lora_studio's Trainer --------------------------------------------------------


def run_ours(args: argparse.Namespace, between: Callable[[], None] | None = None) -> dict[str, Any]:
    """Our trainer; ``between`` (if given) runs after each of its steps, off its clock."""
    from lora_studio.core.config import LoraConfig, MixedPrecision
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.jobs import JobStatus, Progress
    from lora_studio.core.request import TrainingRequest
    from lora_studio.training.trainer import Trainer

    stamps: list[float] = []  # when each step ended
    cpu: list[float] = []
    resumed: list[float] = []  # when the trainer got the CPU back after it
    resumed_cpu: list[float] = []
    losses: list[float] = []

    class Record:
        def on_progress(self, progress: Progress) -> None:
            if progress.status is JobStatus.RUNNING and progress.step > len(stamps):
                stamps.append(time.perf_counter())
                cpu.append(time.process_time())
                losses.append(float(progress.loss or 0.0))
                if between is not None:
                    between()
                resumed.append(time.perf_counter())
                resumed_cpu.append(time.process_time())

        def on_log(self, line: str) -> None:
            pass

    config = LoraConfig(
        name="bench",
        rank=args.rank,
        alpha=float(args.rank),
        resolution=args.resolution,
        batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        mixed_precision=MixedPrecision.NO,
        target_modules=",".join(TARGETS),
        seed=SEED,
        cache_to_disk=True,
    )
    request = TrainingRequest(
        Dataset.from_directory(args.data), config, "builtin:tiny-sd15", Path(args.out)
    )
    Trainer(request, Record(), device="cpu", cache_root=Path(args.cache)).train()
    return {
        "stamps": stamps,
        "cpu": cpu,
        "step_s": [b - a for a, b in zip(resumed, stamps[1:], strict=False)],
        "step_cpu_s": [b - a for a, b in zip(resumed_cpu, cpu[1:], strict=False)],
        "losses": losses,
        "first_step_s": stamps[0] - STARTED,
        "first_step_cpu_s": cpu[0],
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_paired(args: argparse.Namespace) -> dict[str, Any]:
    """Both in one process, step for step: after each step of ours, one of the
    reference's. A busy machine slows both alike, so the ratio of their step times holds
    where the times themselves do not."""
    reference = Reference(args)
    ref: dict[str, list[float]] = {"step_s": [], "step_cpu_s": [], "losses": []}

    def reference_step() -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        loss = reference.step()
        ref["step_s"].append(time.perf_counter() - wall)
        ref["step_cpu_s"].append(time.process_time() - cpu)
        ref["losses"].append(loss)

    ours = run_ours(args, between=reference_step)
    return {"reference": ref, "ours": ours, "peak_rss_mb": _peak_rss_mb()}


# ---- the driver ----------------------------------------------------------------------


def median_after_warmup(values: list[float], skip: int = 2) -> float:
    """The median of ``values`` leaving out the first ``skip`` (warm-up)."""
    return statistics.median(values[skip:] if len(values) > skip + 2 else values)


def tail_stats(losses: list[float]) -> tuple[float, float]:
    """The mean of ``losses`` and its standard error."""
    mean = statistics.fmean(losses)
    se = statistics.stdev(losses) / math.sqrt(len(losses)) if len(losses) > 1 else 0.0
    return mean, se


def child(
    role: str, args: argparse.Namespace, scratch: Path, steps: int, cache: Path
) -> dict[str, Any]:
    out = scratch / f"{role}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role]
    command += ["--steps", str(steps), "--resolution", str(args.resolution)]
    command += ["--batch", str(args.batch), "--rank", str(args.rank)]
    command += ["--data", str(scratch / "data"), "--out", str(scratch / f"out-{role}")]
    command += ["--cache", str(cache), "--result", str(out), "--threads", str(args.threads)]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(out.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=2, help="fresh-process start-up measurements per side"
    )
    parser.add_argument("--last", type=int, default=20, help="steps in the loss comparison")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads on both sides (0: torch's default, one per core). On a machine "
        "shared with other work, 1 keeps the threads from waiting for each other",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    # Internal: run one side (or both, paired) in this process.
    parser.add_argument("--role", choices=["reference", "ours", "paired"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.role:
        sys.path.insert(0, str(REPO))
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run = {"reference": run_reference, "ours": run_ours, "paired": run_paired}[args.role]
        Path(args.result).write_text(json.dumps(run(args)), encoding="utf-8")
        return 0

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    import torch

    from lora_studio.training.tiny import ensure_builtin_model

    ensure_builtin_model("tiny-sd15")  # built once, outside every timing
    threads = args.threads or torch.get_num_threads()
    say(
        f"tiny SD 1.5, {args.resolution} px, batch {args.batch}, rank {args.rank}, "
        f"{args.steps} steps; CPU: {os.cpu_count()} cores, torch {threads} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    starts: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        scratch = Path(tmp)
        shutil.copytree(SAMPLE_DATASET, scratch / "data", ignore=shutil.ignore_patterns("*.md"))
        # 1. Steps, step for step in one process (fresh cache).
        paired = child("paired", args, scratch, args.steps, scratch / "cache-paired")
        ref, ours = paired["reference"], paired["ours"]
        say(f"paired run done, load average {os.getloadavg()[0]:.1f}")
        # 2. Start-up: each side in fresh processes, ours with a cold then a warm cache.
        for n in range(args.rounds):
            cache = scratch / f"cache{n}"
            reference = child("reference", args, scratch, 2, cache)
            cold = child("ours", args, scratch, 2, cache)
            warm = child("ours", args, scratch, 2, cache)  # the same cache, now filled
            starts.append(
                {
                    "reference_s": reference["first_step_s"],
                    "reference_cpu_s": reference["first_step_cpu_s"],
                    "reference_rss_mb": reference["peak_rss_mb"],
                    "cold_s": cold["first_step_s"],
                    "cold_cpu_s": cold["first_step_cpu_s"],
                    "cold_rss_mb": cold["peak_rss_mb"],
                    "warm_s": warm["first_step_s"],
                    "warm_cpu_s": warm["first_step_cpu_s"],
                    "warm_rss_mb": warm["peak_rss_mb"],
                }
            )
            say(
                f"start-up round {n + 1}: reference {reference['first_step_s']:.1f} s, ours "
                f"{cold['first_step_s']:.1f} s cold / {warm['first_step_s']:.1f} s warm, "
                f"load average {os.getloadavg()[0]:.1f}"
            )

    def start(key: str) -> float:
        return statistics.median(r[key] for r in starts)

    def start_ratio(key: str, ref_key: str) -> float:
        # The median of the per-round ratios: each round's processes ran back to back.
        return statistics.median(r[key] / r[ref_key] for r in starts)

    ref_step, our_step = median_after_warmup(ref["step_s"]), median_after_warmup(ours["step_s"])
    ref_cpu = median_after_warmup(ref["step_cpu_s"])
    our_cpu = median_after_warmup(ours["step_cpu_s"])
    pair_ratios = [o / r for o, r in zip(ours["step_s"], ref["step_s"][1:], strict=False)]
    last = min(args.last, len(ref["losses"]), len(ours["losses"]))
    ref_loss, ref_se = tail_stats(ref["losses"][-last:])
    our_loss, our_se = tail_stats(ours["losses"][-last:])
    band = 3 * math.sqrt(ref_se**2 + our_se**2)
    summary: dict[str, Any] = {
        "resolution": args.resolution,
        "batch": args.batch,
        "rank": args.rank,
        "steps": args.steps,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "reference_s_per_step": round(ref_step, 4),
        "ours_s_per_step": round(our_step, 4),
        "step_ratio": round(our_step / ref_step, 3),
        "step_ratio_median_of_pairs": round(median_after_warmup(pair_ratios, 1), 3),
        "step_target": 0.6,
        "reference_cpu_s_per_step": round(ref_cpu, 4),
        "ours_cpu_s_per_step": round(our_cpu, 4),
        "cpu_step_ratio": round(our_cpu / ref_cpu, 3),
        "reference_first_step_s": round(start("reference_s"), 2),
        "ours_first_step_s": round(start("cold_s"), 2),
        "ours_warm_first_step_s": round(start("warm_s"), 2),
        "first_step_ratio": round(start_ratio("cold_s", "reference_s"), 3),
        "warm_first_step_ratio": round(start_ratio("warm_s", "reference_s"), 3),
        "reference_first_step_cpu_s": round(start("reference_cpu_s"), 2),
        "ours_first_step_cpu_s": round(start("cold_cpu_s"), 2),
        "ours_warm_first_step_cpu_s": round(start("warm_cpu_s"), 2),
        "reference_peak_rss_mb": round(start("reference_rss_mb")),
        "ours_peak_rss_mb": round(start("cold_rss_mb")),
        "loss_steps": last,
        "reference_last_loss": round(ref_loss, 4),
        "reference_last_loss_se": round(ref_se, 4),
        "ours_last_loss": round(our_loss, 4),
        "ours_last_loss_se": round(our_se, 4),
        "loss_parity": abs(ref_loss - our_loss) <= band,
    }
    s = summary
    met = "met" if s["step_ratio"] <= s["step_target"] else "missed"
    say("")
    say("| measure | reference | ours | ours / reference |")
    say("|---|---|---|---|")
    say(
        f"| s/step, median (paired) | {ref_step:.3f} | {our_step:.3f} | "
        f"**{s['step_ratio']:.2f}** (target ≤ 0.6: {met}; median of per-step ratios "
        f"{s['step_ratio_median_of_pairs']:.2f}) |"
    )
    say(f"| CPU s/step, median | {ref_cpu:.3f} | {our_cpu:.3f} | {s['cpu_step_ratio']:.2f} |")
    say(
        f"| process start to end of step 1, s | {s['reference_first_step_s']:.1f} | "
        f"{s['ours_first_step_s']:.1f} cold cache, {s['ours_warm_first_step_s']:.1f} warm | "
        f"{s['first_step_ratio']:.2f} cold, {s['warm_first_step_ratio']:.2f} warm |"
    )
    say(
        f"| CPU s to end of step 1 | {s['reference_first_step_cpu_s']:.1f} | "
        f"{s['ours_first_step_cpu_s']:.1f} cold, {s['ours_warm_first_step_cpu_s']:.1f} warm | "
        f"{s['ours_first_step_cpu_s'] / s['reference_first_step_cpu_s']:.2f} cold, "
        f"{s['ours_warm_first_step_cpu_s'] / s['reference_first_step_cpu_s']:.2f} warm |"
    )
    say(
        f"| peak RSS (2 steps, own process), MB | {s['reference_peak_rss_mb']} | "
        f"{s['ours_peak_rss_mb']} | {s['ours_peak_rss_mb'] / s['reference_peak_rss_mb']:.2f} |"
    )
    say(
        f"| mean loss, last {last} steps (± s.e.) | {ref_loss:.4f} ± {ref_se:.4f} | "
        f"{our_loss:.4f} ± {our_se:.4f} | "
        f"{'within' if s['loss_parity'] else 'OUTSIDE'} 3 s.e. |"
    )
    print(json.dumps(summary, indent=2 if args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
