"""``lora-studio dataset validate``: check every image and caption of a dataset.

    lora-studio dataset validate DIR [--json] [--family F] [--min-side N]
        [--max-pixels N] [--caption-extension EXT] [--quick]

Prints the problems grouped by severity, with counts: every error and warning with its
file, and the notes (how images are converted) counted by kind; the last line sums it up.
``--json`` prints the whole report instead (one entry per file). Exit codes: 0 no errors
(warnings are allowed), 1 errors were found (the last line on stderr says how many) or the
dataset cannot be opened, 130 stopped with Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Any

from PIL import Image

from lora_studio.core.config import ModelFamily
from lora_studio.core.dataset import CAPTION_EXTENSION, Dataset
from lora_studio.core.validate import (
    MIN_SIDE,
    Issue,
    Severity,
    ValidationReport,
    validate_dataset,
)

EXIT_OK, EXIT_ERROR = 0, 1

_HEADINGS = {Severity.ERROR: "Errors", Severity.WARNING: "Warnings", Severity.INFO: "Notes"}


def register(subparsers: Any) -> None:
    """Add ``validate`` to the ``lora-studio dataset`` sub-commands."""
    sides = ", ".join(f"{family.value} {side}" for family, side in MIN_SIDE.items())
    parser = subparsers.add_parser(
        "validate",
        help="check every image and caption (corrupt, too small, duplicates, ...)",
        description="Check every file of a dataset: corrupt, truncated or empty images, "
        "unsupported formats, images too small for the model family or over the pixel "
        "limit, extreme aspect ratios, exact and near duplicates, missing, empty or "
        "non-UTF-8 captions; and say how CMYK, 16-bit, palette, transparent and "
        "EXIF-rotated images are converted. Exit code 1 when an error is found.",
    )
    parser.add_argument("dataset", help="dataset folder (or a dataset.json / metadata.jsonl)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--family",
        choices=[f.value for f in ModelFamily],
        help=f"model family whose minimum image side applies ({sides}; default: the smallest)",
    )
    parser.add_argument(
        "--min-side",
        type=int,
        metavar="N",
        help="report images whose short side is under N pixels (overrides --family)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help="images with more pixels are flagged and not decoded (default: Pillow's "
        f"decompression-bomb limit, {Image.MAX_IMAGE_PIXELS or 0:,})",
    )
    parser.add_argument(
        "--caption-extension",
        default=CAPTION_EXTENSION,
        metavar="EXT",
        help=f"extension of caption files beside the images (default {CAPTION_EXTENSION})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="read image headers only: faster, but misses truncated data and near-duplicates",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate ``args.dataset``; see the module docstring for the output and exit codes."""
    for flag, value in (("--min-side", args.min_side), ("--max-pixels", args.max_pixels)):
        if value is not None and value < 1:
            print(f"lora-studio: error: {flag} must be at least 1", file=sys.stderr)
            return EXIT_ERROR
    dataset = Dataset.open(args.dataset, args.caption_extension)
    progress = _Progress(enabled=not args.json and sys.stderr.isatty())
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        if args.max_pixels is not None and pillow_limit is not None:
            # Pillow's own check (at twice its limit) must not refuse what the user allowed.
            Image.MAX_IMAGE_PIXELS = max(args.max_pixels, pillow_limit)
        report = validate_dataset(
            dataset,
            family=args.family,
            min_side=args.min_side,
            max_pixels=args.max_pixels,
            check_pixels=not args.quick,
            progress=progress,
        )
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
        progress.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
    if report.has_errors:
        files = len(report.files_with(Severity.ERROR))
        print(
            f"lora-studio: error: {files} file(s) of {report.root} cannot be used for "
            f"training (see the errors above).",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def print_report(report: ValidationReport) -> None:
    """The human-readable report (see the module docstring)."""
    print(f"Dataset {report.root}")
    by_severity: dict[Severity, list[Issue]] = defaultdict(list)
    for issue in report.issues():
        by_severity[issue.severity].append(issue)
    for severity in (Severity.ERROR, Severity.WARNING):
        issues = by_severity.get(severity, [])
        if not issues:
            continue
        files = len({issue.path for issue in issues})
        print(f"\n{_HEADINGS[severity]}: {len(issues)} in {files} file(s)")
        for issue in issues:
            print(f"  {_name(report, issue)}: {issue.message} [{issue.code}]")
    notes = by_severity.get(Severity.INFO, [])
    if notes:
        print(f"\n{_HEADINGS[Severity.INFO]}: {len(notes)} (converted correctly, not problems)")
        by_code: dict[str, list[Issue]] = defaultdict(list)
        for issue in notes:
            by_code[issue.code].append(issue)
        for code, issues in by_code.items():
            names = ", ".join(_name(report, issue) for issue in issues[:3])
            more = ", \u2026" if len(issues) > 3 else ""
            print(f"  {code}: {len(issues)} file(s) ({names}{more}): {issues[0].message}")
    print()
    print(report.summary())


def _name(report: ValidationReport, issue: Issue) -> str:
    try:
        return issue.path.relative_to(report.root).as_posix()
    except ValueError:
        return str(issue.path)


class _Progress:
    """``Checking images 120/1000`` on a terminal's stderr, rewritten in place."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.enabled and (done == total or done % 25 == 0):
            print(f"\rChecking images {done}/{total}", end="", file=sys.stderr, flush=True)
            self._shown = True

    def close(self) -> None:
        if self._shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
