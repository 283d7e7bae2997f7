"""A ComfyUI stand-in for the tests: an aiohttp server on 127.0.0.1 (a random port) that
speaks ComfyUI's HTTP + WebSocket protocol as ComfyUI's own ``server.py``, ``execution.py``
and ``comfy_extras/nodes_train.py`` / ``nodes_dataset.py`` do.

Routes (each also under ``/api``, unless ``api_only``, then only there): ``/prompt``,
``/history[/{id}]``, ``/queue`` (GET; POST ``delete``/``clear``), ``/interrupt``,
``/upload/image`` (multipart; any file type; a subfolder escaping the input folder is a
400), ``/view``, ``/object_info[/{class}]``, ``/system_stats``, ``/models/{folder}``,
``/internal/logs/raw`` (not under ``/api``, as in ComfyUI) and ``/ws?clientId=``.

Two node generations (``generation=``):

* ``"old"`` - ComfyUI v0.3.64: ``LoadImageTextSetFromFolderNode`` (with its empty-caption
  count bug) + ``VAEEncode``, ``TrainLoraNode`` with four outputs, ``SaveLoRANode``. The
  training sends **no** ``progress`` events (only a tqdm bar in the console log), and
  ``/interrupt`` does not stop it: the steps run out, then ``execution_interrupted``, no
  LoRA saved;
* ``"new"`` - ``LoadImageTextDataSetFromFolder`` + ``MakeTrainingDataset``, ``TrainLoraNode``
  with three outputs (and ``checkpoint_depth``, ``offloading``, ``bucket_mode``,
  ``bypass_mode``), ``SaveLoRA``; ``progress`` events, and an interrupt stops the training
  at the next step.
* ``"none"`` - a server from before the training nodes.

A queued graph is validated against the server's own ``object_info`` (400 with
``node_errors`` as ComfyUI words them), then "executed" node by node: the dataset loaders
read the uploaded folder, the trainer steps at ``step_delay`` seconds a step, and the save
node writes a LoRA ``.safetensors`` in ComfyUI's internal key format (``diffusion_model.*``
``lora_down``/``lora_up``/``alpha``, convolutions flattened, ``.diff``/``.diff_b`` deltas)
made of real tensors, for the layers in ``modules`` (LDM/SGM names with their weight
shapes; :func:`ldm_modules_of_unet` lists a diffusers UNet's in ComfyUI's naming).

Failure knobs (attributes; change them any time): ``fail_routes`` ({path: status}),
``malformed_routes`` (200 with broken JSON), ``drop_ws_at_step`` (close every WebSocket once
training reaches that step), ``refuse_ws``, ``error_at_step`` (``execution_error`` with a
traceback), ``logs_enabled``, ``list_output_loras``, ``hold`` (keep prompts waiting),
``token`` (require ``Authorization: Bearer``), ``discard_uploads``, ``flat_loss``. Stop
the server for a refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import math
import os
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
OPTIMIZERS = ["AdamW", "Adam", "SGD", "RMSprop"]
LOSSES = ["MSE", "L1", "Huber", "SmoothL1"]
ALGORITHMS = ["LoRA", "LoHa", "LoKr", "OFT"]
VERSIONS = {"old": "0.3.64", "new": "0.3.75", "none": "0.3.30"}


@dataclass(frozen=True)
class ModuleShape:
    """A layer of the diffusion model: its weight's shape and whether it has a bias."""

    weight: tuple[int, ...]
    bias: bool = True


#: A few SD 1.x UNet layers in ComfyUI's (LDM) naming: enough for a LoRA file with linear
#: and 3x3/1x1 convolution LoRAs, norm deltas and bias deltas.
DEFAULT_MODULES: dict[str, ModuleShape] = {
    "input_blocks.0.0": ModuleShape((32, 4, 3, 3)),
    "input_blocks.1.0.in_layers.0": ModuleShape((32,)),
    "input_blocks.1.0.in_layers.2": ModuleShape((32, 32, 3, 3)),
    "input_blocks.1.1.proj_in": ModuleShape((32, 32, 1, 1)),
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q": ModuleShape((32, 32), bias=False),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k": ModuleShape((32, 768), bias=False),
    "input_blocks.1.1.transformer_blocks.0.norm1": ModuleShape((32,)),
    "input_blocks.3.0.op": ModuleShape((32, 32, 3, 3)),
    "input_blocks.4.0.skip_connection": ModuleShape((64, 32, 1, 1)),
    "output_blocks.2.1.conv": ModuleShape((64, 64, 3, 3)),
    "time_embed.0": ModuleShape((128, 32)),
}


class _NodeFailure(Exception):
    def __init__(self, node_id: str, exc: BaseException, traceback: list[str]) -> None:
        super().__init__(str(exc))
        self.node_id = node_id
        self.exc = exc
        self.traceback = traceback


