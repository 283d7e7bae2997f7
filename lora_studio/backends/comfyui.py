"""Training on a ComfyUI server (local or remote) with ComfyUI's native LoRA-training nodes.

:class:`ComfyUIBackend` talks ComfyUI's own HTTP + WebSocket API (every route also works
under ``/api``; whichever answers is remembered). A run goes:

1. **check** - ``GET /system_stats`` (version, device, VRAM) and ``GET /object_info/<node>``
   for the training, dataset and checkpoint nodes: ComfyUI has changed them between
   versions, so the graph is built from what the server reports, and a server without them
   is told which ones it lacks.
2. **upload** - every image (resized and centre-cropped to the training resolution, or to
   its aspect-ratio bucket where the server's nodes take mixed sizes) and its caption
   ``.txt`` go to a fresh input subfolder ``lora-studio/<job id>`` with
   ``POST /upload/image`` (``overwrite=true``); kohya ``N_name`` folders carry the repeats.
   A fresh folder each time, because ComfyUI caches the folder loader by folder name.
   Captions are checked first: an empty one makes ComfyUI's loader fail with a count
   mismatch, so an uncaptioned image gets the trigger word, and without one the run is
   refused before anything is sent.
3. **the graph**, in ComfyUI's API format, for the node generation the server has::

       v0.3.64 generation                          later generation
       CheckpointLoaderSimple (ckpt_name)          CheckpointLoaderSimple (ckpt_name)
       LoadImageTextSetFromFolderNode              LoadImageTextDataSetFromFolder (folder)
         (folder, clip, resize_method, w, h)       MakeTrainingDataset
       VAEEncode (pixels, vae)                       (images, vae, clip, texts)
       TrainLoraNode -> model, lora, loss, steps   TrainLoraNode -> lora, loss_map, steps
       SaveLoRANode (lora, prefix, steps)          SaveLoRA (lora, prefix, steps)
       LossGraphNode (loss)                        LossGraphNode (loss)

   ``TrainLoraNode`` gets the run's steps, rank, learning rate, batch size, gradient
   accumulation, optimizer, seed and dtypes (``bf16``/``fp32`` only: fp16 becomes bf16;
   the LoRA itself is kept in fp32); inputs a later version adds get the server's
   defaults. Settings ComfyUI has no counterpart for are named in the job's log. The loss
   plot is left out of a one-step run (ComfyUI's divides by the loss range), and a plot
   that fails after the LoRA was saved does not fail the job. ``POST /prompt`` with a per-job ``client_id``; a 400's ``node_errors`` become one
   sentence per node (:class:`ComfyUIWorkflowError`).
4. **progress**, best source first: ``progress`` events of the WebSocket
   ``/ws?clientId=`` (later versions; the 0-of-1 ``progress_state`` every node gets on
   newer servers is no step count); the tqdm bar ``Training LoRA: 45%| 45/100`` that
   ComfyUI prints to its console, read back from ``GET /internal/logs/raw`` (v0.3.64 sends
   no ``progress`` events); failing both, the elapsed time with an estimate, marked as
   such - never a frozen 0 %. ``executing`` events say which node runs
   (``node: null`` = done); ``execution_error`` and ``execution_interrupted`` end the run.
   A dropped WebSocket is reconnected with back-off while ``/history/<prompt_id>`` and
   ``/queue`` are polled, which alone also carries a run to its end.
5. **cancel** - a prompt still waiting is deleted from the queue; a running one gets
   ``POST /interrupt {prompt_id}`` (only while it is ours that runs: older servers
   interrupt whatever runs). ComfyUI v0.3.64 cannot stop a running ``TrainLoraNode``: it
   finishes its steps and then reports ``execution_interrupted`` without saving a LoRA.
   The job says so while it waits, and ends as cancelled.
6. **download** - ComfyUI reports the saved file's name nowhere, so each job saves under its
   own prefix ``loras/<job id>`` (the counter is misparsed when a prefix is reused) and the
   file is found in ``GET /models/loras`` or by its name pattern
   ``<prefix>_<steps>_steps_<counter:05>_.safetensors``, fetched with
   ``GET /view?type=output&subfolder=loras&filename=...``, converted from ComfyUI's
   internal keys to kohya's (:mod:`lora_studio.backends.comfyui_lora`: convolutions
   reshaped, what cannot be carried over said in the log), given the ``ss_*`` metadata
   and written atomically into the output folder, never over an existing file.

After a restart, :meth:`ComfyUIBackend.reattach` follows ``job.remote_id`` (the prompt id)
again: the graph, the client id and the file prefix come back from the server's queue or
history.

Exceptions (every message is one line, written for the user)::

    BackendError (lora_studio.core.errors)
     └── ComfyUIError                 anything this backend refuses or fails
          ├── ComfyUIConnectionError  the server cannot be reached (refused, timeout, TLS...)
          ├── ComfyUIAuthError        401/403: a proxy in front wants a (different) token
          ├── ComfyUIResponseError    an error status (500...), or a reply that is not
          │                           ComfyUI's JSON (a proxy page, a truncated body)
          ├── ComfyUINodesMissing     the server lacks the training nodes (``.missing``)
          ├── ComfyUICheckpointError  the base model is not one of the server's checkpoints
          └── ComfyUIWorkflowError    ``/prompt`` refused the graph (``.node_errors``)
    DatasetError   no images, an image without caption or trigger word, an unreadable image
    OutputError    the output folder cannot be written
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import math
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lora_studio.backends.base import BackendConfig, BackendStatus
from lora_studio.core.config import LoraConfig, MixedPrecision, Optimizer
from lora_studio.core.dataset import Dataset, ImageItem, training_caption
from lora_studio.core.errors import BackendError, DatasetError, LoraStudioError, OutputError
from lora_studio.core.estimates import format_duration, plan_steps
from lora_studio.core.jobs import LOG_TAIL, MAX_HISTORY, BackendType, Job, JobStatus, Progress
from lora_studio.core.request import TrainingRequest
from lora_studio.core.secrets import COMFYUI, get_token, redact, redacting_logger

log = logging.getLogger(__name__)

# ---- node names ---------------------------------------------------------------------------

CHECKPOINT_LOADER = "CheckpointLoaderSimple"
TRAIN_NODE = "TrainLoraNode"
SAVE_NODES = ("SaveLoRA", "SaveLoRANode")  # later name first
LOSS_GRAPH_NODE = "LossGraphNode"
OLD_LOADER = "LoadImageTextSetFromFolderNode"
VAE_ENCODE = "VAEEncode"
NEW_LOADER = "LoadImageTextDataSetFromFolder"
MAKE_DATASET = "MakeTrainingDataset"
NODE_CLASSES = (
    CHECKPOINT_LOADER,
    TRAIN_NODE,
    *SAVE_NODES,
    LOSS_GRAPH_NODE,
    OLD_LOADER,
    VAE_ENCODE,
    NEW_LOADER,
    MAKE_DATASET,
)
#: Where uploads go, under ComfyUI's input folder: ``lora-studio/<job id>``.
UPLOAD_ROOT = "lora-studio"
#: Image types ComfyUI's folder loaders read.
LOADER_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                      ".webp": "image/webp"}  # fmt: skip
WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"})
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")

_TQDM = re.compile(
    r"Training LoRA:\s*(?P<pct>\d+)%\|[^|\r\n]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"(?:\s*\[(?P<times>[^\]\r\n]*)\])?"
)
_LOSS = re.compile(r"loss=(?P<loss>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))")
_REMAINING = re.compile(r"<(?P<left>(?:\d+:)?\d+:\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---- errors ---------------------------------------------------------------------------------


class ComfyUIError(BackendError):
    """The ComfyUI backend refused or failed a request (see the module docstring)."""


class ComfyUIConnectionError(ComfyUIError):
    """The server cannot be reached."""


class ComfyUIAuthError(ComfyUIError):
    """The server (or a proxy in front of it) refused our credentials."""


class ComfyUIResponseError(ComfyUIError):
    """An error status, or a reply that is not what ComfyUI sends."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ComfyUINodesMissing(ComfyUIError):
    """The server lacks nodes LoRA Studio trains with; ``missing`` names them."""

    def __init__(self, message: str, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.missing = missing


class ComfyUICheckpointError(ComfyUIError):
    """The base model is not among the server's checkpoints; ``choices`` lists those."""

    def __init__(self, message: str, choices: tuple[str, ...]) -> None:
        super().__init__(message)
        self.choices = choices


class ComfyUIWorkflowError(ComfyUIError):
    """ComfyUI refused the training graph; ``node_errors`` has the reasons per node id."""

    def __init__(self, message: str, node_errors: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.node_errors = node_errors


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


# ---- node schemas (GET /object_info) --------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One input of a node as ``/object_info`` describes it.

    ``kind`` is ``INT``, ``FLOAT``, ``BOOLEAN``, ``STRING``, ``COMBO`` (with ``options``) or
    the type of a link (``MODEL``, ``LATENT``...).
    """

    name: str
    kind: str
    required: bool
    options: tuple[Any, ...] = ()
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    force_input: bool = False

    @property
    def is_widget(self) -> bool:
        return self.kind in WIDGET_TYPES and not self.force_input


@dataclass(frozen=True)
class NodeSchema:
    """A node class as ``/object_info`` describes it."""

    name: str
    inputs: dict[str, InputSpec]
    outputs: tuple[str, ...]
    output_node: bool = False

    def output_index(self, kind: str) -> int | None:
        """The index of the first output of type ``kind``."""
        try:
            return self.outputs.index(kind)
        except ValueError:
            return None


def parse_node_schema(name: str, info: Mapping[str, Any]) -> NodeSchema:
    """A :class:`NodeSchema` from one ``/object_info`` entry; both ways a combo is written
    (``[[options], {...}]`` and ``["COMBO", {"options": [...]}]``) are understood."""
    inputs: dict[str, InputSpec] = {}
    sections = info.get("input") or {}
    for section, required in (("required", True), ("optional", False)):
        for input_name, spec in (sections.get(section) or {}).items():
            if not isinstance(spec, (list, tuple)) or not spec:
                continue
            first = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(first, (list, tuple)):
                kind, options = "COMBO", tuple(first)
            elif first == "COMBO":
                kind, options = "COMBO", tuple(opts.get("options") or ())
            else:
                kind, options = str(first), ()
            inputs[input_name] = InputSpec(
                name=input_name,
                kind=kind,
                required=required,
                options=options,
                default=opts.get("default"),
                minimum=opts.get("min"),
                maximum=opts.get("max"),
                force_input=bool(opts.get("forceInput") or opts.get("force_input")),
            )
    outputs = tuple(
        str(o) if not isinstance(o, list) else "COMBO" for o in info.get("output") or ()
    )
    return NodeSchema(name, inputs, outputs, bool(info.get("output_node")))


@dataclass(frozen=True)
class TrainingNodes:
    """The nodes a server trains with, whichever generation it has."""

    loader: str
    encoder: str
    saver: str
    loss_graph: str | None
    trainer: str = TRAIN_NODE
    checkpoint_loader: str = CHECKPOINT_LOADER

    @property
    def dataset_nodes(self) -> bool:
        """The later generation (``LoadImageTextDataSetFromFolder`` + ``MakeTrainingDataset``):
        images travel as a list, so they may differ in size."""
        return self.loader == NEW_LOADER

    def describe(self) -> str:
        return f"{self.loader} -> {self.encoder} -> {self.trainer} -> {self.saver}"


def find_training_nodes(
    schemas: Mapping[str, NodeSchema], *, server: str = "The ComfyUI server"
) -> TrainingNodes:
    """The nodes to build the graph from.

    Raises:
        ComfyUINodesMissing: naming every node the server lacks.
    """
    missing: list[str] = []
    if CHECKPOINT_LOADER not in schemas:
        missing.append(CHECKPOINT_LOADER)
    if TRAIN_NODE not in schemas:
        missing.append(TRAIN_NODE)
    saver = next((n for n in SAVE_NODES if n in schemas), None)
    if saver is None:
        missing.append(" or ".join(SAVE_NODES))
    if NEW_LOADER in schemas and MAKE_DATASET in schemas:
        loader, encoder = NEW_LOADER, MAKE_DATASET
    elif OLD_LOADER in schemas and VAE_ENCODE in schemas:
        loader, encoder = OLD_LOADER, VAE_ENCODE
    else:
        loader = encoder = ""
        if OLD_LOADER in schemas:
            missing.append(VAE_ENCODE)
        else:
            missing.append(f"{NEW_LOADER} + {MAKE_DATASET} (or {OLD_LOADER})")
    if missing:
        raise ComfyUINodesMissing(
            f"{server} lacks the nodes LoRA Studio trains with: {', '.join(missing)}. Update "
            f"ComfyUI (its native training nodes are in v0.3.64 and later).",
            tuple(missing),
        )
    assert saver is not None
    loss = LOSS_GRAPH_NODE if LOSS_GRAPH_NODE in schemas else None
    return TrainingNodes(loader=loader, encoder=encoder, saver=saver, loss_graph=loss)


def checkpoint_options(schemas: Mapping[str, NodeSchema]) -> tuple[str, ...]:
    """The checkpoints the server offers (``ckpt_name`` of its checkpoint loader)."""
    schema = schemas.get(CHECKPOINT_LOADER)
    spec = schema.inputs.get("ckpt_name") if schema else None
    return tuple(str(o) for o in spec.options) if spec else ()


def pick_checkpoint(wanted: str, options: Iterable[str], *, server: str = "ComfyUI") -> str:
    """The one checkpoint of ``options`` that ``wanted`` names: exactly, ignoring case, by
    file name, or by file name without extension.

    Raises:
        ComfyUICheckpointError: none or several match; the message lists the choices.
    """
    choices = tuple(options)
    text = wanted.strip()
    if not choices:
        raise ComfyUICheckpointError(
            f"{server} has no checkpoints (models/checkpoints is empty); add the base model "
            f"there first.",
            choices,
        )

    def base(name: str) -> str:
        return name.replace("\\", "/").rsplit("/", 1)[-1]

    def stem(name: str) -> str:
        b = base(name)
        return next((b[: -len(e)] for e in _MODEL_SUFFIXES if b.lower().endswith(e)), b)

    for key in (
        lambda n: n,
        lambda n: n.lower(),
        lambda n: base(n).lower(),
        lambda n: stem(n).lower(),
    ):
        target = key(text) if key(text) else None
        if not target:
            continue
        found = [c for c in choices if key(c) == target]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            break
    shown = ", ".join(choices[:12]) + (
        f" and {len(choices) - 12} more" if len(choices) > 12 else ""
    )
    raise ComfyUICheckpointError(
        f"{server} has no checkpoint named {text!r}; choose one of: {shown}.", choices
    )


# ---- the graph ------------------------------------------------------------------------------

_OPTIMIZERS = {
    Optimizer.ADAMW: "AdamW",
    Optimizer.ADAMW_8BIT: "AdamW",
    Optimizer.PRODIGY: "Prodigy",
    Optimizer.ADAFACTOR: "Adafactor",
}


def train_node_inputs(
    config: LoraConfig, steps: int, schema: NodeSchema, *, training_dtype: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``TrainLoraNode``'s widget values for ``config``, and notes (one line each) on what
    ComfyUI does differently or not at all.

    Inputs this version of LoRA Studio does not know get the server's defaults.

    Raises:
        ComfyUIError: the optimizer has no counterpart on this server.
    """
    notes: list[str] = []
    values: dict[str, Any] = {
        spec.name: spec.default
        for spec in schema.inputs.values()
        if spec.is_widget and spec.default is not None
    }
    optimizer = _OPTIMIZERS[config.optimizer]
    choices = schema.inputs["optimizer"].options if "optimizer" in schema.inputs else ()
    if choices and optimizer not in choices:
        raise ComfyUIError(
            f"ComfyUI's {TRAIN_NODE} has no {config.optimizer.value} optimizer (it offers "
            f"{', '.join(map(str, choices))}); choose AdamW for ComfyUI runs."
        )
    if config.optimizer is Optimizer.ADAMW_8BIT:
        notes.append("ComfyUI has no 8-bit AdamW: the plain AdamW is used (more memory).")
    if training_dtype is None:
        training_dtype = "fp32" if config.mixed_precision is MixedPrecision.NO else "bf16"
        if config.mixed_precision is MixedPrecision.FP16:
            notes.append("ComfyUI trains in bf16 or fp32 only: bf16 is used instead of fp16.")
    values.update(
        {
            "batch_size": config.batch_size,
            "grad_accumulation_steps": config.gradient_accumulation_steps,
            "steps": steps,
            "learning_rate": config.learning_rate,
            "rank": config.rank,
            "optimizer": optimizer,
            "loss_function": "MSE",
            "seed": config.seed,
            "training_dtype": training_dtype,
            # The LoRA's own weights stay fp32, as in local runs (bf16 weights lose the
            # small updates of a low learning rate).
            "lora_dtype": "fp32",
            "gradient_checkpointing": config.gradient_checkpointing,
            "existing_lora": "[None]",
        }
    )
    algorithms = schema.inputs["algorithm"].options if "algorithm" in schema.inputs else ()
    if algorithms:
        values["algorithm"] = next(
            (a for a in algorithms if str(a).lower() == "lora"), algorithms[0]
        )
    values = {k: v for k, v in values.items() if k in schema.inputs}
    notes.append(
        f"ComfyUI trains a LoRA on every layer of the diffusion model with alpha 1 (scale "
        f"1/rank); the alpha {config.alpha:g} setting is not used."
    )
    if config.lr_scheduler.value != "constant" or config.lr_warmup_steps:
        notes.append(
            f"ComfyUI trains with a constant learning rate: the {config.lr_scheduler.value} "
            f"schedule and warmup are not used."
        )
    unused = [
        label
        for label, used in (
            ("text-encoder training", config.train_text_encoder),
            ("target modules", bool(config.target_modules.strip())),
            ("conv rank", config.conv_rank > 0),
            ("DoRA", config.use_dora),
            ("caption dropout", config.caption_dropout > 0),
            ("tag shuffling", config.shuffle_tags),
            ("noise offset", config.noise_offset > 0),
            ("min-SNR weighting", config.min_snr_gamma > 0),
            ("sample images", bool(config.sample_prompt_list)),
            ("checkpoints", bool(config.save_every_n_steps or config.save_every_n_epochs)),
        )
        if used
    ]
    if unused:
        notes.append(f"Not available on ComfyUI, so not used: {', '.join(unused)}.")
    return values, notes


@dataclass(frozen=True)
class TrainingGraph:
    """An API-format graph and the ids of the nodes the backend watches."""

    graph: dict[str, dict[str, Any]]
    train_node: str
    save_node: str
    loss_node: str | None


def build_training_graph(
    nodes: TrainingNodes,
    schemas: Mapping[str, NodeSchema],
    *,
    checkpoint: str,
    folder: str,
    prefix: str,
    train_inputs: Mapping[str, Any],
    loss_prefix: str = "loss_graph",
    resize: tuple[str, int] | None = None,
) -> TrainingGraph:
    """The training graph in ComfyUI's API format (see the module docstring).

    Args:
        resize: ``(resize_method, size)`` for the older folder loader when the images were
            not prepared to one size before upload.
    """

    def out(node: str, kind: str) -> int:
        index = schemas[node].output_index(kind)
        if index is None:
            raise ComfyUIError(f"ComfyUI's {node} has no {kind} output; LoRA Studio cannot use it.")
        return index

    ckpt = nodes.checkpoint_loader
    graph: dict[str, dict[str, Any]] = {
        "1": {"class_type": ckpt, "inputs": {"ckpt_name": checkpoint}},
    }
    model = ["1", out(ckpt, "MODEL")]
    clip = ["1", out(ckpt, "CLIP")]
    vae = ["1", out(ckpt, "VAE")]
    if nodes.dataset_nodes:
        graph["2"] = {"class_type": nodes.loader, "inputs": {"folder": folder}}
        graph["3"] = {
            "class_type": nodes.encoder,
            "inputs": {
                "images": ["2", out(nodes.loader, "IMAGE")],
                "vae": vae,
                "clip": clip,
                "texts": ["2", out(nodes.loader, "STRING")],
            },
        }
        latents = ["3", out(nodes.encoder, "LATENT")]
        positive = ["3", out(nodes.encoder, "CONDITIONING")]
    else:
        loader_inputs: dict[str, Any] = {"folder": folder, "clip": clip}
        loader_schema = schemas[nodes.loader]
        if resize is not None and "resize_method" in loader_schema.inputs:
            method, size = resize
            loader_inputs.update(resize_method=method, width=size, height=size)
        graph["2"] = {"class_type": nodes.loader, "inputs": loader_inputs}
        graph["3"] = {
            "class_type": nodes.encoder,
            "inputs": {"pixels": ["2", out(nodes.loader, "IMAGE")], "vae": vae},
        }
        latents = ["3", out(nodes.encoder, "LATENT")]
        positive = ["2", out(nodes.loader, "CONDITIONING")]
    graph["4"] = {
        "class_type": nodes.trainer,
        "inputs": {**dict(train_inputs), "model": model, "latents": latents, "positive": positive},
    }
    trainer = nodes.trainer
    save_inputs: dict[str, Any] = {"lora": ["4", out(trainer, "LORA_MODEL")], "prefix": prefix}
    steps_index = schemas[trainer].output_index("INT")
    if steps_index is not None and "steps" in schemas[nodes.saver].inputs:
        save_inputs["steps"] = ["4", steps_index]
    graph["5"] = {"class_type": nodes.saver, "inputs": save_inputs}
    loss_node = None
    loss_index = schemas[trainer].output_index("LOSS_MAP")
    steps = train_inputs.get("steps")
    # ComfyUI's plot divides by the loss range: one step would fail the whole prompt.
    if nodes.loss_graph and loss_index is not None and not (isinstance(steps, int) and steps < 2):
        graph["6"] = {
            "class_type": nodes.loss_graph,
            "inputs": {"loss": ["4", loss_index], "filename_prefix": loss_prefix},
        }
        loss_node = "6"
    return TrainingGraph(graph, train_node="4", save_node="5", loss_node=loss_node)


def check_graph_values(
    graph: Mapping[str, Mapping[str, Any]], schemas: Mapping[str, NodeSchema]
) -> dict[str, list[str]]:
    """What ComfyUI would refuse in the graph's widget values (missing required inputs,
    numbers out of range, values not among a combo's options), by node id. The server
    checks again; this catches a setting before anything is uploaded and says it in the
    words of our settings."""
    problems: dict[str, list[str]] = {}
    for node_id, node in graph.items():
        schema = schemas.get(str(node.get("class_type")))
        if schema is None:
            continue
        inputs = node.get("inputs") or {}
        found: list[str] = []
        for spec in schema.inputs.values():
            value = inputs.get(spec.name)
            if value is None:
                if spec.required and not (spec.name == "folder" and spec.kind == "COMBO"):
                    found.append(f"needs a value for {spec.name}")
                continue
            if isinstance(value, list) or not spec.is_widget:
                continue
            if spec.kind == "COMBO" and spec.name != "folder" and spec.options:
                if value not in spec.options:
                    shown = ", ".join(map(str, spec.options[:10]))
                    found.append(f"{spec.name} {value!r} is not one of {shown}")
            elif spec.kind in ("INT", "FLOAT") and isinstance(value, (int, float)):
                if spec.minimum is not None and value < spec.minimum:
                    found.append(f"{spec.name} must be at least {spec.minimum:g} (got {value:g})")
                if spec.maximum is not None and value > spec.maximum:
                    found.append(f"{spec.name} must be at most {spec.maximum:g} (got {value:g})")
        if found:
            problems[node_id] = found
    return problems


def describe_node_errors(
    body: Mapping[str, Any], graph: Mapping[str, Mapping[str, Any]]
) -> tuple[str, dict[str, list[str]]]:
    """One sentence for a 400 from ``POST /prompt``, and the reasons per node id."""
    per_node: dict[str, list[str]] = {}
    parts: list[str] = []
    node_errors = body.get("node_errors")
    for node_id, info in node_errors.items() if isinstance(node_errors, dict) else []:
        info = info if isinstance(info, dict) else {}
        class_type = info.get("class_type") or graph.get(node_id, {}).get("class_type", "?")
        texts = []
        for err in info.get("errors") or []:
            if not isinstance(err, dict):
                continue
            message = str(err.get("message") or err.get("type") or "error")
            details = str(err.get("details") or "")
            texts.append(_one_line(f"{message}: {details}" if details else message, 240))
        per_node[str(node_id)] = texts
        parts.append(f"{class_type} (node {node_id}): {'; '.join(texts) or 'refused'}")
    error = body.get("error")
    if isinstance(error, dict):
        head = str(error.get("message") or error.get("type") or "invalid prompt")
        details = str(error.get("details") or "")
    else:
        head, details = str(error or "invalid prompt"), ""
    if parts:
        text = "ComfyUI refused the training workflow: " + " | ".join(parts)
    else:
        text = f"ComfyUI refused the training workflow: {head}" + (
            f" ({details})" if details else ""
        )
    return _one_line(text, 1200), per_node


# ---- progress from the server's console -----------------------------------------------------


@dataclass(frozen=True)
class LogProgress:
    """The newest ``Training LoRA`` tqdm bar in ComfyUI's console log."""

    done: int
    total: int
    loss: float | None = None
    remaining_s: float | None = None


def parse_training_bar(text: str) -> LogProgress | None:
    """The step count (and loss, time left) of a ``Training LoRA: 45%|...| 45/100 [...]``
    line, or ``None``."""
    clean = _ANSI.sub("", text)
    matches = list(_TQDM.finditer(clean))
    if not matches:
        return None
    match = matches[-1]
    times = match.group("times") or ""
    loss = None
    if found := _LOSS.search(times):
        with contextlib.suppress(ValueError):
            loss = float(found.group("loss"))
    remaining = None
    if found := _REMAINING.search(times):
        seconds = 0.0
        for part in found.group("left").split(":"):
            seconds = seconds * 60 + int(part)
        remaining = seconds
    return LogProgress(int(match.group("n")), int(match.group("total")), loss, remaining)


def estimated_fraction(elapsed_s: float, expected_s: float) -> float:
    """How far a run probably is after ``elapsed_s`` of an expected ``expected_s``: linear
    up to 90 %, then creeping towards (never reaching) 99 %."""
    expected = max(expected_s, 1.0)
    knee = 0.9 * expected
    if elapsed_s <= knee:
        return max(0.0, elapsed_s / expected)
    return min(0.99, 0.9 + 0.09 * (1.0 - math.exp(-(elapsed_s - knee) / expected)))


# ---- one followed run -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    kind: str  # success | error | interrupted | dequeued | lost
    error: str | None = None
    traceback: tuple[str, ...] = ()
    node_type: str = ""
    executed: tuple[str, ...] = ()


@dataclass
class _Run:
    job: Job
    prompt_id: str
    config: LoraConfig | None
    client_id: str = ""
    dataset: Dataset | None = None
    train_node: str | None = None
    save_node: str | None = None
    node_types: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    grad_acc: int = 1
    prefix: str = ""
    checkpoint: str = ""
    log_marker: str = ""
    submitted_at: float = field(default_factory=time.time)
    # what is known now
    status: JobStatus = JobStatus.QUEUED
    message: str = ""
    error: str | None = None
    step: int = 0
    step_source: str = ""  # events | log | estimate
    loss: float | None = None
    losses: list[float] = field(default_factory=list)
    eta_s: float | None = None
    executing: str | None = None
    started: float | None = None  # monotonic: the prompt began executing
    training_since: float | None = None  # monotonic: TrainLoraNode began
    progress_events: bool = False
    cancel_requested: bool = False
    #: the cancel came while TrainLoraNode ran and no step events showed it can stop early
    cancel_waits_for_training: bool = False
    outcome: _Outcome | None = None
    output_path: str | None = None
    last_contact: float = field(default_factory=time.monotonic)
    missing_polls: int = 0
    ws_connected: bool = False
    recovered: bool = False
    marker_moved: bool = False
    log_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_TAIL)
    )
    # plumbing
    latest: Progress = field(default_factory=lambda: Progress(status=JobStatus.QUEUED))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    download_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def note(self, line: str) -> None:
        self.log_tail.append(line)
        log.info("%s: %s", self.job.name, line)


