"""The SD 3.5 family on its tiny model: the builder, loading, text encoding against the
pipeline's own ``encode_prompt``, the flow-matching loss, the LoRA file (loaded by
``StableDiffusion3Pipeline.load_lora_weights`` exactly like diffusers' own format) and a
short training run through the real trainer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from family_helpers import (
    adapter_metadata,
    attach_lora,
    loss_inputs,
    render,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_studio.cli import main
from lora_studio.core.base_model import resolve_base_model
from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ModelError
from lora_studio.training.families import get_family
from lora_studio.training.families.sd3 import SD3Family

FAMILY = SD3Family()
CAPTIONS = ["papercut style, hills", "a lighthouse by the sea at night"]


@pytest.fixture(scope="module")
def tiny_sd3() -> Path:
    from lora_studio.training.tiny import ensure_builtin_model

    return ensure_builtin_model("tiny-sd3")


def _pipeline(model: Path):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(model, local_files_only=True)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(file).items():
            out[f"{file.parent.name}/{key}"] = value
    return out


def _comps(model: Path):
    return FAMILY.load(resolve_base_model(str(model)), model)


def test_registry_gives_the_sd3_family() -> None:
    family = get_family(FAMILY.family)
    assert isinstance(family, SD3Family)
    assert family.kohya_version == "sd3" and not family.has_conv_layers
    assert family.text_encoder_prefixes[2] is None  # T5 is never trained


def test_cli_make_tiny_is_deterministic_small_and_real(tiny_sd3, tmp_path, capsys) -> None:
    target = tmp_path / "tiny"
    assert main(["models", "make-tiny", str(target), "--family", "sd3"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(target))
    same, built = _tensors(target), _tensors(tiny_sd3)
    assert same.keys() == built.keys()
    assert all(torch.equal(same[k], built[k]) for k in same)
    assert sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) < 8_000_000
    other = _tensors(FAMILY.make_tiny(tmp_path / "seed1", seed=1))
    assert any(not torch.equal(other[k], same[k]) for k in same if k.startswith("transformer/"))

    pipe = _pipeline(target)
    assert type(pipe.tokenizer_3).__name__ == "T5Tokenizer"
    assert pipe.transformer.config.patch_size == 2
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_3.config.d_model
    assert pipe.vae.config.latent_channels == 16
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (1.5305, 0.0609)
    assert pipe.scheduler.config.shift == 3.0
    assert resolve_base_model(str(target)).family is FAMILY.family


def test_encode_text_is_the_pipelines_encode_prompt(tiny_sd3) -> None:
    comps = _comps(tiny_sd3)
    assert comps.prediction_type == "flow_matching"
    ids = FAMILY.tokenize(comps, CAPTIONS)
    assert [tuple(i.shape) for i in ids] == [(2, 77), (2, 77), (2, 32)]
    with torch.no_grad():
        cond = FAMILY.encode_text(comps, comps.text_encoders, ids)
        pipe = FAMILY.pipeline(comps, comps.denoiser, comps.text_encoders)
        embeds, _, pooled, _ = pipe.encode_prompt(
            CAPTIONS, None, None, do_classifier_free_guidance=False, max_sequence_length=32
        )
    assert cond["prompt_embeds"].shape == (2, 77 + 32, 96)
    assert cond["pooled"].shape == (2, 32 + 48)
    assert torch.equal(cond["prompt_embeds"], embeds)
    assert torch.equal(cond["pooled"], pooled)


def test_latents_are_shifted_then_scaled(tiny_sd3) -> None:
    comps = _comps(tiny_sd3)
    latents = torch.ones(1, 16, 8, 8)
    assert torch.allclose(FAMILY.scale_latents(comps, latents), (1 - 0.0609) * 1.5305 * latents)


def test_loss_is_finite_and_reaches_every_lora_layer(tiny_sd3) -> None:
    from peft import LoraConfig as PeftConfig

    comps = _comps(tiny_sd3)
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
    # The context-pre-only last block has add_q/k/v_proj but no to_add_out; the first block
    # has SD 3.5 Medium's second attention.
    assert "transformer_blocks.1.attn.add_q_proj" in modules
    assert "transformer_blocks.1.attn.to_add_out" not in modules
    assert "transformer_blocks.0.attn2.to_q" in modules

    inputs = loss_inputs(FAMILY, comps, CAPTIONS)
    loss = FAMILY.loss(inputs)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in lora.values())
    # Every LoRA layer gets a gradient but one: the last block's context queries only make
    # the context stream's output, which that block drops (diffusers' SD 3 script trains it
    # all the same).
    dead = "transformer_blocks.1.attn.add_q_proj."
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n and dead not in n)
    # The same generator state gives the same loss (reproducible, resumable runs).
    again = FAMILY.loss(loss_inputs(FAMILY, comps, CAPTIONS))
    assert again.item() == loss.item()


# (case, rank, alpha, CLIPs trained)
FILE_CASES = [
    ("transformer", 4, 2.0, 0),  # alpha / rank = 0.5: folding it in is exact
    ("transformer-and-clips", 4, 8.0, 2),
]


@pytest.mark.parametrize(
    ("case", "rank", "alpha", "encoders"), FILE_CASES, ids=[c[0] for c in FILE_CASES]
)
def test_lora_file_renders_exactly_like_the_diffusers_format(
    tiny_sd3, tmp_path, case, rank, alpha, encoders
) -> None:
    config = LoraConfig().replace(rank=rank, alpha=alpha)
    trained = _pipeline(tiny_sd3)
    denoiser, clips = attach_lora(trained, FAMILY, rank=rank, alpha=alpha, text_encoders=encoders)
    expected = render(trained)

    tensors = FAMILY.kohya_keys(denoiser, config)
    for index, state in enumerate(clips):
        tensors.update(FAMILY.text_encoder_kohya_keys(index, state, config))
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in tensors
    if encoders:
        assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in tensors
        assert any(k.startswith("text_encoder_2.text_model.") for k in tensors)
    lora_file = tmp_path / "lora.safetensors"
    save_file(tensors, str(lora_file), metadata={"ss_base_model_version": "sd3"})
    diffusers_file = FAMILY.save_diffusers_lora(
        tmp_path / "diffusers", denoiser, clips, adapter_metadata(denoiser, clips, alpha)
    )

    images = []
    for path in (lora_file, diffusers_file):
        pipe = _pipeline(tiny_sd3)
        before = render(pipe)
        pipe.load_lora_weights(str(path), adapter_name="trained")
        adapters = pipe.get_list_adapters()
        assert "trained" in adapters["transformer"]
        if encoders:
            assert "trained" in adapters["text_encoder"] and "trained" in adapters["text_encoder_2"]
        images.append(render(pipe))
        assert (images[-1] - before).abs().max().item() > 1e-3
    assert torch.allclose(images[0], images[1], atol=1e-5)
    assert torch.allclose(images[0], expected, atol=1e-5)
    if alpha / rank == 0.5:
        assert torch.equal(images[0], images[1])


def test_missing_component_is_named(tiny_sd3, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd3, broken)
    shutil.rmtree(broken / "text_encoder_3")
    with pytest.raises(ModelError, match="text_encoder_3/ is missing"):
        _comps(broken)


def test_single_file_without_cached_configs_is_a_clear_error(tmp_path) -> None:
    checkpoint = tmp_path / "sd3.5_tiny.safetensors"
    save_file(
        {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2)},
        str(checkpoint),
    )
    ref = resolve_base_model(str(checkpoint))
    assert ref.family is FAMILY.family
    with pytest.raises(
        ModelError, match=r"configs \(.*\) in the Hugging Face cache.*huggingface-cli download"
    ):
        FAMILY.load(ref, checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize(
    "train_clips",
    [
        pytest.param(False, id="transformer"),
        pytest.param(True, id="with-clips"),
    ],
)
def test_trainer_trains_a_lora_the_pipeline_loads(
    tiny_sd3, small_dataset, tmp_path, train_clips
) -> None:
    from lora_studio.core.dataset import Dataset
    from lora_studio.core.request import TrainingRequest
    from lora_studio.training.trainer import Trainer

    config = LoraConfig.sd35_preset().replace(
        name="sd3_lora",
        resolution=64,
        max_steps=3,
        learning_rate=1e-3,
        rank=4,
        alpha=4.0,
        trigger_word="papercut style",
        sample_prompts="" if train_clips else "[trigger], hills",
        sample_inference_steps=2,
        save_diffusers_format=not train_clips,
        train_text_encoder=train_clips,
    )
    request = TrainingRequest(
        Dataset.from_directory(small_dataset), config, "builtin:tiny-sd3", tmp_path / "out"
    )
    result = Trainer(request).train()
    assert result.steps == 3 and result.final_loss is not None
    assert math.isfinite(result.final_loss)
    with safe_open(str(result.output_path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sd3"
    assert json.loads(meta["ss_tag_frequency"])["small"]["papercut style"] == 4
    assert any(k.startswith("transformer.") for k in keys)
    assert all(k.startswith(("transformer.", "text_encoder.", "text_encoder_2.")) for k in keys)

    pipe = _pipeline(tiny_sd3)
    before = render(pipe)
    pipe.load_lora_weights(str(result.output_path), adapter_name="trained")
    after = render(pipe)
    assert (after - before).abs().max().item() > 1e-4
    if train_clips:
        assert "trained" in pipe.get_list_adapters()["text_encoder"]
    else:
        # The sample drawn through family.pipeline, and the diffusers-format copy, which
        # renders as the main file does (alpha = rank here).
        assert len(result.sample_paths) == 1 and result.sample_paths[0].is_file()
        assert result.diffusers_path is not None
        pipe = _pipeline(tiny_sd3)
        pipe.load_lora_weights(str(result.diffusers_path), adapter_name="trained")
        assert torch.allclose(render(pipe), after, atol=1e-5)
