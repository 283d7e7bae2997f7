"""``lora-studio caption``: automatic captions from the command line.

    lora-studio caption DIR --provider blip|blip2|hf-api|openai|ollama [--model M] [--url U]
        [--prompt P] [--mode fill|overwrite|append] [--trigger WORD] [--yes]
        [--concurrency N] [--timeout S] [--retries N] [--token-env VAR] [--json] ...
    lora-studio caption review DIR [--accept all|PATH...] [--reject all|PATH...] [--force]
    lora-studio caption enhance DIR --url U --model M [--style sentence|tags|polish]
        [--instruction TEXT] [--trigger WORD] [--yes]
    lora-studio caption set-token [--provider hf-api|openai] [--delete]
    lora-studio caption make-tiny-model DIR --kind blip|blip2

Captioning writes **proposals** into the dataset's ``dataset.json`` (see
:mod:`lora_studio.core.proposals`); caption files are not touched until they are accepted
(``caption review DIR --accept all``, or the window's caption grid). With ``--yes`` the
captions are written at once and their provenance (provider, model, the caption replaced)
recorded; a caption edited while the run was going is kept as a proposal instead.

Progress is a bar on a terminal and one line per image otherwise (both on stderr);
images that failed are listed with why. ``--json`` prints the report on stdout.
``set-token`` reads the token from the terminal (or one line of stdin) and keeps it in
the OS keyring, never in a file.

``enhance`` rewrites the existing captions with a text LLM on an OpenAI-compatible server
(tags into a sentence, a sentence into tags, or a polish; or your own instruction), trigger
word first; the rewrites are proposals too, reviewed the same way.

Exit codes: 0 every image captioned; 1 an error (one ``lora-studio: error:`` line), also
when some images failed or proposals were left as conflicts; 130 stopped with Ctrl+C
(the captions made so far are kept as proposals, or written with ``--yes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lora_studio.core.dataset import CAPTION_EXTENSION, Dataset
from lora_studio.core.errors import ConfigError

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130
PROVIDER_KINDS = ("blip", "blip2", "hf-api", "openai", "ollama")
ACTIONS = ("review", "enhance", "set-token", "make-tiny-model")
STYLES = ("sentence", "tags", "polish")

log = logging.getLogger(__name__)


def register_top_level(subparsers: Any) -> None:
    """Add ``caption`` beside ``train``."""
    parser = subparsers.add_parser(
        "caption",
        help="caption a dataset automatically (BLIP, BLIP-2, HF API, LLaVA via OpenAI/Ollama)",
        description=(
            "Caption the images of DIR with a local BLIP/BLIP-2 or a remote captioner.\n"
            "The captions become proposals in DIR/dataset.json, and no caption file\n"
            "changes until they are accepted; --yes writes them at once instead.\n\n"
            "  lora-studio caption DIR --provider P [options]\n"
            "  lora-studio caption review DIR [--accept all|PATH...] [--reject all|PATH...]"
            " [--force]\n"
            "  lora-studio caption enhance DIR --url U --model M [--style sentence|tags|polish]"
            " [--yes]\n"
            "  lora-studio caption set-token [--provider hf-api|openai] [--delete]\n"
            "  lora-studio caption make-tiny-model DIR --kind blip|blip2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="DIR",
        help="dataset folder (or review / enhance / set-token / make-tiny-model)",
    )
    parser.add_argument("rest", nargs="*", metavar="ARG", help=argparse.SUPPRESS)

    captioning = parser.add_argument_group("captioning (lora-studio caption DIR ...)")
    captioning.add_argument("--provider", choices=PROVIDER_KINDS, help="the captioner")
    captioning.add_argument(
        "--model",
        help="model: an HF id in your cache or a folder (blip, blip2), the model id "
        "(hf-api), or the server's model name (openai, ollama)",
    )
    captioning.add_argument("--url", help="server base URL (hf-api, openai: ending in /v1, ollama)")
    captioning.add_argument(
        "--prompt",
        help="prompt: a caption start for BLIP ('a photo of'), a question for "
        "BLIP-2, the instruction for a vision LLM",
    )
    captioning.add_argument(
        "--mode",
        choices=("fill", "overwrite", "append"),
        default="fill",
        help="fill: only images without a caption (default); overwrite: all; append: add "
        "new tags after the caption",
    )
    captioning.add_argument(
        "--trigger", metavar="WORD", help="trigger word put first in every caption"
    )
    captioning.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="write the caption files now instead of saving proposals for review",
    )
    captioning.add_argument("--concurrency", type=int, metavar="N", help="images in flight at once")
    captioning.add_argument(
        "--timeout", type=float, metavar="S", help="seconds one attempt at one image may take"
    )
    captioning.add_argument(
        "--retries", type=int, default=3, metavar="N", help="retries after 429/5xx/time-outs (3)"
    )
    captioning.add_argument(
        "--token-env",
        metavar="VAR",
        help="read the token / API key from this environment variable (default: HF_TOKEN "
        "or OPENAI_API_KEY, then the OS keyring)",
    )
    captioning.add_argument(
        "--max-chars", type=int, metavar="N", help="cut captions to N characters"
    )
    captioning.add_argument("--max-tags", type=int, metavar="N", help="cut captions to N tags")
    captioning.add_argument(
        "--keep-boilerplate",
        action="store_true",
        help="keep captioner filler such as 'arafed' or 'there is a'",
    )
    captioning.add_argument(
        "--device", help="blip, blip2: cuda, cpu, mps... (default: CUDA if present)"
    )
    captioning.add_argument(
        "--batch-size", type=int, metavar="N", help="blip, blip2: images per pass"
    )
    captioning.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="blip, blip2: longest caption in tokens"
    )
    captioning.add_argument(
        "--caption-extension",
        default=CAPTION_EXTENSION,
        metavar="EXT",
        help=f"caption file extension (default {CAPTION_EXTENSION})",
    )
    captioning.add_argument(
        "--json", action="store_true", help="print the report as JSON on stdout"
    )

    review = parser.add_argument_group("review (lora-studio caption review DIR ...)")
    review.add_argument(
        "--accept", nargs="+", metavar="PATH", help="write these proposals ('all': every one)"
    )
    review.add_argument(
        "--reject", nargs="+", metavar="PATH", help="drop these proposals ('all': every one)"
    )
    review.add_argument(
        "--force", action="store_true", help="accept even captions edited since the proposal"
    )

    enhance = parser.add_argument_group("enhance (lora-studio caption enhance DIR ...)")
    enhance.add_argument(
        "--style",
        choices=STYLES,
        default="sentence",
        help="sentence: tags into one sentence (default); tags: a sentence into tags; "
        "polish: fix grammar and filler, keep the form",
    )
    enhance.add_argument(
        "--instruction", metavar="TEXT", help="your own instruction for the model instead"
    )

    other = parser.add_argument_group("set-token, make-tiny-model")
    other.add_argument("--delete", action="store_true", help="set-token: forget the stored token")
    other.add_argument(
        "--kind", choices=("blip", "blip2"), default="blip", help="make-tiny-model: which model"
    )
    parser.set_defaults(run=run_command)


# The name the project's command modules use.
def run(args: argparse.Namespace) -> int:
    """Run ``lora-studio caption`` (see the module docstring)."""
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    if args.target == "review":
        return _review(args, _one_dir(args, "review"))
    if args.target == "enhance":
        return _enhance(args, _one_dir(args, "enhance"))
    if args.target == "set-token":
        if args.rest:
            raise ConfigError("set-token takes no folder.")
        return _set_token(args)
    if args.target == "make-tiny-model":
        return _make_tiny(args, _one_dir(args, "make-tiny-model"))
    if args.rest:
        raise ConfigError(f"Unexpected arguments: {' '.join(args.rest)}.")
    return _caption(args)


def _one_dir(args: argparse.Namespace, action: str) -> str:
    if len(args.rest) != 1:
        raise ConfigError(f"`caption {action}` needs one folder: lora-studio caption {action} DIR.")
    return str(args.rest[0])


# ---- caption DIR ---------------------------------------------------------------------------


def _caption(args: argparse.Namespace) -> int:
    from lora_studio.captioning.credentials import SOURCES, find_token
    from lora_studio.captioning.postprocess import CaptionMode
    from lora_studio.captioning.registry import provider_spec
    from lora_studio.captioning.request import CaptionRequest
    from lora_studio.captioning.runner import CaptionRun, StoreSink
    from lora_studio.core.proposals import ProposalStore

    if not args.provider:
        raise ConfigError("Choose a captioner with --provider (" + ", ".join(PROVIDER_KINDS) + ").")
    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--batch-size", args.batch_size),
        ("--max-new-tokens", args.max_new_tokens),
        ("--max-chars", args.max_chars),
        ("--max-tags", args.max_tags),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1.")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError("--timeout must be more than 0 seconds.")
    if args.retries < 0:
        raise ConfigError("--retries cannot be negative.")
    dataset = Dataset.open(args.target, args.caption_extension)
    spec = provider_spec(args.provider)
    options: dict[str, Any] = {}
    if spec.local:
        if args.url:
            raise ConfigError(f"--url is for remote captioners; {args.provider} runs here.")
        for name in ("device", "batch_size", "max_new_tokens"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        _quiet_transformers()
    else:
        for flag in ("device", "batch_size", "max_new_tokens"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} is for blip and blip2.")
    token = None
    if args.provider in SOURCES:
        lookup = find_token(args.provider, env_var=args.token_env)
        token = lookup.token
        if token is None and args.provider == "hf-api":
            notes = " ".join(lookup.notes)
            _warn(
                "no Hugging Face token found; requests go without one"
                + (
                    f" ({notes})"
                    if notes
                    else " (set HF_TOKEN or run `lora-studio caption set-token`)"
                )
            )
    request = CaptionRequest(
        args.provider,
        model=args.model,
        url=args.url,
        prompt=args.prompt,
        mode=CaptionMode(args.mode),
        trigger_word=args.trigger or "",
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        retries=args.retries,
        max_chars=args.max_chars,
        max_tags=args.max_tags,
        strip_boilerplate=not args.keep_boilerplate,
        **options,
    )
    provider = request.make_provider(token=token)
    run_options = request.run_options()
    store = ProposalStore(dataset)
    store.proposals()  # an unreadable dataset.json stops us before any captioning
    sink = StoreSink(store, write=args.yes)
    display = _Display()
    caption_run = CaptionRun(provider, dataset, run_options, sink=sink, on_progress=display.update)
    try:
        report = asyncio.run(_drive(caption_run, provider))
    finally:
        display.close()
    return _summarise(args, report, sink, store.manifest_path, dataset.root)


# ---- caption enhance DIR -------------------------------------------------------------------


def _enhance(args: argparse.Namespace, folder: str) -> int:
    from lora_studio.captioning.credentials import find_token
    from lora_studio.captioning.enhance import CaptionEnhancer, EnhanceRun
    from lora_studio.captioning.postprocess import PostProcessOptions
    from lora_studio.captioning.runner import RunOptions, StoreSink
    from lora_studio.core.proposals import ProposalStore

    if not args.url or not args.model:
        raise ConfigError(
            "caption enhance needs the text model's server and name: --url http://HOST/v1 "
            "--model NAME (vLLM, llama.cpp llama-server, LM Studio, Ollama's /v1, OpenAI)."
        )
    if args.provider not in (None, "openai"):
        raise ConfigError("caption enhance talks to an OpenAI-compatible server (--url).")
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1.")
    dataset = Dataset.open(folder, args.caption_extension)
    token = find_token("openai", env_var=args.token_env).token
    kwargs: dict[str, Any] = {"api_key": token}
    if args.timeout:
        kwargs["timeout_s"] = args.timeout
    enhancer = CaptionEnhancer(args.url, args.model, **kwargs)
    options = RunOptions(
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        retries=args.retries,
        postprocess=PostProcessOptions(
            trigger_word=args.trigger or "",
            strip_boilerplate=not args.keep_boilerplate,
            max_chars=args.max_chars,
            max_tags=args.max_tags,
        ),
    )
    store = ProposalStore(dataset)
    store.proposals()  # an unreadable dataset.json stops us before any request
    sink = StoreSink(store, write=args.yes)
    display = _Display()
    enhance_run = EnhanceRun(
        enhancer,
        dataset,
        options,
        style=args.style,
        instruction=args.instruction,
        sink=sink,
        on_progress=display.update,
    )
    try:
        report = asyncio.run(_drive(enhance_run, enhancer))
    finally:
        display.close()
    return _summarise(args, report, sink, store.manifest_path, dataset.root)


async def _drive(caption_run: Any, provider: Any) -> Any:
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print(
                "\nStopping; the captions made so far are kept (Ctrl+C again to quit now)...",
                file=sys.stderr,
            )
            caption_run.stop()
        else:
            os._exit(EXIT_CANCELLED)

    # Windows has no add_signal_handler; there Ctrl+C raises KeyboardInterrupt instead
    # (the run's task is cancelled, which still saves what was done).
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await caption_run.run()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        await provider.aclose()


def _summarise(
    args: argparse.Namespace,
    report: Any,
    sink: Any,
    manifest: Path,
    root: Path,
) -> int:
    from lora_studio.captioning.runner import RunState

    written = sink.report
    if args.json:
        data = report.to_dict()
        data["manifest"] = str(manifest)
        data["proposals_saved"] = 0 if args.yes else sink.stored
        print(json.dumps(data, indent=2, ensure_ascii=False))
    failed = report.failed
    for result in failed:
        print(f"  failed  {result.name}: {result.error}", file=sys.stderr)
    for name in written.conflicts:
        print(
            f"  kept as a proposal  {name}: its caption changed while the run was going",
            file=sys.stderr,
        )
    captioned = len(report.captioned)
    considered = len(report.results) - len(report.skipped)
    who = f"{report.provider} ({report.model})"
    if not args.json:
        if args.yes:
            line = f"Wrote {len(written.accepted)} caption(s) with {who}"
        else:
            line = f"Proposed {captioned} caption(s) with {who}"
        line += f" for {considered} image(s) in {report.elapsed_s:.1f} s"
        if report.skipped:
            line += f"; {len(report.skipped)} skipped ({report.skipped[0].error})"
        print(line + ".", file=sys.stderr)
        if captioned and not args.yes:
            print(
                f"Saved in {manifest}; review with: lora-studio caption review {root}",
                file=sys.stderr,
            )
    if report.state is RunState.CANCELLED:
        kept = "written" if args.yes else "kept as proposals"
        _error_line(f"stopped; {captioned} caption(s) made so far are {kept}")
        return EXIT_CANCELLED
    if report.error:
        _error_line(report.error)
        return EXIT_ERROR
    if failed:
        _error_line(f"{len(failed)} of {considered} image(s) could not be captioned (listed above)")
        return EXIT_ERROR
    if written.conflicts:
        _error_line(
            f"{len(written.conflicts)} caption(s) changed during the run were not overwritten; "
            f"review them with `lora-studio caption review {root}`"
        )
        return EXIT_ERROR
    return EXIT_OK


class _Display:
    """A rich bar on a terminal's stderr; a line per image otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task("Captioning", total=None, rate="")

    def update(self, progress: Any) -> None:
        result = progress.result
        if self._bar is not None:
            rate = f"{progress.images_per_s:.2f} img/s" if progress.images_per_s else ""
            description = progress.message or str(progress.state).capitalize()
            self._bar.update(
                self._task,
                description=description,
                total=progress.total or None,
                completed=progress.done,
                rate=rate,
            )
            if result is not None and str(result.status) == "failed":
                self._bar.console.print(f"failed {result.name}: {result.error}", style="red")
            return
        if result is not None and str(result.status) != "skipped":
            what = result.text if str(result.status) == "captioned" else result.error
            eta = f", eta {progress.eta_s:.0f} s" if progress.eta_s else ""
            print(
                f"[{progress.done}/{progress.total}] {result.name}: {result.status}"
                f"{': ' + what if what else ''}{eta}",
                file=sys.stderr,
                flush=True,
            )
        elif progress.message:
            print(progress.message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _quiet_transformers() -> None:
    # Their progress bars would tear through ours.
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# ---- caption review DIR ----------------------------------------------------------------------


def _review(args: argparse.Namespace, folder: str) -> int:
    from lora_studio.core.proposals import ProposalStore

    dataset = Dataset.open(folder, args.caption_extension)
    store = ProposalStore(dataset)
    if args.accept and args.reject:
        overlap = {store.key(p) for p in args.accept} & {store.key(p) for p in args.reject}
        if overlap or "all" in args.accept or "all" in args.reject:
            raise ConfigError("A proposal cannot be both accepted and rejected.")
    status = EXIT_OK
    if args.reject:
        paths = None if args.reject == ["all"] else args.reject
        dropped = store.reject(paths)
        print(f"Rejected {len(dropped)} proposal(s); caption files untouched.", file=sys.stderr)
        unknown = sorted({store.key(p) for p in (paths or [])} - set(dropped))
        if unknown:
            _error_line("no proposal for: " + ", ".join(unknown))
            status = EXIT_ERROR
    if args.accept:
        paths = None if args.accept == ["all"] else args.accept
        report = store.accept(paths, force=args.force)
        if args.json:
            print(
                json.dumps(
                    {
                        "accepted": report.accepted,
                        "conflicts": report.conflicts,
                        "missing": report.missing,
                        "failed": report.failed,
                        "unknown": report.unknown,
                    },
                    indent=2,
                    ensure_ascii=False,
                )
            )
        print(
            f"Accepted {len(report.accepted)} proposal(s): caption files written.", file=sys.stderr
        )
        for name in report.conflicts:
            print(f"  conflict  {name}: the caption changed since it was proposed", file=sys.stderr)
        for name in report.missing:
            print(f"  missing   {name}: the image is no longer in the dataset", file=sys.stderr)
        for name, why in report.failed.items():
            print(f"  failed    {name}: {why}", file=sys.stderr)
        if report.unknown:
            print("  no proposal for: " + ", ".join(report.unknown), file=sys.stderr)
        if report.conflicts:
            _error_line(
                f"{len(report.conflicts)} proposal(s) not applied: their captions were edited "
                f"since; --force overwrites them"
            )
            status = EXIT_ERROR
        elif not report.ok:
            _error_line("some proposals were not applied (listed above)")
            status = EXIT_ERROR
    if args.accept or args.reject:
        return status
    return _list_proposals(args, store)


def _list_proposals(args: argparse.Namespace, store: Any) -> int:
    from lora_studio.core.proposals import ProposalState

    views = store.review()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "image": v.path,
                        "state": str(v.state),
                        "current": v.current,
                        "proposed": v.proposal.text,
                        "provider": v.proposal.provider,
                        "model": v.proposal.model,
                        "created_at": v.proposal.created_at,
                        "mode": v.proposal.mode,
                    }
                    for v in views
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return EXIT_OK
    if not views:
        print(f"No caption proposals in {store.manifest_path}.")
        return EXIT_OK
    for view in views:
        p = view.proposal
        print(f"{view.path}  [{view.state}]  {p.provider} / {p.model}, {p.created_at}")
        if view.state is ProposalState.MISSING:
            print("    the image is no longer in the dataset")
        else:
            print("    " + diff_text(view.diff))
    counts: dict[str, int] = {}
    for view in views:
        counts[str(view.state)] = counts.get(str(view.state), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    print(
        f"\n{len(views)} proposal(s) ({summary}). Accept with --accept all|PATH..., "
        f"reject with --reject all|PATH...; [-removed-] {{+added+}}."
    )
    return EXIT_OK


def diff_text(ops: Any) -> str:
    """A word diff as text, ``wdiff``-style: ``[-removed-]`` and ``{+added+}``."""
    parts: list[str] = []
    for op in ops:
        if op.kind == "equal":
            parts.append(op.text)
        elif op.kind == "delete":
            parts.append(f"[-{op.text}-]")
        else:
            parts.append(f"{{+{op.text}+}}")
    return "".join(parts) or "(empty)"


# ---- set-token, make-tiny-model -----------------------------------------------------------------


def _set_token(args: argparse.Namespace) -> int:
    from lora_studio.captioning.credentials import SOURCES, delete_token, store_token

    kind = args.provider or "hf-api"
    if kind not in SOURCES:
        raise ConfigError(f"The {kind} captioner uses no token; choose hf-api or openai.")
    source = SOURCES[kind]
    if args.delete:
        delete_token(kind)
        print(f"Removed the stored {source.label} token (if one was there).")
        return EXIT_OK
    if sys.stdin.isatty():
        token = getpass.getpass(f"{source.label} token (not shown): ")
    else:
        token = sys.stdin.readline()
    warning = store_token(kind, token)
    if warning:
        _warn(warning)
        print(f"Stored the {source.label} token in the fallback file.")
    else:
        print(
            f"Stored the {source.label} token in the OS keyring (service lora-studio, user "
            f"{source.key})."
        )
    return EXIT_OK


def _make_tiny(args: argparse.Namespace, folder: str) -> int:
    from lora_studio.captioning.tiny import make_tiny_caption_model

    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not an empty folder; choose a new folder.")
    _quiet_transformers()
    path = make_tiny_caption_model(target, args.kind)
    print(path)
    return EXIT_OK


def _warn(message: str) -> None:
    print(f"lora-studio: warning: {message}", file=sys.stderr)


def _error_line(message: str) -> None:
    print(f"lora-studio: error: {message}", file=sys.stderr)
