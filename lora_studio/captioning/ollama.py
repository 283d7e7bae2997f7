"""Vision models (LLaVA, Llama 3.2 Vision, Qwen2.5-VL, Moondream...) on Ollama's native API.

Protocol: ``POST {base}/api/generate`` with ``{"model", "prompt", "images": [base64],
"stream": false, "options": {"num_predict", "temperature"}}``; the answer is
``{"model", "response", "done": true, ...}``. Errors are ``{"error": "..."}`` with an
HTTP status, e.g. 404 ``{"error": "model 'llava' not found"}`` (raised as
:class:`~lora_studio.captioning.base.ModelNotFound` with the ``ollama pull`` that fixes
it). Should a server stream anyway (newline-delimited JSON objects), the ``response``
pieces are joined.

Ollama also serves the OpenAI-compatible API under ``/v1``
(:mod:`lora_studio.captioning.openai_chat`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import httpx

from lora_studio.captioning._http import DEFAULT_TIMEOUT_S, HttpCaptioner, display_url
from lora_studio.captioning.base import Caption, ModelNotFound, jpeg_base64
from lora_studio.captioning.openai_chat import DEFAULT_VISION_PROMPT
from lora_studio.captioning.postprocess import strip_llm_chatter

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
DEFAULT_OLLAMA_MODEL = "llava"


class OllamaProvider(HttpCaptioner):
    """A vision model served by Ollama.

    Args:
        model: the Ollama model name (``llava``, ``llava:13b``, ``llama3.2-vision``...).
        base_url: the server (:data:`DEFAULT_OLLAMA_URL`).
        prompt: the instruction sent with each image when :meth:`caption` gets none.
        client: an ``httpx.AsyncClient`` to use instead of an owned one.
        timeout_s: seconds one request may take (the first one also loads the model).
        max_tokens: the longest answer (Ollama's ``num_predict``).
        temperature: sampling temperature.
        keep_alive: how long Ollama keeps the model loaded (``"5m"``, ``"1h"``...).
        concurrency: requests in flight (Ollama runs one per model unless told otherwise).
    """

    name = "ollama"
    label = "Ollama"

    def __init__(
        self,
        model: str = DEFAULT_OLLAMA_MODEL,
        base_url: str = DEFAULT_OLLAMA_URL,
        *,
        prompt: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = 300,
        temperature: float = 0.2,
        keep_alive: str | None = None,
        max_side: int = 1024,
        concurrency: int = 1,
    ) -> None:
        super().__init__(
            base_url,
            model or DEFAULT_OLLAMA_MODEL,
            client=client,
            timeout_s=timeout_s,
            max_side=max_side,
            concurrency=concurrency,
        )
        self.prompt = prompt or DEFAULT_VISION_PROMPT
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.keep_alive = keep_alive

    async def caption(self, image: Image.Image, prompt: str | None = None) -> Caption:
        start = time.monotonic()
        data = await asyncio.to_thread(jpeg_base64, image)
        instruction = prompt or self.prompt
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": instruction,
            "images": [data],
            "stream": False,
            "options": {"num_predict": self.max_tokens, "temperature": self.temperature},
        }
        if self.keep_alive:
            body["keep_alive"] = self.keep_alive
        response = await self._post("/api/generate", json_body=body)
        self._check(response)
        answer = self._generate_answer(response)
        return Caption(
            text=strip_llm_chatter(answer),
            provider=self.name,
            model=self.model,
            elapsed_s=time.monotonic() - start,
            prompt=instruction,
        )

    def _generate_answer(self, response: httpx.Response) -> str:
        try:
            objects: list[Any] = [json.loads(response.content)]
        except (ValueError, UnicodeDecodeError):
            objects = _json_lines(response.content)
            if not objects:
                self._json(response)  # raises BadResponse with a snippet of the body
        pieces: list[str] = []
        for obj in objects:
            if not isinstance(obj, dict):
                raise self._bad_shape("not a JSON object")
            if obj.get("error"):
                raise self._bad_shape(f"error {str(obj['error'])[:120]!r}")
            piece = obj.get("response")
            if not isinstance(piece, str):
                raise self._bad_shape('no "response" text in it')
            pieces.append(piece)
        return "".join(pieces).strip()

    def _not_found(self, detail: str) -> None:
        extra = f" ({detail})" if detail else ""
        raise ModelNotFound(
            f"Ollama at {display_url(self.base_url)} has no model {self.model!r}{extra}; "
            f"pull it with `ollama pull {self.model}`."
        )


def _json_lines(content: bytes) -> list[Any]:
    objects: list[Any] = []
    for line in content.splitlines():
        if not line.strip():
            continue
        try:
            objects.append(json.loads(line))
        except ValueError:
            return []
    return objects
