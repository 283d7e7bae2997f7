"""inspect, convert and check on what the real trainer writes (a few steps on the tiny
SD 1.5), both its kohya file and its optional diffusers-format file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.request import TrainingRequest
from lora_studio.ecosystem.check import check_lora
from lora_studio.ecosystem.convert import convert_file, load_lora, read_canonical
from lora_studio.ecosystem.lora_file import inspect_lora
from lora_studio.training.trainer import Trainer


@pytest.mark.slow
def test_the_trainers_files(tiny_model: Path, small_dataset: Path, tmp_path: Path) -> None:
    config = LoraConfig.fast_preset().replace(
        name="trained",
        resolution=64,
        max_steps=2,
        learning_rate=1e-3,
        trigger_word="papercut style",
        train_text_encoder=True,
        save_diffusers_format=True,
        rank=4,
        alpha=2,
    )
    request = TrainingRequest(
        Dataset.from_directory(small_dataset), config, "builtin:tiny-sd15", tmp_path / "out"
    )
    result = Trainer(request).train()
    assert result.diffusers_path is not None

    info = inspect_lora(result.output_path)
    assert (info.format, info.family, info.family_source) == ("kohya", "sd15", "metadata")
    assert info.base_model_version == "sd_v1"
    assert info.ranks == {4: len(info.modules)} and info.alphas == {2.0: len(info.modules)}
    assert info.has_text_encoder and info.top_tags
    assert info.metadata["ss_output_name"] == "trained"

    diffusers_file = result.diffusers_path
    if diffusers_file.is_dir():
        diffusers_file = diffusers_file / "pytorch_lora_weights.safetensors"
    other = inspect_lora(diffusers_file)
    assert other.format == "diffusers" and other.family == "sd15"
    assert other.alphas == {2.0: len(other.modules)}  # from diffusers' adapter metadata

    # both files hold the same LoRA
    kohya = read_canonical(*load_lora(result.output_path)).modules
    peft = read_canonical(*load_lora(diffusers_file)).modules
    assert set(kohya) == set(peft)
    for key, module in kohya.items():
        torch.testing.assert_close(module.delta(), peft[key].delta(), atol=1e-6, rtol=1e-5)

    report = check_lora(result.output_path)
    assert report.ok, report.to_dict()
    assert check_lora(diffusers_file).targets[0].status == "ok"  # diffusers loads it

    comfy = convert_file(result.output_path, "comfyui", tmp_path / "comfy.safetensors").path
    back = convert_file(comfy, "kohya", tmp_path / "back.safetensors").path
    for key, module in read_canonical(*load_lora(back)).modules.items():
        torch.testing.assert_close(module.delta(), kohya[key].delta(), atol=1e-6, rtol=1e-5)