class _Interrupted(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class FakeComfyUI:
    """The stand-in server (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        generation: str = "old",
        checkpoints: tuple[str, ...] = (
            "v1-5-pruned-emaonly.safetensors",
            "SDXL/sd_xl_base_1.0.safetensors",
        ),
        step_delay: float = 0.005,
        modules: Mapping[str, ModuleShape] | None = None,
        api_only: bool = False,
        device: str = "cpu",
    ) -> None:
        assert generation in VERSIONS
        self.root = Path(root)
        self.generation = generation
        self.version = VERSIONS[generation]
        self.checkpoints = list(checkpoints)
        self.step_delay = step_delay
        self.modules = dict(modules or DEFAULT_MODULES)
        self.api_only = api_only
        self.device = device
        self.dirs = {name: self.root / name for name in ("input", "output", "temp")}
        self.models = self.root / "models"
        for folder in (*self.dirs.values(), self.models / "loras", self.models / "checkpoints"):
            folder.mkdir(parents=True, exist_ok=True)
        # behaviour of the generation
        self.progress_events = generation == "new"
        self.interrupt_stops_training = generation == "new"
        # failure knobs
        self.fail_routes: dict[str, int] = {}
        self.malformed_routes: set[str] = set()
        self.drop_ws_at_step: int | None = None
        self.refuse_ws = False
        self.error_at_step: int | None = None
        self.logs_enabled = True
        self.list_output_loras = False
        self.hold = False
        self.token: str | None = None
        self.discard_uploads = False  # answer uploads but keep nothing (a broken proxy)
        self.flat_loss = False  # the loss plot divides by zero, as ComfyUI's does then
        # what happened
        self.uploads: list[dict[str, Any]] = []
        self.prompts: dict[str, dict[str, Any]] = {}
        self.loaded: dict[str, list[tuple[str, str]]] = {}
        self.saved: list[Path] = []
        self.interrupt_requests: list[dict[str, Any]] = []
        self.ws_connects = 0
        # state
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.pending: list[list[Any]] = []
        self.running: list[Any] | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.logs: deque[dict[str, str]] = deque(maxlen=300)
        self.number = 0
        self.client_id: str | None = None
        self.last_node: str | None = None
        self._interrupt = False
        self._dropped = False
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- life ------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._knobs], client_max_size=64 * 2**20)
        routes = [
            web.get("/ws", self._ws),
            web.get("/system_stats", self._system_stats),
            web.get("/object_info", self._object_info),
            web.get("/object_info/{node_class}", self._object_info_node),
            web.get("/prompt", self._get_prompt),
            web.post("/prompt", self._post_prompt),
            web.get("/queue", self._get_queue),
            web.post("/queue", self._post_queue),
            web.post("/interrupt", self._interrupt_route),
            web.get("/history", self._get_history),
            web.get("/history/{prompt_id}", self._get_history_one),
            web.post("/upload/image", self._upload),
            web.get("/view", self._view),
            web.get("/models/{folder}", self._models),
        ]
        app.add_routes(
            [web.route(r.method, "/api" + r.path, r.handler) for r in routes]  # type: ignore[attr-defined]
        )
        if not self.api_only:
            app.add_routes(routes)
        app.add_routes([web.get("/internal/logs/raw", self._logs_raw)])
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._worker = asyncio.get_running_loop().create_task(self._work())
        self._log("Starting server\n")
        self._log(f"To see the GUI go to: {self.url}\n")
        return self.url

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for socket in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        """Let held prompts run."""
        self.hold = False
        self._wake.set()

    # ---- middleware ------------------------------------------------------------------------

    @web.middleware
    async def _knobs(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path[4:] if request.path.startswith("/api/") else request.path
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized")
        for route, status in self.fail_routes.items():
            if path == route or path.startswith(route.rstrip("/") + "/"):
                return web.Response(
                    status=status, text="500 Internal Server Error\n\nServer got itself in trouble"
                )
        for route in self.malformed_routes:
            if path == route or path.startswith(route.rstrip("/") + "/"):
                return web.Response(
                    text='{"prompt_id": "abc", "number": ', content_type="application/json"
                )
        return await handler(request)

    # ---- console log -----------------------------------------------------------------------

    def _log(self, data: str) -> None:
        # As ComfyUI's LogInterceptor: a write starting with \r replaces an unfinished line.
        entry = {"t": datetime.datetime.now().isoformat(), "m": data}
        if data.startswith("\r") and self.logs and not self.logs[-1]["m"].endswith("\n"):
            self.logs.pop()
        self.logs.append(entry)

    async def _logs_raw(self, request: web.Request) -> web.Response:
        if not self.logs_enabled:
            return web.Response(status=404)
        return web.json_response({"entries": list(self.logs), "size": {"cols": 120, "rows": 40}})

    # ---- simple routes ---------------------------------------------------------------------

    async def _system_stats(self, request: web.Request) -> web.Response:
        vram = 24 * 2**30 if self.device != "cpu" else 32 * 2**30
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 32 * 2**30,
                    "ram_free": 16 * 2**30,
                    "comfyui_version": self.version,
                    "python_version": "3.12.3",
                    "pytorch_version": "2.8.0",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu"],
                },
                "devices": [
                    {
                        "name": "cpu"
                        if self.device == "cpu"
                        else "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
                        "type": self.device,
                        "index": None if self.device == "cpu" else 0,
                        "vram_total": vram,
                        "vram_free": vram // 2,
                        "torch_vram_total": vram,
                        "torch_vram_free": vram // 2,
                    }
                ],
            }
        )

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self._remaining()}})

    def _remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    async def _get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "queue_running": [list(self.running)] if self.running else [],
                "queue_pending": [list(item) for item in self.pending],
            }
        )

    async def _post_queue(self, request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("clear"):
            self.pending.clear()
        for prompt_id in data.get("delete") or []:
            self.pending = [item for item in self.pending if item[1] != prompt_id]
        return web.Response(status=200)

    async def _interrupt_route(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
        self.interrupt_requests.append(body)
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        if self.running and (wanted is None or wanted == self.running[1]):
            self._interrupt = True
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        return web.json_response(self.history)

    async def _get_history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def _models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder == "loras":
            names = sorted(p.name for p in (self.models / "loras").iterdir() if p.is_file())
            if self.list_output_loras and (self.dirs["output"] / "loras").is_dir():
                names += sorted(p.name for p in (self.dirs["output"] / "loras").iterdir())
            return web.json_response(names)
        if folder == "checkpoints":
            return web.json_response(self.checkpoints)
        return web.Response(status=404)

    # ---- files -----------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        if kind not in self.dirs:
            return web.Response(status=400)
        upload_dir = str(self.dirs[kind].resolve())
        subfolder = str(post.get("subfolder") or "")
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filename = image.filename
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, path)) != upload_dir:
            return web.Response(status=400)
        if not self.discard_uploads:
            os.makedirs(folder, exist_ok=True)
        overwrite = str(post.get("overwrite") or "") in ("true", "1")
        if not overwrite:
            stem, ext = os.path.splitext(filename)
            counter = 1
            while os.path.exists(path):
                filename = f"{stem} ({counter}){ext}"
                path = os.path.join(folder, filename)
                counter += 1
        data = image.file.read()
        if not self.discard_uploads:
            Path(path).write_bytes(data)
        self.uploads.append(
            {"subfolder": subfolder, "name": filename, "type": kind, "size": len(data)}
        )
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        filename = query.get("filename")
        if not filename:
            return web.Response(status=404)
        if filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        kind = query.get("type", "output")
        if kind not in self.dirs:
            return web.Response(status=400)
        base = str(self.dirs[kind].resolve())
        folder = base
        if "subfolder" in query:
            folder = os.path.abspath(os.path.join(base, query["subfolder"]))
            if os.path.commonpath((folder, base)) != base:
                return web.Response(status=403)
        path = os.path.join(folder, os.path.basename(filename))
        if os.path.isfile(path):
            return web.FileResponse(path, headers={"Content-Disposition": f'filename="{filename}"'})
        return web.Response(status=404)

    def _input_subfolders(self) -> list[str]:
        base = self.dirs["input"]
        return sorted(
            str(p.relative_to(base)).replace(os.sep, "/") for p in base.rglob("*") if p.is_dir()
        )

    # ---- object_info -----------------------------------------------------------------------

    def object_info(self) -> dict[str, dict[str, Any]]:
        old = self.generation == "old"

        def combo(options: list[Any], default: Any = None) -> list[Any]:
            if old:
                return [list(options), {"default": default} if default is not None else {}]
            return ["COMBO", {"options": list(options), "default": default}]

        def number(kind: str, default: Any, lo: Any, hi: Any, **extra: Any) -> list[Any]:
            return [kind, {"default": default, "min": lo, "max": hi, **extra}]

        def node(
            name: str,
            required: dict[str, Any],
            outputs: list[str],
            *,
            optional: dict[str, Any] | None = None,
            output_names: list[str] | None = None,
            output_node: bool = False,
            category: str = "training",
        ) -> dict[str, Any]:
            inputs: dict[str, Any] = {"required": required}
            if optional:
                inputs["optional"] = optional
            return {
                "input": inputs,
                "input_order": {k: list(v) for k, v in inputs.items()},
                "output": outputs,
                "output_is_list": [False] * len(outputs),
                "output_name": output_names or outputs,
                "name": name,
                "display_name": name,
                "description": "",
                "python_module": "comfy_extras.nodes_train",
                "category": category,
                "output_node": output_node,
                "experimental": True,
            }

        loras = sorted(p.name for p in (self.models / "loras").iterdir() if p.is_file())
        info: dict[str, dict[str, Any]] = {
            "CheckpointLoaderSimple": node(
                "CheckpointLoaderSimple",
                {"ckpt_name": combo(self.checkpoints)},
                ["MODEL", "CLIP", "VAE"],
                category="loaders",
            ),
            "VAEEncode": node(
                "VAEEncode",
                {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]},
                ["LATENT"],
                category="latent",
            ),
            "KSampler": node("KSampler", {"model": ["MODEL", {}]}, ["LATENT"], category="sampling"),
        }
        if self.generation == "none":
            return info
        train_required: dict[str, Any] = {
            "model": ["MODEL", {"tooltip": "The model to train the LoRA on."}],
            "latents": ["LATENT", {}],
            "positive": ["CONDITIONING", {}],
            "batch_size": number("INT", 1, 1, 10000),
            "grad_accumulation_steps": number("INT", 1, 1, 1024),
            "steps": number("INT", 16, 1, 100000),
            "learning_rate": number("FLOAT", 0.0005, 0.0000001, 1.0, step=0.0000001),
            "rank": number("INT", 8, 1, 128),
            "optimizer": combo(OPTIMIZERS, "AdamW"),
            "loss_function": combo(LOSSES, "MSE"),
            "seed": number("INT", 0, 0, 0xFFFFFFFFFFFFFFFF),
            "training_dtype": combo(["bf16", "fp32"], "bf16"),
            "lora_dtype": combo(["bf16", "fp32"], "bf16"),
            "algorithm": combo(ALGORITHMS, "LoRA"),
            "gradient_checkpointing": ["BOOLEAN", {"default": True}],
        }
        if old:
            train_required["existing_lora"] = combo([*loras, "[None]"], "[None]")
            info["TrainLoraNode"] = node(
                "TrainLoraNode",
                train_required,
                ["MODEL", "LORA_MODEL", "LOSS_MAP", "INT"],
                output_names=["model_with_lora", "lora", "loss", "steps"],
            )
            info["SaveLoRANode"] = node(
                "SaveLoRANode",
                {
                    "lora": ["LORA_MODEL", {}],
                    "prefix": ["STRING", {"default": "loras/ComfyUI_trained_lora"}],
                },
                [],
                optional={"steps": ["INT", {"forceInput": True}]},
                output_node=True,
                category="loaders",
            )
            info["LoadImageTextSetFromFolderNode"] = node(
                "LoadImageTextSetFromFolderNode",
                {"folder": combo(self._input_subfolders()), "clip": ["CLIP", {}]},
                ["IMAGE", "CONDITIONING"],
                optional={
                    "resize_method": combo(["None", "Stretch", "Crop", "Pad"], "None"),
                    "width": number("INT", -1, -1, 10000, step=1),
                    "height": number("INT", -1, -1, 10000, step=1),
                },
                category="loaders",
            )
            info["LoadImageSetFromFolderNode"] = node(
                "LoadImageSetFromFolderNode", {"folder": combo(self._input_subfolders())}, ["IMAGE"]
            )
        else:
            train_required.update(
                {
                    "checkpoint_depth": number("INT", 1, 1, 5),
                    "offloading": ["BOOLEAN", {"default": False}],
                    "existing_lora": combo([*loras, "[None]"], "[None]"),
                    "bucket_mode": ["BOOLEAN", {"default": False}],
                    "bypass_mode": ["BOOLEAN", {"default": False}],
                }
            )
            info["TrainLoraNode"] = node(
                "TrainLoraNode",
                train_required,
                ["LORA_MODEL", "LOSS_MAP", "INT"],
                output_names=["lora", "loss_map", "steps"],
            )
            info["SaveLoRA"] = node(
                "SaveLoRA",
                {
                    "lora": ["LORA_MODEL", {}],
                    "prefix": ["STRING", {"default": "loras/ComfyUI_trained_lora"}],
                },
                [],
                optional={"steps": ["INT", {"forceInput": True}]},
                output_node=True,
                category="loaders",
            )
            info["LoadImageTextDataSetFromFolder"] = node(
                "LoadImageTextDataSetFromFolder",
                {"folder": combo(self._input_subfolders())},
                ["IMAGE", "STRING"],
                category="dataset",
            )
            info["LoadImageTextDataSetFromFolder"]["output_is_list"] = [True, True]
            info["MakeTrainingDataset"] = node(
                "MakeTrainingDataset",
                {"images": ["IMAGE", {}], "vae": ["VAE", {}], "clip": ["CLIP", {}]},
                ["LATENT", "CONDITIONING"],
                optional={"texts": ["STRING", {"forceInput": True}]},
                category="dataset",
            )
        info["LossGraphNode"] = node(
            "LossGraphNode",
            {
                "loss": ["LOSS_MAP", {"default": {}}],
                "filename_prefix": ["STRING", {"default": "loss_graph"}],
            },
            [],
            output_node=True,
        )
        info["LoraModelLoader"] = node(
            "LoraModelLoader",
            {
                "model": ["MODEL", {}],
                "lora": ["LORA_MODEL", {}],
                "strength_model": number("FLOAT", 1.0, -100.0, 100.0),
            },
            ["MODEL"],
            category="loaders",
        )
        return info

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.object_info())

    async def _object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        info = self.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    # ---- /prompt: validation ----------------------------------------------------------------

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            return web.json_response({"error": "invalid json", "node_errors": {}}, status=400)
        if "prompt" not in data:
            return web.json_response(
                {
                    "error": {
                        "type": "no_prompt",
                        "message": "No prompt provided",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                status=400,
            )
        graph = data["prompt"]
        error, node_errors, outputs = self.validate(graph)
        if error is not None:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(data.get("extra_data") or {})
        if "client_id" in data:
            extra["client_id"] = data["client_id"]
        prompt_id = str(data.get("prompt_id") or uuid.uuid4())
        number = self.number
        self.number += 1
        self.prompts[prompt_id] = graph
        self.pending.append([number, prompt_id, graph, extra, outputs])
        self._wake.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def validate(self, graph: Any) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
        """``(error, node_errors, outputs)`` as ComfyUI's ``execution.validate_prompt``."""
        info = self.object_info()

        def error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
            return {"type": kind, "message": message, "details": details, "extra_info": extra}

        if not isinstance(graph, dict):
            return error("invalid_prompt", "Invalid prompt: the prompt is not a dictionary"), {}, []
        for node_id, node in graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return (
                    error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    ),
                    {},
                    [],
                )
            if node["class_type"] not in info:
                return (
                    error(
                        "missing_node_type",
                        f"Cannot execute because node {node['class_type']} does not exist.",
                        f"Node ID '#{node_id}'",
                        node_id=node_id,
                        class_type=node["class_type"],
                    ),
                    {},
                    [],
                )
        outputs = [n for n, node in graph.items() if info[node["class_type"]].get("output_node")]
        if not outputs:
            return error("prompt_no_outputs", "Prompt has no outputs"), {}, []
        checked: dict[str, list[dict[str, Any]]] = {}

        def check(node_id: str) -> None:
            if node_id in checked:
                return
            checked[node_id] = []
            node = graph[node_id]
            schema = info[node["class_type"]]["input"]
            specs = {**schema.get("required", {}), **schema.get("optional", {})}
            inputs = node.get("inputs") or {}
            found = checked[node_id]
            for name in schema.get("required", {}):
                if name not in inputs:
                    found.append(
                        error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            input_name=name,
                        )
                    )
            for name, value in inputs.items():
                spec = specs.get(name)
                if spec is None:
                    continue
                kind, opts = spec[0], spec[1] if len(spec) > 1 else {}
                if isinstance(value, list):
                    if len(value) != 2 or str(value[0]) not in graph:
                        found.append(
                            error(
                                "bad_linked_input",
                                "Bad linked input, must be a length-2 list of [string, int]",
                                name,
                            )
                        )
                        continue
                    source = graph[str(value[0])]
                    out_types = info[source["class_type"]]["output"]
                    index = int(value[1])
                    received = out_types[index] if 0 <= index < len(out_types) else None
                    if received != kind:
                        found.append(
                            error(
                                "return_type_mismatch",
                                "Return type mismatch between linked nodes",
                                f"{name}, received_type({received}) mismatch input_type({kind})",
                            )
                        )
                    check(str(value[0]))
                    continue
                options = (
                    kind
                    if isinstance(kind, list)
                    else opts.get("options")
                    if kind == "COMBO"
                    else None
                )
                if options is not None:
                    if value not in options:
                        shown = options if len(options) < 20 else [*options[:20], "..."]
                        found.append(
                            error(
                                "value_not_in_list",
                                "Value not in list",
                                f"{name}: '{value}' not in {shown}",
                                input_name=name,
                                received_value=value,
                            )
                        )
                elif kind in ("INT", "FLOAT"):
                    try:
                        number = int(value) if kind == "INT" else float(value)
                    except (TypeError, ValueError):
                        found.append(
                            error(
                                "invalid_input_type",
                                f"Failed to convert an input value to a {kind} value",
                                f"{name}, {value}",
                            )
                        )
                        continue
                    if opts.get("min") is not None and number < opts["min"]:
                        found.append(
                            error(
                                "value_smaller_than_min",
                                f"Value {number} smaller than min of {opts['min']}",
                                name,
                            )
                        )
                    if opts.get("max") is not None and number > opts["max"]:
                        found.append(
                            error(
                                "value_bigger_than_max",
                                f"Value {number} bigger than max of {opts['max']}",
                                name,
                            )
                        )

        node_errors: dict[str, Any] = {}
        for output in outputs:
            check(output)
        for node_id, errors in checked.items():
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": outputs,
                    "class_type": graph[node_id]["class_type"],
                }
        if node_errors:
            return (
                error("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
                node_errors,
                outputs,
            )
        return None, {}, outputs

    # ---- the WebSocket ---------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_ws:
            return web.Response(status=404)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        old = self.sockets.pop(sid, None)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        self.sockets[sid] = socket
        self.ws_connects += 1
        try:
            await socket.send_str(
                json.dumps(
                    {
                        "type": "status",
                        "data": {
                            "status": {"exec_info": {"queue_remaining": self._remaining()}},
                            "sid": sid,
                        },
                    }
                )
            )
            if self.client_id == sid and self.last_node is not None:
                await socket.send_str(
                    json.dumps({"type": "executing", "data": {"node": self.last_node}})
                )
            async for message in socket:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if self.sockets.get(sid) is socket:
                self.sockets.pop(sid, None)
        return socket

    async def _send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        targets = (
            list(self.sockets.values())
            if sid is None
            else [self.sockets[sid]]
            if sid in self.sockets
            else []
        )
        for socket in targets:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.send_str(json.dumps({"type": event, "data": data}))

    async def _send_preview(self, sid: str | None) -> None:
        socket = self.sockets.get(sid or "")
        if socket is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await socket.send_bytes(
                    struct.pack(">I", 1) + struct.pack(">I", 2) + b"\x89PNG\r\n\x1a\n"
                )

    async def drop_websockets(self) -> None:
        for socket in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await socket.close(code=1011, message=b"going away")

    # ---- execution -------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            if not self.pending or self.hold:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.pending.sort(key=lambda item: item[0])
            item = self.pending.pop(0)
            await self._execute(item)

    async def _execute(self, item: list[Any]) -> None:
        number, prompt_id, graph, extra, outputs = item[:5]
        self.running = item
        self.client_id = extra.get("client_id")
        sid = self.client_id
        messages: list[list[Any]] = []

        async def send(event: str, data: dict[str, Any]) -> None:
            if event in (
                "execution_start",
                "execution_cached",
                "execution_success",
                "execution_error",
                "execution_interrupted",
            ):
                messages.append([event, data])
            await self._send(event, data, sid)

        def stamp() -> int:
            return int(time.time() * 1000)

        self._log("got prompt\n")
        await send("execution_start", {"prompt_id": prompt_id, "timestamp": stamp()})
        await send("execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": stamp()})
        order = self._order(graph, outputs)
        values: dict[str, tuple[Any, ...]] = {}
        ui_outputs: dict[str, Any] = {}
        executed: list[str] = []
        ok = False
        started = time.perf_counter()
        try:
            for node_id in order:
                if self._interrupt:
                    raise _Interrupted(node_id)
                self.last_node = node_id
                await send(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                )
                # newer servers announce each node's progress state, progress bar or not
                state = _node_state(node_id, prompt_id, 0, 1)
                await send("progress_state", {"prompt_id": prompt_id, "nodes": {node_id: state}})
                node = graph[node_id]
                inputs = {
                    name: values[str(v[0])][int(v[1])] if isinstance(v, list) else v
                    for name, v in (node.get("inputs") or {}).items()
                }
                try:
                    result, ui = await self._run_node(
                        prompt_id, node_id, node["class_type"], inputs, sid
                    )
                except (_Interrupted, _NodeFailure):
                    raise
                except Exception as exc:
                    raise _NodeFailure(
                        node_id,
                        exc,
                        [
                            "Traceback (most recent call last):\n",
                            '  File "/ComfyUI/execution.py", line 496, in execute\n    output_data, output_ui = get_output_data(obj, input_data_all)\n',
                            f"{type(exc).__name__}: {exc}\n",
                        ],
                    ) from exc
                values[node_id] = result
                executed.append(node_id)
                if ui:
                    ui_outputs[node_id] = ui
                    await send(
                        "executed",
                        {
                            "node": node_id,
                            "display_node": node_id,
                            "output": ui,
                            "prompt_id": prompt_id,
                        },
                    )
            await send("execution_success", {"prompt_id": prompt_id, "timestamp": stamp()})
            ok = True
            self._log(f"Prompt executed in {time.perf_counter() - started:.2f} seconds\n")
        except _Interrupted as stop:
            self._log("Processing interrupted\n")
            await send(
                "execution_interrupted",
                {
                    "prompt_id": prompt_id,
                    "node_id": stop.node_id,
                    "node_type": graph[stop.node_id]["class_type"],
                    "executed": executed,
                    "timestamp": stamp(),
                },
            )
        except _NodeFailure as failure:
            self._log(f"!!! Exception during processing !!! {failure.exc}\n")
            await send(
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": failure.node_id,
                    "node_type": graph[failure.node_id]["class_type"],
                    "executed": executed,
                    "exception_message": str(failure.exc),
                    "exception_type": type(failure.exc).__name__,
                    "traceback": failure.traceback,
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": stamp(),
                },
            )
        finally:
            self.history[prompt_id] = {
                "prompt": list(item),
                "outputs": ui_outputs,
                "status": {
                    "status_str": "success" if ok else "error",
                    "completed": ok,
                    "messages": messages,
                },
                "meta": {
                    n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                    for n in ui_outputs
                },
            }
            self.running = None
            self._interrupt = False
            self.last_node = None
            await self._send("executing", {"node": None, "prompt_id": prompt_id}, sid)
            await self._send(
                "status", {"status": {"exec_info": {"queue_remaining": self._remaining()}}}, None
            )

    @staticmethod
    def _order(graph: dict[str, Any], outputs: list[str]) -> list[str]:
        order: list[str] = []

        def visit(node_id: str) -> None:
            if node_id in order:
                return
            for value in (graph[node_id].get("inputs") or {}).values():
                if isinstance(value, list):
                    visit(str(value[0]))
            order.append(node_id)

        for output in outputs:
            visit(output)
        return order

    async def _run_node(
        self, prompt_id: str, node_id: str, class_type: str, inputs: dict[str, Any], sid: str | None
    ) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        await asyncio.sleep(0)
        if class_type == "CheckpointLoaderSimple":
            return (f"MODEL:{inputs['ckpt_name']}", "CLIP", "VAE"), None
        if class_type in ("LoadImageTextSetFromFolderNode", "LoadImageTextDataSetFromFolder"):
            folder = self.dirs["input"] / inputs["folder"]
            if not folder.resolve().is_relative_to(self.dirs["input"].resolve()):
                raise ValueError(f"Invalid folder name {inputs['folder']!r}")
            self._log(f"Loading images from folder: {inputs['folder']}\n")
            files, captions = self._read_folder(folder)
            self.loaded[prompt_id] = [
                (str(f.relative_to(folder)).replace(os.sep, "/"), c)
                for f, c in zip(files, captions, strict=True)
            ]
            if not files:
                raise ValueError("No valid images found in input")
            if class_type == "LoadImageTextDataSetFromFolder":
                return (files, captions), None
            self._check_sizes(files, inputs.get("resize_method", "None"), inputs.get("width", -1))
            conditions: list[str] = []
            for caption in captions:
                if caption == "":
                    conditions.append("")  # v0.3.64 adds the empty condition twice
                conditions.append(caption)
            self._log(f"Loaded {len(files)} images from {folder}.\n")
            return (files, conditions), None
        if class_type == "VAEEncode":
            return ({"samples": len(inputs["pixels"])},), None
        if class_type == "MakeTrainingDataset":
            images, texts = inputs["images"], list(inputs.get("texts") or [])
            if not texts:
                texts = [""]
            if len(texts) == 1 and len(images) > 1:
                texts = texts * len(images)
            elif len(texts) != len(images):
                raise ValueError(
                    f"Number of texts ({len(texts)}) does not match number of images ({len(images)}). "
                    f"Text list should have length {len(images)}, 1, or 0."
                )
            return ([{"samples": 1} for _ in images], texts), None
        if class_type == "TrainLoraNode":
            return await self._train(prompt_id, node_id, inputs, sid), None
        if class_type in ("SaveLoRA", "SaveLoRANode"):
            path = self._save_lora(inputs["lora"], inputs["prefix"], inputs.get("steps"))
            self.saved.append(path)
            return (), None
        if class_type == "LossGraphNode":
            values = inputs["loss"]["loss"]
            low, high = min(values), max(values)
            if self.flat_loss:
                high = low
            # as ComfyUI's plot: scaled by the range, which one step (or a flat loss) makes 0
            _ = [(value - low) / (high - low) for value in values]
            name = f"{inputs['filename_prefix']}_{time.strftime('%Y%m%d_%H%M%S')}.png"
            from PIL import Image

            Image.new("RGB", (8, 8), "white").save(self.dirs["temp"] / name)
            return (), {"images": [{"filename": name, "subfolder": "", "type": "temp"}]}
        raise ValueError(f"The stand-in cannot run {class_type}")

    @staticmethod
    def _read_folder(folder: Path) -> tuple[list[Path], list[str]]:
        files: list[Path] = []
        for entry in sorted(os.listdir(folder)):
            path = folder / entry
            if entry.lower().endswith(IMAGE_EXTENSIONS):
                files.append(path)
            elif path.is_dir():
                repeat = int(entry.split("_")[0]) if entry.split("_")[0].isdigit() else 1
                inner = [
                    path / f
                    for f in sorted(os.listdir(path))
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                ]
                files.extend(inner * repeat)
        captions = []
        for file in files:
            caption = file.with_suffix(".txt")
            captions.append(caption.read_text(encoding="utf-8").strip() if caption.exists() else "")
        return files, captions

    @staticmethod
    def _check_sizes(files: list[Path], method: str, width: int) -> None:
        from PIL import Image

        sizes = set()
        for file in files:
            with Image.open(file) as image:
                sizes.add(image.size)
        if len(sizes) > 1 and method == "None":
            raise ValueError(
                "Your input image size does not match the first image in the dataset. Either "
                "select a valid resize method or use the same size for all images."
            )

    async def _train(
        self, prompt_id: str, node_id: str, inputs: dict[str, Any], sid: str | None
    ) -> tuple[Any, ...]:
        latents, positive = inputs["latents"], inputs["positive"]
        count = latents["samples"] if isinstance(latents, dict) else len(latents)
        conditions = len(positive)
        self._log(f"Total Images: {count}, Total Captions: {conditions}\n")
        if not (conditions == 1 and count > 1) and conditions != count:
            raise ValueError(
                f"Number of positive conditions ({conditions}) does not match number of images ({count})."
            )
        steps = int(inputs["steps"])
        total = steps * int(inputs["grad_accumulation_steps"])
        loss_map: dict[str, list[float]] = {"loss": []}
        started = time.perf_counter()
        self._log(f"\rTraining LoRA:   0%|          | 0/{total} [00:00<?, ?it/s]")
        for i in range(total):
            if self._interrupt and self.interrupt_stops_training:
                raise _Interrupted(node_id)
            await asyncio.sleep(self.step_delay)
            done = i + 1
            loss = 0.2 + 0.1 * math.exp(-done / max(total, 1))
            loss_map["loss"].append(loss)
            elapsed = time.perf_counter() - started
            rate = done / max(elapsed, 1e-6)
            left = (total - done) / max(rate, 1e-6)
            filled = int(10 * done / total)
            bar = "\u2588" * filled + " " * (10 - filled)
            self._log(
                f"\rTraining LoRA: {int(100 * done / total):3d}%|{bar}| {done}/{total} "
                f"[{_clock(elapsed)}<{_clock(left)}, {rate:5.2f}it/s, loss={loss:.4f}]"
            )
            if self.progress_events:
                await self._send(
                    "progress",
                    {"value": done, "max": total, "prompt_id": prompt_id, "node": node_id},
                    sid,
                )
                state = _node_state(node_id, prompt_id, done, total)
                await self._send(
                    "progress_state", {"prompt_id": prompt_id, "nodes": {node_id: state}}, sid
                )
                if done == 1:
                    await self._send_preview(sid)
            if self.error_at_step == done:
                raise _NodeFailure(
                    node_id,
                    RuntimeError("CUDA error: out of memory"),
                    [
                        "Traceback (most recent call last):\n",
                        '  File "/ComfyUI/comfy_extras/nodes_train.py", line 132, in sample\n    loss.backward()\n',
                        "RuntimeError: CUDA error: out of memory\n",
                    ],
                )
            if self.drop_ws_at_step == done and not self._dropped:
                self._dropped = True
                await self.drop_websockets()
        self._log("\n")
        lora = make_lora_state(
            self.modules, int(inputs["rank"]), str(inputs["lora_dtype"]), int(inputs["seed"])
        )
        if self.generation == "old":
            return ("MODEL+LORA", lora, loss_map, steps)
        return (lora, loss_map, steps)

    def _save_lora(self, lora: dict[str, Any], prefix: str, steps: int | None) -> Path:
        from safetensors.torch import save_file

        folder, filename, counter = save_path(prefix, self.dirs["output"])
        name = (
            f"{filename}_{counter:05}_.safetensors"
            if steps is None
            else f"{filename}_{steps}_steps_{counter:05}_.safetensors"
        )
        path = folder / name
        save_file(lora, str(path))
        return path


