"""Stable Diffusion 1.x/2.x: UNet2DConditionModel, CLIP text encoder, epsilon or
v-prediction (read from the scheduler config)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lora_studio.core.base_model import BaseModelRef, ModelKind
from lora_studio.core.config import ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.training.families.base import Components

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class SD15Family:
    family = ModelFamily.SD15
    unet_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    text_encoder_target_modules = ("q_proj", "k_proj", "v_proj", "out_proj")
    # kohya's SD 1.x files name text-encoder modules lora_te_ (SDXL: lora_te1_/lora_te2_).
    text_encoder_prefix = "lora_te_"
    pipeline_class_name = "StableDiffusionPipeline"

    def load(self, ref: BaseModelRef, local_path: Path) -> Components:
        from diffusers import DDPMScheduler

        try:
            if ref.kind is ModelKind.SINGLE_FILE:
                tokenizer, text_encoder, vae, unet, scheduler_config = self._load_single_file(
                    local_path
                )
                noise_scheduler = DDPMScheduler.from_config(scheduler_config)
            else:
                tokenizer, text_encoder, vae, unet = self._load_folder(local_path)
                noise_scheduler = DDPMScheduler.from_pretrained(
                    local_path, subfolder="scheduler", local_files_only=True
                )
        except ModelError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"The base model at {local_path} cannot be loaded: {_first_line(exc)}"
            ) from exc
        prediction_type = str(noise_scheduler.config.get("prediction_type", "epsilon"))
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ModelError(f"Unsupported prediction type {prediction_type!r} in {local_path}.")
        return Components(tokenizer, text_encoder, vae, unet, noise_scheduler, prediction_type)

    @staticmethod
    def _load_folder(
        path: Path,
    ) -> tuple[object, torch.nn.Module, torch.nn.Module, torch.nn.Module]:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
            if not (path / sub).is_dir():
                raise ModelError(f"The base model folder {path} is incomplete: {sub}/ is missing.")
        tokenizer = CLIPTokenizer.from_pretrained(
            path, subfolder="tokenizer", local_files_only=True
        )
        text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", local_files_only=True
        )
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        return tokenizer, text_encoder, vae, unet

    @staticmethod
    def _load_single_file(
        path: Path,
    ) -> tuple[object, torch.nn.Module, torch.nn.Module, torch.nn.Module, dict]:
        from diffusers import StableDiffusionPipeline

        # from_single_file needs the matching diffusers configs; offline they come from the
        # HF cache (stable-diffusion-v1-5) - a clear error says so when they are missing.
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), local_files_only=True, safety_checker=None
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"{path.name} could not be loaded as a single-file SD checkpoint: "
                f"{_first_line(exc)} (single-file loading needs the model's diffusers "
                f"config in the Hugging Face cache, or use a diffusers folder)."
            ) from exc
        return pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, dict(pipe.scheduler.config)

    def tokenize(self, components: Components, prompts: list[str]) -> torch.Tensor:
        tokenizer = components.tokenizer
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_tokens(self, text_encoder: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        return text_encoder(input_ids)[0]

    def encode_prompts(
        self, components: Components, prompts: list[str], device: torch.device
    ) -> torch.Tensor:
        ids = self.tokenize(components, prompts).to(device)
        return self.encode_tokens(components.text_encoder, ids)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
