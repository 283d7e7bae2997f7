"""``lora-studio config import | export-kohya``: configs that travel to and from kohya.

* ``import FILE [-o our.toml]`` - a kohya_ss GUI ``.json``, an sd-scripts training
  ``.toml`` (with its ``dataset_config``) or a lone dataset_config: our config, the dataset
  folders and repeats, and every option that has no equivalent.
* ``export-kohya OUR.toml OUTDIR`` - sd-scripts training and dataset_config TOMLs to
  reproduce a run there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register_top_level(subparsers: Any) -> None:
    config = subparsers.add_parser("config", help="import kohya configs, export to kohya")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    imp = csub.add_parser(
        "import", help="a kohya_ss GUI .json or sd-scripts .toml as a LoRA Studio config"
    )
    imp.add_argument("file", help="kohya_ss JSON, sd-scripts training TOML or dataset_config")
    imp.add_argument("-o", "--output", help="write the LoRA Studio config (TOML) here")
    imp.add_argument("--dataset-config", help="the dataset_config TOML (if the file names none)")
    imp.add_argument("--family", choices=("sd15", "sdxl", "sd3", "flux"))
    imp.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    imp.add_argument("--json", action="store_true", help="print the result as JSON")
    exp = csub.add_parser("export-kohya", help="sd-scripts TOMLs from a LoRA Studio config")
    exp.add_argument("config", help="a LoRA Studio config (TOML)")
    exp.add_argument("outdir", help="folder for <name>_training.toml and <name>_dataset.toml")
    exp.add_argument("--base-model", default="", help="pretrained_model_name_or_path to write")
    exp.add_argument("--dataset", help="the dataset folder (its N_name folders become subsets)")
    exp.add_argument("--overwrite", action="store_true")
    config.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.config_command == "import":
        return _import(args)
    return _export(args)


def _import(args: argparse.Namespace) -> int:
    from lora_studio.core.errors import ConfigError
    from lora_studio.ecosystem.kohya_config import import_kohya_config

    result = import_kohya_config(args.file, dataset_config=args.dataset_config, family=args.family)
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out} exists; pass --overwrite to replace it.")
        result.config.save(out)
    if args.json:
        print(
            json.dumps(
                {
                    "config": result.config.to_dict(),
                    "base_model": result.base_model,
                    "dataset_dirs": [d.__dict__ for d in result.dataset_dirs],
                    "unsupported": result.unsupported,
                    "notes": result.notes,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    cfg = result.config
    print(f"{cfg.name}: {cfg.family.label}, rank {cfg.rank}, alpha {cfg.alpha:g}, "
          f"{'max ' + str(cfg.max_steps) + ' steps' if cfg.max_steps else str(cfg.epochs) + ' epochs'}, "
          f"learning rate {cfg.learning_rate:g}")  # fmt: skip
    if result.base_model:
        print(f"base model: {result.base_model}")
    for d in result.dataset_dirs:
        extra = f", class tokens {d.class_tokens!r}" if d.class_tokens else ""
        print(
            f"dataset: {d.path} ({d.repeats} repeats{extra}{', regularization' if d.is_reg else ''})"
        )
    if result.unsupported:
        print(f"No equivalent in LoRA Studio ({len(result.unsupported)}):")
        for line in result.unsupported:
            print(f"  - {line}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        dataset = result.dataset_dirs[0].path if result.dataset_dirs else "DATASET_DIR"
        base = f" --base-model {result.base_model}" if result.base_model else ""
        print(
            f"wrote {args.output}; train with: lora-studio train {dataset} --config {args.output}{base}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from lora_studio.core.config import LoraConfig
    from lora_studio.ecosystem.kohya_config import export_kohya_config

    config = LoraConfig.load(args.config)
    result = export_kohya_config(
        config,
        args.outdir,
        base_model=args.base_model,
        dataset_dir=args.dataset,
        overwrite=args.overwrite,
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.training_toml)
    print(result.dataset_toml)
    print(f"run in sd-scripts: {result.command}", file=sys.stderr)
    return 0
