"""The SDXL family on its tiny random-weight model: the builder, the text side, the loss,
the diffusers -> original (SGM) UNet names of kohya files, and the trainer end to end."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_studio.core.base_model import resolve_base_model
from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.training.export import CONV_TARGETS as LOCON_TARGETS
from lora_studio.training.export import clip_kohya_keys
from lora_studio.training.families import get_family
from lora_studio.training.families.base import Components, LossInputs
from lora_studio.training.families.sdxl import (
    SDXL_LAYOUT,
    SDXLFamily,
    UNetLayout,
    sgm_module_path,
)

TRAINER_LANDED = "LossInputs" in (
    Path(__file__).resolve().parents[2] / "lora_studio" / "training" / "trainer.py"
).read_text(encoding="utf-8")

#: Every kind of UNet layer a LoRA/LoCon can sit on: attention projections, the
#: transformer's in/out projections and feed-forward, resnet convs and time projections,
#: samplers, conv_in/conv_out and the time/added-condition embeddings.
ALL_UNET_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "conv",
    "conv_in",
    "conv_out",
    "linear_1",
    "linear_2",
)
CLIP_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

# (diffusers module, kohya's name for it in SDXL base 1.0 LoRA files)
SDXL_NAMES = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("down_blocks.1.attentions.1.proj_in", "input_blocks.5.1.proj_in"),
    ("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0", "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
    ("mid_block.resnets.0.conv2", "middle_block.0.out_layers.3"),
    ("mid_block.attentions.0.transformer_blocks.3.ff.net.0.proj", "middle_block.1.transformer_blocks.3.ff.net.0.proj"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("up_blocks.0.resnets.0.conv1", "output_blocks.0.0.in_layers.2"),
    ("up_blocks.0.attentions.2.transformer_blocks.0.ff.net.2", "output_blocks.2.1.transformer_blocks.0.ff.net.2"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.attentions.0.proj_out", "output_blocks.3.1.proj_out"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.2.conv_shortcut", "output_blocks.8.0.skip_connection"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_out", "out.2"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_sdxl() -> Path:
    from lora_studio.training.tiny import ensure_builtin_model

    return ensure_builtin_model("tiny-sdxl")


@pytest.fixture(scope="module")
def loaded(tiny_sdxl: Path) -> tuple[SDXLFamily, Components]:
    family = SDXLFamily()
    return family, family.load(resolve_base_model(str(tiny_sdxl)), tiny_sdxl)


def _pipeline(folder: Path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe) -> torch.Tensor:
    return pipe(
        "papercut style, red hills",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*/*.safetensors")):
        for key, value in load_file(file).items():
            out[f"{file.parent.name}/{key}"] = value
    return out


# ---- the tiny model ---------------------------------------------------------------------


def test_registry_gives_the_sdxl_family() -> None:
    family = get_family(ModelFamily.SDXL)
    assert isinstance(family, SDXLFamily)
    assert family.kohya_version == "sdxl_base_v1-0"
    assert family.text_encoder_prefixes == ("lora_te1_", "lora_te2_")


def test_cli_make_tiny_is_deterministic_and_loads_as_an_sdxl_pipeline(
    tiny_sdxl, tmp_path, capsys
) -> None:
    from lora_studio.cli import main

    target = tmp_path / "tiny-sdxl"
    assert main(["models", "make-tiny", str(target), "--family", "sdxl"]) == 0
    assert Path(capsys.readouterr().out.strip()) == target
    assert json.loads((target / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLPipeline"
    )
    # Seed 0 both times: the same weights as the built-in model, tensor for tensor.
    built, builtin = _tensors(target), _tensors(tiny_sdxl)
    assert built.keys() == builtin.keys() and len(built) > 500
    assert all(torch.equal(built[k], builtin[k]) for k in built)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    assert size < 20_000_000

    pipe = _pipeline(target)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.13025)
    assert len(pipe.vae.config.down_block_types) == 4
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert max(pipe.unet.config.transformer_layers_per_block) > 1
    assert _render(pipe).shape == (1, 3, 64, 64)

    assert resolve_base_model(str(target)).family is ModelFamily.SDXL


# ---- loading ----------------------------------------------------------------------------


def test_load_gives_components_and_a_ddpm_training_scheduler(loaded) -> None:
    family, comps = loaded
    assert len(comps.tokenizers) == 2 and len(comps.text_encoders) == 2
    assert type(comps.noise_scheduler).__name__ == "DDPMScheduler"
    assert comps.prediction_type == "epsilon"
    assert comps.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert family.unet_layout == SDXL_LAYOUT


def test_missing_component_folder_is_named(tmp_path) -> None:
    folder = tmp_path / "broken"
    for sub in ("tokenizer", "tokenizer_2", "text_encoder", "vae", "unet", "scheduler"):
        (folder / sub).mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline"}), encoding="utf-8"
    )
    with pytest.raises(ModelError, match="text_encoder_2/ is missing"):
        SDXLFamily().load(resolve_base_model(str(folder)), folder)


def test_single_file_without_offline_configs_is_a_clear_error(tmp_path) -> None:
    # The tensor names of an original SDXL checkpoint, so that diffusers takes it for one.
    path = tmp_path / "sdxl_model.safetensors"
    tensors = {
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(8),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
    }
    save_file(tensors, str(path))
    ref = resolve_base_model(str(path))
    assert ref.family is ModelFamily.SDXL
    with pytest.raises(ModelError, match="Hugging Face cache"):
        SDXLFamily().load(ref, path)


# ---- text, loss -------------------------------------------------------------------------


def test_encode_text_matches_the_sdxl_pipeline(loaded, tiny_sdxl) -> None:
    family, comps = loaded
    captions = ["papercut style, a red fox", "a lighthouse at night"]
    ids = family.tokenize(comps, captions)
    assert [t.shape for t in ids] == [(2, 77), (2, 77)]
    with torch.no_grad():
        cond = family.encode_text(comps, comps.text_encoders, ids)
    assert cond["prompt_embeds"].shape == (2, 77, 32 + 48)
    assert cond["pooled"].shape == (2, 40)

    pipe = _pipeline(tiny_sdxl)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    assert torch.allclose(cond["prompt_embeds"], embeds)
    assert torch.allclose(cond["pooled"], pooled)


def _loss_inputs(comps: Components, denoiser, cond, meta, seed: int = 0) -> LossInputs:
    return LossInputs(
        comps=comps,
        denoiser=denoiser,
        latents=torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
        cond=cond,
        image_meta=meta,
        generator=torch.Generator().manual_seed(seed),
        config=LoraConfig(),
        weight_dtype=torch.float32,
        autocast=contextlib.nullcontext,
    )


def test_loss_is_finite_has_lora_gradients_and_uses_the_size_conditioning(
    tiny_sdxl,
) -> None:
    from peft import LoraConfig as PeftLoraConfig

    family = SDXLFamily()
    comps = family.load(resolve_base_model(str(tiny_sdxl)), tiny_sdxl)
    unet = comps.denoiser
    unet.requires_grad_(False)
    unet.add_adapter(
        PeftLoraConfig(r=4, lora_alpha=4, target_modules=list(family.denoiser_target_modules))
    )
    with torch.no_grad():
        cond = family.encode_text(comps, comps.text_encoders, family.tokenize(comps, ["a", "b"]))
    meta = torch.tensor([[64.0, 64, 0, 0, 64, 64], [96, 64, 16, 0, 64, 64]])

    loss = family.loss(_loss_inputs(comps, unet, cond, meta))
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for n, p in unet.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    with torch.no_grad():
        same = family.loss(_loss_inputs(comps, unet, cond, meta))
        other_sizes = family.loss(_loss_inputs(comps, unet, cond, meta * 2))
    assert same.item() == pytest.approx(loss.item())
    assert other_sizes.item() != pytest.approx(loss.item(), rel=1e-6)

    with pytest.raises(ValueError, match="image_meta"):
        family.loss(_loss_inputs(comps, unet, cond, meta[:, :4]))


# ---- kohya names --------------------------------------------------------------------------


@pytest.mark.parametrize(("diffusers_name", "sgm_name"), SDXL_NAMES)
def test_sgm_names_of_real_sdxl_modules(diffusers_name, sgm_name) -> None:
    assert sgm_module_path(diffusers_name, SDXL_LAYOUT) == sgm_name


@pytest.mark.parametrize(
    "bad", ["down_blocks.2.downsamplers.0.conv", "up_blocks.2.attentions.0.proj_in", "foo.bar"]
)
def test_modules_sdxl_does_not_have_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="not a module"):
        sgm_module_path(bad, SDXL_LAYOUT)


def test_sgm_names_agree_with_diffusers_single_file_conversion(loaded) -> None:
    """Name every UNet parameter the original way, convert that "checkpoint" back with
    diffusers' own single-file converter: every tensor must land where it came from."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    family, comps = loaded
    state = comps.denoiser.state_dict()
    original = {
        "model.diffusion_model." + sgm_module_path(k, family.unet_layout): v
        for k, v in state.items()
        if "lora_" not in k
    }
    back = convert_ldm_unet_checkpoint(original, dict(comps.denoiser.config))
    assert back.keys() == {k for k in state if "lora_" not in k}
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_layout_of_an_sd15_unet_puts_upsamplers_after_the_resnet() -> None:
    layout = UNetLayout.from_unet_config(
        {
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "layers_per_block": 2,
        }
    )
    assert layout is not None
    # SD 1.5's original names: no attention in the first up level, so slot 1.
    assert sgm_module_path("up_blocks.0.upsamplers.0.conv", layout) == "output_blocks.2.1.conv"
    assert sgm_module_path("up_blocks.1.upsamplers.0.conv", layout) == "output_blocks.5.2.conv"
    assert UNetLayout.from_unet_config({"down_block_types": ["SimpleDownBlock2D"]}) is None


