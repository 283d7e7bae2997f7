"""What a user asks for when they caption a dataset, in one value both front ends build.

The CLI (``lora-studio caption``) builds a :class:`CaptionRequest` from its flags and the
window from its caption dialog; both then make the provider and the run's options from
it the same way::

    request = CaptionRequest("openai", url="http://127.0.0.1:8080/v1", trigger_word="sks")
    request.check()
    provider = request.make_provider(token=token)
    run = CaptionRun(provider, dataset, request.run_options(), sink=...)

No Qt here; :meth:`CaptionRequest.make_provider` may look a token up in the OS keyring,
so a GUI calls it off its event-loop thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from lora_studio.captioning.base import CaptionerError, CaptionProvider
from lora_studio.captioning.postprocess import CaptionMode, PostProcessOptions
from lora_studio.captioning.registry import create_provider, provider_spec
from lora_studio.captioning.runner import RunOptions

#: Options only the local BLIP/BLIP-2 providers take.
LOCAL_OPTIONS = ("device", "batch_size", "max_new_tokens")


@dataclass(frozen=True)
class CaptionRequest:
    """A caption run as the user described it.

    Attributes:
        provider: the provider kind (``blip``, ``blip2``, ``hf-api``, ``openai``, ``ollama``).
        model: the model (``None``: the kind's default).
        url: the server's base URL (remote kinds; ``None``: the kind's default).
        prompt: the prompt (``None``: the provider's own).
        mode: fill, overwrite or append.
        trigger_word: put first in every caption (empty: none).
        concurrency: images in flight at once (``None``: the provider's default).
        timeout_s: seconds one attempt at one image may take (``None``: no limit).
        retries: retries after 429, 5xx, time-outs and refused connections.
        max_chars, max_tags: cut captions to this length (``None``: no limit).
        strip_boilerplate: remove captioner filler ("arafed", "there is a"...).
        device, batch_size, max_new_tokens: local models only (``None``: defaults).
    """

    provider: str
    model: str | None = None
    url: str | None = None
    prompt: str | None = None
    mode: CaptionMode = CaptionMode.FILL
    trigger_word: str = ""
    concurrency: int | None = None
    timeout_s: float | None = None
    retries: int = 3
    max_chars: int | None = None
    max_tags: int | None = None
    strip_boilerplate: bool = True
    device: str | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return provider_spec(self.provider).local

    def check(self) -> None:
        """Refuse what cannot work, with a line for the user.

        Raises:
            CaptionerError: an unknown kind, a URL for a local model, local-only options
                for a remote one, or a number out of range.
        """
        spec = provider_spec(self.provider)
        if spec.local and self.url:
            raise CaptionerError(f"{spec.label} runs on this computer; it takes no server URL.")
        if not spec.local:
            given = [name for name in LOCAL_OPTIONS if getattr(self, name) is not None]
            if given:
                raise CaptionerError(
                    f"{', '.join(given)} only apply to the local BLIP and BLIP-2 captioners."
                )
        for name in ("concurrency", "batch_size", "max_new_tokens", "max_chars", "max_tags"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CaptionerError(f"{name.replace('_', ' ')} must be at least 1.")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise CaptionerError("The time limit must be more than 0 seconds.")
        if self.retries < 0:
            raise CaptionerError("Retries cannot be negative.")

    def provider_options(self) -> dict[str, Any]:
        """The options passed to the provider's constructor besides the common ones."""
        options = dict(self.extra)
        if self.local:
            for name in LOCAL_OPTIONS:
                value = getattr(self, name)
                if value is not None:
                    options[name] = value
        return options

    def make_provider(
        self,
        *,
        token: str | None = None,
        token_env: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> CaptionProvider:
        """The provider (see :func:`~lora_studio.captioning.registry.create_provider`;
        with ``token=None`` a kind that sends one looks it up, keyring included)."""
        return create_provider(
            self.provider,
            model=self.model or None,
            url=self.url or None,
            token=token,
            token_env=token_env,
            client=client,
            prompt=self.prompt or None,
            timeout_s=self.timeout_s,
            **self.provider_options(),
        )

    def run_options(self) -> RunOptions:
        """The batch run's :class:`~lora_studio.captioning.runner.RunOptions`."""
        return RunOptions(
            mode=CaptionMode(self.mode),
            prompt=self.prompt or None,
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            retries=self.retries,
            postprocess=PostProcessOptions(
                trigger_word=self.trigger_word or "",
                strip_boilerplate=self.strip_boilerplate,
                max_chars=self.max_chars,
                max_tags=self.max_tags,
            ),
        )
