"""Training steps replayed from CUDA graphs (lora_studio/training/graphs.py).

The draws, the blockers and the checkpoints run anywhere; the graphs themselves need a
CUDA GPU (those tests are skipped without one, and run on the GPU machine: see
docs/benchmarks.md, item 6).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_studio.core.config import LoraConfig, ModelFamily, Optimizer
from lora_studio.core.dataset import Dataset
from lora_studio.core.jobs import JobStatus
from lora_studio.core.request import TrainingRequest
from lora_studio.training.families import get_family
from lora_studio.training.graphs import graph_blocker
from lora_studio.training.objectives import ddpm_draws, ddpm_loss
from lora_studio.training.trainer import Trainer, TrainerCommands

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---- anywhere ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "changes"),
    [
        ("epsilon", {}),
        ("epsilon", {"noise_offset": 0.05, "min_snr_gamma": 5.0}),
        ("v_prediction", {"min_snr_gamma": 5.0}),
    ],
)
def test_draws_made_beforehand_give_the_loss_the_loss_draws_itself(prediction, changes):
    from diffusers import DDPMScheduler

    config = LoraConfig.fast_preset().replace(**changes)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def predict(noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noisy * 0.5 + timesteps.float().view(-1, 1, 1, 1) / 1000

    def loss(draw_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
        generator = torch.Generator().manual_seed(7)
        draws = ddpm_draws(latents, scheduler, generator, config) if draw_first else None
        value = ddpm_loss(latents, scheduler, prediction, predict, generator, config, draws)
        # what the generator gives next: the same stream was used up the same way
        return value, torch.rand(3, generator=generator)

    (inside, next_inside), (outside, next_outside) = loss(False), loss(True)
    assert torch.equal(inside, outside)
    assert torch.equal(next_inside, next_outside)


def test_graph_blocker_says_what_keeps_a_run_eager():
    sdxl = get_family(ModelFamily.SDXL)
    flux = get_family(ModelFamily.FLUX)
    base = LoraConfig.sdxl_preset()
    plain = {"device": "cuda", "processes": 1}
    assert graph_blocker(base, sdxl, **plain) is None
    assert graph_blocker(base.replace(mixed_precision="no"), sdxl, **plain) is None  # fp32
    cases = [
        (base.replace(cuda_graphs=False), sdxl, {}, "turned off"),
        (base, sdxl, {"device": "cpu"}, "not on a CUDA GPU"),
        (base, flux, {}, "not available for flux"),
        (base.replace(family=ModelFamily.SD3), sdxl, {}, None),  # the model decides
        (base.replace(mixed_precision="fp16"), sdxl, {}, "loss scaler"),
        (base.replace(optimizer=Optimizer.PRODIGY), sdxl, {}, "prodigy cannot be captured"),
        (base.replace(gradient_accumulation_steps=2), sdxl, {}, "gradient accumulation"),
        (base.replace(gradient_checkpointing=True), sdxl, {}, "gradient checkpointing"),
        (base.replace(train_text_encoder=True), sdxl, {}, "text encoders"),
        (base, sdxl, {"processes": 2}, "several processes"),
    ]
    for config, family, changes, reason in cases:
        said = graph_blocker(config, family, **{**plain, **changes})
        if reason is None:
            assert said is None, said
        else:
            assert said is not None and reason.lower() in said.lower(), (reason, said)
    # What the settings alone say (the window greys the box out when it has no effect).
    assert base.graph_blocker is None
    assert "fp16" in LoraConfig.fast_preset().graph_blocker
    assert "flux" in LoraConfig.flux_preset().graph_blocker.lower()


def test_checkpoints_keep_learning_rates_as_numbers(tmp_path):
    """A graphed run's rates live in GPU tensors; its checkpoint resumes anywhere."""
    from diffusers.optimization import get_scheduler

    from lora_studio.training.checkpoints import _float_rates

    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weights], lr=1e-3, fused=True)
    schedule = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=2, num_training_steps=9
    )
    optimizer.param_groups[0]["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
    weights.grad = torch.ones(3)
    optimizer.step()
    schedule.step()
    rate = float(optimizer.param_groups[0]["lr"])
    torch.save(_float_rates(optimizer.state_dict()), tmp_path / "o.pt")
    torch.save(_float_rates(schedule.state_dict()), tmp_path / "s.pt")
    # A plain (foreach, not capturable) AdamW refuses tensor rates: it takes these.
    again = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1.0, foreach=True)
    again.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=False))
    assert isinstance(again.param_groups[0]["lr"], float)
    assert again.param_groups[0]["lr"] == pytest.approx(rate)
    saved = torch.load(tmp_path / "s.pt", weights_only=False)
    assert all(isinstance(v, float) for v in saved["_last_lr"])


