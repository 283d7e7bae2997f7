"""Caption proposals in dataset.json: add, review, accept, reject, conflicts, provenance."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from lora_studio.core.dataset import Dataset
from lora_studio.core.errors import DatasetError
from lora_studio.core.proposals import (
    DiffOp,
    Proposal,
    ProposalState,
    ProposalStore,
    word_diff,
)


def _folder(tmp_path: Path, captions: dict[str, str | None]) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    for name, caption in captions.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(path)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return root


def _proposal(path: str, text: str, previous: str | None = None, **kw) -> Proposal:
    return Proposal(path=path, text=text, provider="ollama", model="llava", previous=previous, **kw)


def test_proposals_live_in_dataset_json_and_the_folder_still_opens(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None, "sub/b.png": "old b"})
    dataset = Dataset.open(root)
    store = ProposalStore(dataset)
    store.add([_proposal("a.png", "sks, a red square"), _proposal("sub/b.png", "new b", "old b")])

    data = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert data["proposals"]["a.png"]["text"] == "sks, a red square"
    assert data["proposals"]["sub/b.png"]["previous"] == "old b"
    # A complete manifest: opening it directly gives the same images and captions.
    assert data["root"] == "." and {i["file"] for i in data["images"]} == {"a.png", "sub/b.png"}
    from_manifest = Dataset.from_manifest(root / "dataset.json")
    assert [i.path for i in from_manifest] == [i.path for i in dataset]
    # Opening the folder ignores the manifest: same images, captions from the files.
    reopened = Dataset.open(root)
    assert [(i.path, i.caption) for i in reopened] == [(i.path, i.caption) for i in dataset]
    assert not (root / "a.txt").exists()  # nothing written until accepted


def test_review_shows_state_current_caption_and_a_diff(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None, "b.png": "old b", "c.png": "same", "d.png": "x"})
    store = ProposalStore(Dataset.open(root))
    store.add(
        [
            _proposal("a.png", "a new"),
            _proposal("b.png", "new b", "old b"),
            _proposal("c.png", "same", "same"),
            _proposal("d.png", "new d", "x"),
            _proposal("gone.png", "ghost"),
        ]
    )
    (root / "d.txt").write_text("user edited d", encoding="utf-8")  # after the proposal

    views = {v.path: v for v in store.review()}
    assert views["a.png"].state is ProposalState.READY and views["a.png"].current is None
    assert views["b.png"].state is ProposalState.READY
    assert views["c.png"].state is ProposalState.SAME
    assert views["d.png"].state is ProposalState.CONFLICT
    assert views["d.png"].current == "user edited d"
    assert views["gone.png"].state is ProposalState.MISSING and views["gone.png"].image is None
    assert views["b.png"].diff == [
        DiffOp("delete", "old"),
        DiffOp("insert", "new"),
        DiffOp("equal", " b"),
    ]
    assert [v.path for v in store.review(["b.png", root / "a.png"])] == ["a.png", "b.png"]


def test_accept_writes_captions_records_provenance_and_keeps_conflicts(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None, "b.png": "old b", "c.png": "old c"})
    dataset = Dataset.open(root)
    store = ProposalStore(dataset)
    store.add(
        [
            _proposal("a.png", "sks, a"),
            _proposal("b.png", "sks, b", "old b", mode="overwrite"),
            _proposal("c.png", "sks, c", "old c"),
        ]
    )
    (root / "c.txt").write_text("the user's c", encoding="utf-8")

    report = store.accept()
    assert report.accepted == {"a.png": "sks, a", "b.png": "sks, b"}
    assert report.conflicts == ["c.png"] and not report.ok
    assert (root / "a.txt").read_text(encoding="utf-8") == "sks, a\n"
    assert (root / "b.txt").read_text(encoding="utf-8") == "sks, b\n"
    assert (root / "c.txt").read_text(encoding="utf-8") == "the user's c"  # untouched
    assert set(store.proposals()) == {"c.png"}
    # The open dataset and the manifest's images follow what was written.
    assert dataset.find(root / "b.png").caption == "sks, b"
    images = json.loads((root / "dataset.json").read_text(encoding="utf-8"))["images"]
    assert {i["file"]: i["caption"] for i in images}["b.png"] == "sks, b"
    provenance = store.provenance()
    assert provenance["b.png"].provider == "ollama" and provenance["b.png"].model == "llava"
    assert provenance["b.png"].previous == "old b" and provenance["b.png"].mode == "overwrite"
    assert provenance["a.png"].previous is None and not provenance["a.png"].edited

    forced = store.accept(["c.png"], force=True)
    assert forced.accepted == {"c.png": "sks, c"} and forced.ok
    assert store.provenance()["c.png"].previous == "the user's c"  # the undo path
    assert store.proposals() == {}


def test_accept_an_edited_text_and_unknown_paths(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None})
    store = ProposalStore(Dataset.open(root))
    store.add([_proposal("a.png", "sks, a fox")])
    report = store.accept(["a.png", "nope.png"], texts={"a.png": "sks, a red fox"})
    assert report.accepted == {"a.png": "sks, a red fox"} and report.unknown == ["nope.png"]
    assert (root / "a.txt").read_text(encoding="utf-8") == "sks, a red fox\n"
    assert store.provenance()["a.png"].edited


def test_reject_drops_proposals_and_leaves_captions(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": "mine", "b.png": None})
    store = ProposalStore(Dataset.open(root))
    store.add([_proposal("a.png", "theirs", "mine"), _proposal("b.png", "b")])
    assert store.reject(["a.png"]) == ["a.png"]
    assert (root / "a.txt").read_text(encoding="utf-8") == "mine"
    assert set(store.proposals()) == {"b.png"}
    assert store.reject() == ["b.png"] and store.proposals() == {}
    assert "proposals" not in json.loads((root / "dataset.json").read_text(encoding="utf-8"))


def test_metadata_jsonl_datasets_get_their_row_written(tmp_path: Path) -> None:
    root = tmp_path / "hf"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16)).save(root / name)
    rows = [{"file_name": "a.png", "text": "old a", "extra": 1}, {"file_name": "b.png", "text": ""}]
    (root / "metadata.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    store = ProposalStore(Dataset.open(root))
    store.add([_proposal("a.png", "new a", "old a"), _proposal("b.png", "new b", "")])
    report = store.accept()
    assert report.ok and set(report.accepted) == {"a.png", "b.png"}
    written = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert written == [
        {"file_name": "a.png", "text": "new a", "extra": 1},
        {"file_name": "b.png", "text": "new b"},
    ]
    assert not (root / "a.txt").exists()


def test_apply_writes_at_once_but_keeps_a_conflict_as_a_proposal(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None, "b.png": "edited meanwhile"})
    store = ProposalStore(Dataset.open(root))
    report = store.apply([_proposal("a.png", "a"), _proposal("b.png", "b", previous=None)])
    assert report.accepted == {"a.png": "a"} and report.conflicts == ["b.png"]
    assert (root / "a.txt").read_text(encoding="utf-8") == "a\n"
    assert set(store.proposals()) == {"b.png"} and "a.png" in store.provenance()


def test_a_broken_manifest_is_never_overwritten(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None})
    (root / "dataset.json").write_text("{not json", encoding="utf-8")
    store = ProposalStore(Dataset.open(root))
    with pytest.raises(DatasetError, match="not valid JSON"):
        store.add([_proposal("a.png", "a")])
    assert (root / "dataset.json").read_text(encoding="utf-8") == "{not json"


def test_other_keys_and_a_foreign_root_are_kept(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a.png": None})
    other = tmp_path / "elsewhere"
    other.mkdir()
    manifest = {"version": 1, "root": "../elsewhere", "images": [], "notes": "mine"}
    (root / "dataset.json").write_text(json.dumps(manifest), encoding="utf-8")
    ProposalStore(Dataset.open(root)).add([_proposal("a.png", "a")])
    data = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert data["root"] == "../elsewhere" and data["images"] == [] and data["notes"] == "mine"
    assert data["proposals"]["a.png"]["text"] == "a"


def test_two_stores_adding_at_once_lose_nothing(tmp_path: Path) -> None:
    names = [f"i{n}.png" for n in range(20)]
    root = _folder(tmp_path, dict.fromkeys(names))
    stores = [ProposalStore(Dataset.open(root)) for _ in range(2)]

    def add(store: ProposalStore, part: list[str]) -> None:
        for name in part:
            store.add([_proposal(name, name)])

    threads = [
        threading.Thread(target=add, args=(stores[0], names[::2])),
        threading.Thread(target=add, args=(stores[1], names[1::2])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(stores[0].proposals()) == set(names)


WORD_DIFF_CASES = [
    ("same", "a red fox", "a red fox"),
    ("added tags", "a fox", "sks, a fox, snow"),
    ("replaced word", "a red fox", "a blue fox"),
    ("from empty", "", "a fox"),
    ("to empty", "a fox", ""),
    ("punctuation", "fox,snow", "fox, snow."),
]


@pytest.mark.parametrize(
    ("old", "new"), [case[1:] for case in WORD_DIFF_CASES], ids=[c[0] for c in WORD_DIFF_CASES]
)
def test_word_diff_rebuilds_both_texts(old: str, new: str) -> None:
    ops = word_diff(old, new)
    assert "".join(op.text for op in ops if op.kind != "insert") == old
    assert "".join(op.text for op in ops if op.kind != "delete") == new
    assert all(a.kind != b.kind for a, b in zip(ops, ops[1:], strict=False))


def test_word_diff_marks_whole_words() -> None:
    assert word_diff("a red fox", "a blue fox") == [
        DiffOp("equal", "a "),
        DiffOp("delete", "red"),
        DiffOp("insert", "blue"),
        DiffOp("equal", " fox"),
    ]
