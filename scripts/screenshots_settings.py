"""Pictures of the preset form, the estimate panel's VRAM warning, the "what changed"
list and the Settings dialog, in the light and the dark palette (``NAME.png`` and
``NAME-dark.png``): ``form-vram-warning``, ``estimate-vram-warning``, ``preset-changes``,
``settings-dialog``.

    python scripts/screenshots_settings.py docs/screenshots

Offscreen (Fusion style); nothing in the user's folders is touched (``LORA_STUDIO_HOME``
points at a temporary folder). The estimate is the real one for an SDXL run of 40 images
at batch 2, checked against a 12 GB GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def dark_palette():  # noqa: ANN201 - Qt types are imported late
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#2b2b2e",
        QPalette.ColorRole.WindowText: "#e8e8e8",
        QPalette.ColorRole.Base: "#1e1e20",
        QPalette.ColorRole.AlternateBase: "#2a2a2d",
        QPalette.ColorRole.Text: "#e8e8e8",
        QPalette.ColorRole.Button: "#3a3a3e",
        QPalette.ColorRole.ButtonText: "#e8e8e8",
        QPalette.ColorRole.Highlight: "#5c6bc0",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.ToolTipBase: "#3a3a3e",
        QPalette.ColorRole.ToolTipText: "#e8e8e8",
        QPalette.ColorRole.PlaceholderText: "#8a8a8a",
        QPalette.ColorRole.Mid: "#555555",
        QPalette.ColorRole.Dark: "#1a1a1a",
        QPalette.ColorRole.Light: "#505050",
    }
    for role, color in roles.items():
        palette.setColor(role, QColor(color))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#777777"))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText, QColor("#777777"))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#777777"))
    return palette


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["LORA_STUDIO_HOME"] = tempfile.mkdtemp(prefix="lora-studio-shots-")
    from PySide6.QtWidgets import QApplication

    import lora_studio.gui  # noqa: F401 - qt_compat first
    from lora_studio.core.config import LoraConfig, ModelFamily
    from lora_studio.core.estimates import estimate
    from lora_studio.gui.estimate_panel import GpuInfo
    from lora_studio.gui.preset_form import PresetForm
    from lora_studio.gui.settings_dialog import SettingsDialog, SettingsService, SettingsValues

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setStyle("Fusion")
    light = app.palette()
    args.folder.mkdir(parents=True, exist_ok=True)
    config = LoraConfig.sdxl_preset().replace(
        batch_size=2, name="papercut_sdxl", trigger_word="papercut style", rank=48, alpha=48.0
    )
    for suffix, palette in (("", light), ("-dark", dark_palette())):
        app.setPalette(palette)
        form = PresetForm(config)
        form.resize(620, 900)
        form.set_base_model("/models/sdxl-base-1.0", "SDXL (diffusers folder)")
        form.set_output_dir("~/LoRA Studio/outputs")
        form.set_image_count(40)
        form.estimate_panel.set_gpu(GpuInfo("NVIDIA GeForce RTX 3060", 12.0))
        form.set_estimate(estimate(40, config, ModelFamily.SDXL))
        form.show()
        app.processEvents()
        form.grab().save(str(args.folder / f"form-vram-warning{suffix}.png"))
        form.estimate_panel.grab().save(str(args.folder / f"estimate-vram-warning{suffix}.png"))
        view = form.show_changes()
        app.processEvents()
        view.grab().save(str(args.folder / f"preset-changes{suffix}.png"))
        view.close()
        form.close()
        service = SettingsService(Path("/tmp"))
        dialog = SettingsDialog(
            SettingsValues(
                comfyui_url="http://127.0.0.1:8188",
                openai_url="http://127.0.0.1:8080/v1",
                openai_model="llava-1.6-mistral-7b",
                output_dir="~/LoRA Studio/outputs",
            ),
            service,
        )
        dialog.show()
        app.processEvents()
        from lora_studio.gui.connection_checks import CheckResult

        dialog._on_checked(
            "comfyui",
            CheckResult(
                True,
                "ComfyUI 0.3.40 on NVIDIA GeForce RTX 4090, 21.3 of 24.0 GB free; trains "
                "with TrainLoraNode \u2192 SaveLoRA; 4 checkpoint(s).",
            ),
        )
        dialog._on_checked("replicate", CheckResult(True, "Signed in to Replicate as you (user)."))
        dialog._on_checked(
            "huggingface",
            CheckResult(
                False,
                "No network connection to huggingface.co: [Errno -3] Temporary failure in "
                "name resolution. Check the address, that the server is running, and this "
                "computer's network.",
            ),
        )
        dialog._on_token_states(
            {
                "comfyui": "not set",
                "replicate": "in the keyring",
                "huggingface": "not set",
                "openai": "not set",
            }
        )
        dialog.show()
        app.processEvents()
        dialog.grab().save(str(args.folder / f"settings-dialog{suffix}.png"))
        dialog.close()
    print(f"wrote the pictures to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
