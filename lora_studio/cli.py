"""``lora-studio``: the command line.

    lora-studio                         open the desktop app (same as ``lora-studio gui``)
    lora-studio DATASET_DIR             open the desktop app on that folder (``gui DATASET_DIR``)
    lora-studio train DATASET_DIR ...   train a LoRA headless, with a progress bar
    lora-studio estimate DATASET_DIR    steps, time and VRAM for a config, without training
    lora-studio dataset stats DIR       dataset statistics (``--json`` for scripts)
    lora-studio models make-tiny DIR    write the tiny random-weight model as a diffusers folder

Every setting of the preset form is a ``train`` flag, generated from
:class:`~lora_studio.core.config.LoraConfig`'s field metadata, so help texts and limits
stay in one place. Precedence: ``--preset`` or ``--config FILE`` first, then flags.

Exit codes: 0 done, 1 a user-facing error (one line on stderr), 2 bad usage,
130 cancelled with Ctrl+C (the LoRA trained so far is still saved).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_studio import __version__
from lora_studio.commands import DATASET_COMMANDS, TOP_LEVEL_COMMANDS
from lora_studio.core.base_model import DEFAULT_BASE_MODEL, ModelKind, resolve_base_model
from lora_studio.core.config import FIELDS, PRESETS, LoraConfig, ModelFamily, enum_for_field
from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import ConfigError, DatasetError, LoraStudioError
from lora_studio.core.estimates import format_duration
from lora_studio.core.jobs import (
    BackendType,
    JobSpec,
    JobStatus,
    JobStore,
    JobStoreError,
    Progress,
)
from lora_studio.core.paths import default_output_dir, job_db_path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

_FAMILY_PRESET = {
    ModelFamily.SD15: "sd15",
    ModelFamily.SDXL: "sdxl",
    ModelFamily.SD3: "sd35",
    ModelFamily.FLUX: "flux",
}
# Flags users type often get a short alias as well.
_ALIASES = {"gradient_accumulation_steps": ["--grad-accum"], "name": ["--output-name"]}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per user-facing :class:`LoraConfig` field, help and limits from metadata."""
    group = parser.add_argument_group("training settings (override the preset/config)")
    for f in dataclasses.fields(LoraConfig):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        help_text = str(meta.get("help", ""))
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and hi is not None:
            help_text += f" [{lo:g}-{hi:g}]"
        kind = str(f.type)
        names = [_flag(f.name), *_ALIASES.get(f.name, [])]
        if kind == "bool":
            group.add_argument(
                *names,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        enum_cls = enum_for_field(f.name)
        choices = [m.value for m in enum_cls] if enum_cls else None
        group.add_argument(
            *names,
            dest=f.name,
            default=None,
            choices=choices,
            metavar=None if choices else f.name.split("_")[-1].upper(),
            help=help_text,
        )


def config_from_args(args: argparse.Namespace, family: ModelFamily | None) -> LoraConfig:
    """Preset, config file or resumed checkpoint, then every flag the user gave."""
    if args.config and args.preset:
        raise ConfigError("Give either --preset or --config, not both.")
    resume = getattr(args, "resume", None)
    if args.config:
        base = LoraConfig.load(args.config)
    elif resume and not args.preset:
        from lora_studio.training.checkpoints import read_checkpoint

        base = read_checkpoint(resume).config
    else:
        preset = args.preset or (_FAMILY_PRESET.get(family) if family else None) or "sd15"
        base = LoraConfig.from_preset(preset)
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None
    }
    if "max_steps" in overrides and str(overrides["max_steps"]).strip() in ("0", "off", "none"):
        overrides["max_steps"] = None
    return base.replace(**overrides) if overrides else base.validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-studio",
        description="Make LoRA adapters for SD 1.5, SDXL, SD 3.5 and Flux. "
        "Without a command, opens the desktop app; `lora-studio FOLDER` opens it on that "
        "dataset folder (the same as `lora-studio gui FOLDER`).",
    )
    parser.add_argument("--version", action="version", version=f"lora-studio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gui = sub.add_parser("gui", help="open the desktop app")
    # nargs="*": a launcher's `Exec=lora-studio %F` passes every dropped item.
    gui.add_argument(
        "dataset",
        nargs="*",
        metavar="PATH",
        help="dataset folder to open (an image opens its folder; of several, the first)",
    )
    gui.add_argument("--dataset", dest="dataset_option", metavar="DIR", help="the same, as a flag")
    gui.add_argument("--base-model", help=f"base model (default {DEFAULT_BASE_MODEL})")
    gui.add_argument(
        "--smoke-test",
        action="store_true",
        help="open the window, wait until the dataset has loaded, close it and exit: 0 when "
        "it opened (a check for packaged builds; also LORA_STUDIO_SMOKE_TEST=1)",
    )

    for name, help_text in (
        ("train", "train a LoRA headless"),
        ("estimate", "show steps, time and VRAM for a training config"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("dataset", help="dataset folder (images with .txt captions)")
        cmd.add_argument(
            "--base-model",
            default=DEFAULT_BASE_MODEL,
            help="diffusers folder, .safetensors checkpoint, HF id in your cache, or "
            f"{DEFAULT_BASE_MODEL} (default)",
        )
        cmd.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            help="start from this preset (default: by model family)",
        )
        cmd.add_argument("--config", type=Path, help="start from a saved TOML config")
        add_config_flags(cmd)
        if name == "train":
            cmd.add_argument(
                "--output",
                "-o",
                type=Path,
                default=None,
                help="output folder (default: ~/Documents/LoRA Studio/outputs)",
            )
            cmd.add_argument(
                "--save-config", type=Path, help="also write the effective config here"
            )
            cmd.add_argument(
                "--resume",
                type=Path,
                metavar="CHECKPOINT",
                help="continue from a checkpoint (a step-* folder, or NAME-checkpoints for "
                "its newest); without --config/--preset its saved settings are used",
            )
            cmd.add_argument(
                "--quiet", "-q", action="store_true", help="print only the output path"
            )
            batch = cmd.add_argument_group("a batch: several runs of one dataset, queued together")
            batch.add_argument(
                "--presets",
                metavar="P1,P2",
                help=f"one run per preset ({', '.join(sorted(PRESETS))}); with --base-models, "
                "one per preset and base model",
            )
            batch.add_argument(
                "--base-models", metavar="M1,M2", help="one run per base model (see --base-model)"
            )
            remote = cmd.add_argument_group("where to train")
            remote.add_argument(
                "--backend",
                choices=[b.value for b in BackendType],
                default="local",
                help="this machine (default), a ComfyUI server, or Replicate",
            )
            remote.add_argument(
                "--backend-url", help="ComfyUI server URL, or another Replicate API base"
            )
            remote.add_argument(
                "--gpus", type=int, default=1, help="local GPUs (more than 1: accelerate launch)"
            )
            remote.add_argument("--checkpoint", help="ComfyUI: the server's checkpoint to train on")
            remote.add_argument(
                "--trainer", help="Replicate trainer, owner/name (default the Flux LoRA trainer)"
            )
            remote.add_argument("--trainer-version", help="Replicate trainer version id")
            remote.add_argument("--destination", help="Replicate model to create: owner/name")
            remote.add_argument("--hardware", help="Replicate hardware for the cost estimate")
            remote.add_argument(
                "--poll-interval",
                type=float,
                metavar="S",
                help="remote: seconds between status checks (Replicate 2, ComfyUI 2)",
            )
            remote.add_argument(
                "--estimate-only",
                action="store_true",
                help="print the time (and, on Replicate, the cost) and exit without training",
            )
            cmd.add_argument(
                "--progress-json",
                action="store_true",
                help="print every progress update as a JSON line on stdout (for programs "
                "that run lora-studio, e.g. the app's multi-GPU jobs)",
            )
        else:
            cmd.add_argument("--json", action="store_true", help="machine-readable output")

    for module_name in TOP_LEVEL_COMMANDS:
        importlib.import_module(f"lora_studio.commands.{module_name}").register_top_level(sub)

    dataset = sub.add_parser("dataset", help="dataset tools")
    dsub = dataset.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    stats = dsub.add_parser("stats", help="print dataset statistics")
    stats.add_argument("dataset", help="dataset folder")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.add_argument(
        "--base-model",
        default=None,
        help="count caption tokens with this model's tokenizer (builtin:tiny-sd15, a "
        "diffusers folder, an HF id in the cache, a .safetensors file); its family's "
        "preset gives the bucket resolution",
    )
    stats.add_argument(
        "--resolution", type=int, default=None, help="bucket distribution at this resolution"
    )
    stats.add_argument("--no-buckets", action="store_true", help="square crops instead of buckets")
    for module_name in DATASET_COMMANDS:
        importlib.import_module(f"lora_studio.commands.{module_name}").register(dsub)

    models = sub.add_parser("models", help="base-model tools")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    tiny = msub.add_parser("make-tiny", help="write a tiny random-weight model (diffusers folder)")
    tiny.add_argument("dir", type=Path, help="folder to create")
    tiny.add_argument("--family", default="sd15", choices=[f.value for f in ModelFamily])
    info = msub.add_parser("info", help="what LoRA Studio makes of a base-model reference")
    info.add_argument("ref", help="folder, .safetensors file, HF id or builtin:NAME")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(gui_shorthand(sys.argv[1:] if argv is None else list(argv), parser))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in (None, "gui"):
            return _gui(args)
        if args.command == "train":
            return _train(args)
        if args.command == "estimate":
            return _estimate(args)
        command = getattr(args, "run", None)
        if command is not None:  # commands registered from lora_studio.commands
            return int(command(args))
        if args.command == "dataset":
            return _dataset_stats(args)
        if args.command == "models":
            return _models(args)
    except LoraStudioError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_CANCELLED
    parser.print_help()
    return EXIT_USAGE


def _error(message: str) -> None:
    print(f"lora-studio: error: {message}", file=sys.stderr)


# ---- gui ----------------------------------------------------------------------------

_GLOBAL_FLAGS = frozenset({"-v", "--verbose"})
_GUI_FLAGS = ("--dataset", "--base-model", "--smoke-test")


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


def gui_shorthand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``lora-studio PATH ...`` (what a launcher's ``Exec=lora-studio %F`` runs) and
    ``lora-studio --dataset DIR`` mean ``lora-studio gui ...``.

    A first word that names a command stays a command, so a folder called ``train`` opens
    with ``lora-studio gui train`` or ``lora-studio ./train``. Any other first word that
    exists on disk, or looks like a path (has a slash, starts with ``.`` or ``~``, is a
    ``file://`` URI), is a path; an unknown bare word is left to argparse's "invalid
    choice" error.
    """
    index = 0
    while index < len(argv) and argv[index] in _GLOBAL_FLAGS:
        index += 1
    if index == len(argv):
        return argv
    word = argv[index]
    if word.startswith("-"):
        is_gui = word.split("=", 1)[0] in _GUI_FLAGS
    elif word in _commands(parser):
        is_gui = False
    else:
        is_gui = (
            os.path.exists(word)
            or "/" in word
            or os.sep in word
            or word.startswith((".", "~"))
            or word.startswith("file:")
        )
    return [*argv[:index], "gui", *argv[index:]] if is_gui else argv


def dataset_folder(path: str) -> Path:
    """The dataset folder a command-line or launcher argument names.

    A ``file://`` URI becomes its path, ``~`` is expanded, an image (or any file) opens
    the folder it is in.

    Raises:
        DatasetError: nothing exists at ``path``.
    """
    from urllib.parse import unquote, urlparse

    text = unquote(urlparse(path).path) if path.startswith("file:") else path
    folder = Path(os.path.abspath(os.path.expanduser(text)))
    if not folder.exists():
        raise DatasetError(f"cannot open {path}: no such folder")
    return folder if folder.is_dir() else folder.parent


def _gui(args: argparse.Namespace) -> int:
    paths = list(getattr(args, "dataset", None) or [])
    option = getattr(args, "dataset_option", None)
    if option:
        paths.insert(0, option)
    folders = [dataset_folder(path) for path in paths]
    dataset = folders[0] if folders else None
    ignored = sorted({str(folder) for folder in folders[1:]} - {str(dataset)})
    if ignored:
        print(
            f"lora-studio: opening {dataset}, one dataset at a time; not opened: "
            + ", ".join(ignored),
            file=sys.stderr,
        )
    smoke_test = bool(getattr(args, "smoke_test", False)) or os.environ.get(
        "LORA_STUDIO_SMOKE_TEST", ""
    ) not in ("", "0")
    from lora_studio.gui.app import run_gui  # noqa: PLC0415 - Qt only when needed

    return run_gui(
        str(dataset) if dataset else None,
        getattr(args, "base_model", None),
        smoke_test=smoke_test,
    )


# ---- estimate / dataset / models --------------------------------------------------------


def _family_of(ref: str) -> tuple[ModelFamily | None, bool]:
    resolved = resolve_base_model(ref)
    return resolved.family, resolved.kind is ModelKind.BUILTIN


def _estimate(args: argparse.Namespace) -> int:
    from lora_studio.core.estimates import estimate

    dataset = Dataset.from_directory(args.dataset)
    family, tiny = _family_of(args.base_model)
    config = config_from_args(args, family)
    est = estimate(dataset.samples_per_epoch(config.repeats), config, family, tiny=tiny)
    if args.json:
        print(
            json.dumps(
                {
                    "steps": est.plan.total_steps,
                    "epochs": est.plan.epochs,
                    "steps_per_epoch": est.plan.steps_per_epoch,
                    "samples_per_epoch": est.plan.samples_per_epoch,
                    "seconds": round(est.seconds, 1),
                    "vram_gb": round(est.vram_gb, 2),
                    "hardware": est.hardware,
                    "config": config.to_dict(),
                },
                indent=2,
            )
        )
        return EXIT_OK
    plan = est.plan
    print(f"{len(dataset)} images, {plan.samples_per_epoch} samples per epoch")
    print(f"steps:  {plan.total_steps} ({plan.epochs} epochs x {plan.steps_per_epoch} steps)")
    print(f"time:   about {format_duration(est.seconds)} on {est.hardware}")
    print(f"VRAM:   about {est.vram_gb:.1f} GB")
    return EXIT_OK


def _dataset_stats(args: argparse.Namespace) -> int:
    from lora_studio.core.stats import dataset_statistics, stats_report

    dataset = Dataset.from_directory(args.dataset)
    stats = dataset.stats()
    counter = None
    family = None
    if args.base_model:
        from lora_studio.training.tokens import caption_token_counter  # transformers, lazily

        family = resolve_base_model(args.base_model).family
        counter = caption_token_counter(args.base_model)
    config = LoraConfig.from_preset(_FAMILY_PRESET.get(family, "sd15") if family else "sd15")
    overrides: dict[str, Any] = {"enable_bucket": not args.no_buckets}
    if args.resolution:
        overrides["resolution"] = args.resolution
    config = config.replace(**overrides)
    details = dataset_statistics(
        dataset,
        config=config,
        count_tokens=counter,
        token_limit=counter.limit if counter else None,
        tokenizer_name=counter.name if counter else None,
    )
    if args.json:
        data = stats.to_dict()
        data["root"] = str(dataset.root)
        data["details"] = details.to_dict()
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"Dataset {dataset.root}")
    print(f"  images:          {stats.total_images}")
    print(f"  captioned:       {stats.images_with_captions} of {stats.total_images}")
    print(
        f"  caption length:  {stats.avg_caption_length:.0f} characters, "
        f"{stats.avg_caption_words:.1f} words on average"
    )
    print(f"  samples/epoch:   {stats.total_repeats}")
    print("  formats:         " + ", ".join(f"{k} {v}" for k, v in sorted(stats.formats.items())))
    print(f"  size on disk:    {stats.total_bytes / 1e6:.1f} MB")
    if len(stats.folders) > 1:
        print("  folders:         " + ", ".join(f"{k} ({v})" for k, v in stats.folders.items()))
    if stats.top_tags:
        print("  top tags:        " + ", ".join(f"{t} ({c})" for t, c in stats.top_tags[:8]))
    for line in stats_report(details):
        print(line)
    for problem in stats.problems:
        print(f"  problem:         {problem}")
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    if args.models_command == "make-tiny":
        from lora_studio.training.tiny import make_tiny

        if args.dir.exists() and any(args.dir.iterdir()):
            raise ConfigError(f"{args.dir} exists and is not empty; choose a new folder.")
        path = make_tiny(args.dir, args.family)
        print(path)
        return EXIT_OK
    ref = resolve_base_model(args.ref)
    print(f"reference: {ref.ref}")
    print(f"kind:      {ref.kind.value}")
    print(f"path:      {ref.path}")
    print(f"family:    {ref.family.label if ref.family else 'unknown'}")
    if ref.version:
        print(f"version:   {ref.version}")
    return EXIT_OK


# ---- train ---------------------------------------------------------------------------


def _backend_spec(args: argparse.Namespace, config: LoraConfig, output: Path) -> JobSpec:
    backend = BackendType(args.backend)
    options: dict[str, Any] = {}
    if args.backend_url:
        options["url"] = args.backend_url
    if backend is BackendType.LOCAL and args.gpus > 1:
        options["num_processes"] = args.gpus
    names = ("checkpoint", "trainer", "trainer_version", "destination", "hardware", "poll_interval")
    for name in names:
        if getattr(args, name, None):
            options[name] = getattr(args, name)
    return JobSpec(
        dataset_dir=str(args.dataset),
        config=config.to_dict(),
        base_model=args.base_model,
        output_dir=str(output),
        backend=backend,
        backend_options=options,
    )


def _open_history() -> JobStore | None:
    """The job history, or ``None`` (with a warning) when it cannot be opened: a run
    never fails for want of its history."""
    try:
        return JobStore(job_db_path())
    except JobStoreError as exc:
        print(f"lora-studio: warning: {exc} Training without a history entry.", file=sys.stderr)
        return None


def _remote_family(args: argparse.Namespace) -> ModelFamily | None:
    """The family a remote trainer trains (the base model is on the server)."""
    if args.backend == BackendType.REPLICATE.value:
        trainer = (args.trainer or "ostris/flux-dev-lora-trainer").lower()
        return ModelFamily.SDXL if "sdxl" in trainer else ModelFamily.FLUX
    return None


def _train(args: argparse.Namespace) -> int:
    from lora_studio.backends.factory import backend_for_spec
    from lora_studio.creator import LoraCreator

    remote = args.backend != BackendType.LOCAL.value
    _check_backend_args(args)
    if args.presets or args.base_models:
        return _train_batch(args)
    if remote:
        family, _tiny = _remote_family(args), False
    else:
        family, _tiny = _family_of(args.base_model)
    config = config_from_args(args, family)
    output = args.output or default_output_dir()
    # Under `accelerate launch` every process runs this command; only the first speaks
    # (and records the job in the history).
    main_process = os.environ.get("RANK", "0") == "0"
    store = _open_history() if main_process else None
    creator = LoraCreator(args.base_model, output, job_store=store).with_config(config)
    creator.load_dataset(args.dataset)
    spec = _backend_spec(args, config, output)
    if remote or args.gpus > 1:
        creator.with_backend(backend_for_spec(spec))
    if args.save_config:
        config.save(args.save_config)
    if args.estimate_only:
        return asyncio.run(_estimate_only(creator))
    return asyncio.run(
        _train_async(
            creator,
            quiet=args.quiet or not main_process,
            resume=args.resume,
            json_lines=args.progress_json and main_process,
            print_result=main_process,
        )
    )


def _check_backend_args(args: argparse.Namespace) -> None:
    if args.backend == BackendType.COMFYUI.value:
        if not args.backend_url:
            raise ConfigError(
                "Training on ComfyUI needs the server's URL: --backend-url http://HOST:8188."
            )
        if not args.checkpoint and args.base_model == DEFAULT_BASE_MODEL:
            raise ConfigError(
                "ComfyUI trains on one of the server's checkpoints: name it with --checkpoint "
                "(as in its models/checkpoints folder, e.g. v1-5-pruned-emaonly.safetensors)."
            )


def _train_batch(args: argparse.Namespace) -> int:
    """One run per preset × base model, queued as a batch (commands/train_batch.py)."""
    from lora_studio.backends.factory import backend_for_spec
    from lora_studio.commands.train_batch import run_batch, split_list, variations

    presets, models = split_list(args.presets), split_list(args.base_models)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ConfigError(
            f"Unknown preset {', '.join(unknown)}; choose from {', '.join(sorted(PRESETS))}."
        )
    if presets and (args.preset or args.config):
        raise ConfigError("--presets replaces --preset and --config; give one of them.")
    for flag, value in (("--resume", args.resume), ("--estimate-only", args.estimate_only)):
        if value:
            raise ConfigError(f"{flag} is for one run, not a batch.")
    Dataset.from_directory(args.dataset)  # a bad folder stops us before anything is queued
    output = args.output or default_output_dir()
    specs = []
    for variation in variations(presets, models, args.base_model):
        run_args = argparse.Namespace(**vars(args))
        run_args.preset, run_args.base_model = variation.preset, variation.base_model
        if args.backend == BackendType.LOCAL.value:
            family, _tiny = _family_of(variation.base_model)
        else:
            family = _remote_family(run_args)
        config = config_from_args(run_args, family)
        config = config.replace(name=f"{config.name}-{variation.label}")
        specs.append((variation.label, _backend_spec(run_args, config, output)))
    return run_batch(specs, backend_for_spec)


def _print_compatibility(path: Path) -> None:
    """One line: which tools load every key of the new file (names only, milliseconds;
    `lora-studio lora check FILE` also loads it into diffusers)."""
    from lora_studio.ecosystem.check import OK, SKIPPED, UNSUPPORTED, check_lora

    try:
        report = check_lora(path, load=False)
    except LoraStudioError as exc:
        print(f"Compatibility check skipped: {exc}", file=sys.stderr)
        return
    marks = {OK: "ok", UNSUPPORTED: "not supported"}
    parts = [
        f"{t.target} {marks.get(t.status, f'{t.loaded}/{t.total} keys')}"
        for t in report.targets
        if t.status != SKIPPED
    ]
    print("Loads in: " + ", ".join(parts), file=sys.stderr)
    for target in report.targets:
        if target.status not in (OK, UNSUPPORTED, SKIPPED):
            print(f"  {target.target}: {target.message}", file=sys.stderr)


async def _estimate_only(creator: Any) -> int:
    request = creator.build_request()
    backend = creator.backend
    describe = getattr(backend, "cost_estimate", None)
    if callable(describe):
        estimate = describe(request)
        print(estimate.describe() if estimate is not None else "cost: unknown for this hardware")
        return EXIT_OK
    est = creator.estimate()
    cost = await backend.estimate_cost(request) if backend is not None else 0.0
    print(f"steps:  {est.plan.total_steps}")
    print(f"time:   about {format_duration(est.seconds)} on {est.hardware}")
    print(f"cost:   ${cost or 0.0:.2f}")
    return EXIT_OK


async def _train_async(
    creator: Any,
    *,
    quiet: bool,
    resume: Path | None = None,
    json_lines: bool = False,
    print_result: bool = True,
) -> int:
    report = await creator.prepare_dataset()
    if not quiet:
        print(f"Dataset: {report.summary()}", file=sys.stderr)
        for name, why in report.unreadable:
            print(f"  skipping {name}: {why}", file=sys.stderr)
    job = await creator.train(resume_from=resume)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print(
                "\nStopping after the current step (Ctrl+C again to quit now)...", file=sys.stderr
            )
            loop.create_task(creator.cancel(job.id))
        else:
            os._exit(EXIT_CANCELLED)  # the trainer thread cannot be interrupted mid-step

    # Windows has no add_signal_handler; there Ctrl+C raises KeyboardInterrupt instead.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)

    display = _ProgressDisplay(quiet=quiet or json_lines)
    final: Progress | None = None
    try:
        async for progress in creator.watch(job.id):
            display.update(progress)
            if json_lines:
                print(json.dumps({"event": "progress", **progress.to_dict()}), flush=True)
            final = progress
    finally:
        display.close()
    assert final is not None
    if final.status is JobStatus.SUCCEEDED:
        output = final.output_path
        if not output:  # a remote run: fetch the LoRA
            output = str(await creator.download_weights(job.id))
        if print_result and not json_lines and output:
            if not quiet:
                _print_compatibility(Path(output))
            print(output)
        return EXIT_OK
    if final.status is JobStatus.CANCELLED:
        if final.output_path:
            print(f"Cancelled; the LoRA trained so far: {final.output_path}", file=sys.stderr)
            checkpoints = Path(final.output_path).parent / f"{creator.config.name}-checkpoints"
            if checkpoints.is_dir():
                print(f"Continue with: --resume {checkpoints}", file=sys.stderr)
        else:
            _error("cancelled before training began; nothing was saved")
        return EXIT_CANCELLED
    _error(final.error or "training failed")
    return EXIT_ERROR


#: seconds between step lines when the output is not a terminal
PLAIN_STEP_EVERY_S = 10.0


class _ProgressDisplay:
    """A rich progress bar on a terminal; plain log lines otherwise (CI, pipes)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._seen_lines: set[str] = set()
        self._last_step, self._last_step_at = 0, 0.0
        self._bar: Any = None
        self._task: Any = None
        if self.tty and not quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task("Preparing", total=None, loss="-", rate="")

    def update(self, progress: Progress) -> None:
        if self.quiet:
            return
        new_lines = [line for line in progress.log_tail if line not in self._seen_lines]
        self._seen_lines.update(new_lines)
        if self._bar is not None:
            for line in new_lines:
                self._bar.console.print(line, style="dim", highlight=False)
            desc = progress.message or progress.status.label
            self._bar.update(
                self._task,
                description=desc,
                total=progress.total_steps or None,
                completed=progress.step,
                loss=f"{progress.loss:.4f}" if progress.loss is not None else "-",
                rate=f"{progress.samples_per_s:.1f} img/s" if progress.samples_per_s else "",
            )
        else:
            for line in new_lines:
                print(line, file=sys.stderr, flush=True)
            self._plain_step(progress, new_lines)

    def _plain_step(self, progress: Progress, new_lines: list[str]) -> None:
        """Without a terminal, a step line every few seconds (and at the last step) unless
        the run's own log lines already say where it is."""
        step, total = progress.step, progress.total_steps
        if not total or step == self._last_step:
            return
        marker = f"{step}/{total}"
        now = time.monotonic()
        due = step >= total or now - self._last_step_at >= PLAIN_STEP_EVERY_S
        if due and not any(marker in line for line in new_lines):
            loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
            print(f"step {marker}{loss}", file=sys.stderr, flush=True)
            self._last_step_at = now
        self._last_step = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


if __name__ == "__main__":
    sys.exit(main())