# ---- on a CUDA GPU -------------------------------------------------------------------


class Lines:
    def __init__(self, commands: TrainerCommands | None = None, stop_at: int | None = None):
        self.lines: list[str] = []
        self.by_step: dict[int, float] = {}
        self.commands, self.stop_at = commands, stop_at

    @property
    def losses(self) -> list[float]:
        return [self.by_step[step] for step in sorted(self.by_step)]

    def on_progress(self, progress) -> None:
        if progress.status is JobStatus.RUNNING and progress.loss is not None:
            self.by_step[progress.step] = progress.loss
        if self.commands and self.stop_at and progress.step >= self.stop_at:
            self.commands.stop()

    def on_log(self, line: str) -> None:
        self.lines.append(line)

    def replayed(self) -> bool:
        return any("replays from a graph" in line for line in self.lines)


def _train(dataset: Path, out: Path, model: str, lines: Lines | None = None, **changes):
    config = LoraConfig.fast_preset().replace(
        **{
            "name": "graphs",
            "resolution": 64,
            "max_steps": 10,
            "learning_rate": 1e-3,
            "rank": 4,
            "alpha": 4.0,
            "mixed_precision": "bf16",
            **changes,
        }
    )
    request = TrainingRequest(Dataset.from_directory(dataset), config, model, out)
    lines = lines or Lines()
    result = Trainer(request, lines, device="cuda").train()
    return result, lines


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118


def _assert_same_training(a, b, losses_a: list[float], losses_b: list[float]) -> None:
    """Same losses step for step and the same LoRA, within bf16 kernel noise."""
    assert len(losses_a) == len(losses_b) > 0
    worst = max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(losses_a, losses_b, strict=True))
    print(f"losses: worst relative difference {worst:.2e}")
    assert worst < 2e-2, (losses_a, losses_b)
    ta, tb = _tensors(a.output_path), _tensors(b.output_path)
    assert ta.keys() == tb.keys()
    for key in ta:
        scale = ta[key].abs().max().item() + 1e-6
        assert (ta[key] - tb[key]).abs().max().item() / scale < 5e-2, key


GRAPH_CASES = [
    ("sd15", "builtin:tiny-sd15", {}),
    ("sdxl", "builtin:tiny-sdxl", {}),
    (
        "sd15-snr-offset-cosine",
        "builtin:tiny-sd15",
        {
            "min_snr_gamma": 5.0,
            "noise_offset": 0.05,
            "lr_scheduler": "cosine",
            "lr_warmup_steps": 3,
        },
    ),
    ("sdxl-compiled", "builtin:tiny-sdxl", {"torch_compile": True}),
]


@cuda
@pytest.mark.parametrize(("name", "model", "changes"), GRAPH_CASES, ids=[c[0] for c in GRAPH_CASES])
def test_graphed_steps_train_as_eager_steps(small_dataset, tmp_path, name, model, changes):
    graphed, lines = _train(small_dataset, tmp_path / "g", model, **changes)
    eager, eager_lines = _train(small_dataset, tmp_path / "e", model, cuda_graphs=False, **changes)
    assert lines.replayed(), lines.lines
    assert not eager_lines.replayed()
    assert not any("could not capture" in line for line in lines.lines), lines.lines
    _assert_same_training(graphed, eager, lines.losses, eager_lines.losses)


