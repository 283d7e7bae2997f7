"""What the SD 3.5 and Flux family tests share: LoRA layers put on a pipeline the way the
trainer does it (with non-zero random weights, so that they change the images), a fixed
render, and the LossInputs of one batch."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from lora_studio.core.config import LoraConfig
from lora_studio.training.families.base import Components, LossInputs


def attach_lora(
    pipe: Any, family: Any, *, rank: int, alpha: float, text_encoders: int = 0, seed: int = 1
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor] | None]]:
    """Put the family's LoRA layers on ``pipe.transformer`` (and its first
    ``text_encoders`` CLIPs) as the trainer does, fill ``lora_B`` with random values and
    return the peft state dicts ``(denoiser, [text encoders])``."""
    from peft import LoraConfig as PeftConfig
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    def config(targets: tuple[str, ...]) -> PeftConfig:
        return PeftConfig(
            r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets)
        )

    pipe.transformer.add_adapter(config(family.denoiser_target_modules))
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)][:text_encoders]
    for encoder in encoders:
        inject_adapter_in_model(config(family.text_encoder_target_modules), encoder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [pipe.transformer, *encoders]:
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    states: list[dict[str, torch.Tensor] | None] = [get_peft_model_state_dict(e) for e in encoders]
    return get_peft_model_state_dict(pipe.transformer), states


def render(pipe: Any, **kwargs: Any) -> torch.Tensor:
    """Two denoising steps at 64 px from a fixed seed, as a tensor."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(  # type: ignore[no-any-return]
        "papercut style, hills",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        **kwargs,
    ).images


def loss_inputs(
    family: Any, comps: Components, captions: list[str], config: LoraConfig | None = None
) -> LossInputs:
    """One fp32 batch of 64 px latents (random images through the VAE) and the captions'
    conditioning, as the trainer hands it to ``family.loss``."""
    torch.manual_seed(0)
    with torch.no_grad():
        images = torch.rand(len(captions), 3, 64, 64) * 2 - 1
        latents = family.scale_latents(comps, comps.vae.encode(images).latent_dist.mean)
        cond = family.encode_text(comps, comps.text_encoders, family.tokenize(comps, captions))
    return LossInputs(
        comps=comps,
        denoiser=comps.denoiser,
        latents=latents,
        cond=cond,
        image_meta=torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * len(captions)),
        generator=torch.Generator().manual_seed(0),
        config=config or LoraConfig(),
        weight_dtype=torch.float32,
        autocast=contextlib.nullcontext,
    )


def lora_adapter_metadata(
    peft_state: Mapping[str, torch.Tensor] | None, alpha: float, use_dora: bool = False
) -> dict[str, Any] | None:
    """A minimal peft ``LoraConfig`` dict (rank, alpha, targets) for diffusers' metadata."""
    if not peft_state:
        return None
    from lora_studio.training.families.flow_common import peft_modules

    modules = peft_modules(peft_state)
    ranks = {parts["down"].shape[0] for parts in modules.values()}
    rank = max(ranks)
    return {
        "r": rank,
        "lora_alpha": float(alpha),
        "target_modules": sorted(modules),
        "use_dora": use_dora,
        "rank_pattern": {
            module: parts["down"].shape[0]
            for module, parts in modules.items()
            if parts["down"].shape[0] != rank
        },
        "alpha_pattern": {},
    }


def adapter_metadata(denoiser, clips, alpha):
    """``save_diffusers_lora``'s metadata for a test LoRA made by :func:`attach_lora`."""
    meta = {"denoiser": lora_adapter_metadata(denoiser, alpha)}
    for index, state in enumerate(clips):
        meta[f"text_encoder_{index}"] = lora_adapter_metadata(state, alpha)
    return meta
