"""``lora-studio lora inspect | convert | check``: LoRA files from and for other tools.

* ``inspect FILE [--json]`` - format, family, base model, ranks and alphas, targets,
  text-encoder part, DoRA, metadata, top training tags (from the header; no torch).
* ``convert FILE --to kohya|diffusers|comfyui OUT`` - lossless conversion.
* ``check FILE [--base-model REF]`` - does it load in diffusers, ComfyUI and
  Automatic1111/Forge?
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

FAMILY_CHOICES = ("sd15", "sdxl", "sd3", "flux")


def register_top_level(subparsers: Any) -> None:
    lora = subparsers.add_parser("lora", help="inspect, convert and check LoRA files")
    lsub = lora.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    inspect = lsub.add_parser("inspect", help="what a LoRA file is: format, family, ranks...")
    inspect.add_argument("file", help="a LoRA .safetensors file")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--family", choices=FAMILY_CHOICES, help="assume this model family")
    inspect.add_argument("--top", type=int, default=20, metavar="N", help="top tags to list")
    convert = lsub.add_parser("convert", help="convert between kohya, diffusers and ComfyUI")
    convert.add_argument("file", help="a LoRA .safetensors file")
    convert.add_argument("--to", required=True, choices=("kohya", "diffusers", "comfyui"))
    convert.add_argument("out", help="the file to write (or a folder)")
    convert.add_argument("--family", choices=FAMILY_CHOICES, help="when the file does not tell")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    check = lsub.add_parser(
        "check", help="will it load in diffusers, ComfyUI and Automatic1111/Forge?"
    )
    check.add_argument("file", help="a LoRA .safetensors file")
    check.add_argument(
        "--base-model",
        help="load into this base model (folder, file, HF cache id; default: the family's "
        "built-in tiny model)",
    )
    check.add_argument("--family", choices=FAMILY_CHOICES, help="when the file does not tell")
    check.add_argument("--no-load", action="store_true", help="check key names only")
    check.add_argument("--json", action="store_true", help="print JSON")
    lora.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.lora_command == "inspect":
        return _inspect(args)
    if args.lora_command == "convert":
        return _convert(args)
    return _check(args)


def _inspect(args: argparse.Namespace) -> int:
    from lora_studio.ecosystem.lora_file import format_report, inspect_lora

    info = inspect_lora(args.file, family=args.family, top=args.top)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_report(info))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from lora_studio.ecosystem.convert import convert_file

    result = convert_file(
        args.file, args.to, args.out, family=args.family, overwrite=args.overwrite
    )
    print(
        f"{result.family} LoRA, {result.modules} layers: {result.source_format} -> "
        f"{result.target_format}",
        file=sys.stderr,
    )
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(result.path)
    return 0


def _check(args: argparse.Namespace) -> int:
    from lora_studio.ecosystem.check import check_lora, format_check

    report = check_lora(
        args.file, base_model=args.base_model, family=args.family, load=not args.no_load
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_check(report))
    return 0 if report.ok else 1
