"""A Replicate stand-in on loopback: the parts of Replicate's HTTP API that LoRA Studio uses,
as documented (replicate.com/docs/reference/http), with knobs for its failure modes.

Two sites on 127.0.0.1, random ports: the API (``/v1/...``, Bearer token required) and a
"delivery" host serving the trained weights without authentication, as
``replicate.delivery`` does.

A training advances one tick per ``GET /v1/trainings/{id}``: ``starting`` -> ``processing``
(setup logs, then a growing tqdm bar with losses, then saving) -> ``succeeded`` with
``metrics.predict_time`` and ``output.weights``.

Failure knobs:
- :meth:`ReplicateStandIn.fault` queues replies for a route (by its name, e.g.
  ``"trainings.get"``): a status with an RFC 7807 body, ``Retry-After``, or a raw body
  (malformed JSON);
- ``fail_at_step``: trainings fail there with a Python traceback in the logs;
- ``weights_kind``: ``"tar"`` (as ostris/flux-dev-lora-trainer packs it), ``"zip"``,
  ``"traversal"`` (a ``../`` member), ``"link"`` (a symlink member);
- a refused connection: :func:`closed_port`.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import uuid
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from safetensors.numpy import save as save_safetensors

TOKEN = "r8_StandInToken0123456789abcdefXYZ"
ACCOUNT = "lora-tester"
FLUX_TRAINER = "ostris/flux-dev-lora-trainer"
SDXL_TRAINER = "stability-ai/sdxl"
TRAINER_VERSIONS = {
    FLUX_TRAINER: "f1" * 32,
    SDXL_TRAINER: "5d" * 32,
}
PREDICT_TIME = 93.5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: the LoRA in the weights, as ai-toolkit saves a Flux LoRA (diffusers keys, fp16)
LORA_TENSORS = {
    "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": np.full(
        (4, 64), 0.5, np.float16
    ),
    "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": np.full(
        (64, 4), 0.25, np.float16
    ),
}
LORA_METADATA = {"name": "flux_train_replicate", "software": "ai-toolkit"}


@dataclass
class Fault:
    """One canned reply: ``status`` with an RFC 7807 body, or ``body`` as given."""

    status: int = 500
    detail: str = "Internal server error"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def problem(status: int, detail: str, title: str | None = None, **extra: Any) -> web.Response:
    body = {"title": title or _TITLES.get(status, "Error"), "detail": detail, "status": status}
    body.update(extra)
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    422: "Input validation failed",
    429: "Too many requests",
    500: "Internal server error",
}


class ReplicateStandIn:
    def __init__(self, *, steps_per_poll: int = 3) -> None:
        self.steps_per_poll = steps_per_poll
        self.fail_at_step: int | None = None
        self.weights_kind = "tar"
        self.files: dict[str, bytes] = {}
        self.file_metadata: dict[str, Any] = {}
        self.models: dict[str, dict[str, Any]] = {
            name: self._model(name, version) for name, version in TRAINER_VERSIONS.items()
        }
        self.created_models: list[dict[str, Any]] = []
        self.trainings: dict[str, dict[str, Any]] = {}
        self._ticks: dict[str, int] = {}
        #: every request: (route name, method, path, Authorization header or None)
        self.requests: list[tuple[str, str, str, str | None]] = []
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.upload_errors: list[str] = []
        self._runners: list[web.AppRunner] = []
        self.api_url = ""
        self.delivery_url = ""

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> ReplicateStandIn:
        api = web.Application(middlewares=[self._middleware], client_max_size=512 * 1024**2)
        api.router.add_get("/v1/account", self._account, name="account.get")
        api.router.add_post("/v1/files", self._files_create, name="files.create")
        api.router.add_get("/v1/models/{owner}/{name}", self._models_get, name="models.get")
        api.router.add_post("/v1/models", self._models_create, name="models.create")
        api.router.add_post(
            "/v1/models/{owner}/{name}/versions/{version}/trainings",
            self._trainings_create,
            name="trainings.create",
        )
        api.router.add_get("/v1/trainings/{id}", self._trainings_get, name="trainings.get")
        api.router.add_post(
            "/v1/trainings/{id}/cancel", self._trainings_cancel, name="trainings.cancel"
        )
        delivery = web.Application(middlewares=[self._middleware])
        delivery.router.add_get("/pbxt/{id}/trained_model.tar", self._weights, name="weights")
        self.api_url = await self._serve(api)
        self.delivery_url = await self._serve(delivery)
        return self

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    # ---- knobs -----------------------------------------------------------------------

    def fault(self, route: str, *faults: Fault) -> None:
        """Answer the next requests to ``route`` with ``faults``, in order."""
        self.faults[route].extend(faults)

    def count(self, route: str) -> int:
        return sum(1 for r in self.requests if r[0] == route)

    # ---- plumbing --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.name or "?"
        auth = request.headers.get("Authorization")
        self.requests.append((route, request.method, request.path, auth))
        if self.faults.get(route):
            fault = self.faults[route].pop(0)
            if fault.body is not None:
                return web.Response(
                    status=fault.status,
                    body=fault.body,
                    headers=fault.headers,
                    content_type="application/json",
                )
            response = problem(fault.status, fault.detail)
            response.headers.update(fault.headers)
            return response
        if route != "weights" and auth != f"Bearer {TOKEN}":
            return problem(401, "You did not pass a valid authentication token")
        return await handler(request)

    @staticmethod
    def _model(full_name: str, version: str | None) -> dict[str, Any]:
        owner, name = full_name.split("/")
        return {
            "url": f"https://replicate.com/{full_name}",
            "owner": owner,
            "name": name,
            "description": None,
            "visibility": "public",
            "latest_version": (
                {"id": version, "created_at": "2024-08-14T14:44:34.153574Z", "cog_version": "0.9"}
                if version
                else None
            ),
        }

    # ---- routes ----------------------------------------------------------------------

    async def _account(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "user", "username": ACCOUNT, "name": "LoRA Tester", "github_url": None}
        )

    async def _files_create(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return problem(400, "The request must be multipart/form-data.")
        content: bytes | None = None
        filename = ""
        metadata: Any = {}
        reader = await request.multipart()
        async for part in reader:
            if part.name == "content":
                content = await part.read()  # type: ignore[union-attr]
                filename = part.filename or ""  # type: ignore[union-attr]
            elif part.name == "metadata":
                metadata = json.loads(await part.text())  # type: ignore[union-attr]
        if content is None:
            return problem(400, "Missing the file part 'content'.")
        error = self._check_dataset_zip(content)
        if error:
            self.upload_errors.append(error)
            return problem(400, error)
        file_id = uuid.uuid4().hex[:24]
        self.files[file_id] = content
        self.file_metadata[file_id] = metadata
        return web.json_response(
            {
                "id": file_id,
                "name": filename,
                "content_type": "application/zip",
                "size": len(content),
                "checksums": {},
                "metadata": metadata,
                "created_at": _now(),
                "urls": {"get": f"{self.api_url}/v1/files/{file_id}"},
            },
            status=201,
        )

    @staticmethod
    def _check_dataset_zip(content: bytes) -> str | None:
        try:
            names = zipfile.ZipFile(io.BytesIO(content)).namelist()
        except zipfile.BadZipFile:
            return "input_images must be a zip file"
        images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            return "The zip holds no images."
        for image in images:
            if image.rsplit(".", 1)[0] + ".txt" not in names:
                return f"{image} has no caption file beside it."
        return None

    async def _models_get(self, request: web.Request) -> web.Response:
        full = f"{request.match_info['owner']}/{request.match_info['name']}"
        if full not in self.models:
            return problem(404, "Not found.")
        return web.json_response(self.models[full])

    async def _models_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        missing = [k for k in ("owner", "name", "visibility", "hardware") if not body.get(k)]
        if missing:
            return problem(400, f"Missing fields: {', '.join(missing)}.")
        if body["owner"] != ACCOUNT:
            return problem(403, f"You don't have permission to create models for {body['owner']}.")
        full = f"{body['owner']}/{body['name']}"
        if full in self.models:
            return problem(409, "A model with that name and owner already exists.")
        self.created_models.append(body)
        self.models[full] = self._model(full, None) | {"visibility": body["visibility"]}
        return web.json_response(self.models[full], status=201)

    async def _trainings_create(self, request: web.Request) -> web.Response:
        trainer = f"{request.match_info['owner']}/{request.match_info['name']}"
        version = request.match_info["version"]
        if TRAINER_VERSIONS.get(trainer) != version:
            return problem(404, f"Version {version} of {trainer} not found.")
        body = await request.json()
        destination = body.get("destination")
        if destination not in self.models or destination in TRAINER_VERSIONS:
            return problem(404, "The specified training destination does not exist")
        inputs = body.get("input") or {}
        url = inputs.get("input_images", "")
        if url.rsplit("/", 1)[-1] not in self.files:
            return problem(
                422,
                "Input validation failed",
                invalid_fields=[
                    {"type": "format", "field": "input_images", "description": "unknown file"}
                ],
            )
        training_id = uuid.uuid4().hex[:26]
        self.trainings[training_id] = {
            "id": training_id,
            "model": trainer,
            "version": version,
            "destination": destination,
            "input": inputs,
            "logs": "",
            "error": None,
            "status": "starting",
            "output": None,
            "metrics": {},
            "created_at": _now(),
            "started_at": None,
            "completed_at": None,
            "urls": {
                "get": f"{self.api_url}/v1/trainings/{training_id}",
                "cancel": f"{self.api_url}/v1/trainings/{training_id}/cancel",
            },
        }
        self._ticks[training_id] = 0
        return web.json_response(self.trainings[training_id], status=201)

    async def _trainings_get(self, request: web.Request) -> web.Response:
        training = self.trainings.get(request.match_info["id"])
        if training is None:
            return problem(404, "Not found.")
        self._advance(training)
        return web.json_response(training)

    async def _trainings_cancel(self, request: web.Request) -> web.Response:
        training = self.trainings.get(request.match_info["id"])
        if training is None:
            return problem(404, "Not found.")
        if training["status"] in ("starting", "processing"):
            training["status"] = "canceled"
            training["completed_at"] = _now()
            training["metrics"] = {"predict_time": 12.0}
        return web.json_response(training)

    async def _weights(self, request: web.Request) -> web.Response:
        if request.match_info["id"] not in self.trainings:
            return web.Response(status=404, text="Not found")
        return web.Response(body=self.weights_archive(), content_type="application/x-tar")

    # ---- training simulation ---------------------------------------------------------

    def _advance(self, training: dict[str, Any]) -> None:
        if training["status"] not in ("starting", "processing"):
            return
        tick = self._ticks[training["id"]] = self._ticks[training["id"]] + 1
        sdxl = training["model"] == SDXL_TRAINER
        total = int(training["input"]["max_train_steps" if sdxl else "steps"])
        if tick == 1:
            return  # still waiting for a worker
        training["status"] = "processing"
        training["started_at"] = training["started_at"] or _now()
        upload = self.files[training["input"]["input_images"].rsplit("/", 1)[-1]]
        setup = (
            "Downloaded base weights in 4.2 seconds\n"
            f"Extracted {len(zipfile.ZipFile(io.BytesIO(upload)).namelist())} files from zip "
            "to input_images\n"
            "Loading checkpoint shards: 100%|##########| 2/2 [00:01<00:00,  1.52it/s]\n"
            "Caching latents to disk: 100%|##########| 12/12 [00:03<00:00,  3.90it/s]\n"
        )
        steps = min(total, (tick - 2) * self.steps_per_poll)
        bar = "\r".join(self._bar(n, total, sdxl) for n in range(0, steps + 1))
        logs = setup + bar
        if self.fail_at_step is not None and steps >= self.fail_at_step:
            training["status"] = "failed"
            training["error"] = "CUDA out of memory. Tried to allocate 2.00 GiB"
            training["logs"] = logs + (
                "\nTraceback (most recent call last):\n"
                '  File "/src/train.py", line 412, in train\n'
                "    job.run()\n"
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
            )
            self._finish(training, predict_time=40.0)
            return
        if steps < total:
            training["logs"] = logs
            return
        if training.get("_saving"):
            training["logs"] = logs + "\nSaving final model for return\n"
            training["status"] = "succeeded"
            training["output"] = {
                "version": f"{training['destination']}:{'ab' * 32}",
                "weights": f"{self.delivery_url}/pbxt/{training['id']}/trained_model.tar",
            }
            self._finish(training, predict_time=PREDICT_TIME)
            training.pop("_saving")
            return
        training["_saving"] = True
        training["logs"] = logs + "\nSaving final model for return\n"

    @staticmethod
    def _bar(n: int, total: int, sdxl: bool) -> str:
        pct = int(100 * n / total)
        filled = "#" * (pct // 10)
        if sdxl:
            return f"# PTI :step: {max(0, n - 1)}, epoch: 0: {pct:3d}%|{filled:<10}| {n}/{total} [00:{n:02d}<00:{total - n:02d},  1.26it/s]"
        if n == 0:
            return f"flux_train_replicate:   0%|          | 0/{total} [00:00<?, ?it/s]"
        loss = 0.5 - 0.03 * n
        return (
            f"flux_train_replicate: {pct:3d}%|{filled:<10}| {n}/{total} "
            f"[00:{n:02d}<00:{total - n:02d},  1.02s/it, lr: 4.0e-04 loss: {loss:.3e}]"
        )

    @staticmethod
    def _finish(training: dict[str, Any], predict_time: float) -> None:
        training["completed_at"] = _now()
        training["metrics"] = {"predict_time": predict_time, "total_time": predict_time + 7.5}

    # ---- the weights -----------------------------------------------------------------

    def weights_archive(self) -> bytes:
        lora = save_safetensors(LORA_TENSORS, metadata=LORA_METADATA)
        folder = "output/flux_train_replicate"
        files = {
            f"{folder}/lora.safetensors": lora,
            f"{folder}/config.yaml": b"job: custom_job\n",
            f"{folder}/captions/papercut_01.txt": b"a caption\n",
        }
        buffer = io.BytesIO()
        if self.weights_kind == "zip":
            with zipfile.ZipFile(buffer, "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
            return buffer.getvalue()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            if self.weights_kind == "traversal":
                _add(tar, "../../escaped.txt", b"outside\n")
            if self.weights_kind == "link":
                link = tarfile.TarInfo(f"{folder}/evil-link")
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                tar.addfile(link)
            for name, data in files.items():
                _add(tar, name, data)
        return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000123Z", time.gmtime())
