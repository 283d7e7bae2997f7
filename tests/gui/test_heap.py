"""The heap is settled (``gc.freeze``) after a dataset loads, and reopening one does not
pile up frozen objects: the old dataset is freed when the new one replaces it, and the
garbage cycles made since the last settle are collected first (see
``lora_studio.gui.heap``)."""

from __future__ import annotations

import gc
import weakref

import pytest
from gui_helpers import open_validated
from image_factory import tile_folder

pytestmark = pytest.mark.usefixtures("built_tiny_model")

IMAGES = 900  # under the helper process's threshold: the check runs on threads here


def test_reopening_a_dataset_keeps_the_frozen_heap_flat(make_window, qloop, tmp_path):
    folder = tile_folder(tmp_path / "many", IMAGES, side=16, captions=True)
    window = make_window()
    before = gc.get_freeze_count()
    open_validated(qloop, window, folder)
    assert gc.get_freeze_count() > before + IMAGES, "the loaded dataset was settled"
    open_validated(qloop, window, folder)
    settled = gc.get_freeze_count()
    for _ in range(4):
        open_validated(qloop, window, folder)
    # Each open frees the last dataset (thousands of objects) and settles the new one:
    # what stays frozen grows by far less than one object per image and open (without
    # the collection before each freeze it grew by about that much).
    assert gc.get_freeze_count() - settled < IMAGES


class _Node:
    """An object that refers to itself: garbage only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


def test_garbage_cycles_are_freed_not_frozen(make_window, qloop, tmp_path):
    """Cycles that aged into the oldest generation and then became garbage are collected
    when a dataset settles the heap, not frozen with the live objects for good."""
    folder = tile_folder(tmp_path / "few", 20, side=16)
    window = make_window()
    nodes = [_Node() for _ in range(200)]
    gc.collect()  # they survive it: now in the oldest generation
    watch = [weakref.ref(node) for node in nodes]
    del nodes  # garbage now, but cyclic: reference counting cannot free it
    assert all(ref() is not None for ref in watch)
    open_validated(qloop, window, folder)
    assert all(ref() is None for ref in watch), "freed before the freeze"