def _random_lora(module: torch.nn.Module, config, seed: int) -> dict[str, torch.Tensor]:
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    # peft's own injection works for the UNet and the text encoders alike (transformers'
    # add_adapter wants a newer peft).
    inject_adapter_in_model(config, module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return get_peft_model_state_dict(module)


def _scaled_b(
    state: dict[str, torch.Tensor], linear: float, conv: float = 0.0, conv_names: tuple = ()
) -> dict:
    """The LoRA with its alpha/rank scale folded into lora_B (diffusers-format files carry
    no alphas: scale 1); ``conv`` for the modules whose last name is in ``conv_names``."""

    def scale(key: str) -> float:
        module = key.partition(".lora_")[0]
        return conv if module.rsplit(".", 1)[-1] in conv_names else linear

    return {k: v * scale(k) if ".lora_B." in k else v for k, v in state.items()}


def test_kohya_file_loads_into_the_same_modules_as_the_diffusers_file(tiny_sdxl, tmp_path) -> None:
    """A kohya-named LoRA on every kind of UNet layer and both text encoders draws exactly
    the images of the same weights saved in diffusers' format: every key found its module."""
    from peft import LoraConfig as PeftLoraConfig

    family = SDXLFamily()
    comps = family.load(resolve_base_model(str(tiny_sdxl)), tiny_sdxl)
    rank, alpha, conv_alpha = 4, 2.0, 1.0  # scales 1/2 and 1/4: exact in floating point
    unet_lora = _random_lora(
        comps.denoiser,
        PeftLoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=list(ALL_UNET_TARGETS),
            # As the trainer: LoCon's alpha on the ResNet and sampler convolutions only;
            # conv_in and conv_out (custom targets) train with ``alpha``.
            alpha_pattern=dict.fromkeys(LOCON_TARGETS, conv_alpha),
        ),
        seed=1,
    )
    te_config = PeftLoraConfig(r=rank, lora_alpha=alpha, target_modules=list(CLIP_TARGETS))
    te_loras = [_random_lora(te, te_config, seed=2 + i) for i, te in enumerate(comps.text_encoders)]
    assert any(v.ndim == 4 for v in unet_lora.values())

    config = LoraConfig().replace(rank=rank, alpha=alpha, conv_rank=rank, conv_alpha=conv_alpha)
    kohya = family.kohya_keys(unet_lora, config)
    for prefix, state in zip(family.text_encoder_prefixes, te_loras, strict=True):
        assert prefix is not None
        kohya.update(clip_kohya_keys(state, prefix, alpha=alpha))
    kohya_file = tmp_path / "kohya.safetensors"
    save_file(kohya, str(kohya_file))

    modules = {k.split(".")[0] for k in kohya}
    unet_modules = {m for m in modules if m.startswith("lora_unet_")}
    assert len(unet_modules) == len({k.partition(".lora_")[0] for k in unet_lora})
    # input_blocks, middle_block, output_blocks, out (conv_out), time_embed, label_emb
    roots = {m.split("_")[2] for m in unet_modules}
    assert roots == {"input", "middle", "output", "out", "time", "label"}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet_modules
    assert "lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_out_0" in unet_modules
    assert "lora_unet_middle_block_1_transformer_blocks_1_ff_net_2" in unet_modules
    assert "lora_unet_output_blocks_5_2_conv" in unet_modules
    assert "lora_unet_input_blocks_3_0_op" in unet_modules
    assert not any("down_blocks" in m or "up_blocks" in m or "mid_block" in m for m in modules)
    assert kohya["lora_unet_input_blocks_1_0_in_layers_2.alpha"].item() == conv_alpha
    assert kohya["lora_unet_middle_block_1_proj_in.alpha"].item() == alpha
    # Convolutions that are not LoCon layers keep the LoRA alpha, SGM names or not.
    assert kohya["lora_unet_input_blocks_0_0.lora_down.weight"].ndim == 4  # conv_in
    assert kohya["lora_unet_input_blocks_0_0.alpha"].item() == alpha
    assert kohya["lora_unet_out_2.alpha"].item() == alpha  # conv_out
    assert any(m.startswith("lora_te1_text_model_encoder_layers_") for m in modules)
    assert any(m.startswith("lora_te2_text_model_encoder_layers_") for m in modules)

    diffusers_file = family.save_diffusers_lora(
        tmp_path / "diffusers",
        _scaled_b(unet_lora, alpha / rank, conv_alpha / rank, LOCON_TARGETS),
        [_scaled_b(state, alpha / rank) for state in te_loras],
    )

    plain = _render(_pipeline(tiny_sdxl))
    from_kohya, from_diffusers = _pipeline(tiny_sdxl), _pipeline(tiny_sdxl)
    from_kohya.load_lora_weights(str(kohya_file))
    from_diffusers.load_lora_weights(str(diffusers_file))
    kohya_image, diffusers_image = _render(from_kohya), _render(from_diffusers)
    assert not torch.allclose(kohya_image, plain, atol=1e-3)
    assert torch.allclose(kohya_image, diffusers_image)


