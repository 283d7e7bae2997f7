"""``lora inspect`` and ``lora convert`` on LoRAs of every family on the tiny models: files
written by our trainer's kohya export and by diffusers' own ``save_lora_weights``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lora_factory import TinyLora, make_tiny_lora
from safetensors.torch import load_file, save_file

from lora_studio.cli import main
from lora_studio.core.errors import OutputError
from lora_studio.ecosystem.convert import convert_file, load_lora, read_canonical
from lora_studio.ecosystem.lora_file import LoraFileError, inspect_lora

FAMILIES = ("sd15", "sdxl", "sd3", "flux")
FORMATS = ("kohya", "diffusers", "comfyui")


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    lora = make_tiny_lora(family)
    folder = tmp_path_factory.mktemp(family)
    return (
        lora,
        lora.write_trainer_kohya(folder / "trainer.safetensors"),
        lora.write_diffusers(folder / "diffusers"),
    )


def _assert_same_updates(path: Path, lora: TinyLora) -> None:
    canonical = read_canonical(*load_lora(path))
    expected = lora.expected()
    assert set(canonical.modules) == set(expected)
    for key, module in canonical.modules.items():
        torch.testing.assert_close(module.delta(), expected[key], atol=1e-5, rtol=1e-4)


def test_inspect_a_trainer_file(tiny) -> None:
    lora, trainer, _ = tiny
    info = inspect_lora(trainer)
    # SD 3's "kohya" file uses diffusers keys, the one format all SD 3 readers share.
    assert info.format == ("diffusers" if lora.family == "sd3" else "kohya")
    assert (info.family, info.family_source) == (lora.family, "metadata")
    assert info.has_text_encoder
    assert "denoiser" in info.components and "text_encoder" in info.components
    assert not info.dora
    if lora.family == "flux":  # q, k and v fused into one rank-12 LoRA with alpha 6
        assert set(info.ranks) == {4, 12} and set(info.alphas) == {2.0, 6.0}
    elif lora.family == "sd3":  # alpha / rank folded in: scale 1
        assert info.ranks == {4: len(info.modules)} and info.alphas == {4.0: len(info.modules)}
    else:
        assert info.ranks == {4: len(info.modules)} and info.alphas == {2.0: len(info.modules)}
    assert info.top_tags[:2] == [("papercut style", 10), ("hills", 7)]
    assert info.metadata["modelspec.trigger_phrase"] == "papercut style"


def test_inspect_a_diffusers_save_lora_weights_file(tiny) -> None:
    lora, _, diffusers_file = tiny
    info = inspect_lora(diffusers_file)
    assert info.format == "diffusers"
    assert info.family == lora.family and info.family_source == "layer names"
    # diffusers' adapter metadata carries the alpha.
    assert info.alphas == {2.0: len(info.modules)}
    assert "to_q" in info.target_modules and "q_proj" in info.target_modules
    expected_parts = {"sd15": 2, "sdxl": 3, "sd3": 3, "flux": 2}[lora.family]
    assert len(info.components) == expected_parts


@pytest.mark.parametrize("source", ["trainer", "diffusers"])
def test_files_read_to_the_updates_that_were_trained(tiny, source: str) -> None:
    lora, trainer, diffusers_file = tiny
    _assert_same_updates(trainer if source == "trainer" else diffusers_file, lora)


def test_every_pair_of_formats_round_trips(tiny, tmp_path: Path) -> None:
    lora, trainer, _ = tiny
    starts = {}
    for fmt in FORMATS:
        starts[fmt] = convert_file(trainer, fmt, tmp_path / f"start_{fmt}.safetensors").path
        _assert_same_updates(starts[fmt], lora)
        assert inspect_lora(starts[fmt]).format == fmt
    for first in FORMATS:
        for second in FORMATS:
            there = convert_file(starts[first], second, tmp_path / f"{first}_{second}.safetensors")
            back = convert_file(
                there.path, first, tmp_path / f"{first}_{second}_{first}.safetensors"
            )
            _assert_same_updates(there.path, lora)
            _assert_same_updates(back.path, lora)
            assert inspect_lora(back.path).family == lora.family


def test_metadata_is_kept(tiny, tmp_path: Path) -> None:
    _, trainer, _ = tiny
    out = convert_file(trainer, "comfyui", tmp_path / "c.safetensors").path
    info = inspect_lora(out)
    assert info.metadata["ss_output_name"] == "tiny"
    assert info.metadata["modelspec.trigger_phrase"] == "papercut style"
    assert info.top_tags[0] == ("papercut style", 10)
    conversion = json.loads(info.metadata["lora_studio.conversion"])
    assert conversion["to"] == "comfyui"
    assert len(info.metadata["sshs_model_hash"]) == 64


def test_diffusers_output_folds_alpha_and_loads_as_scale_one(tmp_path: Path) -> None:
    lora = make_tiny_lora("sd15", text_encoders=False)
    trainer = lora.write_trainer_kohya(tmp_path / "k.safetensors")
    result = convert_file(trainer, "diffusers", tmp_path)
    assert result.path.name == "pytorch_lora_weights.safetensors"
    assert any("folded" in note for note in result.notes)
    tensors = load_file(str(result.path))
    assert not any(key.endswith(".alpha") for key in tensors)
    key = next(k for k in tensors if k.endswith("attn1.to_q.lora_A.weight"))
    peft_key = key[len("unet.") :]
    torch.testing.assert_close(tensors[key], lora.denoiser[peft_key] * 0.5)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_dora_magnitudes_survive_every_format(family: str, tmp_path: Path) -> None:
    lora = make_tiny_lora(family, text_encoders=False, dora=True)
    source = lora.write_diffusers(tmp_path / "d")
    assert inspect_lora(source).dora
    magnitudes = lora.expected_magnitudes()
    assert magnitudes
    for fmt in FORMATS:
        out = convert_file(source, fmt, tmp_path / f"{fmt}.safetensors").path
        assert inspect_lora(out).dora
        canonical = read_canonical(*load_lora(out))
        for key, magnitude in magnitudes.items():
            torch.testing.assert_close(canonical.modules[key].magnitude, magnitude)
        _assert_same_updates(out, lora)


def test_dora_on_part_of_a_fused_linear_is_named_as_not_carried(tmp_path: Path) -> None:
    lora = make_tiny_lora("flux", text_encoders=False, dora=True)
    partial = {k: v for k, v in lora.denoiser.items() if ".to_v." not in k}
    source = tmp_path / "partial.safetensors"
    save_file(
        {f"transformer.{k}": v.contiguous() for k, v in partial.items()},
        str(source),
        metadata={"ss_base_model_version": "flux1"},
    )
    result = convert_file(source, "kohya", tmp_path / "k.safetensors")
    assert any("cannot be carried" in note and "img_attn.qkv" in note for note in result.notes)


def test_convert_never_overwrites_without_asking(tiny, tmp_path: Path) -> None:
    _, trainer, _ = tiny
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(OutputError, match="--overwrite"):
        convert_file(trainer, "kohya", out)
    assert out.read_bytes() == b"mine"
    convert_file(trainer, "kohya", out, overwrite=True)
    assert inspect_lora(out).format == "kohya"


def test_cli_inspect_and_convert(tiny, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lora, trainer, _ = tiny
    assert main(["lora", "inspect", str(trainer), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == lora.family and data["module_count"] > 0
    assert data["top_tags"][0] == ["papercut style", 10]
    assert main(["lora", "inspect", str(trainer)]) == 0
    assert "papercut style (10)" in capsys.readouterr().out
    out = tmp_path / "c.safetensors"
    assert main(["lora", "convert", str(trainer), "--to", "comfyui", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert inspect_lora(out).format == "comfyui"


def test_not_a_lora_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a model", encoding="utf-8")
    with pytest.raises(LoraFileError):
        inspect_lora(text)
    assert main(["lora", "inspect", str(text)]) == 1
    assert "not a safetensors file" in capsys.readouterr().err
    model = tmp_path / "model.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(model))
    with pytest.raises(LoraFileError, match="no LoRA layers"):
        inspect_lora(model)


def test_inspect_imports_no_torch(tiny) -> None:
    _, trainer, _ = tiny
    code = (
        "import sys\n"
        "from lora_studio.ecosystem.lora_file import inspect_lora\n"
        f"info = inspect_lora({str(trainer)!r})\n"
        "assert info.modules\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_locon_convolutions_round_trip_and_load(tmp_path: Path) -> None:
    """LoCon (conv_rank) layers on SD 1.5's resnets, down/up samplers: 4-D weights, their
    own alpha."""
    from lora_studio.ecosystem.check import check_lora

    lora = make_tiny_lora("sd15", text_encoders=False, conv_rank=2, conv_alpha=1.0)
    trainer = lora.write_trainer_kohya(tmp_path / "locon.safetensors")
    info = inspect_lora(trainer)
    assert any(m.conv for m in info.modules)
    assert set(info.ranks) == {4, 2} and set(info.alphas) == {2.0, 1.0}
    for fmt in FORMATS:
        out = convert_file(trainer, fmt, tmp_path / f"{fmt}.safetensors").path
        _assert_same_updates(out, lora)
        back = convert_file(out, "kohya", tmp_path / f"{fmt}_back.safetensors").path
        _assert_same_updates(back, lora)
    report = check_lora(trainer)
    assert report.ok, report.to_dict()


@pytest.mark.parametrize(
    ("module", "down_shape", "family", "version"),
    [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", (4, 1024), "sd15", "sd_v2"),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", (4, 768), "sd15", "sd_v1"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", (4, 640), "sdxl", "sdxl_base_v1-0"),
        ("lora_unet_double_blocks_0_img_attn_qkv", (12, 3072), "flux", "flux1"),
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", (12, 1536), "sd3", "sd3"),
        ("transformer.single_transformer_blocks.0.attn.to_q", (4, 3072), "flux", "flux1"),
    ],
)  # fmt: skip
def test_family_from_names_alone(
    tmp_path: Path, module: str, down_shape: tuple[int, int], family: str, version: str
) -> None:
    """Files without metadata; alphas stored as bf16 (as some trainers do)."""
    path = tmp_path / "bare.safetensors"
    if module.startswith("lora_"):
        tensors = {
            f"{module}.lora_down.weight": torch.zeros(down_shape),
            f"{module}.lora_up.weight": torch.zeros(8, down_shape[0]),
            f"{module}.alpha": torch.tensor(3.0, dtype=torch.bfloat16),
        }
    else:
        tensors = {
            f"{module}.lora_A.weight": torch.zeros(down_shape),
            f"{module}.lora_B.weight": torch.zeros(8, down_shape[0]),
        }
    save_file(tensors, str(path))
    info = inspect_lora(path)
    assert (info.family, info.family_source, info.base_model_version) == (
        family,
        "layer names",
        version,
    )
    expected_alpha = 3.0 if module.startswith("lora_") else float(down_shape[0])
    assert info.alphas == {expected_alpha: 1}
