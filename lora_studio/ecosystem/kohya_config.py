"""kohya configs in and out: kohya_ss GUI JSON, sd-scripts training TOML and ``dataset_config``
TOML to a :class:`~lora_studio.core.config.LoraConfig` plus dataset folders; and back.

The formats (kohya-ss/sd-scripts ``train_network.py`` arguments and
``library/config_util.py``; bmaltais/kohya_ss's saved ``.json``):

* **sd-scripts training TOML** (``--config_file``): the command-line arguments as keys
  (``network_dim``, ``learning_rate``, ``optimizer_type``...), at the top level or in tables
  of any name - sd-scripts flattens one level of tables; list arguments are arrays
  (``network_args = ["conv_dim=4", "conv_alpha=1"]``).
* **dataset_config TOML**: ``[general]`` options, ``[[datasets]]`` (``resolution``,
  ``batch_size``, bucket options) each with ``[[datasets.subsets]]`` (``image_dir``,
  ``num_repeats``, ``class_tokens``, ``is_reg``, caption options); an option set in a
  subset overrides its dataset's, which overrides ``[general]``.
* **kohya_ss GUI JSON**: the GUI's fields, mostly sd-scripts' names with some of its own
  (``epoch``, ``optimizer``, ``train_batch_size``, ``max_resolution``, ``LoRA_type``,
  ``lr_warmup`` as a percentage, ``sdxl``/``flux1_checkbox``/``sd3_checkbox``).

Whatever has no equivalent in LoRA Studio is listed in :attr:`KohyaImport.unsupported`, never
dropped silently; values at their kohya default are not listed.

No torch here (an import-linter contract).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.config import (
    LoraConfig,
    LrScheduler,
    ModelFamily,
    Optimizer,
    TimestepSampling,
    coerce_config,
)
from lora_studio.core.errors import ConfigError

#: sd-scripts' training script per family.
TRAIN_SCRIPTS = {
    ModelFamily.SD15: "train_network.py",
    ModelFamily.SDXL: "sdxl_train_network.py",
    ModelFamily.SD3: "sd3_train_network.py",
    ModelFamily.FLUX: "flux_train_network.py",
}
#: sd-scripts' network module per family.
NETWORK_MODULES = {
    ModelFamily.SD15: "networks.lora",
    ModelFamily.SDXL: "networks.lora",
    ModelFamily.SD3: "networks.lora_sd3",
    ModelFamily.FLUX: "networks.lora_flux",
}
_OPTIMIZERS = {
    "adamw": Optimizer.ADAMW,
    "adamw8bit": Optimizer.ADAMW_8BIT,
    "prodigy": Optimizer.PRODIGY,
    "adafactor": Optimizer.ADAFACTOR,
}
_OPTIMIZER_NAMES = {
    Optimizer.ADAMW: "AdamW",
    Optimizer.ADAMW_8BIT: "AdamW8bit",
    Optimizer.PRODIGY: "Prodigy",
    Optimizer.ADAFACTOR: "Adafactor",
}
_SCHEDULERS = {s.value: s for s in LrScheduler}
#: kohya keys that are translated (above and in ``_translate``) or only say where things go
#: and how to log, save or launch, which LoRA Studio decides itself: never "unsupported".
_IGNORED = frozenset(
    {
        "output_dir", "logging_dir", "save_model_as", "save_precision", "log_prefix",
        "caption_extension", "max_data_loader_n_workers", "persistent_data_loader_workers",
        "xformers", "sdpa", "mem_eff_attn", "cache_latents", "vae_batch_size", "save_state",
        "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "log_with",
        "training_comment", "metadata_title", "metadata_author", "metadata_description",
        "metadata_license", "metadata_tags", "lowram", "highvram", "lowvram",
        "dataset_config", "config_file", "output_config", "model_list", "save_every_n_epochs_state",
        "LoRA_type", "LyCORIS_preset", "additional_parameters", "save_as_bool", "epoch",
        "train_batch_size", "max_resolution", "optimizer", "lr_warmup", "sdxl", "sd3_checkbox",
        "flux1_checkbox", "v2", "sample_sampler", "sample_every_n_epochs",
        "pretrained_model_name_or_path", "train_data_dir", "output_name", "tensorboard",
        "wandb_api_key", "wandb_run_name", "use_wandb", "huggingface_token", "log_tracker_name",
        "log_tracker_config", "dynamo_backend", "num_processes", "num_machines",
        "multi_gpu", "gpu_ids", "main_process_port", "num_cpu_threads_per_process",
        "extra_accelerate_launch_args", "mixed_precision", "seed", "network_dim",
        "network_alpha", "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler",
        "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power",
        "gradient_accumulation_steps", "gradient_checkpointing", "max_train_epochs",
        "max_train_steps", "network_module", "network_args", "network_train_unet_only",
        "conv_dim", "conv_alpha", "optimizer_type", "optimizer_args", "max_grad_norm",
        "noise_offset", "min_snr_gamma", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
        "bucket_no_upscale", "caption_dropout_rate", "shuffle_caption", "keep_tokens",
        "cache_latents_to_disk", "sample_prompts", "sample_every_n_steps",
        "save_every_n_steps", "save_every_n_epochs", "save_last_n_steps", "save_last_n_epochs",
        "guidance_scale", "logit_mean", "logit_std", "timestep_sampling", "weighting_scheme",
        "torch_compile", "resolution", "dora_wd", "clip_l", "clip_g",
        "t5xxl", "ae", "network_weights", "reg_data_dir", "bucket_reso_steps",
        "sdxl_no_half_vae", "no_half_vae", "save_state_on_train_end", "sample_at_first",
    }
)  # fmt: skip
#: kohya defaults: a key at this value is not reported as unsupported.
_KOHYA_DEFAULTS: dict[str, Any] = {
    "color_aug": False, "flip_aug": False, "random_crop": False, "clip_skip": [1, "1", 0, None],
    "prior_loss_weight": 1.0, "full_fp16": False, "full_bf16": False, "fp8_base": False,
    "noise_offset_type": "Original", "adaptive_noise_scale": 0, "multires_noise_iterations": 0,
    "multires_noise_discount": [0, 0.3], "scale_v_pred_loss_like_noise_pred": False,
    "v_parameterization": False, "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0, "face_crop_aug_range": None, "vae": "",
    "stop_text_encoder_training": 0, "network_dropout": 0, "rank_dropout": 0,
    "module_dropout": 0, "scale_weight_norms": 0, "debiased_estimation_loss": False,
    "ip_noise_gamma": 0, "min_timestep": [0, None], "max_timestep": [1000, None],
    "loss_type": "l2", "huber_c": 0.1, "zero_terminal_snr": False, "weighted_captions": False,
    "masked_loss": False, "alpha_mask": False, "keep_tokens_separator": "",
    "secondary_separator": "", "caption_prefix": "", "caption_suffix": "",
    "no_token_padding": False, "mode_scale": 1.29, "model_prediction_type": "raw",
    "apply_t5_attn_mask": False,
    "max_token_length": [75, "75", None], "huber_schedule": "snr", "factor": -1, "unit": 1,
    "LyCORIS_preset": "full", "lr_scheduler_type": "",
}  # fmt: skip


@dataclass
class DatasetDir:
    """One image folder of an imported config (a ``dataset_config`` subset, or a kohya
    ``N_name`` folder of ``train_data_dir``)."""

    path: str
    repeats: int
    class_tokens: str = ""
    is_reg: bool = False


@dataclass
class KohyaImport:
    """What :func:`import_kohya_config` makes of a kohya config.

    Attributes:
        config: the LoRA Studio config.
        base_model: ``pretrained_model_name_or_path``, as written.
        dataset_dirs: the image folders and their repeats.
        unsupported: ``"key = value: why"`` for every setting that has no equivalent.
        notes: how a setting was translated where it is not one-to-one.
    """

    config: LoraConfig
    base_model: str | None
    dataset_dirs: list[DatasetDir]
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- reading -----------------------------------------------------------------------------------


def read_kohya_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """``(kind, values)`` of a kohya config file: ``gui`` (kohya_ss JSON), ``dataset``
    (a dataset_config TOML) or ``training`` (an sd-scripts TOML, tables flattened)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} cannot be read: {exc}.") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{p} is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} is not a kohya_ss GUI config (not a JSON object).")
        return "gui", data
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}.") from None
    if "datasets" in data and isinstance(data["datasets"], list):
        return "dataset", data
    if "lora" in data and isinstance(data["lora"], dict) and "config_version" in data["lora"]:
        raise ConfigError(f"{p} is already a LoRA Studio config.")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)  # sd-scripts ignores the section names
        else:
            flat[key] = value
    return "training", flat


