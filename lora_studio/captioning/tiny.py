"""Tiny random-weight BLIP and BLIP-2 models, built here from small configs.

They have the real architectures (vision transformer, BLIP's BERT-style text decoder;
BLIP-2's Q-Former and an OPT language model) at toy size, with tokenizers built here too
(a WordPiece ``vocab.txt`` for BLIP, a GPT-2 byte-level BPE ``vocab.json`` +
``merges.txt`` for OPT), and are saved with ``save_pretrained`` exactly as the real
checkpoints are laid out. :class:`~lora_studio.captioning.local.LocalBlipProvider` loads
them through the same offline code as a real model; what they write is random text.

``lora-studio caption make-tiny-model DIR --kind blip|blip2`` builds one.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_studio.captioning.base import CaptionerError

TINY_REVISION = 1
#: the vision tower's input size (pixels) and patch size
IMAGE_SIZE, PATCH_SIZE = 30, 2
HIDDEN = 32

# Caption words the tokenizers know whole.
_CORPUS = """
a an the of and with in on at by for from to is are photo photograph picture image painting
drawing illustration style art portrait landscape close up person man woman girl boy dog cat
bird horse tree trees forest flower grass field mountain river lake sea beach sky cloud sun
night day sunset light dark red orange yellow green blue purple pink white black gray brown
city street building house car window room table chair sitting standing wearing shirt dress
hat hair smiling looking small large old young paper cut papercut fox boat snow water
"""
_PUNCTUATION = list(".,;:!?'\"()-/&")


def make_tiny_blip(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build a tiny BLIP captioner and save it at ``folder`` (replaced if it exists)."""
    import torch
    import transformers
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    def build(staging: Path, scratch: Path) -> None:
        tokenizer_dir = scratch / "tokenizer"
        write_wordpiece_vocab(tokenizer_dir)
        _write_json(
            tokenizer_dir / "tokenizer_config.json",
            {
                "tokenizer_class": "BertTokenizer",
                "do_lower_case": True,
                "bos_token": "[DEC]",
                "model_max_length": 512,
            },
        )
        tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
        processor = transformers.BlipProcessor(
            image_processor=_image_processor(), tokenizer=tokenizer
        )
        config = BlipConfig(
            vision_config={
                "hidden_size": HIDDEN,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": IMAGE_SIZE,
                "patch_size": PATCH_SIZE,
                "projection_dim": HIDDEN,
            },
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": HIDDEN,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 512,
                "projection_dim": HIDDEN,
                "bos_token_id": tokenizer.bos_token_id,
                "sep_token_id": tokenizer.sep_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.sep_token_id,
            },
            projection_dim=HIDDEN,
            image_text_hidden_size=HIDDEN,
        )
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)

    return _save(Path(folder), "blip", seed, build)


def make_tiny_blip2(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """Build a tiny BLIP-2 (Q-Former + OPT) captioner and save it at ``folder``."""
    import torch
    import transformers
    from transformers import Blip2Config, Blip2ForConditionalGeneration, GPT2Tokenizer, OPTConfig

    num_query_tokens = 4

    def build(staging: Path, scratch: Path) -> None:
        tokenizer_dir = scratch / "tokenizer"
        write_byte_level_bpe(tokenizer_dir)
        _write_json(
            tokenizer_dir / "tokenizer_config.json",
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": "</s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "add_bos_token": True,
                "model_max_length": 512,
            },
        )
        tokenizer = GPT2Tokenizer.from_pretrained(tokenizer_dir)
        # The processor adds the "<image>" token the query outputs are placed at.
        processor = transformers.Blip2Processor(
            image_processor=_image_processor(),
            tokenizer=tokenizer,
            num_query_tokens=num_query_tokens,
        )
        image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
        vocab = len(processor.tokenizer)
        text_config = OPTConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            ffn_dim=37,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=HIDDEN,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        config = Blip2Config(
            vision_config={
                "hidden_size": HIDDEN,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": IMAGE_SIZE,
                "patch_size": PATCH_SIZE,
            },
            qformer_config={
                "vocab_size": vocab,
                "hidden_size": HIDDEN,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 37,
                "max_position_embeddings": 512,
                "cross_attention_frequency": 1,
            },
            text_config=text_config.to_dict(),
            num_query_tokens=num_query_tokens,
            image_token_index=image_token,
            image_text_hidden_size=HIDDEN,
        )
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config)
        # Random weights often pick the end token first; a few tokens make the
        # generated "caption" visible (the real checkpoints set their own lengths).
        model.generation_config.min_new_tokens = 3
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)

    return _save(Path(folder), "blip2", seed, build)


def make_tiny_caption_model(folder: str | os.PathLike[str], kind: str, seed: int = 0) -> Path:
    """``make_tiny_blip`` or ``make_tiny_blip2`` by ``kind`` (``blip`` / ``blip2``)."""
    builders = {"blip": make_tiny_blip, "blip2": make_tiny_blip2}
    if kind not in builders:
        raise CaptionerError(f"No tiny model of kind {kind!r}; choose blip or blip2.")
    return builders[kind](folder, seed)


# ---- tokenizers ---------------------------------------------------------------------------


def write_wordpiece_vocab(folder: Path, corpus: str = _CORPUS) -> int:
    """Write a BERT ``vocab.txt`` (WordPiece): BERT's special tokens, letters and digits
    (also as ``##`` continuations), punctuation, the corpus words, then BLIP's ``[DEC]``
    (its decoder's start token) and ``[ENC]``. Returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += chars + ["##" + c for c in chars] + _PUNCTUATION
    for word in dict.fromkeys(corpus.lower().split()):
        if word not in tokens:
            tokens.append(word)
    tokens += ["[DEC]", "[ENC]"]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return len(tokens)


def write_byte_level_bpe(folder: Path, corpus: str = _CORPUS, num_merges: int = 300) -> int:
    """Write a GPT-2 style byte-level BPE (``vocab.json`` + ``merges.txt``) as OPT uses:
    ``<s> <pad> </s> <unk>`` first, the 256 byte symbols, then merges learned from
    ``corpus`` (a word's leading space is the ``Ġ`` symbol). Returns the vocabulary size."""
    from lora_studio.training.tiny import bytes_to_unicode, merge_pairs

    folder.mkdir(parents=True, exist_ok=True)
    byte_map = bytes_to_unicode()
    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in byte_map.values():
        vocab.setdefault(symbol, len(vocab))
    words = [tuple(byte_map[b] for b in (" " + w).encode("utf-8")) for w in corpus.lower().split()]
    merges = merge_pairs(collections.Counter(words), num_merges)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)


# ---- saving -------------------------------------------------------------------------------


def _image_processor() -> Any:
    import transformers

    # transformers 5 has a PIL-only class (the default one wants torchvision).
    cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    return cls(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _save(target: Path, kind: str, seed: int, build: Callable[[Path, Path], None]) -> Path:
    """Build into a staging folder beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            build(staging, Path(scratch))
        _write_json(
            staging / "lora_studio_tiny.json",
            {"kind": kind, "revision": TINY_REVISION, "seed": seed},
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
