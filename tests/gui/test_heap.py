"""The heap is settled (``gc.freeze``) after a dataset loads, and reopening one does not
pile up frozen objects: a dataset's objects hold no reference cycles, so the old one is
freed when the new one replaces it (see ``lora_studio.gui.heap``)."""

from __future__ import annotations

import gc

import pytest
from gui_helpers import open_and_wait
from image_factory import tile_folder

pytestmark = pytest.mark.usefixtures("built_tiny_model")


def test_reopening_a_dataset_keeps_the_frozen_heap_flat(make_window, qloop, tmp_path):
    folder = tile_folder(tmp_path / "many", 400, captions=True)
    window = make_window()
    before = gc.get_freeze_count()
    open_and_wait(qloop, window, folder)
    assert gc.get_freeze_count() > before + 400, "the loaded dataset was settled"
    open_and_wait(qloop, window, folder)
    settled = gc.get_freeze_count()
    for _ in range(3):
        open_and_wait(qloop, window, folder)
    # Each open frees the last dataset (thousands of objects for 400 images) and settles
    # the new one: the frozen count stays flat, give or take a few dozen objects (without
    # the collection before each freeze it grew by about one object per image and open).
    assert gc.get_freeze_count() - settled < 400
