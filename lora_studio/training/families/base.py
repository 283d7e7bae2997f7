"""The interface every model family implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lora_studio.core.base_model import BaseModelRef
from lora_studio.core.config import ModelFamily

if TYPE_CHECKING:
    import torch


@dataclass
class Components:
    """The loaded parts of a base model that training needs."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    denoiser: torch.nn.Module  # UNet (SD 1.5/SDXL) or transformer (SD3/Flux)
    noise_scheduler: Any
    prediction_type: str


class Family(Protocol):
    family: ModelFamily
    unet_target_modules: tuple[str, ...]
    text_encoder_target_modules: tuple[str, ...]
    text_encoder_prefix: str
    pipeline_class_name: str

    def load(self, ref: BaseModelRef, local_path: Any) -> Components: ...

    def encode_prompts(
        self, components: Components, prompts: list[str], device: torch.device
    ) -> torch.Tensor: ...

    def tokenize(self, components: Components, prompts: list[str]) -> torch.Tensor: ...

    def encode_tokens(
        self, text_encoder: torch.nn.Module, input_ids: torch.Tensor
    ) -> torch.Tensor: ...
