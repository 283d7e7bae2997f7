"""Flux.1 (dev, schnell and their fine-tunes): ``FluxTransformer2DModel`` over 2x2-packed
16-channel latents, CLIP-L (pooled only) + T5, flow matching with a guidance embedding
(dev).

The LoRA file format
--------------------
The Flux LoRAs people share (kohya sd-scripts, ai-toolkit's ComfyUI exports) name Black
Forest Labs' modules: ``lora_unet_double_blocks_0_img_attn_qkv``,
``lora_unet_double_blocks_0_txt_attn_proj``, ``lora_unet_single_blocks_0_linear1``...
In BFL's model q, k and v (and in single blocks also the MLP input, ``proj_mlp``) are one
fused linear, where diffusers has one module each. A LoRA on the separate modules is
written as one exact LoRA on the fused linear: down = the members' ``lora_A`` stacked,
up = their ``lora_B`` block-diagonal (rows of untrained members zero), so the rank is the
sum of the members' ranks and the alpha is scaled by the same factor (alpha / rank, the
scale, is unchanged). ComfyUI and Forge add ``up @ down * alpha / rank`` to the fused
weight; diffusers' ``load_lora_weights`` (``_convert_kohya_flux_lora_to_diffusers``)
splits it again: into the members' own LoRAs when it finds the up matrix block-diagonal
(all of q, k, v trained), else into one LoRA per member that shares the fused down matrix
- exact either way.

Two limits of diffusers 0.42 (ComfyUI and Forge are not affected): it splits a single
block's ``linear1`` at FLUX.1's widths (3072 x 3 + 12288), so a model of another width
cannot load single-block LoRAs - which is why the tiny Flux has no single blocks, and the
single-block fusing is tested at FLUX.1's widths; and it drops LoRAs on the modules outside
the blocks (``img_in``, ``txt_in``, ``final_layer``...), which only a custom target list
trains.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.base_model import BaseModelRef, ModelKind
from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.training.export import clip_kohya_keys, save_family_diffusers_lora
from lora_studio.training.families import flow_common
from lora_studio.training.families.base import Components, LossInputs
from lora_studio.training.families.sd15 import CLIP_ATTENTION
from lora_studio.training.loading import LOAD_ERRORS, first_line, load_folder, load_single_file
from lora_studio.training.objectives import flow_matching_loss

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: attention projections of the double blocks (image and context streams) and of the
#: single blocks (which have only ``to_q``/``to_k``/``to_v``).
FLUX_ATTENTION = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
#: FluxPipeline's default (and largest) T5 length; the tokenizer's ``model_max_length``
#: applies when it is shorter (the tiny model's is 32).
T5_MAX_LENGTH = 512
#: FluxSingleTransformerBlock's MLP width relative to the model width.
SINGLE_MLP_RATIO = 4

# diffusers module inside a double block -> (BFL module, member of the fused q/k/v or None)
_DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0),
    "attn.to_k": ("img_attn_qkv", 1),
    "attn.to_v": ("img_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None),
    "attn.add_q_proj": ("txt_attn_qkv", 0),
    "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
    "norm1.linear": ("img_mod_lin", None),
    "norm1_context.linear": ("txt_mod_lin", None),
}
# ... inside a single block: linear1 = [q | k | v | mlp-in], linear2 = proj_out
_SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation_lin", None),
}
# ... outside the blocks
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "proj_out": "final_layer_linear",
    "norm_out.linear": "final_layer_adaLN_modulation_1",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


class FluxFamily:
    family = ModelFamily.FLUX
    kohya_version = "flux1"
    pipeline_class_name = "FluxPipeline"
    denoiser_target_modules = FLUX_ATTENTION
    text_encoder_target_modules = CLIP_ATTENTION
    # kohya sd-scripts' Flux prefix for CLIP-L (diffusers reads lora_te_/lora_te1_); T5
    # is never trained.
    text_encoder_prefixes: tuple[str | None, ...] = ("lora_te1_", None)
    has_conv_layers = False
    repeated_blocks = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    # The flow-matching draws are made inside the loss: no CUDA-graph steps (yet).
    loss_draws = None

    # ---- loading ---------------------------------------------------------------------

    def load(
        self, ref: BaseModelRef, local_path: Path, dtype: torch.dtype | None = None
    ) -> Components:
        try:
            if ref.kind is ModelKind.SINGLE_FILE:
                from diffusers import FluxPipeline

                pipe = load_single_file(
                    FluxPipeline,
                    local_path,
                    "Flux",
                    config_repo="black-forest-labs/FLUX.1-dev",
                    dtype=dtype,
                )
                parts = dict(pipe.components)
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
            tokenizers=[parts["tokenizer"], parts["tokenizer_2"]],
            text_encoders=[parts["text_encoder"], parts["text_encoder_2"]],
            vae=parts["vae"],
            denoiser=parts["transformer"],
            noise_scheduler=noise_scheduler,
            prediction_type="flow_matching",
        )

    @staticmethod
    def _load_folder(path: Path, dtype: torch.dtype | None) -> dict[str, Any]:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

        return load_folder(
            path,
            [
                ("tokenizer", CLIPTokenizer),
                ("tokenizer_2", T5Tokenizer),
                ("text_encoder", CLIPTextModel),
                ("text_encoder_2", T5EncoderModel),
                ("vae", AutoencoderKL),
                ("transformer", FluxTransformer2DModel),
                ("scheduler", FlowMatchEulerDiscreteScheduler),
            ],
            dtype,
        )

    # ---- text ------------------------------------------------------------------------

    def tokenize(self, comps: Components, captions: Sequence[str]) -> list[torch.Tensor]:
        clip, t5 = comps.tokenizers
        return [
            flow_common.clip_token_ids(clip, captions),
            flow_common.t5_token_ids(t5, captions, T5_MAX_LENGTH),
        ]

    def encode_text(
        self,
        comps: Components,
        text_encoders: Sequence[torch.nn.Module],
        token_ids: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """As ``FluxPipeline.encode_prompt``: T5's hidden states are the sequence, CLIP's
        pooled output the vector."""
        clip, t5 = text_encoders[0], text_encoders[1]
        pooled = clip(token_ids[0].to(clip.device), output_hidden_states=False).pooler_output
        prompt_embeds = t5(token_ids[1].to(t5.device), output_hidden_states=False)[0]
        return {"prompt_embeds": prompt_embeds, "pooled": pooled}

    # ---- objective -------------------------------------------------------------------

    def scale_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        config = comps.vae.config
        shift = float(getattr(config, "shift_factor", None) or 0.0)
        return (latents - shift) * float(config.scaling_factor)

    def loss(self, inputs: LossInputs) -> torch.Tensor:
        import torch
        from diffusers import FluxPipeline

        cond = inputs.cond
        config = inputs.comps.denoiser.config
        guidance_embeds = bool(getattr(config, "guidance_embeds", False))

        def predict(
            noisy: torch.Tensor, timesteps: torch.Tensor, sigmas: torch.Tensor
        ) -> torch.Tensor:
            batch, channels, height, width = noisy.shape
            device = noisy.device
            packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
            img_ids = FluxPipeline._prepare_latent_image_ids(
                batch, height // 2, width // 2, device, inputs.weight_dtype
            )
            prompt_embeds = cond["prompt_embeds"]
            txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device)
            guidance = None
            if guidance_embeds:
                guidance = torch.full((batch,), float(inputs.config.guidance_scale), device=device)
            with inputs.autocast():
                out = inputs.denoiser(
                    hidden_states=packed.to(inputs.weight_dtype),
                    timestep=timesteps.to(device) / 1000,
                    guidance=guidance,
                    pooled_projections=cond["pooled"],
                    encoder_hidden_states=prompt_embeds,
                    txt_ids=txt_ids.to(inputs.weight_dtype),
                    img_ids=img_ids,
                ).sample
            # vae_scale_factor 1: the sizes given are the latent's own.
            return FluxPipeline._unpack_latents(out, height, width, 1)  # type: ignore[no-any-return]

        return flow_matching_loss(
            inputs.latents, inputs.comps.noise_scheduler, predict, inputs.generator, inputs.config
        )

    # ---- export ----------------------------------------------------------------------

    def kohya_keys(self, denoiser_lora: dict[str, Any], config: LoraConfig) -> dict[str, Any]:
        """BFL-named kohya keys (``lora_unet_double_blocks_0_img_attn_qkv``...), with the
        q/k/v (and single blocks' MLP-in) LoRAs fused exactly (module docstring)."""
        return flux_kohya_keys(denoiser_lora, alpha=config.alpha)

    def text_encoder_kohya_keys(
        self, index: int, text_encoder_lora: dict[str, Any], config: LoraConfig
    ) -> dict[str, Any]:
        """CLIP-L's LoRA as kohya ``lora_te1_text_model_...`` keys."""
        prefix = (
            self.text_encoder_prefixes[index] if index < len(self.text_encoder_prefixes) else None
        )
        if prefix is None:
            raise ValueError(f"Flux trains only its CLIP text encoder, not #{index}")
        return clip_kohya_keys(text_encoder_lora, prefix, alpha=config.alpha)

    def pipeline(
        self, comps: Components, denoiser: Any, text_encoders: Sequence[torch.nn.Module]
    ) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(comps.noise_scheduler.config),
            vae=comps.vae,
            text_encoder=text_encoders[0],
            tokenizer=comps.tokenizers[0],
            text_encoder_2=text_encoders[1],
            tokenizer_2=comps.tokenizers[1],
            transformer=denoiser,
        )

    def save_diffusers_lora(
        self,
        folder: Path,
        denoiser_lora: dict[str, Any],
        text_encoder_loras: Sequence[dict[str, Any] | None],
        adapter_metadata: Mapping[str, dict[str, Any] | None] | None = None,
    ) -> Path:
        from diffusers import FluxPipeline

        return save_family_diffusers_lora(
            FluxPipeline,
            folder,
            ("transformer", "text_encoder"),
            denoiser_lora,
            text_encoder_loras,
            adapter_metadata,
        )

    # ---- tiny model ------------------------------------------------------------------

    def make_tiny(self, folder: Path, seed: int = 0) -> Path:
        return make_tiny_flux(folder, seed)


