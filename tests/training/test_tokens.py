"""Caption tokens counted with the base model's own tokenizer (the tiny built-in model)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from lora_studio.core.dataset import Dataset
from lora_studio.core.stats import dataset_statistics
from lora_studio.training.tokens import caption_token_counter

CAPTIONS = {
    "a.png": "papercut style, a red fox in a snowy forest",
    "b.png": "papercut style, " + ", ".join(["layered paper texture"] * 30),
    "c.png": "zxqvj",
}


def _dataset(root: Path) -> Dataset:
    from PIL import Image

    root.mkdir()
    for name, caption in CAPTIONS.items():
        Image.new("RGB", (64, 64)).save(root / name)
        (root / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return Dataset.from_directory(root)


def test_tokens_are_counted_with_the_tiny_models_clip_tokenizer(tiny_model, tmp_path) -> None:
    counter = caption_token_counter("builtin:tiny-sd15")
    assert counter is not None
    assert counter.name == "CLIP (tokenizer)" and counter.limit == 75
    reference = AutoTokenizer.from_pretrained(tiny_model / "tokenizer", local_files_only=True)
    for caption in CAPTIONS.values():
        ids = reference(caption, add_special_tokens=False, verbose=False)["input_ids"]
        assert counter(caption) == len(ids) > 0
    dataset = _dataset(tmp_path / "ds")
    stats = dataset_statistics(
        dataset, count_tokens=counter, token_limit=counter.limit, tokenizer_name=counter.name
    )
    counts = [counter(c) for c in CAPTIONS.values()]
    assert stats.captions.max_tokens == max(counts) > 75
    assert stats.captions.mean_tokens == sum(counts) / 3
    assert stats.captions.over_limit == ("b.png",)
    assert stats.captions.tokenizer == "CLIP (tokenizer)"


def test_a_diffusers_folder_works_and_a_lone_checkpoint_without_configs_has_none(
    tiny_model, tmp_path
) -> None:
    counter = caption_token_counter(str(tiny_model))
    builtin = caption_token_counter("builtin:tiny-sd15")
    assert counter is not None and builtin is not None
    assert counter(CAPTIONS["a.png"]) == builtin(CAPTIONS["a.png"])
    lone = tmp_path / "model.safetensors"
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((1,), np.float32)}, lone)
    assert caption_token_counter(str(lone)) is None
