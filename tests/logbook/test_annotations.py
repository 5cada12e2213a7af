"""Annotations live in the run directory, survive a store rebuild, and keep an audit trail."""

import pytest

from midflight import logbook
from midflight.logbook.store import memory, open_store, queries
from midflight.logbook.store.ingest import ingest


@pytest.fixture
def run_dir(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        run.log({"loss": 1.0}, step=1)
    return tmp_path / "run"


def test_annotate_edit_delete_with_audit_trail_and_rebuild(run_dir, tmp_path):
    a = logbook.annotate(run_dir, step=100, text="ECC error on node 17, replaced", kind="hardware", author="susan")
    b = logbook.annotate(run_dir, step=200, step_end=260, text="lr x0.5 after spike", kind="lr")
    logbook.edit_annotation(run_dir, a, text="ECC error on node 17 (GPU 3), replaced", author="stephen")
    logbook.delete_annotation(run_dir, b)
    store_path = tmp_path / "s.duckdb"
    with open_store(store_path) as store:
        ingest(store, [run_dir])
        live = queries.annotations(store, "run")
        assert live["annotation_id"].tolist() == [a]
        assert live["text"].item() == "ECC error on node 17 (GPU 3), replaced" and live["kind"].item() == "hardware"
        history = queries.annotation_history(store, "run")
        assert history["op"].tolist() == ["create", "create", "edit", "delete"]
        assert history["text"].iloc[0] == "ECC error on node 17, replaced"  # the old text is kept
        assert history["author"].tolist()[:3] == ["susan", history["author"].iloc[1], "stephen"]
    store_path.unlink()  # the store is derived: a rebuild gives the same annotations
    with open_store(store_path) as store:
        ingest(store, [run_dir])
        assert queries.annotations(store, "run")["annotation_id"].tolist() == [a]


def test_unicode_long_and_html_text_is_kept_verbatim(run_dir):
    texts = [
        "loss spike 🚀 — ложный сигнал? 損失",
        "<script>alert('x')</script> & <b>bold</b>",
        "x" * 100_000,
        "line one\nline two\ttab \x07 bell",
    ]
    ids = [logbook.annotate(run_dir, step=i + 1, text=t) for i, t in enumerate(texts)]
    store = memory()
    ingest(store, [run_dir])
    got = queries.annotations(store, "run").set_index("annotation_id")["text"]
    assert [got[i] for i in ids] == texts


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(step=-1, text="t"), r"integer in \[0, 2\*\*63\)"),
        (dict(step=1.5, text="t"), r"integer in \[0, 2\*\*63\)"),
        (dict(step=2**63, text="t"), r"integer in \[0, 2\*\*63\)"),
        (dict(step=5, step_end=4, text="t"), "step_end"),
        (dict(step=1, text="t", kind="gossip"), "kind"),
        (dict(step=1, text="   "), "non-empty"),
        (dict(step=1, text="x" * 100_001), "limit"),
    ],
)
def test_bad_annotations_are_refused_with_a_clear_message(run_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        logbook.annotate(run_dir, **kwargs)
    assert not (run_dir / "annotations.jsonl").exists()


def test_edit_and_delete_unknown_ids(run_dir):
    with pytest.raises(KeyError):
        logbook.edit_annotation(run_dir, "nope", text="x")
    with pytest.raises(KeyError):
        logbook.delete_annotation(run_dir, "nope")
    a = logbook.annotate(run_dir, step=1, text="t")
    with pytest.raises(ValueError, match="editable"):
        logbook.edit_annotation(run_dir, a, author_email="x")


def test_torn_annotation_line_does_not_swallow_the_next_one(run_dir):
    with open(run_dir / "annotations.jsonl", "ab") as f:
        f.write(b'{"k":"annotation","op":"create","id":"torn","te')  # a writer died mid-line
    a = logbook.annotate(run_dir, step=3, text="after the torn line")
    store = memory()
    report = ingest(store, [run_dir])
    assert queries.annotations(store, "run")["annotation_id"].tolist() == [a]
    assert report.malformed == 1