def import_kohya_config(
    path: str | Path,
    *,
    dataset_config: str | Path | None = None,
    family: str | None = None,
) -> KohyaImport:
    """Translate a kohya_ss GUI JSON, an sd-scripts training TOML (with the
    ``dataset_config`` it names, or the one given) or a lone dataset_config TOML.

    Raises:
        ConfigError: the file cannot be read or its values make no valid config.
    """
    p = Path(path)
    kind, values = read_kohya_file(p)
    dataset: dict[str, Any] | None = None
    if kind == "dataset":
        dataset, values = values, {}
    else:
        ref = dataset_config or values.get("dataset_config")
        if ref:
            dataset_path = Path(ref)
            if not dataset_path.is_absolute() and not dataset_path.exists():
                dataset_path = p.parent / dataset_path
            dkind, dataset = read_kohya_file(dataset_path)
            if dkind != "dataset":
                raise ConfigError(f"{dataset_path} is not a dataset_config TOML ([[datasets]]).")
    return _translate(values, dataset, kind, family, base=p.parent)


def _translate(
    values: Mapping[str, Any],
    dataset: Mapping[str, Any] | None,
    kind: str,
    family: str | None,
    base: Path,
) -> KohyaImport:
    out: dict[str, Any] = {}
    unsupported: list[str] = []
    notes: list[str] = []
    v = dict(values)

    def unsupported_value(key: str, value: Any, why: str) -> None:
        unsupported.append(f"{key} = {_show(value)}: {why}")

    fam = _family(v, family, notes)
    out["family"] = fam.value
    out["preset"] = {"sd15": "sd15", "sdxl": "sdxl", "sd3": "sd35", "flux": "flux"}[fam.value]
    if v.get("output_name"):
        out["name"] = str(v["output_name"])
    # network
    module = str(v.get("network_module") or "networks.lora")
    lora_type = str(v.get("LoRA_type") or "Standard")
    net_args = _kv_list(v.get("network_args"))
    if v.get("network_dim") not in (None, ""):
        out["rank"] = int(float(v["network_dim"]))
    if v.get("network_alpha") not in (None, ""):
        out["alpha"] = float(v["network_alpha"])
    elif "network_dim" in v:
        out["alpha"] = 1.0  # sd-scripts' default alpha
        notes.append("network_alpha not set: sd-scripts' default alpha 1 is used.")
    conv_dim = net_args.pop("conv_dim", v.get("conv_dim") if "LoCon" in lora_type else None)
    conv_alpha = net_args.pop("conv_alpha", v.get("conv_alpha") if "LoCon" in lora_type else None)
    if conv_dim not in (None, "", 0, "0"):
        out["conv_rank"] = int(float(conv_dim))
        out["conv_alpha"] = float(conv_alpha) if conv_alpha not in (None, "") else 1.0
    dora = net_args.pop("dora_wd", v.get("dora_wd"))
    if str(dora).lower() in ("true", "1"):
        out["use_dora"] = True
    algo = net_args.pop("algo", None)
    if module.startswith("lycoris") and algo not in (None, "lora", "locon"):
        unsupported_value("network_args algo", algo, "only LoRA/LoCon layers are trained here")
    elif lora_type not in ("Standard", "Kohya LoCon", "LyCORIS/LoCon", "Flux1", "LoRA", "") and (
        "LoHa" in lora_type or "LoKr" in lora_type or "IA3" in lora_type or "GLoRA" in lora_type
        or "Diag-OFT" in lora_type or "BOFT" in lora_type or "DyLoRA" in lora_type
        or "LoRA-FA" in lora_type
    ):  # fmt: skip
        unsupported_value("LoRA_type", lora_type, "only LoRA/LoCon layers are trained here")
    for key, value in net_args.items():
        unsupported_value(f"network_args {key}", value, "no equivalent network option")
    if fam in (ModelFamily.SD15, ModelFamily.SDXL):
        # kohya's networks.lora adapts every linear layer of the transformer blocks and
        # CLIP's attention and MLP; LoRA Studio's default is the attention projections.
        targets = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"
        if fam is ModelFamily.SDXL:
            targets += ",proj_in,proj_out"  # linear in SDXL; 1x1 convolutions in SD 1.x
        out["target_modules"] = targets
        notes.append(
            "target_modules set to the linear layers kohya's networks.lora adapts in the UNet's "
            "transformer blocks (attention, feed-forward"
            + (", proj_in/out" if fam is ModelFamily.SDXL else "")
            + "); its text-encoder LoRA also covers CLIP's MLP, LoRA Studio's the attention."
        )
    if v.get("network_weights"):
        unsupported_value("network_weights", v["network_weights"], "starting from a LoRA file")
    # schedule
    epochs = v.get("max_train_epochs") or (v.get("epoch") if kind == "gui" else None)
    if epochs not in (None, "", 0, "0"):
        out["epochs"] = int(float(epochs))
        out["max_steps"] = None
    elif v.get("max_train_steps") not in (None, "", 0, "0"):
        out["max_steps"] = int(float(v["max_train_steps"]))
    elif kind == "training":
        out["max_steps"] = 1600
        notes.append("Neither max_train_epochs nor max_train_steps: sd-scripts' 1600 steps.")
    lr = v.get("unet_lr") if v.get("unet_lr") not in (None, "", 0, "0") else v.get("learning_rate")
    if lr not in (None, ""):
        out["learning_rate"] = float(lr)
    te_lr = v.get("text_encoder_lr")
    if te_lr not in (None, "", 0, "0") and not isinstance(te_lr, list):
        out["text_encoder_lr"] = float(te_lr)
    unet_only = v.get("network_train_unet_only")
    if unet_only is None and kind == "gui":
        unet_only = float(te_lr or 0) == 0 and float(v.get("unet_lr") or 0) != 0
    if unet_only is None:
        # sd-scripts trains the text encoders unless told; its Flux and SD 3 scripts too.
        unet_only = False
    out["train_text_encoder"] = not bool(unet_only)
    if v.get("network_train_text_encoder_only"):
        unsupported_value("network_train_text_encoder_only", True, "the denoiser is always trained")
    scheduler = str(v.get("lr_scheduler") or "").lower()
    if scheduler:
        if scheduler in _SCHEDULERS:
            out["lr_scheduler"] = scheduler
        else:
            unsupported_value("lr_scheduler", scheduler, "no such schedule here (constant used)")
    if v.get("lr_warmup_steps") not in (None, "", 0):
        warmup = float(v["lr_warmup_steps"])
        if warmup < 1:
            notes.append(
                f"lr_warmup_steps {warmup} is a ratio of the run in sd-scripts; set warmup steps "
                f"by hand (the run's total steps are not known here)."
            )
        else:
            out["lr_warmup_steps"] = int(warmup)
    if kind == "gui" and float(v.get("lr_warmup") or 0) > 0:
        notes.append(
            f"lr_warmup {v['lr_warmup']}% of the run: set warmup steps by hand (the run's total "
            f"steps are not known here)."
        )
    for src, dst, cast in (
        ("lr_scheduler_num_cycles", "lr_cycles", int),
        ("lr_scheduler_power", "lr_power", float),
        ("gradient_accumulation_steps", "gradient_accumulation_steps", int),
        ("max_grad_norm", "max_grad_norm", float),
        ("noise_offset", "noise_offset", float),
        ("min_snr_gamma", "min_snr_gamma", float),
        ("caption_dropout_rate", "caption_dropout", float),
        ("keep_tokens", "keep_tokens", int),
        ("seed", "seed", int),
        ("save_every_n_steps", "save_every_n_steps", int),
        ("save_every_n_epochs", "save_every_n_epochs", int),
        ("sample_every_n_steps", "sample_every_n_steps", int),
        ("guidance_scale", "guidance_scale", float),
        ("logit_mean", "logit_mean", float),
        ("logit_std", "logit_std", float),
    ):
        value = v.get(src)
        if value not in (None, ""):
            out[dst] = cast(float(value))
    batch = v.get("train_batch_size")
    if batch not in (None, ""):
        out["batch_size"] = int(float(batch))
    for src in ("save_last_n_steps", "save_last_n_epochs"):
        if v.get(src) not in (None, "", 0):
            out["keep_last_checkpoints"] = int(float(v[src]))
    precision = str(v.get("mixed_precision") or "").lower()
    if precision:
        if precision in ("no", "fp16", "bf16"):
            out["mixed_precision"] = precision
        else:
            unsupported_value("mixed_precision", precision, "use no, fp16 or bf16")
    for src, dst in (
        ("gradient_checkpointing", "gradient_checkpointing"),
        ("shuffle_caption", "shuffle_tags"),
        ("cache_latents_to_disk", "cache_to_disk"),
        ("enable_bucket", "enable_bucket"),
        ("bucket_no_upscale", "bucket_no_upscale"),
        ("torch_compile", "torch_compile"),
    ):
        if src in v and v[src] is not None and v[src] != "":
            out[dst] = _bool(v[src])
    for src, dst in (
        ("min_bucket_reso", "min_bucket_side"),
        ("max_bucket_reso", "max_bucket_side"),
    ):
        if v.get(src) not in (None, ""):
            out[dst] = int(float(v[src]))
    if v.get("bucket_reso_steps") not in (None, "", 64, "64"):
        unsupported_value("bucket_reso_steps", v["bucket_reso_steps"], "buckets step by 64 here")
    resolution = v.get("resolution", v.get("max_resolution"))
    if resolution not in (None, ""):
        out["resolution"] = _resolution(resolution, notes)
    optimizer = str(v.get("optimizer_type") or v.get("optimizer") or "")
    if optimizer:
        found = _OPTIMIZERS.get(optimizer.lower().split(".")[-1])
        if found is None:
            unsupported_value(
                "optimizer_type", optimizer, "AdamW is used (also: AdamW8bit, Prodigy, Adafactor)"
            )
        else:
            out["optimizer"] = found.value
    opt_args = _kv_list(v.get("optimizer_args"))
    if "weight_decay" in opt_args:
        out["weight_decay"] = float(opt_args.pop("weight_decay"))
    for key, value in opt_args.items():
        unsupported_value(f"optimizer_args {key}", value, "no equivalent optimizer option")
    sampling = str(v.get("timestep_sampling") or v.get("weighting_scheme") or "").lower()
    if sampling:
        mapped = {
            "logit_normal": TimestepSampling.LOGIT_NORMAL,
            "sigmoid": TimestepSampling.LOGIT_NORMAL,
            "uniform": TimestepSampling.UNIFORM,
            "none": TimestepSampling.UNIFORM,
            "mode": TimestepSampling.MODE,
        }.get(sampling)
        if mapped is None:
            unsupported_value("timestep_sampling", sampling, "logit_normal, uniform or mode here")
        else:
            out["timestep_sampling"] = mapped.value
    prompts = v.get("sample_prompts")
    if prompts:
        out["sample_prompts"] = _sample_prompts(str(prompts), base, notes)
    if str(v.get("log_with") or "").lower() in ("tensorboard", "all") or v.get("logging_dir"):
        out["tensorboard"] = True
    if v.get("reg_data_dir"):
        unsupported_value("reg_data_dir", v["reg_data_dir"], "no regularization images here")
    for key in ("clip_l", "clip_g", "t5xxl", "ae", "vae"):
        if v.get(key):
            notes.append(
                f"{key} = {v[key]}: LoRA Studio loads every part from the base model; point "
                f"--base-model at a diffusers folder (or a checkpoint) that holds them."
            )
    for key, value in sorted(v.items()):
        if key in _IGNORED or key in ("vae",):
            continue
        default = _KOHYA_DEFAULTS.get(key, _MISSING)
        if default is not _MISSING and _is_default(value, default):
            continue
        if default is _MISSING and value in (None, "", False, 0, [], {}):
            continue
        unsupported_value(key, value, "no equivalent in LoRA Studio")

    dirs: list[DatasetDir] = []
    if dataset is not None:
        dirs = _dataset_dirs(dataset, out, unsupported, notes)
    elif v.get("train_data_dir"):
        dirs = _train_data_dir(str(v["train_data_dir"]), base)
    if len({d.repeats for d in dirs if not d.is_reg}) == 1 and dirs:
        repeats = dirs[0].repeats
        if not re.match(r"^\d+_", Path(dirs[0].path).name):
            out["repeats"] = repeats
    if dirs and any(d.class_tokens for d in dirs):
        tokens = next(d.class_tokens for d in dirs if d.class_tokens)
        out["trigger_word"] = tokens
        notes.append(
            f"class_tokens {tokens!r} became the trigger word: kohya uses it as the caption "
            f"of images without one, LoRA Studio puts it in front of every caption lacking it."
        )
    try:
        config = coerce_config({**LoraConfig.from_preset(out["preset"]).to_dict(), **out})
    except ConfigError as exc:
        raise ConfigError(f"The kohya settings make no valid config: {exc}") from None
    base_model = v.get("pretrained_model_name_or_path") or None
    return KohyaImport(config, str(base_model) if base_model else None, dirs, unsupported, notes)


