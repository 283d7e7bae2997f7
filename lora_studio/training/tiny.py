"""The tiny built-in base model: SD 1.5's architecture at toy size, random weights.

``builtin:tiny-sd15`` lets a new user press Train with nothing downloaded, and lets the
tests exercise the real loading, training and export code. It has every component of a
Stable Diffusion 1.5 pipeline (CLIP tokenizer and text encoder, a UNet with SD 1.5's block
layout, a VAE with the same 8x downsampling, the same noise schedule) but only a few
million parameters. Its weights are random, so what it draws is noise; a LoRA trained on
it is a real kohya-format file with SD 1.5's key names.

The tokenizer is built here too: a byte-level BPE vocabulary in CLIP's format with merges
learned from a small built-in word list.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError

from lora_studio.core.base_model import BUILTIN_MODELS, builtin_model_path
from lora_studio.core.config import ModelFamily
from lora_studio.core.errors import ModelError
from lora_studio.core.model_lock import MODEL_BUILD_LOCK

log = logging.getLogger(__name__)

TINY_MODEL_REVISION = 1
_BUILD_LOCK = MODEL_BUILD_LOCK  # building a model: see core/model_lock.py

# Words the tiny tokenizer learns merges from, so common caption words become one or a
# few tokens instead of one token per letter.
_CORPUS = """
a an the of and with in on at by for from to photo photograph picture image painting drawing
illustration render style art portrait landscape close up closeup full body face person man
woman girl boy child people dog cat bird horse animal tree trees forest flower flowers grass
field hill hills mountain mountains river lake sea ocean beach sky cloud clouds sun moon star
stars night day sunset sunrise morning evening light dark shadow shadows red orange yellow
green blue purple pink white black gray grey brown gold silver colorful bright soft warm cool
city street building house road car window door room wall floor table chair detailed high
quality masterpiece best sharp focus background foreground simple flat layered paper papercut
cut texture pattern gradient smooth wearing shirt dress hat hair eyes smiling standing sitting
looking viewer small large big tall long short round square old new young beautiful cute
lighthouse boat snow rain fog winter summer autumn spring pine palm waves reflection water
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def learn_bpe(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Learn BPE merges (CLIP style: the last symbol of a word carries ``</w>``).

    Deterministic: ties between equally frequent pairs go to the smallest pair.
    """
    byte_map = bytes_to_unicode()
    words: collections.Counter[tuple[str, ...]] = collections.Counter()
    for word in corpus.lower().split():
        chars = [byte_map[b] for b in word.encode("utf-8")]
        words[tuple(chars[:-1]) + (chars[-1] + "</w>",)] += 1
    return merge_pairs(words, num_merges)


def merge_pairs(
    words: collections.Counter[tuple[str, ...]], num_merges: int
) -> list[tuple[str, str]]:
    """BPE merges over ``words`` (symbol tuples with their counts), most frequent pair
    first, ties to the smallest pair: deterministic."""
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: collections.Counter[tuple[str, ...]] = collections.Counter()
        for symbols, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def write_clip_tokenizer_files(folder: Path, num_merges: int = 600) -> int:
    """Write ``vocab.json`` and ``merges.txt`` in CLIP's format; returns the vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = learn_bpe(_CORPUS, num_merges)
    seen = set(tokens)
    for left, right in merges:
        token = left + right
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)


def make_tiny_sd15(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build the tiny SD 1.5 pipeline and save it as a diffusers folder at ``folder``.

    The same seed and library versions give the same weights.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    target = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tok_dir = Path(scratch) / "tokenizer"
        vocab_size = write_clip_tokenizer_files(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
        bos = tokenizer.convert_tokens_to_ids("<|startoftext|>")
        eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_tiny_pipeline(pipe, target, ModelFamily.SD15, seed)


def make_tiny(folder: str | os.PathLike[str], family: ModelFamily | str = "sd15") -> Path:
    """Build the tiny model of ``family`` at ``folder`` (``models make-tiny``)."""
    from lora_studio.training.families import get_family

    return get_family(ModelFamily(family)).make_tiny(Path(folder))


def save_tiny_pipeline(pipe: object, target: Path, family: ModelFamily, seed: int) -> Path:
    """Save ``pipe`` at ``target`` atomically (staging folder + rename) with the marker
    file that tells :func:`ensure_builtin_model` the build is complete and current."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)  # type: ignore[attr-defined]
        (staging / "lora_studio_tiny.json").write_text(
            json.dumps({"family": family.value, "revision": TINY_MODEL_REVISION, "seed": seed}),
            encoding="utf-8",
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _is_current(folder: Path) -> bool:
    marker = folder / "lora_studio_tiny.json"
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return data.get("revision") == TINY_MODEL_REVISION and (folder / "model_index.json").exists()


def ensure_builtin_model(name: str) -> Path:
    """Build ``builtin:<name>`` into the user cache on first use; return its folder."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"Unknown built-in model builtin:{name}.")
    folder = builtin_model_path(name)
    with _BUILD_LOCK:
        if not _is_current(folder):
            log.info("Building the built-in model %s in %s", name, folder)
            try:
                make_tiny(folder, BUILTIN_MODELS[name])
            except OSError as exc:
                raise ModelError(
                    f"Cannot build the built-in model in {folder}: {exc.strerror or exc}."
                ) from None
            except SafetensorError as exc:  # its writer's I/O errors (a full disk)
                raise ModelError(f"Cannot build the built-in model in {folder}: {exc}.") from None
    return folder
