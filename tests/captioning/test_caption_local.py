"""Local BLIP and BLIP-2: tiny random models built here, loaded through the real offline
loading code (a folder, and an id in a Hugging Face cache), generating on the CPU."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from caption_servers import write_images
from PIL import Image

from lora_studio.captioning.base import ModelNotFound
from lora_studio.captioning.local import LocalBlipProvider, resolve_caption_model
from lora_studio.captioning.postprocess import CaptionMode
from lora_studio.captioning.registry import create_provider
from lora_studio.captioning.runner import CaptionRun, RunOptions, RunState, StoreSink
from lora_studio.core.dataset import Dataset
from lora_studio.core.proposals import ProposalStore

IMAGES = [Image.new("RGB", (80, 64), colour) for colour in ((200, 20, 20), (20, 20, 200))]


async def test_tiny_blip_captions_a_batch_on_the_cpu(tiny_blip: Path) -> None:
    provider = LocalBlipProvider(tiny_blip, kind="blip", max_new_tokens=8, num_beams=1)
    captions = await provider.caption_batch(IMAGES)
    assert provider.device == "cpu" and provider.loaded
    assert len(captions) == 2 and all(c.text.strip() for c in captions)
    assert captions[0].provider == "blip" and captions[0].model == str(tiny_blip)
    assert provider.max_side == 64  # twice the 30-pixel input, at least 64
    conditional = await provider.caption(IMAGES[0], prompt="a photo of")
    assert conditional.text.startswith("a photo of") and conditional.prompt == "a photo of"
    await provider.aclose()
    assert not provider.loaded


def _into_hf_cache(model: Path, cache: Path, repo_id: str) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")


async def test_tiny_blip2_loads_from_the_hf_cache_by_id(
    tiny_blip2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    _into_hf_cache(tiny_blip2, cache, "lora-studio/tiny-blip2")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_caption_model("lora-studio/tiny-blip2", "blip2").parent.parent == (
        cache / "models--lora-studio--tiny-blip2"
    )
    provider = create_provider("blip2", model="lora-studio/tiny-blip2", max_new_tokens=6)
    captions = await provider.caption_batch(IMAGES, prompt="Question: what is it? Answer:")
    assert all(c.text.strip() for c in captions)
    assert not any(c.text.startswith("Question") for c in captions)  # only the answer
    plain = await provider.caption(IMAGES[1])
    assert plain.text.strip() and plain.provider == "blip2"
    await provider.aclose()


async def test_a_model_not_on_disk_says_how_to_fetch_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    provider = LocalBlipProvider(kind="blip")
    with pytest.raises(ModelNotFound) as caught:
        await provider.load()
    message = str(caught.value)
    assert "huggingface-cli download Salesforce/blip-image-captioning-large" in message
    assert "not on this computer" in message and caught.value.fatal


def test_a_folder_of_the_other_kind_or_no_model_is_refused(tiny_blip: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not BLIP-2; use the blip provider"):
        resolve_caption_model(tiny_blip, "blip2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_caption_model(tmp_path / "empty", "blip")
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_caption_model(tmp_path / "nowhere" / "model", "blip")


async def test_a_batch_run_with_the_local_model(tiny_blip: Path, tmp_path: Path) -> None:
    folder = write_images(
        tmp_path / "d", {"a.png": "red", "b.png": "green", "c.png": "blue"}, {"b.png": "mine"}
    )
    dataset = Dataset.open(folder)
    store = ProposalStore(dataset)
    provider = LocalBlipProvider(tiny_blip, max_new_tokens=6, num_beams=1, batch_size=2)
    report = await CaptionRun(
        provider, dataset, RunOptions(mode=CaptionMode.APPEND), sink=StoreSink(store)
    ).run()
    await provider.aclose()
    assert report.state is RunState.FINISHED and not report.failed
    proposals = store.proposals()
    assert set(proposals) == {"a.png", "b.png", "c.png"}
    assert proposals["b.png"].text.startswith("mine, ")
    assert proposals["a.png"].provider == "blip"


async def test_generation_runs_off_the_loop_and_stops_when_cancelled(tiny_blip: Path) -> None:
    # Long enough to take seconds on a CPU: 8 beams x 6 images x 480 tokens.
    provider = LocalBlipProvider(
        tiny_blip, max_new_tokens=480, min_new_tokens=480, num_beams=8, batch_size=6
    )
    await provider.load()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    clock = asyncio.ensure_future(ticker())
    task = asyncio.ensure_future(provider.caption_batch(IMAGES * 3))
    while not provider._generate_lock.locked():
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)
    assert not task.done() and ticks >= 10  # the event loop kept running meanwhile
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    start = time.monotonic()
    while provider._generate_lock.locked():  # the worker thread finishing its generate()
        await asyncio.sleep(0.005)
    assert time.monotonic() - start < 0.5  # it stopped at its next token
    clock.cancel()
    await provider.aclose()
