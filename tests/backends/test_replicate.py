"""ReplicateBackend against a Replicate stand-in on loopback (tests/backends/replicate_server.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from replicate_server import (
    ACCOUNT,
    FLUX_TRAINER,
    LORA_METADATA,
    LORA_TENSORS,
    PREDICT_TIME,
    SDXL_TRAINER,
    TOKEN,
    TRAINER_VERSIONS,
    Fault,
    ReplicateStandIn,
    closed_port,
)

from lora_studio.backends.base import BackendConfig
from lora_studio.backends.replicate import (
    PRICE_PER_SECOND,
    TRAINERS,
    ReplicateAuthError,
    ReplicateBackend,
    ReplicateError,
    ReplicateNotFound,
    ReplicateProtocolError,
    ReplicateRateLimited,
    ReplicateUnavailable,
    ReplicateWeightsError,
    flux_resolutions,
    parse_training_logs,
)
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import BackendError, DatasetError
from lora_studio.core.jobs import BackendType, Job, JobStatus
from lora_studio.core.request import TrainingRequest

DESTINATION = f"{ACCOUNT}/papercut-flux"


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the token a test passes counts: no environment variable, no real keyring."""
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    import keyring

    monkeypatch.setattr(keyring, "get_password", lambda *_: None)


@pytest.fixture
async def server() -> AsyncIterator[ReplicateStandIn]:
    stand_in = await ReplicateStandIn().start()
    yield stand_in
    await stand_in.close()


Factory = Callable[..., ReplicateBackend]


