"""Fuzzed lines in the files people append to: the control channel (RUN/interventions.jsonl), annotations
(RUN/annotations.jsonl) and the `annotate` command.

A hand-written or half-written control line must never stop training: `pending` (the trainer's poll)
never raises, what it returns can be told apart by id and checked by `validate`, which refuses anything
that is not finite and plausible with a ValueError or TypeError (what the trainer catches). Good lines
around a bad one still count (a good request stays pending, a good annotation stays live), and a run
whose files hold such lines still ingests, summarises as strict JSON and exports (a sample of cases,
through the shared store).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from midflight.logbook.importers import import_logs
from midflight.logbook.record import annotations, interventions, layout
from midflight.logbook.values import STEP_LIMIT
from tests.fuzz import fuzzing
from tests.fuzz.fuzzing import COUNTS, FIX, fuzz_settings, strict_json

HUGE = 10**400  # a JSON integer no float holds
VALUES = st.one_of(
    st.sampled_from(
        [1e308, -1e308, math.inf, -math.inf, math.nan, 0, -1, 2**63, 2**70, HUGE, 0.5, 1.0, True, None, "0.5", [], {}]
    ),
    st.floats(),
    st.integers(),
    st.text(max_size=6),
)
IDS = st.one_of(
    st.text(max_size=12).filter(lambda s: not s.startswith("good")),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.none(),
    st.floats(),
    st.booleans(),
)
STEPS = st.one_of(
    st.sampled_from([99999999999999999999, -1, 2**63, 2**63 - 1, HUGE, 1e30, math.nan, math.inf, 12.5, "12", None]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
)
PARAM_NAMES = sorted({p.name for k in interventions.VOCABULARY.values() for p in k.params} | {"changes", "x"})
CHANGES = st.dictionaries(st.sampled_from([*interventions.rewind_changes(), "bogus"]), VALUES, max_size=3)
PARAMS = st.one_of(
    st.dictionaries(st.sampled_from(PARAM_NAMES), st.one_of(VALUES, CHANGES), max_size=3),
    st.lists(VALUES, max_size=2),
    st.none(),
    st.text(max_size=5),
    st.integers(),
)
ACTIONS = st.one_of(
    st.sampled_from([*interventions.VOCABULARY, "", "rm -rf /"]),
    st.text(max_size=8),
    st.integers(),
    st.lists(st.text(max_size=2), max_size=2),
    st.none(),
)
TEXTS = st.one_of(
    st.text(max_size=40),
    st.just("<script>alert(1)</script>"),
    st.just("x" * (fuzzing.FIELD_LIMIT + 1)),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=2), max_size=2),
)


def _record(kind: str, ops: list[str], fields: dict):
    sometimes = st.integers(0, 9)
    return st.fixed_dictionaries(
        {
            "k": st.one_of(st.just(kind), st.just(kind), st.just(kind), st.sampled_from(["annotation", "", 5])),
            "op": st.one_of(st.sampled_from(ops), st.sampled_from(ops), st.sampled_from([*ops, "x"]), VALUES),
            "id": st.one_of(st.text(max_size=6).filter(lambda s: not s.startswith("good")), IDS),
        },
        optional={"t": VALUES, **fields},
    ).flatmap(lambda rec: sometimes.map(lambda n: {k: v for k, v in rec.items() if n or k != "id"}))


CONTROL = _record(
    "intervention",
    ["request", "applied", "rejected"],
    {"action": ACTIONS, "params": PARAMS, "step": STEPS, "note": TEXTS, "detail": TEXTS, "author": TEXTS},
)
ANNOTATION = _record(
    "annotation",
    ["create", "edit", "delete"],
    {
        "step": STEPS,
        "step_end": STEPS,
        "kind": st.one_of(st.sampled_from(annotations.KINDS), TEXTS),
        "text": TEXTS,
        "author": TEXTS,
    },
)


def _encode(rec: dict) -> bytes:
    return json.dumps(rec, allow_nan=True).encode()  # NaN / Infinity tokens: what a hand-edit may hold


@st.composite
def junk_lines(draw, records):
    """One hostile line: a fuzzed record, or a broken one."""
    kind = draw(st.sampled_from(["record", "record", "record", "truncated", "binary", "deep", "long", "array"]))
    if kind == "record":
        return _encode(draw(records))
    if kind == "truncated":
        line = _encode(draw(records))
        return line[: draw(st.integers(0, max(0, len(line) - 1)))]
    if kind == "binary":
        return draw(st.binary(max_size=80)).replace(b"\n", b"")
    if kind == "deep":
        return b'{"k": "intervention", "op": "request", "id": ' + b"[" * 50_000
    if kind == "long":
        return _encode({"k": records is ANNOTATION and "annotation" or "intervention", "op": "x", "id": "x" * 200_000})
    return b"[1, 2]"


@st.composite
def files(draw, good: list[bytes], records):
    """The good lines with 1 to 5 hostile lines between them; CRLF or LF endings; maybe a torn tail."""
    lines = list(good)
    for _ in range(draw(st.integers(1, 5))):
        lines.insert(draw(st.integers(0, len(lines))), draw(junk_lines(records)))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    tail = draw(st.sampled_from([b"", b"", b'{"k": "interv']))
    return newline.join(lines) + newline + tail


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A real run (the fairseq fixture, imported) that sampled cases copy to go through the store."""
    run_dir = tmp_path_factory.mktemp("control") / "template"
    import_logs("fairseq", [FIX / "fairseq_legacy_pipe_format.log"], run_dir)
    return run_dir


