"""Keeps the garbage collector's full passes out of the way of a window that holds a
big dataset.

CPython's cyclic garbage collector now and then walks *every* object it tracks (a
generation-2 pass), holding the GIL all the while, on whichever thread happened to
allocate. With a 10,000-image dataset, its model and views, and torch imported, one
pass took 110-140 ms on a 2-core machine, found nothing to free, and was the longest
stall of the window's thread while scrolling the browser (measured in
``benchmarks/bench_browser.py``, see docs/benchmarks.md).

:func:`settle` calls :func:`gc.freeze` right after the heap has grown by things that
live long (the start-up's imports, a dataset just loaded): what is alive then moves to a
permanent generation that later passes skip, so they stay as short as the newer part of
the heap. Frozen objects are still freed as soon as nothing refers to them (reference
counting); only garbage *cycles* among them would wait, so each settle first collects the
cycles made since the last one (reopening a folder keeps the frozen count flat:
``tests/gui/test_heap.py``).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle(reason: str, *, collect: bool = True) -> None:
    """Take everything alive now out of future full collections (see the module
    docstring); ``reason`` is for the debug log.

    First, with ``collect``, a full collection frees the garbage cycles made since the
    last settle, so they are not frozen with the rest (it walks only the objects made
    since then: 5-9 ms after a 10,000-image dataset loads). Without ``collect``, only
    the young generations are collected (for start-up, whose objects are nearly all
    alive)."""
    gc.collect() if collect else gc.collect(1)
    gc.freeze()
    if log.isEnabledFor(logging.DEBUG):  # (counting them walks them all)
        log.debug("Heap settled after %s: %d objects frozen", reason, gc.get_freeze_count())


__all__ = ["settle"]
