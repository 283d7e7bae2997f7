"""Caption enhancement over an OpenAI-compatible chat server on loopback; and the import
boundaries of the captioning package."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from caption_servers import OPENAI_KEY, Reply, completion, openai_chat

from lora_studio.captioning.base import BadResponse
from lora_studio.captioning.enhance import INSTRUCTIONS, CaptionEnhancer, RewriteStyle


@pytest.fixture
def chat(serve):
    server = serve(openai_chat(api_key=OPENAI_KEY))

    def answer(text: str) -> None:
        server.script(Reply(200, completion({"model": "qwen2.5"}, text)))

    return server, answer


async def test_rewrite_tags_as_a_sentence_keeps_the_trigger_first(chat) -> None:
    server, answer = chat
    answer("Here is the caption: A red fox sits in deep snow, sks.")
    async with CaptionEnhancer(server.url + "/v1", "qwen2.5", api_key=OPENAI_KEY) as enhancer:
        text = await enhancer.rewrite("sks, red fox, snow, sitting", trigger_word="sks")
    assert text == "sks, A red fox sits in deep snow"  # the trailing "sks." moved first
    payload = server.requests[0].json()
    system, user = payload["messages"]
    assert system["role"] == "system" and system["content"].startswith(
        INSTRUCTIONS[RewriteStyle.SENTENCE]
    )
    assert "trigger word 'sks'" in system["content"]
    assert user == {"role": "user", "content": "sks, red fox, snow, sitting"}
    assert payload["model"] == "qwen2.5"


async def test_rewrite_a_sentence_as_tags_with_a_custom_instruction(chat) -> None:
    server, answer = chat
    answer("- red fox\n- snow\n- red fox")
    async with CaptionEnhancer(server.url + "/v1", api_key=OPENAI_KEY) as enhancer:
        text = await enhancer.rewrite(
            "A red fox in the snow.", RewriteStyle.TAGS, instruction="Tags please."
        )
    assert text == "red fox, snow, red fox"
    assert server.requests[0].json()["messages"][0]["content"] == "Tags please."


async def test_merge_numbers_the_captions(chat) -> None:
    server, answer = chat
    answer("sks, a red fox sitting in snow at dusk")
    async with CaptionEnhancer(server.url + "/v1", api_key=OPENAI_KEY) as enhancer:
        text = await enhancer.merge(
            ["arafed fox in snow", "a red fox at dusk, sks"], trigger_word="sks"
        )
    assert text == "sks, a red fox sitting in snow at dusk"
    user = server.requests[0].json()["messages"][1]["content"]
    assert user == "1. arafed fox in snow\n2. a red fox at dusk, sks"


async def test_an_empty_answer_is_a_bad_response(chat) -> None:
    server, answer = chat
    answer("   ")
    async with CaptionEnhancer(server.url + "/v1", api_key=OPENAI_KEY) as enhancer:
        with pytest.raises(BadResponse, match="empty caption"):
            await enhancer.rewrite("a fox")


IMPORT_CASES = [
    (
        [
            "lora_studio.captioning",
            "lora_studio.captioning.registry",
            "lora_studio.captioning.local",
            "lora_studio.commands.caption",
            "lora_studio.core.proposals",
        ],
        ["torch", "transformers", "PySide6", "qasync", "diffusers"],
    ),
]


@pytest.mark.parametrize(("modules", "forbidden"), IMPORT_CASES, ids=["captioning"])
def test_importing_captioning_pulls_in_no_torch_and_no_qt(modules, forbidden) -> None:
    code = (
        f"import sys, {', '.join(modules)};"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {set(forbidden)!r});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stdout + result.stderr
