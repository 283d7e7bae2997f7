"""Training features on the tiny SD 1.5 model: resume, caches, buckets, optimizers,
schedules, DoRA/LoCon, samples, diffusers output, TensorBoard, pause."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import TrainingError
from lora_studio.core.jobs import JobStatus, Progress
from lora_studio.core.request import TrainingRequest
from lora_studio.training.checkpoints import list_checkpoints
from lora_studio.training.trainer import Trainer, TrainerCommands

pytestmark = pytest.mark.usefixtures("tiny_model")


class Recorder:
    def __init__(self, commands: TrainerCommands | None = None, stop_at: int | None = None):
        self.progress: list[Progress] = []
        self.lines: list[str] = []
        self.commands = commands
        self.stop_at = stop_at

    def on_progress(self, progress: Progress) -> None:
        self.progress.append(progress)
        if self.commands and self.stop_at and progress.step >= self.stop_at:
            self.commands.stop()

    def on_log(self, line: str) -> None:
        self.lines.append(line)


def _config(**changes) -> LoraConfig:
    settings = {
        "name": "feat",
        "resolution": 64,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "rank": 4,
        "alpha": 4.0,
        "trigger_word": "papercut style",
        **changes,
    }
    return LoraConfig.fast_preset().replace(**settings)


def _request(dataset: Path, out: Path, **changes) -> TrainingRequest:
    return TrainingRequest(
        Dataset.from_directory(dataset), _config(**changes), "builtin:tiny-sd15", out
    )


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict


RESUME_CASES = [
    ("plain", {}),
    (
        "varied-captions-and-accumulation",
        {
            "shuffle_tags": True,
            "caption_dropout": 0.3,
            "keep_tokens": 1,
            "gradient_accumulation_steps": 2,
            "batch_size": 2,
            "lr_scheduler": "cosine",
        },
    ),
]


@pytest.mark.parametrize(("name", "changes"), RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(
    small_dataset, tmp_path, name, changes
):
    steps = {"max_steps": 7, **changes}
    whole = Trainer(_request(small_dataset, tmp_path / "whole", **steps)).train()

    commands = TrainerCommands()
    first = Trainer(
        _request(small_dataset, tmp_path / "split", **steps), Recorder(commands, 3), commands
    ).train()
    assert first.cancelled and first.steps == 3
    assert first.checkpoint is not None and first.checkpoint.name == "step-000003"

    recorder = Recorder()
    resumed = Trainer(
        _request(small_dataset, tmp_path / "split", **steps), recorder, resume_from=first.checkpoint
    ).train()
    assert resumed.steps == 7 and not resumed.cancelled
    assert any("Resumed from step-000003" in line for line in recorder.lines)
    a, b = _tensors(whole.output_path), _tensors(resumed.output_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the loss history continues where it stopped
    assert len(recorder.progress[-1].loss_history) == 7


def test_resume_with_other_settings_is_refused_naming_them(small_dataset, tmp_path):
    commands = TrainerCommands()
    first = Trainer(
        _request(small_dataset, tmp_path / "out", max_steps=10), Recorder(commands, 1), commands
    ).train()
    assert first.checkpoint is not None
    with pytest.raises(TrainingError, match=r"rank was 4, now 8.*alpha was 4.0, now 8.0"):
        Trainer(
            _request(small_dataset, tmp_path / "out", max_steps=10, rank=8, alpha=8.0),
            resume_from=first.checkpoint,
        ).train()
    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer(_request(small_dataset, tmp_path / "out"), resume_from=tmp_path).train()


def test_periodic_checkpoints_keep_only_the_last_ones(small_dataset, tmp_path):
    result = Trainer(
        _request(
            small_dataset,
            tmp_path / "out",
            max_steps=6,
            save_every_n_steps=2,
            keep_last_checkpoints=2,
        )
    ).train()
    names = [p.name for p in list_checkpoints(tmp_path / "out" / "feat-checkpoints")]
    assert names == ["step-000004", "step-000006"]
    assert result.checkpoint is not None and result.checkpoint.name == "step-000006"


def test_disk_cache_is_reused_and_keyed_by_content(small_dataset, tmp_path):
    cache = tmp_path / "cache"
    first = Recorder()
    Trainer(_request(small_dataset, tmp_path / "a", max_steps=1), first, cache_root=cache).train()
    assert any("Latents of 4 images: 0 from the cache, 4 encoded" in line for line in first.lines)
    assert any(
        "Text embeddings of 4 captions: 0 from the cache, 4 encoded" in line for line in first.lines
    )

    second = Recorder()
    Trainer(_request(small_dataset, tmp_path / "b", max_steps=1), second, cache_root=cache).train()
    assert any("Latents of 4 images: 4 from the cache, 0 encoded" in line for line in second.lines)
    assert any("4 from the cache, 0 encoded" in line and "Text" in line for line in second.lines)

    # A changed image and a changed caption are encoded again; a new resolution too.
    Image.new("RGB", (64, 64), "red").save(small_dataset / "papercut_01.png")
    (small_dataset / "papercut_02.txt").write_text("papercut style, changed", encoding="utf-8")
    third = Recorder()
    Trainer(_request(small_dataset, tmp_path / "c", max_steps=1), third, cache_root=cache).train()
    assert any("Latents of 4 images: 3 from the cache, 1 encoded" in line for line in third.lines)
    assert any(
        "Text embeddings of 4 captions: 3 from the cache, 1 encoded" in line for line in third.lines
    )
    fourth = Recorder()
    Trainer(
        _request(small_dataset, tmp_path / "d", max_steps=1, resolution=128),
        fourth,
        cache_root=cache,
    ).train()
    assert any("Latents of 4 images: 0 from the cache, 4 encoded" in line for line in fourth.lines)


def test_caption_variation_turns_the_text_cache_off(small_dataset, tmp_path):
    recorder = Recorder()
    Trainer(
        _request(small_dataset, tmp_path / "out", max_steps=2, shuffle_tags=True),
        recorder,
        cache_root=tmp_path / "cache",
    ).train()
    assert any("Encoding captions every step: captions vary" in line for line in recorder.lines)
    assert not any(line.endswith("encoded") and "Text" in line for line in recorder.lines)


def test_buckets_batch_images_of_one_shape(tmp_path):
    from lora_studio.core.buckets import make_buckets, place

    sizes = [(256, 128), (256, 128), (128, 256), (128, 128), (192, 64)]
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"shape {i}", encoding="utf-8")
    buckets = make_buckets(128, 64, 256)
    per_bucket: dict[object, int] = {}
    for w, h in sizes:
        bucket = place(w, h, buckets, 128).bucket
        per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
    assert len(per_bucket) == 3  # two wide images share a bucket with the 3:1 one
    expected_batches = sum(-(-n // 2) for n in per_bucket.values())  # batch 2, never mixed

    recorder = Recorder()
    result = Trainer(
        TrainingRequest(
            Dataset.from_directory(folder),
            _config(
                max_steps=None,
                epochs=1,
                batch_size=2,
                resolution=128,
                min_bucket_side=64,
                max_bucket_side=256,
            ),
            "builtin:tiny-sd15",
            tmp_path / "out",
        ),
        recorder,
    ).train()
    summary = next(line for line in recorder.lines if "bucket(s)" in line)
    assert "5 images in 3 bucket(s)" in summary
    assert result.steps == expected_batches == 4


OPTIMIZER_CASES = ["adamw", "prodigy", "adafactor"]


@pytest.mark.parametrize("optimizer", OPTIMIZER_CASES)
def test_optimizers_train(small_dataset, tmp_path, optimizer):
    lr = 1.0 if optimizer == "prodigy" else 1e-3
    result = Trainer(
        _request(
            small_dataset, tmp_path / "out", optimizer=optimizer, learning_rate=lr, max_steps=2
        )
    ).train()
    assert result.steps == 2 and result.final_loss is not None
    ups = [v for k, v in _tensors(result.output_path).items() if k.endswith("lora_up.weight")]
    assert any(v.abs().sum() > 0 for v in ups), "the optimizer did not move the weights"


def test_adamw_is_fused_where_torch_has_the_kernel_and_plain_where_not(monkeypatch):
    from lora_studio.core.config import Optimizer
    from lora_studio.training.trainer import make_optimizer

    config = _config(optimizer=Optimizer.ADAMW)
    weights = torch.nn.Parameter(torch.zeros(4, 4))
    fused = make_optimizer(config, [{"params": [weights], "lr": 1e-3}], on_cuda=False)
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"]
    real = torch.optim.AdamW

    def no_fused_kernel(*args, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused_kernel)
    plain = make_optimizer(config, [{"params": [weights], "lr": 1e-3}], on_cuda=False)
    assert isinstance(plain, real) and not plain.defaults["fused"]


def test_adamw_8bit_on_a_cpu_says_what_to_choose(small_dataset, tmp_path):
    with pytest.raises(TrainingError, match="AdamW 8-bit needs an NVIDIA GPU"):
        Trainer(_request(small_dataset, tmp_path / "out", optimizer="adamw8bit")).train()


@pytest.mark.parametrize(
    "schedule", ["constant_with_warmup", "cosine_with_restarts", "polynomial", "linear"]
)
def test_learning_rate_schedules(small_dataset, tmp_path, schedule):
    recorder = Recorder()
    Trainer(
        _request(
            small_dataset,
            tmp_path / "out",
            lr_scheduler=schedule,
            lr_warmup_steps=2,
            max_steps=4,
            lr_cycles=2,
            lr_power=2.0,
        ),
        recorder,
    ).train()
    rates = [p.learning_rate for p in recorder.progress if p.status is JobStatus.RUNNING and p.step]
    assert rates[0] < 1e-3  # warming up
    assert len(rates) == 4
    # The series the job monitor draws: one rate per step, beside the losses.
    assert recorder.progress[-1].lr_history == tuple(rates)
    assert len(recorder.progress[-1].loss_history) == 4


def test_dora_and_conv_layers_export_and_load(small_dataset, tmp_path, tiny_model):
    from diffusers import StableDiffusionPipeline

    result = Trainer(
        _request(
            small_dataset, tmp_path / "out", use_dora=True, conv_rank=2, conv_alpha=1.0, max_steps=2
        )
    ).train()
    tensors = _tensors(result.output_path)
    assert any(k.endswith(".dora_scale") for k in tensors)
    conv_down = [k for k in tensors if "resnets" in k and k.endswith("conv1.lora_down.weight")]
    assert conv_down and tensors[conv_down[0]].shape[0] == 2 and tensors[conv_down[0]].ndim == 4
    assert tensors[conv_down[0].replace("lora_down.weight", "alpha")].item() == 1.0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(result.output_path))  # diffusers reads DoRA + conv keys


def test_a_convolution_among_custom_targets_keeps_the_lora_alpha(small_dataset, tmp_path):
    """SD 1.5's ``proj_in`` is a 1x1 convolution; named in the target modules without LoCon
    it trains with ``alpha`` (not ``conv_alpha``), and the file must say so, or it loads
    at the wrong strength."""
    targets = "to_q,to_k,to_v,to_out.0,proj_in"
    result = Trainer(
        _request(small_dataset, tmp_path / "out", target_modules=targets, alpha=8.0, conv_alpha=1.0)
    ).train()
    tensors = _tensors(result.output_path)
    proj_in = [k for k in tensors if k.endswith("proj_in.lora_down.weight")]
    assert proj_in and all(tensors[k].ndim == 4 for k in proj_in)
    for key in proj_in:
        assert tensors[key.replace("lora_down.weight", "alpha")].item() == 8.0, key


def test_min_snr_and_noise_offset_train(small_dataset, tmp_path):
    result = Trainer(
        _request(small_dataset, tmp_path / "out", min_snr_gamma=5.0, noise_offset=0.1, max_steps=2)
    ).train()
    assert result.final_loss is not None and result.final_loss > 0


def test_gradient_checkpointing_gives_the_same_result(small_dataset, tmp_path):
    plain = Trainer(_request(small_dataset, tmp_path / "a", max_steps=2)).train()
    checkpointed = Trainer(
        _request(small_dataset, tmp_path / "b", max_steps=2, gradient_checkpointing=True)
    ).train()
    a, b = _tensors(plain.output_path), _tensors(checkpointed.output_path)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_samples_are_drawn_and_do_not_change_training(small_dataset, tmp_path):
    prompts = "[trigger], hills at dawn\na lighthouse"
    recorder = Recorder()
    with_samples = Trainer(
        _request(
            small_dataset,
            tmp_path / "s",
            max_steps=4,
            sample_prompts=prompts,
            sample_every_n_steps=2,
            sample_inference_steps=2,
        ),
        recorder,
    ).train()
    names = sorted(p.name for p in with_samples.sample_paths)
    assert names == [
        "step000002-00.png",
        "step000002-01.png",
        "step000004-00.png",
        "step000004-01.png",
    ]
    for path in with_samples.sample_paths:
        with Image.open(path) as img:
            assert img.size == (64, 64)
    assert any(p.sample_paths for p in recorder.progress)
    without = Trainer(_request(small_dataset, tmp_path / "n", max_steps=4)).train()
    a, b = _tensors(with_samples.output_path), _tensors(without.output_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diffusers_format_and_tensorboard_logs(small_dataset, tmp_path, tiny_model):
    from diffusers import StableDiffusionPipeline

    result = Trainer(
        _request(
            small_dataset,
            tmp_path / "out",
            max_steps=2,
            save_diffusers_format=True,
            tensorboard=True,
            train_text_encoder=True,
        )
    ).train()
    assert result.diffusers_path is not None and result.diffusers_path.exists()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.load_lora_weights(str(result.diffusers_path.parent), adapter_name="d")
    assert "d" in pipe.get_list_adapters()["unet"]
    events = list((tmp_path / "out" / "feat-logs").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_pause_holds_between_steps_until_resumed(small_dataset, tmp_path):
    commands = TrainerCommands()
    paused = threading.Event()

    class PauseAtTwo(Recorder):
        def on_progress(self, progress: Progress) -> None:
            super().on_progress(progress)
            at_two = progress.step == 2 and progress.status is JobStatus.RUNNING
            if at_two and not commands.paused and not paused.is_set():
                commands.pause()
            if progress.status is JobStatus.PAUSED:
                paused.set()

    recorder = PauseAtTwo()
    thread = threading.Thread(
        target=lambda: Trainer(
            _request(small_dataset, tmp_path / "out", max_steps=4), recorder, commands
        ).train()
    )
    thread.start()
    assert paused.wait(120), "the run never paused"
    steps_while_paused = recorder.progress[-1].step
    thread.join(0.5)
    assert thread.is_alive() and recorder.progress[-1].step == steps_while_paused == 2
    commands.resume()
    thread.join(120)
    assert recorder.progress[-1].status is JobStatus.SUCCEEDED
    assert recorder.progress[-1].step == 4


@pytest.mark.parametrize("builtin", ["tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_models_load_straight_into_the_training_precision(builtin):
    from lora_studio.core.base_model import resolve_base_model
    from lora_studio.training.families import get_family
    from lora_studio.training.tiny import ensure_builtin_model

    ref = resolve_base_model(f"builtin:{builtin}")
    comps = get_family(ref.family).load(ref, ensure_builtin_model(builtin), torch.bfloat16)
    assert next(comps.denoiser.parameters()).dtype == torch.bfloat16
    assert all(next(e.parameters()).dtype == torch.bfloat16 for e in comps.text_encoders)
    assert next(comps.vae.parameters()).dtype == torch.float32  # SD VAEs overflow in fp16


#: Graphs the counting compile backend was given, with whether grad was on when traced.
_COMPILED: list[tuple[str, bool]] = []


def _counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
    """A torch.compile backend that runs the traced graph as it is (no code generation:
    inductor takes minutes on a 2-core CPU) and notes what it was given."""
    _COMPILED.append((graph.code, torch.is_grad_enabled()))
    return graph.forward


def test_torch_compile_compiles_the_blocks_and_trains_the_same_lora(
    small_dataset, tmp_path, monkeypatch
):
    from torch._dynamo import list_backends, register_backend

    if "lora_studio_counting" not in list_backends(exclude_tags=()):
        register_backend(_counting_backend, name="lora_studio_counting")
    monkeypatch.setenv("LORA_STUDIO_COMPILE_BACKEND", "lora_studio_counting")
    torch._dynamo.reset()
    _COMPILED.clear()
    recorder = Recorder()
    compiled = Trainer(
        _request(
            small_dataset,
            tmp_path / "c",
            max_steps=2,
            torch_compile=True,
            sample_prompts="[trigger], hills",
            sample_every_n_steps=1,
            sample_inference_steps=2,
        ),
        recorder,
    ).train()
    # The tiny SD 1.5 UNet's 16 transformer blocks, compiled in place (regional
    # compilation), not the whole UNet: the graphs hold attention, never a convolution.
    assert any(
        "16 transformer blocks with torch.compile (lora_studio_counting" in line
        for line in recorder.lines
    )
    assert _COMPILED, "nothing was compiled"
    assert not any("conv2d" in code for code, _ in _COMPILED)
    assert any("scaled_dot_product_attention" in code for code, _ in _COMPILED)
    # The sample at step 1 ran the blocks eagerly: every graph was traced for training.
    assert compiled.sample_paths
    assert all(grad for _, grad in _COMPILED)
    plain = Trainer(_request(small_dataset, tmp_path / "p", max_steps=2)).train()
    a, b = _tensors(compiled.output_path), _tensors(plain.output_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def _lora_mlp(*, dora: bool = False) -> torch.nn.Module:
    """Two bf16 linears with fp32 LoRA layers on them, as the trainer holds a denoiser in
    mixed precision."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    model.to(torch.bfloat16).requires_grad_(False)
    config = PeftLoraConfig(
        r=4, target_modules=["0", "2"], init_lora_weights="gaussian", use_dora=dora
    )
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        if "lora" in name:
            param.data = param.data.float()
            param.data.normal_()  # lora_B starts at zero: give it something to carry
    return model


