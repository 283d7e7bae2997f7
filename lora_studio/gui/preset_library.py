"""The user's saved presets, read and written off the GUI thread.

:class:`PresetLibrary` wraps :mod:`lora_studio.core.user_presets` for the window: it
loads, saves and deletes in worker threads and answers with signals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from lora_studio.core import user_presets
from lora_studio.core.config import LoraConfig
from lora_studio.core.errors import ConfigError


class PresetLibrary(QObject):
    """Signals:
    presets_changed(dict[str, LoraConfig]): the saved presets, name -> config.
    saved(str): the preset of this name was saved (and is in ``presets_changed``).
    message(str, str): a message for the user: level, text.
    """

    presets_changed = Signal(object)
    saved = Signal(str)
    message = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.presets: dict[str, LoraConfig] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _run(self, work: Callable[[], Any], then: Callable[[Any], None]) -> asyncio.Task[None]:
        async def go() -> None:
            try:
                result = await asyncio.to_thread(work)
            except (OSError, ConfigError) as exc:
                text = getattr(exc, "strerror", None) or str(exc)
                self.message.emit("error", f"Presets: {text}")
                return
            then(result)

        task = asyncio.ensure_future(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def load(self) -> asyncio.Task[None]:
        return self._run(user_presets.load_user_presets, self._loaded)

    def save(self, name: str, config: LoraConfig) -> asyncio.Task[None]:
        """Save ``config`` as the preset ``name`` (replacing one of that name)."""

        def work() -> tuple[str, dict[str, LoraConfig]]:
            cleaned = user_presets.check_name(name)
            user_presets.save_user_preset(cleaned, config)
            return cleaned, user_presets.load_user_presets()

        def done(result: tuple[str, dict[str, LoraConfig]]) -> None:
            cleaned, presets = result
            self._loaded(presets)
            self.saved.emit(cleaned)
            self.message.emit("info", f"Saved the preset {cleaned!r}.")

        return self._run(work, done)

    def delete(self, name: str) -> asyncio.Task[None]:
        def work() -> dict[str, LoraConfig]:
            user_presets.delete_user_preset(name)
            return user_presets.load_user_presets()

        def done(presets: dict[str, LoraConfig]) -> None:
            self._loaded(presets)
            self.message.emit("info", f"Deleted the preset {name!r}.")

        return self._run(work, done)

    def _loaded(self, presets: dict[str, LoraConfig]) -> None:
        self.presets = presets
        self.presets_changed.emit(presets)
