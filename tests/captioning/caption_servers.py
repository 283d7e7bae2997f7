"""Captioning servers on loopback: real HTTP (``http.server`` in a thread) speaking the
protocols LoRA Studio's remote captioners use, with knobs for their failure modes.

* :func:`hf_inference` - ``POST /models/{id}`` with raw image bytes, Bearer token,
  ``[{"generated_text": ...}]``;
* :func:`openai_chat` - ``POST /v1/chat/completions`` with an ``image_url`` data URL,
  optional API key, ``choices[0].message.content``;
* :func:`ollama_native` - ``POST /api/generate`` with ``images: [base64]``,
  ``{"response", "done"}``, ``{"error": "model 'x' not found"}`` for unknown models.

Every handler decodes the image it was sent and answers with its dominant colour, so a
test can tell which caption belongs to which image. :meth:`LoopbackServer.script` queues
canned replies (a status, headers, a raw body, a delay, or a hang that never answers)
served before the protocol handler; the server records every request (with its arrival
time) and the most requests it had in flight at once.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
HF_TOKEN = "hf_StandInToken0123456789abcdefXYZ"
OPENAI_KEY = "sk-standin-0123456789abcdef"


@dataclass
class Reply:
    """A canned answer. ``body``: dict/list -> JSON, str/bytes -> as is."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Request], Reply]


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (random port) driven by ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.active = 0
        self.max_active = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                server._serve(self)

            def do_GET(self) -> None:
                server._serve(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, *replies: Reply) -> None:
        """Serve these replies first, in order, then the protocol handler's."""
        with self._lock:
            self._script.extend(replies)

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        request = Request(
            http.command,
            http.path,
            {k.lower(): v for k, v in http.headers.items()},
            body,
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            reply = self._script.popleft() if self._script else None
        try:
            if reply is None:
                try:
                    reply = self.handler(request)
                except Exception as exc:  # a bug in a test handler: say so
                    reply = Reply(500, {"error": f"stand-in failed: {exc!r}"})
            if reply.hang:
                self._stopping.wait(30)
                http.close_connection = True
                return
            if reply.delay:
                self._stopping.wait(reply.delay)
            if isinstance(reply.body, dict | list):
                data = json.dumps(reply.body).encode()
                content_type = "application/json"
            elif isinstance(reply.body, str):
                data = reply.body.encode()
                content_type = "application/json"
            else:
                data = reply.body or b""
                content_type = "application/octet-stream"
            http.send_response(reply.status)
            http.send_header("Content-Type", reply.headers.get("Content-Type", content_type))
            for key, value in reply.headers.items():
                if key.lower() != "content-type":
                    http.send_header(key, value)
            http.send_header("Content-Length", str(len(data)))
            http.end_headers()
            http.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self.active -= 1


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def colour_of(data: bytes) -> str:
    """The dominant primary colour of an encoded image: ``red``, ``green`` or ``blue``."""
    with Image.open(io.BytesIO(data)) as image:
        r, g, b = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    return max((r, "red"), (g, "green"), (b, "blue"))[1]


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def write_images(
    folder: Path, names: dict[str, str], captions: dict[str, str] | None = None
) -> Path:
    """``names``: file name -> colour name; ``captions``: file name -> caption text."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in names.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), COLOURS[colour]).save(path)
    for name, text in (captions or {}).items():
        (folder / name).with_suffix(".txt").write_text(text, encoding="utf-8")
    return folder


# ---- the protocols ---------------------------------------------------------------------


def hf_inference(token: str | None = HF_TOKEN, *, text: str = "arafed {colour} square") -> Handler:
    """The Hugging Face Inference API (image-to-text task)."""

    def handle(request: Request) -> Reply:
        if not request.path.startswith("/models/"):
            return Reply(404, {"error": "Not Found"})
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return Reply(401, {"error": "Invalid credentials in Authorization header"})
        if not request.headers.get("content-type", "").startswith("image/"):
            return Reply(400, {"error": "expected an image body"})
        return Reply(200, [{"generated_text": text.format(colour=colour_of(request.body))}])

    return handle


def openai_chat(api_key: str | None = None, *, text: str = "A {colour} square.") -> Handler:
    """An OpenAI-compatible chat completions server with vision (vLLM, llama-server)."""

    def handle(request: Request) -> Reply:
        if request.path != "/v1/chat/completions":
            return Reply(404, {"error": {"message": "Not found", "type": "not_found_error"}})
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return Reply(401, {"error": {"message": "Invalid API key", "type": "auth_error"}})
        payload = request.json()
        parts = payload["messages"][-1]["content"]
        if isinstance(parts, str):  # a text-only chat (caption enhancement)
            return Reply(200, completion(payload, text.format(colour="-", prompt=parts)))
        prompt = next(p["text"] for p in parts if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        header, _, data = url.partition(",")
        if header != "data:image/jpeg;base64":
            return Reply(400, {"error": {"message": f"bad image url {header}"}})
        colour = colour_of(base64.b64decode(data))
        return Reply(200, completion(payload, text.format(colour=colour, prompt=prompt)))

    return handle


def completion(payload: dict[str, Any], content: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload.get("model", "llava"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def ollama_native(
    models: tuple[str, ...] = ("llava",), *, text: str = "a {colour} square"
) -> Handler:
    """Ollama's native API: ``/api/generate`` with base64 images."""

    def handle(request: Request) -> Reply:
        if request.path != "/api/generate":
            return Reply(404, "404 page not found")
        payload = request.json()
        if payload.get("model") not in models:
            return Reply(404, {"error": f"model '{payload.get('model')}' not found"})
        if payload.get("stream") is not False:
            return Reply(400, {"error": "this stand-in only answers stream: false"})
        colour = colour_of(base64.b64decode(payload["images"][0]))
        return Reply(
            200,
            {
                "model": payload["model"],
                "created_at": "2025-01-01T00:00:00Z",
                "response": text.format(colour=colour, prompt=payload.get("prompt", "")),
                "done": True,
                "done_reason": "stop",
                "total_duration": 1000,
            },
        )

    return handle
