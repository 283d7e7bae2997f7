"""Resumable checkpoints.

A checkpoint is a folder ``<output>/<name>-checkpoints/step-<NNNNNN>/`` holding everything
that decides what the rest of the run does:

* ``adapter.safetensors`` - the LoRA weights (peft state dicts of the denoiser and of each
  trained text encoder);
* ``optimizer.pt``, ``scheduler.pt`` - optimizer moments and LR-schedule position;
* ``rng.pt`` - the run's two generators (the batch order; and latents, noise, timesteps,
  caption variation) and torch's global RNG states;
* ``state.json`` - step, epoch, this epoch's batch order and position, the loss history,
  the config, and the fingerprint that a resumed run must match.

Resuming restores all of it, so a run that is interrupted and resumed ends with the same
weights as one that was not (on the CPU, bit for bit). Under a multi-process launch only the
main process's random stream is saved: a resumed distributed run continues correctly but
not bit for bit. A checkpoint whose fingerprint
differs (another family, rank, alpha, target modules, dataset...) is refused with a
message that names each difference.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import TrainingError

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.json"

#: Settings a resumed run must share with its checkpoint, with a readable name each.
FINGERPRINT_FIELDS = {
    "family": "model family",
    "base_model_version": "base model version",
    "rank": "rank",
    "alpha": "alpha",
    "target_modules": "target modules",
    "use_dora": "DoRA",
    "conv_rank": "conv rank",
    "conv_alpha": "conv alpha",
    "train_text_encoder": "text-encoder training",
    "batch_size": "batch size",
    "gradient_accumulation_steps": "gradient accumulation",
    "dataset": "dataset (images, repeats and buckets)",
}


@dataclass
class ResumeState:
    """Where a run continues from."""

    folder: Path
    step: int
    epoch: int
    batch_index: int  # the next batch of ``epoch_batches`` to run
    epoch_batches: list[list[int]]
    losses: list[float]
    config: LoraConfig
    fingerprint: dict[str, Any] = field(default_factory=dict)


def checkpoints_root(output_dir: Path, name: str) -> Path:
    return output_dir / f"{name}-checkpoints"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: Path,
    *,
    step: int,
    epoch: int,
    batch_index: int,
    epoch_batches: list[list[int]],
    losses: list[float],
    config: LoraConfig,
    fingerprint: dict[str, Any],
    adapters: dict[str, dict[str, torch.Tensor]],
    optimizer: Any,
    lr_scheduler: Any,
    generator: torch.Generator,
    order_generator: torch.Generator,
    keep_last: int,
) -> Path:
    """Write a checkpoint (complete or not at all) and delete all but the newest
    ``keep_last``; returns its folder."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = root / f".step-{step:06d}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        flat = {
            f"{owner}.{key}": tensor.detach().to("cpu").contiguous()
            for owner, state in adapters.items()
            for key, tensor in state.items()
        }
        save_file(flat, str(staging / "adapter.safetensors"))
        torch.save(_float_rates(optimizer.state_dict()), staging / "optimizer.pt")
        torch.save(_float_rates(lr_scheduler.state_dict()), staging / "scheduler.pt")
        rng: dict[str, Any] = {
            "generator": generator.get_state(),
            "order_generator": order_generator.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / "rng.pt")
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "epoch": epoch,
            "batch_index": batch_index,
            "epoch_batches": epoch_batches,
            "losses": losses,
            "config": config.to_dict(),
            "fingerprint": fingerprint,
        }
        atomic_write_text(staging / STATE_FILE, json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(folder: Path) -> ResumeState:
    """Read ``state.json`` of a checkpoint (a ``step-*`` folder, or a run's checkpoints
    folder, whose newest checkpoint is used)."""
    if folder.is_dir() and not (folder / STATE_FILE).exists():
        newest = latest_checkpoint(folder)
        if newest is None:
            raise TrainingError(f"There is no checkpoint in {folder} to resume from.")
        folder = newest
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(
            f"{folder} is not a LoRA Studio checkpoint (no {STATE_FILE})."
        ) from None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"The checkpoint {folder} cannot be read: {exc}.") from None
    if data.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"The checkpoint {folder} has an unknown format.")
    return ResumeState(
        folder=folder,
        step=int(data["step"]),
        epoch=int(data["epoch"]),
        batch_index=int(data["batch_index"]),
        epoch_batches=[list(b) for b in data["epoch_batches"]],
        losses=[float(x) for x in data["losses"]],
        config=LoraConfig.from_dict(data["config"]),
        fingerprint=dict(data["fingerprint"]),
    )


def check_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise :class:`TrainingError` naming every setting that differs."""
    differences = []
    for key, label in FINGERPRINT_FIELDS.items():
        if saved.get(key) != current.get(key):
            if key == "dataset":
                differences.append("the dataset (images, repeats or buckets) changed")
            else:
                differences.append(
                    f"{label} was {_show(saved.get(key))}, now {_show(current.get(key))}"
                )
    if differences:
        raise TrainingError(
            "Cannot resume from this checkpoint: " + "; ".join(differences) + ". Resume with "
            "the checkpoint's settings, or start a new run."
        )


def _show(value: Any) -> str:
    return "(none)" if value in (None, "") else str(value)


def load_training_state(
    state: ResumeState,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: Any,
    lr_scheduler: Any,
    generator: torch.Generator,
    order_generator: torch.Generator,
) -> None:
    """Put a checkpoint's weights, optimizer, schedule and RNG states back in place."""
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    flat = load_file(str(state.folder / "adapter.safetensors"))
    for owner, module in modules.items():
        prefix = f"{owner}."
        part = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        if not part:
            raise TrainingError(f"The checkpoint {state.folder} has no weights for {owner}.")
        result = set_peft_model_state_dict(module, part)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise TrainingError(
                f"The checkpoint {state.folder} does not fit this model ({len(unexpected)} "
                f"unexpected tensors, e.g. {unexpected[0]})."
            )
    optimizer.load_state_dict(torch.load(state.folder / "optimizer.pt", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(state.folder / "scheduler.pt", weights_only=False))
    rng = torch.load(state.folder / "rng.pt", weights_only=False)
    generator.set_state(rng["generator"])
    order_generator.set_state(rng["order_generator"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _float_rates(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's or scheduler's state with plain-number learning rates.

    A run replayed from CUDA graphs keeps its rates in GPU tensors (graphs.py); its
    checkpoint must resume on any device and without graphs, so they are saved as numbers.
    """
    import torch

    def plain(value: Any) -> Any:
        return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value

    state = dict(state)
    if "param_groups" in state:
        state["param_groups"] = [
            {k: plain(v) if k in ("lr", "initial_lr") else v for k, v in group.items()}
            for group in state["param_groups"]
        ]
    if "_last_lr" in state:
        state["_last_lr"] = [plain(v) for v in state["_last_lr"]]
    return state
