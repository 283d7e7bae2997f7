"""LoRA files of every family on the built-in tiny models, written the way LoRA Studio's
trainer writes them (the families' own kohya export) and the way diffusers' own
``save_lora_weights`` does, with the update every layer should apply."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lora_studio.core.config import LoraConfig, ModelFamily
from lora_studio.training.export import diffusers_adapter_metadata
from lora_studio.training.families import get_family

BUILTIN = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0", "sd3": "sd3", "flux": "flux1"}
_DENOISER = {"sd15": "unet", "sdxl": "unet", "sd3": "transformer", "flux": "transformer"}
_TEXT_ENCODERS = {"sd15": 1, "sdxl": 2, "sd3": 2, "flux": 1}


@dataclass
class TinyLora:
    family: str
    model: Path
    rank: int
    alpha: float
    denoiser: dict[str, torch.Tensor]
    text_encoders: list[dict[str, torch.Tensor]]
    peft_configs: list[Any]
    conv_rank: int = 0
    conv_alpha: float = 1.0

    def expected(self) -> dict[tuple[str, str], torch.Tensor]:
        """``{(component, diffusers path): up @ down * alpha / rank}``."""
        out = {}
        parts = [("denoiser", self.denoiser)] + [
            ("text_encoder" if i == 0 else f"text_encoder_{i + 1}", s)
            for i, s in enumerate(self.text_encoders)
        ]
        for component, state in parts:
            for key, down in state.items():
                if not key.endswith(".lora_A.weight"):
                    continue
                module = key[: -len(".lora_A.weight")]
                if component != "denoiser" and not module.startswith("text_model."):
                    module = "text_model." + module
                up = state[key.replace("lora_A", "lora_B")]
                alpha = self.conv_alpha if down.ndim == 4 else self.alpha
                out[(component, module)] = (up.flatten(1) @ down.flatten(1)) * (
                    alpha / down.shape[0]
                )
        return out

    def expected_magnitudes(self) -> dict[tuple[str, str], torch.Tensor]:
        """``{(component, diffusers path): DoRA magnitude}`` of a DoRA LoRA."""
        out = {}
        for key, value in self.denoiser.items():
            if "lora_magnitude_vector" in key:
                out[("denoiser", key.split(".lora_magnitude_vector")[0])] = value.reshape(-1)
        return out

    def config(self) -> LoraConfig:
        return LoraConfig(
            rank=self.rank,
            alpha=self.alpha,
            family=ModelFamily(self.family),
            conv_rank=self.conv_rank,
            conv_alpha=self.conv_alpha,
        )

    def write_trainer_kohya(self, path: Path) -> Path:
        """The file the trainer writes (``Family.kohya_keys`` + text encoders)."""
        family = get_family(ModelFamily(self.family))
        config = self.config()
        tensors = dict(family.kohya_keys(self.denoiser, config))
        for index, state in enumerate(self.text_encoders):
            tensors.update(family.text_encoder_kohya_keys(index, state, config))
        metadata = {
            "ss_base_model_version": VERSIONS[self.family],
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(self.rank),
            "ss_network_alpha": str(self.alpha),
            "ss_output_name": "tiny",
            "ss_tag_frequency": json.dumps(
                {
                    "10_papercut": {"papercut style": 10, "hills": 4, "sea": 2},
                    "2_extra": {"hills": 3},
                }
            ),
            "modelspec.trigger_phrase": "papercut style",
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        return path

    def write_diffusers(self, folder: Path) -> Path:
        """What diffusers' ``save_lora_weights`` writes (with the adapter metadata)."""
        family = get_family(ModelFamily(self.family))
        meta = {"denoiser": diffusers_adapter_metadata(self.peft_configs[0])}
        for index in range(len(self.text_encoders)):
            meta[f"text_encoder_{index}"] = diffusers_adapter_metadata(self.peft_configs[index + 1])
        return family.save_diffusers_lora(
            folder, self.denoiser, list(self.text_encoders), adapter_metadata=meta
        )


def make_tiny_lora(
    family: str,
    *,
    rank: int = 4,
    alpha: float = 2.0,
    text_encoders: bool = True,
    dora: bool = False,
    conv_rank: int = 0,
    conv_alpha: float = 1.0,
    seed: int = 1,
) -> TinyLora:
    """LoRA layers of ``family``'s default targets on the tiny model, with random up
    weights (so every layer changes the model)."""
    from peft import LoraConfig as PeftConfig
    from peft import inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from lora_studio.training.tiny import ensure_builtin_model

    model = ensure_builtin_model(BUILTIN[family])
    fam = get_family(ModelFamily(family))
    denoiser = _load(model, _DENOISER[family])
    encoders = []
    if text_encoders:
        names = ["text_encoder", "text_encoder_2"][: _TEXT_ENCODERS[family]]
        encoders = [_load(model, name) for name in names]

    conv_targets = ("conv1", "conv2", "conv_shortcut", "conv")  # the trainer's LoCon layers

    def config(targets: tuple[str, ...], conv: bool = False) -> Any:
        patterns: dict[str, Any] = {}
        if conv:
            patterns = {
                "rank_pattern": {t: conv_rank for t in conv_targets},
                "alpha_pattern": {t: conv_alpha for t in conv_targets},
            }
        return PeftConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights="gaussian",
            target_modules=list(targets) + (list(conv_targets) if conv else []),
            use_dora=dora,
            **patterns,
        )

    configs = [config(fam.denoiser_target_modules, conv=bool(conv_rank))]
    inject_adapter_in_model(configs[0], denoiser)
    for encoder in encoders:
        configs.append(config(fam.text_encoder_target_modules))
        inject_adapter_in_model(configs[-1], encoder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [denoiser, *encoders]:
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
                elif "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.1 * torch.rand(param.shape, generator=generator))
    return TinyLora(
        family,
        model,
        rank,
        alpha,
        {k: v.detach().clone() for k, v in get_peft_model_state_dict(denoiser).items()},
        [
            {k: v.detach().clone() for k, v in get_peft_model_state_dict(e).items()}
            for e in encoders
        ],
        configs,
        conv_rank,
        conv_alpha,
    )


def _load(model: Path, subfolder: str) -> Any:
    import json as _json

    config = _json.loads((model / subfolder / "config.json").read_text())
    class_name = config.get("_class_name") or config["architectures"][0]
    if subfolder.startswith("text_encoder"):
        import transformers

        cls = getattr(transformers, class_name)
    else:
        import diffusers

        cls = getattr(diffusers, class_name)
    return cls.from_pretrained(model, subfolder=subfolder, local_files_only=True)
