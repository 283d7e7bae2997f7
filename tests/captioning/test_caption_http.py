"""The remote captioners against real HTTP servers on loopback, failure modes included.

Retries, time-outs and Retry-After are the runner's; they are exercised here through a
:class:`CaptionRun` over a three-image dataset (red, green, blue; mode ``overwrite`` so
all three are captioned).
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from caption_servers import (
    HF_TOKEN,
    OPENAI_KEY,
    Reply,
    closed_port,
    hf_inference,
    image_size,
    ollama_native,
    openai_chat,
    write_images,
)
from PIL import Image

from lora_studio.captioning._http import error_detail, parse_retry_after
from lora_studio.captioning.base import (
    AuthError,
    BadResponse,
    ModelLoading,
    ModelNotFound,
    ProviderUnavailable,
    ServerError,
)
from lora_studio.captioning.hf_api import HFInferenceProvider
from lora_studio.captioning.ollama import OllamaProvider
from lora_studio.captioning.openai_chat import OpenAIChatProvider
from lora_studio.captioning.postprocess import CaptionMode
from lora_studio.captioning.runner import CaptionRun, ResultStatus, RunOptions, RunState
from lora_studio.core.dataset import Dataset

RED = Image.new("RGB", (64, 48), (220, 30, 30))


def _run(provider, dataset_dir: Path, **options) -> CaptionRun:
    opts = RunOptions(**{"mode": CaptionMode.OVERWRITE, "backoff_s": 0.01, **options})
    return CaptionRun(provider, Dataset.open(dataset_dir), opts)


# ---- Hugging Face Inference API -----------------------------------------------------------


async def test_hf_sends_raw_jpeg_with_the_bearer_token(serve) -> None:
    server = serve(hf_inference())
    async with HFInferenceProvider(base_url=server.url, token=HF_TOKEN, max_side=32) as hf:
        caption = await hf.caption(RED)
    assert caption.text == "arafed red square" and caption.provider == "hf-api"
    assert caption.model == "Salesforce/blip-image-captioning-large"
    (request,) = server.requests
    assert request.path == "/models/Salesforce/blip-image-captioning-large"
    assert request.headers["authorization"] == f"Bearer {HF_TOKEN}"
    assert request.headers["content-type"] == "image/jpeg"
    assert request.body[:2] == b"\xff\xd8"  # a JPEG


async def test_hf_waits_for_a_loading_model_then_succeeds(serve) -> None:
    server = serve(hf_inference())
    loading = {"error": "Model Salesforce/blip is currently loading", "estimated_time": 0.3}
    server.script(Reply(503, loading), Reply(503, loading))
    async with HFInferenceProvider(base_url=server.url, token=HF_TOKEN) as hf:
        caption = await hf.caption(RED)
    assert caption.text == "arafed red square"
    times = [r.at for r in server.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.28 and times[2] - times[1] >= 0.28


async def test_hf_gives_up_waiting_after_its_loading_budget(serve) -> None:
    server = serve(hf_inference())
    server.script(*[Reply(503, {"error": "loading", "estimated_time": 0.2})] * 5)
    async with HFInferenceProvider(base_url=server.url, token=HF_TOKEN, loading_wait_s=0.3) as hf:
        with pytest.raises(ModelLoading, match="still loading") as caught:
            await hf.caption(RED)
    assert caught.value.estimated_time == 0.2 and caught.value.retryable


async def test_hf_a_bad_token_says_check_your_token_and_never_shows_it(serve, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(hf_inference(token=HF_TOKEN))
    wrong = "hf_WrongTokenWrongTokenWrong123"
    async with HFInferenceProvider(base_url=server.url, token=wrong) as hf:
        with pytest.raises(AuthError) as caught:
            await hf.caption(RED)
        assert wrong not in repr(hf)
    message = str(caught.value)
    assert "check your token" in message and "401" in message
    assert wrong not in message and "\n" not in message and caught.value.fatal
    assert wrong not in caplog.text
    async with HFInferenceProvider(base_url=server.url, token=None) as anonymous:
        with pytest.raises(AuthError, match="needs a token"):
            await anonymous.caption(RED)


async def test_hf_unknown_model_is_not_found(serve) -> None:
    server = serve(hf_inference())
    server.script(Reply(404, {"error": "Model acme/nope does not exist"}))
    async with HFInferenceProvider("acme/nope", server.url, token=HF_TOKEN) as hf:
        with pytest.raises(ModelNotFound, match="does not serve 'acme/nope'.*does not exist"):
            await hf.caption(RED)


async def test_a_429_waits_as_long_as_retry_after_says(serve, colour_dataset: Path) -> None:
    server = serve(hf_inference())
    server.script(Reply(429, {"error": "Rate limit reached"}, headers={"Retry-After": "1"}))
    provider = HFInferenceProvider(base_url=server.url, token=HF_TOKEN, concurrency=1)
    # backoff_s is long: a retry after ~1 s proves Retry-After was used instead.
    report = await _run(provider, colour_dataset, backoff_s=20, concurrency=1).run()
    await provider.aclose()
    assert report.state is RunState.FINISHED and len(report.captioned) == 3
    first, second = server.requests[0].at, server.requests[1].at
    assert 0.95 <= second - first < 5
    assert report.results[0].attempts + report.results[1].attempts + report.results[2].attempts == 4


async def test_a_500_is_retried_and_succeeds(serve, colour_dataset: Path) -> None:
    server = serve(ollama_native())
    server.script(Reply(500, {"error": "CUDA error: out of memory"}))
    provider = OllamaProvider(base_url=server.url)
    report = await _run(provider, colour_dataset).run()
    await provider.aclose()
    assert len(report.captioned) == 3 and not report.failed
    assert sorted(r.attempts for r in report.results) == [1, 1, 2]


async def test_a_500_that_persists_fails_the_image_with_the_servers_words(
    serve, colour_dataset: Path
) -> None:
    server = serve(ollama_native())
    server.script(*[Reply(500, {"error": "CUDA error: out of memory"})] * 3)
    provider = OllamaProvider(base_url=server.url)
    report = await _run(provider, colour_dataset, retries=2, concurrency=1).run()
    await provider.aclose()
    (failed,) = report.failed
    assert failed.name == "blue.png" and failed.attempts == 3  # dataset order: blue first
    assert "500" in failed.error and "CUDA error: out of memory" in failed.error
    assert len(report.captioned) == 2 and report.state is RunState.FINISHED


async def test_malformed_json_fails_that_image_without_retrying(
    serve, colour_dataset: Path
) -> None:
    server = serve(hf_inference())
    server.script(Reply(200, "[{'generated_text': broken"))
    provider = HFInferenceProvider(base_url=server.url, token=HF_TOKEN, concurrency=1)
    report = await _run(provider, colour_dataset, concurrency=1).run()
    await provider.aclose()
    (failed,) = report.failed
    assert failed.attempts == 1 and "not JSON" in failed.error
    assert len(report.captioned) == 2


async def test_unexpected_json_shape_is_a_bad_response(serve) -> None:
    server = serve(hf_inference())
    server.script(Reply(200, {"caption": "a fox"}))
    async with HFInferenceProvider(base_url=server.url, token=HF_TOKEN) as hf:
        with pytest.raises(BadResponse, match="generated_text"):
            await hf.caption(RED)


async def test_a_hanging_server_times_out_that_image_and_the_others_succeed(
    serve, colour_dataset: Path
) -> None:
    server = serve(openai_chat())
    server.script(Reply(hang=True))
    provider = OpenAIChatProvider(base_url=server.url + "/v1", concurrency=3)
    report = await _run(provider, colour_dataset, timeout_s=0.5, retries=0).run()
    await provider.aclose()
    (failed,) = report.failed
    assert "within 0.5 s" in failed.error
    assert len(report.captioned) == 2 and report.state is RunState.FINISHED
    assert report.elapsed_s < 5


async def test_connection_refused_lists_every_image_with_the_reason(colour_dataset: Path) -> None:
    provider = OllamaProvider(base_url=f"http://127.0.0.1:{closed_port()}")
    report = await _run(provider, colour_dataset, retries=1).run()
    await provider.aclose()
    assert len(report.failed) == 3 and report.error is None
    for result in report.failed:
        assert "connection refused" in result.error and result.attempts == 2


async def test_a_server_that_stays_down_stops_the_run(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "many", {f"{n}.png": "red" for n in range(8)})
    provider = OllamaProvider(base_url=f"http://127.0.0.1:{closed_port()}")
    run = _run(provider, folder, retries=0, concurrency=1, give_up_after=3)
    report = await run.run()
    await provider.aclose()
    assert report.state is RunState.FAILED
    assert "3 images in a row" in report.error and "connection refused" in report.error
    assert len(report.failed) == 3 and len(report.cancelled) == 5


async def test_ollama_unknown_model_stops_the_batch_and_says_pull_it(
    serve, colour_dataset: Path
) -> None:
    server = serve(ollama_native(models=("llava",)))
    provider = OllamaProvider("llava:13b", server.url, concurrency=1)
    report = await _run(provider, colour_dataset, concurrency=1).run()
    await provider.aclose()
    assert report.state is RunState.FAILED
    assert "ollama pull llava:13b" in report.error and "not found" in report.error
    assert len(server.requests) == 1  # fatal: the other images were not tried
    assert len(report.failed) == 1 and len(report.cancelled) == 2


async def test_ollama_sends_base64_images_without_streaming(serve) -> None:
    server = serve(ollama_native())
    async with OllamaProvider(base_url=server.url, prompt="Describe.", max_side=40) as ollama:
        caption = await ollama.caption(RED)
    assert caption.text == "a red square" and caption.prompt == "Describe."
    payload = server.requests[0].json()
    assert payload["stream"] is False and payload["prompt"] == "Describe."
    assert payload["options"]["num_predict"] == 300


async def test_openai_chat_sends_a_data_url_and_the_api_key(serve) -> None:
    server = serve(openai_chat(api_key=OPENAI_KEY, text="Here is a caption: {colour} fox"))
    async with OpenAIChatProvider(
        base_url=server.url + "/v1", model="llava-v1.6", api_key=OPENAI_KEY, max_side=32
    ) as chat:
        caption = await chat.caption(RED, prompt="Caption it.")
    assert caption.text == "red fox"  # the chat preamble is gone
    request = server.requests[0]
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    payload = request.json()
    assert payload["model"] == "llava-v1.6" and payload["stream"] is False
    text_part, image_part = payload["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "Caption it."}
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    import base64

    data = base64.b64decode(image_part["image_url"]["url"].partition(",")[2])
    assert image_size(data) == (64, 48)  # as given: the runner downscales, not the provider


async def test_openai_content_as_a_list_of_parts(serve) -> None:
    server = serve(openai_chat())
    server.script(
        Reply(
            200,
            {
                "choices": [
                    {
                        "message": {
                            "content": [
                                {"type": "text", "text": "a red "},
                                {"type": "text", "text": "fox"},
                            ]
                        }
                    }
                ]
            },
        )
    )
    async with OpenAIChatProvider(base_url=server.url + "/v1") as chat:
        assert (await chat.caption(RED)).text == "a red fox"


async def test_openai_bad_key_and_bad_request(serve) -> None:
    server = serve(openai_chat(api_key=OPENAI_KEY))
    async with OpenAIChatProvider(base_url=server.url + "/v1", api_key="sk-wrong-key-1234") as chat:
        with pytest.raises(AuthError, match="check your API key") as caught:
            await chat.caption(RED)
        assert "sk-wrong-key-1234" not in str(caught.value)
        server.script(
            Reply(
                400,
                {
                    "error": {
                        "message": "image input is not supported",
                        "type": "invalid_request_error",
                    }
                },
            )
        )
        with pytest.raises(ServerError, match="400.*image input is not supported") as bad:
            await chat.caption(RED)
        assert not bad.value.retryable


# ---- unit-level shapes (httpx.MockTransport) ------------------------------------------------


async def test_an_unknown_host_says_the_name_cannot_be_resolved() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    provider = OllamaProvider(base_url="http://ollama.invalid:11434", client=client)
    with pytest.raises(ProviderUnavailable, match="cannot be resolved") as caught:
        await provider.caption(RED)
    assert caught.value.retryable
    await provider.aclose()
    assert not client.is_closed  # an injected client belongs to the caller
    await client.aclose()


async def test_ollama_joins_a_streamed_answer() -> None:
    lines = b'{"response":"a red ","done":false}\n{"response":"fox","done":true}\n'

    def stream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=lines, headers={"Content-Type": "application/x-ndjson"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(stream)) as client:
        provider = OllamaProvider(base_url="http://ollama.test", client=client)
        assert (await provider.caption(RED)).text == "a red fox"


RETRY_AFTER_CASES = [
    ("seconds", "7", 7.0),
    ("fraction", "0.5", 0.5),
    ("date", "Wed, 01 Jan 2025 00:00:30 GMT", 30.0),
    ("past date", "Wed, 01 Jan 2025 00:00:00 GMT", 0.0),
    ("junk", "soon", None),
    ("missing", None, None),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [c[1:] for c in RETRY_AFTER_CASES],
    ids=[c[0] for c in RETRY_AFTER_CASES],
)
def test_parse_retry_after(value, expected) -> None:
    now = 1735689600.0  # 2025-01-01T00:00:00Z
    assert parse_retry_after(value, now=now) == expected


ERROR_BODY_CASES = [
    ("hf", {"error": "Model is overloaded"}, "Model is overloaded"),
    ("openai", {"error": {"message": "Invalid model", "type": "x"}}, "Invalid model"),
    ("vllm old", {"object": "error", "message": "bad input"}, "bad input"),
    ("replicate style", {"detail": "throttled"}, "throttled"),
    ("hf list", {"error": ["first problem", "second"]}, "first problem"),
    ("text", "upstream connect error", "upstream connect error"),
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in ERROR_BODY_CASES], ids=[c[0] for c in ERROR_BODY_CASES]
)
def test_error_detail(body, expected) -> None:
    response = (
        httpx.Response(500, json=body)
        if not isinstance(body, str)
        else httpx.Response(500, text=body)
    )
    assert error_detail(response) == expected


def test_every_error_is_one_line_and_scrubbed() -> None:
    from lora_studio.captioning.base import CaptionerError, scrub

    error = CaptionerError("line one\n  line two " + "x" * 400)
    assert "\n" not in str(error) and len(str(error)) <= 400
    assert scrub("token hf_abc123 echoed", "hf_abc123") == "token *** echoed"


@pytest.mark.parametrize("status", [500, 502, 503, 408])
def test_server_errors_that_may_pass_are_retryable(status) -> None:
    assert ServerError("x", status=status).retryable


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_are_not_retryable(status) -> None:
    assert not ServerError("x", status=status).retryable


async def test_results_name_the_image(serve, colour_dataset: Path) -> None:
    server = serve(ollama_native())
    provider = OllamaProvider(base_url=server.url)
    report = await _run(provider, colour_dataset).run()
    await provider.aclose()
    texts = {r.name: r.text for r in report.results if r.status is ResultStatus.CAPTIONED}
    assert texts == {
        "red.png": "a red square",
        "green.png": "a green square",
        "blue.png": "a blue square",
    }
