"""Training backends behind one Protocol (see :mod:`lora_studio.backends.base`)."""

from __future__ import annotations

from lora_studio.backends.base import (
    BackendConfig,
    BackendStatus,
    TrainingBackend,
    create_backend,
)
from lora_studio.backends.local import LocalBackend
from lora_studio.core.jobs import BackendType

__all__ = [
    "BackendConfig",
    "BackendStatus",
    "BackendType",
    "LocalBackend",
    "TrainingBackend",
    "create_backend",
]
