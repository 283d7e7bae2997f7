"""BLIP and BLIP-2 on this computer, with transformers, offline.

Models load from a local folder (``config.json``, the weights, the processor files) or
from a Hugging Face id already in the HF cache (``huggingface-cli download
Salesforce/blip-image-captioning-large`` fetches one once); nothing is downloaded here
(``local_files_only=True``). A model that is not on disk raises
:class:`~lora_studio.captioning.base.ModelNotFound` saying how to fetch it.

* BLIP: ``BlipForConditionalGeneration`` + ``BlipProcessor``. An optional conditional
  prompt ("a photo of") starts the caption, and stays in it (BLIP continues the text).
* BLIP-2: ``Blip2ForConditionalGeneration`` + ``Blip2Processor`` (OPT or Flan-T5 language
  model). A prompt here is a question ("Question: what is in the picture? Answer:"); only
  the answer is kept.

The model runs on CUDA when there is a GPU (float16), else on the CPU (float32).
Generation runs in a worker thread, a batch of images per call, one call at a time per
model; cancelling the awaiting task stops generation at the next token. torch and
transformers are imported only when a model loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.captioning.base import Caption, CaptionerError, ModelNotFound
from lora_studio.core.base_model import hf_hub_cache
from lora_studio.core.model_lock import MODEL_BUILD_LOCK

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

BLIP, BLIP2 = "blip", "blip2"
DEFAULT_MODELS = {
    BLIP: "Salesforce/blip-image-captioning-large",
    BLIP2: "Salesforce/blip2-opt-2.7b",
}
LABELS = {BLIP: "BLIP", BLIP2: "BLIP-2"}
#: ``config.json`` ``model_type`` of each kind
MODEL_TYPES = {BLIP: "blip", BLIP2: "blip-2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_caption_model(ref: str | Path, kind: str = BLIP) -> Path:
    """The local folder of captioning model ``ref`` (a folder, or an HF id in the cache).

    Raises:
        ModelNotFound: not on disk, not a transformers model folder, or a model of the
            other kind (the message says what to do).
    """
    label = LABELS.get(kind, kind)
    text = str(ref).strip()
    if not text:
        raise ModelNotFound(f"No {label} model chosen.")
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise ModelNotFound(
            f"{path} is a file; choose the {label} model's folder (with config.json)."
        )
    elif _HUB_ID.match(text) and not path.parent.exists():
        folder = _from_hf_cache(text, label)
    else:
        raise ModelNotFound(
            f"{label} model {text} does not exist. Choose a model folder or a Hugging Face id "
            f"from your cache (e.g. {DEFAULT_MODELS.get(kind, DEFAULT_MODELS[BLIP])})."
        )
    _check_folder(folder, kind)
    return folder


def _from_hf_cache(repo_id: str, label: str) -> Path:
    cache = hf_hub_cache()
    missing = ModelNotFound(
        f"{label} model {repo_id} is not on this computer, and LoRA Studio does not download "
        f"models itself: fetch it once with `huggingface-cli download {repo_id}`, or choose "
        f"a local model folder (looked in the Hugging Face cache {cache})."
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise missing from None
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, an odd cache layout, an invalid id...
        raise missing from None


def _check_folder(folder: Path, kind: str) -> None:
    label = LABELS.get(kind, kind)
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFound(
            f"{folder} is not a transformers model folder (it has no config.json)."
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{config} cannot be read ({exc}).") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    expected = MODEL_TYPES.get(kind)
    if expected and model_type != expected:
        other = next((k for k, t in MODEL_TYPES.items() if t == model_type), None)
        hint = f"; use the {other} provider" if other else ""
        raise ModelNotFound(f"{folder.name} is a {model_type!r} model, not {label}{hint}.")


def pick_device(requested: str | None = None) -> str:
    """``requested``, else ``cuda`` when a GPU is there, else ``cpu``."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class LocalBlipProvider:
    """BLIP or BLIP-2 run locally (see the module docstring).

    Args:
        model: a model folder or an HF id in the cache (default: :data:`DEFAULT_MODELS`).
        kind: ``blip`` or ``blip2``.
        device: ``cuda``, ``cpu``, ``cuda:1``, ``mps``... (default: CUDA when present).
        prompt: the default prompt (BLIP: the caption's start; BLIP-2: a question).
        max_new_tokens: the longest caption, in tokens.
        min_new_tokens: the shortest caption, in tokens (``None``: the model's setting).
        num_beams: beam search width (1: greedy; 3 gives BLIP fewer repetitions).
        batch_size: images per forward pass.
    """

    default_concurrency = 1

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        kind: str = BLIP,
        device: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int = 40,
        min_new_tokens: int | None = None,
        num_beams: int = 3,
        batch_size: int = 4,
    ) -> None:
        if kind not in MODEL_TYPES:
            raise CaptionerError(f"Unknown local captioner {kind!r}; use blip or blip2.")
        self.name = kind
        self.kind = kind
        self.label = LABELS[kind]
        self.model = str(model) if model else DEFAULT_MODELS[kind]
        self.requested_device = device
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.num_beams = max(1, num_beams)
        self.batch_size = max(1, batch_size)
        self.device: str | None = None
        self.folder: Path | None = None
        self._model: Any = None
        self._processor: Any = None
        self._side = 384
        self._load_lock = asyncio.Lock()
        self._generate_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LocalBlipProvider(kind={self.kind!r}, model={self.model!r}, device={self.device!r})"
        )

    @property
    def max_side(self) -> int:
        """Twice the model's input size: enough detail, no full-size decode in memory."""
        return max(64, 2 * self._side)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def load(self) -> None:
        """Load the model (in a worker thread) unless it is loaded already.

        Raises:
            ModelNotFound: the model is not on disk or cannot be loaded.
        """
        async with self._load_lock:
            if self._model is None:
                await asyncio.to_thread(self._load_sync)

    def _load_sync(self) -> None:
        folder = resolve_caption_model(self.model, self.kind)
        try:
            import torch
            import transformers
        except ImportError as exc:  # pragma: no cover - dependencies of the app
            raise ModelNotFound(f"Local captioning needs torch and transformers ({exc}).") from None
        if self.kind == BLIP:
            processor_cls = transformers.BlipProcessor
            model_cls = transformers.BlipForConditionalGeneration
        else:
            processor_cls = transformers.Blip2Processor
            model_cls = transformers.Blip2ForConditionalGeneration
        device = pick_device(self.requested_device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        log.info("Loading %s from %s on %s", self.label, folder, device)
        try:
            # see core/model_lock.py: the trainer may be loading a model on another thread
            with MODEL_BUILD_LOCK:
                processor = processor_cls.from_pretrained(folder, local_files_only=True)
                model = model_cls.from_pretrained(
                    folder, local_files_only=True, **_dtype_kwarg(dtype)
                )
                model = model.to(device)
            model.eval()
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise ModelNotFound(
                f"{self.label} model {self.model} cannot be loaded from {folder}: {exc}"
            ) from None
        self._processor = processor
        self._model = model
        self.device = device
        self.folder = folder
        self._side = _processor_side(processor) or self._side

    async def caption(self, image: Image.Image, prompt: str | None = None) -> Caption:
        return (await self.caption_batch([image], prompt))[0]

    async def caption_batch(
        self, images: Sequence[Image.Image], prompt: str | None = None
    ) -> list[Caption]:
        """Caption ``images`` in one forward pass (see :class:`CaptionProvider`)."""
        if not images:
            return []
        await self.load()
        stop = threading.Event()
        text_prompt = prompt if prompt is not None else self.prompt
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._generate, list(images), text_prompt, stop)
        try:
            texts, elapsed = await future
        except asyncio.CancelledError:
            stop.set()  # generation ends at its next token; nobody waits for the result
            raise
        share = elapsed / len(texts) if texts else 0.0
        return [
            Caption(
                text=text.strip(),
                provider=self.name,
                model=self.model,
                elapsed_s=share,
                prompt=text_prompt or None,
            )
            for text in texts
        ]

    def _generate(
        self, images: list[Image.Image], prompt: str | None, stop: threading.Event
    ) -> tuple[list[str], float]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device
                )

        with self._generate_lock:
            start = time.monotonic()
            processor, model = self._processor, self._model
            if model is None:
                raise CaptionerError(f"The {self.label} model was closed.")
            if self.kind == BLIP:
                texts = [prompt] * len(images) if prompt else None
            else:
                # An empty prompt still carries the image tokens and BOS, so the answer
                # starts at the same offset with and without a question.
                texts = [prompt or ""] * len(images)
            inputs = processor(images=images, text=texts, return_tensors="pt")
            inputs = {
                key: (
                    value.to(self.device, dtype=model.dtype)
                    if key == "pixel_values"
                    else value.to(self.device)
                )
                for key, value in inputs.items()
            }
            options: dict[str, Any] = {
                "max_new_tokens": self.max_new_tokens,
                "num_beams": self.num_beams,
                "do_sample": False,
                "stopping_criteria": StoppingCriteriaList([StopWhenAsked()]),
            }
            if self.min_new_tokens is not None:
                options["min_new_tokens"] = self.min_new_tokens
            with torch.inference_mode():
                output = model.generate(**inputs, **options)
            decoder_only = self.kind == BLIP2 and not model.config.is_encoder_decoder
            if decoder_only and "input_ids" in inputs:
                output = output[:, inputs["input_ids"].shape[1] :]
            decoded = processor.batch_decode(output, skip_special_tokens=True)
            return [str(text) for text in decoded], time.monotonic() - start

    async def aclose(self) -> None:
        """Drop the model (and free GPU memory)."""
        async with self._load_lock:
            with self._generate_lock:
                on_cuda = bool(self.device and self.device.startswith("cuda"))
                self._model = None
                self._processor = None
            if on_cuda:
                import torch

                torch.cuda.empty_cache()


def _processor_side(processor: Any) -> int | None:
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    if isinstance(size, dict):
        values = [v for k, v in size.items() if k in ("height", "width", "shortest_edge")]
        return int(max(values)) if values else None
    height = getattr(size, "height", None)
    width = getattr(size, "width", None)
    if height or width:
        return int(max(height or 0, width or 0))
    return None


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers 5 takes ``dtype=``; 4.x took ``torch_dtype=``."""
    import transformers

    major = int(str(transformers.__version__).split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
