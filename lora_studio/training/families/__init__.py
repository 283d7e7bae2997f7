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
    ModelFamily.SDXL: "lora_studio.training.families.sdxl:SDXLFamily",
    ModelFamily.SD3: "lora_studio.training.families.sd3:SD3Family",
    ModelFamily.FLUX: "lora_studio.training.families.flux:FluxFamily",
}


def _load(family: ModelFamily) -> type | None:
    import importlib

    module_name, _, class_name = _REGISTRY[family].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # this family's module is not written yet
            return None
        raise
    return getattr(module, class_name)  # type: ignore[no-any-return]


def get_family(family: ModelFamily) -> Family:
    """The :class:`Family` implementation for ``family``."""
    cls = _load(family)
    if cls is None:
        available = ", ".join(f.label for f in supported_families())
        raise ModelError(
            f"Training {family.label} LoRAs locally is not supported yet (available: {available})."
        )
    return cls()  # type: ignore[no-any-return]


def supported_families() -> list[ModelFamily]:
    return [family for family in _REGISTRY if _load(family) is not None]