def _copies_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor, list]:
    """A bf16-autocast forward and backward: the copy kernels it ran, output, LoRA grads."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default:
                Copies.count += 1
            return func(*args, **(kwargs or {}))

    model.zero_grad(set_to_none=True)
    with Copies(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        out.float().square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return Copies.count, out.detach(), grads


def test_lora_input_casts_are_skipped_under_autocast_with_the_same_values():
    from lora_studio.training.trainer import lora_input_casts, redundant_input_casts

    model = _lora_mlp()
    layers = redundant_input_casts(model, "bf16")
    assert len(layers) == 2
    assert redundant_input_casts(model, "no") == []  # fp32: nothing is cast
    assert redundant_input_casts(_lora_mlp(dora=True), "bf16") == []  # DoRA keeps them
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    copies, out, grads = _copies_and_grads(model, x)
    with lora_input_casts(layers, enabled=False):
        lean_copies, lean_out, lean_grads = _copies_and_grads(model, x)
    # The fp32 round trip of each layer's input is gone, forward and backward ...
    assert lean_copies <= copies - 2 * len(layers)
    # ... and it changed no value: half -> fp32 -> half is exact.
    assert torch.equal(out, lean_out)
    for grad, lean_grad in zip(grads, lean_grads, strict=True):
        assert torch.equal(grad, lean_grad)
    assert all(layer.cast_input_dtype_enabled for layer in layers)  # as before
