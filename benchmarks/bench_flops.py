"""How much latent and text caching can save per step: the FLOP ceiling, per model.

    python benchmarks/bench_flops.py [--json]

A training step of the diffusers LoRA example encodes the batch with the VAE and the
captions with the text encoder(s), then runs the UNet forward and backward. Caching removes
the encoders, never the UNet, so the best time per step caching alone can reach, as a
share of the example's, is

    UNet forward+backward / (UNet forward+backward + VAE encode + text encode)

counted in FLOPs with ``torch.utils.flop_counter.FlopCounterMode``. The real SD 1.5 and
SDXL are built on PyTorch's ``meta`` device from their published configs (no weights, no
memory, nothing computed: shapes only), with LoRA on the attention projections as the
trainer puts it (rank 16); the tiny built-in model is counted the same way. Batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

#: SD 1.x/SDXL VAE (AutoencoderKL) encoder layout.
VAE = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
}
SD15_UNET = {"cross_attention_dim": 768, "attention_head_dim": 8}
SDXL_UNET = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
#: CLIP text encoders: (hidden, intermediate, layers, heads).
CLIP_L = (768, 3072, 12, 12)
CLIP_G = (1280, 5120, 32, 20)
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def tflops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e12


def count(
    unet: Any, vae: Any, encoders: list[Any], resolution: int, added: dict[str, Any] | None
) -> dict[str, float]:
    import torch
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS))
    side = resolution // 8
    with torch.device("meta"):
        pixels = torch.randn(1, 3, resolution, resolution)
        latents = torch.randn(1, 4, side, side)
        ids = torch.zeros(1, 77, dtype=torch.long)
        timestep = torch.tensor([500])
        embeds = torch.randn(1, 77, unet.config.cross_attention_dim)

    def train_step() -> None:
        out = unet(latents, timestep, embeds, **(added or {})).sample
        out.float().pow(2).mean().backward()

    def encode() -> None:
        with torch.no_grad():
            vae.encode(pixels)

    def text() -> None:
        with torch.no_grad():
            for encoder in encoders:
                encoder(ids)

    return {"unet_fwd_bwd": tflops(train_step), "vae_encode": tflops(encode), "text": tflops(text)}


def clip(hidden: int, intermediate: int, layers: int, heads: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lora_studio.training.tiny import ensure_builtin_model

    rows: list[dict[str, Any]] = []
    tiny = ensure_builtin_model("tiny-sd15")
    for resolution in (256, 512):
        unet = UNet2DConditionModel.from_pretrained(tiny, subfolder="unet").to("meta")
        vae = AutoencoderKL.from_pretrained(tiny, subfolder="vae").to("meta")
        from transformers import CLIPTextModel

        encoder = CLIPTextModel.from_pretrained(tiny, subfolder="text_encoder").to("meta")
        rows.append(
            {
                "model": f"tiny-sd15, {resolution} px",
                **count(unet, vae, [encoder], resolution, None),
            }
        )
    with torch.device("meta"):
        sd15 = (UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**VAE), [clip(*CLIP_L)])
        sdxl = (
            UNet2DConditionModel(**SDXL_UNET),
            AutoencoderKL(**VAE),
            [clip(*CLIP_L), clip(*CLIP_G)],
        )
        time_ids = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
    rows.append({"model": "SD 1.5, 512 px", **count(*sd15, 512, None)})
    rows.append({"model": "SDXL, 1024 px", **count(*sdxl, 1024, {"added_cond_kwargs": time_ids})})
    for row in rows:
        total = row["unet_fwd_bwd"] + row["vae_encode"] + row["text"]
        row["ceiling"] = round(row["unet_fwd_bwd"] / total, 3)
    if not args.json:
        print(
            "| model, batch 1 | UNet fwd+bwd TFLOP | VAE encode TFLOP | text encode TFLOP "
            "| best ours / example with caching |"
        )
        print("|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['model']} | {row['unet_fwd_bwd']:.3f} | {row['vae_encode']:.3f} | "
                f"{row['text']:.4f} | {row['ceiling']:.2f} |"
            )
    print(json.dumps(rows, indent=2 if args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