def flux_kohya_keys(peft_state: dict[str, Any], *, alpha: float) -> dict[str, Any]:
    """Rename (and fuse) a peft Flux transformer state dict to BFL-named kohya keys.

    DoRA magnitudes of a fused linear are written only when all its members were trained
    (a warning says so otherwise).

    Raises:
        ValueError: a module Flux's kohya format has no name for.
    """
    import torch

    groups: dict[str, dict[int | None, dict[str, torch.Tensor]]] = {}
    swap: set[str] = set()
    for module, parts in flow_common.peft_modules(peft_state).items():
        name, member = _bfl_name(module)
        if module == "norm_out.linear":
            swap.add(name)
        groups.setdefault(name, {})[member] = parts

    out: dict[str, torch.Tensor] = {}
    for name, members in groups.items():
        if None in members:
            parts = members[None]
            down, up = parts["down"], parts["up"]
            module_alpha = float(alpha)
            if name in swap:
                # BFL's final modulation is (shift, scale), diffusers' (scale, shift);
                # diffusers swaps the halves of lora_up back on load.
                up = torch.cat(up.chunk(2, dim=0)[::-1], dim=0)
            magnitude = parts.get("magnitude")
        else:
            down, up, module_alpha, magnitude = _fuse(name, members, float(alpha))
        key = f"lora_unet_{name}"
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = up.contiguous()
        out[f"{key}.alpha"] = torch.tensor(module_alpha, dtype=torch.float32)
        if magnitude is not None:
            out[f"{key}.dora_scale"] = magnitude.contiguous()
    return out