# ---- helpers ---------------------------------------------------------------------------------


def save_path(prefix: str, output_dir: Path) -> tuple[Path, str, int]:
    """``(folder, filename, counter)`` as ComfyUI's ``folder_paths.get_save_image_path``
    finds them: the counter is one more than the largest number after ``<filename>_`` among
    the folder's files (for ``<prefix>_<steps>_steps_<counter>_`` names that number is the
    steps: a reused prefix misparses)."""
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = output_dir / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    counters = []
    for existing in os.listdir(folder):
        head = existing[: len(filename) + 1]
        if head[:-1].lower() == filename.lower() and head.endswith("_"):
            try:
                counters.append(int(existing[len(filename) + 1 :].split("_")[0]))
            except ValueError:
                counters.append(0)
    return folder, filename, (max(counters) + 1 if counters else 1)


def make_lora_state(
    modules: Mapping[str, ModuleShape], rank: int, dtype: str, seed: int
) -> dict[str, Any]:
    """A LoRA state dict as ComfyUI's ``TrainLoraNode`` returns it (random, non-zero)."""
    import torch

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for name, shape in modules.items():
        key = f"diffusion_model.{name}"
        if len(shape.weight) >= 2:
            flat_in = math.prod(shape.weight[1:])
            state[f"{key}.lora_up.weight"] = (
                torch.randn(shape.weight[0], rank, generator=generator) * 0.05
            ).to(torch_dtype)
            state[f"{key}.lora_down.weight"] = (
                torch.randn(rank, flat_in, generator=generator) * 0.05
            ).to(torch_dtype)
            state[f"{key}.alpha"] = torch.tensor(1.0, dtype=torch_dtype)
        else:
            state[f"{key}.diff"] = (torch.randn(shape.weight, generator=generator) * 1e-3).to(
                torch_dtype
            )
        if shape.bias:
            state[f"{key}.diff_b"] = (torch.randn(shape.weight[0], generator=generator) * 1e-3).to(
                torch_dtype
            )
    return state


