"""What every captioner is: the :class:`CaptionProvider` Protocol, the :class:`Caption` it
returns, and the one exception tree all of them raise.

A provider turns one PIL image (already upright, RGB, downscaled by the runner) into a
caption. Local providers run a model in a worker thread; remote ones speak HTTP through
``httpx`` with a base URL and an optional injected ``httpx.AsyncClient``. None of them
post-processes the text (the runner does) or touches files.

Errors (``str(error)`` is one user-facing line, never holding a token)::

    LoraStudioError                      (lora_studio.core.errors)
     └── CaptionerError                  a captioner could not caption an image
          ├── AuthError                  401/403: the token or API key was refused
          ├── RateLimited                429: too many requests (retry_after seconds)
          ├── ModelLoading               503 "loading": the model is starting (estimated_time)
          ├── ServerError                5xx or another unexpected HTTP status (status)
          ├── BadResponse                not JSON, or JSON of an unexpected shape
          ├── ProviderUnavailable        connection refused, DNS failure, connection dropped
          ├── CaptionTimeout             no answer within the time limit
          ├── ModelNotFound              the server or the disk has no such model
          └── ImageUnreadable            the image file cannot be decoded

Each error says whether trying again may help (:attr:`CaptionerError.retryable`), how long
the server asked to wait (:attr:`CaptionerError.retry_after`) and whether it dooms every
other image of the batch too (:attr:`CaptionerError.fatal`: a refused token, a missing
model).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lora_studio.core.errors import LoraStudioError

if TYPE_CHECKING:
    from PIL import Image

#: Messages are cut to this many characters (they end up on one line of a window or a log).
MAX_MESSAGE = 400


@dataclass(frozen=True)
class Caption:
    """One caption as the captioner wrote it (before post-processing).

    Attributes:
        text: the caption, stripped.
        provider: the provider kind that made it (``blip``, ``hf-api``, ``ollama``...).
        model: the model that made it (an HF id, a folder, a server-side model name).
        elapsed_s: seconds the captioner took (for a batch: the batch time divided evenly).
        prompt: the prompt it was given, if any.
    """

    text: str
    provider: str
    model: str
    elapsed_s: float = 0.0
    prompt: str | None = None


@runtime_checkable
class CaptionProvider(Protocol):
    """A captioner.

    Attributes:
        name: the provider kind (``blip``, ``blip2``, ``hf-api``, ``openai``, ``ollama``).
        model: the model it uses.
        max_side: the longest image side worth sending (the runner downscales to it).
        default_concurrency: how many images it should be given at once.

    Optional extras the runner uses when present: ``async load()`` (load a model before
    the first image), ``async caption_batch(images, prompt) -> list[Caption]`` and
    ``batch_size`` (local models caption several images per forward pass).
    """

    name: str
    model: str
    max_side: int
    default_concurrency: int

    async def caption(self, image: Image.Image, prompt: str | None = None) -> Caption:
        """Caption one image.

        Raises:
            CaptionerError: (a subclass of) it, whatever went wrong.
        """
        ...

    async def aclose(self) -> None:
        """Release the HTTP client or the model."""
        ...


@runtime_checkable
class BatchCaptionProvider(CaptionProvider, Protocol):
    """A provider that captions several images in one call (local models)."""

    batch_size: int

    async def caption_batch(
        self, images: Sequence[Image.Image], prompt: str | None = None
    ) -> list[Caption]:
        """Caption ``images`` together; one :class:`Caption` each, in order."""
        ...


# ---- errors ------------------------------------------------------------------------------


class CaptionerError(LoraStudioError):
    """A captioner failed; ``str(error)`` is one line for the user.

    Attributes:
        retryable: trying the same image again later may succeed.
        retry_after: seconds the server asked us to wait (``None``: no advice).
        fatal: every other image would fail the same way (stop the batch).
    """

    retryable: bool = False
    fatal: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(one_line(message))
        self.retry_after = retry_after


class AuthError(CaptionerError):
    """The server refused the token or API key (401/403)."""

    fatal = True


class RateLimited(CaptionerError):
    """Too many requests (429); wait :attr:`retry_after` seconds."""

    retryable = True


class ModelLoading(CaptionerError):
    """The model is still loading on the server (Hugging Face's 503)."""

    retryable = True

    def __init__(self, message: str, *, estimated_time: float | None = None) -> None:
        super().__init__(message, retry_after=estimated_time)
        self.estimated_time = estimated_time


class ServerError(CaptionerError):
    """An unexpected HTTP status; 5xx (and 408) are worth retrying, other 4xx are not."""

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.retryable = status >= 500 or status == 408


class BadResponse(CaptionerError):
    """The answer was not JSON, or not the JSON the protocol promises."""


class ProviderUnavailable(CaptionerError):
    """The server cannot be reached (refused, unknown host, dropped connection)."""

    retryable = True


class CaptionTimeout(CaptionerError):
    """The captioner did not answer in time."""

    retryable = True


class ModelNotFound(CaptionerError):
    """The model is not on the server, or not on this computer."""

    fatal = True


class ImageUnreadable(CaptionerError):
    """The image file cannot be decoded (corrupt, truncated, not an image)."""


# ---- helpers shared by the providers -----------------------------------------------------

_SPACES = re.compile(r"\s+")


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    flat = _SPACES.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "\u2026"


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret (token, API key) replaced by ``***``.

    Servers sometimes echo the request back in an error; a token must never reach a
    message, a log line or a file.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` as JPEG bytes (RGB; what every remote captioner accepts)."""
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_base64(image: Image.Image, quality: int = 90) -> str:
    """``image`` as base64 JPEG text (for JSON bodies and ``data:`` URLs)."""
    return base64.b64encode(encode_jpeg(image, quality)).decode("ascii")
