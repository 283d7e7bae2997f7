from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_studio.core.base_model import (
    ModelKind,
    family_from_checkpoint_keys,
    resolve_base_model,
)
from lora_studio.core.config import ModelFamily
from lora_studio.core.errors import ModelError


def _diffusers_folder(root: Path, pipeline: str, cross_attention_dim: int = 768) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}), encoding="utf-8")
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text(
        json.dumps({"cross_attention_dim": cross_attention_dim}), encoding="utf-8"
    )
    return root


def test_builtin_model() -> None:
    ref = resolve_base_model("builtin:tiny-sd15")
    assert ref.kind is ModelKind.BUILTIN and ref.family is ModelFamily.SD15
    assert ref.version == "sd_v1"
    with pytest.raises(ModelError, match="Unknown built-in model"):
        resolve_base_model("builtin:huge")


@pytest.mark.parametrize(
    ("pipeline", "cross", "family", "version"),
    [
        ("StableDiffusionPipeline", 768, ModelFamily.SD15, "sd_v1"),
        ("StableDiffusionPipeline", 1024, ModelFamily.SD15, "sd_v2"),
        ("StableDiffusionXLPipeline", 2048, ModelFamily.SDXL, "sdxl_base_v1-0"),
        ("StableDiffusion3Pipeline", 0, ModelFamily.SD3, "sd3"),
        ("FluxPipeline", 0, ModelFamily.FLUX, "flux1"),
    ],
)
def test_diffusers_folders_are_recognised(tmp_path: Path, pipeline, cross, family, version) -> None:
    folder = _diffusers_folder(tmp_path / "model", pipeline, cross)
    ref = resolve_base_model(str(folder))
    assert ref.kind is ModelKind.DIFFUSERS_FOLDER
    assert (ref.family, ref.version) == (family, version)


def test_a_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model_index.json"):
        resolve_base_model(str(tmp_path))


def test_missing_paths_say_what_to_choose(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelError, match="No base model"):
        resolve_base_model("   ")


@pytest.mark.parametrize(
    ("keys", "family", "version"),
    [
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.x"],
            ModelFamily.SD15,
            "sd_v1",
        ),
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.x"],
            ModelFamily.SD15,
            "sd_v2",
        ),
        (
            ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.1.model.x"],
            ModelFamily.SDXL,
            "sdxl_base_v1-0",
        ),
        (["model.diffusion_model.joint_blocks.0.x"], ModelFamily.SD3, "sd3"),
        (["double_blocks.0.img_attn.qkv.weight"], ModelFamily.FLUX, "flux1"),
        (["lora_unet_down_blocks_0.lora_down.weight"], None, ""),
    ],
)
def test_checkpoint_family_from_keys(keys, family, version) -> None:
    assert family_from_checkpoint_keys(keys) == (family, version)


def test_single_file_checkpoints_are_read_from_the_header(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((2, 2), np.float32)}, ckpt)
    ref = resolve_base_model(str(ckpt))
    assert ref.kind is ModelKind.SINGLE_FILE and ref.family is ModelFamily.SD15
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": np.zeros((2, 2), np.float32)}, lora)
    with pytest.raises(ModelError, match="is it a LoRA"):
        resolve_base_model(str(lora))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 4)
    with pytest.raises(ModelError, match="not a readable .safetensors"):
        resolve_base_model(str(junk))
    with pytest.raises(ModelError, match="not a model checkpoint"):
        resolve_base_model(_touch(tmp_path / "notes.txt"))


def _touch(path: Path) -> str:
    path.write_text("x", encoding="utf-8")
    return str(path)


def test_hub_ids_resolve_offline_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="huggingface-cli download acme/sd15"):
        resolve_base_model("acme/sd15")
    repo = cache / "models--acme--sd15"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _diffusers_folder(repo / "snapshots" / commit, "StableDiffusionPipeline")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    ref = resolve_base_model("acme/sd15")
    assert ref.kind is ModelKind.HUB_CACHE
    assert ref.path == repo / "snapshots" / commit
    assert ref.family is ModelFamily.SD15
