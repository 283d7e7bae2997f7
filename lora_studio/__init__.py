"""LoRA Studio: make LoRA adapters for image-diffusion models.

The programmatic entry point is :class:`lora_studio.creator.LoraCreator`; the desktop app
lives in :mod:`lora_studio.gui` and the command line in :mod:`lora_studio.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"