_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def diffusers_to_ldm(name: str, layers_per_block: int, up_attention: list[bool]) -> str:
    """ComfyUI's (LDM) name of a diffusers ``UNet2DConditionModel`` layer, as ComfyUI's
    ``comfy.utils.unet_to_diffusers`` maps them."""
    if name in _TOP:
        return _TOP[name]
    per_level = layers_per_block + 1
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", name):
        level, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + per_level * level + index
        return (
            f"input_blocks.{block}.0.{_RESNET[rest]}"
            if kind == "resnets"
            else f"input_blocks.{block}.1.{rest}"
        )
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv$", name):
        return f"input_blocks.{1 + per_level * int(m[1]) + layers_per_block}.0.op"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", name):
        return f"middle_block.{0 if m[1] == '0' else 2}.{_RESNET[m[2]]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)$", name):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", name):
        level, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = per_level * level + index
        return (
            f"output_blocks.{block}.0.{_RESNET[rest]}"
            if kind == "resnets"
            else f"output_blocks.{block}.1.{rest}"
        )
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv$", name):
        level = int(m[1])
        return f"output_blocks.{per_level * level + layers_per_block}.{2 if up_attention[level] else 1}.conv"
    raise KeyError(name)


def ldm_modules_of_unet(unet: Any) -> dict[str, ModuleShape]:
    """Every layer of a diffusers SD-style UNet that ComfyUI's ``TrainLoraNode`` adapts
    (linear, convolution and norm layers), under ComfyUI's names."""
    import torch

    layers_per_block = int(unet.config.layers_per_block)
    up_attention = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    found: dict[str, ModuleShape] = {}
    for name, module in unet.named_modules():
        if isinstance(
            module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
        ):
            if module.weight is None:
                continue
            found[diffusers_to_ldm(name, layers_per_block, up_attention)] = ModuleShape(
                tuple(module.weight.shape), module.bias is not None
            )
    return found


def _node_state(node_id: str, prompt_id: str, value: float, maximum: float) -> dict[str, Any]:
    return {
        "value": value,
        "max": maximum,
        "state": "running",
        "node_id": node_id,
        "prompt_id": prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
    }


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def png_bytes(size: tuple[int, int] = (16, 16), color: str = "red") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()
