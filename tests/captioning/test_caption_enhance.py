"""Caption enhancement over an OpenAI-compatible chat server on loopback; and the import
boundaries of the captioning package."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from caption_servers import OPENAI_KEY, Reply, completion, openai_chat

from lora_studio.captioning.base import BadResponse
from lora_studio.captioning.enhance import INSTRUCTIONS, CaptionEnhancer, EnhanceRun, RewriteStyle


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


# ---- a dataset's captions, as a batch run and from the command line -------------------------


def _tags_to_sentence(request) -> Reply:
    """Turn 'sks, red fox, snow' into 'A red fox, snow.' (what a text LLM would do)."""
    tags = [t.strip() for t in request.json()["messages"][-1]["content"].split(",")]
    return Reply(200, completion(request.json(), "A " + ", ".join(tags[1:]) + "."))


def test_enhance_rewrites_captions_as_proposals_for_review(serve, tmp_path, capsys) -> None:
    from caption_servers import write_images

    from lora_studio.cli import main

    folder = write_images(
        tmp_path / "ds",
        {"a.png": "red", "b.png": "green", "c.png": "blue"},
        {"a.png": "sks, red fox, snow", "b.png": "sks, green frog"},
    )
    server = serve(_tags_to_sentence)
    args = ["caption", "enhance", str(folder), "--url", server.url + "/v1", "--model", "qwen2.5"]
    assert main([*args, "--trigger", "sks", "--style", "sentence"]) == 0
    err = capsys.readouterr().err
    assert "Proposed 2 caption(s) with enhance (qwen2.5)" in err
    assert "1 skipped (has no caption to rewrite)" in err
    # nothing written yet: the rewrites wait for review, with who made them
    assert (folder / "a.txt").read_text(encoding="utf-8").strip() == "sks, red fox, snow"
    assert main(["caption", "review", str(folder)]) == 0
    listing = capsys.readouterr().out
    assert "a.png  [ready]  enhance / qwen2.5" in listing
    assert "sks,{+ A+} red fox, snow{+.+}" in listing
    assert main(["caption", "review", str(folder), "--accept", "all"]) == 0
    assert (folder / "a.txt").read_text(encoding="utf-8").strip() == "sks, A red fox, snow."
    assert (folder / "b.txt").read_text(encoding="utf-8").strip() == "sks, A green frog."
    assert not (folder / "c.txt").exists()
    system = server.requests[0].json()["messages"][0]["content"]
    assert system.startswith(INSTRUCTIONS[RewriteStyle.SENTENCE])


def test_enhance_retries_a_429_and_lists_a_failure_without_stopping(serve, tmp_path) -> None:
    from caption_servers import write_images

    from lora_studio.captioning.runner import RunOptions, RunState
    from lora_studio.core.dataset import Dataset

    folder = write_images(
        tmp_path / "ds",
        {"a.png": "red", "b.png": "green"},
        {"a.png": "red fox", "b.png": "green frog"},
    )
    server = serve(_tags_to_sentence)
    server.script(
        Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0"}),
        Reply(400, {"error": {"message": "context length exceeded"}}),
    )
    options = RunOptions(concurrency=1, backoff_s=0.01)

    async def go():
        async with CaptionEnhancer(server.url + "/v1", "qwen2.5") as enhancer:
            run = EnhanceRun(enhancer, Dataset.open(folder), options, style="polish")
            return await run.run()

    import asyncio

    report = asyncio.run(go())
    assert report.state is RunState.FINISHED
    assert len(report.captioned) == 1 and len(report.failed) == 1
    assert "context length exceeded" in (report.failed[0].error or "")
    assert len(server.requests) == 3  # the 429 was retried, the 400 was not


def test_enhance_needs_a_server_and_a_model(tmp_path, capsys) -> None:
    from lora_studio.cli import main

    (tmp_path / "ds").mkdir()
    assert main(["caption", "enhance", str(tmp_path / "ds")]) != 0
    err = capsys.readouterr().err
    assert "--url" in err and "--model" in err and "Traceback" not in err
