"""``lora-studio train --backend comfyui|replicate``: the command line against the loopback
stand-ins (tests/backends/comfyui_server.py, replicate_server.py).

The CLI runs its own event loop (``asyncio.run``), so each stand-in serves from a loop on a
thread of its own here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from comfyui_server import FakeComfyUI
from replicate_server import ACCOUNT, FLUX_TRAINER, TOKEN, ReplicateStandIn, closed_port
from safetensors import safe_open

from lora_studio.cli import main
from lora_studio.core.jobs import BackendType, JobStatus, JobStore
from lora_studio.core.paths import job_db_path

T = TypeVar("T")
DESTINATION = f"{ACCOUNT}/papercut-flux"


class LoopThread:
    """An asyncio loop on a daemon thread, for servers the CLI's own loop talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token comes from REPLICATE_API_TOKEN when a test sets it; never the real keyring."""
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    import keyring

    monkeypatch.setattr(keyring, "get_password", lambda *_: None)


@pytest.fixture
def replicate(loop_thread: LoopThread) -> Iterator[ReplicateStandIn]:
    server = loop_thread.run(lambda: ReplicateStandIn(steps_per_poll=4).start())
    yield server
    loop_thread.run(server.close)


def _replicate_args(dataset: Path, server: ReplicateStandIn, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(dataset),
        "--backend",
        "replicate",
        "--backend-url",
        server.api_url,
        "--destination",
        DESTINATION,
        "--trigger-word",
        "pcstyle",
        "--max-steps",
        "8",
        "--poll-interval",
        "0.01",
        "--output",
        str(out),
        *extra,
    ]


def test_train_on_replicate_from_the_command_line(
    small_dataset: Path, replicate: ReplicateStandIn, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    out = tmp_path / "out"
    assert main(_replicate_args(small_dataset, replicate, out, "--name", "papercut")) == 0
    captured = capsys.readouterr()
    lora = Path(captured.out.strip().splitlines()[-1])
    assert lora.parent == out and lora.suffix == ".safetensors"
    with safe_open(str(lora), "pt") as f:
        assert list(f.keys())
    # the same progress display as local runs (on stderr), ending at the last step
    assert "8/8" in captured.err
    assert "Traceback" not in captured.err

    (training,) = replicate.trainings.values()
    assert training["model"] == FLUX_TRAINER and training["destination"] == DESTINATION
    assert training["input"]["trigger_word"] == "pcstyle" and training["input"]["steps"] == 8
    # every API call carried the token from the environment; the file host got none
    api = {auth for route, *_, auth in replicate.requests if route != "weights"}
    assert api == {f"Bearer {TOKEN}"}
    assert {auth for route, *_, auth in replicate.requests if route == "weights"} == {None}

    # the run is in the history, with the remote id and the cost
    store = JobStore(job_db_path())
    try:
        (job,) = store.list()
    finally:
        store.close()
    assert job.backend is BackendType.REPLICATE and job.status is JobStatus.SUCCEEDED
    assert job.remote_id == training["id"] and job.cost is not None and job.cost > 0

    assert main(["jobs", "list"]) == 0
    assert job.id in capsys.readouterr().out


def test_estimate_only_prints_the_cost_and_trains_nothing(
    small_dataset: Path, replicate: ReplicateStandIn, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)
    args = _replicate_args(small_dataset, replicate, tmp_path / "out", "--estimate-only")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "$" in out and "H100" in out.upper()
    assert replicate.trainings == {} and replicate.files == {}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_wrong_token_says_check_your_replicate_token(
    small_dataset: Path, replicate: ReplicateStandIn, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_wrong")
    assert main(_replicate_args(small_dataset, replicate, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "check your Replicate token" in err
    assert "Traceback" not in err
    assert replicate.trainings == {}


def test_no_token_at_all_is_a_clear_message(
    small_dataset: Path, replicate: ReplicateStandIn, tmp_path: Path, capsys
) -> None:
    assert main(_replicate_args(small_dataset, replicate, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "REPLICATE_API_TOKEN" in err and "Traceback" not in err


@pytest.fixture
def comfy(loop_thread: LoopThread, tmp_path: Path) -> Iterator[FakeComfyUI]:
    server = FakeComfyUI(tmp_path / "comfy", generation="new", step_delay=0.005)
    loop_thread.run(server.start)
    yield server
    loop_thread.run(server.stop)


def test_train_on_comfyui_from_the_command_line(
    small_dataset: Path, comfy: FakeComfyUI, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = [
        "train",
        str(small_dataset),
        "--backend",
        "comfyui",
        "--backend-url",
        comfy.url,
        "--checkpoint",
        "v1-5-pruned-emaonly.safetensors",
        "--rank",
        "4",
        "--max-steps",
        "6",
        "--name",
        "papercut",
        "--poll-interval",
        "0.05",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    lora = Path(captured.out.strip().splitlines()[-1])
    assert lora == out / "papercut.safetensors" and lora.is_file()
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
        metadata: dict[str, Any] = f.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert metadata["ss_network_dim"] == "4"
    assert "6/6" in captured.err and "Traceback" not in captured.err
    (graph,) = comfy.prompts.values()
    train = next(n for n in graph.values() if n["class_type"] == "TrainLoraNode")
    assert train["inputs"]["steps"] == 6


def test_a_comfyui_server_that_is_not_there_is_a_clear_message(
    small_dataset: Path, tmp_path: Path, capsys
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    args = ["train", str(small_dataset), "--backend", "comfyui", "--backend-url", url]
    args += ["--checkpoint", "v1-5-pruned-emaonly.safetensors"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert url in err and "Traceback" not in err


def test_comfyui_needs_its_url(small_dataset: Path, capsys) -> None:
    assert main(["train", str(small_dataset), "--backend", "comfyui"]) != 0
    err = capsys.readouterr().err
    assert "URL" in err and "Traceback" not in err


def test_comfyui_needs_a_checkpoint_of_the_server(small_dataset: Path, capsys) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["train", str(small_dataset), "--backend", "comfyui", "--backend-url", url]) == 1
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "Traceback" not in err
