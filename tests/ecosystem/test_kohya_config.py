"""kohya configs in and out: kohya_ss GUI JSON, sd-scripts training TOML + dataset_config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from lora_studio.cli import main
from lora_studio.core.config import LoraConfig, LrScheduler, ModelFamily, Optimizer
from lora_studio.core.errors import ConfigError
from lora_studio.ecosystem.kohya_config import export_kohya_config, import_kohya_config

# What kohya_ss GUI (v24/v25) saves for an SDXL LoRA: every field of the form, most at
# their defaults, numbers sometimes as strings.
GUI_SDXL = {
    "LoRA_type": "Standard",
    "LyCORIS_preset": "full",
    "adaptive_noise_scale": 0,
    "additional_parameters": "",
    "block_alphas": "",
    "block_dims": "",
    "bucket_no_upscale": True,
    "bucket_reso_steps": 64,
    "cache_latents": True,
    "cache_latents_to_disk": True,
    "caption_dropout_every_n_epochs": 0.0,
    "caption_dropout_rate": 0.05,
    "caption_extension": ".txt",
    "clip_skip": "1",
    "color_aug": False,
    "conv_alpha": 1,
    "conv_dim": 1,
    "debiased_estimation_loss": False,
    "enable_bucket": True,
    "epoch": 10,
    "factor": -1,
    "flip_aug": True,
    "fp8_base": False,
    "full_bf16": False,
    "full_fp16": False,
    "gradient_accumulation_steps": 2,
    "gradient_checkpointing": True,
    "keep_tokens": "1",
    "learning_rate": 0.0004,
    "logging_dir": "",
    "lora_network_weights": "",
    "lr_scheduler": "cosine",
    "lr_scheduler_args": "",
    "lr_scheduler_num_cycles": "",
    "lr_scheduler_power": "",
    "lr_warmup": 0,
    "max_bucket_reso": 2048,
    "max_data_loader_n_workers": "0",
    "max_resolution": "1024,1024",
    "max_timestep": 1000,
    "max_token_length": "75",
    "max_train_epochs": "",
    "max_train_steps": "",
    "mem_eff_attn": False,
    "min_bucket_reso": 256,
    "min_snr_gamma": 5,
    "min_timestep": 0,
    "mixed_precision": "bf16",
    "model_list": "custom",
    "module_dropout": 0,
    "multires_noise_discount": 0.3,
    "multires_noise_iterations": 0,
    "network_alpha": 16,
    "network_dim": 32,
    "network_dropout": 0,
    "noise_offset": 0.0357,
    "noise_offset_type": "Original",
    "num_cpu_threads_per_process": 2,
    "optimizer": "AdamW8bit",
    "optimizer_args": "weight_decay=0.05 betas=0.9,0.99",
    "output_dir": "/home/me/loras/out",
    "output_name": "papercut_xl",
    "persistent_data_loader_workers": False,
    "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
    "prior_loss_weight": 1.0,
    "random_crop": False,
    "rank_dropout": 0,
    "reg_data_dir": "",
    "resume": "",
    "sample_every_n_epochs": 0,
    "sample_every_n_steps": 250,
    "sample_prompts": "papercut style, a lighthouse --n blurry --w 1024 --h 1024\n"
    "papercut style, hills at dawn",
    "sample_sampler": "euler_a",
    "save_every_n_epochs": 1,
    "save_every_n_steps": 0,
    "save_last_n_steps": 0,
    "save_model_as": "safetensors",
    "save_precision": "bf16",
    "save_state": False,
    "scale_v_pred_loss_like_noise_pred": False,
    "scale_weight_norms": 0,
    "sdxl": True,
    "sdxl_cache_text_encoder_outputs": False,
    "sdxl_no_half_vae": True,
    "seed": "1234",
    "shuffle_caption": True,
    "stop_text_encoder_training": 0,
    "text_encoder_lr": 0.0,
    "train_batch_size": 2,
    "train_data_dir": "",
    "training_comment": "trigger: papercut style",
    "unet_lr": 0.0004,
    "unit": 1,
    "up_lr_weight": "",
    "use_cp": False,
    "use_wandb": False,
    "v2": False,
    "v_parameterization": False,
    "vae": "",
    "vae_batch_size": 0,
    "wandb_api_key": "",
    "weighted_captions": False,
    "xformers": "xformers",
}

# An sd-scripts Flux run: `flux_train_network.py --config_file flux.toml`, sections as
# people group them (sd-scripts ignores the section names).
TRAINING_FLUX = """
[model]
pretrained_model_name_or_path = "/models/flux1-dev.safetensors"
clip_l = "/models/clip_l.safetensors"
t5xxl = "/models/t5xxl_fp16.safetensors"
ae = "/models/ae.safetensors"

