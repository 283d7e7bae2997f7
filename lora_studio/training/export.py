"""Writing trained LoRA weights: the kohya format (``lora_unet_...``) with ``ss_*`` metadata.

kohya's key format is what Automatic1111/Forge, ComfyUI, InvokeAI and diffusers'
``load_lora_weights`` all read. The peft -> kohya key mapping is diffusers'
``convert_state_dict_to_kohya``; on top of it we write the real alpha (diffusers writes
alpha = rank), use ``lora_te_`` for SD 1.x text encoders (what kohya's SD 1.x files use),
and add kohya's metadata and the two model hashes of sd-webui-additional-networks.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_studio.core.atomic import atomic_write_bytes
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import OutputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunFacts:
    """What the metadata records about a finished run."""

    base_model_version: str
    base_model_name: str
    num_train_images: int
    num_reg_images: int
    max_train_steps: int
    steps_done: int
    epochs: int
    started_at: float
    finished_at: float
    mixed_precision: str


def peft_to_kohya(
    unet_lora: Mapping[str, torch.Tensor],
    text_encoder_lora: Mapping[str, torch.Tensor] | None,
    *,
    alpha: float,
    text_encoder_prefix: str = "lora_te_",
) -> dict[str, torch.Tensor]:
    """Convert peft state dicts (``...lora_A.weight``) into one kohya state dict.

    Args:
        unet_lora: ``get_peft_model_state_dict(unet)``.
        text_encoder_lora: the same for the text encoder, or ``None``.
        alpha: the LoRA alpha (scale = alpha / rank), stored per module as ``.alpha``.
        text_encoder_prefix: ``lora_te_`` for SD 1.x; SDXL uses ``lora_te1_``/``lora_te2_``.
    """
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    combined: dict[str, torch.Tensor] = {f"unet.{k}": v for k, v in unet_lora.items()}
    if text_encoder_lora:
        combined.update({f"text_encoder.{_clip_path(k)}": v for k, v in text_encoder_lora.items()})
    kohya = convert_state_dict_to_kohya(combined)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in kohya.items():
        if key.startswith("lora_te1_") and text_encoder_prefix != "lora_te1_":
            key = text_encoder_prefix + key[len("lora_te1_") :]
        if key.endswith(".alpha"):
            tensor = torch.tensor(float(alpha), dtype=torch.float32)
        else:
            tensor = tensor.detach().to("cpu").contiguous()
        out[key] = tensor
    return out


def _clip_path(key: str) -> str:
    # kohya/A1111/ComfyUI name CLIP text-encoder modules from the CLIPTextModel root,
    # "text_model.encoder.layers.N..."; transformers 5 dropped the "text_model" level.
    return key if key.startswith("text_model.") else f"text_model.{key}"


def kohya_metadata(
    config: LoraConfig, dataset: Dataset, facts: RunFacts, output_name: str
) -> dict[str, str]:
    """kohya's ``ss_*`` training metadata (every value a string)."""
    network_args: dict[str, str] = {}
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": _num(config.alpha),
        "ss_network_args": json.dumps(network_args),
        "ss_base_model_version": facts.base_model_version,
        "ss_sd_model_name": facts.base_model_name,
        "ss_output_name": output_name,
        "ss_training_comment": f"trained with LoRA Studio, preset {config.preset}",
        "ss_learning_rate": _num(config.learning_rate),
        "ss_unet_lr": _num(config.learning_rate),
        "ss_text_encoder_lr": _num(config.effective_text_encoder_lr)
        if config.train_text_encoder
        else "0",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_num_train_images": str(facts.num_train_images),
        "ss_num_reg_images": str(facts.num_reg_images),
        "ss_num_epochs": str(facts.epochs),
        "ss_epoch": str(facts.epochs),
        "ss_max_train_steps": str(facts.max_train_steps),
        "ss_steps": str(facts.steps_done),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation_steps),
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_lr_scheduler": config.lr_scheduler.value,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_mixed_precision": facts.mixed_precision,
        "ss_seed": str(config.seed),
        "ss_training_started_at": str(facts.started_at),
        "ss_training_finished_at": str(facts.finished_at),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency(), ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(
            {
                folder: {"n_repeats": repeats, "img_count": count}
                for folder, (repeats, count) in _dataset_dirs(dataset, config).items()
            },
            ensure_ascii=False,
        ),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _modelspec_architecture(facts.base_model_version),
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": output_name,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(facts.finished_at)),
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
        "lora_studio.config": json.dumps(config.to_dict()),
    }
    if config.trigger_word:
        meta["modelspec.trigger_phrase"] = config.trigger_word
    return meta


def _modelspec_architecture(version: str) -> str:
    return {
        "sd_v1": "stable-diffusion-v1/lora",
        "sd_v2": "stable-diffusion-v2-512/lora",
        "sdxl_base_v1-0": "stable-diffusion-xl-v1-base/lora",
        "sd3": "stable-diffusion-3/lora",
        "flux1": "flux-1-dev/lora",
    }.get(version, "unknown/lora")


def _dataset_dirs(dataset: Dataset, config: LoraConfig) -> dict[str, tuple[int, int]]:
    dirs: dict[str, tuple[int, int]] = {}
    for item in dataset.images:
        folder = item.path.parent.name
        repeats, count = dirs.get(folder, (item.repeats or config.repeats, 0))
        dirs[folder] = (repeats, count + 1)
    return dirs


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value)) + ".0"


def model_hashes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[str, str]:
    """sd-webui-additional-networks' ``(sshs_model_hash, sshs_legacy_hash)``.

    Both hash the file that the tensors and only the ``ss_*`` metadata would make, so the
    hashes do not change when other metadata (a title, a description) is edited later.
    """
    from safetensors.torch import save

    blob = save(dict(tensors), metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    (header_len,) = struct.unpack("<Q", blob[:8])
    model_hash = hashlib.sha256(blob[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_kohya_lora(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write a kohya LoRA ``.safetensors`` atomically, with the model hashes added."""
    from safetensors.torch import save

    meta = dict(metadata)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(tensors, meta)
    try:
        return atomic_write_bytes(path, save(dict(tensors), metadata=meta))
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from None


def unique_output_path(folder: Path, name: str, suffix: str = ".safetensors") -> Path:
    """``folder/name.safetensors``, or ``name_2``, ``name_3``... if taken: never overwrite."""
    candidate = folder / f"{name}{suffix}"
    counter = 2
    while candidate.exists():
        candidate = folder / f"{name}_{counter}{suffix}"
        counter += 1
    return candidate
