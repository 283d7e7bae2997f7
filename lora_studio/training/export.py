"""Writing trained LoRA weights: the kohya format (``lora_unet_...``) with ``ss_*`` metadata.

kohya's key format is what Automatic1111/Forge, ComfyUI, InvokeAI and diffusers'
``load_lora_weights`` all read. kohya keys are the diffusers module paths with ``.`` replaced by ``_`` behind a prefix
(``lora_unet_``, ``lora_te_``...), ``lora_down``/``lora_up`` for peft's ``lora_A``/
``lora_B``, and a scalar ``.alpha`` per module (diffusers' ``convert_state_dict_to_kohya``
does the same renaming but writes alpha = rank and mislabels DoRA tensors of the UNet).
On top come kohya's metadata and the two model hashes of sd-webui-additional-networks.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


#: UNet convolutions that get LoRA layers when ``conv_rank`` is set (LoCon); peft's
#: ``rank_pattern``/``alpha_pattern`` match them as the last part of a module's name.
CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "conv")


def kohya_lora_keys(
    peft_state: Mapping[str, torch.Tensor],
    prefix: str,
    *,
    alpha: float,
    conv_alpha: float | None = None,
    conv_targets: Collection[str] | None = None,
    conv_modules: Collection[str] | None = None,
    module_root: str = "",
) -> dict[str, torch.Tensor]:
    """Rename one peft state dict to kohya keys and add each module's ``.alpha``.

    ``down_blocks.0...to_q.lora_A.weight`` becomes
    ``<prefix>down_blocks_0_..._to_q.lora_down.weight`` (``lora_B`` -> ``lora_up``, DoRA's
    ``lora_magnitude_vector`` -> ``dora_scale``). Convolution modules (4-D weights) get
    ``conv_alpha`` when given.

    Args:
        peft_state: ``get_peft_model_state_dict(module)``.
        prefix: ``lora_unet_``, ``lora_te_``, ``lora_te1_``...
        alpha: the LoRA alpha (scale = alpha / rank).
        conv_alpha: alpha of convolution LoRA layers (LoCon); pass it only when they were
            trained with it (``conv_rank`` set).
        conv_targets: with ``conv_alpha``, only 4-D modules whose name ends in one of these
            get it (a convolution named in custom target modules, such as SD 1.5's
            ``proj_in``, was trained with ``alpha``); ``None``: every 4-D module.
        conv_modules: with ``conv_alpha``, the exact module paths (as in ``peft_state``)
            of the LoCon layers, for a state dict whose names no longer tell (SDXL's,
            renamed to the original UNet's); wins over ``conv_targets``.
        module_root: prepended to module paths that lack it (``text_model.`` for CLIP).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state.items():
        module, kohya_suffix = _split_peft_key(key)
        if module_root and not module.startswith(module_root):
            module = module_root + module
        name = prefix + module.replace(".", "_")
        value = tensor.detach().to("cpu").contiguous()
        if kohya_suffix == ".dora_scale":
            value = _kohya_dora_shape(value)
        out[name + kohya_suffix] = value
        if kohya_suffix == ".lora_down.weight":
            is_conv = value.ndim == 4 and conv_alpha is not None
            if is_conv and conv_modules is not None:
                is_conv = module in conv_modules
            elif is_conv and conv_targets is not None:
                is_conv = module.rsplit(".", 1)[-1] in conv_targets
            module_alpha = conv_alpha if is_conv else alpha
            out[name + ".alpha"] = torch.tensor(float(module_alpha), dtype=torch.float32)
    return out


_PEFT_TO_KOHYA_SUFFIX = {
    ".lora_A.weight": ".lora_down.weight",
    ".lora_B.weight": ".lora_up.weight",
    ".lora_magnitude_vector.weight": ".dora_scale",
    ".lora_magnitude_vector": ".dora_scale",
}


def _kohya_dora_shape(magnitude: torch.Tensor) -> torch.Tensor:
    """kohya/LyCORIS store DoRA magnitudes as ``(out, 1)`` (linear) and ``(out, 1, 1, 1)``
    (conv), which ComfyUI and Forge index by output; peft keeps ``(out,)`` and
    ``(1, out, 1, 1)``. diffusers reads either."""
    if magnitude.ndim == 1:
        return magnitude.reshape(-1, 1)
    if magnitude.ndim == 4 and magnitude.shape[0] == 1:
        return magnitude.reshape(magnitude.shape[1], 1, 1, 1)
    return magnitude


def diffusers_adapter_metadata(peft_config: Any) -> dict[str, Any]:
    """The parts of a peft ``LoraConfig`` diffusers stores in a LoRA file and applies on
    load; without them it assumes alpha = rank for every module."""
    return {
        "r": int(peft_config.r),
        "lora_alpha": float(peft_config.lora_alpha),
        "target_modules": sorted(peft_config.target_modules),
        "use_dora": bool(peft_config.use_dora),
        "rank_pattern": {k: int(v) for k, v in dict(peft_config.rank_pattern or {}).items()},
        "alpha_pattern": {k: float(v) for k, v in dict(peft_config.alpha_pattern or {}).items()},
    }


def save_diffusers_lora_file(
    pipeline_class: Any,
    folder: Path,
    layers: Mapping[str, Mapping[str, Any] | None],
    adapter_metadata: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Path:
    """``pipeline_class.save_lora_weights`` of peft state dicts (``None`` ones left out).

    The peft keys are written as they are (``<module>.lora_A.weight``), which
    ``load_lora_weights`` reads natively: diffusers' ``convert_state_dict_to_diffusers``
    renames only attention projections (to its old format), and a file mixing both
    formats loses them on loading.

    Args:
        layers: by the pipeline's component names: ``{"unet": state, "text_encoder":
            state, ...}`` (``transformer`` for SD 3.5/Flux).
        adapter_metadata: :func:`diffusers_adapter_metadata` by the same names.
    """
    kwargs: dict[str, Any] = {}
    for name, state in layers.items():
        if state is None:
            continue
        kwargs[f"{name}_lora_layers"] = dict(state)
        meta = (adapter_metadata or {}).get(name)
        if meta is not None:
            kwargs[f"{name}_lora_adapter_metadata"] = dict(meta)
    folder.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(folder, safe_serialization=True, **kwargs)
    return folder / "pytorch_lora_weights.safetensors"


def save_family_diffusers_lora(
    pipeline_class: Any,
    folder: Path,
    component_names: tuple[str, ...],
    denoiser_lora: Mapping[str, Any],
    text_encoder_loras: Sequence[Mapping[str, Any] | None],
    adapter_metadata: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Path:
    """:func:`save_diffusers_lora_file` for a family whose pipeline calls its denoiser
    ``component_names[0]`` (``unet``/``transformer``) and its text encoders the rest, in
    the trainer's order; ``adapter_metadata`` is keyed ``denoiser``, ``text_encoder_0``..."""
    meta = adapter_metadata or {}
    denoiser, *encoders = component_names
    layers: dict[str, Mapping[str, Any] | None] = {denoiser: denoiser_lora}
    metadata: dict[str, Mapping[str, Any] | None] = {denoiser: meta.get("denoiser")}
    for index, name in enumerate(encoders):
        layers[name] = text_encoder_loras[index] if index < len(text_encoder_loras) else None
        metadata[name] = meta.get(f"text_encoder_{index}")
    return save_diffusers_lora_file(pipeline_class, folder, layers, metadata)


def _split_peft_key(key: str) -> tuple[str, str]:
    """``("a.b.to_q", ".lora_down.weight")`` for ``"a.b.to_q.lora_A.weight"``."""
    for peft_suffix, kohya_suffix in _PEFT_TO_KOHYA_SUFFIX.items():
        if key.endswith(peft_suffix):
            return key[: -len(peft_suffix)], kohya_suffix
    raise ValueError(f"Unexpected LoRA tensor {key!r}")


def clip_kohya_keys(
    peft_state: Mapping[str, torch.Tensor], prefix: str, *, alpha: float
) -> dict[str, torch.Tensor]:
    """kohya keys of a CLIP text-encoder LoRA.

    kohya/A1111/ComfyUI name CLIP modules from the CLIPTextModel root,
    ``text_model.encoder.layers.N...``; transformers 5 dropped the ``text_model`` level, so
    it is put back here.
    """
    return kohya_lora_keys(peft_state, prefix, alpha=alpha, module_root="text_model.")


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