[network]
network_module = "networks.lora_flux"
network_dim = 16
network_alpha = 8
network_train_unet_only = true
network_args = ["train_blocks=single"]

[training]
output_dir = "output"
output_name = "papercut_flux"
dataset_config = "dataset.toml"
max_train_steps = 1200
learning_rate = 1e-4
optimizer_type = "adamw8bit"
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 100
mixed_precision = "bf16"
gradient_checkpointing = true
guidance_scale = 1.0
timestep_sampling = "sigmoid"
model_prediction_type = "raw"
discrete_flow_shift = 3.1582
seed = 7
save_every_n_steps = 200
save_last_n_steps = 600
fp8_base = true
cache_text_encoder_outputs = true
sample_prompts = "prompts.txt"
sample_every_n_steps = 200
"""

DATASET = """
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = [1024, 768]
batch_size = 2
enable_bucket = true
min_bucket_reso = 320
max_bucket_reso = 1536
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "/data/papercut"
  class_tokens = "papercut style"
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = "/data/landscapes"
  num_repeats = 10
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "/data/reg"
  is_reg = true
  num_repeats = 1
"""


def test_import_a_kohya_ss_gui_json(tmp_path: Path) -> None:
    path = tmp_path / "papercut_xl.json"
    path.write_text(json.dumps(GUI_SDXL, indent=2), encoding="utf-8")
    result = import_kohya_config(path)
    cfg = result.config
    assert cfg.family is ModelFamily.SDXL and cfg.preset == "sdxl"
    assert (cfg.name, cfg.rank, cfg.alpha) == ("papercut_xl", 32, 16.0)
    assert (cfg.epochs, cfg.max_steps, cfg.resolution) == (10, None, 1024)
    assert cfg.learning_rate == 4e-4 and cfg.lr_scheduler is LrScheduler.COSINE
    assert cfg.optimizer is Optimizer.ADAMW_8BIT and cfg.weight_decay == 0.05
    assert cfg.train_text_encoder is False  # text_encoder_lr 0 with a UNet lr: UNet only
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.seed) == (2, 2, 1234)
    assert cfg.min_snr_gamma == 5 and cfg.noise_offset == pytest.approx(0.0357)
    assert cfg.shuffle_tags and cfg.keep_tokens == 1 and cfg.caption_dropout == 0.05
    assert cfg.bucket_no_upscale and cfg.gradient_checkpointing and cfg.cache_to_disk
    assert cfg.sample_prompt_list == [
        "papercut style, a lighthouse",
        "papercut style, hills at dawn",
    ]
    assert cfg.sample_every_n_steps == 250 and cfg.save_every_n_epochs == 1
    assert result.base_model == "stabilityai/stable-diffusion-xl-base-1.0"
    unsupported = "\n".join(result.unsupported)
    assert "flip_aug = true" in unsupported
    assert "optimizer_args betas" in unsupported
    # defaults are not reported
    assert "clip_skip" not in unsupported and "max_token_length" not in unsupported
    assert "prior_loss_weight" not in unsupported and "xformers" not in unsupported


def test_import_an_sd_scripts_training_toml_with_its_dataset_config(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_text(DATASET, encoding="utf-8")
    (tmp_path / "prompts.txt").write_text(
        "# samples\npapercut style, a fox --w 1024 --h 1024 --s 20\n", encoding="utf-8"
    )
    path = tmp_path / "flux.toml"
    path.write_text(TRAINING_FLUX, encoding="utf-8")
    result = import_kohya_config(path)
    cfg = result.config
    assert cfg.family is ModelFamily.FLUX
    assert (cfg.rank, cfg.alpha, cfg.max_steps) == (16, 8.0, 1200)
    assert cfg.lr_scheduler is LrScheduler.CONSTANT_WITH_WARMUP and cfg.lr_warmup_steps == 100
    assert not cfg.train_text_encoder
    assert cfg.seed == 7 and cfg.save_every_n_steps == 200 and cfg.keep_last_checkpoints == 600
    assert cfg.sample_prompt_list == ["papercut style, a fox"]
    assert cfg.timestep_sampling.value == "logit_normal"
    # from the dataset_config
    assert cfg.batch_size == 2 and cfg.shuffle_tags and cfg.keep_tokens == 1
    assert (cfg.min_bucket_side, cfg.max_bucket_side) == (320, 1536)
    assert cfg.resolution == 896  # the square of the same area as 1024x768, in 64s
    assert cfg.repeats == 10 and cfg.trigger_word == "papercut style"
    assert [(d.path, d.repeats, d.is_reg) for d in result.dataset_dirs] == [
        ("/data/papercut", 10, False),
        ("/data/landscapes", 10, False),
        ("/data/reg", 1, True),
    ]
    unsupported = "\n".join(result.unsupported)
    for expected in ("network_args train_blocks", "fp8_base", "is_reg", "flip_aug",
                     "discrete_flow_shift"):  # fmt: skip
        assert expected in unsupported, expected
    assert "model_prediction_type" not in unsupported  # at its default
    assert any("clip_l" in note for note in result.notes)


def test_a_lone_dataset_config_imports_too(tmp_path: Path) -> None:
    path = tmp_path / "dataset.toml"
    path.write_text(DATASET, encoding="utf-8")
    result = import_kohya_config(path, family="sdxl")
    assert result.config.family is ModelFamily.SDXL
    assert len(result.dataset_dirs) == 3


def test_train_data_dir_repeat_folders(tmp_path: Path) -> None:
    data = tmp_path / "img"
    (data / "20_zxq dog").mkdir(parents=True)
    (data / "5_dog").mkdir()
    gui = {**GUI_SDXL, "train_data_dir": str(data), "flip_aug": False}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(gui), encoding="utf-8")
    result = import_kohya_config(path)
    assert [(Path(d.path).name, d.repeats) for d in result.dataset_dirs] == [
        ("20_zxq dog", 20),
        ("5_dog", 5),
    ]


def test_lycoris_types_are_reported(tmp_path: Path) -> None:
    gui = {**GUI_SDXL, "LoRA_type": "LyCORIS/LoKr"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(gui), encoding="utf-8")
    assert any("LoRA_type" in line for line in import_kohya_config(path).unsupported)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("network_dim = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        import_kohya_config(bad)
    ours = tmp_path / "ours.toml"
    LoraConfig().save(ours)
    with pytest.raises(ConfigError, match="already a LoRA Studio config"):
        import_kohya_config(ours)


def test_export_round_trips_through_import(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "10_papercut").mkdir(parents=True)
    config = LoraConfig.sdxl_preset().replace(
        name="pc",
        trigger_word="papercut style",
        rank=24,
        alpha=12,
        max_steps=900,
        lr_scheduler="cosine",
        conv_rank=8,
        conv_alpha=4,
        train_text_encoder=True,
        text_encoder_lr=5e-5,
        sample_prompts="[trigger], a boat",
        sample_every_n_steps=100,
    )
    result = export_kohya_config(config, tmp_path / "kohya", base_model="/m/sdxl", dataset_dir=data)
    training = tomllib.loads(result.training_toml.read_text(encoding="utf-8"))
    dataset = tomllib.loads(result.dataset_toml.read_text(encoding="utf-8"))
    assert training["network_module"] == "networks.lora"
    assert training["network_args"] == ["conv_dim=8", "conv_alpha=4.0"]
    assert training["max_train_steps"] == 900 and training["text_encoder_lr"] == 5e-5
    assert dataset["datasets"][0]["subsets"][0]["num_repeats"] == 10
    assert "sdxl_train_network.py" in result.command
    back = import_kohya_config(result.training_toml, family="sdxl").config
    for name in ("rank", "alpha", "max_steps", "lr_scheduler", "conv_rank", "conv_alpha",
                 "resolution", "learning_rate", "text_encoder_lr", "seed", "batch_size",
                 "train_text_encoder", "sample_every_n_steps", "trigger_word"):  # fmt: skip
        assert getattr(back, name) == getattr(config, name), name
    assert back.sample_prompt_list == config.sample_prompt_list
    with pytest.raises(ConfigError, match="--overwrite"):
        export_kohya_config(config, tmp_path / "kohya")


def test_cli_import_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "papercut_xl.json"
    path.write_text(json.dumps(GUI_SDXL), encoding="utf-8")
    ours = tmp_path / "ours.toml"
    assert main(["config", "import", str(path), "-o", str(ours)]) == 0
    out = capsys.readouterr().out
    assert "No equivalent in LoRA Studio" in out and "flip_aug" in out
    assert LoraConfig.load(ours).rank == 32
    assert main(["config", "import", str(path), "-o", str(ours)]) == 1  # no overwrite
    capsys.readouterr()
    assert main(["config", "export-kohya", str(ours), str(tmp_path / "k")]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0].endswith("papercut_xl_training.toml")
    assert tomllib.loads(Path(lines[1]).read_text(encoding="utf-8"))["datasets"]