@pytest.fixture
async def make_backend(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[ReplicateBackend] = []

    def make(url: str, *, token: str | None = TOKEN, **options: object) -> ReplicateBackend:
        config = BackendConfig(
            BackendType.REPLICATE, tmp_path / "out", api_url=url, api_key=token, timeout_s=5
        )
        defaults: dict[str, object] = {
            "destination": DESTINATION,
            "poll_interval": 0.005,
            "max_poll_interval": 0.02,
            "retry_backoff_s": 0.005,
        }
        backend = ReplicateBackend(config, **{**defaults, **options})  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


def _request(folder: Path, out: Path, **changes: object) -> TrainingRequest:
    settings: dict[str, object] = {"name": "papercut", "trigger_word": "pcstyle", "max_steps": 8}
    config = LoraConfig.flux_preset().replace(**{**settings, **changes})
    return _training_request(Dataset.from_directory(folder).snapshot(), config, out)


def _training_request(dataset: Dataset, config: LoraConfig, out: Path) -> TrainingRequest:
    return TrainingRequest(dataset, config, "black-forest-labs/FLUX.1-dev", out)


def _uploaded_zip(server: ReplicateStandIn) -> zipfile.ZipFile:
    (content,) = server.files.values()
    return zipfile.ZipFile(io.BytesIO(content))


# ---- cost ------------------------------------------------------------------------------


def test_cost_is_the_price_table_times_the_trainers_seconds(sample_dataset: Path, tmp_path):
    backend = ReplicateBackend(
        BackendConfig(BackendType.REPLICATE, tmp_path, api_key=TOKEN), destination=DESTINATION
    )
    request = _request(sample_dataset, tmp_path, max_steps=1000, resolution=1024)
    estimate = backend.cost_estimate(request)
    assert estimate is not None
    flux = TRAINERS[FLUX_TRAINER]
    # 1000 steps at the trainer's default 512/768/1024 mix: the reference step exactly
    seconds = flux.setup_s + flux.per_image_s * 12 + flux.step_s * 1000
    assert estimate.seconds == pytest.approx(seconds)
    assert estimate.dollars == pytest.approx(seconds * 0.001525)
    assert (
        estimate.hardware == "gpu-h100"
        and PRICE_PER_SECOND["gpu-h100"].dollars_per_second == 0.001525
    )
    assert 1.5 < estimate.dollars < 2.2  # Replicate: "20 minutes ... about $1.85"
    assert "Nvidia H100" in estimate.describe() and "$0.001525/s" in estimate.describe()
    assert flux_resolutions(1024) == [512, 768, 1024] and flux_resolutions(512) == [512]

    cheaper = backend.cost_estimate(_request(sample_dataset, tmp_path, max_steps=500))
    assert cheaper is not None and cheaper.dollars < estimate.dollars

    sdxl = ReplicateBackend(
        BackendConfig(BackendType.REPLICATE, tmp_path, api_key=TOKEN), trainer=SDXL_TRAINER
    ).cost_estimate(request)
    assert sdxl is not None and sdxl.hardware == "gpu-l40s"
    assert sdxl.dollars == pytest.approx(sdxl.seconds * 0.000975)

    unknown = ReplicateBackend(
        BackendConfig(BackendType.REPLICATE, tmp_path, api_key=TOKEN), hardware="gpu-b200"
    )
    assert unknown.cost_estimate(request) is None


# ---- the whole run ---------------------------------------------------------------------


async def test_full_run_upload_train_follow_download(
    server: ReplicateStandIn, make_backend: Factory, sample_dataset: Path, tmp_path: Path
) -> None:
    (sample_dataset / "notes.env").write_text("SECRET=1\n")  # never leaves the machine
    (sample_dataset / "papercut_01.txt.orig").write_text("old caption\n")
    out = tmp_path / "out"
    backend = make_backend(server.api_url)
    request = _request(sample_dataset, out)

    estimate = await backend.estimate_cost(request)  # shown before the user confirms
    assert estimate is not None and server.requests == []  # no traffic for an estimate
    job = await backend.submit(request)
    assert job.remote_id in server.trainings
    assert job.estimated_cost == pytest.approx(estimate)
    assert job.spec is not None and job.spec.backend_options["destination"] == DESTINATION
    assert job.spec.backend_options["trainer_version"] == TRAINER_VERSIONS[FLUX_TRAINER]

    # the zip: every image with its caption beside it, the trigger word first, nothing else
    archive = _uploaded_zip(server)
    images = sorted(p.name for p in sample_dataset.glob("*.png"))
    expected = sorted(images + [n.replace(".png", ".txt") for n in images])
    assert sorted(archive.namelist()) == expected
    for image in images:
        caption = archive.read(image.replace(".png", ".txt")).decode()
        assert caption.startswith("pcstyle")
        assert archive.read(image) == (sample_dataset / image).read_bytes()
    assert archive.read("papercut_01.txt").decode().startswith("pcstyle, papercut style")
    assert archive.read("papercut_11.txt").decode() == "pcstyle"  # uncaptioned image

    # the trainer version resolved, the destination created, the input mapped
    training = server.trainings[job.remote_id]
    assert training["version"] == TRAINER_VERSIONS[FLUX_TRAINER]
    assert server.created_models == [
        {
            "owner": ACCOUNT,
            "name": "papercut-flux",
            "visibility": "private",
            "hardware": "gpu-t4",
            "description": "LoRA trained with LoRA Studio",
        }
    ]
    assert training["input"] == {
        "input_images": training["input"]["input_images"],
        "trigger_word": "pcstyle",
        "autocaption": False,
        "steps": 8,
        "lora_rank": 16,
        "learning_rate": 4e-4,
        "batch_size": 1,
        "resolution": "512,768,1024",
        "caption_dropout_rate": 0.0,
        "optimizer": "adamw",
        "gradient_checkpointing": False,
    }
    assert all(auth == f"Bearer {TOKEN}" for route, *_, auth in server.requests)

    # progress from the logs
    seen = [p async for p in backend.watch(job)]
    statuses = [p.status for p in seen]
    assert statuses[0] is JobStatus.PREPARING
    assert JobStatus.RUNNING in statuses and JobStatus.SAVING in statuses
    assert statuses[-1] is JobStatus.SUCCEEDED
    running = [p for p in seen if p.status is JobStatus.RUNNING]
    steps = [p.step for p in running]
    assert steps == sorted(steps) and steps[-1] < 8 and running[0].total_steps == 8
    assert running[-1].loss == pytest.approx(0.5 - 0.03 * steps[-1])
    assert running[-1].learning_rate == pytest.approx(4e-4)
    assert running[-1].eta_s is not None and running[-1].samples_per_s == pytest.approx(1 / 1.02)
    assert len(running[-1].loss_history) == steps[-1]
    assert any("flux_train_replicate" in line for line in running[-1].log_tail)
    assert not any("Caching latents" in p.message for p in running)  # not the training bar
    final = seen[-1]
    assert final.step == 8 and final.fraction == 1.0 and final.loss == pytest.approx(0.26)
    assert final.elapsed_s == PREDICT_TIME
    assert job.status is JobStatus.SUCCEEDED
    assert job.cost == pytest.approx(PREDICT_TIME * 0.001525)
    assert backend.actual_cost(job) == pytest.approx(PREDICT_TIME * 0.001525)
    assert "about $0.14" in final.message

    # the weights: extracted, our metadata merged in, written into the output folder
    path = await backend.download_weights(job)
    assert path == out / "papercut.safetensors" and job.output_path == str(path)
    from safetensors import safe_open

    with safe_open(str(path), "np") as lora:
        meta = lora.metadata()
        assert set(lora.keys()) == set(LORA_TENSORS)
        for key, value in LORA_TENSORS.items():
            assert (lora.get_tensor(key) == value).all()
    assert meta["ss_network_dim"] == "16" and meta["ss_output_name"] == "papercut"
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_max_train_steps"] == "8"
    assert meta["ss_num_train_images"] == "12" and meta["modelspec.trigger_phrase"] == "pcstyle"
    assert "papercut style" in json.loads(meta["ss_tag_frequency"])["dataset"]
    assert meta["sshs_model_hash"] and "Replicate" in meta["ss_training_comment"]
    assert all(meta[k] == v for k, v in LORA_METADATA.items())  # the trainer's kept
    # the delivery host never saw the token
    delivery = [r for r in server.requests if r[0] == "weights"]
    assert delivery and all(auth is None for *_, auth in delivery)

    again = await backend.download_weights(job)  # never overwrites
    assert again == out / "papercut_2.safetensors" and path.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "papercut.safetensors",
        "papercut_2.safetensors",
    ]


