"""The real trainer on the tiny built-in model: a few steps on the CPU, then the result is
loaded back with diffusers' ``load_lora_weights`` (as diffusers' own example tests do)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import ModelError, OutputError, TrainingError
from lora_studio.core.jobs import JobStatus, Progress
from lora_studio.core.request import TrainingRequest
from lora_studio.training.export import model_hashes
from lora_studio.training.trainer import Trainer, TrainerCommands

REQUIRED_METADATA = (
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_base_model_version",
    "ss_output_name",
    "ss_num_train_images",
    "ss_max_train_steps",
    "ss_learning_rate",
    "ss_resolution",
    "ss_tag_frequency",
    "sshs_model_hash",
    "sshs_legacy_hash",
)
SD15_ATTENTION_MODULES = ("to_q", "to_k", "to_v", "to_out_0")

# (case name, config overrides, what the file must contain)
TEST_CASES = [
    ("unet-only", {"rank": 4, "alpha": 2.0}, {"te": False}),
    ("text-encoder", {"rank": 4, "alpha": 4.0, "train_text_encoder": True}, {"te": True}),
    (
        "batch-and-accumulation",
        {
            "rank": 2,
            "alpha": 2.0,
            "batch_size": 2,
            "gradient_accumulation_steps": 2,
            "lr_scheduler": "cosine",
            "lr_warmup_steps": 1,
        },
        {"te": False},
    ),
]


class Recorder:
    def __init__(self, commands: TrainerCommands | None = None, stop_at_step: int | None = None):
        self.progress: list[Progress] = []
        self.lines: list[str] = []
        self.commands = commands
        self.stop_at_step = stop_at_step

    def on_progress(self, progress: Progress) -> None:
        self.progress.append(progress)
        if self.commands and self.stop_at_step and progress.step >= self.stop_at_step:
            self.commands.stop()

    def on_log(self, line: str) -> None:
        self.lines.append(line)


def _request(
    dataset_dir: Path, out: Path, base: str = "builtin:tiny-sd15", **changes
) -> TrainingRequest:
    settings = {
        "name": "test_lora",
        "resolution": 64,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "trigger_word": "papercut style",
        **changes,
    }
    config = LoraConfig.fast_preset().replace(**settings)
    return TrainingRequest(Dataset.from_directory(dataset_dir), config, base, out)


def _pipeline(model: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe) -> torch.Tensor:
    out = pipe(
        "papercut style, hills",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    return out.images


@pytest.mark.slow
@pytest.mark.parametrize(("name", "changes", "expect"), TEST_CASES, ids=[c[0] for c in TEST_CASES])
def test_train_then_load_into_the_pipeline(
    tiny_model, small_dataset, tmp_path, name, changes, expect
) -> None:
    recorder = Recorder()
    request = _request(small_dataset, tmp_path / "out", **changes)
    result = Trainer(request, recorder).train()

    assert result.output_path == tmp_path / "out" / "test_lora.safetensors"
    assert result.steps == 4 and not result.cancelled
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert all(math.isfinite(x) for x in recorder.progress[-1].loss_history)
    statuses = [p.status for p in recorder.progress]
    assert statuses[0] is JobStatus.PREPARING and statuses[-1] is JobStatus.SUCCEEDED
    assert JobStatus.RUNNING in statuses and JobStatus.SAVING in statuses
    assert [p.step for p in recorder.progress if p.status is JobStatus.RUNNING][-1] == 4
    assert (
        result.config_path is not None
        and LoraConfig.load(result.config_path).rank == request.config.rank
    )

    with safe_open(str(result.output_path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    unet_modules = {k.split(".")[0] for k in keys if k.startswith("lora_unet_")}
    assert unet_modules, keys
    for module in unet_modules:
        assert module.endswith(SD15_ATTENTION_MODULES)
        assert f"{module}.lora_down.weight" in keys and f"{module}.lora_up.weight" in keys
        assert tensors[f"{module}.alpha"].item() == pytest.approx(request.config.alpha)
        assert tensors[f"{module}.lora_down.weight"].shape[0] == request.config.rank
    # SD 1.5's real module names, as A1111/ComfyUI expect them.
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in unet_modules
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0" in unet_modules
    te_keys = [k for k in keys if k.startswith("lora_te")]
    if expect["te"]:
        assert te_keys and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_keys)
    else:
        assert not te_keys

    for key in REQUIRED_METADATA:
        assert key in meta, key
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == str(request.config.rank)
    assert float(meta["ss_network_alpha"]) == request.config.alpha
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_output_name"] == "test_lora"
    assert meta["ss_num_train_images"] == "4"
    assert meta["ss_max_train_steps"] == "4"
    assert meta["ss_resolution"] == "(64, 64)"
    assert json.loads(meta["ss_tag_frequency"])["small"]["papercut style"] == 4
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == model_hashes(tensors, meta)

    pipe = _pipeline(tiny_model)
    before = _render(pipe)
    pipe.load_lora_weights(str(result.output_path), adapter_name="trained")
    after = _render(pipe)
    assert "trained" in pipe.get_list_adapters()["unet"]
    if expect["te"]:
        assert "trained" in pipe.get_list_adapters()["text_encoder"]
    assert (before - after).abs().max().item() > 1e-4


@pytest.mark.slow
def test_same_seed_gives_the_same_lora(tiny_model, small_dataset, tmp_path) -> None:
    first = Trainer(_request(small_dataset, tmp_path / "a", max_steps=3)).train()
    second = Trainer(_request(small_dataset, tmp_path / "b", max_steps=3)).train()
    other = Trainer(_request(small_dataset, tmp_path / "c", max_steps=3, seed=7)).train()

    def tensors(path: Path) -> dict[str, torch.Tensor]:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict

    a, b, c = tensors(first.output_path), tensors(second.output_path), tensors(other.output_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("lora_up.weight"))


@pytest.mark.slow
def test_v_prediction_models_train_on_velocity(tiny_model, small_dataset, tmp_path) -> None:
    model = tmp_path / "tiny-v"
    shutil.copytree(tiny_model, model)
    scheduler_config = model / "scheduler" / "scheduler_config.json"
    data = json.loads(scheduler_config.read_text(encoding="utf-8"))
    data["prediction_type"] = "v_prediction"
    scheduler_config.write_text(json.dumps(data), encoding="utf-8")
    result = Trainer(
        _request(small_dataset, tmp_path / "out", base=str(model), max_steps=2)
    ).train()
    assert result.output_path.exists()
    with safe_open(str(result.output_path), "pt") as f:
        assert f.metadata()["ss_sd_model_name"] == "tiny-v"


@pytest.mark.slow
def test_cancel_stops_within_one_step_and_keeps_the_lora(
    tiny_model, small_dataset, tmp_path
) -> None:
    commands = TrainerCommands()
    recorder = Recorder(commands, stop_at_step=2)
    result = Trainer(
        _request(small_dataset, tmp_path / "out", max_steps=50), recorder, commands
    ).train()
    assert result.cancelled
    assert result.steps == 2
    assert result.output_path.name == "test_lora-step00002.safetensors"
    assert result.output_path.exists()
    assert recorder.progress[-1].status is JobStatus.CANCELLED


def test_cancel_before_training_saves_nothing(tiny_model, small_dataset, tmp_path) -> None:
    commands = TrainerCommands()
    commands.stop()
    with pytest.raises(TrainingError, match="cancelled"):
        Trainer(_request(small_dataset, tmp_path / "out"), None, commands).train()
    assert not list((tmp_path / "out").glob("*.safetensors"))


@pytest.mark.slow
def test_existing_outputs_are_never_overwritten(tiny_model, small_dataset, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_lora.safetensors").write_bytes(b"the user's earlier LoRA")
    result = Trainer(_request(small_dataset, out, max_steps=1)).train()
    assert result.output_path.name == "test_lora_2.safetensors"
    assert (out / "test_lora.safetensors").read_bytes() == b"the user's earlier LoRA"


@pytest.mark.slow
def test_corrupt_images_are_skipped_with_a_log_line(tiny_model, small_dataset, tmp_path) -> None:
    (small_dataset / "papercut_02.png").write_bytes(b"not an image at all")
    recorder = Recorder()
    result = Trainer(_request(small_dataset, tmp_path / "out", max_steps=1), recorder).train()
    assert any("Skipping papercut_02.png" in line for line in recorder.lines)
    with safe_open(str(result.output_path), "pt") as f:
        assert f.metadata()["ss_num_train_images"] == "3"


def test_all_images_unreadable_is_a_clear_error(tiny_model, small_dataset, tmp_path) -> None:
    for png in small_dataset.glob("*.png"):
        png.write_bytes(b"junk")
    with pytest.raises(TrainingError, match="None of the dataset's images can be read"):
        Trainer(_request(small_dataset, tmp_path / "out")).train()


def test_output_folder_that_is_a_file_is_refused_before_loading(small_dataset, tmp_path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the folder should be", encoding="utf-8")
    recorder = Recorder()
    with pytest.raises(OutputError, match="is a file, not a folder"):
        Trainer(_request(small_dataset, blocker), recorder).train()
    assert recorder.progress[-1].status is JobStatus.FAILED
    assert blocker.read_text(encoding="utf-8") == "a file where the folder should be"


def test_missing_base_model_is_a_clear_error(small_dataset, tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Trainer(_request(small_dataset, tmp_path / "out", base=str(tmp_path / "no-model"))).train()


def test_incomplete_model_folder_is_a_clear_error(tiny_model, small_dataset, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelError, match="unet/ is missing"):
        Trainer(_request(small_dataset, tmp_path / "out", base=str(broken))).train()


def test_unknown_model_family_is_named(small_dataset, tmp_path) -> None:
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(
        '{"_class_name": "KandinskyV22Pipeline"}', encoding="utf-8"
    )
    with pytest.raises(ModelError, match="Cannot tell which model family"):
        Trainer(_request(small_dataset, tmp_path / "out", base=str(folder))).train()


def test_the_model_classes_are_imported_without_collector_passes() -> None:
    """The first run's imports of diffusers' and transformers' model modules run with the
    garbage collector paused (its full passes over them would stall the window's thread),
    then are frozen out of later passes; the collector is on again afterwards."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import gc, json, sys
        import torch  # the window imports torch, then settles its heap, before any run
        gc.collect(); gc.freeze()
        from lora_studio.core.config import ModelFamily
        from lora_studio.training.families import get_family
        from lora_studio.training.trainer import import_training_stack_quietly
        module = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion"
        before = module in sys.modules
        passes = []
        gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info))
        frozen = gc.get_freeze_count()
        import_training_stack_quietly(get_family(ModelFamily.SD15))
        print(json.dumps({
            "before": before, "after": module in sys.modules, "passes": len(passes),
            "enabled": gc.isenabled(), "frozen": gc.get_freeze_count() - frozen,
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=240
    )
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert not facts["before"] and facts["after"], facts  # it did the importing
    assert facts["passes"] == 0, facts
    assert facts["enabled"], facts
    assert facts["frozen"] > 10_000, facts  # what was imported left the collector's walks
