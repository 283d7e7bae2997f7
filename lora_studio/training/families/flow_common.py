"""What the two flow-matching transformer families (SD 3.5, Flux) share.

* the training copy of the flow-matching scheduler;
* tokenizing for CLIP (77 tokens) and T5 (the tokenizer's ``model_max_length``, capped);
* the tiny random-weight parts: a CLIP and a T5 tokenizer built here, without the hub (the
  T5 one is a unigram vocabulary over the same caption words the tiny CLIP BPE learns
  from), small CLIP/T5 encoders and a 16-channel VAE;
* writing LoRA tensors in the diffusers/peft key format with alpha folded into the
  weights, so that every reader's default scale of 1 is right.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.errors import ModelError

if TYPE_CHECKING:
    import torch

_PEFT_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_magnitude_vector.weight": "magnitude",
    ".lora_magnitude_vector": "magnitude",
}


# ---- loading ----------------------------------------------------------------------------


def training_scheduler(scheduler: Any) -> Any:
    """A fresh copy of the model's ``FlowMatchEulerDiscreteScheduler`` for training (its
    ``timesteps``/``sigmas`` are the training grid; inference ``set_timesteps`` would
    change them)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ModelError(
            f"Expected a FlowMatchEulerDiscreteScheduler, found {type(scheduler).__name__}."
        )
    return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)


# ---- text -------------------------------------------------------------------------------


def clip_token_ids(tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    """CLIP ids padded to the tokenizer's length (77), as the pipelines tokenize."""
    return tokenizer(  # type: ignore[no-any-return]
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def t5_token_ids(tokenizer: Any, captions: Sequence[str], cap: int) -> torch.Tensor:
    """T5 ids padded to ``min(tokenizer.model_max_length, cap)`` tokens."""
    length = min(int(tokenizer.model_max_length), cap)
    return tokenizer(  # type: ignore[no-any-return]
        list(captions),
        padding="max_length",
        max_length=length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids


# ---- LoRA tensors -----------------------------------------------------------------------


def peft_modules(peft_state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a peft state dict by module: ``{module: {"down", "up"[, "magnitude"]}}``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in peft_state.items():
        for suffix, part in _PEFT_SUFFIXES.items():
            if key.endswith(suffix):
                modules.setdefault(key[: -len(suffix)], {})[part] = tensor.detach().to("cpu")
                break
        else:
            raise ValueError(f"Unexpected LoRA tensor {key!r}")
    for module, parts in modules.items():
        if "down" not in parts or "up" not in parts:
            raise ValueError(f"LoRA module {module!r} lacks its lora_A or lora_B weight")
    return modules


def diffusers_lora_keys(
    peft_state: Mapping[str, torch.Tensor],
    prefix: str,
    *,
    alpha: float,
    module_root: str = "",
) -> dict[str, torch.Tensor]:
    """peft tensors under diffusers/peft key names (``<prefix><module>.lora_A.weight``),
    with ``alpha / rank`` folded into ``lora_A``.

    The diffusers key format has no per-module alpha that all readers agree on (diffusers
    rejects ``.alpha`` tensors for SD 3; ComfyUI ignores diffusers' JSON adapter metadata),
    but both use a scale of 1 when nothing says otherwise - so the scale goes into the
    weights.

    Args:
        peft_state: ``get_peft_model_state_dict(module)``.
        prefix: ``transformer.``, ``text_encoder.``...
        alpha: the LoRA alpha (scale = alpha / rank).
        module_root: prepended to module paths that lack it (``text_model.`` for CLIP).
    """
    out: dict[str, torch.Tensor] = {}
    for module, parts in peft_modules(peft_state).items():
        name = module if module.startswith(module_root) else module_root + module
        down, up = parts["down"], parts["up"]
        scale = float(alpha) / down.shape[0]
        out[f"{prefix}{name}.lora_A.weight"] = (down * scale if scale != 1.0 else down).contiguous()
        out[f"{prefix}{name}.lora_B.weight"] = up.contiguous()
        if "magnitude" in parts:
            out[f"{prefix}{name}.lora_magnitude_vector"] = parts["magnitude"].contiguous()
    return out


# ---- tiny models ------------------------------------------------------------------------


def tiny_clip_tokenizer() -> Any:
    """The tiny CLIP BPE tokenizer (77 tokens), built from the built-in word list."""
    from transformers import CLIPTokenizer

    from lora_studio.training.tiny import write_clip_tokenizer_files

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "tokenizer"
        write_clip_tokenizer_files(folder)
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def tiny_clip_config(
    tokenizer: Any, hidden_size: int, projection_dim: int, layers: int = 2, heads: int = 4
) -> Any:
    """A small ``CLIPTextConfig`` matching ``tokenizer`` (77 positions, CLIP's ids)."""
    from transformers import CLIPTextConfig

    bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def t5_vocabulary() -> list[tuple[str, float]]:
    """A unigram vocabulary in T5's layout: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then
    pieces with log-probability scores.

    Whole caption words (``▁word``) score higher than single characters, so common words
    are one token and anything else in ASCII still spells out letter by letter.
    """
    from lora_studio.training.tiny import _CORPUS

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {piece for piece, _ in vocab}
    words = sorted(set(_CORPUS.split()))
    for word in words:
        piece = "▁" + word
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, -4.0 - 0.01 * len(word)))
    chars = string.ascii_letters + string.digits + string.punctuation
    for char in chars:
        for piece, score in (("▁" + char, -9.0), (char, -10.0)):
            if piece not in seen:
                seen.add(piece)
                vocab.append((piece, score))
    return vocab


def tiny_t5_tokenizer(model_max_length: int) -> Any:
    """The tiny T5 tokenizer: transformers' ``T5Tokenizer`` (``tokenizers`` Unigram
    backend) over :func:`t5_vocabulary`, no sentinel ids."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_vocabulary(), extra_ids=0, model_max_length=model_max_length)


def tiny_t5_encoder(vocab_size: int, d_model: int, seed: int) -> Any:
    """A two-layer T5 v1.1-style encoder (gated GELU, like the T5-XXL of SD 3.5 and Flux)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=8,
            d_ff=d_model * 2,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def tiny_vae(scaling_factor: float, shift_factor: float, seed: int) -> Any:
    """A 16-channel ``AutoencoderKL`` with the real 8x downsampling (4 blocks), no quant
    convs (as SD 3.5's and Flux's VAEs), and the given latent scaling and shift."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """``build()`` right after ``torch.manual_seed(seed)``: each part's weights depend only
    on its own seed, not on what was built before it."""
    import torch

    torch.manual_seed(seed)
    return build()
