"""The domain: configs, datasets, jobs and estimates. No Qt and no torch here."""

from __future__ import annotations

from lora_studio.core.base_model import DEFAULT_BASE_MODEL, BaseModelRef, resolve_base_model
from lora_studio.core.config import (
    PRESETS,
    LoraConfig,
    LrScheduler,
    MixedPrecision,
    ModelFamily,
)
from lora_studio.core.dataset import Dataset, DatasetBuilder, DatasetStats, ImageItem
from lora_studio.core.errors import (
    BackendError,
    CaptionError,
    ConfigError,
    DatasetError,
    LoraStudioError,
    ModelError,
    OutputError,
    TrainingCancelled,
    TrainingError,
)
from lora_studio.core.estimates import Estimate, StepPlan, estimate, plan_steps
from lora_studio.core.jobs import BackendType, Job, JobStatus, JobStore, Progress
from lora_studio.core.request import TrainingRequest

__all__ = [
    "DEFAULT_BASE_MODEL",
    "PRESETS",
    "BackendError",
    "BackendType",
    "BaseModelRef",
    "CaptionError",
    "ConfigError",
    "Dataset",
    "DatasetBuilder",
    "DatasetError",
    "DatasetStats",
    "Estimate",
    "ImageItem",
    "Job",
    "JobStatus",
    "JobStore",
    "LoraConfig",
    "LoraStudioError",
    "LrScheduler",
    "MixedPrecision",
    "ModelError",
    "ModelFamily",
    "OutputError",
    "Progress",
    "StepPlan",
    "TrainingCancelled",
    "TrainingError",
    "TrainingRequest",
    "estimate",
    "plan_steps",
    "resolve_base_model",
]
