"""The Flux family on its tiny model: the builder, loading, text encoding against the
pipeline's own ``encode_prompt``, the packed flow-matching loss, the BFL-named kohya LoRA
file (loaded by ``FluxPipeline.load_lora_weights`` exactly like diffusers' own format; its
fused single blocks checked at FLUX.1's real widths) and a short training run through the
real trainer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from family_helpers import adapter_metadata, attach_lora, loss_inputs, render
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_studio.cli import main
from lora_studio.core.base_model import resolve_base_model
from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ModelError
from lora_studio.training.families import get_family
from lora_studio.training.families.flux import FluxFamily, flux_kohya_keys, tiny_flux_transformer

FAMILY = FluxFamily()
CAPTIONS = ["papercut style, hills", "a lighthouse by the sea at night"]


@pytest.fixture(scope="module")
def tiny_flux() -> Path:
    from lora_studio.training.tiny import ensure_builtin_model

    return ensure_builtin_model("tiny-flux")


def _pipeline(model: Path, **components):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(model, local_files_only=True, **components)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(file).items():
            out[f"{file.parent.name}/{key}"] = value
    return out


def _comps(model: Path):
    return FAMILY.load(resolve_base_model(str(model)), model)


def _lora_module(state: dict[str, torch.Tensor], module: str, scale: float) -> torch.Tensor:
    return state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"] * scale


def _lora_apply(state: dict[str, torch.Tensor], module: str, probe: torch.Tensor) -> torch.Tensor:
    """The module's LoRA update applied to ``probe`` (no full-size product)."""
    return state[f"{module}.lora_B.weight"] @ (state[f"{module}.lora_A.weight"] @ probe)


def test_registry_gives_the_flux_family() -> None:
    family = get_family(FAMILY.family)
    assert isinstance(family, FluxFamily)
    assert family.kohya_version == "flux1" and not family.has_conv_layers
    assert family.text_encoder_prefixes == ("lora_te1_", None)  # T5 is never trained


def test_cli_make_tiny_is_deterministic_small_and_real(tiny_flux, tmp_path, capsys) -> None:
    target = tmp_path / "tiny"
    assert main(["models", "make-tiny", str(target), "--family", "flux"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(target))
    same, built = _tensors(target), _tensors(tiny_flux)
    assert same.keys() == built.keys()
    assert all(torch.equal(same[k], built[k]) for k in same)
    assert sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) < 8_000_000
    other = _tensors(FAMILY.make_tiny(tmp_path / "seed1", seed=1))
    assert any(not torch.equal(other[k], same[k]) for k in same if k.startswith("transformer/"))

    pipe = _pipeline(target)
    config = pipe.transformer.config
    assert type(pipe.tokenizer_2).__name__ == "T5Tokenizer"
    assert config.guidance_embeds and config.in_channels == 4 * pipe.vae.config.latent_channels
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert config.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
    scheduler = pipe.scheduler.config
    assert scheduler.shift == 3.0 and scheduler.use_dynamic_shifting
    assert (scheduler.base_shift, scheduler.max_shift) == (0.5, 1.15)
    assert resolve_base_model(str(target)).family is FAMILY.family


def test_encode_text_is_the_pipelines_encode_prompt(tiny_flux) -> None:
    comps = _comps(tiny_flux)
    assert comps.prediction_type == "flow_matching"
    ids = FAMILY.tokenize(comps, CAPTIONS)
    assert [tuple(i.shape) for i in ids] == [(2, 77), (2, 32)]
    with torch.no_grad():
        cond = FAMILY.encode_text(comps, comps.text_encoders, ids)
        pipe = FAMILY.pipeline(comps, comps.denoiser, comps.text_encoders)
        embeds, pooled, _ = pipe.encode_prompt(CAPTIONS, None, max_sequence_length=32)
    assert cond["prompt_embeds"].shape == (2, 32, 48)
    assert cond["pooled"].shape == (2, 32)
    assert torch.equal(cond["prompt_embeds"], embeds)
    assert torch.equal(cond["pooled"], pooled)