async def test_sdxl_trainer_gets_its_own_inputs_and_caption_csv(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    nested = small_dataset / "5_extra"
    nested.mkdir()
    Image.new("RGB", (40, 30), "red").save(nested / "papercut_01.bmp")  # a name clash, a BMP
    (nested / "papercut_01.txt").write_text("a red card")
    backend = make_backend(server.api_url, trainer=SDXL_TRAINER, destination=None)
    config = LoraConfig.sdxl_preset().replace(
        name="Papercut XL", trigger_word="pcxl", max_steps=6, batch_size=2
    )
    job = await backend.submit(
        _training_request(Dataset.from_directory(small_dataset), config, tmp_path)
    )

    training = server.trainings[job.remote_id]
    assert training["destination"] == f"{ACCOUNT}/papercut-xl"  # from the account and name
    assert training["input"] == {
        "input_images": training["input"]["input_images"],
        "resolution": 1024,
        "train_batch_size": 2,
        "max_train_steps": 6,
        "is_lora": True,
        "lora_lr": 1e-4,
        "lora_rank": 32,
        "token_string": "pcxl",
        "caption_prefix": "a photo of pcxl, ",
        "seed": 42,
        "lr_warmup_steps": 0,
        "lr_scheduler": "constant",
    }
    archive = _uploaded_zip(server)
    names = set(archive.namelist())
    assert "5_extra_papercut_01.png" in names and "5_extra_papercut_01.txt" in names
    assert Image.open(io.BytesIO(archive.read("5_extra_papercut_01.png"))).size == (40, 30)
    rows = list(csv.DictReader(io.StringIO(archive.read("caption.csv").decode())))
    images = sorted(n for n in names if n.endswith(".png"))
    assert [r["image_file"] for r in rows] == images
    assert all(r["captions"].startswith("pcxl") for r in rows)

    final = [p async for p in backend.watch(job)][-1]
    assert final.status is JobStatus.SUCCEEDED and final.step == 6
    assert final.loss is None  # cog-sdxl prints no loss
    assert job.cost == pytest.approx(PREDICT_TIME * 0.000975)


async def test_limits_are_checked_before_anything_is_sent(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    backend = make_backend(server.api_url)
    with pytest.raises(BackendError, match="3-6000 steps; these settings make 7000"):
        await backend.submit(_request(small_dataset, tmp_path, max_steps=7000))
    with pytest.raises(BackendError, match="rank of at most 128"):
        await backend.submit(_request(small_dataset, tmp_path, rank=256))
    assert server.requests == []
    with pytest.raises(BackendError, match="owner/model-name"):
        make_backend(server.api_url, destination="no-slash")


# ---- cancel, failure, restart ----------------------------------------------------------


async def test_cancel_ends_the_job_cancelled(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    backend = make_backend(server.api_url)
    job = await backend.submit(_request(small_dataset, tmp_path, max_steps=300))
    statuses = []
    async for progress in backend.watch(job):
        statuses.append(progress.status)
        if progress.status is JobStatus.RUNNING and progress.step >= 3:
            await backend.cancel(job)
    assert statuses[-1] is JobStatus.CANCELLED and job.status is JobStatus.CANCELLED
    assert server.count("trainings.cancel") == 1
    assert server.trainings[job.remote_id]["status"] == "canceled"
    with pytest.raises(BackendError, match="produced no LoRA"):
        await backend.download_weights(job)


async def test_failed_training_shows_its_error(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    server.fail_at_step = 3
    backend = make_backend(server.api_url)
    job = await backend.submit(_request(small_dataset, tmp_path))
    final = [p async for p in backend.watch(job)][-1]
    assert final.status is JobStatus.FAILED
    assert final.error == (
        "The Replicate training failed: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert any("OutOfMemoryError" in line for line in final.log_tail)
    assert job.error == final.error and job.cost == pytest.approx(40.0 * 0.001525)
    with pytest.raises(BackendError, match="produced no LoRA.*out of memory"):
        await backend.download_weights(job)


async def test_reattach_after_restart_follows_to_the_end(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    first = make_backend(server.api_url)
    job = await first.submit(_request(small_dataset, tmp_path / "out"))
    progress = await first.progress(job)
    assert not progress.is_finished()
    await first.aclose()  # the app quits; the JobStore kept the job

    stored = replace(job, status=JobStatus.RUNNING)
    assert stored.remote_id and stored.spec is not None
    again = make_backend(server.api_url, destination=stored.spec.backend_options["destination"])
    await again.reattach(stored)
    seen = [p async for p in again.watch(stored)]
    assert seen[-1].status is JobStatus.SUCCEEDED and seen[-1].step == 8
    assert seen[-1].total_steps == 8  # read back from the training's input
    path = await again.download_weights(stored)
    assert path == tmp_path / "out" / "papercut.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "np") as lora:
        assert lora.metadata()["ss_num_train_images"] == "4"  # from the job's dataset folder

    ghost = Job(
        id=Job.new_id(),
        backend=BackendType.REPLICATE,
        name="ghost",
        base_model="x",
        output_dir=str(tmp_path),
        remote_id="nope",
    )
    with pytest.raises(ReplicateNotFound, match="no training nope"):
        await again.reattach(ghost)
    with pytest.raises(BackendError, match="no Replicate training id"):
        await again.reattach(replace(ghost, remote_id=None))


# ---- failure modes ---------------------------------------------------------------------


async def test_refused_connection(make_backend: Factory, small_dataset: Path, tmp_path: Path):
    backend = make_backend(f"http://127.0.0.1:{closed_port()}", max_retries=2)
    status = await backend.check()
    assert not status.ok and "cannot be reached" in status.message
    with pytest.raises(ReplicateUnavailable, match="cannot be reached.*could not connect") as err:
        await backend.submit(_request(small_dataset, tmp_path))
    assert TOKEN not in str(err.value)


async def test_server_errors_are_retried_but_not_training_creation(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    backend = make_backend(server.api_url)
    server.fault("files.create", Fault(503))
    server.fault("models.get", Fault(500), Fault(502))
    server.fault("trainings.get", Fault(500))
    job = await backend.submit(_request(small_dataset, tmp_path))
    assert server.count("files.create") == 2 and len(server.files) == 1
    assert (await backend.progress(job)).status is JobStatus.PREPARING
    assert server.count("trainings.get") == 2

    server.fault("trainings.create", Fault(500, "Internal server error"))
    with pytest.raises(ReplicateUnavailable, match="starting the training.*HTTP 500"):
        await backend.submit(_request(small_dataset, tmp_path))
    assert server.count("trainings.create") == 2  # one per submit: never repeated

    server.fault("trainings.get", *[Fault(500)] * 10)
    with pytest.raises(ReplicateUnavailable, match="Internal server error, HTTP 500"):
        await make_backend(server.api_url, max_retries=1).progress(job)


async def test_bad_token_says_check_your_token(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    wrong = "r8_WrongToken_abcdefghijklmnop"
    backend = make_backend(server.api_url, token=wrong)
    status = await backend.check()
    assert not status.ok and "check your Replicate token" in status.message
    with pytest.raises(ReplicateAuthError, match="check your Replicate token") as err:
        await backend.submit(_request(small_dataset, tmp_path))
    assert "valid authentication token" in str(err.value)  # the RFC 7807 detail, in words
    assert wrong not in str(err.value) and wrong not in repr(backend.config)
    assert server.count("trainings.create") == 0

    nobody = make_backend(server.api_url, token=None)
    with pytest.raises(ReplicateAuthError, match="REPLICATE_API_TOKEN"):
        await nobody.submit(_request(small_dataset, tmp_path))

    ok = await make_backend(server.api_url).check()
    assert ok.ok and ACCOUNT in ok.message and "Nvidia H100" in ok.message


async def test_429_waits_for_retry_after(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    backend = make_backend(server.api_url, sleep=record)
    throttled = Fault(
        429, "Request was throttled. Expected available in 7 seconds.", {"Retry-After": "7"}
    )
    server.fault("files.create", throttled)
    server.fault("trainings.create", Fault(429, "Request was throttled.", {"Retry-After": "2"}))
    job = await backend.submit(_request(small_dataset, tmp_path))
    assert waits == [7.0, 2.0] and job.remote_id
    assert server.count("trainings.create") == 2  # a 429 was not acted on: safe to repeat

    server.fault("trainings.get", *[Fault(429, "Request was throttled.", {"Retry-After": "1"})] * 9)
    with pytest.raises(ReplicateRateLimited, match="throttling") as err:
        await backend.progress(job)
    assert err.value.retry_after == 1.0 and len(waits) == 2 + backend.max_retries

    server.faults.clear()
    server.fault("trainings.get", Fault(429, "Throttled.", {"Retry-After": "3600"}))
    with pytest.raises(ReplicateRateLimited, match="try again in 60 min"):
        await backend.progress(job)  # an hour is not waited for


async def test_malformed_json_is_a_backend_error(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    backend = make_backend(server.api_url)
    job = await backend.submit(_request(small_dataset, tmp_path))
    server.fault("trainings.get", Fault(200, body=b'{"id": "x", "status": '))
    with pytest.raises(ReplicateProtocolError, match="not JSON while reading the training"):
        await backend.progress(job)
    server.fault("trainings.get", Fault(200, body=b"[1, 2]"))
    with pytest.raises(BackendError, match="list instead of an object"):
        await backend.progress(job)
    server.fault("trainings.get", Fault(200, body=b'{"id": "x", "status": "exploded"}'))
    with pytest.raises(BackendError, match="unknown state 'exploded'"):
        await backend.progress(job)


async def test_destination_that_cannot_be_created_is_explained(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    backend = make_backend(server.api_url, destination="someone-else/papercut")
    with pytest.raises(ReplicateError, match="does not exist and could not be created") as err:
        await backend.submit(_request(small_dataset, tmp_path))
    message = str(err.value)
    assert "permission to create models for someone-else" in message  # RFC 7807 detail
    assert "owner must be your Replicate user name" in message
    assert server.count("trainings.create") == 0


@pytest.mark.parametrize("kind", ["traversal", "link"])
async def test_unsafe_weights_archive_is_refused(
    kind: str,
    server: ReplicateStandIn,
    make_backend: Factory,
    small_dataset: Path,
    tmp_path: Path,
) -> None:
    server.weights_kind = kind
    backend = make_backend(server.api_url)
    job = await backend.submit(_request(small_dataset, tmp_path / "out"))
    async for _ in backend.watch(job):
        pass
    with pytest.raises(ReplicateWeightsError, match="unsafe entry") as err:
        await backend.download_weights(job)
    assert ("../../escaped.txt" if kind == "traversal" else "evil-link") in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []  # nothing written, no temp file left
    assert not (tmp_path / "escaped.txt").exists() and not Path("escaped.txt").exists()


async def test_zip_weights_are_accepted_too(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    server.weights_kind = "zip"
    backend = make_backend(server.api_url)
    job = await backend.submit(_request(small_dataset, tmp_path / "out"))
    async for _ in backend.watch(job):
        pass
    target = tmp_path / "elsewhere" / "renamed.safetensors"
    target.parent.mkdir()
    assert await backend.download_weights(job, target) == target


# ---- log parsing -----------------------------------------------------------------------


def test_parse_training_logs_reads_the_training_bar_only() -> None:
    logs = (
        "Loading checkpoint shards: 100%|##########| 2/2 [00:01<00:00,  1.52it/s]\n"
        "flux_train_replicate:   0%|          | 0/1000 [00:00<?, ?it/s]"
        "\rflux_train_replicate:   1%|1         | 10/1000 [00:11<18:09,  1.10s/it, lr: 4.0e-04 loss: 4.000e-01]"
        "\rflux_train_replicate:   2%|2         | 20/1000 [00:22<1:02:03,  1.10s/it, lr: 4.0e-04 loss: 3.000e-01]\n"
        "\x1b[32mSaving\x1b[0m sample\n"
    )
    facts = parse_training_logs(logs, 1000)
    assert (facts.step, facts.total, facts.loss, facts.learning_rate) == (20, 1000, 0.3, 4e-4)
    assert facts.losses == (0.4, 0.3) and facts.remaining_s == 3723.0
    assert facts.iterations_per_s == pytest.approx(1 / 1.1)
    assert (
        facts.lines[-2].startswith("flux_train_replicate:   2%")
        and facts.lines[-1] == "Saving sample"
    )
    # without the step count a bar with a loss is taken; without one, no steps at all
    assert parse_training_logs(logs).step == 20
    assert not parse_training_logs(logs.split("\n")[0]).has_steps
    sdxl = "# PTI :step: 4, epoch: 1:  50%|#####     | 5/10 [00:05<00:05,  1.26it/s]"
    facts = parse_training_logs(sdxl, 10)
    assert (facts.step, facts.loss, facts.iterations_per_s) == (5, None, 1.26)
    assert parse_training_logs("", 10) == parse_training_logs("", None)


async def test_dataset_zip_refuses_unreadable_images(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    dataset = Dataset.from_directory(small_dataset)
    shutil.rmtree(small_dataset)
    backend = make_backend(server.api_url)
    config = LoraConfig.flux_preset().replace(name="x", max_steps=10)
    with pytest.raises(DatasetError, match="Cannot read"):
        await backend.submit(_training_request(dataset, config, tmp_path))
    assert server.files == {}


async def test_watch_keeps_following_through_an_outage(
    server: ReplicateStandIn, make_backend: Factory, small_dataset: Path, tmp_path: Path
) -> None:
    backend = make_backend(server.api_url, max_retries=1)
    job = await backend.submit(_request(small_dataset, tmp_path))
    await backend.progress(job)
    server.fault("trainings.get", *[Fault(503, "Service unavailable")] * 4)
    seen = [p async for p in backend.watch(job)]
    outage = [p for p in seen if "Still trying" in p.message]
    assert outage and "cannot be reached" not in outage[0].message
    assert "Service unavailable" in outage[0].message
    assert seen[-1].status is JobStatus.SUCCEEDED
