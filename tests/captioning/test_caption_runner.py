"""The batch run: modes, sinks, concurrency, cancelling, progress, image decoding."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
from caption_servers import COLOURS, Reply, ollama_native, write_images
from PIL import Image

from lora_studio.captioning.ollama import OllamaProvider
from lora_studio.captioning.postprocess import CaptionMode, PostProcessOptions
from lora_studio.captioning.runner import (
    CaptionProgress,
    CaptionRun,
    ResultStatus,
    RunOptions,
    RunState,
    StoreSink,
    load_image,
)
from lora_studio.core.dataset import Dataset
from lora_studio.core.proposals import ProposalStore

TRIGGER = PostProcessOptions(trigger_word="sks")


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


@pytest.fixture
def ollama(serve):
    server = serve(ollama_native(text="there is a {colour} square"))
    provider = OllamaProvider(base_url=server.url, concurrency=2)
    yield server, provider


async def test_fill_proposes_only_uncaptioned_images(ollama, colour_dataset: Path) -> None:
    server, provider = ollama
    dataset = Dataset.open(colour_dataset)
    store = ProposalStore(dataset)
    run = CaptionRun(provider, dataset, RunOptions(postprocess=TRIGGER), sink=StoreSink(store))
    report = await run.run()
    assert report.state is RunState.FINISHED
    assert [r.name for r in report.skipped] == ["green.png"]
    proposals = store.proposals()
    assert {k: p.text for k, p in proposals.items()} == {
        "red.png": "sks, a red square",
        "blue.png": "sks, a blue square",
    }
    assert proposals["red.png"].provider == "ollama" and proposals["red.png"].model == "llava"
    assert proposals["red.png"].mode == "fill" and proposals["red.png"].previous is None
    assert len(server.requests) == 2
    assert not (colour_dataset / "red.txt").exists()  # proposals only


async def test_overwrite_and_append_record_the_previous_caption(ollama, colour_dataset) -> None:
    _server, provider = ollama
    dataset = Dataset.open(colour_dataset)
    store = ProposalStore(dataset)
    await CaptionRun(
        provider, dataset, RunOptions(mode=CaptionMode.APPEND), sink=StoreSink(store)
    ).run()
    green = store.proposals()["green.png"]
    assert green.text == "my own green caption, a green square"
    assert green.previous == "my own green caption" and green.mode == "append"
    await CaptionRun(
        provider, dataset, RunOptions(mode=CaptionMode.OVERWRITE), sink=StoreSink(store)
    ).run()
    green = store.proposals()["green.png"]
    assert green.text == "a green square" and green.mode == "overwrite"
    assert green.previous == "my own green caption"


async def test_write_sink_writes_captions_and_provenance(ollama, colour_dataset: Path) -> None:
    _server, provider = ollama
    dataset = Dataset.open(colour_dataset)
    sink = StoreSink(ProposalStore(dataset), write=True)
    report = await CaptionRun(
        provider, dataset, RunOptions(mode=CaptionMode.OVERWRITE), sink=sink
    ).run()
    assert set(report.sink_report.accepted) == {"red.png", "green.png", "blue.png"}
    assert (colour_dataset / "red.txt").read_text(encoding="utf-8") == "a red square\n"
    assert (colour_dataset / "green.txt").read_text(encoding="utf-8") == "a green square\n"
    data = _manifest(colour_dataset)
    assert "proposals" not in data
    assert data["provenance"]["green.png"]["previous"] == "my own green caption"
    assert data["provenance"]["green.png"]["provider"] == "ollama"


async def test_append_that_adds_nothing_is_unchanged(ollama, tmp_path: Path) -> None:
    _server, provider = ollama
    folder = write_images(tmp_path / "d", {"red.png": "red"}, {"red.png": "A Red Square"})
    dataset = Dataset.open(folder)
    store = ProposalStore(dataset)
    report = await CaptionRun(
        provider, dataset, RunOptions(mode=CaptionMode.APPEND), sink=StoreSink(store)
    ).run()
    assert report.results[0].status is ResultStatus.UNCHANGED
    assert store.proposals() == {}


async def test_concurrency_is_limited_per_provider(serve, tmp_path: Path) -> None:
    server = serve(ollama_native())
    folder = write_images(tmp_path / "d", {f"{n}.png": "red" for n in range(8)})
    server.script(*[Reply(200, _ok(), delay=0.15)] * 8)
    provider = OllamaProvider(base_url=server.url, concurrency=8)
    report = await CaptionRun(provider, Dataset.open(folder), RunOptions(concurrency=3)).run()
    assert len(report.captioned) == 8
    assert server.max_active == 3


async def test_the_providers_default_concurrency_applies(serve, tmp_path: Path) -> None:
    server = serve(ollama_native())
    folder = write_images(tmp_path / "d", {f"{n}.png": "blue" for n in range(4)})
    server.script(*[Reply(200, _ok(), delay=0.1)] * 4)
    provider = OllamaProvider(base_url=server.url)  # Ollama: one at a time
    await CaptionRun(provider, Dataset.open(folder)).run()
    assert server.max_active == 1


def _ok() -> dict:
    return {"model": "llava", "response": "a square", "done": True}


async def test_stop_mid_batch_keeps_what_was_done(serve, tmp_path: Path) -> None:
    server = serve(ollama_native())
    folder = write_images(tmp_path / "d", {f"{n}.png": "red" for n in range(6)})
    server.script(*[Reply(200, _ok(), delay=0.1)] * 2, *[Reply(200, _ok(), delay=10)] * 4)
    dataset = Dataset.open(folder)
    store = ProposalStore(dataset)
    run: CaptionRun

    def on_progress(progress: CaptionProgress) -> None:
        if progress.done == 2:
            run.stop()

    run = CaptionRun(
        OllamaProvider(base_url=server.url),
        dataset,
        RunOptions(concurrency=1),
        sink=StoreSink(store),
        on_progress=on_progress,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await run.run()
    assert loop.time() - started < 3  # the in-flight request was cancelled, not awaited
    assert report.state is RunState.CANCELLED
    assert len(report.captioned) == 2 and len(report.cancelled) == 4
    assert sorted(store.proposals()) == ["0.png", "1.png"]


async def test_cancelling_the_task_keeps_what_was_done(serve, tmp_path: Path) -> None:
    server = serve(ollama_native())
    folder = write_images(tmp_path / "d", {f"{n}.png": "red" for n in range(5)})
    server.script(*[Reply(200, _ok())] * 2, *[Reply(200, _ok(), delay=10)] * 3)
    dataset = Dataset.open(folder)
    store = ProposalStore(dataset)
    run = CaptionRun(
        OllamaProvider(base_url=server.url),
        dataset,
        RunOptions(concurrency=1),
        sink=StoreSink(store),
    )
    task = asyncio.ensure_future(run.run())
    while len(server.requests) < 3:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    report = run.report()
    assert report.state is RunState.CANCELLED and len(report.captioned) == 2
    assert sorted(store.proposals()) == ["0.png", "1.png"]  # the sink was flushed


async def test_progress_is_frozen_counts_up_and_ends_final(ollama, tmp_path: Path) -> None:
    _server, provider = ollama
    folder = write_images(tmp_path / "d", {f"{n}.png": "green" for n in range(5)})
    seen: list[CaptionProgress] = []
    report = await CaptionRun(provider, Dataset.open(folder), on_progress=seen.append).run()
    assert report.state is RunState.FINISHED
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].done = 3  # type: ignore[misc]
    done = [p.done for p in seen]
    assert done == sorted(done) and done[-1] == 5 and seen[-1].total == 5
    assert seen[-1].state is RunState.FINISHED and seen[-1].fraction == 1.0
    finished = [p for p in seen if p.result is not None]
    assert len(finished) == 5 and all(p.images_per_s for p in finished)
    assert finished[-1].eta_s == 0.0 and finished[0].eta_s is not None


async def test_stream_yields_progress_and_breaking_out_stops_the_run(serve, tmp_path) -> None:
    server = serve(ollama_native())
    folder = write_images(tmp_path / "d", {f"{n}.png": "red" for n in range(6)})
    server.script(*[Reply(200, _ok(), delay=0.05)] * 6)
    run = CaptionRun(OllamaProvider(base_url=server.url), Dataset.open(folder))
    async with contextlib.aclosing(run.stream()) as events:
        async for progress in events:
            if progress.done == 2:
                break
    assert run.state is RunState.CANCELLED
    assert len(run.report().captioned) == 2

    whole = CaptionRun(OllamaProvider(base_url=server.url), Dataset.open(folder))
    events = [p async for p in whole.stream()]
    assert events[-1].state is RunState.FINISHED and events[-1].done == 6


async def test_a_broken_image_fails_alone(ollama, tmp_path: Path) -> None:
    _server, provider = ollama
    folder = write_images(tmp_path / "d", {"a.png": "red", "c.png": "blue"})
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    report = await CaptionRun(provider, Dataset.open(folder)).run()
    assert [r.name for r in report.captioned] == ["a.png", "c.png"]
    (broken,) = report.failed
    assert broken.name == "b.png" and "cannot be decoded" in broken.error
    assert broken.attempts == 0


async def test_an_empty_caption_is_a_failure(serve, tmp_path: Path) -> None:
    server = serve(ollama_native(text="  "))
    folder = write_images(tmp_path / "d", {"a.png": "red"})
    report = await CaptionRun(OllamaProvider(base_url=server.url), Dataset.open(folder)).run()
    assert "empty caption" in report.failed[0].error


async def test_only_the_chosen_paths_are_captioned(ollama, colour_dataset: Path) -> None:
    _server, provider = ollama
    dataset = Dataset.open(colour_dataset)
    report = await CaptionRun(
        provider,
        dataset,
        RunOptions(mode=CaptionMode.OVERWRITE),
        paths=["red.png", colour_dataset / "blue.png"],
    ).run()
    assert sorted(r.name for r in report.results) == ["blue.png", "red.png"]


async def test_a_caption_written_meanwhile_is_not_filled(ollama, colour_dataset: Path) -> None:
    _server, provider = ollama
    dataset = Dataset.open(colour_dataset)  # red has no caption yet
    (colour_dataset / "red.txt").write_text("typed by the user just now", encoding="utf-8")
    report = await CaptionRun(provider, dataset).run()
    assert {r.name for r in report.skipped} == {"green.png", "red.png"}
    assert [r.name for r in report.captioned] == ["blue.png"] and report.results


def test_images_are_decoded_upright_on_white_and_downscaled(tmp_path: Path) -> None:
    from image_factory import gray16, rotated_jpeg, transparent_rgba

    rotated = rotated_jpeg(tmp_path / "rot.jpg", size=(640, 480))
    upright = load_image(rotated, max_side=200)
    assert upright.size == (150, 200) and upright.mode == "RGB"  # portrait, as displayed

    transparent_rgba((64, 64)).save(tmp_path / "t.png")
    flat = load_image(tmp_path / "t.png")
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 0, 0)
    assert flat.getpixel((63, 0)) == (255, 255, 255)  # transparent: white, not black

    gray16((40, 40), value=65535).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").getpixel((1, 1)) == (255, 255, 255)

    Image.new("CMYK", (50, 30), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = load_image(tmp_path / "c.jpg").getpixel((25, 15))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    from lora_studio.captioning.base import ImageUnreadable

    with pytest.raises(ImageUnreadable, match="no longer exists"):
        load_image(tmp_path / "nope.png")


async def test_a_run_runs_once(ollama, colour_dataset: Path) -> None:
    _server, provider = ollama
    run = CaptionRun(provider, Dataset.open(colour_dataset))
    await run.run()
    with pytest.raises(RuntimeError, match="once"):
        await run.run()


def test_colours_fixture_is_distinct() -> None:
    assert len(set(COLOURS.values())) == 3
