"""Training on Replicate: a LoRA trainer model runs on Replicate's GPUs, billed per second.

The run, in Replicate's HTTP API (``Authorization: Bearer <token>``, base URL configurable):

1. the dataset snapshot is zipped (every image with its caption as ``<name>.txt`` beside it,
   the trigger word first; nothing else from the folder) and uploaded with ``POST /v1/files``
   (multipart part ``content``);
2. the trainer's version is resolved with ``GET /v1/models/{owner}/{name}``
   (``latest_version.id``) unless one is pinned;
3. the destination model is created when it does not exist (``POST /v1/models``);
4. ``POST /v1/models/{owner}/{name}/versions/{version}/trainings`` starts the run with the
   trainer's inputs mapped from our :class:`~lora_studio.core.config.LoraConfig`: one
   :class:`TrainerProfile` per trainer in :data:`TRAINERS` (add one there to support
   another trainer);
5. ``GET /v1/trainings/{id}`` is polled with backoff; its ``logs`` give the step, the loss,
   the learning rate and the ETA where the trainer prints them (its tqdm bar); ``POST
   /v1/trainings/{id}/cancel`` stops it;
6. ``output.weights`` (a ``.tar``, or a ``.zip``, holding ``lora.safetensors``) is
   downloaded, checked without extracting anything to disk, and written as
   ``<name>.safetensors`` (never over an existing file) with our ``ss_*`` metadata.

Cost: :data:`PRICE_PER_SECOND` (one editable table) x the seconds the trainer's profile
predicts before the run (:meth:`ReplicateBackend.cost_estimate`); afterwards
``metrics.predict_time`` x the same price (:func:`training_cost`).

Retries: a request that never reached the server (connection refused) and a 429 (after
its ``Retry-After``) are repeated for every method, a bounded number of times; 5xx replies
and timeouts only where repeating cannot do harm (reads, the upload, model creation,
cancel) -- never the training creation, which could start (and bill) a second run.

Exceptions (every message is written for the user and never contains the token)::

    BackendError                      (lora_studio.core.errors)
     └── ReplicateError               Replicate refused or failed a request (.status, .title, .detail)
          ├── ReplicateAuthError      no token, or 401/403: "check your Replicate token"
          ├── ReplicateNotFound       404: a model, version, destination or training that is not there
          ├── ReplicateRateLimited    429 still after the bounded retries (.retry_after)
          ├── ReplicateUnavailable    cannot connect, timed out, or 5xx after the retries
          ├── ReplicateProtocolError  a reply that is not the JSON the API documents
          └── ReplicateWeightsError   the trained weights are missing, unsafe or unreadable
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import email.utils
import io
import json
import logging
import math
import os
import re
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote, urlsplit

import httpx

from lora_studio.backends.base import BackendConfig, BackendStatus
from lora_studio.core.config import LoraConfig, LrScheduler, ModelFamily, Optimizer
from lora_studio.core.dataset import Dataset, training_caption
from lora_studio.core.errors import BackendError, ConfigError, DatasetError
from lora_studio.core.estimates import format_duration, plan_steps
from lora_studio.core.jobs import (
    LOG_TAIL,
    MAX_HISTORY,
    BackendType,
    Job,
    JobSpec,
    JobStatus,
    Progress,
)
from lora_studio.core.request import TrainingRequest
from lora_studio.core.secrets import REPLICATE, get_token, redact

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.replicate.com"

# ---- exceptions -------------------------------------------------------------------------


class ReplicateError(BackendError):
    """Replicate refused or failed a request; ``str()`` says what, in words."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.detail = detail


class ReplicateAuthError(ReplicateError):
    """No token, or Replicate does not accept it (401/403)."""


class ReplicateNotFound(ReplicateError):
    """A model, version, destination or training that Replicate does not have (404)."""


class ReplicateRateLimited(ReplicateError):
    """Still throttled (429) after the bounded retries."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ReplicateUnavailable(ReplicateError):
    """Replicate could not be reached, timed out, or kept failing with 5xx."""


class ReplicateProtocolError(ReplicateError):
    """A reply that is not the JSON Replicate's API documents."""


class ReplicateWeightsError(ReplicateError):
    """The trained weights are missing, unsafe or unreadable."""


# ---- prices -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HardwarePrice:
    label: str
    dollars_per_second: float


#: Replicate's price per second of each hardware SKU, in US dollars, as of the last
#: published table (replicate.com/pricing). Edit here when it changes; nothing else holds
#: a price.
PRICE_PER_SECOND: dict[str, HardwarePrice] = {
    "gpu-h100": HardwarePrice("Nvidia H100", 0.001525),
    "gpu-a100-large": HardwarePrice("Nvidia A100 (80GB)", 0.0014),
    "gpu-l40s": HardwarePrice("Nvidia L40S", 0.000975),
    "gpu-t4": HardwarePrice("Nvidia T4", 0.000225),
}


# ---- trainers ---------------------------------------------------------------------------

InputBuilder = Callable[[LoraConfig, int, str], dict[str, Any]]


@dataclass(frozen=True)
class TrainerProfile:
    """What LoRA Studio knows about one Replicate trainer model.

    Attributes:
        model: ``owner/name`` of the trainer.
        build_input: ``(config, steps, zip_url) -> input`` of ``trainings.create``.
        steps_input, batch_input: the input names holding the step count and batch size
            (read back from a training to follow it after a restart).
        hardware: the SKU its trainings run on (a key of :data:`PRICE_PER_SECOND`).
        setup_s, per_image_s, step_s: the time model: ``setup + images x per_image +
            steps x step`` where ``step_s`` is a step at ``ref_pixels`` (mean pixels per
            image) and ``ref_batch``; calibrated to the trainer's published run time.
        image_extensions: image formats the trainer reads (others are sent as PNG).
        caption_csv: also write ``caption.csv`` (``image_file,captions``), the caption
            file the trainer reads instead of ``.txt`` sidecars.
    """

    model: str
    label: str
    family: ModelFamily
    base_model_name: str
    kohya_version: str
    build_input: InputBuilder
    steps_input: str
    batch_input: str
    hardware: str
    setup_s: float
    per_image_s: float
    step_s: float
    ref_pixels: float
    ref_batch: int
    pixels: Callable[[LoraConfig], float]
    min_steps: int = 1
    max_steps: int = 1_000_000
    max_rank: int = 1024
    image_extensions: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp"})
    caption_csv: bool = False
    lora_member: str = "lora.safetensors"
    check_config: Callable[[LoraConfig], list[str]] = field(default=lambda _c: [])

    def seconds(self, config: LoraConfig, steps: int, images: int) -> float:
        """Predicted billed seconds of a run (see the class docstring)."""
        pixel_ratio = self.pixels(config) / self.ref_pixels
        batch_ratio = (1 + 0.85 * (config.batch_size - 1)) / (1 + 0.85 * (self.ref_batch - 1))
        # a quarter of a step does not grow with the image (optimizer, Python, launches)
        step = self.step_s * (0.25 + 0.75 * pixel_ratio) * batch_ratio
        return self.setup_s + self.per_image_s * images + step * steps

    def problems(self, config: LoraConfig, steps: int) -> list[str]:
        issues: list[str] = []
        if not self.min_steps <= steps <= self.max_steps:
            issues.append(
                f"{self.model} trains {self.min_steps}-{self.max_steps} steps; these settings "
                f"make {steps}. Change epochs or max steps."
            )
        if config.rank > self.max_rank:
            issues.append(
                f"{self.model} takes a rank of at most {self.max_rank} (got {config.rank})."
            )
        return issues + self.check_config(config)


