"""Random and adversarial input for every reader of outside data: caption files, dataset
folders, the proposals manifest, config TOML, and the ComfyUI / Replicate answers.

The rule each test checks: the reader returns, or raises a
:class:`~lora_studio.core.errors.LoraStudioError` (a clear message the app shows); never
any other exception, never a hang (hypothesis's deadline catches slow cases).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lora_studio.backends.comfyui import (
    describe_node_errors,
    parse_node_schema,
    parse_training_bar,
)
from lora_studio.backends.replicate import parse_training_logs, training_cost
from lora_studio.core.config import LoraConfig
from lora_studio.core.dataset import Dataset, read_caption
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.proposals import ProposalStore

FUZZ = settings(
    max_examples=int(os.environ.get("LORA_STUDIO_FUZZ_EXAMPLES", "60")),
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: JSON values of any shape (what a confused or hostile server may answer)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def _ok_or_clear(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except LoraStudioError as exc:
        assert str(exc).strip(), "an error without a message"
        return None


# ---- files on disk ------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=400))
def test_any_caption_bytes_read_or_give_a_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    result = _ok_or_clear(read_caption, path)
    if result is not None:
        text, encoding = result
        assert text is None or isinstance(text, str)
        assert isinstance(encoding, str)


#: file names users and downloads produce: unicode, spaces, leading dashes, dots, long
names = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",), blacklist_characters="/\x00", min_codepoint=32
    ),
    min_size=1,
    max_size=60,
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)


@FUZZ
@given(
    files=st.lists(
        st.tuples(
            names, st.sampled_from([".png", ".jpg", ".txt", ".webp", ""]), st.binary(max_size=64)
        ),
        max_size=8,
    ),
    long_name=st.booleans(),
)
def test_a_folder_of_odd_names_and_broken_files_opens(
    tmp_path_factory: pytest.TempPathFactory, files: list[tuple[str, str, bytes]], long_name: bool
) -> None:
    folder = tmp_path_factory.mktemp("ds")
    good = folder / ("-" + "ü" * 60 + " x.png" if long_name else "- leading dash.png")
    Image.new("RGB", (16, 16), "red").save(good)
    for stem, suffix, data in files:
        try:
            (folder / f"{stem}{suffix}").write_bytes(data)
        except OSError:  # a name this file system refuses: not the loader's problem
            continue
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a symlink loop
    dataset = _ok_or_clear(Dataset.from_directory, folder)
    assert dataset is not None
    assert good in {item.path for item in dataset.images}


@FUZZ
@given(content=st.one_of(st.text(max_size=300), json_values.map(json.dumps)))
def test_any_manifest_is_read_or_refused_clearly(
    tmp_path_factory: pytest.TempPathFactory, content: str
) -> None:
    folder = tmp_path_factory.mktemp("ds")
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "dataset.json").write_text(content, encoding="utf-8")
    store = ProposalStore(Dataset.from_directory(folder))
    proposals = _ok_or_clear(store.proposals)
    if proposals is not None:
        _ok_or_clear(store.review)
        # accepting whatever it found never crashes either
        _ok_or_clear(store.accept, None)


toml_keys = st.sampled_from(
    [
        "name",
        "rank",
        "alpha",
        "learning_rate",
        "family",
        "resolution",
        "optimizer",
        "seed",
        "lr_scheduler",
        "mixed_precision",
        "max_steps",
        "trigger_word",
        "unknown_key",
    ]
)
toml_values = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=string.printable, max_size=20),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
)


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@FUZZ
@given(
    raw=st.one_of(
        st.text(max_size=200),
        st.dictionaries(toml_keys, toml_values, max_size=6).map(
            lambda d: "\n".join(f"{k} = {_toml_value(v)}" for k, v in d.items())
        ),
    )
)
def test_any_config_toml_loads_or_is_refused_clearly(
    tmp_path_factory: pytest.TempPathFactory, raw: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_text(raw, encoding="utf-8")
    config = _ok_or_clear(LoraConfig.load, path)
    if config is not None:
        assert isinstance(config, LoraConfig)


# ---- server answers -----------------------------------------------------------------------


@FUZZ
@given(logs=st.text(max_size=600), total=st.none() | st.integers(-5, 10_000))
def test_replicate_logs_of_any_shape_parse(logs: str, total: int | None) -> None:
    facts = parse_training_logs(logs, total)
    assert facts is not None


@FUZZ
@given(
    adversarial=st.sampled_from(
        [
            "flux_train_replicate: 100%|##| 999999999999999999999/0 [00:00<?, ?it/s, loss: nan]",
            "x: 50%|#| 5/10 [99:99:99<-1, inf s/it, lr: -1e999 loss: 1e999]",
            "\r" * 10_000,
            "%|" * 5_000,
        ]
    ),
    noise=st.text(max_size=100),
)
def test_replicate_logs_adversarial_lines_parse(adversarial: str, noise: str) -> None:
    assert parse_training_logs(noise + adversarial + noise, 10) is not None


@FUZZ
@given(training=json_values, hardware=st.text(max_size=20))
def test_replicate_training_cost_of_any_answer(training: Any, hardware: str) -> None:
    if isinstance(training, dict):
        cost = _ok_or_clear(training_cost, training, hardware)
        assert cost is None or cost >= 0


@FUZZ
@given(text=st.text(max_size=300))
def test_comfyui_console_lines_of_any_shape_parse(text: str) -> None:
    parse_training_bar(text)


@FUZZ
@given(name=st.text(max_size=20), info=json_values)
def test_comfyui_object_info_of_any_shape(name: str, info: Any) -> None:
    if isinstance(info, dict):
        _ok_or_clear(parse_node_schema, name, info)


@FUZZ
@given(body=json_values)
def test_comfyui_node_errors_of_any_shape(body: Any) -> None:
    if isinstance(body, dict):
        graph = {"1": {"class_type": "TrainLoraNode", "inputs": {}}}
        sentence, per_node = _ok_or_clear(describe_node_errors, body, graph) or ("x", {})
        assert isinstance(sentence, str) and isinstance(per_node, dict)
