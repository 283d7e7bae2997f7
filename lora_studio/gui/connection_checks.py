"""The Settings dialog's "Test connection": ask each service what it is and who we are.

Plain ``async`` functions over httpx (no Qt); each answers a :class:`CheckResult` and never
raises for the service's sake: an unreachable server, a refused token or an odd answer is
``ok=False`` with a sentence that says which.

* ComfyUI: the same check the "Train on" panel runs (:meth:`ComfyUIBackend.check`: version,
  device and free VRAM, training nodes, checkpoints).
* Replicate: ``GET /v1/account`` with the token -> the user name.
* Hugging Face: ``GET {endpoint}/api/whoami-v2`` with the token -> the user name (the
  endpoint is huggingface.co unless set, as ``HF_ENDPOINT`` does for huggingface_hub).
* OpenAI-compatible (vLLM, llama-server, LM Studio, Ollama ``/v1``): ``GET {base}/models``
  -> the model ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from lora_studio.backends.base import BackendConfig
from lora_studio.core.jobs import BackendType
from lora_studio.core.secrets import redact

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_REPLICATE_API = "https://api.replicate.com"
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CheckResult:
    """What a connection test found.

    Attributes:
        ok: the service answered and accepted us.
        message: one sentence for the user.
        items: what it offered (the OpenAI-compatible server's models).
    """

    ok: bool
    message: str
    items: tuple[str, ...] = ()


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


async def _get_json(
    url: str, token: str | None, what: str, *, client: httpx.AsyncClient | None = None
) -> tuple[Any | None, CheckResult | None]:
    """``(json, None)`` on a 2xx answer, else ``(None, the failure as a result)``."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    owns = client is None
    http = client or httpx.AsyncClient(timeout=TIMEOUT_S)
    try:
        response = await http.get(url, headers=headers)
    except httpx.InvalidURL:
        return None, CheckResult(False, f"{url!r} is not a web address.")
    except httpx.UnsupportedProtocol:
        return None, CheckResult(False, f"{url!r} must start with http:// or https://.")
    except httpx.TimeoutException:
        return None, CheckResult(False, f"No answer from {_host(url)} within {TIMEOUT_S:g} s.")
    except httpx.HTTPError as exc:
        reason = redact(str(exc) or type(exc).__name__, token)
        return None, CheckResult(
            False,
            f"No network connection to {_host(url)}: {reason}. Check the address, that the "
            "server is running, and this computer's network.",
        )
    finally:
        if owns:
            await http.aclose()
    if response.status_code in (401, 403):
        if not token:
            return None, CheckResult(
                False, f"{what} asks for a token (HTTP {response.status_code}) and no token is set."
            )
        return None, CheckResult(
            False,
            f"{what} refused the token (HTTP {response.status_code}): check your {what} token.",
        )
    if response.status_code >= 400:
        body = redact(response.text.strip().replace("\n", " ")[:160], token)
        return None, CheckResult(
            False, f"{what} at {_host(url)} answered HTTP {response.status_code}: {body}"
        )
    try:
        return response.json(), None
    except ValueError:
        return None, CheckResult(
            False, f"{_host(url)} answered, but not with JSON: is this a {what} server?"
        )


async def check_comfyui(url: str, output_dir: Path, token: str | None = None) -> CheckResult:
    """The "Train on" panel's check of a ComfyUI server: version, device, VRAM, nodes.
    ``token``: a bearer token for a proxy in front of it (``None``: the environment's or
    the keyring's, as a run uses)."""
    from lora_studio.backends.comfyui import ComfyUIBackend

    if not url.strip():
        return CheckResult(False, "Enter the ComfyUI server's address, e.g. http://127.0.0.1:8188.")
    backend = ComfyUIBackend(
        BackendConfig(BackendType.COMFYUI, output_dir, api_url=url.strip()), token=token
    )
    try:
        status = await backend.check()
    finally:
        await backend.aclose()
    return CheckResult(status.ok, status.message)


async def check_replicate(token: str | None, api_url: str = "") -> CheckResult:
    """``GET /v1/account``: whose token this is."""
    if not token:
        return CheckResult(False, "No Replicate token: paste yours (replicate.com/account).")
    base = (api_url or DEFAULT_REPLICATE_API).rstrip("/").removesuffix("/v1")
    data, failure = await _get_json(f"{base}/v1/account", token, "Replicate")
    if failure is not None:
        return failure
    user = data.get("username") if isinstance(data, dict) else None
    if not user:
        return CheckResult(False, "Replicate answered without a user name: is this its API?")
    kind = data.get("type") or "user"
    return CheckResult(True, f"Signed in to Replicate as {user} ({kind}).")


async def check_huggingface(token: str | None, endpoint: str = "") -> CheckResult:
    """``GET /api/whoami-v2``: whose token this is."""
    if not token:
        return CheckResult(False, "No Hugging Face token: paste one from huggingface.co/settings.")
    base = (endpoint or DEFAULT_HF_ENDPOINT).rstrip("/")
    data, failure = await _get_json(f"{base}/api/whoami-v2", token, "Hugging Face")
    if failure is not None:
        return failure
    name = data.get("name") if isinstance(data, dict) else None
    if not name:
        return CheckResult(False, f"{_host(base)} answered without a user name.")
    role = ""
    auth = data.get("auth") if isinstance(data, dict) else None
    if isinstance(auth, dict) and isinstance(auth.get("accessToken"), dict):
        role = str(auth["accessToken"].get("role") or "")
    return CheckResult(
        True, f"Signed in to Hugging Face as {name}" + (f" ({role} token)." if role else ".")
    )


async def check_openai(base_url: str, api_key: str | None = None) -> CheckResult:
    """``GET {base}/models``: the models an OpenAI-compatible server offers."""
    if not base_url.strip():
        return CheckResult(False, "Enter the server's address, e.g. http://127.0.0.1:8080/v1.")
    base = base_url.strip().rstrip("/")
    data, failure = await _get_json(f"{base}/models", api_key, "The caption server")
    if failure is not None:
        return failure
    entries = data.get("data") if isinstance(data, dict) else data
    models = tuple(
        str(entry.get("id"))
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict) and entry.get("id")
    )
    if not models:
        return CheckResult(True, f"{_host(base)} answered but lists no models.")
    shown = ", ".join(models[:5]) + (f" and {len(models) - 5} more" if len(models) > 5 else "")
    return CheckResult(
        True,
        f"{_host(base)} offers {len(models)} model{'s' if len(models) > 1 else ''}: {shown}.",
        models,
    )
