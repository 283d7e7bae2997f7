"""Work-around for a reference-counting bug in PySide6 6.12 on Python < 3.12.

PySide6 6.12.0 drops one reference to a shared singleton in two very common paths:

* ``SignalInstance.emit()`` returns ``True`` without taking a reference for it;
* a Python ``data()``/``headerData()`` override that returns ``None`` (the "no value"
  answer Qt asks for constantly) loses a reference to ``None`` on the way to C++.

On Python 3.12+ ``True``/``False``/``None`` are immortal, so nothing happens (which is
probably why it went unnoticed). On 3.10/3.11 their counts reach zero after a few hundred
signal emissions or repaints and the interpreter aborts with "Fatal Python error:
bool_dealloc / none_dealloc" - qasync alone emits a signal for every cross-thread
callback. PySide6 6.11 does not have the bug.

:func:`apply` checks for the bug once and, only if it is there, gives the three
singletons the same "never freed" reference count Python 3.12 gives them. Singletons are
never freed anyway, so this changes nothing else.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable

from PySide6 import __version__ as PYSIDE_VERSION
from PySide6.QtCore import (
    QAbstractListModel,
    QIdentityProxyModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)

log = logging.getLogger(__name__)

_PROBES = 64
# Far more references than any process lives to drop, far from overflowing Py_ssize_t.
_PIN = 1 << 40
_applied = False


class _EmitProbe(QObject):
    ping = Signal()


class _NoneProbe(QAbstractListModel):
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else 1

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> None:
        return None


def _drops(obj: object, action: Callable[[], object]) -> bool:
    before = sys.getrefcount(obj)
    for _ in range(_PROBES):
        action()
    # Other threads may move the count a little; the bug moves it by one per call.
    return before - sys.getrefcount(obj) >= _PROBES // 2


def binding_drops_references() -> bool:
    """``True`` if this PySide6 loses references to ``True``/``None`` (see module doc)."""
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False  # immortal singletons: a lost reference is harmless
    emitter = _EmitProbe()
    emitter.ping.connect(_noop)
    model = _NoneProbe()
    proxy = QIdentityProxyModel()
    proxy.setSourceModel(model)
    index = proxy.index(0, 0)
    drops_true = _drops(True, emitter.ping.emit)
    drops_none = _drops(None, lambda: proxy.data(index))
    if drops_true:
        _give(True, _PROBES)  # pay back what the probe itself cost
    if drops_none:
        _give(None, _PROBES)
    return drops_true or drops_none


def _noop() -> None:
    pass


def _give(obj: object, count: int) -> None:
    # CPython (< 3.12) keeps ob_refcnt, a Py_ssize_t, first in every object.
    ctypes.c_ssize_t.from_address(id(obj)).value += count


def apply() -> bool:
    """Protect ``True``/``False``/``None`` if the binding has the bug; ``True`` if it did.

    Safe to call more than once (it acts once).
    """
    global _applied
    if _applied:
        return True
    if not binding_drops_references():
        return False
    for singleton in (True, False, None):
        _give(singleton, _PIN)
    _applied = True
    # Usually runs before logging is configured; app.run_gui logs describe() again later.
    log.debug(describe())
    return True


def applied() -> bool:
    """Whether :func:`apply` found the bug and worked around it."""
    return _applied


def describe() -> str:
    return (
        f"PySide6 {PYSIDE_VERSION} on Python {sys.version_info[0]}.{sys.version_info[1]} "
        f"loses references to True/None; applied the work-around (PySide6 6.11 or Python "
        f"3.12+ do not need it)."
    )
