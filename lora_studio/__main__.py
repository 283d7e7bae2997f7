"""``python -m lora_studio`` runs the command line (``lora-studio``)."""

from __future__ import annotations

import sys

from lora_studio.cli import main

if __name__ == "__main__":
    sys.exit(main())