_MISSING = object()


def _is_default(value: Any, default: Any) -> bool:
    options = default if isinstance(default, list) else [default]
    for option in options:
        if value == option:
            return True
        try:
            if option is not None and float(value) == float(option):
                return True
        except (TypeError, ValueError):
            continue
    return False


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _kv_list(value: Any) -> dict[str, str]:
    """``["conv_dim=4", "conv_alpha=1"]`` (or one space-separated string) as a dict."""
    if not value:
        return {}
    items = value if isinstance(value, list) else str(value).split()
    out = {}
    for item in items:
        key, sep, val = str(item).partition("=")
        if sep:
            out[key.strip()] = val.strip()
    return out


def _resolution(value: Any, notes: list[str]) -> int:
    if isinstance(value, (list, tuple)):
        sides = [int(x) for x in value]
    else:
        sides = [int(float(x)) for x in str(value).replace("x", ",").split(",") if x.strip()]
    if not sides:
        raise ConfigError(f"resolution {value!r} is not a size.")
    if len(sides) == 2 and sides[0] != sides[1]:
        square = int(round(math.sqrt(sides[0] * sides[1]) / 64) * 64)
        notes.append(
            f"resolution {sides[0]}x{sides[1]}: LoRA Studio trains at a square base "
            f"resolution ({square}) with aspect-ratio buckets."
        )
        return square
    return sides[0]


