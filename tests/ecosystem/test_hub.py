"""Uploading a LoRA to the Hugging Face Hub: the model card, one commit, clear failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lora_factory import make_tiny_lora
from PIL import Image

from lora_studio.cli import main
from lora_studio.ecosystem.hub import HubError, model_card, upload_lora
from lora_studio.ecosystem.lora_file import inspect_lora


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hub")
    return make_tiny_lora("sdxl", text_encoders=False).write_trainer_kohya(
        folder / "papercut.safetensors"
    )


class FakeHub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", (repo_id, kwargs)))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id: str, operations: list, **kwargs: Any) -> None:
        self.calls.append(("create_commit", (repo_id, operations, kwargs)))


def test_the_model_card_tells_trigger_base_model_and_samples(lora_file: Path) -> None:
    card = model_card(inspect_lora(lora_file), "me/papercut", ["samples/00_a.png"])
    assert card.startswith("---\nbase_model: stabilityai/stable-diffusion-xl-base-1.0\n")
    assert 'instance_prompt: "papercut style"' in card
    assert "url: samples/00_a.png" in card and "![sample](samples/00_a.png)" in card
    assert "StableDiffusionXLPipeline" in card and 'weight_name="papercut.safetensors"' in card
    assert "papercut style (10)" in card  # the training tags


def test_upload_is_one_commit_with_the_card_and_samples(
    lora_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    sample = tmp_path / "s.png"
    Image.new("RGB", (8, 8)).save(sample)
    hub = FakeHub()
    result = upload_lora(lora_file, "me/papercut", samples=[sample], api=hub)
    assert result.url == "https://huggingface.co/me/papercut"
    assert result.files == ["papercut.safetensors", "README.md", "samples/00_s.png"]
    (name, (repo, kwargs)), (commit, (_, operations, _)) = hub.calls
    assert name == "create_repo" and repo == "me/papercut" and kwargs["private"] is True
    card = next(op for op in operations if op.path_in_repo == "README.md")
    assert b"papercut style" in card.path_or_fileobj


def test_without_a_token_or_offline_it_says_so(
    lora_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr("lora_studio.ecosystem.hub.get_token", lambda source, explicit=None: None)
    with pytest.raises(HubError, match="No Hugging Face token"):
        upload_lora(lora_file, "me/papercut", api=FakeHub())
    monkeypatch.setattr(
        "lora_studio.ecosystem.hub.get_token", lambda source, explicit=None: "hf_test"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real client, offline
    assert main(["lora", "upload", str(lora_file), "me/papercut"]) == 1
    err = capsys.readouterr().err
    assert "cannot be reached" in err and "Nothing was uploaded" in err
    with pytest.raises(HubError, match="owner/name"):
        upload_lora(lora_file, "papercut", api=FakeHub())
