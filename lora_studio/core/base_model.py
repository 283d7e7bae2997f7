"""Base-model references: what a user types in the "base model" box, resolved to files.

Four kinds are understood, without importing torch:

* ``builtin:tiny-sd15`` - the tiny random-weight model LoRA Studio builds itself;
* a diffusers folder (holding ``model_index.json``);
* a single checkpoint file (``.safetensors``; family read from the tensor names);
* a Hugging Face id (``org/name``), found offline in the local HF cache.

:func:`resolve_base_model` turns a reference into a :class:`BaseModelRef` (kind, local path,
family) or raises :class:`ModelError` with a message that says what to do.
"""

from __future__ import annotations

import enum
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from lora_studio.core.config import ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.core.paths import models_cache_dir

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS: dict[str, ModelFamily] = {
    "tiny-sd15": ModelFamily.SD15,
    "tiny-sdxl": ModelFamily.SDXL,
    "tiny-sd3": ModelFamily.SD3,
    "tiny-flux": ModelFamily.FLUX,
}
DEFAULT_BASE_MODEL = "builtin:tiny-sd15"

_PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": ModelFamily.SD15,
    "StableDiffusionImg2ImgPipeline": ModelFamily.SD15,
    "StableDiffusionXLPipeline": ModelFamily.SDXL,
    "StableDiffusionXLImg2ImgPipeline": ModelFamily.SDXL,
    "StableDiffusion3Pipeline": ModelFamily.SD3,
    "FluxPipeline": ModelFamily.FLUX,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelKind(enum.StrEnum):
    BUILTIN = "builtin"
    DIFFUSERS_FOLDER = "diffusers_folder"
    SINGLE_FILE = "single_file"
    HUB_CACHE = "hub_cache"


@dataclass(frozen=True)
class BaseModelRef:
    """A resolved base model.

    Attributes:
        ref: what the user wrote.
        kind: how it is stored.
        path: the local folder or file (for a builtin model: where it is, or will be, built).
        family: the architecture family, when it could be told.
        version: kohya's ``ss_base_model_version`` (``sd_v1``, ``sd_v2``, ``sdxl_base_v1-0``...).
    """

    ref: str
    kind: ModelKind
    path: Path
    family: ModelFamily | None
    version: str = ""

    @property
    def display_name(self) -> str:
        if self.kind in (ModelKind.BUILTIN, ModelKind.HUB_CACHE):
            return self.ref
        return self.path.name


def builtin_model_path(name: str) -> Path:
    return models_cache_dir() / name


def resolve_base_model(ref: str) -> BaseModelRef:
    """Resolve ``ref`` to local files, offline.

    Raises:
        ModelError: the reference points at nothing usable; the message says why and how
            to fix it.
    """
    text = ref.strip()
    if not text:
        raise ModelError("No base model chosen.")
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
            raise ModelError(f"Unknown built-in model {text!r}; built-in models: {known}.")
        family = BUILTIN_MODELS[name]
        return BaseModelRef(
            text, ModelKind.BUILTIN, builtin_model_path(name), family, _version_for(family)
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_folder(text, path)
    if path.is_file():
        return _from_single_file(text, path)
    if _HUB_ID.match(text) and not text.startswith((".", "/")) and not path.parent.exists():
        snapshot = find_in_hf_cache(text)
        if snapshot is None:
            raise ModelError(
                f"{text} is not in the Hugging Face cache ({hf_hub_cache()}). LoRA Studio "
                f"does not download models itself: fetch it once with "
                f"`huggingface-cli download {text}`, or choose a local diffusers folder or "
                f"a .safetensors checkpoint."
            )
        found = _from_folder(text, snapshot)
        return BaseModelRef(text, ModelKind.HUB_CACHE, snapshot, found.family, found.version)
    raise ModelError(
        f"Base model {text} does not exist. Choose a diffusers folder, a .safetensors "
        f"checkpoint, a Hugging Face id from your cache, or {DEFAULT_BASE_MODEL}."
    )


def _from_folder(ref: str, folder: Path) -> BaseModelRef:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelError(f"{folder} is not a diffusers model folder (it has no model_index.json).")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{index} cannot be read: {exc}.") from None
    family = _PIPELINE_FAMILIES.get(str(data.get("_class_name", "")))
    version = _version_for(family, folder)
    return BaseModelRef(ref, ModelKind.DIFFUSERS_FOLDER, folder, family, version)


def _version_for(family: ModelFamily | None, folder: Path | None = None) -> str:
    if family is ModelFamily.SD15:
        # SD 2.x shares the pipeline class; its UNet cross-attends to 1024-dim OpenCLIP.
        if folder is not None:
            try:
                unet = json.loads((folder / "unet" / "config.json").read_text("utf-8"))
                if unet.get("cross_attention_dim") == 1024:
                    return "sd_v2"
            except (OSError, ValueError):
                pass
        return "sd_v1"
    return (
        {
            ModelFamily.SDXL: "sdxl_base_v1-0",
            ModelFamily.SD3: "sd3",
            ModelFamily.FLUX: "flux1",
        }.get(family, "")
        if family
        else ""
    )


def _from_single_file(ref: str, path: Path) -> BaseModelRef:
    if path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        raise ModelError(f"{path.name} is not a model checkpoint (.safetensors or .ckpt).")
    family, version = None, ""
    if path.suffix.lower() == ".safetensors":
        keys = safetensors_keys(path)
        family, version = family_from_checkpoint_keys(keys)
        if family is None:
            raise ModelError(
                f"{path.name} does not look like an SD 1.5, SDXL, SD 3.5 or Flux checkpoint "
                f"(is it a LoRA rather than a base model?)."
            )
    return BaseModelRef(ref, ModelKind.SINGLE_FILE, path, family, version)


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names of a ``.safetensors`` file, read from its JSON header only."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length <= 0 or length > 100_000_000:
                raise ValueError("implausible header length")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path.name} is not a readable .safetensors file ({exc}).") from None
    return [k for k in header if k != "__metadata__"]


def family_from_checkpoint_keys(keys: list[str]) -> tuple[ModelFamily | None, str]:
    """Tell the family of an original-format checkpoint from its tensor names."""
    joined = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in joined)

    if has("double_blocks.") or has("model.diffusion_model.double_blocks."):
        return ModelFamily.FLUX, "flux1"
    if has("model.diffusion_model.joint_blocks."):
        return ModelFamily.SD3, "sd3"
    if has("conditioner.embedders.1."):
        return ModelFamily.SDXL, "sdxl_base_v1-0"
    if has("model.diffusion_model.input_blocks."):
        if has("cond_stage_model.model."):
            return ModelFamily.SD15, "sd_v2"
        return ModelFamily.SD15, "sd_v1"
    return None, ""


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, honouring ``HF_HUB_CACHE`` and ``HF_HOME``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def find_in_hf_cache(repo_id: str, revision: str = "main") -> Path | None:
    """The snapshot folder of ``repo_id`` in the HF cache, or ``None``."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref_file = repo / "refs" / revision
    snapshots = repo / "snapshots"
    commit = None
    if ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8").strip()
    elif re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    if commit and (snapshots / commit / "model_index.json").is_file():
        return snapshots / commit
    if snapshots.is_dir():
        candidates = sorted(
            (p for p in snapshots.iterdir() if (p / "model_index.json").is_file()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        if candidates:
            return candidates[0]
    return None
