"""API tokens (Hugging Face, Replicate, OpenAI-compatible servers): the OS keyring, never a
config file, never a log line.

A token is looked up in this order: given explicitly, the service's environment variable
(``HF_TOKEN``, ``REPLICATE_API_TOKEN``...), the OS keyring (service ``lora-studio``, user
name = the service key), then the fallback file. On a machine without a keyring backend
(a headless Linux box) a saved token goes to ``<config dir>/tokens.json``, readable by its
owner only (0600), with a warning that says so and how to get a keyring; nothing else in
the app ever writes a token to disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.paths import config_dir

log = logging.getLogger(__name__)

KEYRING_SERVICE = "lora-studio"


class SecretError(LoraStudioError):
    """A token could not be stored or read."""


@dataclass(frozen=True)
class TokenSource:
    """Where a service's token comes from."""

    key: str  # the keyring user name, e.g. "huggingface"
    env_var: str  # e.g. "HF_TOKEN"
    label: str  # for messages, e.g. "Hugging Face"


HUGGINGFACE = TokenSource("huggingface", "HF_TOKEN", "Hugging Face")
REPLICATE = TokenSource("replicate", "REPLICATE_API_TOKEN", "Replicate")
OPENAI = TokenSource("openai", "OPENAI_API_KEY", "OpenAI-compatible server")
#: Optional: a ComfyUI behind an authenticating proxy (sent as ``Authorization: Bearer``).
COMFYUI = TokenSource("comfyui", "COMFYUI_API_TOKEN", "ComfyUI server")


def get_token(source: TokenSource, explicit: str | None = None) -> str | None:
    """The token for ``source``, or ``None`` when there is none anywhere."""
    if explicit:
        return explicit.strip()
    from_env = os.environ.get(source.env_var, "").strip()
    if from_env:
        return from_env
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            value = keyring.get_password(KEYRING_SERVICE, source.key)
        except KeyringError as exc:
            log.info("No keyring available for the %s token: %s", source.label, exc)
            value = None
    except ImportError:
        value = None
    return value.strip() if value else file_token(source)


def save_token(source: TokenSource, token: str) -> str | None:
    """Store ``token`` in the OS keyring; without one, in the owner-only fallback file.

    Returns:
        ``None`` when the keyring took it; otherwise the warning to show the user (the
        token is in the fallback file, not encrypted).

    Raises:
        SecretError: neither the keyring nor the fallback file could take it.
    """
    try:
        import keyring
        from keyring.errors import KeyringError, NoKeyringError
    except ImportError:
        return _save_to_file(source, token)
    try:
        keyring.set_password(KEYRING_SERVICE, source.key, token.strip())
    except NoKeyringError:
        return _save_to_file(source, token)
    except KeyringError as exc:
        raise SecretError(f"The {source.label} token could not be saved: {exc}") from None
    _forget_in_file(source)  # the keyring's copy wins; no stale one left on disk
    return None


def delete_token(source: TokenSource) -> None:
    """Forget the stored token for ``source``, in the keyring and the fallback file (no
    error when there is none)."""
    _forget_in_file(source)
    try:
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError
    except ImportError:
        return
    with contextlib.suppress(PasswordDeleteError, KeyringError):
        keyring.delete_password(KEYRING_SERVICE, source.key)


# ---- the fallback file ---------------------------------------------------------------------


def fallback_file() -> Path:
    """Where tokens go on a system without a keyring (owner-only, 0600)."""
    return config_dir() / "tokens.json"


def file_token(source: TokenSource) -> str | None:
    """``source``'s token in the fallback file, if any. A file that others can read is
    ignored (with a warning), as ssh does with a private key."""
    path = fallback_file()
    try:
        info = path.stat()
    except OSError:
        return None
    if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "Ignoring %s: other users can read it. Run `chmod 600 %s` to use it.", path, path
        )
        return None
    value = _read_file(path).get(source.key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _read_file(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_to_file(source: TokenSource, token: str) -> str:
    path = fallback_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # created owner-only; the atomic rewrite keeps the mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(path, 0o600)
        data = _read_file(path)
        data[source.key] = token.strip()
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise SecretError(
            f"{_no_keyring(source)} (It could not be kept in {path} either: {exc.strerror or exc}.)"
        ) from None
    warning = (
        f"This system has no keyring, so the {source.label} token is kept in {path}, "
        f"readable only by you but not encrypted. Install and unlock a Secret Service "
        f"(GNOME Keyring, KWallet) to keep it in a keyring instead."
    )
    log.warning("%s", warning)
    return warning


def _forget_in_file(source: TokenSource) -> None:
    path = fallback_file()
    data = _read_file(path)
    if source.key in data:
        del data[source.key]
        with contextlib.suppress(OSError):
            if data:
                atomic_write_text(path, json.dumps(data, indent=2) + "\n")
            else:
                path.unlink()


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret replaced by ``***`` (for errors and logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization|x-api-key|api-key)(['\"]?\s*[:=,]\s*['\"]?)[^\r\n'\";,]+"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")


class RedactingFilter(logging.Filter):
    """A logging filter that hides credentials in a record: ``Authorization`` headers,
    ``Bearer`` tokens. For libraries that log their requests at DEBUG with every header
    (the ``websockets`` client does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = _BEARER.sub("Bearer ***", _AUTH_HEADER.sub(r"\1\2***", message))
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


def redacting_logger(name: str) -> logging.Logger:
    """The logger ``name`` with a :class:`RedactingFilter` on it (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


def _no_keyring(source: TokenSource) -> str:
    return (
        f"This system has no keyring to keep the {source.label} token in; set the "
        f"{source.env_var} environment variable instead."
    )
