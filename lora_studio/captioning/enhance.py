"""Caption enhancement: rewrite or merge captions with a text LLM over an
OpenAI-compatible chat API (the seed's "advanced caption enhancement with GPT").

* :meth:`CaptionEnhancer.rewrite` with a :class:`RewriteStyle`: ``sentence`` turns tags
  into one fluent sentence, ``tags`` turns a sentence into comma-separated tags,
  ``polish`` fixes grammar and filler while keeping the form; or any instruction of yours.
* :meth:`CaptionEnhancer.merge` combines several captions of one image (BLIP's and a
  vision LLM's, say) into one.

The trigger word is kept first: the model is told so, and the answer is passed through
:func:`~lora_studio.captioning.postprocess.put_trigger_first` whatever it did. Answers
are cleaned of chat filler (:func:`~lora_studio.captioning.postprocess.strip_llm_chatter`).
Errors are those of :mod:`lora_studio.captioning.base`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from lora_studio.captioning.base import BadResponse, Caption, CaptionerError
from lora_studio.captioning.openai_chat import (
    DEFAULT_OPENAI_MODEL,
    DEFAULT_OPENAI_URL,
    OpenAIChatClient,
)
from lora_studio.captioning.postprocess import (
    CaptionMode,
    normalize_commas,
    put_trigger_first,
    strip_llm_chatter,
)
from lora_studio.captioning.runner import CaptionRun, ProgressCallback, ResultSink, RunOptions
from lora_studio.core.dataset import Dataset, ImageItem


class RewriteStyle(enum.StrEnum):
    SENTENCE = "sentence"
    TAGS = "tags"
    POLISH = "polish"


#: The instruction for each style (the system message).
INSTRUCTIONS: dict[RewriteStyle, str] = {
    RewriteStyle.SENTENCE: (
        "You rewrite image captions for training an image-generation model. Turn the "
        "comma-separated tags you are given into one fluent, factual English sentence "
        "that keeps every fact and adds none. Reply with the caption only."
    ),
    RewriteStyle.TAGS: (
        "You rewrite image captions for training an image-generation model. Turn the "
        "description you are given into comma-separated tags: short lower-case noun "
        "phrases, most important first, no duplicates, nothing that is not in the "
        "description. Reply with the tags only."
    ),
    RewriteStyle.POLISH: (
        "You edit image captions for training an image-generation model. Fix grammar, "
        "remove filler such as 'there is' or 'an image of', and keep the caption's form "
        "(tags stay tags, sentences stay sentences) and every fact. Reply with the "
        "caption only."
    ),
}
MERGE_INSTRUCTION = (
    "You combine image captions for training an image-generation model. You are given "
    "several captions of the same image, from different captioners. Write one caption "
    "that keeps every fact they agree on and the specific details any of them has, "
    "without contradictions or repetition. Reply with the caption only."
)


def _trigger_rule(trigger: str | None) -> str:
    if not trigger or not trigger.strip():
        return ""
    return (
        f" The caption must begin with the exact trigger word '{trigger.strip()}' followed "
        f"by a comma; keep it exactly as written and do not mention it anywhere else."
    )


class CaptionEnhancer:
    """Rewrites and merges captions with a text LLM.

    Args:
        base_url: the OpenAI-compatible API base, ending in ``/v1``.
        model: the text model's name on that server.
        api_key: sent as ``Authorization: Bearer`` when given; never logged.
        client: an ``httpx.AsyncClient`` to use instead of an owned one.
        timeout_s: seconds one request may take.
        instruction: replaces the style's instruction (:data:`INSTRUCTIONS`) when given.
        temperature: sampling temperature.
        max_tokens: the longest answer.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_OPENAI_URL,
        model: str = DEFAULT_OPENAI_MODEL,
        *,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 120.0,
        instruction: str | None = None,
        temperature: float = 0.2,
        max_tokens: int = 300,
    ) -> None:
        self.chat = OpenAIChatClient(
            base_url,
            model,
            api_key=api_key,
            client=client,
            timeout_s=timeout_s,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        self.instruction = instruction

    @property
    def model(self) -> str:
        return self.chat.model

    async def rewrite(
        self,
        caption: str,
        style: RewriteStyle | str = RewriteStyle.SENTENCE,
        *,
        trigger_word: str | None = None,
        instruction: str | None = None,
    ) -> str:
        """``caption`` rewritten in ``style`` (or by ``instruction``), trigger word first.

        Raises:
            CaptionerError: the server failed, or answered with nothing.
        """
        text = caption.strip()
        if not text:
            raise CaptionerError("There is no caption to rewrite.")
        system = instruction or self.instruction or INSTRUCTIONS[RewriteStyle(style)]
        answer = await self._ask(system + _trigger_rule(trigger_word), text)
        return self._finish(answer, trigger_word)

    async def merge(
        self,
        captions: Sequence[str],
        *,
        trigger_word: str | None = None,
        instruction: str | None = None,
    ) -> str:
        """One caption made of ``captions`` (of the same image), trigger word first.

        Raises:
            CaptionerError: the server failed, or answered with nothing.
        """
        texts = [c.strip() for c in captions if c and c.strip()]
        if not texts:
            raise CaptionerError("There are no captions to merge.")
        if len(texts) == 1:
            return self._finish(texts[0], trigger_word)
        numbered = "\n".join(f"{i}. {text}" for i, text in enumerate(texts, start=1))
        system = instruction or self.instruction or MERGE_INSTRUCTION
        answer = await self._ask(system + _trigger_rule(trigger_word), numbered)
        return self._finish(answer, trigger_word)

    async def _ask(self, system: str, user: str) -> str:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        return await self.chat.chat(messages)

    def _finish(self, answer: str, trigger_word: str | None) -> str:
        text = normalize_commas(strip_llm_chatter(answer))
        if not text:
            raise BadResponse(f"{self.chat.label} answered with an empty caption.")
        if trigger_word and trigger_word.strip():
            text = put_trigger_first(text, trigger_word)
        return text

    async def aclose(self) -> None:
        await self.chat.aclose()

    async def __aenter__(self) -> CaptionEnhancer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---- over a dataset -----------------------------------------------------------------------

#: The provider name proposals made by :class:`EnhanceRun` carry.
ENHANCE_PROVIDER = "enhance"


class EnhanceRun(CaptionRun):
    """Rewrite the captions of a dataset with a :class:`CaptionEnhancer`, as a batch run.

    Everything :class:`~lora_studio.captioning.runner.CaptionRun` does holds (concurrency,
    time-outs, retries with ``Retry-After``, cancel, progress, one failure never stops the
    others, results as proposals or written with ``write=True`` sinks); only the input
    differs: each image's caption as it is on disk now instead of its pixels. Images with
    no caption are skipped. The options' mode is always ``overwrite`` (the rewrite
    replaces the caption), and its post-processing (trigger word first, clean-up, length
    limits) applies to the rewritten caption.

    Args:
        enhancer: the text LLM client; the run does not close it.
        style: a :class:`RewriteStyle`, unless ``instruction`` replaces it.
        instruction: your own instruction for the model.
        The rest: as :class:`~lora_studio.captioning.runner.CaptionRun`.
    """

    def __init__(
        self,
        enhancer: CaptionEnhancer,
        dataset: Dataset,
        options: RunOptions | None = None,
        *,
        style: RewriteStyle | str = RewriteStyle.SENTENCE,
        instruction: str | None = None,
        paths: Iterable[str | os.PathLike[str]] | None = None,
        sink: ResultSink | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        options = dataclasses.replace(options or RunOptions(), mode=CaptionMode.OVERWRITE)
        super().__init__(
            _EnhancerAsProvider(enhancer),
            dataset,
            options,
            paths=paths,
            sink=sink,
            on_progress=on_progress,
        )
        self.enhancer = enhancer
        self.style = RewriteStyle(style)
        self.instruction = instruction

    def _skip_reason(self, previous: str | None) -> str | None:
        return None if (previous or "").strip() else "has no caption to rewrite"

    async def _load_input(self, item: ImageItem, previous: str | None) -> Any:
        return previous or ""

    async def _ask(self, images: Sequence[Any]) -> list[Caption]:
        trigger = self.options.postprocess.trigger_word or None
        captions = []
        for previous in images:
            started = time.monotonic()
            text = await self.enhancer.rewrite(
                str(previous), self.style, trigger_word=trigger, instruction=self.instruction
            )
            captions.append(
                Caption(
                    text,
                    ENHANCE_PROVIDER,
                    self.enhancer.model,
                    elapsed_s=time.monotonic() - started,
                    prompt=self.instruction or str(self.style),
                )
            )
        return captions


class _EnhancerAsProvider:
    """What :class:`CaptionRun` reads from a provider (name, model, concurrency)."""

    name = ENHANCE_PROVIDER
    default_concurrency = 4

    def __init__(self, enhancer: CaptionEnhancer) -> None:
        self.enhancer = enhancer
        self.model = enhancer.model

    async def caption(self, image: Any, prompt: str | None = None) -> Caption:
        raise NotImplementedError("EnhanceRun asks the enhancer itself")

    async def aclose(self) -> None:
        await self.enhancer.aclose()