def flux_resolutions(resolution: int) -> list[int]:
    """ai-toolkit trains every image at each listed size: the usual 512/768/1024 below ours."""
    return [r for r in (512, 768, 1024) if r < resolution] + [resolution]


_FLUX_OPTIMIZERS = {
    Optimizer.ADAMW: "adamw",
    Optimizer.ADAMW_8BIT: "adamw8bit",
    Optimizer.PRODIGY: "prodigy",
    Optimizer.ADAFACTOR: "adafactor",
}


def _flux_input(config: LoraConfig, steps: int, images_url: str) -> dict[str, Any]:
    return {
        "input_images": images_url,
        "trigger_word": config.trigger_word,
        "autocaption": False,  # our captions travel in the zip
        "steps": steps,
        "lora_rank": config.rank,
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "resolution": ",".join(str(r) for r in flux_resolutions(config.resolution)),
        "caption_dropout_rate": config.caption_dropout,
        "optimizer": _FLUX_OPTIMIZERS[config.optimizer],
        "gradient_checkpointing": config.gradient_checkpointing,
    }


def _sdxl_token(config: LoraConfig) -> str:
    return config.trigger_word.strip() or "TOK"


def _sdxl_input(config: LoraConfig, steps: int, images_url: str) -> dict[str, Any]:
    token = _sdxl_token(config)
    values: dict[str, Any] = {
        "input_images": images_url,
        "resolution": config.resolution,
        "train_batch_size": config.batch_size,
        "max_train_steps": steps,
        "is_lora": True,
        "lora_lr": config.learning_rate,
        "lora_rank": config.rank,
        "token_string": token,
        # only used when the trainer captions images itself; ours come in caption.csv
        "caption_prefix": f"a photo of {token}, ",
        "seed": config.seed,
        "lr_warmup_steps": config.lr_warmup_steps,
    }
    if config.lr_scheduler in (LrScheduler.CONSTANT, LrScheduler.LINEAR):
        values["lr_scheduler"] = config.lr_scheduler.value
    return values


def _sdxl_checks(config: LoraConfig) -> list[str]:
    # cog-sdxl parses "token:count,token:count"
    if any(ch in _sdxl_token(config) for ch in ",:"):
        return ["stability-ai/sdxl cannot use a trigger word containing ',' or ':'."]
    return []


_FLUX_REF_RESOLUTIONS = (512, 768, 1024)

#: The trainers LoRA Studio can drive, by ``owner/name``. Add a profile to support another.
TRAINERS: dict[str, TrainerProfile] = {
    "ostris/flux-dev-lora-trainer": TrainerProfile(
        model="ostris/flux-dev-lora-trainer",
        label="Flux dev LoRA (ostris/ai-toolkit)",
        family=ModelFamily.FLUX,
        base_model_name="black-forest-labs/FLUX.1-dev",
        kohya_version="flux1",
        build_input=_flux_input,
        steps_input="steps",
        batch_input="batch_size",
        hardware="gpu-h100",
        # Replicate: "a 20-minute training (about 20 images, 1000 steps) ... about $1.85":
        # 120 s setup (weights, latent caching) + 2 s per image + 1.05 s per step.
        setup_s=120.0,
        per_image_s=2.0,
        step_s=1.05,
        ref_pixels=sum(r * r for r in _FLUX_REF_RESOLUTIONS) / len(_FLUX_REF_RESOLUTIONS),
        ref_batch=1,
        pixels=lambda c: (
            sum(r * r for r in flux_resolutions(c.resolution)) / len(flux_resolutions(c.resolution))
        ),
        min_steps=3,
        max_steps=6000,
        max_rank=128,
    ),
    "stability-ai/sdxl": TrainerProfile(
        model="stability-ai/sdxl",
        label="SDXL LoRA (replicate/cog-sdxl)",
        family=ModelFamily.SDXL,
        base_model_name="stabilityai/stable-diffusion-xl-base-1.0",
        kohya_version="sdxl_base_v1-0",
        build_input=_sdxl_input,
        steps_input="max_train_steps",
        batch_input="train_batch_size",
        hardware="gpu-l40s",
        # Replicate: "takes about 10-15 minutes" at the defaults (1000 steps, batch 4,
        # 768 px): 150 s setup + 3 s per image (upscaling, masks) + 0.55 s per step.
        setup_s=150.0,
        per_image_s=3.0,
        step_s=0.55,
        ref_pixels=768.0 * 768.0,
        ref_batch=4,
        pixels=lambda c: float(c.resolution * c.resolution),
        image_extensions=frozenset({".png", ".jpg", ".jpeg"}),
        caption_csv=True,
        check_config=_sdxl_checks,
    ),
}


# ---- cost -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostEstimate:
    """The predicted cost of a run, with what it is made of."""

    trainer: str
    hardware: str
    hardware_label: str
    dollars_per_second: float
    steps: int
    images: int
    seconds: float
    dollars: float

    def describe(self) -> str:
        return (
            f"about ${self.dollars:.2f}: {self.steps} steps on {self.images} images, "
            f"~{format_duration(self.seconds)} of {self.hardware_label} at "
            f"${self.dollars_per_second:g}/s (Replicate's published price)"
        )


def training_cost(training: Mapping[str, Any], hardware: str) -> float | None:
    """Dollars a finished training cost: ``metrics.predict_time`` x the hardware's price."""
    price = PRICE_PER_SECOND.get(hardware)
    seconds = _number((training.get("metrics") or {}).get("predict_time"))
    if price is None or seconds is None:
        return None
    return seconds * price.dollars_per_second


# ---- dataset zip ------------------------------------------------------------------------


