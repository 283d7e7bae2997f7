"""What a backend is asked to do: :class:`TrainingRequest`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset


@dataclass(frozen=True)
class TrainingRequest:
    """A snapshot of everything one training run needs.

    The dataset is a copy taken when the run is submitted, so caption edits made while it
    trains do not change what it trains on.
    """

    dataset: Dataset
    config: LoraConfig
    base_model: str
    output_dir: Path
    #: a checkpoint folder (or a run's ``<name>-checkpoints`` folder) to continue from.
    resume_from: Path | None = None

    @property
    def output_name(self) -> str:
        return self.config.name

    @property
    def output_path(self) -> Path:
        """Where the kohya-format LoRA is written."""
        return self.output_dir / f"{self.config.name}.safetensors"
