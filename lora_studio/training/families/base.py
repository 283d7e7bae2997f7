"""The interface every model family implements, and what the trainer hands it.

The trainer owns everything family-independent: data, buckets, caches, LoRA layers,
optimizer, checkpoints, samples, export. A family owns what differs between SD 1.5, SDXL,
SD 3.5 and Flux:

* :meth:`Family.load` - the components, from a diffusers folder or a single file;
* :meth:`Family.tokenize` / :meth:`Family.encode_text` - captions to conditioning tensors
  (cached once per run unless the text encoder is trained);
* :meth:`Family.scale_latents` - the VAE's scaling (and shift) of latents;
* :meth:`Family.loss` - noise, timesteps, the model call and the objective of one batch;
* key names for kohya export (``text_encoder_prefixes``, :meth:`Family.kohya_keys`);
* :meth:`Family.pipeline` - an inference pipeline for sample images during training;
* :meth:`Family.save_diffusers_lora` - the optional diffusers/peft-format output;
* :meth:`Family.make_tiny` - the tiny random-weight model of the family (tests, demos).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lora_studio.core.base_model import BaseModelRef
from lora_studio.core.config import LoraConfig, ModelFamily

if TYPE_CHECKING:
    import torch


@dataclass
class Components:
    """The loaded parts of a base model that training needs.

    Attributes:
        tokenizers: one per text encoder, same order.
        text_encoders: CLIP-L first, then CLIP-G/OpenCLIP, then T5, as the family has them.
        vae: the autoencoder.
        denoiser: the UNet (SD 1.5, SDXL) or transformer (SD 3.5, Flux).
        noise_scheduler: the training scheduler (DDPM or flow-matching Euler).
        prediction_type: ``epsilon``, ``v_prediction`` or ``flow_matching``.
        extra: anything else a family needs at loss time.
    """

    tokenizers: list[Any]
    text_encoders: list[torch.nn.Module]
    vae: torch.nn.Module
    denoiser: torch.nn.Module
    noise_scheduler: Any
    prediction_type: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossInputs:
    """One training batch, ready for :meth:`Family.loss`.

    Attributes:
        comps: the run's components.
        denoiser: the (LoRA-wrapped, possibly accelerate-prepared) denoiser to call.
        latents: ``(B, C, h, w)`` scaled latents on the training device (fp32).
        cond: conditioning tensors from :meth:`Family.encode_text`, batch first, on the
            device, in the model's dtype.
        image_meta: ``(B, 6)`` float tensor: original height, width, crop top, crop left,
            target height, width (SDXL's micro-conditioning; others may ignore it).
        generator: the run's CPU generator; every random draw goes through it so a run is
            reproducible and resumable.
        config: the run's settings.
        weight_dtype: the frozen model's dtype.
        autocast: a context-manager factory for mixed precision (``accelerator.autocast``).
        draws: the batch's random draws from :meth:`Family.loss_draws`, made beforehand
            (a CUDA-graph step draws outside the graph); ``None``: the loss draws them.
    """

    comps: Components
    denoiser: Any
    latents: torch.Tensor
    cond: dict[str, torch.Tensor]
    image_meta: torch.Tensor
    generator: torch.Generator
    config: LoraConfig
    weight_dtype: torch.dtype
    autocast: Any
    draws: dict[str, torch.Tensor] | None = None


class Family(Protocol):
    """What the trainer needs from a model family (see the module docstring)."""

    family: ModelFamily
    #: kohya's ``ss_base_model_version`` when the reference does not tell (e.g. ``sd_v1``).
    kohya_version: str
    pipeline_class_name: str
    #: denoiser modules that get LoRA layers by default.
    denoiser_target_modules: tuple[str, ...]
    #: text-encoder modules that get LoRA layers when the text encoder is trained.
    text_encoder_target_modules: tuple[str, ...]
    #: kohya key prefix per text encoder (``Components.text_encoders`` order); ``None``
    #: for an encoder that is never trained (T5).
    text_encoder_prefixes: tuple[str | None, ...]
    #: whether the denoiser has convolutions worth a LoCon (conv) LoRA.
    has_conv_layers: bool
    #: class names of the denoiser's repeated transformer blocks: ``torch_compile``
    #: compiles each of them in place rather than the whole denoiser (regional compilation:
    #: one graph per block shape, seconds instead of minutes, the same steps).
    repeated_blocks: tuple[str, ...]

    def load(
        self, ref: BaseModelRef, local_path: Path, dtype: torch.dtype | None = None
    ) -> Components:
        """The components, the UNet/transformer and text encoders in ``dtype`` (the VAE
        stays fp32) when given."""
        ...

    def tokenize(self, comps: Components, captions: Sequence[str]) -> list[torch.Tensor]:
        """Token ids per text encoder, each ``(B, L)``."""
        ...

    def encode_text(
        self,
        comps: Components,
        text_encoders: Sequence[torch.nn.Module],
        token_ids: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Conditioning tensors, batch first (e.g. ``prompt_embeds``, ``pooled``)."""
        ...

    def scale_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents as the denoiser expects them (scaling factor, shift)."""
        ...

    def loss(self, inputs: LossInputs) -> torch.Tensor:
        """The scalar training loss of one batch."""
        ...

    #: ``loss_draws(inputs) -> dict``: the batch's random draws (from ``inputs.generator``,
    #: in the order :meth:`loss` would make them, on the device), for ``inputs.draws``.
    #: ``None`` where the loss cannot take its draws from outside (no CUDA-graph steps).
    loss_draws: Callable[[LossInputs], dict[str, torch.Tensor]] | None

    def kohya_keys(self, denoiser_lora: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
        """Rename a peft denoiser state dict (``module.lora_A.weight``) to kohya keys,
        with each module's ``.alpha`` (``config.alpha``; ``config.conv_alpha`` for convs)."""
        ...

    def text_encoder_kohya_keys(
        self, index: int, lora: dict[str, Any], config: LoraConfig
    ) -> dict[str, Any]:
        """The kohya keys of text encoder ``index``'s LoRA (CLIP: ``lora_te1_...``)."""
        ...

    def pipeline(
        self, comps: Components, denoiser: Any, text_encoders: Sequence[torch.nn.Module]
    ) -> Any:
        """A diffusers pipeline over these components (with the LoRA-wrapped denoiser and
        text encoders) for drawing sample images; its scheduler is the model's inference
        scheduler, not the training one."""
        ...

    def save_diffusers_lora(
        self,
        folder: Path,
        denoiser_lora: dict[str, Any],
        text_encoder_loras: Sequence[dict[str, Any] | None],
        adapter_metadata: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> Path:
        """Write the LoRA in diffusers/peft format (``pytorch_lora_weights.safetensors``)
        with the family's pipeline ``save_lora_weights``; returns the file.

        ``adapter_metadata`` (``export.diffusers_adapter_metadata`` of the peft configs,
        keyed ``denoiser``, ``text_encoder_0``...) goes into the file so diffusers applies
        the trained alpha on load."""
        ...

    def make_tiny(self, folder: Path, seed: int = 0) -> Path:
        """Build the family's tiny random-weight model as a diffusers folder."""
        ...