@dataclass(frozen=True)
class ZipSummary:
    """What went into the uploaded zip: ``{file name in the zip: caption}``."""

    captions: dict[str, str]
    converted: tuple[str, ...]
    size: int


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def build_dataset_zip(
    dataset: Dataset, trigger_word: str, profile: TrainerProfile, out: IO[bytes]
) -> ZipSummary:
    """Write the trainer's zip of ``dataset`` to ``out``.

    Every image goes in flat (names made unique), its training caption (the trigger word
    first) as ``<name>.txt`` beside it; formats the trainer cannot read are converted to
    PNG. Only the dataset's images and the captions made here are written: nothing else
    in the folder (backups, manifests, stray files) leaves the machine.
    """
    if not dataset.images:
        raise DatasetError(f"The dataset {dataset.root} has no images to train on.")
    used: set[str] = set()
    captions: dict[str, str] = {}
    converted: list[str] = []
    with zipfile.ZipFile(out, "w") as archive:
        for item in dataset.images:
            relative = PurePosixPath(dataset.relative_name(item))
            ext = relative.suffix.lower()
            convert = ext not in profile.image_extensions
            stem = _unique_stem(relative, used)
            name = stem + (".png" if convert else ext)
            try:
                data = _png_bytes(item.path) if convert else item.path.read_bytes()
            except OSError as exc:
                raise DatasetError(
                    f"Cannot read {item.path}: {exc.strerror or exc}; fix or remove it."
                ) from None
            if convert:
                converted.append(relative.as_posix())
            caption = training_caption(item, trigger_word)
            _write_member(archive, name, data, zipfile.ZIP_STORED)
            _write_member(archive, f"{stem}.txt", caption.encode("utf-8"), zipfile.ZIP_DEFLATED)
            captions[name] = caption
        if profile.caption_csv:
            table = io.StringIO()
            writer = csv.writer(table, lineterminator="\n")
            writer.writerow(["image_file", "captions"])
            for name in sorted(captions):
                writer.writerow([name, captions[name]])
            _write_member(
                archive, "caption.csv", table.getvalue().encode("utf-8"), zipfile.ZIP_DEFLATED
            )
    out.flush()
    return ZipSummary(captions, tuple(converted), out.tell())


def _write_member(archive: zipfile.ZipFile, name: str, data: bytes, compress: int) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _unique_stem(relative: PurePosixPath, used: set[str]) -> str:
    stem = _SAFE_NAME.sub("_", relative.stem).strip("._") or "image"
    candidates = [stem]
    if len(relative.parts) > 1:  # a/1.png and b/1.png: a_1, b_1
        folders = "_".join(_SAFE_NAME.sub("_", p) for p in relative.parts[:-1])
        candidates.append(f"{folders}_{stem}".strip("._"))
    for candidate in candidates:
        if candidate.lower() not in used:
            used.add(candidate.lower())
            return candidate
    counter = 2
    while f"{stem}_{counter}".lower() in used:
        counter += 1
    used.add(f"{stem}_{counter}".lower())
    return f"{stem}_{counter}"


def _png_bytes(path: Path) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---- logs -------------------------------------------------------------------------------

