"""The estimate's parameter counts against the real architectures.

The real SD 1.5, SDXL, SD 3.5 Large and FLUX.1 models are built on PyTorch's ``meta``
device from their published configs (no memory, no weights), given the family's LoRA
layers with peft exactly as the trainer does, and counted. The tiny model is counted
for real, and a training run's own "Training N LoRA parameters" line is compared too.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model

from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.dataset import Dataset
from lora_studio.core.estimates import ARCHITECTURES, TINY, trainable_parameters
from lora_studio.core.request import TrainingRequest
from lora_studio.training.families import get_family
from lora_studio.training.trainer import CONV_TARGETS, Trainer


def _unet(**config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def _sd3():
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return SD3Transformer2DModel(
            attention_head_dim=64, caption_projection_dim=2432, in_channels=16,
            joint_attention_dim=4096, num_attention_heads=38, num_layers=38,
            out_channels=16, patch_size=2, pooled_projection_dim=2048,
            pos_embed_max_size=192, qk_norm="rms_norm", sample_size=128,
        )  # fmt: skip


def _flux():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
            pooled_projection_dim=768, guidance_embeds=True,
        )  # fmt: skip


REAL_MODELS = {
    ModelFamily.SD15: lambda: _unet(cross_attention_dim=768, attention_head_dim=8),
    ModelFamily.SDXL: lambda: _unet(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),  # fmt: skip
    ModelFamily.SD3: _sd3,
    ModelFamily.FLUX: _flux,
}


def _lora_count(model: torch.nn.Module, targets: list[str]) -> int:
    inject_adapter_in_model(PeftLoraConfig(r=1, lora_alpha=1, target_modules=targets), model)
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


@pytest.mark.parametrize("family", list(REAL_MODELS), ids=[f.value for f in REAL_MODELS])
def test_parameter_counts_match_the_real_architectures(family):
    arch = ARCHITECTURES[family]
    model = REAL_MODELS[family]()
    assert sum(p.numel() for p in model.parameters()) == arch.denoiser_params
    targets = list(get_family(family).denoiser_target_modules)
    assert _lora_count(model, targets) == arch.lora_per_rank
    if arch.conv_lora_per_rank:
        convs = REAL_MODELS[family]()
        assert _lora_count(convs, list(CONV_TARGETS)) == arch.conv_lora_per_rank


def test_clip_text_encoder_counts():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    targets = list(get_family(ModelFamily.SDXL).text_encoder_target_modules)
    with torch.device("meta"):
        clip_l = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
            )
        )
        clip_g = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                projection_dim=1280,
            )
        )
    sdxl = ARCHITECTURES[ModelFamily.SDXL]
    assert sum(p.numel() for p in clip_l.parameters()) == sdxl.text_encoder_params[0]
    assert sum(p.numel() for p in clip_g.parameters()) == sdxl.text_encoder_params[1]
    assert _lora_count(clip_l, targets) == sdxl.text_lora_per_rank[0]
    assert _lora_count(clip_g, targets) == sdxl.text_lora_per_rank[1]


TINY_CASES = [
    ("rank 8", {"rank": 8}),
    ("rank 4 + conv 2", {"rank": 4, "conv_rank": 2}),
    ("rank 4 + text encoder", {"rank": 4, "train_text_encoder": True}),
]


@pytest.mark.parametrize(("name", "changes"), TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_the_trainer_trains_exactly_the_estimated_parameters(
    tiny_model, small_dataset, tmp_path, name, changes
):
    config = LoraConfig.fast_preset().replace(resolution=64, max_steps=1, **changes)
    lines: list[str] = []

    class Lines:
        def on_progress(self, progress) -> None:
            pass

        def on_log(self, line: str) -> None:
            lines.append(line)

    Trainer(
        TrainingRequest(
            Dataset.from_directory(small_dataset), config, "builtin:tiny-sd15", tmp_path / "out"
        ),
        Lines(),
    ).train()
    line = next(text for text in lines if "LoRA parameters" in text)
    trained = int(line.split("Training ", 1)[1].split(" LoRA", 1)[0].replace(",", ""))
    assert trained == trainable_parameters(config, TINY)
