"""CLI subcommands that live in their own modules.

Each module has ``register(subparsers)`` (adds its parser, with ``set_defaults(run=...)``)
and a ``run(args) -> int``; :mod:`lora_studio.cli` calls ``register`` for every module
listed in :data:`DATASET_COMMANDS` under ``lora-studio dataset``, and
``register_top_level(subparsers)`` for the modules in :data:`TOP_LEVEL_COMMANDS` (their
commands sit beside ``train``).
"""

from __future__ import annotations

#: modules whose commands appear under ``lora-studio dataset``.
DATASET_COMMANDS: tuple[str, ...] = (
    "dataset_frames",
    "dataset_prepare",
    "dataset_validate",
    "dataset_export",
)

#: modules whose commands sit at the top level (``lora-studio jobs ...``).
TOP_LEVEL_COMMANDS: tuple[str, ...] = ("jobs", "caption", "lora", "config_files")
