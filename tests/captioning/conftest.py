"""Fixtures for the captioning tests: loopback servers, small colour datasets, and the
tiny BLIP / BLIP-2 models (built once per session)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from caption_servers import Handler, LoopbackServer, write_images


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], LoopbackServer]]:
    """``serve(handler)`` starts a loopback server; all are stopped after the test."""
    started: list[LoopbackServer] = []

    def start(handler: Handler) -> LoopbackServer:
        server = LoopbackServer(handler).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def colour_dataset(tmp_path: Path) -> Path:
    """Three images (red, green, blue); green already has a caption."""
    return write_images(
        tmp_path / "ds",
        {"red.png": "red", "green.png": "green", "blue.png": "blue"},
        {"green.png": "my own green caption"},
    )


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lora_studio.captioning.tiny import make_tiny_blip

    return make_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lora_studio.captioning.tiny import make_tiny_blip2

    return make_tiny_blip2(tmp_path_factory.mktemp("models") / "tiny-blip2")