def _sample_prompts(value: str, base: Path, notes: list[str]) -> str:
    """sd-scripts names a prompts file; the GUI holds the prompts. Per-prompt options
    (`` --n negative --w 512 ...``) are dropped."""
    text = value
    candidate = Path(value)
    if "\n" not in value and len(value) < 300:
        for path in (candidate, base / candidate):
            if path.suffix in (".txt", ".toml", ".json") and path.is_file():
                text = path.read_text(encoding="utf-8")
                break
        else:
            if candidate.suffix in (".txt", ".toml", ".json"):
                notes.append(f"sample_prompts file {value} not found; no sample prompts.")
                return ""
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompt, sep, _ = line.partition(" --")
        if sep:
            notes.append("Per-prompt sample options (--n, --w, --s...) are not carried.")
        prompts.append(prompt.strip())
    return "\n".join(prompts)


def _family(values: Mapping[str, Any], given: str | None, notes: list[str]) -> ModelFamily:
    if given:
        return ModelFamily(given)
    module = str(values.get("network_module") or "")
    if module.endswith("lora_flux") or values.get("flux1_checkbox") or values.get("ae"):
        return ModelFamily.FLUX
    if module.endswith("lora_sd3") or values.get("sd3_checkbox") or values.get("clip_g"):
        return ModelFamily.SD3
    if values.get("sdxl") or _bool(values.get("sdxl", False)):
        return ModelFamily.SDXL
    model = str(values.get("pretrained_model_name_or_path") or "").lower()
    for marker, fam in (("flux", ModelFamily.FLUX), ("sd3", ModelFamily.SD3),
                        ("stable-diffusion-3", ModelFamily.SD3), ("xl", ModelFamily.SDXL)):  # fmt: skip
        if marker in model:
            notes.append(f"Family {fam.label} guessed from the base model's name.")
            return fam
    if values.get("v2"):
        notes.append("An SD 2.x base model: trained with the SD 1.5 family's code.")
    else:
        notes.append(
            "The config does not say which model family (sd-scripts picks it by script); "
            "SD 1.5 assumed - pass --family to choose."
        )
    return ModelFamily.SD15


