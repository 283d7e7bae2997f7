"""``lora-studio lora inspect | convert | check``: LoRA files from and for other tools.

* ``inspect FILE [--json]`` - format, family, base model, ranks and alphas, targets,
  text-encoder part, DoRA, metadata, top training tags (from the header; no torch).
* ``convert FILE --to kohya|diffusers|comfyui OUT`` - lossless conversion.
* ``check FILE [--base-model REF]`` - does it load in diffusers, ComfyUI and
  Automatic1111/Forge?
* ``upload FILE OWNER/NAME [--sample IMG]... [--public]`` - to the Hugging Face Hub with a
  model card (token from ``HF_TOKEN`` or the keyring).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

FAMILY_CHOICES = ("sd15", "sdxl", "sd3", "flux")


def register_top_level(subparsers: Any) -> None:
    lora = subparsers.add_parser("lora", help="inspect, convert, check and upload LoRA files")
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
    upload = lsub.add_parser("upload", help="publish on the Hugging Face Hub with a model card")
    upload.add_argument("file", help="a LoRA .safetensors file")
    upload.add_argument("repo", help="the Hub model repository, owner/name")
    upload.add_argument(
        "--sample", action="append", default=[], metavar="IMAGE", help="a sample image (repeat)"
    )
    upload.add_argument("--public", action="store_true", help="a public repository")
    upload.add_argument(
        "--card-only", action="store_true", help="print the model card, upload nothing"
    )
    lora.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.lora_command == "inspect":
        return _inspect(args)
    if args.lora_command == "convert":
        return _convert(args)
    if args.lora_command == "upload":
        return _upload(args)
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


def _upload(args: argparse.Namespace) -> int:
    from lora_studio.ecosystem.hub import model_card, upload_lora
    from lora_studio.ecosystem.lora_file import inspect_lora

    if args.card_only:
        names = [f"samples/{i:02d}_{s.rsplit('/', 1)[-1]}" for i, s in enumerate(args.sample)]
        print(model_card(inspect_lora(args.file), args.repo, names))
        return 0
    result = upload_lora(args.file, args.repo, samples=args.sample, private=not args.public)
    print(f"uploaded {', '.join(result.files)}", file=sys.stderr)
    print(result.url)
    return 0
