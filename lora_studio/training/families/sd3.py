"""Stable Diffusion 3 / 3.5: ``SD3Transformer2DModel`` (MMDiT), CLIP-L + CLIP-G + T5,
rectified flow with logit-normal timesteps.

The LoRA file format
--------------------
diffusers' ``StableDiffusion3Pipeline.load_lora_weights`` converts no foreign key format
(unlike SD 1.x, SDXL and Flux): it loads only diffusers/peft keys,
``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` and
``text_encoder[_2].text_model.<module>.lora_A.weight``, and it refuses a file holding any
tensor without ``lora`` in its name (so no ``.alpha`` tensors). ComfyUI and Forge read the
same keys for SD 3 ("regular diffusers sd3 lora format" in their ``model_lora_keys_unet``,
``text_encoder.text_model.encoder.layers.N`` in ``model_lora_keys_clip``). So the SD 3
"kohya" file is written in that format - the one format every reader shares - with the
``ss_*`` metadata of the other families. Without per-module alphas every reader applies
scale 1, so ``alpha / rank`` is folded into ``lora_A``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.base_model import BaseModelRef, ModelKind
from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.training.export import save_family_diffusers_lora
from lora_studio.training.families import flow_common
from lora_studio.training.families.base import Components, LossInputs
from lora_studio.training.families.sd15 import CLIP_ATTENTION
from lora_studio.training.loading import LOAD_ERRORS, first_line, load_folder, load_single_file
from lora_studio.training.objectives import flow_matching_loss

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: MMDiT attention projections: image stream, context stream (``add_*``; the last block
#: has no ``to_add_out``) and SD 3.5 Medium's second image attention (``attn2.*``).
SD3_ATTENTION = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
#: The pipeline's default T5 length (``max_sequence_length=256``); the tokenizer's own
#: ``model_max_length`` applies when it is shorter.
T5_MAX_LENGTH = 256
#: diffusers component names, in ``Components.text_encoders`` order.
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")


class SD3Family:
    family = ModelFamily.SD3
    kohya_version = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    denoiser_target_modules = SD3_ATTENTION
    text_encoder_target_modules = CLIP_ATTENTION
    # kohya sd-scripts' SD 3 prefixes; only the two CLIPs are trainable. The LoRA file uses
    # diffusers names for them (text_encoder_kohya_keys), which all readers share.
    text_encoder_prefixes: tuple[str | None, ...] = ("lora_te1_", "lora_te2_", None)
    has_conv_layers = False
    repeated_blocks = ("JointTransformerBlock",)
    # The flow-matching draws are made inside the loss: no CUDA-graph steps (yet).
    loss_draws = None

    # ---- loading ---------------------------------------------------------------------

    def load(
        self, ref: BaseModelRef, local_path: Path, dtype: torch.dtype | None = None
    ) -> Components:
        try:
            if ref.kind is ModelKind.SINGLE_FILE:
                parts = self._load_single_file(local_path, dtype)
            else:
                parts = self._load_folder(local_path, dtype)
            noise_scheduler = flow_common.training_scheduler(parts["scheduler"])
        except ModelError:
            raise
        except LOAD_ERRORS as exc:
            raise ModelError(
                f"The base model at {local_path} cannot be loaded: {first_line(exc)}"
            ) from exc
        return Components(
            tokenizers=[parts["tokenizer"], parts["tokenizer_2"], parts["tokenizer_3"]],
            text_encoders=[parts[name] for name in TEXT_ENCODER_NAMES],
            vae=parts["vae"],
            denoiser=parts["transformer"],
            noise_scheduler=noise_scheduler,
            prediction_type="flow_matching",
        )

    @staticmethod
    def _load_folder(path: Path, dtype: torch.dtype | None) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import (
            CLIPTextModelWithProjection,
            CLIPTokenizer,
            T5EncoderModel,
            T5Tokenizer,
        )

        return load_folder(
            path,
            [
                ("tokenizer", CLIPTokenizer),
                ("tokenizer_2", CLIPTokenizer),
                ("tokenizer_3", T5Tokenizer),
                ("text_encoder", CLIPTextModelWithProjection),
                ("text_encoder_2", CLIPTextModelWithProjection),
                ("text_encoder_3", T5EncoderModel),
                ("vae", AutoencoderKL),
                ("transformer", SD3Transformer2DModel),
                ("scheduler", FlowMatchEulerDiscreteScheduler),
            ],
            dtype,
        )

    @staticmethod
    def _load_single_file(path: Path, dtype: torch.dtype | None) -> dict[str, Any]:
        from diffusers import StableDiffusion3Pipeline

        pipe = load_single_file(
            StableDiffusion3Pipeline,
            path,
            "SD 3.5",
            config_repo="stabilityai/stable-diffusion-3.5-large",
            dtype=dtype,
        )
        parts = dict(pipe.components)
        missing = [name for name in ("text_encoder_3", "tokenizer_3") if parts.get(name) is None]
        if missing:
            raise ModelError(
                f"{path.name} has no T5 text encoder ({', '.join(missing)}); LoRA Studio "
                f"trains SD 3.5 with all three text encoders - use a checkpoint that "
                f"includes T5 or a diffusers folder."
            )
        return parts

    # ---- text ------------------------------------------------------------------------

    def tokenize(self, comps: Components, captions: Sequence[str]) -> list[torch.Tensor]:
        clip_l, clip_g, t5 = comps.tokenizers
        return [
            flow_common.clip_token_ids(clip_l, captions),
            flow_common.clip_token_ids(clip_g, captions),
            flow_common.t5_token_ids(t5, captions, T5_MAX_LENGTH),
        ]

    def encode_text(
        self,
        comps: Components,
        text_encoders: Sequence[torch.nn.Module],
        token_ids: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """As ``StableDiffusion3Pipeline.encode_prompt`` (no clip skip): the two CLIPs'
        penultimate hidden states side by side, zero-padded to T5's width, then T5's
        states after them along the sequence; pooled = both CLIPs' projected embeds."""
        import torch
        import torch.nn.functional as F

        hidden, pooled = [], []
        for encoder, ids in zip(text_encoders[:2], token_ids[:2], strict=True):
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])
        t5 = text_encoders[2]
        t5_embeds = t5(token_ids[2].to(t5.device))[0]
        clip_embeds = torch.cat(hidden, dim=-1)
        clip_embeds = F.pad(clip_embeds, (0, t5_embeds.shape[-1] - clip_embeds.shape[-1]))
        clip_embeds = clip_embeds.to(device=t5_embeds.device, dtype=t5_embeds.dtype)
        return {
            "prompt_embeds": torch.cat([clip_embeds, t5_embeds], dim=-2),
            "pooled": torch.cat(pooled, dim=-1),
        }

    # ---- objective -------------------------------------------------------------------

    def scale_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        config = comps.vae.config
        shift = float(getattr(config, "shift_factor", None) or 0.0)
        return (latents - shift) * float(config.scaling_factor)

    def loss(self, inputs: LossInputs) -> torch.Tensor:
        cond = inputs.cond

        def predict(
            noisy: torch.Tensor, timesteps: torch.Tensor, sigmas: torch.Tensor
        ) -> torch.Tensor:
            with inputs.autocast():
                return inputs.denoiser(  # type: ignore[no-any-return]
                    hidden_states=noisy.to(inputs.weight_dtype),
                    timestep=timesteps,
                    encoder_hidden_states=cond["prompt_embeds"],
                    pooled_projections=cond["pooled"],
                ).sample

        return flow_matching_loss(
            inputs.latents, inputs.comps.noise_scheduler, predict, inputs.generator, inputs.config
        )

    # ---- export ----------------------------------------------------------------------

    def kohya_keys(self, denoiser_lora: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
        """diffusers/peft keys (``transformer.<module>.lora_A.weight``), alpha folded in:
        the SD 3 format that diffusers, ComfyUI and Forge all load (module docstring)."""
        return flow_common.diffusers_lora_keys(denoiser_lora, "transformer.", alpha=config.alpha)

    def text_encoder_kohya_keys(
        self, index: int, text_encoder_lora: dict[str, Any], config: LoraConfig
    ) -> dict[str, Any]:
        """CLIP-L (``index`` 0) or CLIP-G (1) LoRA tensors for the LoRA file:
        ``text_encoder[_2].text_model.<module>.lora_A.weight``, alpha folded in."""
        if index not in (0, 1):
            raise ValueError(f"SD 3 trains only its two CLIP text encoders, not #{index}")
        return flow_common.diffusers_lora_keys(
            text_encoder_lora,
            f"{TEXT_ENCODER_NAMES[index]}.",
            alpha=config.alpha,
            module_root="text_model.",
        )

    def pipeline(
        self, comps: Components, denoiser: Any, text_encoders: Sequence[torch.nn.Module]
    ) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=denoiser,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps.noise_scheduler.config),
            vae=comps.vae,
            text_encoder=text_encoders[0],
            tokenizer=comps.tokenizers[0],
            text_encoder_2=text_encoders[1],
            tokenizer_2=comps.tokenizers[1],
            text_encoder_3=text_encoders[2],
            tokenizer_3=comps.tokenizers[2],
        )

    def save_diffusers_lora(
        self,
        folder: Path,
        denoiser_lora: dict[str, Any],
        text_encoder_loras: Sequence[dict[str, Any] | None],
        adapter_metadata: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> Path:
        from diffusers import StableDiffusion3Pipeline

        return save_family_diffusers_lora(
            StableDiffusion3Pipeline,
            folder,
            ("transformer", "text_encoder", "text_encoder_2"),
            denoiser_lora,
            text_encoder_loras,
            adapter_metadata,
        )

    # ---- tiny model ------------------------------------------------------------------

    def make_tiny(self, folder: Path, seed: int = 0) -> Path:
        return make_tiny_sd3(folder, seed)


def make_tiny_sd3(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny SD 3.5 pipeline and save it as a diffusers folder at ``folder``.

    SD 3.5 Medium's layout at toy size: an MMDiT with patch size 2, RMS q/k norm, a dual
    (second image) attention in its first block and a context-pre-only last block; CLIP-L
    and CLIP-G with projections (different widths, so a swapped order shows), a T5 encoder,
    and a 16-channel VAE with SD 3's latent scaling and shift.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    from lora_studio.training.tiny import save_tiny_pipeline

    clip_tokenizer = flow_common.tiny_clip_tokenizer()
    t5_tokenizer = flow_common.tiny_t5_tokenizer(model_max_length=32)
    clip_l = flow_common.seeded(
        seed,
        lambda: CLIPTextModelWithProjection(
            flow_common.tiny_clip_config(clip_tokenizer, hidden_size=32, projection_dim=32)
        ),
    )
    clip_g = flow_common.seeded(
        seed + 1,
        lambda: CLIPTextModelWithProjection(
            flow_common.tiny_clip_config(clip_tokenizer, hidden_size=48, projection_dim=48)
        ),
    )
    # T5's width is the joint attention width; it must hold both CLIPs side by side.
    t5 = flow_common.tiny_t5_encoder(len(t5_tokenizer), d_model=96, seed=seed + 2)
    transformer = flow_common.seeded(
        seed + 3,
        lambda: SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=96,
            caption_projection_dim=32,
            pooled_projection_dim=32 + 48,
            out_channels=16,
            pos_embed_max_size=64,
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        ),
    )
    vae = flow_common.tiny_vae(scaling_factor=1.5305, shift_factor=0.0609, seed=seed + 4)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer,
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    return save_tiny_pipeline(pipe, Path(folder), ModelFamily.SD3, seed)
