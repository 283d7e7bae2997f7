"""Stable Diffusion XL: UNet2DConditionModel with SDXL's added conditioning, two CLIP text
encoders (CLIP-L and OpenCLIP-bigG), DDPM noise prediction (epsilon or v-prediction, read
from the scheduler config).

What differs from SD 1.5:

* the text side: both encoders' penultimate hidden states, concatenated, are the UNet's
  cross-attention context; the second encoder's projected pooled output is its
  ``text_embeds``;
* micro-conditioning: the UNet also gets ``time_ids`` = original size, crop top-left and
  target size of each image (the order diffusers uses);
* kohya names: kohya trains SDXL on the original (SGM/LDM) UNet, so its LoRA files name UNet
  modules ``input_blocks_4_1_...``/``middle_block_1_...``/``output_blocks_...``, which
  Automatic1111/Forge require. :func:`sgm_module_path` maps diffusers' module paths to them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from lora_studio.training.families.sd15 import CLIP_ATTENTION, UNET_ATTENTION, unet_predict
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

#: Where diffusers finds SDXL's configs when it loads a single-file checkpoint.
SDXL_CONFIG_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
#: SDXL's two tokenizers both stop at CLIP's 77 positions.
MAX_TOKENS = 77
#: The SDXL VAE's latent scaling.
SDXL_VAE_SCALING = 0.13025
#: SDXL base 1.0's scheduler (an EulerDiscreteScheduler over the SD noise schedule).
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
_COMPONENT_FOLDERS = (
    "tokenizer",
    "tokenizer_2",
    "text_encoder",
    "text_encoder_2",
    "vae",
    "unet",
    "scheduler",
)


# ---- diffusers -> SGM (original SDXL UNet) module names ------------------------------------


@dataclass(frozen=True)
class UNetLayout:
    """What decides where a diffusers UNet block sits in the original UNet's flat lists.

    The original (SGM/LDM) UNet has ``input_blocks`` (``0`` is ``conv_in``, then per level
    its resnet[+transformer] layers and a downsampler), a three-part ``middle_block`` and
    ``output_blocks`` (per level one layer more than going down, the upsampler riding on
    the level's last layer after its resnet and, if any, its transformer).

    Attributes:
        layers_per_block: resnets per down level (diffusers' ``layers_per_block``).
        up_has_attention: per up level, whether it has transformer layers.
    """

    layers_per_block: tuple[int, ...]
    up_has_attention: tuple[bool, ...]

    @classmethod
    def from_unet_config(cls, config: Mapping[str, Any]) -> UNetLayout | None:
        """The layout of a diffusers UNet config, or ``None`` if it has no SGM counterpart."""
        downs = list(config.get("down_block_types") or ())
        ups = list(config.get("up_block_types") or ())
        mid = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
        if (
            not downs
            or len(ups) != len(downs)
            or any(t not in ("DownBlock2D", "CrossAttnDownBlock2D") for t in downs)
            or any(t not in ("UpBlock2D", "CrossAttnUpBlock2D") for t in ups)
            or mid != "UNetMidBlock2DCrossAttn"
        ):
            return None
        per_block = config.get("layers_per_block", 2)
        if isinstance(per_block, int):
            layers = (per_block,) * len(downs)
        else:
            layers = tuple(int(n) for n in per_block)
            if len(layers) != len(downs):
                return None
        return cls(layers, tuple(t == "CrossAttnUpBlock2D" for t in ups))

    def input_index(self, level: int, layer: int) -> int:
        """``input_blocks`` index of down level ``level``'s layer ``layer`` (the
        downsampler is layer ``layers_per_block[level]``)."""
        if not 0 <= layer <= self.layers_per_block[level]:
            raise IndexError(layer)
        return 1 + sum(n + 1 for n in self.layers_per_block[:level]) + layer

    def output_index(self, level: int, layer: int) -> int:
        """``output_blocks`` index of up level ``level``'s layer ``layer``."""
        up_layers = [n + 1 for n in reversed(self.layers_per_block)]
        if not 0 <= layer < up_layers[level]:
            raise IndexError(layer)
        return sum(up_layers[:level]) + layer


#: SDXL base 1.0 (and its fine-tunes): three levels of two resnets, attention in the two
#: lower levels.
SDXL_LAYOUT = UNetLayout((2, 2, 2), (True, True, False))

_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet(rest: list[str]) -> list[str]:
    return [_RESNET_PARTS[rest[0]], *rest[1:]]


def sgm_module_path(path: str, layout: UNetLayout = SDXL_LAYOUT) -> str:
    """The original SDXL UNet's name for a diffusers UNet module (or parameter) path.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``input_blocks.4.1.transformer_blocks.0.attn1.to_q``; resnet parts are renamed
    (``conv1`` -> ``in_layers.2``...), samplers become ``input_blocks.N.0.op`` /
    ``output_blocks.N.{1,2}.conv``; inside a transformer the names are the same.

    Raises:
        ValueError: ``path`` is not a module of a UNet with this layout.
    """
    for name, sgm in _TOP_LEVEL.items():
        if path == name or path.startswith(name + "."):
            return sgm + path[len(name) :]
    parts = path.split(".")
    try:
        if parts[0] == "down_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "resnets" and index < layout.layers_per_block[level]:
                out = [f"input_blocks.{layout.input_index(level, index)}.0", *_resnet(rest)]
            elif kind == "attentions" and index < layout.layers_per_block[level] and rest:
                out = [f"input_blocks.{layout.input_index(level, index)}.1", *rest]
            elif kind == "downsamplers" and index == 0 and rest[0] == "conv":
                # The last level has no downsampler.
                if level == len(layout.layers_per_block) - 1:
                    raise IndexError(level)
                last = layout.layers_per_block[level]
                out = [f"input_blocks.{layout.input_index(level, last)}.0.op", *rest[1:]]
            else:
                raise KeyError(kind)
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "resnets" and index in (0, 1):
                out = [f"middle_block.{2 * index}", *_resnet(rest)]
            elif kind == "attentions" and index == 0 and rest:
                out = ["middle_block.1", *rest]
            else:
                raise KeyError(kind)
        elif parts[0] == "up_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "resnets":
                out = [f"output_blocks.{layout.output_index(level, index)}.0", *_resnet(rest)]
            elif kind == "attentions" and layout.up_has_attention[level] and rest:
                out = [f"output_blocks.{layout.output_index(level, index)}.1", *rest]
            elif kind == "upsamplers" and index == 0 and rest[0] == "conv":
                if level == len(layout.layers_per_block) - 1:
                    raise IndexError(level)
                last = layout.layers_per_block[::-1][level]
                # The upsampler follows the resnet and, where the level has one, the
                # transformer of the level's last layer.
                slot = 2 if layout.up_has_attention[level] else 1
                out = [f"output_blocks.{layout.output_index(level, last)}.{slot}", *rest]
            else:
                raise KeyError(kind)
        else:
            raise KeyError(parts[0])
    except (IndexError, KeyError, ValueError):
        raise ValueError(f"{path!r} is not a module of an SDXL UNet with {layout}.") from None
    return ".".join(out)


def sgm_lora_state(
    peft_state: Mapping[str, torch.Tensor], layout: UNetLayout = SDXL_LAYOUT
) -> dict[str, torch.Tensor]:
    """A peft UNet LoRA state dict with its module paths in the original UNet's names.

    ``down_blocks.1.attentions.0...to_q.lora_A.weight`` ->
    ``input_blocks.4.1...to_q.lora_A.weight``; the tensor part of the key is kept.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state.items():
        module, sep, tail = key.partition(".lora_")
        if not sep:
            raise ValueError(f"Unexpected LoRA tensor {key!r}")
        out[f"{sgm_module_path(module, layout)}.lora_{tail}"] = tensor
    return out


# ---- the family ---------------------------------------------------------------------------


class SDXLFamily:
    family = ModelFamily.SDXL
    kohya_version = "sdxl_base_v1-0"
    pipeline_class_name = "StableDiffusionXLPipeline"
    denoiser_target_modules = UNET_ATTENTION
    text_encoder_target_modules = CLIP_ATTENTION
    text_encoder_prefixes: tuple[str | None, ...] = ("lora_te1_", "lora_te2_")
    has_conv_layers = True
    repeated_blocks = ("BasicTransformerBlock",)

    def __init__(self) -> None:
        # Set from the loaded UNet's config; SDXL's own until then (kohya_keys needs it).
        self.unet_layout: UNetLayout | None = SDXL_LAYOUT

    def load(
        self, ref: BaseModelRef, local_path: Path, dtype: torch.dtype | None = None
    ) -> Components:
        from diffusers import DDPMScheduler

        try:
            if ref.kind is ModelKind.SINGLE_FILE:
                pipe = self._load_single_file(local_path, dtype)
                tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
                text_encoders = [pipe.text_encoder, pipe.text_encoder_2]
                vae, unet = pipe.vae, pipe.unet
                scheduler_config = dict(pipe.scheduler.config)
                force_zeros = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
            else:
                tokenizers, text_encoders, vae, unet = self._load_folder(local_path, dtype)
                scheduler_config = dict(
                    DDPMScheduler.load_config(
                        local_path, subfolder="scheduler", local_files_only=True
                    )
                )
                force_zeros = _force_zeros_for_empty_prompt(local_path)
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
        if getattr(unet.config, "addition_embed_type", None) != "text_time":
            raise ModelError(
                f"{local_path} is not an SDXL base model: its UNet takes no size/crop "
                f"conditioning (addition_embed_type is not 'text_time')."
            )
        self.unet_layout = UNetLayout.from_unet_config(unet.config)
        if self.unet_layout is None:
            log.warning(
                "The UNet of %s has no original-SDXL counterpart; the kohya file will use "
                "diffusers module names (read by diffusers and ComfyUI, not Automatic1111).",
                local_path,
            )
        return Components(
            tokenizers,
            text_encoders,
            vae,
            unet,
            noise_scheduler,
            prediction_type,
            extra={
                "scheduler_config": scheduler_config,
                "force_zeros_for_empty_prompt": force_zeros,
            },
        )

    @staticmethod
    def _load_folder(
        path: Path, dtype: torch.dtype | None
    ) -> tuple[list[Any], list[Any], Any, Any]:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        require_subfolders(path, _COMPONENT_FOLDERS)
        parts = load_folder(
            path,
            [
                ("tokenizer", CLIPTokenizer),
                ("tokenizer_2", CLIPTokenizer),
                ("text_encoder", CLIPTextModel),
                ("text_encoder_2", CLIPTextModelWithProjection),
                ("vae", AutoencoderKL),
                ("unet", UNet2DConditionModel),
            ],
            dtype,
        )
        return (
            [parts["tokenizer"], parts["tokenizer_2"]],
            [parts["text_encoder"], parts["text_encoder_2"]],
            parts["vae"],
            parts["unet"],
        )

    @staticmethod
    def _load_single_file(path: Path, dtype: torch.dtype | None) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return load_single_file(
            StableDiffusionXLPipeline, path, "SDXL", config_repo=SDXL_CONFIG_REPO, dtype=dtype
        )

    def tokenize(self, comps: Components, captions: Sequence[str]) -> list[torch.Tensor]:
        return [
            tokenizer(
                list(captions),
                padding="max_length",
                max_length=MAX_TOKENS,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tokenizer in comps.tokenizers
        ]

    def encode_text(
        self,
        comps: Components,
        text_encoders: Sequence[torch.nn.Module],
        token_ids: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        import torch

        first = text_encoders[0](token_ids[0], output_hidden_states=True)
        second = text_encoders[1](token_ids[1], output_hidden_states=True)
        # As SDXL was trained (and diffusers' pipeline encodes): the penultimate layer of
        # both encoders side by side, and the second encoder's projected pooled output.
        return {
            "prompt_embeds": torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1),
            "pooled": second.text_embeds,
        }

    def scale_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        return latents * float(getattr(comps.vae.config, "scaling_factor", SDXL_VAE_SCALING))

    def loss(self, inputs: LossInputs) -> torch.Tensor:
        comps = inputs.comps
        meta = inputs.image_meta
        if meta.ndim != 2 or meta.shape != (inputs.latents.shape[0], 6):
            raise ValueError(f"image_meta must be (batch, 6), got {tuple(meta.shape)}")
        # Rows are (original h, w, crop top, left, target h, w): diffusers' time_ids order
        # original_size + crops_coords_top_left + target_size.
        added = {
            "text_embeds": inputs.cond["pooled"],
            "time_ids": meta.to(device=inputs.latents.device, dtype=inputs.weight_dtype),
        }
        return ddpm_loss(
            inputs.latents,
            comps.noise_scheduler,
            comps.prediction_type,
            unet_predict(inputs, added_cond_kwargs=added),
            inputs.generator,
            inputs.config,
            draws=inputs.draws,
        )

    def loss_draws(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        return ddpm_draws(
            inputs.latents, inputs.comps.noise_scheduler, inputs.generator, inputs.config
        )

    def kohya_keys(self, denoiser_lora: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
        conv_alpha = config.conv_alpha if config.conv_rank else None
        layout = self.unet_layout
        if layout is None:
            return kohya_lora_keys(
                denoiser_lora,
                "lora_unet_",
                alpha=config.alpha,
                conv_alpha=conv_alpha,
                conv_targets=CONV_TARGETS,
            )
        # The LoCon layers are told by their diffusers names (the trainer's rule: the
        # last part is one of CONV_TARGETS), then renamed with the rest; any other
        # convolution among custom targets (conv_in, conv_out...) trained with ``alpha``.
        locon = {
            sgm_module_path(module, layout)
            for key in denoiser_lora
            if (module := key.partition(".lora_")[0]).rsplit(".", 1)[-1] in CONV_TARGETS
        }
        return kohya_lora_keys(
            sgm_lora_state(denoiser_lora, layout),
            "lora_unet_",
            alpha=config.alpha,
            conv_alpha=conv_alpha,
            conv_modules=locon,
        )

    def pipeline(
        self, comps: Components, denoiser: Any, text_encoders: Sequence[torch.nn.Module]
    ) -> Any:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        scheduler_config = comps.extra.get("scheduler_config", comps.noise_scheduler.config)
        return StableDiffusionXLPipeline(
            vae=comps.vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=comps.tokenizers[0],
            tokenizer_2=comps.tokenizers[1],
            unet=denoiser,
            scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
            force_zeros_for_empty_prompt=bool(
                comps.extra.get("force_zeros_for_empty_prompt", True)
            ),
            add_watermarker=False,
        )

    def text_encoder_kohya_keys(
        self, index: int, lora: dict[str, Any], config: LoraConfig
    ) -> dict[str, Any]:
        if index not in (0, 1):
            raise ValueError(f"SDXL has two text encoders, not #{index}.")
        return clip_kohya_keys(lora, self.text_encoder_prefixes[index] or "", alpha=config.alpha)

    def save_diffusers_lora(
        self,
        folder: Path,
        denoiser_lora: dict[str, Any],
        text_encoder_loras: Sequence[dict[str, Any] | None],
        adapter_metadata: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> Path:
        from diffusers import StableDiffusionXLPipeline

        return save_family_diffusers_lora(
            StableDiffusionXLPipeline,
            folder,
            ("unet", "text_encoder", "text_encoder_2"),
            denoiser_lora,
            text_encoder_loras,
            adapter_metadata,
        )

    def make_tiny(self, folder: Path, seed: int = 0) -> Path:
        return make_tiny_sdxl(folder, seed)


def _force_zeros_for_empty_prompt(folder: Path) -> bool:
    """SDXL base draws an empty negative prompt as zeros (``model_index.json`` says)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return bool(index.get("force_zeros_for_empty_prompt", True))


# ---- the tiny model -------------------------------------------------------------------------


def make_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """Build SDXL's architecture at toy size with random weights and save it as a diffusers
    folder at ``folder`` (about 10 MB; the same seed and library versions give the same
    weights).

    The UNet keeps SDXL's block structure (three levels of two resnets, no attention in the
    first level, two transformer layers deeper down, the ``text_time`` added conditioning),
    so a LoRA trained on it has SDXL's key names; the two text encoders have different
    widths so that mixing them up fails loudly.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_studio.training.tiny import save_tiny_pipeline

    tokenizer, tokenizer_2, vocab_size = sdxl_tokenizers()
    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def clip_config(hidden: int, projection: int, act: str, pad: int) -> Any:
        return CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=projection,
            hidden_act=act,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )

    te1_hidden, te2_hidden, pooled_dim, time_dim = 32, 48, 40, 8
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_config(te1_hidden, te1_hidden, "quick_gelu", eos))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        clip_config(te2_hidden, pooled_dim, "gelu", tokenizer_2.pad_token_id)
    )
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        use_linear_projection=True,
        cross_attention_dim=te1_hidden + te2_hidden,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # The pooled text embedding plus six Fourier-embedded size/crop numbers.
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=128,
        scaling_factor=SDXL_VAE_SCALING,
        force_upcast=True,
    )
    pipe = sdxl_pipeline(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet)
    return save_tiny_pipeline(pipe, Path(folder), ModelFamily.SDXL, seed)


def sdxl_tokenizers() -> tuple[Any, Any, int]:
    """SDXL's two CLIP tokenizers over the built-in BPE vocabulary (see ``tiny.py``), and
    its size. The second (OpenCLIP) pads with "!" rather than the end token, as SDXL's."""
    from transformers import CLIPTokenizer

    from lora_studio.training.tiny import write_clip_tokenizer_files

    with tempfile.TemporaryDirectory() as scratch:
        tok_dir = Path(scratch) / "tokenizer"
        vocab_size = write_clip_tokenizer_files(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=MAX_TOKENS)
        tokenizer_2 = CLIPTokenizer.from_pretrained(
            tok_dir, model_max_length=MAX_TOKENS, pad_token="!"
        )
    return tokenizer, tokenizer_2, vocab_size


def sdxl_pipeline(
    vae: Any, text_encoder: Any, text_encoder_2: Any, tokenizer: Any, tokenizer_2: Any, unet: Any
) -> Any:
    """An SDXL pipeline of these parts, with SDXL base's scheduler and no watermarker."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
