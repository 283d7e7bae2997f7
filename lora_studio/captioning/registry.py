"""Provider kinds by name, and the factory that makes a provider from user options.

======== ========================================== ========================================
kind     what                                       default model / URL
======== ========================================== ========================================
blip     BLIP on this computer (transformers)       Salesforce/blip-image-captioning-large
blip2    BLIP-2 on this computer (transformers)     Salesforce/blip2-opt-2.7b
hf-api   Hugging Face Inference API (BLIP/BLIP-2)   Salesforce/blip-image-captioning-large,
                                                    https://router.huggingface.co/hf-inference
openai   OpenAI-compatible chat (vLLM, llama.cpp,   llava, http://127.0.0.1:8080/v1
         LM Studio, Ollama /v1): LLaVA & co
ollama   Ollama's native /api/generate              llava, http://127.0.0.1:11434
======== ========================================== ========================================

:func:`create_provider` takes the options every front end has (model, URL, token,
prompt, timeout) and passes the rest to the provider's constructor;
:func:`register_provider` adds a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from lora_studio.captioning.base import CaptionerError, CaptionProvider
from lora_studio.captioning.credentials import find_token
from lora_studio.captioning.hf_api import DEFAULT_HF_MODEL, HF_ROUTER_URL
from lora_studio.captioning.local import DEFAULT_MODELS
from lora_studio.captioning.ollama import DEFAULT_OLLAMA_MODEL, DEFAULT_OLLAMA_URL
from lora_studio.captioning.openai_chat import DEFAULT_OPENAI_MODEL, DEFAULT_OPENAI_URL

Factory = Callable[..., CaptionProvider]


@dataclass(frozen=True)
class ProviderSpec:
    """What the GUI and the CLI need to know about a provider kind.

    Attributes:
        kind: the name (``blip``, ``hf-api``...).
        label: a human name.
        local: runs on this computer (no URL, no token).
        default_model: the model used when none is given.
        default_url: the URL used when none is given (``None`` for local kinds).
        uses_token: sends a token / API key when one is found.
        takes_prompt: a prompt changes what it writes.
        factory: ``factory(model=..., url=..., token=..., client=..., prompt=...,
            timeout_s=..., **options) -> CaptionProvider``.
    """

    kind: str
    label: str
    local: bool
    default_model: str
    default_url: str | None
    uses_token: bool
    takes_prompt: bool
    factory: Factory


_REGISTRY: dict[str, ProviderSpec] = {}


def register_provider(spec: ProviderSpec) -> None:
    """Add (or replace) a provider kind."""
    _REGISTRY[spec.kind] = spec


def provider_kinds() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_REGISTRY)


def provider_spec(kind: str) -> ProviderSpec:
    """The :class:`ProviderSpec` of ``kind``.

    Raises:
        CaptionerError: unknown kind.
    """
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise CaptionerError(f"Unknown captioner {kind!r}; choose one of {known}.") from None


def create_provider(
    kind: str,
    *,
    model: str | None = None,
    url: str | None = None,
    token: str | None = None,
    token_env: str | None = None,
    client: httpx.AsyncClient | None = None,
    prompt: str | None = None,
    timeout_s: float | None = None,
    **options: Any,
) -> CaptionProvider:
    """Make a provider of ``kind``.

    Args:
        kind: a registered kind (:func:`provider_kinds`).
        model: the model (default: the kind's).
        url: the server's base URL (remote kinds; default: the kind's).
        token: a token / API key; when ``None`` one is looked up (OS keyring, then the
            environment; ``token_env`` names an environment variable to read first).
        client: an ``httpx.AsyncClient`` for remote kinds.
        prompt: the default prompt.
        timeout_s: seconds one request may take (remote kinds).
        options: passed to the provider (``max_new_tokens``, ``device``, ``max_side``...).

    Raises:
        CaptionerError: unknown kind, or options it does not take.
    """
    spec = provider_spec(kind)
    if spec.local and url:
        raise CaptionerError(f"The {kind} captioner runs on this computer; it takes no URL.")
    if spec.uses_token and token is None:
        token = find_token(kind, env_var=token_env).token
    try:
        return spec.factory(
            model=model or spec.default_model,
            url=url or spec.default_url,
            token=token,
            client=client,
            prompt=prompt,
            timeout_s=timeout_s,
            **options,
        )
    except TypeError as exc:
        raise CaptionerError(f"The {kind} captioner does not take these options ({exc}).") from None


def _local(kind: str) -> Factory:
    def make(
        *,
        model: str,
        url: str | None,
        token: str | None,
        client: httpx.AsyncClient | None,
        prompt: str | None,
        timeout_s: float | None,
        **options: Any,
    ) -> CaptionProvider:
        from lora_studio.captioning.local import LocalBlipProvider

        return LocalBlipProvider(model, kind=kind, prompt=prompt, **options)

    return make


def _timeout(timeout_s: float | None) -> dict[str, float]:
    return {"timeout_s": timeout_s} if timeout_s else {}


def _hf_api(
    *,
    model: str,
    url: str | None,
    token: str | None,
    client: httpx.AsyncClient | None,
    prompt: str | None,
    timeout_s: float | None,
    **options: Any,
) -> CaptionProvider:
    from lora_studio.captioning.hf_api import HFInferenceProvider

    return HFInferenceProvider(
        model, url or HF_ROUTER_URL, token=token, client=client, **_timeout(timeout_s), **options
    )


def _openai(
    *,
    model: str,
    url: str | None,
    token: str | None,
    client: httpx.AsyncClient | None,
    prompt: str | None,
    timeout_s: float | None,
    **options: Any,
) -> CaptionProvider:
    from lora_studio.captioning.openai_chat import OpenAIChatProvider

    return OpenAIChatProvider(
        url or DEFAULT_OPENAI_URL,
        model,
        prompt=prompt,
        api_key=token,
        client=client,
        **_timeout(timeout_s),
        **options,
    )


def _ollama(
    *,
    model: str,
    url: str | None,
    token: str | None,
    client: httpx.AsyncClient | None,
    prompt: str | None,
    timeout_s: float | None,
    **options: Any,
) -> CaptionProvider:
    from lora_studio.captioning.ollama import OllamaProvider

    return OllamaProvider(
        model,
        url or DEFAULT_OLLAMA_URL,
        prompt=prompt,
        client=client,
        **_timeout(timeout_s),
        **options,
    )


register_provider(
    ProviderSpec(
        "blip", "BLIP (local)", True, DEFAULT_MODELS["blip"], None, False, True, _local("blip")
    )
)
register_provider(
    ProviderSpec(
        "blip2", "BLIP-2 (local)", True, DEFAULT_MODELS["blip2"], None, False, True, _local("blip2")
    )
)
register_provider(
    ProviderSpec(
        "hf-api",
        "Hugging Face Inference API",
        False,
        DEFAULT_HF_MODEL,
        HF_ROUTER_URL,
        True,
        False,
        _hf_api,
    )
)
register_provider(
    ProviderSpec(
        "openai",
        "OpenAI-compatible chat (LLaVA...)",
        False,
        DEFAULT_OPENAI_MODEL,
        DEFAULT_OPENAI_URL,
        True,
        True,
        _openai,
    )
)
register_provider(
    ProviderSpec(
        "ollama", "Ollama", False, DEFAULT_OLLAMA_MODEL, DEFAULT_OLLAMA_URL, False, True, _ollama
    )
)