_DATASET_OPTIONS = {
    "resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_reso_steps", "bucket_no_upscale", "shuffle_caption", "keep_tokens",
    "caption_dropout_rate", "caption_extension", "color_aug", "flip_aug", "random_crop",
    "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "face_crop_aug_range",
    "keep_tokens_separator", "secondary_separator", "caption_prefix", "caption_suffix",
    "alpha_mask", "cache_info", "token_warmup_min", "token_warmup_step",
}  # fmt: skip


def _dataset_dirs(
    dataset: Mapping[str, Any],
    out: dict[str, Any],
    unsupported: list[str],
    notes: list[str],
) -> list[DatasetDir]:
    """The subsets of a dataset_config, with general/dataset options applied to ``out``."""
    general = dict(dataset.get("general") or {})
    datasets = list(dataset.get("datasets") or [])
    if len(datasets) > 1:
        notes.append(
            f"{len(datasets)} [[datasets]]: their options are taken from the first; LoRA "
            f"Studio trains one dataset (the folders of all are listed)."
        )
    dirs: list[DatasetDir] = []
    for index, entry in enumerate(datasets):
        merged = {**general, **{k: v for k, v in entry.items() if k != "subsets"}}
        if index == 0:
            extra = _translate_dataset_options(merged, unsupported, notes)
            out.update(extra)
        for subset in entry.get("subsets") or []:
            options = {**merged, **subset}
            if "image_dir" not in subset:
                if "metadata_file" in subset:
                    unsupported.append(
                        f"metadata_file = {subset['metadata_file']!r}: fine-tuning style "
                        f"metadata; use the image folder with its captions"
                    )
                continue
            dirs.append(
                DatasetDir(
                    str(subset["image_dir"]),
                    int(options.get("num_repeats", 1)),
                    str(options.get("class_tokens") or ""),
                    bool(options.get("is_reg", False)),
                )
            )
            for key in ("keep_tokens", "shuffle_caption", "caption_dropout_rate"):
                if key in subset and key in merged and subset[key] != merged[key]:
                    notes.append(f"{key} differs per subset; the dataset's value is used.")
            for key, value in subset.items():
                if key in _SUBSET_ONLY or key in merged and merged[key] == value:
                    continue
                default = _KOHYA_DEFAULTS.get(key, _MISSING)
                if default is not _MISSING and _is_default(value, default):
                    continue
                if key not in ("keep_tokens", "shuffle_caption", "caption_dropout_rate"):
                    unsupported.append(
                        f"{key} = {_show(value)} (subset {subset['image_dir']}): no equivalent "
                        f"in LoRA Studio"
                    )
    if any(d.is_reg for d in dirs):
        regs = [d.path for d in dirs if d.is_reg]
        unsupported.append(f"is_reg subsets {regs}: no regularization images here")
    return [d for d in dirs if not d.is_reg] + [d for d in dirs if d.is_reg]


