"""Item 6 of docs/benchmarks.md: an SDXL-size LoRA run on a GPU.

    python benchmarks/bench_gpu.py [--steps 40] [--compile] [--json-out FILE]
    python benchmarks/bench_gpu.py --tiny        # the same code path on the tiny SDXL, any CPU

No weights are downloaded. The script builds SDXL base 1.0's architecture at full size with
random weights (the published configs of the UNet, the VAE and both CLIP text encoders, so
the same FLOPs and memory as the real model) as a diffusers folder, then:

1. **Our trainer.** Trains a LoRA on that folder with LoRA Studio's own ``Trainer`` and the
   SDXL preset (1024x1024, batch 1, bf16, rank 32, AdamW, latents and captions cached), as
   the app does: once eagerly (``cuda_graphs`` off) and once with its default, each step
   replayed from a CUDA graph (``graphs.py``). Reads the time to the first step, the
   median time per step and the peak GPU memory (``torch.cuda.max_memory_allocated``)
   against ``estimate_vram_gb`` and ``seconds_per_step``.
2. With ``--compile``, the trainer again with ``torch_compile`` on (each transformer block
   compiled in place: the first step is slower; CUDA graphs as the app's default).
3. **The bare step.** The same UNet, LoRA, optimizer and loss in a plain loop with nothing
   around it, timed between two ``torch.cuda.synchronize()`` calls, once without and once
   with a host read of the loss every step. Its FLOPs are counted with
   ``torch.utils.flop_counter.FlopCounterMode``; model FLOPs utilisation (MFU) is those
   FLOPs per second against the GPU's dense bf16 peak and against an 8192^3 bf16 matrix
   product measured in the same run. Trainer / bare step is what the trainer costs.
   ``--bare-variants`` also times it without peft's input casts, with fused AdamW, with
   the blocks compiled (``--compile``) and captured as one CUDA graph (``--graphs``).

``--variants`` (no folder, no trainer) times only the bare step's variants on one UNet.

Published anchors (issue 8): SimpleTuner 0.606 s/step for SDXL LoRA at 1024 on an H100
(bf16, caches, no checkpointing); kohya 1.12 s/it on an RTX 3090 Ti.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_flops import CLIP_G, CLIP_L, SDXL_UNET, VAE  # noqa: E402

from lora_studio.core.config import LoraConfig, ModelFamily  # noqa: E402
from lora_studio.core.dataset import Dataset  # noqa: E402
from lora_studio.core.estimates import (  # noqa: E402
    architecture_for,
    estimate_vram_gb,
    seconds_per_step,
)
from lora_studio.core.jobs import JobStatus, Progress  # noqa: E402
from lora_studio.core.request import TrainingRequest  # noqa: E402
from lora_studio.training.families import get_family  # noqa: E402
from lora_studio.training.trainer import (  # noqa: E402
    Trainer,
    eager_blocks,
    redundant_input_casts,
)

#: Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by name fragment.
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "RTX 4090": 165.2,
    "RTX 3090 Ti": 160.0,
    "RTX 3090": 142.0,
}
#: SDXL's second tokenizer pads with "!" (see families/sdxl.py).
CLIP_VOCAB = 49408


def datasheet_peak(name: str) -> float | None:
    for fragment, peak in BF16_PEAK_TFLOPS.items():
        if fragment in name:
            return peak
    return None


# ---- the model ---------------------------------------------------------------------------


def build_sdxl(folder: Path, device: str) -> dict[str, int]:
    """SDXL base 1.0's architecture with random weights, saved in bf16 at ``folder``.

    Built on ``device`` (initialising 3.5 billion parameters on a CPU takes minutes).
    Returns the parameter count of each component.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_studio.training.families.sdxl import (
        MAX_TOKENS,
        SDXL_VAE_SCALING,
        sdxl_pipeline,
        sdxl_tokenizers,
    )

    tokenizer, tokenizer_2, _ = sdxl_tokenizers()
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def clip(spec: tuple[int, int, int, int], act: str, pad: int) -> Any:
        hidden, intermediate, layers, heads = spec
        return CLIPTextConfig(
            vocab_size=CLIP_VOCAB,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=hidden,
            hidden_act=act,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )

    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = CLIPTextModel(clip(CLIP_L, "quick_gelu", eos))
        text_encoder_2 = CLIPTextModelWithProjection(clip(CLIP_G, "gelu", tokenizer_2.pad_token_id))
        unet = UNet2DConditionModel(**SDXL_UNET, sample_size=128)
        vae = AutoencoderKL(
            **VAE, sample_size=1024, scaling_factor=SDXL_VAE_SCALING, force_upcast=True
        )
    pipe = sdxl_pipeline(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet)
    pipe.to(torch_dtype=torch.bfloat16)
    pipe.save_pretrained(folder, safe_serialization=True)
    counts = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (
            ("unet", unet),
            ("text_encoder", text_encoder),
            ("text_encoder_2", text_encoder_2),
            ("vae", vae),
        )
    }
    del pipe, unet, vae, text_encoder, text_encoder_2
    if device == "cuda":
        torch.cuda.empty_cache()
    return counts


