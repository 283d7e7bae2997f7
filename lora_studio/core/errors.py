"""The exceptions LoRA Studio raises on purpose.

Every one carries a message written for the user: the GUI shows ``str(error)`` in the
window and the CLI prints it as one line. Anything else that escapes is a bug.

    LoraStudioError
     ├── ConfigError        a setting is out of range or a config file is unreadable
     ├── DatasetError       no images, unreadable folder, bad manifest
     ├── CaptionError       a caption could not be saved
     ├── ModelError         the base model is missing, incomplete or of an unsupported family
     ├── OutputError        the output folder cannot be written
     ├── BackendError       a training backend refused or failed a request
     └── TrainingError      training itself failed
          └── TrainingCancelled   the user stopped it
"""

from __future__ import annotations


class LoraStudioError(Exception):
    """Base class; ``str(error)`` is a message for the user."""


class ConfigError(LoraStudioError):
    """A configuration value is invalid or a config file cannot be read."""


class DatasetError(LoraStudioError):
    """A dataset cannot be opened or used."""


class CaptionError(LoraStudioError):
    """A caption could not be written."""


class ModelError(LoraStudioError):
    """The base model cannot be found or used."""


class OutputError(LoraStudioError):
    """The output location cannot be written."""


class BackendError(LoraStudioError):
    """A training backend failed."""


class TrainingError(LoraStudioError):
    """Training failed."""


class TrainingCancelled(TrainingError):
    """The user cancelled the training run."""
