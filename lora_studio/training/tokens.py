"""Counting caption tokens with a base model's own tokenizers, offline.

:func:`caption_token_counter` gives the ``count_tokens`` callable that
:func:`lora_studio.core.stats.dataset_statistics` takes (core imports no transformers).
The tokenizers come from the base model's diffusers folder (``tokenizer/``,
``tokenizer_2/``, ...): a ``builtin:`` model is built on first use, a folder or an HF-cache
id is read as it is, and a single ``.safetensors`` checkpoint - which holds no tokenizer -
borrows the one of its family's config repo in the HF cache, when that is there. Nothing is
downloaded.

Which tokenizer counts: the one whose length limit cuts the caption that conditions the
image. For SD 1.5, SDXL and SD 3.5 that is CLIP's (75 tokens between the start and end
token); for Flux the prompt reaches the transformer through T5 (CLIP gives only a pooled
vector), so T5's count is used there, capped at the pipeline's sequence length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core.base_model import (
    BUILTIN_PREFIX,
    BaseModelRef,
    ModelKind,
    find_in_hf_cache,
    resolve_base_model,
)
from lora_studio.core.config import ModelFamily
from lora_studio.core.errors import ModelError

log = logging.getLogger(__name__)

#: Where a single-file checkpoint's tokenizers come from (the repos ``load_single_file``
#: takes configs from in the families' ``load``).
CONFIG_REPOS: dict[ModelFamily, str] = {
    ModelFamily.SD15: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ModelFamily.SDXL: "stabilityai/stable-diffusion-xl-base-1.0",
    ModelFamily.SD3: "stabilityai/stable-diffusion-3.5-large",
    ModelFamily.FLUX: "black-forest-labs/FLUX.1-dev",
}
_TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass(frozen=True)
class CaptionTokenCounter:
    """Counts a caption's tokens (start/end tokens not included).

    Attributes:
        name: e.g. ``"CLIP (tokenizer)"``, for display.
        limit: tokens a caption may have before the text encoder cuts it off.
        tokenizer: the transformers tokenizer.
    """

    name: str
    limit: int
    tokenizer: Any

    def __call__(self, text: str) -> int:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a fast tokenizer: no "sequence too long" warning
            return len(backend.encode(text, add_special_tokens=False).ids)
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return len(ids)


def tokenizer_folder(ref: BaseModelRef, *, build_builtin: bool = True) -> Path | None:
    """The diffusers folder holding ``ref``'s tokenizers, or ``None`` when there is none
    offline (a single file whose family's configs are not in the HF cache)."""
    if ref.kind is ModelKind.BUILTIN:
        if not build_builtin:
            return ref.path if (ref.path / "model_index.json").is_file() else None
        from lora_studio.training.tiny import ensure_builtin_model

        return ensure_builtin_model(ref.ref.strip()[len(BUILTIN_PREFIX) :])
    if ref.kind is ModelKind.SINGLE_FILE:
        repo = CONFIG_REPOS.get(ref.family) if ref.family else None
        return find_in_hf_cache(repo) if repo else None
    return ref.path


def load_tokenizers(folder: Path) -> dict[str, Any]:
    """Every ``tokenizer*/`` of a diffusers folder, by subfolder name, loaded offline."""
    from transformers import AutoTokenizer

    found: dict[str, Any] = {}
    for name in _TOKENIZER_FOLDERS:
        path = folder / name
        if not path.is_dir():
            continue
        try:
            found[name] = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("Cannot load the tokenizer in %s: %s", path, exc)
    return found


def _t5_cap(family: ModelFamily | None) -> int:
    if family is ModelFamily.FLUX:
        from lora_studio.training.families.flux import T5_MAX_LENGTH

        return T5_MAX_LENGTH
    from lora_studio.training.families.sd3 import T5_MAX_LENGTH as SD3_T5_MAX_LENGTH

    return SD3_T5_MAX_LENGTH


def _limit(tokenizer: Any, cap: int | None = None) -> int:
    length = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if length > 100_000:  # "no limit" sentinel of transformers
        length = cap or 512
    if cap is not None:
        length = min(length, cap)
    try:
        specials = int(tokenizer.num_special_tokens_to_add(pair=False))
    except (AttributeError, TypeError, ValueError):
        specials = 2
    return max(1, length - specials)


def caption_token_counter(
    base_model: str | BaseModelRef, *, build_builtin: bool = True
) -> CaptionTokenCounter | None:
    """The token counter of ``base_model``'s family (see the module docstring), or
    ``None`` when no tokenizer is available offline.

    Raises:
        ModelError: ``base_model`` does not resolve (see ``resolve_base_model``).
    """
    ref = resolve_base_model(base_model) if isinstance(base_model, str) else base_model
    try:
        folder = tokenizer_folder(ref, build_builtin=build_builtin)
    except ModelError as exc:
        log.warning("No tokenizer for %s: %s", ref.ref, exc)
        return None
    if folder is None:
        return None
    tokenizers = load_tokenizers(folder)
    if not tokenizers:
        return None
    if ref.family is ModelFamily.FLUX and "tokenizer_2" in tokenizers:
        t5 = tokenizers["tokenizer_2"]
        return CaptionTokenCounter(_label(t5, "tokenizer_2"), _limit(t5, _t5_cap(ref.family)), t5)
    name, tokenizer = next(iter(tokenizers.items()))
    return CaptionTokenCounter(_label(tokenizer, name), _limit(tokenizer), tokenizer)


def _label(tokenizer: Any, folder: str) -> str:
    """``CLIP (tokenizer)``, ``T5 (tokenizer_2)``: the tokenizer class without suffixes."""
    kind = type(tokenizer).__name__.removesuffix("Fast").removesuffix("Tokenizer") or "tokenizer"
    return f"{kind} ({folder})"