def test_latents_are_shifted_then_scaled(tiny_flux) -> None:
    comps = _comps(tiny_flux)
    latents = torch.ones(1, 16, 8, 8)
    assert torch.allclose(FAMILY.scale_latents(comps, latents), (1 - 0.1159) * 0.3611 * latents)


# (case, single blocks in the transformer)
LOSS_CASES = [("tiny", 0), ("with-single-blocks", 1)]


@pytest.mark.parametrize(("case", "single_layers"), LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_loss_is_finite_and_reaches_every_lora_layer(tiny_flux, case, single_layers) -> None:
    from peft import LoraConfig as PeftConfig

    comps = _comps(tiny_flux)
    if single_layers:
        torch.manual_seed(0)
        comps.denoiser = tiny_flux_transformer(single_layers=single_layers)
    comps.denoiser.requires_grad_(False)
    comps.denoiser.add_adapter(
        PeftConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=list(FAMILY.denoiser_target_modules),
        )
    )
    lora = {n: p for n, p in comps.denoiser.named_parameters() if p.requires_grad}
    modules = {n.rsplit(".lora_", 1)[0] for n in lora}
    assert {"transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_add_out"} <= modules
    if single_layers:
        assert "single_transformer_blocks.0.attn.to_v" in modules

    config = LoraConfig().replace(guidance_scale=3.5)
    loss = FAMILY.loss(loss_inputs(FAMILY, comps, CAPTIONS, config))
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    # Without single blocks after it, the last double block's context stream (its context
    # queries and output projection) feeds nothing; with them, every LoRA layer learns.
    dead = () if single_layers else ("blocks.1.attn.add_q_proj.", "blocks.1.attn.to_add_out.")
    for name, param in lora.items():
        if "lora_B" in name and not any(d in name for d in dead):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    again = FAMILY.loss(loss_inputs(FAMILY, comps, CAPTIONS, config))
    assert again.item() == loss.item()
    # The guidance embedding is fed: another guidance changes the prediction.
    other = FAMILY.loss(loss_inputs(FAMILY, comps, CAPTIONS, config.replace(guidance_scale=1.0)))
    assert other.item() != loss.item()


# (case, rank, alpha, CLIP trained)
FILE_CASES = [
    ("transformer", 4, 2.0, 0),  # alpha / rank = 0.5: every rescaling is exact
    ("transformer-and-clip", 4, 6.0, 1),
]


@pytest.mark.parametrize(
    ("case", "rank", "alpha", "encoders"), FILE_CASES, ids=[c[0] for c in FILE_CASES]
)
def test_kohya_file_renders_exactly_like_the_diffusers_format(
    tiny_flux, tmp_path, case, rank, alpha, encoders
) -> None:
    config = LoraConfig().replace(rank=rank, alpha=alpha)
    trained = _pipeline(tiny_flux)
    denoiser, clips = attach_lora(trained, FAMILY, rank=rank, alpha=alpha, text_encoders=encoders)
    expected = render(trained)

    tensors = FAMILY.kohya_keys(denoiser, config)
    for index, state in enumerate(clips):
        tensors.update(FAMILY.text_encoder_kohya_keys(index, state, config))
    modules = {k.split(".")[0] for k in tensors}
    assert modules >= {
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_0_img_attn_proj",
        "lora_unet_double_blocks_1_txt_attn_qkv",
        "lora_unet_double_blocks_1_txt_attn_proj",
    }
    assert all(m.startswith(("lora_unet_double_blocks_", "lora_te1_text_model_")) for m in modules)
    # q/k/v are one fused LoRA of three times the rank; alpha / rank is unchanged.
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape == (3 * rank, 32)
    assert tensors[f"{qkv}.lora_up.weight"].shape == (3 * 32, 3 * rank)
    assert tensors[f"{qkv}.alpha"].item() == 3 * alpha
    assert tensors["lora_unet_double_blocks_0_img_attn_proj.alpha"].item() == alpha
    fused = tensors[f"{qkv}.lora_up.weight"] @ tensors[f"{qkv}.lora_down.weight"]
    separate = torch.cat(
        [_lora_module(denoiser, f"transformer_blocks.0.attn.to_{x}", 1.0) for x in "qkv"]
    )
    assert torch.allclose(fused, separate, atol=1e-6)
    if encoders:
        assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in tensors

    kohya_file = tmp_path / "lora.safetensors"
    save_file(tensors, str(kohya_file), metadata={"ss_base_model_version": "flux1"})
    diffusers_file = FAMILY.save_diffusers_lora(
        tmp_path / "diffusers", denoiser, clips, adapter_metadata(denoiser, clips, alpha)
    )
    images = []
    for path in (kohya_file, diffusers_file):
        pipe = _pipeline(tiny_flux)
        before = render(pipe)
        pipe.load_lora_weights(str(path), adapter_name="trained")
        adapters = pipe.get_list_adapters()
        assert "trained" in adapters["transformer"]
        if encoders:
            assert "trained" in adapters["text_encoder"]
        images.append(render(pipe))
        assert (images[-1] - before).abs().max().item() > 1e-3
    assert torch.allclose(images[0], images[1], atol=1e-5)
    assert torch.allclose(images[0], expected, atol=1e-5)
    if alpha / rank == 0.5:
        assert torch.equal(images[0], images[1])


