"""Latent and text-embedding caches, in memory and on disk.

Encoding every image with the VAE (and every caption with the text encoders) once per run
is most of the set-up time of a LoRA run; doing it once per *image* is better. Entries are
``.safetensors`` files under the user cache folder, keyed by:

* latents: the image's content hash (SHA-256 of the file), its bucket placement (size,
  resize, crop) and a fingerprint of the VAE's weights;
* text: the exact caption and a fingerprint of the tokenizers and text encoders.

A changed image, crop, resolution or model therefore never reuses a stale entry. Content
hashes are remembered per (path, size, mtime) so unchanged files are not re-read.
Writes are atomic; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.atomic import atomic_write_bytes, atomic_write_text
from lora_studio.core.buckets import Placement
from lora_studio.core.paths import cache_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def module_fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    """A fingerprint of a module's config and weights (cheap: sums, not a full hash)."""
    import torch

    digest = hashlib.sha256(f"{CACHE_FORMAT}:{extra}".encode())
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            t = tensor.detach().float()
            digest.update(name.encode())
            digest.update(str(tuple(t.shape)).encode())
            digest.update(f"{t.sum().item():.6e}:{t.abs().sum().item():.6e}".encode())
    return digest.hexdigest()[:32]


class ContentHashes:
    """SHA-256 of files, remembered by (path, size, mtime) in a small JSON index."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self._lock = threading.Lock()
        try:
            self._index: dict[str, list[Any]] = json.loads(index_path.read_text("utf-8"))
        except (OSError, ValueError):
            self._index = {}
        self._dirty = False

    def hash(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        with self._lock:
            known = self._index.get(key)
            if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
                return str(known[2])
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            self._index[key] = [stat.st_size, stat.st_mtime_ns, value]
            self._dirty = True
        return value

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps(self._index)
            self._dirty = False
        try:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.index_path, data)
        except OSError as exc:
            log.warning("Cannot save the content-hash index %s: %s", self.index_path, exc)


class TensorCache:
    """``key -> {name: tensor}`` as ``.safetensors`` files under ``root`` (or nowhere)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            self.misses += 1
            return None
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        except Exception as exc:  # a truncated or foreign file: recompute it
            log.warning("Ignoring unreadable cache entry %s: %s", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        from safetensors.torch import save

        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            atomic_write_bytes(path, save(data))
        except OSError as exc:  # a full disk only costs speed next time
            log.warning("Cannot write cache entry %s: %s", path, exc)


def latent_key(content_hash: str, placement: Placement, vae_fingerprint: str) -> str:
    p = placement
    text = (
        f"latent:{CACHE_FORMAT}:{content_hash}:{p.bucket.width}x{p.bucket.height}:"
        f"{p.scaled[0]}x{p.scaled[1]}:{p.crop_left},{p.crop_top}:{vae_fingerprint}"
    )
    return hashlib.sha256(text.encode()).hexdigest()


def text_key(caption: str, encoders_fingerprint: str) -> str:
    text = f"text:{CACHE_FORMAT}:{encoders_fingerprint}:{caption}"
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_root() -> Path:
    return cache_dir() / "training"


class RunCaches:
    """The caches one run uses (disk-backed unless ``on_disk`` is false)."""

    def __init__(self, on_disk: bool, root: Path | None = None) -> None:
        base = root or default_cache_root()
        self.latents = TensorCache(base / "latents" if on_disk else None)
        self.text = TensorCache(base / "text" if on_disk else None)
        self.hashes = ContentHashes(base / "content-hashes.json")
