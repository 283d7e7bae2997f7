"""The files that install LoRA Studio as a desktop app: the launcher, the AppStream
metadata, the icon set, and the data files a wheel carries. (The PyInstaller build itself
is ``make package`` / ``make package-smoke``, too slow for the test suite.)"""

from __future__ import annotations

import configparser
import glob
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LINUX = REPO / "packaging" / "linux"
DESKTOP = LINUX / "lora-studio.desktop"
METAINFO = LINUX / "io.github.lorastudio.LoRAStudio.metainfo.xml"
ICONS = REPO / "resources" / "icons" / "hicolor"


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    return parser["Desktop Entry"]


def test_the_launcher_opens_folders_with_lora_studio() -> None:
    entry = _desktop_entry()
    assert entry["Exec"] == "lora-studio %F"  # dropped folders arrive as paths (cli: PATH)
    assert "inode/directory" in entry["MimeType"].split(";")
    assert entry["Type"] == "Application" and entry["Terminal"] == "false"
    assert entry["Icon"] == "lora-studio"


def test_the_icon_set_has_every_size_and_a_scalable_icon() -> None:
    name = _desktop_entry()["Icon"]
    for size in (16, 24, 32, 48, 64, 128, 256, 512, 1024):
        png = ICONS / f"{size}x{size}" / "apps" / f"{name}.png"
        with Image.open(png) as image:
            assert image.size == (size, size)
            assert image.mode == "RGBA"
            assert image.getpixel((0, 0))[3] == 0  # transparent corners (rounded tile)
    svg = ICONS / "scalable" / "apps" / f"{name}.svg"
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_the_metainfo_names_the_launcher_and_the_icon() -> None:
    root = ET.parse(METAINFO).getroot()
    assert root.tag == "component" and root.get("type") == "desktop-application"
    assert root.findtext("id") == "io.github.lorastudio.LoRAStudio"
    assert root.findtext("launchable") == DESKTOP.name
    assert root.findtext("icon") == _desktop_entry()["Icon"]
    assert root.findtext("project_license") == "Apache-2.0"
    assert root.find("content_rating") is not None


@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="appstreamcli not installed")
def test_appstreamcli_validates_the_metainfo() -> None:
    result = subprocess.run(
        ["appstreamcli", "validate", "--no-net", str(METAINFO)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None, reason="desktop-file-validate not installed"
)
def test_desktop_file_validate_accepts_the_launcher() -> None:
    result = subprocess.run(
        ["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in result.stdout


def test_every_data_file_of_the_wheel_exists() -> None:
    """pyproject's data-files: the sample dataset, the launcher, the metainfo, the icons."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    data_files: dict[str, list[str]] = project["tool"]["setuptools"]["data-files"]
    targets = set(data_files)
    assert {"share/applications", "share/metainfo"} <= targets
    assert "share/lora-studio/resources/sample_dataset" in targets
    assert any(t.startswith("share/icons/hicolor/") for t in targets)
    for target, patterns in data_files.items():
        for pattern in patterns:
            matches = glob.glob(str(REPO / pattern))
            assert matches, f"{pattern} (for {target}) matches no file"
            if target.startswith("share/icons/"):
                # an icon lands in the theme folder of its own size
                assert all(
                    Path(m).parent.relative_to(REPO / "resources" / "icons")
                    == Path(target).relative_to("share/icons")
                    for m in matches
                ), target


def test_the_pyinstaller_spec_bundles_the_resources_and_the_entry_point() -> None:
    spec = (REPO / "packaging" / "lora-studio.spec").read_text(encoding="utf-8")
    assert "lora_studio_entry.py" in spec and (REPO / "packaging" / "lora_studio_entry.py").exists()
    for folder in ("sample_dataset", "icons"):
        assert f'"resources" / "{folder}"' in spec