def make_images(folder: Path, count: int, size: int) -> None:
    """``count`` JPEGs of ``size`` px (smooth colour fields with noise) with captions."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(count):
        base = rng.uniform(0, 255, 3).astype(np.float32)
        field = base * ramp[:, None, None] + (255 - base) * ramp[None, :, None]
        field += rng.normal(0, 12, (size, size, 3)).astype(np.float32)
        pixels = np.clip(field, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.jpg", quality=90)
        (folder / f"img_{i:03d}.txt").write_text(
            f"sks subject, photo number {i}, soft light", encoding="utf-8"
        )


# ---- 1. our trainer ----------------------------------------------------------------------


class StepClock:
    """When the trainer started, when each optimizer step ended (its progress reports)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stamps: list[float] = []
        self.log: list[str] = []

    def on_progress(self, progress: Progress) -> None:
        if progress.status is JobStatus.RUNNING and progress.step > len(self.stamps):
            self.stamps.append(time.perf_counter())

    def on_log(self, line: str) -> None:
        self.log.append(line)

    def first_step(self) -> float:
        return self.stamps[0] - self.started

    def per_step(self, warmup: int) -> float:
        gaps = [
            b - a for a, b in zip(self.stamps[warmup:], self.stamps[warmup + 1 :], strict=False)
        ]
        return statistics.median(gaps)


