"""Model families, one module each, picked through a registry (as peft registers methods).

A family knows how to load its components, which modules get LoRA layers, how to turn
captions into conditioning, its noise objective and its kohya key prefixes. The trainer
only talks to the :class:`Family` interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_studio.core.config import ModelFamily
from lora_studio.core.errors import ModelError

if TYPE_CHECKING:
    from lora_studio.training.families.base import Family

_REGISTRY: dict[ModelFamily, str] = {
    ModelFamily.SD15: "lora_studio.training.families.sd15:SD15Family",
}


def get_family(family: ModelFamily) -> Family:
    """The :class:`Family` implementation for ``family``."""
    import importlib

    target = _REGISTRY.get(family)
    if target is None:
        available = ", ".join(f.label for f in _REGISTRY)
        raise ModelError(
            f"Training {family.label} LoRAs locally is not supported yet (available: "
            f"{available}). Choose an SD 1.5 base model."
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls()  # type: ignore[no-any-return]


def supported_families() -> list[ModelFamily]:
    return list(_REGISTRY)
