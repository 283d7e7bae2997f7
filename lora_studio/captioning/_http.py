"""The HTTP plumbing the remote captioners share: one ``httpx.AsyncClient`` (injected or
owned), transport failures and HTTP statuses turned into :mod:`~lora_studio.captioning.base`
errors, and the error text servers put in their JSON bodies pulled out for the message.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import socket
import time
from typing import Any

import httpx

from lora_studio.captioning.base import (
    AuthError,
    BadResponse,
    CaptionerError,
    CaptionTimeout,
    ModelNotFound,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    one_line,
    scrub,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0
#: Connecting is quick or it is not happening; reading a caption may take a while.
CONNECT_TIMEOUT_S = 10.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def display_url(url: str) -> str:
    """``url`` without user name, password or query (what a message may show)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}".rstrip("/")


def error_detail(response: httpx.Response, limit: int = 200) -> str:
    """The error text a server put in its body: ``{"error": "..."}``,
    ``{"error": {"message": "..."}}``, ``{"message"}``, ``{"detail"}``, or the raw text."""
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        data = None
    text = _message_in(data) if data is not None else None
    if text is None:
        try:
            text = response.text
        except (UnicodeDecodeError, httpx.ResponseNotRead):
            text = ""
    return one_line(text, limit)


def _message_in(data: Any) -> str | None:
    if isinstance(data, str):
        return data
    if isinstance(data, list) and data:
        return _message_in(data[0])
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "title"):
            if key in data:
                found = _message_in(data[key])
                if found:
                    return found
    return None


class HttpCaptioner:
    """Base of the remote providers: a base URL, a client, and error mapping.

    Args:
        base_url: the server's base URL (no trailing slash needed).
        model: the model name the server knows.
        client: an ``httpx.AsyncClient`` to use (it is not closed by :meth:`aclose`);
            by default one is made and owned.
        timeout_s: seconds one HTTP request may take.
        token: a bearer token / API key sent as ``Authorization: Bearer``; never logged.
        max_side: the longest image side sent.
        concurrency: images in flight at once (the runner's default).
    """

    name = "http"
    label = "The captioning server"
    token_hint = "check your token"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        max_side: int = 1024,
        concurrency: int = 4,
    ) -> None:
        if not base_url or not base_url.strip():
            raise CaptionerError(f"{self.label} needs a URL.")
        self.base_url = base_url.strip().rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.max_side = max_side
        self.default_concurrency = concurrency
        self._token = token or None
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            follow_redirects=True,
        )

    def __repr__(self) -> str:  # no token in it, ever
        return f"{type(self).__name__}(url={display_url(self.base_url)!r}, model={self.model!r})"

    @property
    def has_token(self) -> bool:
        return self._token is not None

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpCaptioner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- requests ----------------------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if extra:
            headers.update(extra)
        return headers

    async def _post(
        self,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST to ``base_url + path``; transport failures become captioner errors."""
        url = self.base_url + path
        where = f"{self.label} at {display_url(self.base_url)}"
        timeout = httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))
        try:
            return await self._client.post(
                url,
                json=json_body,
                content=content,
                headers=self._headers(headers),
                timeout=timeout,
            )
        except httpx.ConnectTimeout:
            raise ProviderUnavailable(f"{where} did not accept the connection in time.") from None
        except httpx.TimeoutException:
            raise CaptionTimeout(f"{where} did not answer within {self.timeout_s:g} s.") from None
        except httpx.ConnectError as exc:
            raise ProviderUnavailable(f"Cannot reach {where}: {_connect_reason(exc)}.") from None
        except httpx.TransportError as exc:
            reason = self._scrub(str(exc)) or type(exc).__name__
            raise ProviderUnavailable(f"{where} dropped the connection ({reason}).") from None

    def _scrub(self, text: str) -> str:
        return scrub(text, self._token)

    def _check(self, response: httpx.Response) -> None:
        """Raise the error for a non-2xx ``response`` (nothing for success)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = self._scrub(error_detail(response))
        where = f"{self.label} ({display_url(self.base_url)})"
        suffix = f": {detail}" if detail else ""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status in (401, 403):
            if self._token is None:
                raise AuthError(f"{where} needs a token and none was given; {self.token_hint}.")
            raise AuthError(
                f"{where} refused the token ({status} {response.reason_phrase}); {self.token_hint}."
            )
        if status == 429:
            wait = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
            raise RateLimited(
                f"{where} is rate limiting requests{wait}{suffix}", retry_after=retry_after
            )
        if status == 404:
            self._not_found(detail)
        raise ServerError(
            f"{where} answered {status} {response.reason_phrase}{suffix}",
            status=status,
            retry_after=retry_after,
        )

    def _not_found(self, detail: str) -> None:
        """A 404: the model is unknown (providers say how to fix it) or the URL is wrong."""
        extra = f" ({detail})" if detail else ""
        raise ModelNotFound(
            f"{self.label} at {display_url(self.base_url)} has no model {self.model!r} or "
            f"the URL is wrong{extra}."
        )

    def _json(self, response: httpx.Response) -> Any:
        """The body as JSON, or :class:`BadResponse`."""
        try:
            return json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            snippet = self._scrub(one_line(response.text, 80)) if response.content else "nothing"
            raise BadResponse(
                f"{self.label} at {display_url(self.base_url)} sent an answer that is not "
                f"JSON ({snippet})."
            ) from None

    def _bad_shape(self, what: str) -> BadResponse:
        return BadResponse(
            f"{self.label} at {display_url(self.base_url)} sent an unexpected answer: {what}."
        )


def _connect_reason(exc: httpx.ConnectError) -> str:
    """Why a connection failed, from the exception and its causes (httpcore wraps the
    ``ConnectionRefusedError`` or ``socket.gaierror`` in "All connection attempts failed")."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = " ".join(str(e).lower() for e in chain)
    if any(isinstance(e, socket.gaierror) for e in chain) or any(
        hint in texts
        for hint in (
            "name or service not known",
            "nodename nor servname",
            "getaddrinfo",
            "name resolution",
            "no address associated",
        )
    ):
        return "the host name cannot be resolved (check the URL)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in texts:
        return "connection refused (is the server running, and on this port?)"
    if "unreachable" in texts:
        return "the network is unreachable"
    return one_line(str(exc), 120) or "the connection failed"