def run_trainer(
    model: Path, data: Path, out: Path, config: LoraConfig, device: str, warmup: int
) -> dict[str, Any]:
    import torch

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock()
    request = TrainingRequest(Dataset.from_directory(data), config, str(model), out)
    result = Trainer(request, clock, device=device).train()
    row: dict[str, Any] = {
        "steps": len(clock.stamps),
        "first_step_s": round(clock.first_step(), 2),
        "s_per_step": round(clock.per_step(warmup), 4),
        "final_loss": round(result.final_loss, 5) if result.final_loss is not None else None,
        "output": result.output_path.name,
        "compile": next((line for line in clock.log if "torch.compile" in line), None),
        "graphs": [line.split(" ", 1)[1] for line in clock.log if "CUDA graph" in line],
    }
    if cuda:
        row["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    return row


# ---- 2. the bare step --------------------------------------------------------------------


def lora_unet(model: Path | None, config: LoraConfig, device: str) -> Any:
    """The UNet with the trainer's LoRA on it, weights in bf16 (fp32 on a CPU), LoRA in
    fp32. ``model`` None: SDXL's UNet built here with random weights (no folder needed)."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig as PeftLoraConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if model is None:
        with torch.device(device):
            unet = UNet2DConditionModel(**SDXL_UNET, sample_size=128).to(dtype)
    else:
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype)
        unet.to(device)
    unet.requires_grad_(False)
    family = get_family(ModelFamily.SDXL)
    unet.add_adapter(
        PeftLoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            init_lora_weights="gaussian",
            target_modules=list(family.denoiser_target_modules),
        )
    )
    cast_training_params(unet, dtype=torch.float32)
    unet.train()
    return unet


def bare_step(
    unet: Any,
    config: LoraConfig,
    device: str,
    steps: int,
    *,
    fused: bool = False,
    compile: str = "",
    lean: bool = False,
    graph: bool = False,
    count_flops: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Time (and count) the UNet step alone: LoRA forward, backward, clipping, AdamW.

    ``lean``: without peft's input casts (the trainer's ``redundant_input_casts``).
    ``graph`` (CUDA): the whole step captured once as a CUDA graph and replayed, so no
    Python runs per kernel: what the step costs the GPU itself.
    """
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    params = [p for p in unet.parameters() if p.requires_grad]
    if graph:  # its step count must live on the GPU, inside the graph
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, capturable=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, fused=fused or None)
    model = unet
    if compile == "whole":
        model = torch.compile(unet)
    elif compile == "blocks":  # each transformer block, in place: one graph per shape
        for module in unet.modules():
            if type(module).__name__ == "BasicTransformerBlock":
                module.compile()
    layers = redundant_input_casts(unet, "bf16" if cuda else "no")
    for layer in layers:
        layer.cast_input_dtype_enabled = not lean
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    side = config.resolution // 8
    cross = unet.config.cross_attention_dim
    # The pooled text embedding beside six Fourier-embedded size and crop numbers.
    pooled = (
        unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    )
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, 4, side, side, device=device, generator=gen, dtype=dtype)
    cond = torch.randn(1, 77, cross, device=device, generator=gen, dtype=dtype)
    added = {
        "text_embeds": torch.randn(1, pooled, device=device, generator=gen, dtype=dtype),
        "time_ids": torch.tensor(
            [[config.resolution, config.resolution, 0, 0, config.resolution, config.resolution]],
            device=device,
            dtype=dtype,
        ),
    }

    def forward_backward(noise_from: Any) -> torch.Tensor:
        noise = torch.randn(latents.shape, device=device, generator=noise_from, dtype=dtype)
        t = torch.randint(0, 1000, (1,), device=device, generator=noise_from)
        noisy = scheduler.add_noise(latents, noise, t)
        # A captured graph cannot keep autocast's cache of cast weights between replays.
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda, cache_enabled=not graph):
            pred = model(noisy, t, cond, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        return loss.detach()

    def step() -> torch.Tensor:
        loss = forward_backward(gen)
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    row: dict[str, Any] = {}
    sync()
    start = time.perf_counter()
    if graph:
        step = graphed(forward_backward, optimizer)
    else:
        step()
    sync()
    row["first_step_s"] = round(time.perf_counter() - start, 2)
    for _ in range(2):
        step()
    if count_flops and not graph:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        row["tflop_per_step"] = round(counter.get_total_flops() / 1e12, 4)
        row["lora_params"] = sum(p.numel() for p in params)

    def timed(read_loss: bool) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
            if read_loss:
                float(loss.item())
        sync()
        return (time.perf_counter() - start) / steps

    row["s_per_step"] = round(timed(False), 4)
    row["s_per_step_loss_read"] = round(timed(True), 4)
    if profile is not None and not graph:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profiler(activities=activities) as prof:
            for _ in range(3):
                step()
            sync()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        profile.write_text(prof.key_averages().table(sort_by=key, row_limit=40), "utf-8")
    return row


def graphed(forward_backward: Any, optimizer: Any) -> Any:
    """Capture ``forward_backward`` (a whole step: noise, forward, backward, clipping,
    AdamW) as one CUDA graph; returns a step function that replays it. Noise and
    timesteps come from the default CUDA generator, which graphs advance per replay."""
    import torch

    # Warm up on a side stream (optimizer state, cuBLAS workspaces, autotuning) first.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward_backward(None)
            optimizer.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # Grads set to None: the captured backward allocates them in the graph's own memory
    # and every replay writes them afresh.
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = forward_backward(None)

    def replay() -> Any:
        graph.replay()
        return loss

    return replay


def matmul_tflops(device: str) -> float:
    """An 8192^3 bf16 matrix product: what this GPU really reaches (TFLOP/s)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def bare_variants(
    args: argparse.Namespace,
    unet: Any,
    config: LoraConfig,
    device: str,
    record: Any,
    *,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The bare step on one UNet, as is (FLOPs counted), then each way of making it cheaper
    that was asked for: without peft's input casts (``lean``, as the trainer runs), with
    fused AdamW, with the transformer blocks compiled (``--compile``: in place), as a CUDA
    graph of the eager blocks (``--graphs``). Each row is recorded as it ends,
    and a variant that fails records its error instead of ending the run."""
    steps = max(5, args.steps // 2)
    rows: dict[str, Any] = {}

    def variant(key: str, **options: Any) -> None:
        try:
            rows[key] = bare_step(unet, config, device, steps, count_flops=False, **options)
        except Exception as exc:  # noqa: BLE001 - a measurement, not the product
            rows[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        record(key, rows[key])

    rows["bare"] = bare_step(unet, config, device, steps, profile=profile)
    record("bare", rows["bare"])
    if not args.bare_variants:
        return rows
    variant("bare_lean", lean=True)
    variant("bare_lean_fused", lean=True, fused=True)
    if args.compile:
        variant("bare_lean_fused_compiled", lean=True, fused=True, compile="blocks")
    if args.graphs and device == "cuda":  # last: a failed capture may spoil what follows
        with eager_blocks():  # the blocks as written, even if compiled just before
            variant("bare_lean_graph", lean=True, graph=True)
    return rows


def variants(
    args: argparse.Namespace, model: Path | None, config: LoraConfig, device: str, record: Any
) -> int:
    """Only the bare step's variants, on a UNet built here (no folder, no trainer)."""
    import torch

    args.bare_variants = True
    start = time.perf_counter()
    unet = lora_unet(model, config, device)
    record("unet_built_s", round(time.perf_counter() - start, 1))
    bare_variants(args, unet, config, device, record, profile=args.profile)
    if device == "cuda":
        record("peak_vram_gb", round(torch.cuda.max_memory_allocated() / 1e9, 2))
    return 0


# ---- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="trainer steps per run")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="also train with torch.compile")
    parser.add_argument(
        "--bare-variants",
        action="store_true",
        help="the bare step also without peft's input casts, with fused AdamW and (with "
        "--compile / --graphs) compiled and captured as a CUDA graph",
    )
    parser.add_argument(
        "--graphs", action="store_true", help="with --bare-variants: the bare step as a CUDA graph"
    )
    parser.add_argument(
        "--compiled-only",
        action="store_true",
        help="only the trainer with torch.compile",
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny SDXL at 128 px (checks)")
    parser.add_argument("--json-out", type=Path, help="write the results here as they come")
    parser.add_argument("--work", type=Path, help="folder for the model and data (else temp)")
    parser.add_argument("--profile", type=Path, help="write a profile of 3 bare steps here")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="only the bare step, as is, with fused AdamW, and compiled (no trainer, no folder)",
    )
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        # The full-size model on a CPU: minutes per step, and ~7 GB written first.
        print("bench_gpu.py needs a CUDA GPU; --tiny runs the same code on this CPU.")
        return 2
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__}

    def record(key: str, value: Any) -> None:
        results[key] = value
        print(f"{key}: {json.dumps(value)}", flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=2), encoding="utf-8")

    work = args.work or Path(tempfile.mkdtemp(prefix="lora-studio-gpu-"))
    model = work / "sdxl-random"
    data = work / "data"
    config = LoraConfig.sdxl_preset().replace(
        name="gpu-bench",
        max_steps=args.steps,
        cache_to_disk=False,
        save_every_n_epochs=0,
        resolution=args.resolution,
    )
    if args.tiny:
        from lora_studio.training.tiny import ensure_builtin_model

        model = ensure_builtin_model("tiny-sdxl")
        config = config.replace(resolution=min(args.resolution, 128))
    if args.variants:
        return variants(args, model if args.tiny else None, config, device, record)
    if not args.tiny and not (model / "model_index.json").exists():
        start = time.perf_counter()
        counts = build_sdxl(model, device)
        record("build", {"seconds": round(time.perf_counter() - start, 1), "params": counts})
    if not data.exists():
        make_images(data, args.images, config.resolution)

    arch = architecture_for(ModelFamily.SDXL, tiny=False)
    record(
        "estimate",
        {
            "s_per_step_reference_gpu": round(seconds_per_step(config, arch), 3),
            "reference_gpu": arch.hardware,
            "vram_gb": round(estimate_vram_gb(config, ModelFamily.SDXL), 2),
        },
    )
    if cuda:
        measured = matmul_tflops(device)
        record(
            "gpu",
            {"matmul_bf16_tflops": round(measured, 1), "datasheet_tflops": datasheet_peak(name)},
        )
    warmup = 3 if args.steps > 6 else 1

    def train_compiled(warm: int) -> dict[str, Any]:
        # torch_compile on, CUDA graphs as the app's default.
        row = run_trainer(
            model, data, work / "out-compiled", config.replace(torch_compile=True), device, warm
        )
        record("trainer_compiled", row)
        return row

    if args.compiled_only:
        train_compiled(3)
        return 0
    trainer = run_trainer(
        model, data, work / "out-eager", config.replace(cuda_graphs=False), device, warmup
    )
    record("trainer", trainer)
    # The app's default on CUDA: each step replayed from a CUDA graph (graphs.py).
    graphed = run_trainer(model, data, work / "out-graphs", config, device, warmup)
    record("trainer_graphs", graphed)
    # Compiled before the bare steps: its first step must not find their graphs cached.
    if args.compile:
        compiled = train_compiled(max(warmup, 5))
    rows = bare_variants(
        args, lora_unet(model, config, device), config, device, record, profile=args.profile
    )
    bare = rows["bare"]
    if cuda:
        torch.cuda.empty_cache()  # the bare step's UNet is gone with its frame

    def mfu(seconds: float) -> dict[str, float]:
        achieved = bare["tflop_per_step"] / seconds
        row = {"tflops": round(achieved, 1)}
        if cuda:
            row["of_matmul"] = round(achieved / results["gpu"]["matmul_bf16_tflops"], 3)
            peak = results["gpu"]["datasheet_tflops"]
            if peak:
                row["of_datasheet"] = round(achieved / peak, 3)
        return row

    timed = {key: row["s_per_step"] for key, row in rows.items() if "s_per_step" in row}
    # The trainer runs as the lean, fused bare step does (input casts off, fused AdamW).
    like_trainer = timed.get("bare_lean_fused", bare["s_per_step"])
    record(
        "mfu",
        {
            "trainer": mfu(trainer["s_per_step"]),
            "trainer_graphs": mfu(graphed["s_per_step"]),
            **{key: mfu(seconds) for key, seconds in timed.items()},
            "trainer_over_bare": round(trainer["s_per_step"] / like_trainer, 3),
            "graphs_over_eager": round(graphed["s_per_step"] / trainer["s_per_step"], 3),
        },
    )
    if args.compile:
        row = mfu(compiled["s_per_step"])
        if "bare_lean_fused_compiled" in timed:
            row["trainer_over_bare"] = round(
                compiled["s_per_step"] / timed["bare_lean_fused_compiled"], 3
            )
        record("mfu_compiled", row)
    if not math.isfinite(trainer["s_per_step"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