def test_single_blocks_fuse_at_flux1_widths_as_diffusers_splits_them() -> None:
    """FLUX.1's single-block ``linear1`` is q | k | v | mlp-in (3072 x 3 + 12288); diffusers
    splits a kohya ``linear1`` at exactly those widths. Checked on state dicts (a model of
    that width is not tiny): every module's update survives the trip unchanged."""
    from diffusers import FluxPipeline

    width, rank, alpha = 3072, 4, 2.0
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "single_transformer_blocks.0.attn.to_q": (width, width),
        "single_transformer_blocks.0.attn.to_k": (width, width),
        "single_transformer_blocks.0.attn.to_v": (width, width),
        "single_transformer_blocks.0.proj_out": (width, 5 * width),
        "single_transformer_blocks.1.attn.to_q": (width, width),
        "single_transformer_blocks.1.attn.to_k": (width, width),
        "single_transformer_blocks.1.attn.to_v": (width, width),
        "single_transformer_blocks.1.proj_mlp": (4 * width, width),
        "norm_out.linear": (2 * width, width),
        "x_embedder": (width, 64),
    }
    peft_state = {}
    for module, (out_features, in_features) in shapes.items():
        peft_state[f"{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator)
        peft_state[f"{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator)

    tensors = flux_kohya_keys(peft_state, alpha=alpha)
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (
        7 * width,
        3 * rank,
    )
    assert tensors["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape == (
        7 * width,
        4 * rank,
    )
    assert tensors["lora_unet_single_blocks_0_linear1.alpha"].item() == 3 * alpha
    assert "lora_unet_single_blocks_0_linear2.lora_down.weight" in tensors
    assert "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight" in tensors
    assert "lora_unet_img_in.lora_up.weight" in tensors

    converted = FluxPipeline.lora_state_dict(dict(tensors))
    for module, (_, in_features) in shapes.items():
        if not module.startswith("single_transformer_blocks."):
            continue
        # diffusers folds alpha / rank into the weights it returns.
        probe = torch.randn(in_features, 2, generator=generator)
        got = _lora_apply(converted, f"transformer.{module}", probe)
        want = _lora_apply(peft_state, module, probe) * (alpha / rank)
        assert torch.allclose(got, want, atol=1e-4), module
    # proj_mlp of block 0 was not trained: its share of the fused update is zero.
    mlp = converted.get("transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight")
    assert mlp is None or not mlp.any()
    # Modules outside the blocks keep their names; BFL's final modulation is (shift, scale)
    # where diffusers has (scale, shift), and diffusers swaps lora_up back. (diffusers
    # 0.42 returns these without the "transformer." prefix, so its loader then skips them;
    # ComfyUI and Forge apply them.)
    for module in ("norm_out.linear", "x_embedder"):
        key = next(k for k in converted if k.endswith(f"{module}.lora_B.weight"))
        assert torch.equal(converted[key], peft_state[f"{module}.lora_B.weight"])


def test_unnamed_modules_are_refused_and_partial_dora_is_left_out(caplog) -> None:
    with pytest.raises(ValueError, match="no name for the module 'pos_embed.proj'"):
        flux_kohya_keys(
            {
                "pos_embed.proj.lora_A.weight": torch.zeros(2, 4),
                "pos_embed.proj.lora_B.weight": torch.zeros(4, 2),
            },
            alpha=1.0,
        )
    state = {}
    for x in ("q", "k", "v"):
        state[f"transformer_blocks.0.attn.to_{x}.lora_A.weight"] = torch.zeros(2, 8)
        state[f"transformer_blocks.0.attn.to_{x}.lora_B.weight"] = torch.zeros(8, 2)
        state[f"transformer_blocks.0.attn.to_{x}.lora_magnitude_vector"] = torch.ones(8)
        state[f"single_transformer_blocks.0.attn.to_{x}.lora_A.weight"] = torch.zeros(2, 8)
        state[f"single_transformer_blocks.0.attn.to_{x}.lora_B.weight"] = torch.zeros(8, 2)
        state[f"single_transformer_blocks.0.attn.to_{x}.lora_magnitude_vector"] = torch.ones(8)
    tensors = flux_kohya_keys(state, alpha=1.0)
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.dora_scale"].shape == (24,)
    assert "lora_unet_single_blocks_0_linear1.dora_scale" not in tensors
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in tensors
    assert "single_blocks_0_linear1" in caplog.text and "proj_mlp" in caplog.text


def test_missing_component_is_named(tiny_flux, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_flux, broken)
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(ModelError, match="tokenizer_2/ is missing"):
        _comps(broken)


def test_single_file_without_cached_configs_is_a_clear_error(tmp_path) -> None:
    checkpoint = tmp_path / "flux1-tiny.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(checkpoint))
    ref = resolve_base_model(str(checkpoint))
    assert ref.family is FAMILY.family
    with pytest.raises(
        ModelError, match=r"configs \(.*\) in the Hugging Face cache.*huggingface-cli download"
    ):
        FAMILY.load(ref, checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize("train_clip", [False, True], ids=["transformer", "with-clip"])
def test_trainer_trains_a_lora_the_pipeline_loads(
    tiny_flux, small_dataset, tmp_path, train_clip
) -> None:
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.request import TrainingRequest
    from lora_studio.training.trainer import Trainer

    config = LoraConfig.flux_preset().replace(
        name="flux_lora",
        resolution=64,
        max_steps=3,
        learning_rate=1e-3,
        rank=4,
        alpha=4.0,
        trigger_word="papercut style",
        sample_prompts="" if train_clip else "[trigger], hills",
        sample_inference_steps=2,
        save_diffusers_format=not train_clip,
        train_text_encoder=train_clip,
    )
    request = TrainingRequest(
        Dataset.from_directory(small_dataset), config, "builtin:tiny-flux", tmp_path / "out"
    )
    result = Trainer(request).train()
    assert result.steps == 3 and result.final_loss is not None
    assert math.isfinite(result.final_loss)
    with safe_open(str(result.output_path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "flux1"
    assert json.loads(meta["ss_tag_frequency"])["small"]["papercut style"] == 4
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in keys
    assert all(k.startswith(("lora_unet_", "lora_te1_")) for k in keys)
    assert any(k.startswith("lora_te1_") for k in keys) == train_clip

    pipe = _pipeline(tiny_flux)
    before = render(pipe)
    pipe.load_lora_weights(str(result.output_path), adapter_name="trained")
    after = render(pipe)
    assert (after - before).abs().max().item() > 1e-4
    if train_clip:
        assert "trained" in pipe.get_list_adapters()["text_encoder"]
    else:
        # The sample drawn through family.pipeline, and the diffusers-format copy, which
        # renders as the main file does (alpha = rank here).
        assert len(result.sample_paths) == 1 and result.sample_paths[0].is_file()
        assert result.diffusers_path is not None
        pipe = _pipeline(tiny_flux)
        pipe.load_lora_weights(str(result.diffusers_path), adapter_name="trained")
        assert torch.allclose(render(pipe), after, atol=1e-5)
