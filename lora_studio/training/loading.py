"""Loading base-model components from disk, offline, with one clear error per problem.

Every family loads the same way: a diffusers folder (one ``from_pretrained`` per
subfolder, a missing subfolder named in the error) or a single checkpoint file through the
family pipeline's ``from_single_file``. Models are loaded straight into the training
precision (a 12B Flux transformer in bf16 needs 24 GB of RAM, in fp32 48 GB); the VAE stays
fp32, as SD VAEs overflow in fp16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.errors import ModelError

if TYPE_CHECKING:
    import torch

#: errors that mean "this model cannot be loaded" rather than a bug in LoRA Studio.
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def require_subfolders(path: Path, names: Sequence[str]) -> None:
    """Raise :class:`ModelError` naming the first missing component folder."""
    for sub in names:
        if not (path / sub).is_dir():
            raise ModelError(f"The base model folder {path} is incomplete: {sub}/ is missing.")


def _is_model(cls: Any) -> bool:
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def load_folder(
    path: Path, specs: Sequence[tuple[str, Any]], dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """``cls.from_pretrained(path, subfolder=name, local_files_only=True)`` per
    ``(name, cls)``; models other than the VAE load in ``dtype`` when given.

    Raises:
        ModelError: a subfolder is missing (named), or a component does not load.
    """
    require_subfolders(path, [name for name, _ in specs])
    loaded: dict[str, Any] = {}
    for name, cls in specs:
        kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": True}
        if dtype is not None and name != "vae" and _is_model(cls):
            kwargs["torch_dtype"] = dtype
        try:
            loaded[name] = cls.from_pretrained(path, **kwargs)
        except LOAD_ERRORS as exc:
            raise ModelError(
                f"The {name} of the base model at {path} cannot be loaded: {first_line(exc)}"
            ) from exc
    return loaded


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Refuse every Hugging Face Hub request while the block runs.

    diffusers' ``from_single_file`` ignores ``local_files_only=True`` when the model's
    configs are not in the cache: it logs "Attempting to download the necessary config
    files" and goes online. LoRA Studio never downloads models, so hub requests are
    switched off (``huggingface_hub`` reads this flag on every request).
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_single_file(
    pipeline_class: Any,
    path: Path,
    label: str,
    *,
    config_repo: str,
    dtype: torch.dtype | None = None,
    **pipeline_kwargs: Any,
) -> Any:
    """The whole pipeline from one checkpoint file, offline.

    ``from_single_file`` needs the model's diffusers configs (and tokenizers); offline they
    can only come from the Hugging Face cache (``config_repo``), so a missing cache entry
    is the usual failure, and the message says how to fetch just those small files.
    """
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    kwargs: dict[str, Any] = {"local_files_only": True, **pipeline_kwargs}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        with hub_offline():
            pipe = pipeline_class.from_single_file(str(path), **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise ModelError(
            f"{path.name} is a {label} checkpoint, but loading a single file needs {label}'s "
            f"configs ({config_repo}) in the Hugging Face cache, and they are not there "
            f"(LoRA Studio does not download them). Fetch them once with `huggingface-cli "
            f"download {config_repo} --include '*.json' '*.txt' '*.model'`, or use a "
            f"diffusers folder."
        ) from exc
    except (*LOAD_ERRORS, IndexError, SingleFileComponentError) as exc:
        raise ModelError(
            f"{path.name} could not be loaded as a single-file {label} checkpoint: "
            f"{first_line(exc)}"
        ) from exc
    vae = getattr(pipe, "vae", None)
    if vae is not None and dtype is not None:
        vae.to(dtype=_vae_dtype(dtype))
    return pipe


def _vae_dtype(dtype: torch.dtype) -> torch.dtype:
    import torch

    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
