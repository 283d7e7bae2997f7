"""``lora-studio`` on the command line: in-process for speed, one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from lora_studio.cli import main
from lora_studio.core.config import LoraConfig


def _train_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(dataset),
        "--base-model",
        "builtin:tiny-sd15",
        "--preset",
        "fast",
        "--max-steps",
        "3",
        "--resolution",
        "64",
        "--output",
        str(out),
        *extra,
    ]


def test_train_prints_the_output_path_last(tiny_model, small_dataset, tmp_path, capsys) -> None:
    code = main(
        _train_args(
            small_dataset,
            tmp_path / "out",
            "--trigger-word",
            "papercut style",
            "--rank",
            "4",
            "--name",
            "cli_lora",
        )
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    path = Path(captured.out.strip().splitlines()[-1])
    assert path == tmp_path / "out" / "cli_lora.safetensors" and path.exists()
    assert "step 3/3" in captured.err
    # after the run, which tools load every key of the file
    assert "Loads in: ComfyUI ok, Automatic1111 ok, Forge ok" in captured.err
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4"
    assert meta["modelspec.trigger_phrase"] == "papercut style"


def test_config_file_then_flags_override_it(tiny_model, small_dataset, tmp_path, capsys) -> None:
    config = LoraConfig.fast_preset().replace(
        rank=2, alpha=2.0, resolution=64, max_steps=2, name="from_file"
    )
    config.save(tmp_path / "run.toml")
    code = main(
        [
            "train",
            str(small_dataset),
            "--config",
            str(tmp_path / "run.toml"),
            "--rank",
            "3",
            "--output",
            str(tmp_path / "out"),
            "--save-config",
            str(tmp_path / "effective.toml"),
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(tmp_path / "out" / "from_file.safetensors")
    assert captured.err == ""  # --quiet
    effective = LoraConfig.load(tmp_path / "effective.toml")
    assert (effective.rank, effective.alpha, effective.max_steps) == (3, 2.0, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{empty}", "--output", "{out}"], "No images found"),
        (["train", "{data}", "--base-model", "{tmp}/nope", "--output", "{out}"], "does not exist"),
        (["train", "{data}", "--rank", "0", "--output", "{out}"], "Rank must be at least 1"),
        (
            ["train", "{data}", "--preset", "fast", "--config", "{tmp}/x.toml"],
            "either --preset or --config",
        ),
        (
            ["train", "{data}", "--output", "{blocker}", "--max-steps", "1", "--resolution", "64"],
            "is a file, not a folder",
        ),
        (["dataset", "stats", "{tmp}/missing"], "does not exist"),
        (["estimate", "{data}", "--config", "{tmp}/missing.toml"], "does not exist"),
    ],
)
def test_errors_are_one_readable_line(
    tiny_model, small_dataset, tmp_path, capsys, args, message
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "blocker").write_text("file", encoding="utf-8")
    values = {
        "empty": tmp_path / "empty",
        "data": small_dataset,
        "out": tmp_path / "out",
        "tmp": tmp_path,
        "blocker": tmp_path / "blocker",
    }
    code = main([a.format(**values) for a in args])
    captured = capsys.readouterr()
    assert code == 1
    error_lines = [
        line for line in captured.err.splitlines() if line.startswith("lora-studio: error:")
    ]
    assert len(error_lines) == 1 and message in error_lines[0], captured.err
    assert "Traceback" not in captured.err


def test_dataset_stats_json(sample_dataset, capsys) -> None:
    assert main(["dataset", "stats", str(sample_dataset), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_images"] == 12 and data["images_with_captions"] == 10
    assert data["top_tags"][0] == {"tag": "papercut style", "count": 10}
    assert data["root"] == str(sample_dataset)


def test_dataset_stats_text(sample_dataset, capsys) -> None:
    assert main(["dataset", "stats", str(sample_dataset)]) == 0
    out = capsys.readouterr().out
    assert "captioned:       10 of 12" in out


def test_estimate_json(sample_dataset, capsys) -> None:
    assert (
        main(["estimate", str(sample_dataset), "--preset", "fast", "--epochs", "4", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == 48 and data["hardware"] == "a 2-core CPU"


def test_models_make_tiny_and_info(tmp_path, capsys) -> None:
    target = tmp_path / "tiny"
    assert main(["models", "make-tiny", str(target), "--family", "sd15"]) == 0
    assert Path(capsys.readouterr().out.strip()) == target
    assert (target / "model_index.json").exists() and (target / "unet" / "config.json").exists()
    assert main(["models", "info", str(target)]) == 0
    assert "family:    SD 1.5" in capsys.readouterr().out
    assert main(["models", "make-tiny", str(target)]) == 1  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_python_dash_m_entry_point(tiny_model, small_dataset, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", *_train_args(small_dataset, tmp_path / "out")],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out" / "my_lora.safetensors")


def test_ctrl_c_keeps_the_lora_so_far_and_resume_finishes_the_run(
    tiny_model, small_dataset, tmp_path, capsys
) -> None:
    import signal

    args = _train_args(small_dataset, tmp_path / "out")
    args[args.index("--max-steps") + 1] = "40"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_studio", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "step 1/40" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest_err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest_err
    assert "Stopping after the current step" in rest_err
    saved = list((tmp_path / "out").glob("my_lora-step*.safetensors"))
    assert len(saved) == 1
    step = int(saved[0].stem.rsplit("step", 1)[1])
    assert 1 <= step <= 3  # the step running when Ctrl+C came, give or take a log line
    checkpoints = tmp_path / "out" / "my_lora-checkpoints"
    assert f"Continue with: --resume {checkpoints}" in rest_err

    code = main(
        [
            "train",
            str(small_dataset),
            "--resume",
            str(checkpoints),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"Resumed from step-{step:06d}" in captured.err
    assert "step 40/40" in captured.err
    assert Path(captured.out.strip()) == tmp_path / "out" / "my_lora.safetensors"
