"""BLIP / BLIP-2 (or any image-to-text model) over the Hugging Face Inference API.

Protocol: ``POST {base}/models/{model_id}`` with the raw image bytes as the body
(``Content-Type: image/jpeg``) and ``Authorization: Bearer <token>``; the answer is
``[{"generated_text": "..."}]`` (a bare object is accepted too). The default base is the
router, ``https://router.huggingface.co/hf-inference``; the legacy host
(``https://api-inference.huggingface.co``), a dedicated Inference Endpoint or a local
server speaking the same protocol are a ``base_url`` away.

While a model is starting the API answers 503 ``{"error": "Model ... is currently
loading", "estimated_time": 20.0}``: the provider waits the estimated time (each wait at
most :data:`MAX_LOADING_SLEEP_S`, all of them at most ``loading_wait_s``) and asks again;
past that it raises :class:`~lora_studio.captioning.base.ModelLoading`. 401/403 raise
:class:`~lora_studio.captioning.base.AuthError` ("check your token"), 429
:class:`~lora_studio.captioning.base.RateLimited` with the ``Retry-After`` seconds; the
rest of the tree is in :mod:`lora_studio.captioning.base`.

The image-to-text task takes no text prompt: a prompt given here is ignored (logged once).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import httpx

from lora_studio.captioning._http import DEFAULT_TIMEOUT_S, HttpCaptioner, display_url
from lora_studio.captioning.base import Caption, ModelLoading, ModelNotFound, encode_jpeg

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

HF_ROUTER_URL = "https://router.huggingface.co/hf-inference"
HF_LEGACY_URL = "https://api-inference.huggingface.co"
DEFAULT_HF_MODEL = "Salesforce/blip-image-captioning-large"
#: Longest single wait for a loading model; the API's estimates are often long.
MAX_LOADING_SLEEP_S = 30.0
#: Wait used when a 503 "loading" answer carries no estimated_time.
DEFAULT_LOADING_SLEEP_S = 5.0


class HFInferenceProvider(HttpCaptioner):
    """Image-to-text over the Hugging Face Inference API.

    Args:
        model: the model id (``Salesforce/blip-image-captioning-large``,
            ``Salesforce/blip2-opt-2.7b``...).
        base_url: the API base (:data:`HF_ROUTER_URL` by default).
        token: the Hugging Face token (see :mod:`lora_studio.captioning.credentials`).
        client: an ``httpx.AsyncClient`` to use instead of an owned one.
        timeout_s: seconds one request may take.
        loading_wait_s: total seconds to wait for a loading model before giving up.
        max_side: the longest side of the JPEG sent (BLIP looks at 384 pixels).
        concurrency: requests in flight at once (free accounts are rate limited).
    """

    name = "hf-api"
    label = "The Hugging Face Inference API"
    token_hint = "check your token (store it with `lora-studio caption set-token`, or set HF_TOKEN)"

    def __init__(
        self,
        model: str = DEFAULT_HF_MODEL,
        base_url: str = HF_ROUTER_URL,
        *,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        loading_wait_s: float = 120.0,
        max_side: int = 768,
        concurrency: int = 2,
    ) -> None:
        super().__init__(
            base_url,
            model or DEFAULT_HF_MODEL,
            client=client,
            timeout_s=timeout_s,
            token=token,
            max_side=max_side,
            concurrency=concurrency,
        )
        self.loading_wait_s = loading_wait_s
        self._warned_prompt = False

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/models/{urllib.parse.quote(self.model, safe='/')}"

    async def caption(self, image: Image.Image, prompt: str | None = None) -> Caption:
        if prompt and not self._warned_prompt:
            self._warned_prompt = True
            log.warning("The Hugging Face image-to-text API takes no prompt; %r is ignored", prompt)
        body = await asyncio.to_thread(encode_jpeg, image)
        start = time.monotonic()
        waited = 0.0
        path = self.endpoint[len(self.base_url) :]
        while True:
            response = await self._post(path, content=body, headers={"Content-Type": "image/jpeg"})
            if response.status_code == 503:
                estimate = _loading_estimate(self._json_or_none(response))
                if estimate is not None:
                    pause = min(MAX_LOADING_SLEEP_S, max(0.05, estimate))
                    if waited + pause > self.loading_wait_s:
                        raise ModelLoading(
                            f"{self.model} is still loading on the Hugging Face Inference API "
                            f"after {waited:.0f} s (about {estimate:.0f} s more); try again later.",
                            estimated_time=estimate,
                        )
                    log.info("%s is loading; waiting %.1f s", self.model, pause)
                    await asyncio.sleep(pause)
                    waited += pause
                    continue
            self._check(response)
            text = _generated_text(self._json(response))
            if text is None:
                raise self._bad_shape('no "generated_text" in it')
            return Caption(
                text=text.strip(),
                provider=self.name,
                model=self.model,
                elapsed_s=time.monotonic() - start,
                prompt=None,
            )

    def _json_or_none(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _not_found(self, detail: str) -> None:
        extra = f" ({detail})" if detail else ""
        raise ModelNotFound(
            f"The Hugging Face Inference API at {display_url(self.base_url)} does not serve "
            f"{self.model!r}{extra}; check the model id (not every model is deployed there)."
        )


def _loading_estimate(data: Any) -> float | None:
    """The wait a 503 asks for when the model is loading; ``None`` for other 503s."""
    if not isinstance(data, dict):
        return None
    error = str(data.get("error") or "")
    estimate = data.get("estimated_time")
    if isinstance(estimate, int | float) and not isinstance(estimate, bool):
        return max(0.0, float(estimate))
    if "loading" in error.lower():
        return DEFAULT_LOADING_SLEEP_S
    return None


def _generated_text(data: Any) -> str | None:
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        value = data.get("generated_text")
        if isinstance(value, str):
            return value
    return None