def test_dora_magnitudes_get_the_original_names(loaded) -> None:
    from peft import LoraConfig as PeftLoraConfig

    family, comps = loaded
    unet = _fresh_unet(comps)
    state = _random_lora(
        unet,
        PeftLoraConfig(r=2, lora_alpha=2, use_dora=True, target_modules=["to_q", "conv2"]),
        seed=3,
    )
    kohya = family.kohya_keys(state, LoraConfig().replace(rank=2, alpha=2.0, conv_rank=2))
    scales = {k.removesuffix(".dora_scale") for k in kohya if k.endswith(".dora_scale")}
    downs = {k.removesuffix(".lora_down.weight") for k in kohya if k.endswith(".lora_down.weight")}
    assert scales == downs
    assert "lora_unet_output_blocks_8_0_out_layers_3" in scales
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q" in scales


def _fresh_unet(comps: Components):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(comps.denoiser.config)


def test_sample_pipeline_and_scale_latents(loaded) -> None:
    family, comps = loaded
    pipe = family.pipeline(comps, comps.denoiser, comps.text_encoders)
    assert type(pipe).__name__ == family.pipeline_class_name
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "leading"
    pipe.set_progress_bar_config(disable=True)
    assert _render(pipe).shape == (1, 3, 64, 64)
    latents = torch.ones(1, 4, 8, 8)
    assert family.scale_latents(comps, latents)[0, 0, 0, 0].item() == pytest.approx(0.13025)


