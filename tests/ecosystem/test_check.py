"""The compatibility check: diffusers' ``load_lora_weights`` on the family's tiny pipeline,
and the key names against ComfyUI's, Automatic1111's and Forge's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lora_factory import make_tiny_lora
from safetensors.torch import load_file, save_file

from lora_studio.cli import main
from lora_studio.ecosystem.check import check_lora, format_check
from lora_studio.ecosystem.convert import convert_file

FAMILIES = ("sd15", "sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("check")
    out = {}
    for family in FAMILIES:
        lora = make_tiny_lora(family, text_encoders=family in ("sd15", "flux"))
        out[family] = lora.write_trainer_kohya(folder / f"{family}.safetensors")
    return out


def _status(report, target: str) -> str:
    return next(t for t in report.targets if t.target == target).status


@pytest.mark.parametrize("family", FAMILIES)
def test_what_the_trainer_writes_loads_everywhere(files: dict[str, Path], family: str) -> None:
    report = check_lora(files[family])
    assert report.family == family
    assert report.ok, format_check(report)
    assert _status(report, "diffusers") == "ok"
    assert _status(report, "ComfyUI") == "ok"
    assert _status(report, "Forge") == "ok"
    a1111 = "unsupported" if family in ("flux", "sd3") else "ok"
    assert _status(report, "Automatic1111") == a1111


def test_comfyui_names_are_flagged_for_automatic1111_and_diffusers(
    files: dict[str, Path], tmp_path: Path
) -> None:
    comfy = convert_file(files["sd15"], "comfyui", tmp_path / "c.safetensors").path
    report = check_lora(comfy)
    assert _status(report, "ComfyUI") == "ok"
    assert _status(report, "Automatic1111") == "fail"
    a1111 = next(t for t in report.targets if t.target == "Automatic1111")
    assert "first '.'" in a1111.not_loaded[0]
    assert _status(report, "diffusers") == "fail"
    assert not report.ok


def test_peft_unet_keys_are_flagged_for_comfyui(files: dict[str, Path], tmp_path: Path) -> None:
    peft = convert_file(files["sd15"], "diffusers", tmp_path / "d.safetensors").path
    report = check_lora(peft, load=False)
    comfy = next(t for t in report.targets if t.target == "ComfyUI")
    assert comfy.status == "partial"
    assert all("attention-processor" in k for k in comfy.not_loaded)
    assert _status(report, "diffusers") == "skipped"


def test_a_key_for_a_module_the_model_lacks_is_not_loaded(
    files: dict[str, Path], tmp_path: Path
) -> None:
    tensors = load_file(str(files["sd15"]))
    renamed = {
        k.replace("lora_unet_down_blocks_0_attentions_0", "lora_unet_down_blocks_7_attentions_0"): v
        for k, v in tensors.items()
    }
    bad = tmp_path / "bad.safetensors"
    save_file(renamed, str(bad), metadata={"ss_base_model_version": "sd_v1"})
    report = check_lora(bad)
    assert _status(report, "diffusers") in ("partial", "fail")
    comfy = next(t for t in report.targets if t.target == "ComfyUI")
    assert comfy.status == "partial"
    assert all("down_blocks.7" in k for k in comfy.not_loaded)
    assert _status(report, "Automatic1111") == "partial"


def test_sd3_in_kohya_names_does_not_load_in_diffusers(
    files: dict[str, Path], tmp_path: Path
) -> None:
    native = convert_file(files["sd3"], "kohya", tmp_path / "k.safetensors").path
    report = check_lora(native)
    assert _status(report, "diffusers") in ("fail", "partial")
    assert _status(report, "ComfyUI") == "ok"


def test_base_model_of_another_family_is_a_clear_failure(files: dict[str, Path]) -> None:
    report = check_lora(files["sdxl"], base_model="builtin:tiny-sd15")
    diffusers = next(t for t in report.targets if t.target == "diffusers")
    assert diffusers.status == "fail" and "sd15" in diffusers.message


def test_cli_check(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lora", "check", str(files["flux"]), "--base-model", "builtin:tiny-flux"]) == 0
    out = capsys.readouterr().out
    assert "[OK  ] diffusers" in out and "Automatic1111 does not run Flux" in out
    comfy = convert_file(files["sd15"], "comfyui", tmp_path / "c.safetensors").path
    assert main(["lora", "check", str(comfy), "--json", "--no-load"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert {t["target"]: t["status"] for t in data["targets"]}["Automatic1111"] == "fail"
