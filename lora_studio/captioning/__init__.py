"""Automatic captions: providers, the batch run, post-processing.

No Qt here, and no torch or transformers at import time (only the local BLIP/BLIP-2
provider and the tiny-model builder import them, when used).

* :mod:`~lora_studio.captioning.base` - :class:`Caption`, the :class:`CaptionProvider`
  Protocol and the exception tree;
* providers: :mod:`~lora_studio.captioning.local` (BLIP, BLIP-2),
  :mod:`~lora_studio.captioning.hf_api`, :mod:`~lora_studio.captioning.openai_chat`,
  :mod:`~lora_studio.captioning.ollama`; made by kind with :func:`create_provider`;
* :mod:`~lora_studio.captioning.runner` - :class:`CaptionRun`, the batch run;
* :mod:`~lora_studio.captioning.postprocess` - caption clean-up;
* :mod:`~lora_studio.captioning.enhance` - rewrite / merge captions with a text LLM;
* :mod:`~lora_studio.captioning.credentials` - tokens in the OS keyring.

Proposals (review before a caption lands) are in :mod:`lora_studio.core.proposals`.
"""

from __future__ import annotations

from lora_studio.captioning.base import (
    AuthError,
    BadResponse,
    BatchCaptionProvider,
    Caption,
    CaptionerError,
    CaptionProvider,
    CaptionTimeout,
    ImageUnreadable,
    ModelLoading,
    ModelNotFound,
    ProviderUnavailable,
    RateLimited,
    ServerError,
)
from lora_studio.captioning.credentials import TokenLookup, find_token, store_token
from lora_studio.captioning.enhance import CaptionEnhancer, RewriteStyle
from lora_studio.captioning.postprocess import (
    CaptionMode,
    PostProcessOptions,
    apply_mode,
    postprocess,
)
from lora_studio.captioning.registry import (
    ProviderSpec,
    create_provider,
    provider_kinds,
    provider_spec,
)
from lora_studio.captioning.runner import (
    CaptionProgress,
    CaptionRun,
    ImageResult,
    ResultStatus,
    RunOptions,
    RunReport,
    RunState,
    StoreSink,
    load_image,
)

__all__ = [
    "AuthError",
    "BadResponse",
    "BatchCaptionProvider",
    "Caption",
    "CaptionEnhancer",
    "CaptionMode",
    "CaptionProgress",
    "CaptionProvider",
    "CaptionRun",
    "CaptionTimeout",
    "CaptionerError",
    "ImageResult",
    "ImageUnreadable",
    "ModelLoading",
    "ModelNotFound",
    "PostProcessOptions",
    "ProviderSpec",
    "ProviderUnavailable",
    "RateLimited",
    "ResultStatus",
    "RewriteStyle",
    "RunOptions",
    "RunReport",
    "RunState",
    "ServerError",
    "StoreSink",
    "TokenLookup",
    "apply_mode",
    "create_provider",
    "find_token",
    "load_image",
    "postprocess",
    "provider_kinds",
    "provider_spec",
    "store_token",
]