def _bfl_name(module: str) -> tuple[str, int | None]:
    """BFL's module name (without ``lora_unet_``) and the member index in a fused linear."""
    match = _BLOCK.match(module)
    if match:
        kind, index, inner = match.groups()
        table, bfl_block = (
            (_DOUBLE, "double_blocks")
            if kind == "transformer_blocks"
            else (_SINGLE, "single_blocks")
        )
        if inner in table:
            bfl, member = table[inner]
            return f"{bfl_block}_{index}_{bfl}", member
    elif module in _TOP:
        return _TOP[module], None
    raise ValueError(f"Flux's kohya LoRA format has no name for the module {module!r}")


def _fuse(
    name: str, members: dict[int | None, dict[str, torch.Tensor]], alpha: float
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    """One exact LoRA on a fused linear from its members' LoRAs.

    ``down`` stacks the members' ``lora_A``; ``up`` places each ``lora_B`` in the member's
    rows and its own rank columns (block-diagonal). A member's scale alpha/r_i becomes
    the fused scale ``alpha_f / R`` (R = sum of ranks) with ``alpha_f = alpha * R / r_0``;
    members of another rank get the ratio folded into their ``lora_B``.
    """
    import torch

    some = next(iter(members.values()))
    width = some["down"].shape[1]  # every member reads the block's hidden state
    count = 4 if name.endswith("linear1") else 3
    rows = [width] * 3 + ([width * SINGLE_MLP_RATIO] if count == 4 else [])
    present = sorted(m for m in members if m is not None)
    for member in present:
        got = members[member]["up"].shape[0]
        if got != rows[member]:
            raise ValueError(f"{name}: member {member} has {got} outputs, expected {rows[member]}")
    ranks = [members[m]["down"].shape[0] for m in present]
    total = sum(ranks)
    base_scale = alpha / ranks[0]
    dtype = some["up"].dtype
    down = torch.cat([members[m]["down"] for m in present], dim=0)
    up = torch.zeros(sum(rows), total, dtype=dtype)
    column = 0
    for member, rank in zip(present, ranks, strict=True):
        row = sum(rows[:member])
        block = members[member]["up"]
        ratio = (alpha / rank) / base_scale
        up[row : row + rows[member], column : column + rank] = (
            block * ratio if ratio != 1 else block
        )
        column += rank
    magnitude = None
    if any("magnitude" in members[m] for m in present):
        if present == list(range(count)):
            magnitude = torch.cat([members[m]["magnitude"] for m in present], dim=0)
        else:
            # The fused weight's magnitude needs the untrained members' row norms, which
            # only the base model knows.
            log.warning(
                "DoRA magnitudes of Flux's fused %s are left out of the kohya file: not "
                "every member of it (to_q, to_k, to_v%s) was trained. The diffusers-format "
                "output keeps them.",
                name,
                ", proj_mlp" if count == 4 else "",
            )
    return down, up, base_scale * total, magnitude


def make_tiny_flux(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny Flux (dev) pipeline and save it as a diffusers folder at ``folder``.

    FLUX.1-dev's layout at toy size: a transformer with two double blocks, the guidance
    embedding and a 3-axis RoPE whose axes add up to the head width; no single blocks (see
    the module docstring). CLIP-L, T5, a 16-channel VAE with Flux's latent scaling and
    shift, and FLUX.1-dev's scheduler config (shift 3, dynamic shifting).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    from lora_studio.training.tiny import save_tiny_pipeline

    clip_tokenizer = flow_common.tiny_clip_tokenizer()
    t5_tokenizer = flow_common.tiny_t5_tokenizer(model_max_length=32)
    clip = flow_common.seeded(
        seed,
        lambda: CLIPTextModel(
            flow_common.tiny_clip_config(clip_tokenizer, hidden_size=32, projection_dim=32)
        ),
    )
    t5 = flow_common.tiny_t5_encoder(len(t5_tokenizer), d_model=48, seed=seed + 1)
    transformer = flow_common.seeded(seed + 2, lambda: tiny_flux_transformer(single_layers=0))
    vae = flow_common.tiny_vae(scaling_factor=0.3611, shift_factor=0.1159, seed=seed + 3)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    return save_tiny_pipeline(pipe, Path(folder), ModelFamily.FLUX, seed)


def tiny_flux_transformer(single_layers: int = 0) -> Any:
    """The tiny Flux transformer (width 32, two heads of 16 = RoPE axes 4 + 6 + 6), reading
    T5 states of width 48 and CLIP's pooled 32."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