_TQDM = re.compile(
    r"(?P<pct>\d{1,3})%\|[^|\r\n]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"(?:\s*\[(?P<elapsed>[\d:]+)(?:<(?P<remaining>[\d:]+|\?))?"
    r"(?:,\s*(?P<rate>[\d.]+|\?)\s*(?P<unit>s/it|it/s))?(?P<postfix>[^\]]*)\])?"
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LOSS = re.compile(rf"\bloss\s*[:=]\s*(?P<v>{_NUMBER})", re.IGNORECASE)
_LR = re.compile(rf"\blr\s*[:=]\s*(?P<v>{_NUMBER})", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")


@dataclass(frozen=True)
class LogFacts:
    """What a trainer's log says about its progress."""

    step: int = 0
    total: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    losses: tuple[float, ...] = ()
    remaining_s: float | None = None
    iterations_per_s: float | None = None
    lines: tuple[str, ...] = ()

    @property
    def has_steps(self) -> bool:
        return self.total > 0


def parse_training_logs(logs: str, expected_total: int | None = None) -> LogFacts:
    """Step, loss, learning rate and ETA from a training's ``logs`` text.

    Trainers print a tqdm bar (``desc: 12%|#2   | 120/1000 [02:10<15:50, 1.08s/it,
    lr: 4.0e-04 loss: 3.920e-01]``), each refresh after a ``\\r`` or on a line of its own.
    Other bars (loading shards, caching latents) are told apart by their total: the
    training bar counts to the run's step count (``expected_total``); without it, a bar
    that reports a loss is taken.
    """
    lines: list[str] = []
    bars: list[tuple[re.Match[str], str]] = []
    for raw in logs.split("\n"):
        segments = [_ANSI.sub("", s) for s in raw.split("\r")]
        for segment in segments:
            match = _TQDM.search(segment)
            if match:
                bars.append((match, segment))
        shown = next((s for s in reversed(segments) if s.strip()), "")
        if shown.strip():
            lines.append(shown.rstrip())
    if expected_total:
        training = [(m, s) for m, s in bars if int(m["total"]) == expected_total]
    else:
        training = [(m, s) for m, s in bars if _LOSS.search(m["postfix"] or "")]
    tail = tuple(lines[-LOG_TAIL:])
    if not training:
        return LogFacts(lines=tail)
    by_step: dict[int, float] = {}
    learning_rate: float | None = None
    for match, _segment in training:
        postfix = match["postfix"] or ""
        loss = _LOSS.search(postfix)
        if loss:
            by_step[int(match["n"])] = float(loss["v"])
        lr = _LR.search(postfix)
        if lr:
            learning_rate = float(lr["v"])
    last = training[-1][0]
    step, total = int(last["n"]), int(last["total"])
    losses = tuple(by_step[k] for k in sorted(by_step))
    return LogFacts(
        step=step,
        total=total,
        loss=losses[-1] if losses else None,
        learning_rate=learning_rate,
        losses=_thin(losses),
        remaining_s=_clock_seconds(last["remaining"]),
        iterations_per_s=_rate(last["rate"], last["unit"]),
        lines=tail,
    )


def _thin(values: tuple[float, ...]) -> tuple[float, ...]:
    if len(values) <= MAX_HISTORY:
        return values
    stride = math.ceil(len(values) / MAX_HISTORY)
    thinned = values[::stride]
    return thinned if thinned[-1] == values[-1] else (*thinned[:-1], values[-1])


def _clock_seconds(text: str | None) -> float | None:
    if not text or text == "?":
        return None
    seconds = 0
    for part in text.split(":"):
        if not part.isdigit():
            return None
        seconds = seconds * 60 + int(part)
    return float(seconds)


def _rate(value: str | None, unit: str | None) -> float | None:
    if not value or value == "?" or not unit:
        return None
    number = float(value)
    if number <= 0:
        return None
    return number if unit == "it/s" else 1.0 / number


def _failure_line(logs: str) -> str | None:
    for line in reversed(logs.splitlines()):
        text = line.strip()
        if _EXCEPTION_LINE.match(text):
            return text
    return None


# ---- the backend ------------------------------------------------------------------------

_STATUS = {
    "starting": JobStatus.PREPARING,
    "processing": JobStatus.RUNNING,
    "succeeded": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "canceled": JobStatus.CANCELLED,
}
_MODEL_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_IDEMPOTENT = frozenset({"GET", "HEAD"})

#: Largest weights download (a Flux LoRA of rank 128 is ~0.6 GB).
MAX_WEIGHTS_BYTES = 4 * 1024**3
#: Largest LoRA file taken out of the archive, and most entries an archive may have.
MAX_LORA_BYTES = 2 * 1024**3
MAX_ARCHIVE_MEMBERS = 10_000

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Run:
    training_id: str
    profile: TrainerProfile
    hardware: str
    total_steps: int = 0
    batch_size: int = 1
    config: LoraConfig | None = None
    dataset: Dataset | None = None
    training: dict[str, Any] = field(default_factory=dict)
    latest: Progress = field(default_factory=lambda: Progress(status=JobStatus.PREPARING))
    first_step: tuple[float, int] | None = None


class ReplicateBackend:
    """Trains LoRAs with a trainer model on Replicate (see the module docstring).

    Args:
        config: ``api_url`` (default ``https://api.replicate.com``), ``api_key`` (else
            ``REPLICATE_API_TOKEN``, else the keyring), ``output_dir``, ``timeout_s``.
        client: an ``httpx.AsyncClient`` to use (tests); by default one is made and closed
            by :meth:`aclose`.
        trainer: ``owner/name`` of a trainer in :data:`TRAINERS`, or a :class:`TrainerProfile`.
        trainer_version: pin a trainer version id (default: its latest version).
        destination: ``owner/name`` of the model the trained version goes to; created
            (private) when missing. Default: ``<your user name>/<config name>``.
        hardware: the SKU the trainer runs on, for the cost (default: the profile's).
        destination_hardware, destination_visibility: used when creating the destination
            (Replicate runs fine-tuned versions on the trainer's hardware anyway).
        poll_interval, max_poll_interval: seconds between polls; the interval grows up to
            the maximum while nothing changes.
        max_retries, retry_backoff_s, max_retry_wait_s: bounded retries (see the module
            docstring); a ``Retry-After`` longer than ``max_retry_wait_s`` is not waited for.
        sleep: the coroutine used to wait between retries (tests record the waits).
    """

    kind = BackendType.REPLICATE

    def __init__(
        self,
        config: BackendConfig,
        *,
        client: httpx.AsyncClient | None = None,
        trainer: str | TrainerProfile = "ostris/flux-dev-lora-trainer",
        trainer_version: str | None = None,
        destination: str | None = None,
        hardware: str | None = None,
        destination_hardware: str = "gpu-t4",
        destination_visibility: str = "private",
        poll_interval: float = 2.0,
        max_poll_interval: float = 30.0,
        max_retries: int = 4,
        retry_backoff_s: float = 1.0,
        max_retry_wait_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.profile = trainer if isinstance(trainer, TrainerProfile) else _profile(trainer)
        self.trainer_version = trainer_version
        if destination is not None and not _MODEL_REF.match(destination):
            raise BackendError(
                f"The Replicate destination must look like owner/model-name (got {destination!r})."
            )
        self.destination = destination
        self.hardware = hardware or self.profile.hardware
        self.destination_hardware = destination_hardware
        self.destination_visibility = destination_visibility
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        base = (config.api_url or DEFAULT_API_URL).rstrip("/")
        self.api_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self._owns_client = client is None
        self._http = client  # made on first use: estimating the cost needs no client
        self._token: str | None = None
        self._runs: dict[str, _Run] = {}

    async def aclose(self) -> None:
        if self._owns_client and self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.timeout_s)
        return self._http

    async def __aenter__(self) -> ReplicateBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- Protocol ----------------------------------------------------------------------

    async def check(self) -> BackendStatus:
        """Is the token accepted, and is the trainer there? Never raises for those."""
        price = PRICE_PER_SECOND.get(self.hardware)
        device = price.label if price else self.hardware
        try:
            account = await self._get("/v1/account", "checking your Replicate token")
            model = await self._get(
                f"/v1/models/{self.profile.model}", f"looking up the trainer {self.profile.model}"
            )
        except ReplicateError as exc:
            return BackendStatus(False, str(exc), device)
        user = account.get("username") or "?"
        version = self.trainer_version or _latest_version(model) or "no version"
        rate = f" at ${price.dollars_per_second:g}/s" if price else ""
        return BackendStatus(
            True,
            f"Signed in to Replicate as {user}; {self.profile.model} (version "
            f"{version[:12]}) trains on {device}{rate}.",
            device,
        )

    def cost_estimate(self, request: TrainingRequest) -> CostEstimate | None:
        """The predicted cost (``None`` when the hardware has no price in the table)."""
        price = PRICE_PER_SECOND.get(self.hardware)
        if price is None:
            return None
        steps = self._steps(request)
        images = len(request.dataset.images)
        seconds = self.profile.seconds(request.config, steps, images)
        return CostEstimate(
            trainer=self.profile.model,
            hardware=self.hardware,
            hardware_label=price.label,
            dollars_per_second=price.dollars_per_second,
            steps=steps,
            images=images,
            seconds=seconds,
            dollars=seconds * price.dollars_per_second,
        )

    async def estimate_cost(self, request: TrainingRequest) -> float | None:
        estimate = self.cost_estimate(request)
        return None if estimate is None else estimate.dollars

    async def submit(self, request: TrainingRequest) -> Job:
        config = request.config
        steps = self._steps(request)
        issues = config.problems() + self.profile.problems(config, steps)
        if issues:
            raise BackendError(" ".join(issues))
        estimate = self.cost_estimate(request)
        destination = self.destination or await self._default_destination(config)

        job = Job(
            id=Job.new_id(),
            backend=BackendType.REPLICATE,
            name=config.name,
            base_model=self.profile.base_model_name,
            output_dir=str(request.output_dir),
            dataset_dir=str(request.dataset.root),
            config=config.to_dict(),
            status=JobStatus.PREPARING,
            estimated_cost=estimate.dollars if estimate else None,
        )
        # the cheap checks first: a missing trainer or destination fails before the upload
        version = self.trainer_version or await self._latest_trainer_version()
        await self._ensure_destination(destination)
        zip_url = await self._upload_dataset(request, job)
        training = await self._request(
            "POST",
            self._url(f"/v1/models/{self.profile.model}/versions/{quote(version)}/trainings"),
            what=f"starting the training on {self.profile.model}",
            json_body={
                "destination": destination,
                "input": self.profile.build_input(config, steps, zip_url),
            },
            # a 5xx may come after the run was created: repeating could start a second one
            retry_server_errors=False,
            not_found=(
                f"Replicate has no {self.profile.model} version {version} or no destination "
                f"model {destination}"
            ),
        )
        training_id = _text(training.get("id"))
        if not training_id:
            raise ReplicateProtocolError("Replicate started a training but sent no id for it.")
        job.remote_id = training_id
        job.spec = JobSpec(
            dataset_dir=job.dataset_dir,
            config=job.config,
            base_model=job.base_model,
            output_dir=job.output_dir,
            backend=BackendType.REPLICATE,
            backend_options={
                "api_url": self.api_url,
                "trainer": self.profile.model,
                "trainer_version": version,
                "destination": destination,
                "hardware": self.hardware,
            },
        )
        run = _Run(
            training_id=training_id,
            profile=self.profile,
            hardware=self.hardware,
            total_steps=steps,
            batch_size=config.batch_size,
            config=config,
            dataset=request.dataset,
            training=training,
        )
        self._runs[job.id] = run
        run.latest = self._progress_of(run, training)
        return job

    async def reattach(self, job: Job) -> None:
        if not job.remote_id:
            raise BackendError(
                f"Job {job.name} has no Replicate training id, so it cannot be followed."
            )
        self._runs.pop(job.id, None)
        run = self._run(job)
        await self._refresh(job, run)

    async def progress(self, job: Job) -> Progress:
        run = self._run(job)
        if run.latest.is_finished() and run.training:
            return run.latest
        return await self._refresh(job, run)

    async def watch(self, job: Job) -> AsyncIterator[Progress]:
        run = self._run(job)
        interval = self.poll_interval
        last: Progress | None = None
        while True:
            try:
                current = await self.progress(job)
            except (ReplicateUnavailable, ReplicateRateLimited) as exc:
                # the run goes on at Replicate: say so, keep asking (slower)
                current = run.latest.evolve(message=f"{exc} Still trying.")
            if current != last:
                yield current
            changed = last is None or _moved(last, current)
            last = current
            if current.is_finished():
                return
            interval = (
                self.poll_interval if changed else min(interval * 1.5, self.max_poll_interval)
            )
            await asyncio.sleep(interval)

    async def cancel(self, job: Job) -> None:
        run = self._run(job)
        training = await self._request(
            "POST",
            self._url(f"/v1/trainings/{quote(run.training_id)}/cancel"),
            what=f"cancelling the training {run.training_id}",
            retry_server_errors=True,  # cancelling twice is harmless
            not_found=f"Replicate has no training {run.training_id}",
        )
        if isinstance(training, dict) and training.get("id"):
            self._update(job, run, training)

    async def download_weights(self, job: Job, dest: Path | None = None) -> Path:
        run = self._run(job)
        if not run.training or not run.latest.is_finished():
            await self._refresh(job, run)
        status = run.latest.status
        if status is not JobStatus.SUCCEEDED:
            if status.is_finished:
                raise BackendError(
                    f"Job {job.name} produced no LoRA ({run.latest.error or status.label})."
                )
            raise BackendError(f"Job {job.name} has not finished yet ({status.label}).")
        weights = (run.training.get("output") or {}).get("weights")
        if not isinstance(weights, str) or not weights:
            raise ReplicateWeightsError(
                f"Replicate has no weights for the training {run.training_id} any more (its "
                f"outputs may have been removed); download them from the destination model's "
                f"page on replicate.com."
            )
        folder, wanted = _target(dest, Path(job.output_dir), job.name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"Cannot create {folder}: {exc.strerror or exc}.") from None
        archive = await self._download(weights, folder)
        try:
            facts = _run_facts(run, job)
            path = await asyncio.to_thread(
                _write_lora, archive, folder, wanted, run.profile, facts, self._dataset(run, job)
            )
        finally:
            with contextlib.suppress(OSError):
                archive.unlink()
        job.output_path = str(path)
        run.latest = run.latest.evolve(output_path=str(path))
        return path

    # ---- extras for the CLI and the job queue ---------------------------------------------

    def actual_cost(self, job: Job) -> float | None:
        """Dollars the finished training cost (``None`` before it finishes)."""
        run = self._runs.get(job.id)
        return training_cost(run.training, run.hardware) if run else None

    # ---- internals: runs and progress ---------------------------------------------------

    def _steps(self, request: TrainingRequest) -> int:
        samples = request.dataset.samples_per_epoch(request.config.repeats)
        return plan_steps(samples, request.config).total_steps

    def _run(self, job: Job) -> _Run:
        run = self._runs.get(job.id)
        if run is None:
            if not job.remote_id:
                raise BackendError(f"Job {job.name} is not a Replicate training.")
            options = job.spec.backend_options if job.spec else {}
            profile = TRAINERS.get(str(options.get("trainer", "")), self.profile)
            config = _config_of(job)
            run = _Run(
                training_id=job.remote_id,
                profile=profile,
                hardware=str(options.get("hardware") or profile.hardware),
                config=config,
                batch_size=config.batch_size if config else 1,
            )
            self._runs[job.id] = run
        return run

    async def _refresh(self, job: Job, run: _Run) -> Progress:
        training = await self._get(
            f"/v1/trainings/{quote(run.training_id)}",
            f"reading the training {run.training_id}",
            not_found=f"Replicate has no training {run.training_id}",
        )
        return self._update(job, run, training)

    def _update(self, job: Job, run: _Run, training: dict[str, Any]) -> Progress:
        model = _text(training.get("model"))
        if model in TRAINERS:
            run.profile = TRAINERS[model]
        inputs = training.get("input") if isinstance(training.get("input"), dict) else {}
        steps = _number(inputs.get(run.profile.steps_input)) if inputs else None
        if steps:
            run.total_steps = int(steps)
        batch = _number(inputs.get(run.profile.batch_input)) if inputs else None
        if batch:
            run.batch_size = int(batch)
        run.training = training
        progress = self._progress_of(run, training)
        run.latest = progress
        job.status = progress.status
        job.message = progress.message
        if progress.status is JobStatus.FAILED:
            job.error = progress.error
        if progress.is_finished():
            job.cost = training_cost(training, run.hardware)
        return progress

    def _progress_of(self, run: _Run, training: Mapping[str, Any]) -> Progress:
        status_text = _text(training.get("status")) or "starting"
        status = _STATUS.get(status_text)
        if status is None:
            raise ReplicateProtocolError(
                f"Replicate reported the training in an unknown state {status_text!r}."
            )
        logs = redact(_text(training.get("logs")), self._token)
        facts = parse_training_logs(logs, run.total_steps or None)
        total = run.total_steps or facts.total
        now = time.time()
        started = _timestamp(training.get("started_at"))
        completed = _timestamp(training.get("completed_at"))
        predict_time = _number((training.get("metrics") or {}).get("predict_time"))
        if predict_time is not None and status.is_finished:
            elapsed = predict_time
        elif started is not None:
            elapsed = max(0.0, (completed or now) - started)
        else:
            elapsed = 0.0
        step = facts.step
        if status is JobStatus.RUNNING:
            if not facts.has_steps:
                status = JobStatus.PREPARING
            elif total and step >= total:
                status = JobStatus.SAVING
        if status is JobStatus.SUCCEEDED and total:
            step = total
        eta = facts.remaining_s
        if eta is None and facts.has_steps and total:
            if run.first_step is None:
                run.first_step = (now, step)
            seen_at, seen_step = run.first_step
            if step > seen_step and now > seen_at:
                eta = (total - step) * (now - seen_at) / (step - seen_step)
        error = None
        message = facts.lines[-1][:200] if facts.lines else ""
        if status is JobStatus.PREPARING:
            message = (
                "Waiting for a Replicate GPU" if status_text == "starting" else "Setting up"
            ) + (f": {message}" if message else "")
        elif status is JobStatus.SAVING:
            message = "Packing the weights on Replicate"
        elif status is JobStatus.SUCCEEDED:
            cost = training_cost(training, run.hardware)
            price = PRICE_PER_SECOND.get(run.hardware)
            message = "Finished on Replicate"
            if cost is not None and price is not None and predict_time is not None:
                message += f": {format_duration(predict_time)} of {price.label}, about ${cost:.2f}"
        elif status is JobStatus.FAILED:
            reason = _text(training.get("error")) or _failure_line(logs) or "no reason given"
            error = redact(f"The Replicate training failed: {reason}", self._token)
            message = "Failed"
        elif status is JobStatus.CANCELLED:
            message = "Cancelled on Replicate"
        return Progress(
            status=status,
            step=step,
            total_steps=total,
            loss=facts.loss,
            loss_history=facts.losses,
            learning_rate=facts.learning_rate,
            elapsed_s=elapsed,
            eta_s=None if status.is_finished else eta,
            samples_per_s=facts.iterations_per_s * run.batch_size
            if facts.iterations_per_s
            else None,
            message=message,
            log_tail=facts.lines,
            output_path=run.latest.output_path,
            error=error,
        )

    def _dataset(self, run: _Run, job: Job) -> Dataset:
        if run.dataset is not None:
            return run.dataset
        if job.dataset_dir:
            try:
                return Dataset.from_directory(job.dataset_dir)
            except (DatasetError, OSError) as exc:  # moved or deleted since: sparser metadata
                log.info("Dataset of job %s not readable for the metadata: %s", job.id, exc)
        return Dataset(Path(job.dataset_dir or "."), [])

    # ---- internals: the steps of submit -------------------------------------------------

    async def _default_destination(self, config: LoraConfig) -> str:
        account = await self._get("/v1/account", "reading your Replicate account")
        owner = _text(account.get("username"))
        if not owner:
            raise ReplicateProtocolError("Replicate did not say which account the token is for.")
        name = _SAFE_NAME.sub("-", config.name.lower()).strip("-._") or "lora"
        return f"{owner}/{name}"

    async def _upload_dataset(self, request: TrainingRequest, job: Job) -> str:
        with tempfile.TemporaryFile() as handle:
            summary = await asyncio.to_thread(
                build_dataset_zip,
                request.dataset,
                request.config.trigger_word,
                self.profile,
                handle,
            )
            if summary.converted:
                log.info(
                    "Sending %d image(s) as PNG (the trainer cannot read their format): %s",
                    len(summary.converted),
                    ", ".join(summary.converted[:5]),
                )
            filename = f"{_SAFE_NAME.sub('-', job.name) or 'dataset'}-{job.id}.zip"

            def files() -> dict[str, Any]:
                handle.seek(0)
                return {"content": (filename, handle, "application/zip")}

            uploaded = await self._request(
                "POST",
                self._url("/v1/files"),
                what=f"uploading the dataset ({summary.size / 1e6:.1f} MB)",
                files=files,
                data={"metadata": json.dumps({"lora_studio_job": job.id})},
                retry_server_errors=True,  # an unused upload costs nothing
            )
        url = (uploaded.get("urls") or {}).get("get") if isinstance(uploaded, dict) else None
        if not isinstance(url, str) or not url:
            raise ReplicateProtocolError("Replicate stored the dataset but sent no URL for it.")
        return url

    async def _latest_trainer_version(self) -> str:
        model = await self._get(
            f"/v1/models/{self.profile.model}",
            f"looking up the trainer {self.profile.model}",
            not_found=f"Replicate has no model {self.profile.model}",
        )
        version = _latest_version(model)
        if not version:
            raise ReplicateError(f"The trainer {self.profile.model} has no published version.")
        return version

    async def _ensure_destination(self, destination: str) -> None:
        try:
            await self._get(f"/v1/models/{destination}", f"looking up {destination}")
            return
        except ReplicateNotFound:
            pass
        owner, name = destination.split("/", 1)
        try:
            await self._request(
                "POST",
                self._url("/v1/models"),
                what=f"creating the destination model {destination}",
                json_body={
                    "owner": owner,
                    "name": name,
                    "visibility": self.destination_visibility,
                    "hardware": self.destination_hardware,
                    "description": "LoRA trained with LoRA Studio",
                },
                retry_server_errors=True,  # a second create finds the model there (409)
            )
        except ReplicateError as exc:
            if exc.status == 409:  # created meanwhile (e.g. by a retried request)
                return
            raise ReplicateError(
                f"The destination model {destination} does not exist and could not be created: "
                f"{exc} Its owner must be your Replicate user name or one of your "
                f"organizations; or create the model on replicate.com first.",
                status=exc.status,
                title=exc.title,
                detail=exc.detail,
            ) from None

    # ---- internals: HTTP ----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.api_url + path

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": "lora-studio"}
        # the token goes only to the API host; delivery URLs are unauthenticated
        if _origin(url) == _origin(self.api_url):
            headers["Authorization"] = f"Bearer {self._require_token()}"
        return headers

    def _require_token(self) -> str:
        if self._token is None:
            self._token = get_token(REPLICATE, self.config.api_key)
        if not self._token:
            raise ReplicateAuthError(
                "No Replicate token: set REPLICATE_API_TOKEN or save your token in Settings "
                "(it is kept in the system keyring)."
            )
        return self._token

    async def _get(self, path: str, what: str, *, not_found: str | None = None) -> dict[str, Any]:
        return await self._request("GET", self._url(path), what=what, not_found=not_found)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        json_body: Any = None,
        files: Callable[[], dict[str, Any]] | None = None,
        data: dict[str, str] | None = None,
        retry_server_errors: bool | None = None,
        not_found: str | None = None,
    ) -> dict[str, Any]:
        """One API call with the bounded retries of the module docstring; its JSON object."""
        retry_5xx = method in _IDEMPOTENT if retry_server_errors is None else retry_server_errors
        attempt = 0
        while True:
            attempt += 1
            headers = self._headers(url)
            try:
                response = await self._client.request(
                    method,
                    url,
                    headers=headers,
                    json=json_body,
                    files=files() if files else None,
                    data=data,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # never reached the server: repeating is safe for every method
                if attempt <= self.max_retries:
                    await self._sleep(self._backoff(attempt))
                    continue
                raise self._unreachable(what, exc) from None
            except httpx.TransportError as exc:
                if retry_5xx and attempt <= self.max_retries:
                    await self._sleep(self._backoff(attempt))
                    continue
                raise self._unreachable(what, exc) from None
            status = response.status_code
            if status == 429:
                wait = _retry_after(response)
                wait = self._backoff(attempt) if wait is None else wait
                if attempt <= self.max_retries and wait <= self.max_retry_wait_s:
                    log.info("Replicate throttled %s; retrying in %.0f s", what, wait)
                    await self._sleep(wait)
                    continue
                problem = _problem(response)
                raise ReplicateRateLimited(
                    self._redact(
                        f"Replicate is throttling requests while {what} "
                        f"({problem.get('detail') or 'too many requests'}); try again in "
                        f"{format_duration(wait)}."
                    ),
                    retry_after=wait,
                    status=429,
                    detail=problem.get("detail"),
                ) from None
            if status >= 500 and retry_5xx and attempt <= self.max_retries:
                log.info("Replicate answered %d while %s; retrying", status, what)
                await self._sleep(self._backoff(attempt))
                continue
            if status >= 400:
                raise self._error(response, what, not_found)
            return self._json(response, what)

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry_backoff_s * 2 ** (attempt - 1), 30.0))

    def _redact(self, text: str) -> str:
        return redact(text, self._token, self.config.api_key)

    def _unreachable(self, what: str, exc: Exception) -> ReplicateUnavailable:
        reason = type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            reason = "could not connect"
        elif isinstance(exc, httpx.TimeoutException):
            reason = "timed out"
        return ReplicateUnavailable(
            self._redact(
                f"Replicate ({self.api_url}) cannot be reached while {what} ({reason}); "
                f"check your internet connection."
            )
        )

    def _error(self, response: httpx.Response, what: str, not_found: str | None) -> ReplicateError:
        status = response.status_code
        problem = _problem(response)
        title = problem.get("title")
        detail = problem.get("detail") or title or response.reason_phrase or f"HTTP {status}"
        fields = problem.get("invalid_fields") or []
        if isinstance(fields, list) and fields:
            parts = [
                f"{f.get('field', '?')}: {f.get('description', '')}".strip()
                for f in fields
                if isinstance(f, dict)
            ]
            detail = f"{detail} ({'; '.join(parts)})"

        def made(kind: type[ReplicateError], message: str) -> ReplicateError:
            return kind(self._redact(message), status=status, title=title, detail=detail)

        if status == 401:
            return made(
                ReplicateAuthError,
                f"Replicate refused the token while {what} ({detail}); check your Replicate "
                f"token (REPLICATE_API_TOKEN or the one saved in Settings).",
            )
        if status == 403:
            return made(
                ReplicateAuthError,
                f"Replicate does not allow {what} with this token ({detail}); check your "
                f"Replicate token and the account or organization it belongs to.",
            )
        if status == 404:
            return made(ReplicateNotFound, f"{not_found or 'Not found on Replicate'} ({detail}).")
        if status == 413:
            return made(
                ReplicateError,
                f"Replicate refused {what}: it is too large ({detail}); use fewer or smaller "
                f"images.",
            )
        if status >= 500:
            return made(
                ReplicateUnavailable, f"Replicate failed while {what} ({detail}, HTTP {status})."
            )
        return made(ReplicateError, f"Replicate refused {what}: {detail} (HTTP {status}).")

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            value = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            start = response.text[:60].strip()
            raise ReplicateProtocolError(
                self._redact(
                    f"Replicate sent a reply that is not JSON while {what} (HTTP "
                    f"{response.status_code}, starting {start!r})."
                ),
                status=response.status_code,
            ) from None
        if not isinstance(value, dict):
            raise ReplicateProtocolError(
                f"Replicate sent {type(value).__name__} instead of an object while {what}.",
                status=response.status_code,
            )
        return value

    async def _download(self, url: str, folder: Path) -> Path:
        """The weights at ``url`` in a temporary file in ``folder`` (bounded in size)."""
        what = "downloading the trained weights"
        attempt = 0
        while True:
            attempt += 1
            fd, name = tempfile.mkstemp(prefix=".replicate-weights-", suffix=".part", dir=folder)
            path = Path(name)
            keep = False
            try:
                with os.fdopen(fd, "wb") as handle:
                    async with self._client.stream(
                        "GET", url, headers=self._headers(url), follow_redirects=True
                    ) as response:
                        status = response.status_code
                        retry = status == 429 or status >= 500
                        if retry and attempt <= self.max_retries:
                            wait = (_retry_after(response) if status == 429 else None) or (
                                self._backoff(attempt)
                            )
                            if wait <= self.max_retry_wait_s:
                                await self._sleep(wait)
                                continue
                        if status >= 400:
                            await response.aread()
                            raise self._error(response, what, "The weights are not on Replicate")
                        size = 0
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > MAX_WEIGHTS_BYTES:
                                raise ReplicateWeightsError(
                                    f"The weights from Replicate are larger than "
                                    f"{MAX_WEIGHTS_BYTES // 1024**3} GB; not downloaded."
                                )
                            handle.write(chunk)
                keep = True
                return path
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError) as exc:
                if attempt <= self.max_retries:
                    await self._sleep(self._backoff(attempt))
                    continue
                raise self._unreachable(what, exc) from None
            except httpx.TransportError as exc:
                raise self._unreachable(what, exc) from None
            finally:
                if not keep:
                    with contextlib.suppress(OSError):
                        path.unlink()


# ---- helpers ----------------------------------------------------------------------------


def _profile(trainer: str) -> TrainerProfile:
    try:
        return TRAINERS[trainer]
    except KeyError:
        known = ", ".join(TRAINERS)
        raise BackendError(
            f"LoRA Studio does not know how to drive the Replicate trainer {trainer!r}; "
            f"choose one of: {known}."
        ) from None


def _latest_version(model: Mapping[str, Any]) -> str | None:
    latest = model.get("latest_version")
    if isinstance(latest, dict):
        return _text(latest.get("id")) or None
    return None


def _moved(before: Progress, after: Progress) -> bool:
    return (before.status, before.step, before.log_tail[-1:], before.message) != (
        after.status,
        after.step,
        after.log_tail[-1:],
        after.message,
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value:
        value = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    detail = _problem(response).get("detail") or ""
    match = re.search(r"available in ~?(\d+(?:\.\d+)?) ?s", str(detail))
    return float(match[1]) if match else None


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The RFC 7807 body (``title``, ``detail``, ``status``...), or ``{}``."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        return {}
    if not isinstance(body, dict):
        return {}
    return {
        k: (str(v) if k in ("title", "detail") and v is not None else v) for k, v in body.items()
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Replicate sends nanoseconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _config_of(job: Job) -> LoraConfig | None:
    if not job.config:
        return None
    try:
        return LoraConfig.from_dict(job.config)
    except (ConfigError, TypeError, ValueError, KeyError):  # costs only the metadata
        log.warning("The config of job %s cannot be read; metadata will be sparse", job.id)
        return None


def _target(dest: Path | None, output_dir: Path, name: str) -> tuple[Path, str]:
    if dest is None:
        return output_dir, name
    if dest.is_dir() or dest.suffix.lower() != ".safetensors":
        return dest, name
    return dest.parent, dest.stem


@dataclass(frozen=True)
class _Facts:
    config: LoraConfig
    steps: int
    started_at: float
    finished_at: float
    output_name: str


def _run_facts(run: _Run, job: Job) -> _Facts:
    training = run.training
    config = run.config or _config_of(job) or LoraConfig(name=job.name)
    finished = _timestamp(training.get("completed_at")) or time.time()
    started = _timestamp(training.get("started_at")) or finished
    return _Facts(config, run.total_steps, started, finished, job.name)


def _write_lora(
    archive: Path,
    folder: Path,
    name: str,
    profile: TrainerProfile,
    facts: _Facts,
    dataset: Dataset,
) -> Path:
    """Take the LoRA out of the downloaded weights, add our metadata, write it (new file)."""
    from lora_studio.training.export import (
        RunFacts,
        kohya_metadata,
        save_kohya_lora,
        unique_output_path,
    )

    blob = _lora_bytes(archive, profile.lora_member)
    existing = _safetensors_metadata(blob)
    from safetensors.torch import load

    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise ReplicateWeightsError(
            f"The LoRA in the weights from Replicate cannot be read: {exc}."
        ) from None
    del blob
    config = facts.config
    plan_epochs = plan_steps(dataset.samples_per_epoch(config.repeats), config).epochs
    ours = kohya_metadata(
        config,
        dataset,
        RunFacts(
            base_model_version=profile.kohya_version,
            base_model_name=profile.base_model_name,
            num_train_images=len(dataset.images),
            num_reg_images=0,
            max_train_steps=facts.steps,
            steps_done=facts.steps,
            epochs=plan_epochs,
            started_at=facts.started_at,
            finished_at=facts.finished_at,
            mixed_precision="bf16",
        ),
        facts.output_name,
    )
    ours["ss_training_comment"] = (
        f"trained with LoRA Studio on Replicate ({profile.model}), preset {config.preset}"
    )
    target = unique_output_path(folder, name)
    return save_kohya_lora(target, tensors, {**existing, **ours})


def _lora_bytes(archive: Path, member_name: str) -> bytes:
    """The LoRA file inside the downloaded weights: a tar, a zip, or the file itself."""
    with archive.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, JSON
        if archive.stat().st_size > MAX_LORA_BYTES:
            raise ReplicateWeightsError("The LoRA from Replicate is unexpectedly large.")
        return archive.read_bytes()
    if zipfile.is_zipfile(archive):
        return _from_zip(archive, member_name)
    if tarfile.is_tarfile(archive):
        return _from_tar(archive, member_name)
    raise ReplicateWeightsError(
        "The weights from Replicate are neither a .tar, a .zip nor a .safetensors file."
    )


def _unsafe_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name) is not None


def _refuse(name: str, why: str) -> ReplicateWeightsError:
    return ReplicateWeightsError(
        f"The weights archive from Replicate has an unsafe entry {name!r} ({why}); it was not used."
    )


def _pick(names: list[str], member_name: str) -> str:
    exact = [n for n in names if PurePosixPath(n).name == member_name]
    candidates = exact or [n for n in names if n.lower().endswith(".safetensors")]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        shown = ", ".join(names[:8]) or "nothing"
        raise ReplicateWeightsError(
            f"The weights from Replicate hold no {member_name} (found: {shown})."
        )
    shortest = min(candidates, key=lambda n: (len(PurePosixPath(n).parts), n))
    log.info("Several LoRA files in the weights; using %s", shortest)
    return shortest


def _from_tar(archive: Path, member_name: str) -> bytes:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise ReplicateWeightsError("The weights archive has too many entries.")
            for member in members:
                if _unsafe_name(member.name):
                    raise _refuse(member.name, "a path outside the archive")
                if member.issym() or member.islnk():
                    raise _refuse(member.name, "a link")
                if not (member.isfile() or member.isdir()):
                    raise _refuse(member.name, "a device or special file")
            files = {m.name: m for m in members if m.isfile()}
            chosen = files[_pick(list(files), member_name)]
            if chosen.size > MAX_LORA_BYTES:
                raise ReplicateWeightsError("The LoRA in the weights is unexpectedly large.")
            source = tar.extractfile(chosen)
            if source is None:
                raise ReplicateWeightsError(f"{chosen.name} in the weights cannot be read.")
            return source.read(MAX_LORA_BYTES + 1)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReplicateWeightsError(
            f"The weights archive from Replicate is damaged: {exc}."
        ) from None


def _from_zip(archive: Path, member_name: str) -> bytes:
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            if len(infos) > MAX_ARCHIVE_MEMBERS:
                raise ReplicateWeightsError("The weights archive has too many entries.")
            for info in infos:
                if _unsafe_name(info.filename):
                    raise _refuse(info.filename, "a path outside the archive")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise _refuse(info.filename, "a link")
            files = {i.filename: i for i in infos if not i.is_dir()}
            chosen = files[_pick(list(files), member_name)]
            if chosen.file_size > MAX_LORA_BYTES:
                raise ReplicateWeightsError("The LoRA in the weights is unexpectedly large.")
            with zipped.open(chosen) as source:
                data = source.read(MAX_LORA_BYTES + 1)
            if len(data) > MAX_LORA_BYTES:  # a size that lied
                raise ReplicateWeightsError("The LoRA in the weights is unexpectedly large.")
            return data
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ReplicateWeightsError(
            f"The weights archive from Replicate is damaged: {exc}."
        ) from None


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file; checks the header is sound."""
    if len(blob) < 8:
        raise ReplicateWeightsError("The LoRA from Replicate is empty or cut short.")
    length = int.from_bytes(blob[:8], "little")
    if length <= 0 or 8 + length > len(blob) or length > 100 * 1024**2:
        raise ReplicateWeightsError("The LoRA from Replicate is not a valid safetensors file.")
    try:
        header = json.loads(blob[8 : 8 + length])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReplicateWeightsError(
            "The LoRA from Replicate is not a valid safetensors file."
        ) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {str(k): str(v) for k, v in meta.items()}
