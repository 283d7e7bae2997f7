"""``lora-studio dataset export``: write a dataset in another layout.

    lora-studio dataset export DIR --to kohya --out OUT [--repeats N] [--concept NAME]
    lora-studio dataset export DIR --to metadata --out OUT [--caption-column text]
        [--caption-extension EXT] [--overwrite]

``kohya`` copies the images into ``OUT/<repeats>_<concept>/`` with a caption file beside
each. ``metadata`` writes a Hugging Face imagefolder ``metadata.jsonl``: ``OUT`` is a
folder (``OUT/metadata.jsonl``) or the file itself; images outside its folder are copied
there, so pointing ``--out`` at the dataset folder itself only adds the file.

Nothing that exists is replaced without ``--overwrite``: an export that would replace a
file writes nothing and says which files are in the way. The originals are never changed.
Prints where it wrote; exit codes 0 done, 1 a user-facing error (one line on stderr).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lora_studio.core.dataset import CAPTION_EXTENSION, Dataset

EXIT_OK = 0


def register(subparsers: Any) -> None:
    """Add ``export`` to the ``lora-studio dataset`` sub-commands."""
    parser = subparsers.add_parser(
        "export",
        help="write the dataset in the kohya layout or as a metadata.jsonl",
        description="Export a dataset (any layout LoRA Studio reads) to the kohya layout "
        "(images with caption files in <repeats>_<concept> folders) or to a Hugging Face "
        "imagefolder metadata.jsonl. Existing files are never replaced without --overwrite.",
    )
    parser.add_argument("dataset", help="dataset folder (or a dataset.json / metadata.jsonl)")
    parser.add_argument(
        "--to", required=True, choices=["kohya", "metadata"], help="the layout to write"
    )
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        help="kohya: the folder to write (outside the dataset); metadata: a folder for "
        "metadata.jsonl, or the file",
    )
    parser.add_argument(
        "--caption-extension",
        default=CAPTION_EXTENSION,
        metavar="EXT",
        help=f"caption files to read, and for kohya to write (default {CAPTION_EXTENSION})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="kohya: repeats of images not already in a repeat folder (default 1)",
    )
    parser.add_argument(
        "--concept",
        metavar="NAME",
        help="kohya: the name after the repeats in the folder name (default: the dataset "
        "folder's name)",
    )
    parser.add_argument(
        "--caption-column",
        default="text",
        metavar="NAME",
        help="metadata: the column the captions go in (default text)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files that already exist at the destination",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export ``args.dataset``; prints what was written."""
    dataset = Dataset.open(args.dataset, args.caption_extension)
    if args.to == "kohya":
        report = dataset.export_kohya(
            args.out,
            default_repeats=max(1, args.repeats),
            concept=args.concept,
            caption_extension=args.caption_extension,
            overwrite=args.overwrite,
        )
        print(
            f"Wrote {report.images} image(s) and {report.captions} caption file(s) to "
            f"{report.target} (kohya layout)."
        )
    else:
        report = dataset.export_metadata_jsonl(
            args.out, caption_column=args.caption_column, overwrite=args.overwrite
        )
        copied = f"; copied {report.copied} image(s) beside it" if report.copied else ""
        print(
            f"Wrote {report.target} with {report.images} row(s), {report.captions} with a "
            f"caption{copied}."
        )
    return EXIT_OK