def _real_run(template, run_dir, name: str, data: bytes):
    shutil.copytree(template / layout.SEGMENTS, run_dir / layout.SEGMENTS)
    (run_dir / name).write_bytes(data)


def _through_the_store(shared_store, runs: list, counts, check) -> None:
    from midflight.logbook.exporters.bundle import export
    from midflight.logbook.report.summary import summarize
    from midflight.logbook.store.ingest import ingest

    store, folder = shared_store
    report = ingest(store, runs)
    assert not report.errors, report.errors
    failures = []
    for run_dir in runs:
        try:
            check(store, run_dir.name)
            s = summarize(store, run_dir.name)
            strict_json(json.dumps(s, default=str, allow_nan=False))
            counts.summarised += 1
            export(store, run_dir.name, "csv", folder / f"{run_dir.name}-csv")
            counts.exported += 1
        except Exception as exc:  # noqa: BLE001 - every sampled run is checked; the test fails with all of them
            failures.append(f"{run_dir}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


GOOD_CONTROL = [
    _encode({"k": "intervention", "op": "request", "id": "good-1", "t": 1.0, "action": "lr_multiplier",
             "params": {"factor": 0.5}, "note": "spike", "author": "a"}),
    _encode({"k": "intervention", "op": "request", "id": "good-2", "t": 2.0, "action": "stop", "params": {},
             "note": "done", "author": "a"}),
    _encode({"k": "intervention", "op": "applied", "id": "good-2", "t": 3.0, "step": 20, "detail": "ok",
             "author": "trainer"}),
]  # fmt: skip


def test_fuzz_control_channel(fuzz_dir, template, shared_store):
    counts = COUNTS["control channel"]
    serial = itertools.count()
    sample = []

    @fuzz_settings()
    @given(files(GOOD_CONTROL, CONTROL))
    def case(data):
        n = next(serial)
        counts.cases += 1
        run_dir = fuzz_dir / f"control-{n}"
        run_dir.mkdir()
        (run_dir / layout.INTERVENTIONS).write_bytes(data)
        reqs = interventions.pending(run_dir)  # the trainer's poll: must never raise
        ids = [r.get("id") for r in reqs]
        assert "good-1" in ids and "good-2" not in ids
        for r in reqs:
            hash(r.get("id"))  # the trainer keeps the ids it handled in a set
            try:
                params = interventions.validate(r.get("action"), r.get("params"))
            except (ValueError, TypeError) as exc:  # the trainer rejects the request with this reason
                fuzzing.one_line(exc)
                counts.rejected_lines += 1
                continue
            for name, v in _numbers(params):
                assert math.isfinite(v) and math.isfinite(v * 1e3), f"{r.get('action')}: {name}={v!r} was accepted"
        shutil.rmtree(run_dir)
        if len(sample) < fuzzing.STORE_SAMPLE and n % 7 == 0:
            real = fuzz_dir / f"control-run-{n}"
            _real_run(template, real, layout.INTERVENTIONS, data)
            sample.append(real)

    case()

    def check(store, run):
        from midflight.logbook.store import queries

        assert "good-1" in set(queries.interventions(store, run)["intervention_id"].astype(str))

    _through_the_store(shared_store, sample, counts, check)


def _numbers(params: dict):
    for name, v in params.items():
        if isinstance(v, dict):
            yield from _numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield name, v


GOOD_ANNOTATIONS = [
    _encode({"k": "annotation", "op": "create", "id": "good-a", "t": 1.0, "step": 100, "step_end": None,
             "kind": "note", "text": "a good note", "author": "a"}),
    _encode({"k": "annotation", "op": "create", "id": "good-b", "t": 2.0, "step": 200, "step_end": 250,
             "kind": "hardware", "text": "node swap", "author": "a"}),
]  # fmt: skip


def test_fuzz_annotation_lines(fuzz_dir, template, shared_store):
    counts = COUNTS["annotations file"]
    serial = itertools.count()
    sample = []

    @fuzz_settings()
    @given(files(GOOD_ANNOTATIONS, ANNOTATION))
    def case(data):
        n = next(serial)
        counts.cases += 1
        run_dir = fuzz_dir / f"ann-{n}"
        run_dir.mkdir()
        (run_dir / layout.ANNOTATIONS).write_bytes(data)
        live = annotations.current(run_dir)  # what the dashboard's edit form reads: must never raise
        assert {"good-a", "good-b"} <= set(live)
        shutil.rmtree(run_dir)
        if len(sample) < fuzzing.STORE_SAMPLE and n % 7 == 0:
            real = fuzz_dir / f"ann-run-{n}"
            _real_run(template, real, layout.ANNOTATIONS, data)
            sample.append(real)

    case()

    def check(store, run):
        from midflight.logbook.store import queries

        ann = queries.annotations(store, run)
        assert {"good-a", "good-b"} <= set(ann["annotation_id"].astype(str)), "good annotations were hidden"
        assert ann["step"].between(0, STEP_LIMIT - 1).all()

    _through_the_store(shared_store, sample, counts, check)


CLI_STEPS = st.one_of(
    st.sampled_from(["99999999999999999999", "9" * 401, "-1", "0", "1e30", "12.5", "nan", "inf", "", " 7", "0x10"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


def test_fuzz_annotate_command(fuzz_dir, template):
    """`midflight annotate` in-process (the CLI's own main): exit 0 with a valid step written, or exit 2
    with one `error:` / usage line; never a traceback."""
    from midflight.logbook.cli import main

    counts = COUNTS["annotate command"]
    run_dir = fuzz_dir / "run"
    shutil.copytree(template / layout.SEGMENTS, run_dir / layout.SEGMENTS)

    @fuzz_settings()
    @given(CLI_STEPS, st.one_of(st.none(), CLI_STEPS), st.one_of(st.text(max_size=30), st.just("<b>x</b>")))
    def case(step, step_end, text):
        counts.cases += 1
        argv = ["annotate", str(run_dir), f"--step={step}", f"--text={text}"]
        if step_end is not None:
            argv.append(f"--step-end={step_end}")
        err = io.StringIO()
        before = annotations.current(run_dir)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's usage error
                rc = exc.code
        assert rc in (0, 2), err.getvalue()
        assert "Traceback" not in err.getvalue()
        if rc == 2:
            counts.one_line_errors += 1
            assert err.getvalue().strip(), "exit 2 without a message"
            return
        new = [a for i, a in annotations.current(run_dir).items() if i not in before]
        assert len(new) == 1
        for key in ("step", "step_end"):
            v = new[0].get(key)
            assert v is None or (type(v) is int and 0 <= v < STEP_LIMIT), f"annotate wrote {key}={v!r}"

    case()