_SUBSET_ONLY = frozenset(
    {"image_dir", "num_repeats", "class_tokens", "is_reg", "caption_extension", "metadata_file"}
)


def _translate_dataset_options(
    options: Mapping[str, Any], unsupported: list[str], notes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.get("resolution") not in (None, ""):
        out["resolution"] = _resolution(options["resolution"], notes)
    if options.get("batch_size") not in (None, ""):
        out["batch_size"] = int(options["batch_size"])
    for src, dst in (
        ("enable_bucket", "enable_bucket"),
        ("bucket_no_upscale", "bucket_no_upscale"),
        ("shuffle_caption", "shuffle_tags"),
    ):
        if src in options:
            out[dst] = _bool(options[src])
    for src, dst, cast in (
        ("min_bucket_reso", "min_bucket_side", int),
        ("max_bucket_reso", "max_bucket_side", int),
        ("keep_tokens", "keep_tokens", int),
        ("caption_dropout_rate", "caption_dropout", float),
    ):
        if options.get(src) not in (None, ""):
            out[dst] = cast(options[src])
    if options.get("bucket_reso_steps") not in (None, 64):
        unsupported.append(
            f"bucket_reso_steps = {options['bucket_reso_steps']}: buckets step by 64 here"
        )
    for key in sorted(set(options) - _DATASET_OPTIONS):
        if key in ("num_repeats", "class_tokens", "is_reg", "image_dir", "metadata_file"):
            continue
        unsupported.append(f"{key} = {_show(options[key])}: no equivalent in LoRA Studio")
    for key in ("color_aug", "flip_aug", "random_crop", "caption_tag_dropout_rate",
                "caption_dropout_every_n_epochs", "face_crop_aug_range", "caption_prefix",
                "caption_suffix", "keep_tokens_separator", "secondary_separator", "alpha_mask"):  # fmt: skip
        value = options.get(key)
        default = _KOHYA_DEFAULTS.get(key)
        if value is not None and not _is_default(value, default):
            unsupported.append(f"{key} = {_show(value)}: no equivalent in LoRA Studio")
    return out


def _train_data_dir(folder: str, base: Path) -> list[DatasetDir]:
    """kohya's ``train_data_dir``: its ``N_name`` sub-folders, N repeats each."""
    root = Path(folder)
    if not root.is_absolute() and not root.exists():
        root = base / root
    dirs = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            match = re.match(r"^(\d+)_(.+)$", child.name)
            if child.is_dir() and match:
                dirs.append(DatasetDir(str(child), int(match.group(1)), match.group(2)))
    return dirs or [DatasetDir(folder, 1)]


# ---- writing -----------------------------------------------------------------------------------


@dataclass
class KohyaExport:
    """What :func:`export_kohya_config` wrote."""

    training_toml: Path
    dataset_toml: Path
    command: str
    notes: list[str]


def kohya_training_args(
    config: LoraConfig, *, base_model: str = "", dataset_toml: str = "", output_dir: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """sd-scripts training arguments for ``config`` and notes on what does not carry."""
    notes: list[str] = []
    args: dict[str, Any] = {
        "pretrained_model_name_or_path": base_model or "<path to the base model>",
        "output_dir": output_dir or "output",
        "output_name": config.name,
        "save_model_as": "safetensors",
        "network_module": NETWORK_MODULES[config.family],
        "network_dim": config.rank,
        "network_alpha": config.alpha,
        "learning_rate": config.learning_rate,
        "unet_lr": config.learning_rate,
        "lr_scheduler": config.lr_scheduler.value,
        "lr_warmup_steps": config.lr_warmup_steps,
        "train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "mixed_precision": config.mixed_precision.value,
        "seed": config.seed,
        "optimizer_type": _OPTIMIZER_NAMES[config.optimizer],
        "optimizer_args": [f"weight_decay={config.weight_decay}"],
        "max_grad_norm": config.max_grad_norm,
        "cache_latents": True,
        "cache_latents_to_disk": config.cache_to_disk,
        "gradient_checkpointing": config.gradient_checkpointing,
        "sdpa": True,
    }
    if dataset_toml:
        args["dataset_config"] = dataset_toml
    if config.max_steps:
        args["max_train_steps"] = config.max_steps
    else:
        args["max_train_epochs"] = config.epochs
    if config.train_text_encoder:
        args["text_encoder_lr"] = config.effective_text_encoder_lr
    else:
        args["network_train_unet_only"] = True
    if config.lr_scheduler is LrScheduler.COSINE_WITH_RESTARTS:
        args["lr_scheduler_num_cycles"] = config.lr_cycles
    if config.lr_scheduler is LrScheduler.POLYNOMIAL:
        args["lr_scheduler_power"] = config.lr_power
    network_args = []
    if config.conv_rank:
        network_args += [f"conv_dim={config.conv_rank}", f"conv_alpha={config.conv_alpha}"]
    if config.use_dora:
        args["network_module"] = "lycoris.kohya"
        network_args += ["algo=lora", "dora_wd=True"]
        notes.append("DoRA: sd-scripts' networks.lora has none; LyCORIS (lycoris.kohya) is used.")
    if network_args:
        args["network_args"] = network_args
    if config.noise_offset:
        args["noise_offset"] = config.noise_offset
    if config.min_snr_gamma:
        args["min_snr_gamma"] = config.min_snr_gamma
    if config.family in (ModelFamily.FLUX,):
        args["guidance_scale"] = config.guidance_scale
        args["timestep_sampling"] = {
            TimestepSampling.LOGIT_NORMAL: "sigmoid",
            TimestepSampling.UNIFORM: "uniform",
            TimestepSampling.MODE: "sigmoid",
        }[config.timestep_sampling]
        args["model_prediction_type"] = "raw"
        notes.append(
            "Flux: set clip_l, t5xxl and ae to the model's files (sd-scripts loads them "
            "separately)."
        )
    if config.family is ModelFamily.SD3:
        args["weighting_scheme"] = config.timestep_sampling.value
        args["logit_mean"] = config.logit_mean
        args["logit_std"] = config.logit_std
        notes.append("SD 3: set clip_l, clip_g and t5xxl to the model's files.")
    if config.save_every_n_steps:
        args["save_every_n_steps"] = config.save_every_n_steps
    if config.save_every_n_epochs:
        args["save_every_n_epochs"] = config.save_every_n_epochs
    if config.keep_last_checkpoints:
        key = "save_last_n_steps" if config.save_every_n_steps else "save_last_n_epochs"
        args[key] = config.keep_last_checkpoints
    if config.sample_prompt_list and config.sample_every_n_steps:
        args["sample_every_n_steps"] = config.sample_every_n_steps
        args["sample_prompts"] = f"{config.name}_prompts.txt"
    if config.tensorboard:
        args["log_with"] = "tensorboard"
        args["logging_dir"] = "logs"
    if config.torch_compile:
        args["torch_compile"] = True
    if config.target_modules:
        notes.append(
            f"target_modules {config.target_modules!r}: sd-scripts' networks.lora picks its "
            f"layers itself (all linear layers of the transformer blocks)."
        )
    else:
        notes.append(
            "LoRA Studio's default adapts the attention projections; sd-scripts' networks.lora "
            "adapts all linear layers of the transformer blocks, so the run there is larger."
        )
    return args, notes


def kohya_dataset_config(
    config: LoraConfig, dataset_dir: str | Path | None
) -> tuple[dict[str, Any], list[str]]:
    """A dataset_config for ``config`` over ``dataset_dir`` (its ``N_name`` folders become
    subsets with N repeats)."""
    notes: list[str] = []
    subsets: list[dict[str, Any]] = []
    root = Path(dataset_dir) if dataset_dir else None
    if root is not None and root.is_dir():
        for child in sorted(root.iterdir()):
            match = re.match(r"^(\d+)_(.+)$", child.name)
            if child.is_dir() and match:
                subsets.append(
                    {"image_dir": str(child.resolve()), "num_repeats": int(match.group(1))}
                )
    if not subsets:
        image_dir = str(root.resolve()) if root is not None else "<path to the images>"
        subsets.append({"image_dir": image_dir, "num_repeats": config.repeats})
    if config.trigger_word:
        for subset in subsets:
            subset["class_tokens"] = config.trigger_word
        notes.append(
            f"trigger word {config.trigger_word!r}: written as class_tokens (kohya's caption "
            f"for images without one); captions lacking it get it only in LoRA Studio."
        )
    dataset: dict[str, Any] = {
        "resolution": config.resolution,
        "batch_size": config.batch_size,
        "enable_bucket": config.enable_bucket,
        "min_bucket_reso": config.min_bucket_side,
        "max_bucket_reso": config.max_bucket_side,
        "bucket_reso_steps": 64,
        "bucket_no_upscale": config.bucket_no_upscale,
        "subsets": subsets,
    }
    general = {
        "caption_extension": ".txt",
        "shuffle_caption": config.shuffle_tags,
        "keep_tokens": config.keep_tokens,
        "caption_dropout_rate": config.caption_dropout,
    }
    return {"general": general, "datasets": [dataset]}, notes


def export_kohya_config(
    config: LoraConfig,
    out_dir: str | Path,
    *,
    base_model: str = "",
    dataset_dir: str | Path | None = None,
    overwrite: bool = False,
) -> KohyaExport:
    """Write ``<name>_training.toml`` and ``<name>_dataset.toml`` (and the sample prompts)
    for sd-scripts into ``out_dir``.

    Raises:
        ConfigError: a file exists (without ``overwrite``).
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    training = folder / f"{config.name}_training.toml"
    dataset = folder / f"{config.name}_dataset.toml"
    prompts = folder / f"{config.name}_prompts.txt"
    for path in (training, dataset):
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; pass --overwrite to replace it.")
    args, notes = kohya_training_args(
        config, base_model=base_model, dataset_toml=str(dataset.resolve())
    )
    if "sample_prompts" in args:
        atomic_write_text(prompts, "\n".join(config.sample_prompt_list) + "\n")
        args["sample_prompts"] = str(prompts.resolve())
    data, dataset_notes = kohya_dataset_config(config, dataset_dir)
    header = (
        f"# sd-scripts settings exported by LoRA Studio from its config '{config.name}'\n"
        f"# accelerate launch {TRAIN_SCRIPTS[config.family]} --config_file {training.name}\n"
    )
    atomic_write_text(training, header + tomli_w.dumps(args))
    atomic_write_text(dataset, tomli_w.dumps(data))
    command = f"accelerate launch {TRAIN_SCRIPTS[config.family]} --config_file {training.resolve()}"
    return KohyaExport(training, dataset, command, notes + dataset_notes)
