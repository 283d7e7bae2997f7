"""Edit → Settings: each "Test connection" against a real server on loopback, tokens into
the OS keyring (never the settings file), the no-keyring warning, and the values applied
to the window."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import keyring
from gui_helpers import run
from keyring.backend import KeyringBackend
from keyring.errors import NoKeyringError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "captioning"))

from caption_servers import LoopbackServer, Reply, Request, closed_port  # noqa: E402
from comfyui_server import FakeComfyUI  # noqa: E402
from replicate_server import ACCOUNT, TOKEN, ReplicateStandIn  # noqa: E402

from lora_studio.core import secrets  # noqa: E402
from lora_studio.core.secrets import KEYRING_SERVICE  # noqa: E402
from lora_studio.gui.async_signals import wait_until  # noqa: E402
from lora_studio.gui.settings_dialog import (  # noqa: E402
    COMFYUI,
    HUGGINGFACE,
    OPENAI,
    REPLICATE,
    SettingsDialog,
    SettingsService,
    SettingsValues,
)

HF_TOKEN = "hf_SettingsTest0123456789"
OPENAI_KEY = "sk-settings-test-0123"


class NoKeyring(KeyringBackend):
    """A system without a keyring (a headless Linux box)."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        raise NoKeyringError("no keyring here")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise NoKeyringError("no keyring here")

    def delete_password(self, service: str, username: str) -> None:
        raise NoKeyringError("no keyring here")


def whoami(request: Request) -> Reply:
    """Hugging Face's whoami-v2."""
    if request.path != "/api/whoami-v2":
        return Reply(404, {"error": "Not Found"})
    if request.headers.get("authorization") != f"Bearer {HF_TOKEN}":
        return Reply(401, {"error": "Invalid credentials in Authorization header"})
    return Reply(
        200, {"type": "user", "name": "lora-tester", "auth": {"accessToken": {"role": "read"}}}
    )


def models(request: Request) -> Reply:
    """An OpenAI-compatible server's model list (llama-server, vLLM)."""
    if request.path != "/v1/models":
        return Reply(404, {"error": {"message": "Not found"}})
    if request.headers.get("authorization") != f"Bearer {OPENAI_KEY}":
        return Reply(401, {"error": {"message": "Invalid API key"}})
    return Reply(
        200,
        {"object": "list", "data": [{"id": "llava-1.6-7b", "object": "model"}, {"id": "qwen2-vl"}]},
    )


def make_dialog(qtbot, tmp_path: Path, values: SettingsValues) -> SettingsDialog:
    service = SettingsService(tmp_path / "outputs")
    dialog = SettingsDialog(values, service)
    service.setParent(dialog)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_replicate_test_names_the_account_and_the_token_goes_to_the_keyring(
    qtbot, qloop, tmp_path, memory_keyring
) -> None:
    async def scenario() -> None:
        stand_in = await ReplicateStandIn().start()
        try:
            dialog = make_dialog(qtbot, tmp_path, SettingsValues(replicate_url=stand_in.api_url))
            dialog.token_edits[REPLICATE].setText(TOKEN)
            dialog.rows[REPLICATE].button.click()
            await wait_until(lambda: REPLICATE in dialog.results, 20, what="the test")
            result = dialog.results[REPLICATE]
            assert result.ok, result.message
            assert ACCOUNT in dialog.rows[REPLICATE].result.text()
            route, _, _, auth = stand_in.requests[-1]
            assert route == "account.get" and auth == f"Bearer {TOKEN}"
            dialog.findChild(type(dialog.rows[REPLICATE].button), "save_replicate").click()
            await wait_until(
                lambda: memory_keyring.passwords.get((KEYRING_SERVICE, "replicate")) == TOKEN,
                10,
                what="the keyring",
            )
            assert dialog.token_edits[REPLICATE].text() == ""  # the field does not keep it
            await wait_until(
                lambda: "keyring" in dialog.token_labels[REPLICATE].text(), 10, what="the state"
            )
            # A refused token says so.
            dialog.token_edits[REPLICATE].setText("r8_wrong")
            dialog.results.clear()
            dialog.rows[REPLICATE].button.click()
            await wait_until(lambda: REPLICATE in dialog.results, 20, what="the second test")
            assert not dialog.results[REPLICATE].ok
            assert "check your Replicate token" in dialog.results[REPLICATE].message
            assert "r8_wrong" not in dialog.results[REPLICATE].message
        finally:
            await stand_in.close()

    run(qloop, scenario())


