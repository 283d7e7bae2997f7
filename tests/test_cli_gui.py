"""``lora-studio PATH``: a folder on the command line (or dropped on the launcher) opens the
window on it; every command keeps working. The window itself is replaced by a stand-in
here, except in the one subprocess test that opens it offscreen (``--smoke-test``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_studio import cli
from lora_studio.cli import build_parser, dataset_folder, gui_shorthand, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None, bool]]:
    """What ``run_gui`` was asked to open, instead of opening it."""
    calls: list[tuple[str | None, str | None, bool]] = []

    def fake_run_gui(
        dataset: str | None = None, base_model: str | None = None, *, smoke_test: bool = False
    ) -> int:
        calls.append((dataset, base_model, smoke_test))
        return 0

    import lora_studio.gui.app

    monkeypatch.setattr(lora_studio.gui.app, "run_gui", fake_run_gui)
    monkeypatch.delenv("LORA_STUDIO_SMOKE_TEST", raising=False)
    return calls


SHORTHAND_CASES = [
    # (argv, expected)
    ([], []),
    (["-v"], ["-v"]),
    (["train", "data"], ["train", "data"]),
    (["gui", "data"], ["gui", "data"]),
    (["--version"], ["--version"]),
    (["/some/where"], ["gui", "/some/where"]),
    (["./train"], ["gui", "./train"]),
    (["~/photos"], ["gui", "~/photos"]),
    (["file:///home/me/my%20set"], ["gui", "file:///home/me/my%20set"]),
    (["-v", "/a", "/b"], ["-v", "gui", "/a", "/b"]),
    (["--dataset", "x"], ["gui", "--dataset", "x"]),
    (["--dataset=x"], ["gui", "--dataset=x"]),
    (["--smoke-test"], ["gui", "--smoke-test"]),
    (["trian"], ["trian"]),  # a typo stays argparse's "invalid choice"
]


@pytest.mark.parametrize(("argv", "expected"), SHORTHAND_CASES)
def test_gui_shorthand(argv: list[str], expected: list[str]) -> None:
    assert gui_shorthand(argv, build_parser()) == expected


def test_a_bare_folder_opens_the_window_on_it(tmp_path, sample_dataset, opened) -> None:
    assert main([str(sample_dataset)]) == 0
    assert opened == [(str(sample_dataset), None, False)]


def test_a_folder_in_the_working_directory_without_a_slash(
    tmp_path, monkeypatch, sample_dataset, opened
) -> None:
    folder = sample_dataset.rename(tmp_path / "papercut")  # "dataset" is a command
    monkeypatch.chdir(tmp_path)
    assert main(["papercut"]) == 0
    assert opened == [(str(folder), None, False)]


def test_gui_command_flag_and_base_model(tmp_path, sample_dataset, opened) -> None:
    assert main(["gui", str(sample_dataset), "--base-model", "builtin:tiny-sd15"]) == 0
    assert main(["gui", "--dataset", str(sample_dataset)]) == 0
    assert main(["--dataset", str(sample_dataset)]) == 0
    assert opened == [
        (str(sample_dataset), "builtin:tiny-sd15", False),
        (str(sample_dataset), None, False),
        (str(sample_dataset), None, False),
    ]


def test_no_argument_opens_the_window_on_the_remembered_dataset(opened) -> None:
    assert main([]) == 0
    assert main(["gui"]) == 0
    assert opened == [(None, None, False), (None, None, False)]


def test_a_folder_named_like_a_command_opens_with_gui(tmp_path, monkeypatch, opened) -> None:
    (tmp_path / "train").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["gui", "train"]) == 0
    assert main(["./train"]) == 0
    assert opened == [(str(tmp_path / "train"), None, False)] * 2


def test_a_command_still_wins_over_a_folder_of_its_name(
    tmp_path, monkeypatch, sample_dataset, opened, capsys
) -> None:
    assert sample_dataset == tmp_path / "dataset"  # a folder named like the command
    monkeypatch.chdir(tmp_path)
    assert main(["dataset", "stats", str(sample_dataset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_images"] == 12
    assert opened == []


def test_an_image_opens_its_folder_and_a_uri_is_a_path(tmp_path, sample_dataset, opened) -> None:
    image = sample_dataset / "papercut_01.png"
    assert main([str(image)]) == 0
    spaced = tmp_path / "my set"
    spaced.mkdir()
    assert main(["file://" + str(spaced).replace(" ", "%20")]) == 0
    assert opened == [(str(sample_dataset), None, False), (str(spaced), None, False)]


def test_several_dropped_items_open_the_first_folder(
    tmp_path, sample_dataset, opened, capsys
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    images = [str(sample_dataset / f"papercut_0{n}.png") for n in (1, 2)]
    assert main([*images, str(other)]) == 0
    assert opened == [(str(sample_dataset), None, False)]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"lora-studio: opening {sample_dataset}, one dataset at a time; not opened: {other}"
    ]


def test_a_missing_path_is_one_error_line(tmp_path, opened, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main([str(missing)]) == 1
    assert main(["gui", "--dataset", str(missing)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"lora-studio: error: cannot open {missing}: no such folder"] * 2
    assert opened == []


def test_smoke_test_flag_and_environment(tmp_path, sample_dataset, opened, monkeypatch) -> None:
    assert main(["--smoke-test"]) == 0
    monkeypatch.setenv("LORA_STUDIO_SMOKE_TEST", "1")
    assert main([str(sample_dataset)]) == 0
    assert opened == [(None, None, True), (str(sample_dataset), None, True)]


def test_dataset_folder_expands_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "set").mkdir()
    assert dataset_folder("~/set") == tmp_path / "set"


def test_lora_studio_gui_entry_point_takes_the_same_arguments(
    sample_dataset, opened, monkeypatch
) -> None:
    from lora_studio.gui import app

    monkeypatch.setattr(sys, "argv", ["lora-studio-gui", str(sample_dataset), "--smoke-test"])
    assert app.main() == 0
    assert opened == [(str(sample_dataset), None, True)]


def test_help_mentions_the_folder_shorthand(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "lora-studio FOLDER" in capsys.readouterr().out
    assert cli.EXIT_USAGE == 2


def test_the_window_opens_offscreen_on_a_folder_and_the_smoke_test_exits_0(
    tmp_path, sample_dataset
) -> None:
    """The real thing, in a fresh process: what `make package-smoke` runs on the build."""
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "LORA_STUDIO_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", str(sample_dataset), "--smoke-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert f"lora-studio smoke test: window opened on {sample_dataset} (12 images)" in (
        result.stdout
    )
