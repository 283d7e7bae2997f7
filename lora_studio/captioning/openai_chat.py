"""LLaVA and any other vision LLM over an OpenAI-compatible chat API.

Servers: vLLM (``vllm serve ... --api-key``), llama.cpp's ``llama-server --mmproj``,
LM Studio, Ollama's ``/v1``, and OpenAI itself. The base URL ends in ``/v1``
(:data:`DEFAULT_OPENAI_URL` is llama-server's default).

Protocol: ``POST {base}/chat/completions`` with ``{"model", "messages", "max_tokens",
"temperature", "stream": false}``; the image travels as a ``data:image/jpeg;base64,...``
URL in an ``image_url`` content part beside the text part. The caption is
``choices[0].message.content`` (a string, or a list of text parts). Errors come as
``{"error": {"message": ...}}`` (OpenAI, llama-server, newer vLLM) or
``{"message": ...}`` (older vLLM); an API key, when the server wants one, is sent as
``Authorization: Bearer``.

:class:`OpenAIChatClient` is the plain text chat used by caption enhancement
(:mod:`lora_studio.captioning.enhance`); :class:`OpenAIChatProvider` adds the image.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpx

from lora_studio.captioning._http import DEFAULT_TIMEOUT_S, HttpCaptioner, display_url
from lora_studio.captioning.base import Caption, ModelNotFound, jpeg_base64
from lora_studio.captioning.postprocess import strip_llm_chatter

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_OPENAI_URL = "http://127.0.0.1:8080/v1"
DEFAULT_OPENAI_MODEL = "llava"
#: What a vision LLM is asked when no prompt is given.
DEFAULT_VISION_PROMPT = (
    "Write a caption for this image for training an image-generation model: one or two "
    "plain sentences naming the subject, what it is doing, the setting, the style, the "
    "colours and the composition. No preamble, no lists, reply with the caption only."
)


class OpenAIChatClient(HttpCaptioner):
    """A chat-completions client for an OpenAI-compatible server.

    Args:
        base_url: the API base, ending in ``/v1``.
        model: the model name the server knows (vLLM wants the exact one; llama-server
            takes any).
        api_key: sent as ``Authorization: Bearer`` when given; never logged.
        client: an ``httpx.AsyncClient`` to use instead of an owned one.
        timeout_s: seconds one request may take (vision LLMs on a CPU are slow).
        max_tokens: the longest answer.
        temperature: sampling temperature (low keeps captions factual).
    """

    name = "openai"
    label = "The OpenAI-compatible server"
    token_hint = "check your API key"

    def __init__(
        self,
        base_url: str = DEFAULT_OPENAI_URL,
        model: str = DEFAULT_OPENAI_MODEL,
        *,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = 300,
        temperature: float = 0.2,
        max_side: int = 1024,
        concurrency: int = 2,
    ) -> None:
        super().__init__(
            base_url,
            model or DEFAULT_OPENAI_MODEL,
            client=client,
            timeout_s=timeout_s,
            token=api_key,
            max_side=max_side,
            concurrency=concurrency,
        )
        self.max_tokens = max_tokens
        self.temperature = temperature

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> str:
        """Send ``messages``; the assistant's answer (stripped).

        Raises:
            CaptionerError: (a subclass of) it; an answer without text is a
                :class:`~lora_studio.captioning.base.BadResponse`.
        """
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "stream": False,
        }
        response = await self._post("/chat/completions", json_body=body)
        self._check(response)
        data = self._json(response)
        text = message_content(data)
        if text is None:
            raise self._bad_shape("no choices[0].message.content text in it")
        return text.strip()

    def _not_found(self, detail: str) -> None:
        extra = f" ({detail})" if detail else ""
        raise ModelNotFound(
            f"{self.label} at {display_url(self.base_url)} answered 404{extra}: check the "
            f"model name ({self.model!r}) and that the URL ends in /v1."
        )


class OpenAIChatProvider(OpenAIChatClient):
    """A vision LLM (LLaVA, Qwen-VL, Llama 3.2 Vision, GPT-4o...) as a captioner.

    Takes :class:`OpenAIChatClient`'s arguments plus ``prompt``, the instruction sent
    with each image when :meth:`caption` gets none (:data:`DEFAULT_VISION_PROMPT`).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_OPENAI_URL,
        model: str = DEFAULT_OPENAI_MODEL,
        *,
        prompt: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, model, **options)
        self.prompt = prompt or DEFAULT_VISION_PROMPT

    async def caption(self, image: Image.Image, prompt: str | None = None) -> Caption:
        start = time.monotonic()
        data = await asyncio.to_thread(jpeg_base64, image)
        instruction = prompt or self.prompt
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": instruction},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
                ],
            }
        ]
        text = await self.chat(messages)
        return Caption(
            text=strip_llm_chatter(text),
            provider=self.name,
            model=self.model,
            elapsed_s=time.monotonic() - start,
            prompt=instruction,
        )


def message_content(data: Any) -> str | None:
    """``choices[0].message.content`` as text (string content, or its text parts joined)."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "".join(parts) if parts else None
    return None
