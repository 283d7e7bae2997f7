"""Sample images during training, drawn with the LoRA as trained so far.

Samples use their own generator (seeded from the run's seed and the prompt's position), so
drawing them never changes the training's random stream: a run with samples ends with the
same weights as one without.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from lora_studio.training.families.base import Components, Family

log = logging.getLogger(__name__)


def draw_samples(
    family: Family,
    comps: Components,
    denoiser: Any,
    text_encoders: Sequence[torch.nn.Module],
    prompts: Sequence[str],
    *,
    folder: Path,
    step: int,
    size: int,
    inference_steps: int,
    seed: int,
    device: torch.device,
) -> list[Path]:
    """Draw one image per prompt at ``size`` x ``size``; returns the PNG paths."""
    import io

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    moved: list[tuple[torch.nn.Module, torch.device]] = []
    for module in (comps.vae, *text_encoders):
        current = next(module.parameters()).device
        if current != device:
            moved.append((module, current))
            module.to(device)
    was_training = denoiser.training
    denoiser.eval()
    # In bf16/fp16 training the trainer's denoiser returns fp32 (accelerate's wrapper)
    # while the VAE is half: the pipeline would decode fp32 latents with half weights.
    # Autocast, as in training, keeps every product in the model's precision.
    half = next(comps.vae.parameters()).dtype
    mixed = device.type == "cuda" and half in (torch.float16, torch.bfloat16)
    paths: list[Path] = []
    try:
        pipe = family.pipeline(comps, denoiser, text_encoders)
        pipe.set_progress_bar_config(disable=True)
        for index, prompt in enumerate(prompts):
            generator = torch.Generator(device="cpu").manual_seed(seed + index)
            with torch.no_grad(), torch.autocast(device.type, dtype=half, enabled=mixed):
                image = pipe(
                    prompt,
                    num_inference_steps=inference_steps,
                    height=size,
                    width=size,
                    generator=generator,
                ).images[0]
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            path = folder / f"step{step:06d}-{index:02d}.png"
            atomic_write_bytes(path, buffer.getvalue())
            paths.append(path)
    finally:
        if was_training:
            denoiser.train()
        for module, where in moved:
            module.to(where)
    return paths