# ---- the trainer, end to end -----------------------------------------------------------

# (case name, config overrides, whether text-encoder LoRAs are expected). With alpha = rank
# (scale 1) the diffusers-format file, which carries no alphas, must draw the same images.
TRAIN_CASES = [
    ("unet-only", {"rank": 4, "alpha": 2.0}, False),
    ("text-encoders", {"rank": 4, "alpha": 4.0, "train_text_encoder": True}, True),
    (
        "locon-and-diffusers-format",
        {"rank": 4, "alpha": 4.0, "conv_rank": 2, "conv_alpha": 2.0, "save_diffusers_format": True},
        False,
    ),
]


@pytest.mark.slow
@pytest.mark.skipif(not TRAINER_LANDED, reason="the Family-based trainer has not landed yet")
@pytest.mark.parametrize(("name", "changes", "te"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_tiny_sdxl_then_load_into_the_pipeline(
    tiny_sdxl, small_dataset, tmp_path, name, changes, te
) -> None:
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.request import TrainingRequest
    from lora_studio.training.trainer import Trainer

    config = LoraConfig.sdxl_preset().replace(
        name="sdxl_lora",
        resolution=64,
        max_steps=3,
        learning_rate=1e-3,
        mixed_precision="no",
        trigger_word="papercut style",
        **changes,
    )
    request = TrainingRequest(
        Dataset.from_directory(small_dataset), config, "builtin:tiny-sdxl", tmp_path / "out"
    )
    result = Trainer(request).train()
    assert result.steps == 3 and not result.cancelled
    assert result.final_loss is not None and math.isfinite(result.final_loss)

    with safe_open(str(result.output_path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    modules = {k.split(".")[0] for k in keys}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in modules
    assert any(m.startswith("lora_unet_middle_block_1_") for m in modules)
    assert any(m.startswith("lora_unet_output_blocks_") for m in modules)
    assert not any("down_blocks" in m or "up_blocks" in m or "mid_block" in m for m in modules)
    te1 = {m for m in modules if m.startswith("lora_te1_text_model_encoder_layers_")}
    te2 = {m for m in modules if m.startswith("lora_te2_text_model_encoder_layers_")}
    assert bool(te1) is te and bool(te2) is te
    assert all(m.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for m in modules)
    if config.conv_rank:
        for conv in (
            "input_blocks_1_0_in_layers_2",
            "input_blocks_3_0_op",
            "output_blocks_2_2_conv",
        ):
            assert f"lora_unet_{conv}" in modules

    pipe = _pipeline(tiny_sdxl)
    before = _render(pipe)
    pipe.load_lora_weights(str(result.output_path))
    after = _render(pipe)
    assert not torch.allclose(after, before, atol=1e-4)
    if te:
        # The text-encoder LoRAs were loaded too, not dropped as unknown keys.
        assert "default_0" in getattr(pipe.text_encoder, "peft_config", {})
        assert "default_0" in getattr(pipe.text_encoder_2, "peft_config", {})
    if config.save_diffusers_format:
        assert result.diffusers_path is not None
        other = _pipeline(tiny_sdxl)
        other.load_lora_weights(str(result.diffusers_path))
        assert torch.allclose(_render(other), after)