# ---- the backend ------------------------------------------------------------------------------


class ComfyUIBackend:
    """Trains LoRAs on a ComfyUI server (see the module docstring).

    Args:
        config: ``api_url`` is the server (``http://127.0.0.1:8188``, a path prefix and a
            trailing ``/api`` are fine); ``api_key`` an optional bearer token for a proxy
            in front of it (else ``COMFYUI_API_TOKEN`` or the keyring); ``timeout_s`` per
            request.
        client: an ``httpx.AsyncClient`` to use (tests, custom TLS); closed by its owner.
        checkpoint: the server's checkpoint to train on; default: the request's base model,
            which must then name one of the server's checkpoints.
        token: a bearer token (overrides ``config.api_key``).
        prepare_images: resize and centre-crop the images here before upload (to the
            training resolution, or each to its aspect-ratio bucket when the server's
            nodes take mixed sizes); otherwise upload them as they are and let the older
            loader stretch them.
        auto_download: fetch and convert the LoRA as soon as the run succeeds (the final
            Progress then carries ``output_path``).
        node_inputs: values for ``TrainLoraNode`` inputs, applied last (e.g.
            ``{"loss_function": "Huber"}``, ``{"training_dtype": "fp32"}``).
        poll_interval_s: how often ``/history`` and ``/queue`` are asked while the
            WebSocket is up (twice as often while it is down).
        give_up_after_s: how long an unreachable server is retried before the job fails.
        estimate_seconds_per_step: the step time the elapsed-time estimate assumes when
            the server reports no step count (default: from LoRA Studio's estimates).
        upload_concurrency: uploads in flight at once.
    """

    kind = BackendType.COMFYUI

    def __init__(
        self,
        config: BackendConfig,
        *,
        client: httpx.AsyncClient | None = None,
        checkpoint: str | None = None,
        token: str | None = None,
        prepare_images: bool = True,
        auto_download: bool = True,
        node_inputs: Mapping[str, Any] | None = None,
        poll_interval_s: float = 2.0,
        give_up_after_s: float = 600.0,
        estimate_seconds_per_step: float | None = None,
        upload_concurrency: int = 4,
    ) -> None:
        url = (config.api_url or "").strip().rstrip("/")
        if not url:
            raise ComfyUIError(
                "No ComfyUI address given; set the server's URL, e.g. http://127.0.0.1:8188."
            )
        if "://" not in url:
            url = "http://" + url
        self.config = config
        self.url = url
        if url.endswith("/api"):
            self._root, self._prefixes = url[: -len("/api")], ("/api", "")
        else:
            self._root, self._prefixes = url, ("", "/api")
        self._prefix: str | None = None
        self._prefix_lock = asyncio.Lock()
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout_s), follow_redirects=True
        )
        self.checkpoint = checkpoint
        self._explicit_token = token or config.api_key
        self._token: str | None = None
        self._token_resolved = False
        self.prepare_images = prepare_images
        self.auto_download = auto_download
        self.node_inputs = dict(node_inputs or {})
        self.poll_interval_s = poll_interval_s
        self.give_up_after_s = give_up_after_s
        self.estimate_seconds_per_step = estimate_seconds_per_step
        self.upload_concurrency = max(1, upload_concurrency)
        self.server_version: str | None = None
        self.device_type: str | None = None
        self._logs_path: str | None = None  # the console-log route, once one answered
        self._logs_unavailable = False
        self._runs: dict[str, _Run] = {}

    # ---- life ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop following every run (the runs go on on the server) and close the client."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> ComfyUIBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- Protocol ----------------------------------------------------------------------------

    async def check(self) -> BackendStatus:
        """Reachable? Which ComfyUI, which device, which training nodes, how many
        checkpoints. Never raises for the server's sake: a problem is ``ok=False`` with the
        reason."""
        try:
            stats = await self._call("GET", "/system_stats")
            schemas = await self.node_schemas()
        except ComfyUIError as exc:
            return BackendStatus(False, str(exc))
        version, device, vram_gb, free_gb = self._read_stats(stats)
        where = f"ComfyUI {version}" if version else "ComfyUI"
        try:
            nodes = find_training_nodes(schemas, server=f"{where} at {self.url}")
        except ComfyUINodesMissing as exc:
            return BackendStatus(False, str(exc), device, vram_gb)
        checkpoints = checkpoint_options(schemas)
        memory = (
            f", {free_gb:.1f} of {vram_gb:.1f} GB free" if vram_gb and free_gb is not None else ""
        )
        message = (
            f"{where} on {device or 'an unknown device'}{memory}; trains with "
            f"{nodes.describe()}; {len(checkpoints)} checkpoint(s)."
        )
        return BackendStatus(True, message, device, vram_gb)

    async def list_checkpoints(self) -> tuple[str, ...]:
        """The checkpoint names the server offers (for a chooser)."""
        return checkpoint_options(await self.node_schemas([CHECKPOINT_LOADER]))

    async def submit(self, request: TrainingRequest) -> Job:
        """Check, upload and queue the run; returns once ComfyUI has accepted the prompt.

        Raises:
            DatasetError: no images; an image has no caption and there is no trigger word.
            ComfyUIError: see the module docstring.
        """
        config = request.config.validate()
        dataset = request.dataset
        if not dataset.images:
            raise DatasetError(f"The dataset {dataset.root} has no images to train on.")
        captions = dataset_captions(dataset, config.trigger_word)
        schemas = await self.node_schemas()
        version = self.server_version
        server = f"ComfyUI {version} at {self.url}" if version else f"ComfyUI at {self.url}"
        nodes = find_training_nodes(schemas, server=server)
        checkpoint = pick_checkpoint(
            self.checkpoint or request.base_model, checkpoint_options(schemas), server=server
        )
        plan = plan_steps(dataset.samples_per_epoch(config.repeats), config)
        steps = max(1, plan.total_steps)
        inputs, notes = train_node_inputs(config, steps, schemas[nodes.trainer])
        inputs.update(self.node_inputs)
        job = Job(
            id=Job.new_id(),
            backend=BackendType.COMFYUI,
            name=config.name,
            base_model=checkpoint,
            output_dir=str(request.output_dir),
            dataset_dir=str(dataset.root),
            config=config.to_dict(),
        )
        folder = f"{UPLOAD_ROOT}/{job.id}"
        prefix = f"loras/{job.id}"
        mixed_sizes = nodes.dataset_nodes and config.enable_bucket
        resize = None if self.prepare_images else ("Stretch", config.resolution)
        built = build_training_graph(
            nodes,
            schemas,
            checkpoint=checkpoint,
            folder=folder,
            prefix=prefix,
            train_inputs=inputs,
            loss_prefix=f"lora-studio-{job.id}-loss",
            resize=resize,
        )
        problems = check_graph_values(built.graph, schemas)
        if problems:
            parts = [
                f"{built.graph[n]['class_type']} (node {n}): {'; '.join(p)}"
                for n, p in problems.items()
            ]
            raise ComfyUIWorkflowError(
                _one_line(f"{server} cannot run these settings: " + " | ".join(parts), 1200),
                problems,
            )
        if self.prepare_images:
            shape = "its aspect-ratio bucket" if mixed_sizes else f"{config.resolution} px squares"
            notes.append(f"Images are resized and centre-cropped here to {shape} before upload.")
        await self._upload_dataset(dataset, captions, config, folder, mixed_sizes=mixed_sizes)
        marker = await self._log_marker()
        client_id = f"lora-studio-{uuid.uuid4().hex}"
        prompt_id = await self._queue_prompt(built.graph, client_id)
        job.remote_id = prompt_id
        run = _Run(
            job=job,
            prompt_id=prompt_id,
            config=config,
            client_id=client_id,
            dataset=dataset,
            train_node=built.train_node,
            save_node=built.save_node,
            node_types={n: str(v["class_type"]) for n, v in built.graph.items()},
            steps=steps,
            grad_acc=config.gradient_accumulation_steps,
            prefix=prefix,
            checkpoint=checkpoint,
            log_marker=marker,
            recovered=True,
            message="Queued on ComfyUI",
        )
        run.note(
            f"Uploaded {len(captions)} images with captions to ComfyUI's input/{folder}; "
            f"training {steps} steps on {checkpoint} with {nodes.describe()} "
            f"(prompt {prompt_id})."
        )
        for line in notes:
            run.note(line)
        self._start(run)
        return job

    async def progress(self, job: Job) -> Progress:
        return self._run(job).latest

    async def watch(self, job: Job) -> AsyncIterator[Progress]:
        run = self._run(job)
        last: Progress | None = None
        while True:
            run.changed.clear()
            current, done = run.latest, run.finished.is_set()
            if current is not last:
                last = current
                yield current
            if done:
                return
            await run.changed.wait()

    async def cancel(self, job: Job) -> None:
        """Take the prompt out of ComfyUI's queue, or interrupt it when it runs. A running
        ``TrainLoraNode`` of v0.3.64 finishes its steps first (the job says so and ends as
        cancelled, without a LoRA)."""
        run = self._run(job)
        if run.finished.is_set() or run.outcome is not None:
            return
        run.cancel_requested = True
        running, pending = await self._queue_ids()
        if run.prompt_id in pending:
            await self._call("POST", "/queue", json={"delete": [run.prompt_id]})
            running, pending = await self._queue_ids()
            if run.prompt_id in pending:
                raise ComfyUIError(
                    f"ComfyUI at {self.url} kept prompt {run.prompt_id} in its queue after "
                    f"being asked to delete it; cancel it in ComfyUI's queue."
                )
            if run.prompt_id not in running:
                run.outcome = _Outcome("dequeued")
                run.poke.set()
                return
        if run.prompt_id in running:
            await self._call("POST", "/interrupt", json={"prompt_id": run.prompt_id})
            training = (
                run.executing == run.train_node or run.step > 0 or run.training_since is not None
            )
            run.cancel_waits_for_training = training and not run.progress_events
            if run.progress_events:
                message = "Cancel sent; ComfyUI stops the training at its next step."
            elif training:
                message = (
                    f"Cancel sent. This ComfyUI cannot stop its Train LoRA node midway: it "
                    f"finishes the remaining {max(run.steps - run.step, 0)} steps, then "
                    f"discards the result (no LoRA is saved) and the job ends as cancelled."
                )
            else:
                message = "Cancel sent; ComfyUI stops before the training starts."
            run.note(message)
            self._publish(run, message=message)
        run.poke.set()

    async def download_weights(self, job: Job, dest: Path | None = None) -> Path:
        """The converted kohya LoRA on local disk (fetched now unless already fetched;
        copied to ``dest`` when given, never over an existing file)."""
        run = self._run(job)
        async with run.download_lock:
            if run.output_path and Path(run.output_path).exists():
                source = Path(run.output_path)
                if dest is None:
                    return source
                return await asyncio.to_thread(_copy_unique, source, dest)
            if run.outcome is None or run.outcome.kind != "success":
                state = run.status.value if run.finished.is_set() else "it has not finished"
                raise BackendError(f"Job {job.name} has no LoRA on ComfyUI ({state}).")
            path = await self._download(run, dest)
            if dest is None:
                run.output_path = str(path)
                run.job.output_path = str(path)
            return path

    async def estimate_cost(self, request: TrainingRequest) -> float | None:
        return 0.0  # your own server

    async def reattach(self, job: Job) -> None:
        """Follow ``job.remote_id`` (a ComfyUI prompt id) again after a restart; the graph,
        client id and file prefix come back from the server's queue or history. A server
        that is down is retried for ``give_up_after_s``."""
        if job.backend is not BackendType.COMFYUI:
            raise BackendError(f"Job {job.name} did not run on ComfyUI.")
        if not job.remote_id:
            raise BackendError(f"Job {job.name} has no ComfyUI prompt id to follow.")
        existing = self._runs.get(job.id)
        if existing is not None and not existing.finished.is_set():
            return
        config: LoraConfig | None
        try:
            config = LoraConfig.from_dict(job.config) if job.config else None
        except LoraStudioError:
            config = None
        run = _Run(
            job=job,
            prompt_id=job.remote_id,
            config=config,
            message="Re-attaching to ComfyUI",
            grad_acc=config.gradient_accumulation_steps if config else 1,
        )
        run.note(f"Following ComfyUI prompt {job.remote_id} again.")
        self._start(run)

    # ---- following ---------------------------------------------------------------------------

    def _run(self, job: Job) -> _Run:
        run = self._runs.get(job.id)
        if run is None and job.remote_id:
            run = next((r for r in self._runs.values() if r.prompt_id == job.remote_id), None)
        if run is None:
            raise BackendError(
                f"Job {job.name} is not followed by this ComfyUI backend; re-attach it first."
            )
        return run

    def _start(self, run: _Run) -> None:
        self._runs[run.job.id] = run
        self._publish(run)
        run.task = asyncio.get_running_loop().create_task(
            self._follow(run), name=f"comfyui-{run.prompt_id}"
        )

    def _publish(self, run: _Run, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(run, name, value)
        now = time.monotonic()
        since = run.training_since or run.started
        elapsed = now - since if since is not None else 0.0
        samples = None
        if run.step and run.training_since and run.config and run.step_source != "estimate":
            samples = run.step * run.config.batch_size * run.grad_acc / max(elapsed, 1e-6)
        run.latest = Progress(
            status=run.status,
            step=min(run.step, run.steps) if run.steps else run.step,
            total_steps=run.steps,
            loss=run.loss,
            loss_history=tuple(run.losses),
            learning_rate=run.config.learning_rate if run.config else None,
            elapsed_s=elapsed,
            eta_s=run.eta_s,
            samples_per_s=samples,
            message=run.message,
            log_tail=tuple(run.log_tail),
            output_path=run.output_path,
            error=run.error,
        )
        run.job.status = run.status
        run.changed.set()

    async def _follow(self, run: _Run) -> None:
        ws_task = asyncio.get_running_loop().create_task(self._ws_loop(run))
        try:
            while True:
                if run.outcome is None:
                    await self._poll(run)
                if run.outcome is not None:
                    await self._conclude(run)
                    return
                run.poke.clear()
                interval = self.poll_interval_s if run.ws_connected else self.poll_interval_s / 2
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.poke.wait(), timeout=interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: end the job visibly rather than hang its monitor
            log.exception("following ComfyUI prompt %s failed", run.prompt_id)
            self._finish(
                run, JobStatus.FAILED, "Failed", f"Following the ComfyUI run failed: {exc}"
            )
        finally:
            ws_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ws_task

    async def _poll(self, run: _Run) -> None:
        now = time.monotonic()
        try:
            if not run.recovered:
                await self._recover(run)
            entry = await self._history_entry(run.prompt_id)
            if entry:
                run.last_contact = now
                run.outcome = run.outcome or _outcome_from_history(entry)
                return
            running, pending = await self._queue_ids()
            run.last_contact = now
        except ComfyUIError as exc:
            silent = now - run.last_contact
            if silent > self.give_up_after_s:
                run.outcome = _Outcome(
                    "lost",
                    f"Lost contact with ComfyUI at {self.url} for {format_duration(silent)}: {exc}",
                )
            else:
                self._publish(run, message=_one_line(f"ComfyUI is not answering; retrying ({exc})"))
            return
        if run.prompt_id in pending:
            run.missing_polls = 0
            ahead = pending.index(run.prompt_id) + len(running)
            message = f"Queued on ComfyUI ({ahead} ahead)" if ahead else "Queued on ComfyUI"
            if run.status is not JobStatus.QUEUED or run.message != message:
                self._publish(run, status=JobStatus.QUEUED, message=message)
        elif run.prompt_id in running:
            run.missing_polls = 0
            if run.started is None:
                run.started = time.monotonic()
            if run.status is JobStatus.QUEUED:
                self._publish(run, status=JobStatus.PREPARING, message="Running on ComfyUI")
            await self._follow_training(run)
        else:
            run.missing_polls += 1
            if run.missing_polls >= 2:
                run.outcome = _Outcome(
                    "lost",
                    f"ComfyUI at {self.url} no longer knows prompt {run.prompt_id} (was the "
                    f"server restarted or its history cleared?).",
                )

    async def _follow_training(self, run: _Run) -> None:
        """Step count and loss while the prompt runs, from the console log when no
        ``progress`` events come; else an estimate from the elapsed time."""
        bar = await self._log_progress(run) if not self._logs_unavailable else None
        now = time.monotonic()
        if bar is not None:
            if run.training_since is None:
                run.training_since = now
            changes: dict[str, Any] = {}
            if not run.progress_events and run.steps:
                changes["step"] = round(run.steps * bar.done / max(bar.total, 1))
                run.step_source = "log"
                changes["eta_s"] = bar.remaining_s
                changes["message"] = "Training on ComfyUI"
                if run.status is not JobStatus.SAVING:
                    changes["status"] = JobStatus.RUNNING
            if bar.loss is not None and bar.loss != run.loss:
                changes["loss"] = bar.loss
                run.losses.append(bar.loss)
                if len(run.losses) > MAX_HISTORY:
                    run.losses[:] = run.losses[::2]
            if changes and (
                changes.get("step", run.step) != run.step
                or "loss" in changes
                or changes.get("status", run.status) is not run.status
            ):
                self._publish(run, **changes)
            return
        if run.progress_events or run.status is JobStatus.SAVING:
            return
        # No step count anywhere: show time and an estimate, never a frozen 0 %. While the
        # console log is readable its bar is waited for a little (it appears as soon as
        # the training starts).
        patience = self.poll_interval_s * (1 if self._logs_unavailable else 15)
        since = run.training_since
        if since is None:
            if run.executing is not None and run.executing != run.train_node:
                return  # the WebSocket says the training has not started yet
            if run.executing is None and now - (run.started or now) < patience:
                return
            since = run.training_since = run.started or now
        elif run.step_source != "estimate" and now - since < patience / 3:
            return
        elapsed = now - since
        expected = self._expected_training_s(run)
        fraction = estimated_fraction(elapsed, expected)
        left = max(expected - elapsed, 0.0)
        tail = f"about {format_duration(left)} left" if left > 0 else "taking longer than estimated"
        run.step_source = "estimate"
        self._publish(
            run,
            status=JobStatus.RUNNING,
            step=min(int(fraction * run.steps), max(run.steps - 1, 0)),
            eta_s=left if left > 0 else None,
            message=(
                f"Training on ComfyUI: {format_duration(elapsed)} elapsed, {tail} "
                f"(estimated: this ComfyUI reports no step count)"
            ),
        )

    def _expected_training_s(self, run: _Run) -> float:
        per_step = self.estimate_seconds_per_step
        if per_step is None:
            per_step = 2.0
            if run.config is not None:
                from lora_studio.core.estimates import architecture_for, seconds_per_step

                per_step = seconds_per_step(run.config, architecture_for(run.config.family))
            if self.device_type == "cpu":
                per_step *= 30.0
        return max(1.0, per_step * max(run.steps, 1))

    async def _conclude(self, run: _Run) -> None:
        outcome = run.outcome
        assert outcome is not None
        for line in outcome.traceback[-30:]:
            run.log_tail.append(line)
        if (
            outcome.kind == "error"
            and outcome.node_type == LOSS_GRAPH_NODE
            and run.save_node in outcome.executed
        ):
            # Only the loss plot failed, after the LoRA was saved: the run did its job.
            run.note(f"{outcome.error} (only the loss plot; the LoRA was saved)")
            outcome = run.outcome = _Outcome("success")
        if outcome.kind == "success":
            if not run.recovered:
                with contextlib.suppress(ComfyUIError):
                    await self._recover(run)
            run.step = run.steps
            note = (
                "Finished before the cancel took effect; the LoRA was saved."
                if run.cancel_requested
                else "Trained on ComfyUI."
            )
            run.note(note)
            if not self.auto_download:
                self._finish(run, JobStatus.SUCCEEDED, f"{note} Download the LoRA to finish.")
                return
            self._publish(run, status=JobStatus.SAVING, message="Downloading the LoRA from ComfyUI")
            try:
                async with run.download_lock:
                    path = await self._download(run, None)
            except LoraStudioError as exc:
                self._finish(
                    run,
                    JobStatus.FAILED,
                    "Download failed",
                    _one_line(f"Trained on ComfyUI, but fetching the LoRA failed: {exc}", 600),
                )
                return
            run.output_path = run.job.output_path = str(path)
            self._finish(run, JobStatus.SUCCEEDED, f"Done: {path.name}")
        elif outcome.kind == "error":
            self._finish(run, JobStatus.FAILED, "Failed on ComfyUI", outcome.error)
        elif outcome.kind == "dequeued":
            self._finish(
                run,
                JobStatus.CANCELLED,
                "Cancelled: removed from ComfyUI's queue before it started.",
            )
        elif outcome.kind == "interrupted":
            if not run.cancel_requested:
                message = (
                    "Interrupted on the ComfyUI server (not from LoRA Studio); no LoRA was saved."
                )
            elif not run.cancel_waits_for_training:
                message = "Cancelled on ComfyUI; no LoRA was saved."
            else:
                message = (
                    "Cancelled. ComfyUI ran the training to its end first (this version cannot "
                    "stop its Train LoRA node midway) and saved no LoRA."
                )
            self._finish(run, JobStatus.CANCELLED, message)
        else:
            self._finish(run, JobStatus.FAILED, "Lost", outcome.error)

    def _finish(self, run: _Run, status: JobStatus, message: str, error: str | None = None) -> None:
        if error:
            run.note(error)
        elif message:
            run.note(message)
        run.job.error = error
        self._publish(run, status=status, message=message, error=error, eta_s=None)
        run.finished.set()
        run.changed.set()

    # ---- the WebSocket -----------------------------------------------------------------------

    async def _ws_loop(self, run: _Run) -> None:
        from websockets.exceptions import WebSocketException

        try:
            from websockets.asyncio.client import connect

            headers_argument = "additional_headers"
        except ImportError:  # websockets 12: the legacy client
            from websockets import connect  # type: ignore[no-redef,attr-defined]

            headers_argument = "extra_headers"

        delay = 0.2
        while not run.finished.is_set():
            try:
                if not run.client_id:
                    await asyncio.sleep(self.poll_interval_s / 2)
                    continue
                url = await self._ws_url(run.client_id)
                options: dict[str, Any] = {
                    headers_argument: self._auth_headers(),
                    "open_timeout": self.config.timeout_s,
                    "max_size": None,  # preview images can be large
                    # its DEBUG lines carry the handshake's headers: the token hidden
                    "logger": redacting_logger("websockets.client"),
                }
                async with connect(url, **options) as socket:
                    run.ws_connected = True
                    delay = 0.2
                    run.poke.set()
                    async for message in socket:
                        if isinstance(message, str):
                            self._on_message(run, message)
            except asyncio.CancelledError:
                raise
            except (OSError, WebSocketException, TimeoutError, ComfyUIError) as exc:
                log.debug("ComfyUI WebSocket for %s: %s", run.prompt_id, exc)
            finally:
                if run.ws_connected:
                    run.ws_connected = False
                    run.poke.set()  # poll at once while the socket is down
            if run.finished.is_set():
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _on_message(self, run: _Run, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
            return
        kind, data = message.get("type"), message["data"]
        prompt = data.get("prompt_id")
        if prompt is not None and prompt != run.prompt_id:
            return
        if run.outcome is not None:
            return
        if kind == "execution_start":
            run.started = run.started or time.monotonic()
            self._publish(run, status=JobStatus.PREPARING, message="Starting on ComfyUI")
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                if prompt == run.prompt_id or run.started is not None:
                    run.poke.set()  # done: the history says how it ended
                return
            self._on_executing(run, str(node))
        elif kind == "progress":
            self._on_progress(run, data.get("node"), data.get("value"), data.get("max"))
        elif kind == "progress_state":
            nodes = data.get("nodes")
            if isinstance(nodes, dict) and run.train_node in nodes:
                state = nodes[run.train_node] or {}
                self._on_progress(run, run.train_node, state.get("value"), state.get("max"))
        elif kind == "execution_success":
            run.outcome = _Outcome("success")
            run.poke.set()
        elif kind == "execution_error":
            run.outcome = _error_outcome(data)
            run.poke.set()
        elif kind == "execution_interrupted":
            run.outcome = _Outcome("interrupted")
            run.poke.set()

    def _on_executing(self, run: _Run, node: str) -> None:
        run.executing = node
        run.started = run.started or time.monotonic()
        kind = run.node_types.get(node, "")
        if node == run.train_node:
            run.training_since = run.training_since or time.monotonic()
            self._publish(run, status=JobStatus.RUNNING, message="Training on ComfyUI")
        elif node == run.save_node or kind == LOSS_GRAPH_NODE:
            self._publish(run, status=JobStatus.SAVING, message="Saving the LoRA on ComfyUI")
        elif kind == CHECKPOINT_LOADER:
            self._publish(
                run,
                status=JobStatus.PREPARING,
                message=f"Loading {run.checkpoint or 'the checkpoint'}",
            )
        elif kind in (OLD_LOADER, NEW_LOADER):
            self._publish(
                run, status=JobStatus.PREPARING, message="Loading the images and captions"
            )
        elif kind in (VAE_ENCODE, MAKE_DATASET):
            self._publish(run, status=JobStatus.PREPARING, message="Encoding the dataset")
        else:
            self._publish(run, status=JobStatus.PREPARING, message="Running on ComfyUI")

    def _on_progress(self, run: _Run, node: Any, value: Any, maximum: Any) -> None:
        if node is not None and str(node) != run.train_node:
            return
        if node is None and run.executing != run.train_node:
            return
        try:
            done, total = float(value), float(maximum)
        except (TypeError, ValueError):
            return
        # Newer servers announce every node with a 0-of-1 placeholder state, progress bar or
        # not: only a real count says that the node reports its steps.
        if total <= 1 or done <= 0 or not run.steps:
            return
        run.progress_events = True
        run.step_source = "events"
        now = time.monotonic()
        run.training_since = run.training_since or now
        step = min(run.steps, round(run.steps * done / total))
        eta = None
        if step:
            eta = (now - run.training_since) / step * (run.steps - step)
        self._publish(
            run, status=JobStatus.RUNNING, step=step, eta_s=eta, message="Training on ComfyUI"
        )

    async def _ws_url(self, client_id: str) -> str:
        prefix = await self._api_prefix()
        root = self._root
        if root.startswith("https://"):
            root = "wss://" + root[len("https://") :]
        elif root.startswith("http://"):
            root = "ws://" + root[len("http://") :]
        return f"{root}{prefix}/ws?clientId={client_id}"

    # ---- re-attaching ------------------------------------------------------------------------

    async def _recover(self, run: _Run) -> None:
        """Learn a re-attached run's graph, client id and file prefix from the server."""
        item: list[Any] | None = None
        entry = await self._history_entry(run.prompt_id)
        if entry and isinstance(entry.get("prompt"), list):
            item = entry["prompt"]
        if item is None:
            queue = await self._call("GET", "/queue")
            for section in ("queue_running", "queue_pending"):
                for candidate in (queue or {}).get(section) or []:
                    if (
                        isinstance(candidate, list)
                        and len(candidate) > 2
                        and candidate[1] == run.prompt_id
                    ):
                        item = candidate
        run.recovered = True
        if item is None:
            return  # the poll says it is gone
        graph = item[2] if isinstance(item[2], dict) else {}
        extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        run.client_id = str(extra.get("client_id") or "")
        run.node_types = {
            str(n): str(v.get("class_type")) for n, v in graph.items() if isinstance(v, dict)
        }
        for node_id, node in graph.items():
            inputs = (node.get("inputs") or {}) if isinstance(node, dict) else {}
            kind = run.node_types.get(str(node_id))
            if kind == TRAIN_NODE:
                run.train_node = str(node_id)
                with contextlib.suppress(TypeError, ValueError):
                    run.steps = int(inputs.get("steps") or 0)
                    run.grad_acc = int(inputs.get("grad_accumulation_steps") or 1)
            elif kind in SAVE_NODES:
                run.save_node = str(node_id)
                run.prefix = str(inputs.get("prefix") or "")
            elif kind == CHECKPOINT_LOADER:
                run.checkpoint = str(inputs.get("ckpt_name") or "")
        if run.dataset is None and run.job.dataset_dir:
            with contextlib.suppress(LoraStudioError, OSError):
                run.dataset = await asyncio.to_thread(Dataset.from_directory, run.job.dataset_dir)
        self._publish(run)

    # ---- uploading and queueing --------------------------------------------------------------

    async def _upload_dataset(
        self,
        dataset: Dataset,
        captions: list[str],
        config: LoraConfig,
        folder: str,
        *,
        mixed_sizes: bool,
    ) -> None:
        semaphore = asyncio.Semaphore(self.upload_concurrency)

        async def one(index: int, item: ImageItem, caption: str) -> None:
            repeats = item.repeats or config.repeats
            subfolder = folder if repeats == 1 else f"{folder}/{repeats}_images"
            stem = f"img_{index:05d}"
            async with semaphore:
                suffix, data = await asyncio.to_thread(
                    prepare_upload_image, item, config, self.prepare_images, mixed_sizes
                )
                await self._upload(subfolder, stem + suffix, data, LOADER_IMAGE_TYPES[suffix])
                await self._upload(subfolder, stem + ".txt", caption.encode("utf-8"), "text/plain")

        tasks = [
            asyncio.ensure_future(one(i, item, caption))
            for i, (item, caption) in enumerate(zip(dataset.images, captions, strict=True), 1)
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _upload(self, subfolder: str, name: str, data: bytes, content_type: str) -> None:
        reply = await self._call(
            "POST",
            "/upload/image",
            files={"image": (name, data, content_type)},
            data={"subfolder": subfolder, "type": "input", "overwrite": "true"},
        )
        if not isinstance(reply, dict) or reply.get("name") != name:
            raise ComfyUIResponseError(
                f"ComfyUI at {self.url} did not store the upload {subfolder}/{name} as asked."
            )

    async def _queue_prompt(self, graph: dict[str, Any], client_id: str) -> str:
        response = await self._call(
            "POST",
            "/prompt",
            json={"prompt": graph, "client_id": client_id},
            accept=(200, 400),
            raw=True,
        )
        body = self._json(response, "/prompt")
        if response.status_code == 400:
            if not isinstance(body, dict):
                raise ComfyUIResponseError(
                    f"ComfyUI at {self.url} refused the workflow (HTTP 400).", 400
                )
            message, per_node = describe_node_errors(body, graph)
            raise ComfyUIWorkflowError(message, per_node)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ComfyUIResponseError(
                f"ComfyUI at {self.url} accepted the workflow but sent no prompt id."
            )
        return prompt_id

    async def _log_marker(self) -> str:
        """The newest console-log time now: training bars after it belong to this run."""
        entries = await self._log_entries()
        times = [str(e.get("t") or "") for e in entries or () if isinstance(e, dict)]
        return max(times, default="")

    # ---- reading the server ------------------------------------------------------------------

    async def node_schemas(self, names: Iterable[str] = NODE_CLASSES) -> dict[str, NodeSchema]:
        """The schemas of ``names`` the server has (``GET /object_info/<name>`` each)."""
        wanted = list(names)
        replies = await asyncio.gather(
            *(self._call("GET", f"/object_info/{name}") for name in wanted)
        )
        schemas: dict[str, NodeSchema] = {}
        for name, reply in zip(wanted, replies, strict=True):
            if not isinstance(reply, dict):
                raise ComfyUIResponseError(
                    f"ComfyUI at {self.url} sent an unexpected reply to /object_info/{name}."
                )
            info = reply.get(name)
            if isinstance(info, dict):
                schemas[name] = parse_node_schema(name, info)
        return schemas

    async def _history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        reply = await self._call("GET", f"/history/{prompt_id}")
        if not isinstance(reply, dict):
            raise ComfyUIResponseError(
                f"ComfyUI at {self.url} sent an unexpected reply to /history."
            )
        entry = reply.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def _queue_ids(self) -> tuple[list[str], list[str]]:
        reply = await self._call("GET", "/queue")
        if not isinstance(reply, dict):
            raise ComfyUIResponseError(f"ComfyUI at {self.url} sent an unexpected reply to /queue.")

        def ids(section: str) -> list[str]:
            items = reply.get(section) or []
            ordered = sorted(
                (i for i in items if isinstance(i, list) and len(i) > 1),
                key=lambda i: i[0] if isinstance(i[0], (int, float)) else 0,
            )
            return [str(i[1]) for i in ordered]

        return ids("queue_running"), ids("queue_pending")

    async def _log_entries(self) -> list[dict[str, Any]] | None:
        """ComfyUI's console log (``GET /internal/logs/raw``), or ``None`` when the server
        does not offer it."""
        if self._logs_unavailable:
            return None
        prefix = await self._api_prefix()
        candidates = (
            [self._logs_path]
            if self._logs_path is not None
            else list(dict.fromkeys([f"{prefix}/internal/logs/raw", "/internal/logs/raw"]))
        )
        for path in candidates:
            assert path is not None
            try:
                response = await self._send("GET", self._root + path)
            except ComfyUIConnectionError:
                return None
            if response.status_code != 200:
                continue
            try:
                data = response.json()
            except ValueError:
                continue
            entries = data.get("entries") if isinstance(data, dict) else None
            if isinstance(entries, list):
                self._logs_path = path
                return entries
        self._logs_unavailable = True
        return None

    async def _log_progress(self, run: _Run) -> LogProgress | None:
        entries = await self._log_entries()
        if not entries:
            return None
        if not run.marker_moved:
            # Bars older than the newest other line once this prompt runs are an earlier
            # run's (a second job with the same step count, say); this run's own bar gets a
            # new time at each refresh, so it is never lost.
            run.marker_moved = True
            others = [
                str(e.get("t") or "")
                for e in entries
                if isinstance(e, dict) and parse_training_bar(str(e.get("m") or "")) is None
            ]
            run.log_marker = max([run.log_marker, *others])
        expected = run.steps * max(run.grad_acc, 1)
        for entry in reversed(entries):
            if not isinstance(entry, dict):
                continue
            stamp = str(entry.get("t") or "")
            if run.log_marker and stamp and stamp <= run.log_marker:
                break
            bar = parse_training_bar(str(entry.get("m") or ""))
            if bar is not None and (not expected or bar.total == expected):
                return bar
        return None

    def _read_stats(self, stats: Any) -> tuple[str, str | None, float | None, float | None]:
        system = stats.get("system") if isinstance(stats, dict) else None
        version = str((system or {}).get("comfyui_version") or "").strip()
        devices = stats.get("devices") if isinstance(stats, dict) else None
        device = vram = free = None
        if isinstance(devices, list) and devices and isinstance(devices[0], dict):
            first = devices[0]
            device = str(first.get("name") or first.get("type") or "").split(" : ")[0] or None
            self.device_type = str(first.get("type") or "") or None
            if self.device_type != "cpu":
                with contextlib.suppress(TypeError, ValueError):
                    vram = float(first["vram_total"]) / 2**30
                    free = float(first["vram_free"]) / 2**30
        self.server_version = version or None
        return version, device, vram, free

    # ---- downloading -------------------------------------------------------------------------

    async def _download(self, run: _Run, dest: Path | None) -> Path:
        if not run.prefix:
            raise BackendError(f"The ComfyUI run of {run.job.name} saved under an unknown name.")
        subfolder, _, base = run.prefix.rpartition("/")
        names = await self._candidate_files(base, run.steps)
        folder = (
            Path(run.job.output_dir) if dest is None else (dest if dest.is_dir() else dest.parent)
        )
        name = run.job.name if dest is None or dest.is_dir() else dest.stem
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"Cannot create the output folder {folder}: {exc.strerror or exc}."
            ) from None
        part = folder / f".{name}.{uuid.uuid4().hex[:8]}.comfyui.part"
        try:
            found = None
            for filename in names:
                if await self._fetch(subfolder, filename, part):
                    found = filename
                    break
            if found is None:
                raise ComfyUIResponseError(
                    f"ComfyUI at {self.url} has no saved LoRA output/{run.prefix}_"
                    f"{run.steps or '*'}_steps_*_.safetensors (was the run interrupted?)."
                )
            path, notes = await asyncio.to_thread(
                self._write_kohya, run, part, folder, name, f"{subfolder}/{found}".lstrip("/")
            )
        finally:
            with contextlib.suppress(OSError):
                part.unlink()
        for line in notes:
            run.note(line)
        run.note(f"Saved {path}")
        return path

    async def _candidate_files(self, base: str, steps: int) -> list[str]:
        """File names the run's LoRA may have: those ``/models/loras`` lists under the
        job's prefix, then the name pattern with the first counters."""
        listed: list[str] = []
        with contextlib.suppress(ComfyUIError):
            reply = await self._call("GET", "/models/loras")
            for entry in reply if isinstance(reply, list) else []:
                name = str(entry).replace("\\", "/").rsplit("/", 1)[-1]
                if name.startswith(f"{base}_") and name.endswith(".safetensors"):
                    listed.append(name)
        pattern = [f"{base}_{steps}_steps_{counter:05}_.safetensors" for counter in range(1, 4)]
        return list(dict.fromkeys(sorted(listed, reverse=True) + (pattern if steps else [])))

    async def _fetch(self, subfolder: str, filename: str, target: Path) -> bool:
        """Stream ``/view`` of an output file to ``target``; ``False`` when it is not there."""
        prefix = await self._api_prefix()
        url = f"{self._root}{prefix}/view"
        params = {"type": "output", "subfolder": subfolder, "filename": filename}
        try:
            async with self._client.stream(
                "GET", url, params=params, headers=self._auth_headers()
            ) as response:
                if response.status_code == 404:
                    return False
                self._check_status(response, "GET", "/view")
                with target.open("wb") as handle:
                    async for chunk in response.aiter_bytes():
                        handle.write(chunk)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        except OSError as exc:
            raise OutputError(f"Cannot write {target}: {exc.strerror or exc}.") from None
        return True

    def _write_kohya(
        self, run: _Run, raw: Path, folder: Path, name: str, remote: str
    ) -> tuple[Path, list[str]]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from lora_studio.backends.comfyui_lora import comfy_lora_to_kohya, version_for_family
        from lora_studio.training.export import (
            RunFacts,
            kohya_metadata,
            save_kohya_lora,
            unique_output_path,
        )

        try:
            state = load_file(str(raw))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ComfyUIResponseError(
                f"The file ComfyUI sent ({remote}) is not a readable .safetensors file: {exc}."
            ) from None
        config = run.config or LoraConfig(name=name)
        try:
            conversion = comfy_lora_to_kohya(
                state, fallback_version=version_for_family(config.family.value)
            )
        except ValueError as exc:
            raise BackendError(f"ComfyUI's {remote} cannot be converted: {exc}.") from None
        dataset = run.dataset or Dataset(Path(run.job.dataset_dir or "."), [])
        training = self.node_inputs.get("training_dtype") or (
            "fp32" if config.mixed_precision is MixedPrecision.NO else "bf16"
        )
        now = time.time()
        epochs = 0
        if run.dataset is not None and run.dataset.images:
            epochs = plan_steps(run.dataset.samples_per_epoch(config.repeats), config).epochs
        facts = RunFacts(
            base_model_version=conversion.base_model_version,
            base_model_name=run.checkpoint or run.job.base_model,
            num_train_images=len(dataset.images),
            num_reg_images=0,
            max_train_steps=run.steps,
            steps_done=run.steps,
            epochs=epochs,
            started_at=run.submitted_at,
            finished_at=now,
            mixed_precision=str(training),
        )
        out = unique_output_path(folder, name)
        meta = kohya_metadata(config, dataset, facts, out.stem)
        meta.update(
            {
                "ss_network_dim": str(conversion.rank),
                "ss_network_alpha": _number(conversion.alpha),
                "ss_optimizer": f"torch.optim.{_OPTIMIZERS[config.optimizer]}",
                "ss_lr_scheduler": "constant",
                "ss_lr_warmup_steps": "0",
                "ss_text_encoder_lr": "0",
                "ss_network_train_unet_only": "True",
                "ss_training_comment": (
                    f"trained on ComfyUI {self.server_version or ''} with LoRA Studio, "
                    f"preset {config.preset}"
                ).replace("  ", " "),
                "lora_studio.comfyui": json.dumps(
                    {
                        "server_version": self.server_version,
                        "prompt_id": run.prompt_id,
                        "checkpoint": run.checkpoint,
                        "file": remote,
                        "notes": conversion.notes,
                    }
                ),
            }
        )
        if conversion.conv_modules:
            meta["ss_network_args"] = json.dumps(
                {"conv_dim": str(conversion.rank), "conv_alpha": _number(conversion.alpha)}
            )
        if run.dataset is None:
            meta.pop("ss_tag_frequency", None)
            meta.pop("ss_dataset_dirs", None)
        path = save_kohya_lora(out, conversion.tensors, meta)
        return path, [
            *conversion.notes,
            f"The unconverted file stays on the server as output/{remote}.",
        ]

    # ---- HTTP ------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if not self._token_resolved:
            self._token = get_token(COMFYUI, self._explicit_token)
            self._token_resolved = True
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, url, headers=self._auth_headers(), **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.HTTPError) -> ComfyUIError:
        if isinstance(exc, httpx.ConnectError):
            reason = _one_line(redact(str(exc), self._token), 160) or "connection refused"
            return ComfyUIConnectionError(
                f"Cannot reach ComfyUI at {self.url} ({reason}); is the server running and the "
                f"address right?"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ComfyUIConnectionError(
                f"ComfyUI at {self.url} did not answer within {self.config.timeout_s:g} s."
            )
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return ComfyUIConnectionError(f"{self.url} is not a usable http(s) address.")
        return ComfyUIConnectionError(
            _one_line(
                f"Lost the connection to ComfyUI at {self.url}: {redact(str(exc), self._token) or type(exc).__name__}."
            )
        )

    async def _api_prefix(self) -> str:
        """``""`` or ``/api``: whichever the server answers ``/system_stats`` under."""
        if self._prefix is not None:
            return self._prefix
        async with self._prefix_lock:
            if self._prefix is not None:
                return self._prefix
            problem: ComfyUIError | None = None
            for prefix in self._prefixes:
                response = await self._send("GET", f"{self._root}{prefix}/system_stats")
                if response.status_code in (401, 403) or response.status_code >= 500:
                    self._check_status(response, "GET", "/system_stats")
                if response.status_code != 200:
                    continue
                try:
                    data = response.json()
                except ValueError:
                    problem = self._not_json("/system_stats")
                    continue
                if isinstance(data, dict) and ("system" in data or "devices" in data):
                    self._prefix = prefix
                    self._read_stats(data)
                    return prefix
            raise problem or ComfyUIResponseError(
                f"{self.url} does not look like a ComfyUI server (it has no /system_stats)."
            )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        accept: tuple[int, ...] = (200,),
        raw: bool = False,
        **kwargs: Any,
    ) -> Any:
        prefix = await self._api_prefix()
        response = await self._send(method, f"{self._root}{prefix}{path}", **kwargs)
        self._check_status(response, method, path, accept)
        if raw:
            return response
        if path == "/system_stats":
            data = self._json(response, path)
            self._read_stats(data)
            return data
        return self._json(response, path) if response.content else None

    def _check_status(
        self, response: httpx.Response, method: str, path: str, accept: tuple[int, ...] = (200,)
    ) -> None:
        status = response.status_code
        if status in accept:
            return
        if status in (401, 403):
            raise ComfyUIAuthError(
                f"ComfyUI at {self.url} refused the request (HTTP {status}): set the access "
                f"token its proxy expects (Edit › Settings in the window, or COMFYUI_API_TOKEN), "
                f"or check it."
            )
        detail = ""
        with contextlib.suppress(Exception):  # a streamed body that was not read: no detail
            text = response.content.decode("utf-8", "replace")
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                if isinstance(parsed, dict) and parsed.get("error"):
                    error = parsed["error"]
                    text = str(error.get("message") if isinstance(error, dict) else error)
            detail = _one_line(text, 160)
        if status == 404:
            raise ComfyUIResponseError(
                f"ComfyUI at {self.url} has no {path} (HTTP 404); is this ComfyUI, and recent "
                f"enough?",
                status,
            )
        raise ComfyUIResponseError(
            f"ComfyUI at {self.url} failed on {method} {path} (HTTP {status}"
            + (f": {detail}" if detail else "")
            + ").",
            status,
        )

    def _json(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self._not_json(path) from None

    def _not_json(self, path: str) -> ComfyUIResponseError:
        return ComfyUIResponseError(
            f"ComfyUI at {self.url} sent a reply to {path} that is not valid JSON; is the "
            f"address a ComfyUI server (not a login page or a proxy's error page)?"
        )


# ---- helpers ----------------------------------------------------------------------------------


def dataset_captions(dataset: Dataset, trigger_word: str) -> list[str]:
    """The caption each image is trained with (the trigger word first, as locally; the
    trigger word alone for an uncaptioned image).

    Raises:
        DatasetError: an image has neither a caption nor a trigger word to stand in (an
            empty caption makes ComfyUI's loader fail with a count mismatch).
    """
    captions = [training_caption(item, trigger_word) for item in dataset.images]
    empty = [
        item.name
        for item, caption in zip(dataset.images, captions, strict=True)
        if not caption.strip()
    ]
    if empty:
        shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise DatasetError(
            f"{len(empty)} image(s) have no caption ({shown}) and there is no trigger word to use "
            f"instead; ComfyUI's loader fails on an empty caption. Caption them or set a trigger "
            f"word."
        )
    return captions


def prepare_upload_image(
    item: ImageItem, config: LoraConfig, prepare: bool, mixed_sizes: bool
) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of the image to upload: resized and centre-cropped to the
    training size when ``prepare`` (to its bucket when ``mixed_sizes``), else the file
    itself (converted to PNG when ComfyUI's loader cannot read its format).

    Raises:
        DatasetError: the image cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    from lora_studio.core.buckets import placement_for, square_placement
    from lora_studio.core.imaging import open_upright_rgb

    suffix = item.path.suffix.lower()
    try:
        if not prepare and suffix in LOADER_IMAGE_TYPES:
            return suffix, item.path.read_bytes()
        image = open_upright_rgb(item.path)
        if prepare:
            width, height = image.size
            place = (
                placement_for(width, height, config)
                if mixed_sizes
                else square_placement(width, height, config.resolution)
            )
            image = image.resize(place.scaled, Image.Resampling.LANCZOS)
            left, top = place.crop_left, place.crop_top
            image = image.crop((left, top, left + place.bucket.width, top + place.bucket.height))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return ".png", buffer.getvalue()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"Cannot read the image {item.path}: {exc}.") from None


def _outcome_from_history(entry: Mapping[str, Any]) -> _Outcome:
    status = entry.get("status")
    if not isinstance(status, dict):
        return _Outcome("success")  # very old servers keep no status: done means done
    messages = status.get("messages") or []
    for item in messages:
        if isinstance(item, list) and len(item) > 1 and isinstance(item[1], dict):
            if item[0] == "execution_error":
                return _error_outcome(item[1])
            if item[0] == "execution_interrupted":
                return _Outcome("interrupted")
    if status.get("status_str") == "error":
        return _Outcome("error", "ComfyUI reports that the run failed (it gave no reason).")
    return _Outcome("success")


def _error_outcome(data: Mapping[str, Any]) -> _Outcome:
    node_type = data.get("node_type") or "a node"
    node_id = data.get("node_id")
    exception = str(data.get("exception_type") or "error").rsplit(".", 1)[-1]
    text = str(data.get("exception_message") or "").strip()
    where = f"{node_type} (node {node_id})" if node_id is not None else str(node_type)
    hint = ""
    lowered = text.lower()
    if "positive conditions" in lowered and "number of images" in lowered:
        hint = " (an image without a caption?)"
    elif "out of memory" in lowered:
        hint = " (out of GPU memory: lower the batch size or resolution, or turn gradient checkpointing on)"
    error = _one_line(f"ComfyUI's {where} failed: {exception}: {text}{hint}", 600)
    lines: list[str] = []
    for chunk in data.get("traceback") or []:
        lines.extend(line for line in str(chunk).splitlines() if line.strip())
    executed = tuple(str(n) for n in data.get("executed") or () if n is not None)
    return _Outcome("error", error, tuple(lines), str(data.get("node_type") or ""), executed)


def _copy_unique(source: Path, dest: Path) -> Path:
    from lora_studio.training.export import unique_output_path

    if dest.is_dir():
        target = unique_output_path(dest, source.stem)
    else:
        target = dest if not dest.exists() else unique_output_path(dest.parent, dest.stem)
    if target.resolve() == source.resolve():
        return target
    try:
        shutil.copy2(source, target)
    except OSError as exc:
        raise OutputError(f"Cannot write {target}: {exc.strerror or exc}.") from None
    return target


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{int(value)}.0"