def test_huggingface_whoami_and_no_network(qtbot, qloop, tmp_path, memory_keyring) -> None:
    server = LoopbackServer(whoami).start()
    try:

        async def scenario() -> None:
            await asyncio.to_thread(secrets.save_token, secrets.HUGGINGFACE, HF_TOKEN)
            dialog = make_dialog(qtbot, tmp_path, SettingsValues(hf_endpoint=server.url))
            dialog.rows[HUGGINGFACE].button.click()  # the stored token is used
            await wait_until(lambda: HUGGINGFACE in dialog.results, 20, what="the test")
            assert dialog.results[HUGGINGFACE].ok, dialog.results[HUGGINGFACE].message
            assert "lora-tester" in dialog.rows[HUGGINGFACE].result.text()
            dialog.hf_endpoint_edit.setText(f"http://127.0.0.1:{closed_port()}")
            dialog.results.clear()
            dialog.rows[HUGGINGFACE].button.click()
            await wait_until(lambda: HUGGINGFACE in dialog.results, 20, what="the failure")
            message = dialog.results[HUGGINGFACE].message
            assert not dialog.results[HUGGINGFACE].ok
            assert "No network connection to 127.0.0.1" in message
            assert HF_TOKEN not in message

        run(qloop, scenario())
    finally:
        server.stop()
    assert all(r.path == "/api/whoami-v2" for r in server.requests)


def test_openai_compatible_server_lists_its_models(qtbot, qloop, tmp_path, memory_keyring) -> None:
    server = LoopbackServer(models).start()
    try:

        async def scenario() -> None:
            dialog = make_dialog(qtbot, tmp_path, SettingsValues(openai_url=f"{server.url}/v1"))
            dialog.rows[OPENAI].button.click()  # no key yet: refused
            await wait_until(lambda: OPENAI in dialog.results, 20, what="the refusal")
            assert not dialog.results[OPENAI].ok
            assert "asks for a token" in dialog.results[OPENAI].message
            dialog.token_edits[OPENAI].setText(OPENAI_KEY)
            dialog.results.clear()
            dialog.rows[OPENAI].button.click()
            await wait_until(lambda: OPENAI in dialog.results, 20, what="the models")
            result = dialog.results[OPENAI]
            assert result.ok and result.items == ("llava-1.6-7b", "qwen2-vl")
            assert "llava-1.6-7b" in dialog.rows[OPENAI].result.text()
            box = dialog.openai_model_box
            assert [box.itemText(i) for i in range(box.count())] == list(result.items)
            assert dialog.values().openai_model == "llava-1.6-7b"

        run(qloop, scenario())
    finally:
        server.stop()


def test_comfyui_test_reports_version_and_device(qtbot, qloop, tmp_path, memory_keyring) -> None:
    async def scenario() -> None:
        fake = FakeComfyUI(tmp_path / "comfy")
        url = await fake.start()
        try:
            dialog = make_dialog(qtbot, tmp_path, SettingsValues(comfyui_url=url))
            dialog.rows[COMFYUI].button.click()
            await wait_until(lambda: COMFYUI in dialog.results, 30, what="the test")
            result = dialog.results[COMFYUI]
            assert result.ok, result.message
            assert "ComfyUI" in result.message and "checkpoint" in result.message
        finally:
            await fake.stop()

    run(qloop, scenario())


def test_a_comfyui_behind_a_proxy_takes_a_token_from_the_dialog(
    qtbot, qloop, tmp_path, memory_keyring
) -> None:
    """A ComfyUI behind a proxy that wants a bearer token: refused without it, accepted
    with the one typed, and once saved it is the keyring's (what a run uses)."""
    token = "comfy-proxy-token-0123"

    async def scenario() -> None:
        fake = FakeComfyUI(tmp_path / "comfy")
        fake.token = token
        url = await fake.start()
        try:
            dialog = make_dialog(qtbot, tmp_path, SettingsValues(comfyui_url=url))

            async def test() -> str:
                dialog.results.pop(COMFYUI, None)
                dialog.rows[COMFYUI].button.click()
                await wait_until(lambda: COMFYUI in dialog.results, 30, what="the test")
                return dialog.results[COMFYUI].message

            refused = await test()
            assert not dialog.results[COMFYUI].ok and "HTTP 401" in refused
            assert "Edit › Settings" in refused
            dialog.token_edits[COMFYUI].setText(token)
            message = await test()
            assert dialog.results[COMFYUI].ok and "ComfyUI" in message, message
            assert token not in dialog.rows[COMFYUI].result.text()
            dialog.findChild(type(dialog.rows[COMFYUI].button), "save_comfyui").click()
            await wait_until(
                lambda: memory_keyring.passwords.get((KEYRING_SERVICE, "comfyui")) == token,
                10,
                what="the keyring",
            )
            assert dialog.token_edits[COMFYUI].text() == ""
            message = await test()  # with the stored token now
            assert dialog.results[COMFYUI].ok, message
        finally:
            await fake.stop()

    run(qloop, scenario())


def test_without_a_keyring_the_fallback_warning_is_shown(
    qtbot, qloop, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(NoKeyring())
    try:

        async def scenario() -> None:
            dialog = make_dialog(qtbot, tmp_path, SettingsValues())
            dialog.token_edits[HUGGINGFACE].setText(HF_TOKEN)
            dialog.findChild(type(dialog.rows[HUGGINGFACE].button), "save_huggingface").click()
            await wait_until(lambda: "tokens.json" in dialog.note.text(), 10, what="the warning")
            assert "no keyring" in dialog.note.text()
            assert "tokens.json" in dialog.token_labels[HUGGINGFACE].text()

        run(qloop, scenario())
    finally:
        keyring.set_keyring(previous)
    assert secrets.file_token(secrets.HUGGINGFACE) == HF_TOKEN
