"""Stable Diffusion 1.x/2.x: UNet2DConditionModel, one CLIP text encoder, DDPM noise
prediction with epsilon or v-prediction (read from the scheduler config)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.base_model import BaseModelRef, ModelKind
from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.training.export import (
    CONV_TARGETS,
    clip_kohya_keys,
    kohya_lora_keys,
    save_family_diffusers_lora,
)
from lora_studio.training.families.base import Components, LossInputs
from lora_studio.training.loading import (
    LOAD_ERRORS,
    first_line,
    load_folder,
    load_single_file,
    require_subfolders,
)
from lora_studio.training.objectives import ddpm_draws, ddpm_loss

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: diffusers UNet modules whose LoRA layers SD 1.x/SDXL LoRAs usually carry.
UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
#: CLIP attention projections (the text-encoder LoRA of kohya's SD 1.x/SDXL files).
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def unet_predict(inputs: LossInputs, **added: Any) -> Any:
    """A ``predict(noisy, timesteps)`` closure for :func:`ddpm_loss` over a UNet."""

    def predict(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        with inputs.autocast():
            return inputs.denoiser(
                noisy.to(inputs.weight_dtype),
                timesteps,
                inputs.cond["prompt_embeds"],
                **added,
            ).sample

    return predict


class SD15Family:
    family = ModelFamily.SD15
    kohya_version = "sd_v1"
    pipeline_class_name = "StableDiffusionPipeline"
    denoiser_target_modules = UNET_ATTENTION
    text_encoder_target_modules = CLIP_ATTENTION
    # kohya's SD 1.x files name text-encoder modules lora_te_ (SDXL: lora_te1_/lora_te2_).
    text_encoder_prefixes: tuple[str | None, ...] = ("lora_te_",)
    has_conv_layers = True
    repeated_blocks = ("BasicTransformerBlock",)

    def load(
        self, ref: BaseModelRef, local_path: Path, dtype: torch.dtype | None = None
    ) -> Components:
        from diffusers import (
            AutoencoderKL,
            DDPMScheduler,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            if ref.kind is ModelKind.SINGLE_FILE:
                pipe = load_single_file(
                    StableDiffusionPipeline,
                    local_path,
                    "SD 1.5",
                    config_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
                    dtype=dtype,
                    safety_checker=None,
                )
                parts = dict(pipe.components)
                scheduler_config = dict(pipe.scheduler.config)
            else:
                require_subfolders(local_path, ["scheduler"])
                parts = load_folder(
                    local_path,
                    [
                        ("tokenizer", CLIPTokenizer),
                        ("text_encoder", CLIPTextModel),
                        ("vae", AutoencoderKL),
                        ("unet", UNet2DConditionModel),
                    ],
                    dtype,
                )
                scheduler_config = dict(
                    DDPMScheduler.load_config(
                        local_path, subfolder="scheduler", local_files_only=True
                    )
                )
            noise_scheduler = DDPMScheduler.from_config(scheduler_config)
        except ModelError:
            raise
        except LOAD_ERRORS as exc:
            raise ModelError(
                f"The base model at {local_path} cannot be loaded: {first_line(exc)}"
            ) from exc
        prediction_type = str(noise_scheduler.config.get("prediction_type", "epsilon"))
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ModelError(f"Unsupported prediction type {prediction_type!r} in {local_path}.")
        return Components(
            [parts["tokenizer"]],
            [parts["text_encoder"]],
            parts["vae"],
            parts["unet"],
            noise_scheduler,
            prediction_type,
        )

    def tokenize(self, comps: Components, captions: Sequence[str]) -> list[torch.Tensor]:
        tokenizer = comps.tokenizers[0]
        ids = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return [ids]

    def encode_text(
        self,
        comps: Components,
        text_encoders: Sequence[torch.nn.Module],
        token_ids: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": text_encoders[0](token_ids[0])[0]}

    def scale_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        return latents * float(getattr(comps.vae.config, "scaling_factor", 0.18215))

    def loss(self, inputs: LossInputs) -> torch.Tensor:
        comps = inputs.comps
        return ddpm_loss(
            inputs.latents,
            comps.noise_scheduler,
            comps.prediction_type,
            unet_predict(inputs),
            inputs.generator,
            inputs.config,
            draws=inputs.draws,
        )

    def loss_draws(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        return ddpm_draws(
            inputs.latents, inputs.comps.noise_scheduler, inputs.generator, inputs.config
        )

    def kohya_keys(self, denoiser_lora: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
        return kohya_lora_keys(
            denoiser_lora,
            "lora_unet_",
            alpha=config.alpha,
            conv_alpha=config.conv_alpha if config.conv_rank else None,
            conv_targets=CONV_TARGETS,
        )

    def text_encoder_kohya_keys(
        self, index: int, lora: dict[str, Any], config: LoraConfig
    ) -> dict[str, Any]:
        prefix = self.text_encoder_prefixes[index]
        if prefix is None:
            raise ValueError(f"Text encoder {index} of {self.family.label} is not trainable.")
        return clip_kohya_keys(lora, prefix, alpha=config.alpha)

    def pipeline(
        self, comps: Components, denoiser: Any, text_encoders: Sequence[torch.nn.Module]
    ) -> Any:
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=comps.vae,
            text_encoder=text_encoders[0],
            tokenizer=comps.tokenizers[0],
            unet=denoiser,
            scheduler=EulerDiscreteScheduler.from_config(comps.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def save_diffusers_lora(
        self,
        folder: Path,
        denoiser_lora: dict[str, Any],
        text_encoder_loras: Sequence[dict[str, Any] | None],
        adapter_metadata: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> Path:
        from diffusers import StableDiffusionPipeline

        return save_family_diffusers_lora(
            StableDiffusionPipeline,
            folder,
            ("unet", "text_encoder"),
            denoiser_lora,
            text_encoder_loras,
            adapter_metadata,
        )

    def make_tiny(self, folder: Path, seed: int = 0) -> Path:
        from lora_studio.training.tiny import make_tiny_sd15

        return make_tiny_sd15(folder, seed)