def _two_shapes(folder: Path) -> Path:
    folder.mkdir()
    for i, size in enumerate([(96, 64), (64, 96)] * 3):
        Image.new("RGB", size, (40 * i, 100, 200 - 30 * i)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a shape, number {i}", encoding="utf-8")
    return folder


@cuda
def test_each_bucket_shape_gets_its_graph(tmp_path):
    folder = _two_shapes(tmp_path / "mixed")
    graphed, lines = _train(folder, tmp_path / "g", "builtin:tiny-sd15", max_steps=12)
    eager, eager_lines = _train(
        folder, tmp_path / "e", "builtin:tiny-sd15", max_steps=12, cuda_graphs=False
    )
    assert lines.replayed()
    _assert_same_training(graphed, eager, lines.losses, eager_lines.losses)


@cuda
def test_a_graphed_run_resumes_and_samples(small_dataset, tmp_path):
    changes = {
        "max_steps": 9,
        "sample_prompts": "[trigger], hills",
        "sample_every_n_steps": 4,
        "sample_inference_steps": 2,
    }
    whole, whole_lines = _train(small_dataset, tmp_path / "whole", "builtin:tiny-sdxl", **changes)
    assert whole_lines.replayed() and whole.sample_paths
    commands = TrainerCommands()
    config = LoraConfig.fast_preset().replace(
        name="graphs",
        resolution=64,
        learning_rate=1e-3,
        rank=4,
        alpha=4.0,
        mixed_precision="bf16",
        **changes,
    )
    request = TrainingRequest(
        Dataset.from_directory(small_dataset), config, "builtin:tiny-sdxl", tmp_path / "split"
    )
    first = Trainer(request, Lines(commands, stop_at=5), commands, device="cuda").train()
    assert first.cancelled and first.checkpoint is not None
    lines = Lines()
    resumed = Trainer(request, lines, device="cuda", resume_from=first.checkpoint).train()
    assert resumed.steps == 9 and lines.replayed()
    _assert_same_training(whole, resumed, whole_lines.losses[-3:], lines.losses[-3:])


@cuda
def test_fp16_runs_say_why_they_are_not_graphed(small_dataset, tmp_path):
    _, lines = _train(small_dataset, tmp_path / "h", "builtin:tiny-sd15", mixed_precision="fp16")
    assert not lines.replayed()
    assert any("CUDA graphs not used: fp16" in line for line in lines.lines)


def test_a_graph_is_keyed_by_every_batch_tensor_and_fed_all_of_them():
    """What decides which graph replays a batch, and what is copied in before it does
    (graphs.py's helpers; they run anywhere)."""
    import dataclasses

    from lora_studio.training.families.base import LossInputs
    from lora_studio.training.graphs import _clone_inputs, _copy_into, _shape_key

    def batch(side: int, seed: int) -> LossInputs:
        g = torch.Generator().manual_seed(seed)
        return LossInputs(
            comps=None,
            denoiser=None,
            latents=torch.randn(1, 4, side, side, generator=g),
            cond={"prompt_embeds": torch.randn(1, 77, 8, generator=g)},
            image_meta=torch.randn(1, 6, generator=g),
            generator=g,
            config=LoraConfig(),
            weight_dtype=torch.float32,
            autocast=None,
            draws={
                "noise": torch.randn(1, 4, side, side, generator=g),
                "timesteps": torch.randint(0, 1000, (1,), generator=g),
            },
        )

    a, b, wide = batch(8, 1), batch(8, 2), batch(12, 3)
    assert _shape_key(a) == _shape_key(b)
    assert _shape_key(a) != _shape_key(wide)  # another bucket: another graph
    no_draws = dataclasses.replace(a, draws=None)
    assert _shape_key(no_draws) != _shape_key(a)
    static = _clone_inputs(a)
    assert static.latents is not a.latents and torch.equal(static.latents, a.latents)
    _copy_into(static, b)
    for name in ("latents", "image_meta"):
        assert torch.equal(getattr(static, name), getattr(b, name)), name
    assert torch.equal(static.cond["prompt_embeds"], b.cond["prompt_embeds"])
    for key in ("noise", "timesteps"):
        assert torch.equal(static.draws[key], b.draws[key]), key


@cuda
def test_a_step_that_cannot_be_captured_trains_eagerly(tmp_path, monkeypatch):
    from lora_studio.training.families.sd15 import SD15Family

    real = SD15Family.loss

    def loss(self, inputs):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("operation not permitted when stream is capturing")
        return real(self, inputs)

    monkeypatch.setattr(SD15Family, "loss", loss)
    folder = _two_shapes(tmp_path / "mixed")  # two shapes: two captures tried
    graphed, lines = _train(folder, tmp_path / "g", "builtin:tiny-sd15", max_steps=12)
    eager, eager_lines = _train(
        folder, tmp_path / "e", "builtin:tiny-sd15", max_steps=12, cuda_graphs=False
    )
    said = [line for line in lines.lines if "could not capture" in line]
    assert len(said) == 2, lines.lines  # one per shape, and each trained eagerly
    assert not lines.replayed()
    _assert_same_training(graphed, eager, lines.losses, eager_lines.losses)
