"""Fuzzed input to every importer: nothing raises, bad lines are counted, good lines around them still import,
and every run that imported ingests cleanly, summarises as strict JSON and exports.

Each format gets MIDFLIGHT_FUZZ_EXAMPLES cases (300 in CI) mutated from its real fixtures (see fuzzing.py),
imported in-process. A sample of varied runs per format then goes through one shared DuckDB store, the
summary (`summary --json`'s dict, serialised as the CLI does, read back strictly), the text summary and the
CSV export; one run per format also through the Markdown and HTML logbooks and the CLI in-process.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import shutil
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from midflight.logbook.importers import import_logs
from midflight.logbook.record import layout
from tests.fuzz import fuzzing
from tests.fuzz.fuzzing import COUNTS, Counts, documents, fuzz_settings, seeds, signature, strict_json, try_import

TEXT_FORMATS = ("metaseq", "fairseq", "megatron", "mllog", "csv", "timeline", "chronicle")
SUFFIX = {"csv": ".csv", "timeline": ".csv", "chronicle": ".md"}
BY_ANNOTATIONS = ("timeline", "chronicle")  # formats whose lines become annotations, not steps


def nonfinite_paths(obj, path="") -> list[str]:
    """Where NaN or an infinity sits in a summary (what `summary --json` cannot print)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{path or '.'}={obj}"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{path}[{i}]")]
    return []


def check_store(shared_store, runs: list, counts: Counts, *, documents_too: bool) -> None:
    """Ingest `runs` into the shared store; each summarises to strict JSON and exports. Every run is checked
    before the test fails, and the failure lists them all (run directory and what broke)."""
    from midflight.logbook.cli import main
    from midflight.logbook.exporters.bundle import export
    from midflight.logbook.present.summary import format_text
    from midflight.logbook.report.summary import summarize
    from midflight.logbook.store.ingest import ingest

    store, folder = shared_store
    report = ingest(store, runs)
    assert not report.errors, report.errors
    assert report.malformed == 0, report.describe()  # an importer never writes a line ingest must refuse
    failures = []
    for i, run_dir in enumerate(runs):
        try:
            s = summarize(store, run_dir.name)
            bad = nonfinite_paths(s)
            assert not bad, f"summary --json cannot print NaN/Infinity at {bad[:5]}"
            text = json.dumps(s, indent=1, default=str, allow_nan=False)  # exactly what `summary --json` prints
            assert strict_json(text)["run"] == run_dir.name
            format_text(s)
            counts.summarised += 1
        except Exception as exc:  # noqa: BLE001 - collected, and the test fails below with every one
            failures.append(f"{run_dir}: summary: {type(exc).__name__}: {str(exc)[:300]}")
        try:
            export(store, run_dir.name, "csv", folder / f"{run_dir.name}-csv")
            if documents_too and i == 0:
                export(store, run_dir.name, "markdown", folder / f"{run_dir.name}.md")
                export(store, run_dir.name, "html", folder / f"{run_dir.name}.html")
            counts.exported += 1
        except Exception as exc:  # noqa: BLE001 - as above
            failures.append(f"{run_dir}: export: {type(exc).__name__}: {str(exc)[:300]}")
        if documents_too and i == 0:  # the CLI's own paths, in-process, on a store of the run's own
            for argv in (["summary", str(run_dir), "--json", "-q"], ["export", "parquet", str(run_dir), "-o",
                         str(folder / f"{run_dir.name}-pq"), "-q"]):  # fmt: skip
                out, err = io.StringIO(), io.StringIO()
                try:
                    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                        rc = main(argv)
                    assert rc == 0, err.getvalue()[-300:]
                    if argv[0] == "summary":
                        strict_json(out.getvalue())
                except Exception as exc:  # noqa: BLE001 - as above
                    failures.append(f"{run_dir}: {argv[0]} CLI: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_fuzz_text_importer(fmt, fuzz_dir, shared_store):
    counts = COUNTS[fmt]
    baseline: dict[int, int] = {}
    sample: dict[tuple, object] = {}
    serial = itertools.count()

    def good(index: int) -> int:
        """Steps (annotations for a timeline) the seed document gives unmutated."""
        if index not in baseline:
            src = fuzz_dir / f"seed-{index}{SUFFIX.get(fmt, '.log')}"
            src.write_bytes(b"\n".join(seeds(fmt)[index]) + b"\n")
            report = import_logs(fmt, [src], fuzz_dir / f"seed-run-{index}")
            assert report.malformed == 0, report.describe()
            baseline[index] = report.annotations if fmt in BY_ANNOTATIONS else report.steps
        return baseline[index]

    @fuzz_settings()
    @given(documents(fmt))
    def case(drawn):
        index, doc = drawn
        n = next(serial)
        counts.cases += 1
        src = fuzz_dir / f"case-{n}{SUFFIX.get(fmt, '.log')}"
        src.write_bytes(doc.data())
        run_dir = fuzz_dir / f"{fmt}-{n}"
        report = try_import(fmt, [src], run_dir, counts)
        if report is None:
            src.unlink()
            return
        if doc.whole and doc.lines:
            got = report.annotations if fmt in BY_ANNOTATIONS else report.steps
            assert got >= good(index) - doc.mutations, (
                f"{doc.mutations} mutated lines cost {good(index) - got} good ones\n{report.describe()}"
            )
        if layout.is_run_dir(run_dir) and signature(report) not in sample:
            sample[signature(report)] = run_dir
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        src.unlink()

    case()
    runs = list(sample.values())[: fuzzing.STORE_SAMPLE]
    check_store(shared_store, runs, counts, documents_too=True)


# --------------------------------------------------------------------------------------------- TensorBoard
WALL0 = 1_700_000_000.0
INT64 = st.one_of(
    st.sampled_from([-1, -(2**63), 2**63 - 1, 2**62, 0, -5]), st.integers(min_value=-(2**63), max_value=2**63 - 1)
)
FLOATS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 3.4e38, 0.0, -0.0]), st.floats(width=64)
)


def _value(tag: str, v: float):
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary.Value(tag=tag, simple_value=v)


def _tensor_value(draw, tag: str):
    """A TF2 scalar-plugin tensor, possibly of the wrong dtype, shape or byte length."""
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    kind = draw(st.sampled_from(["double", "string", "vector", "bytes", "half", "int64", "empty"]))
    t = tensor_pb2.TensorProto()
    if kind == "double":
        t.dtype, t.double_val[:] = types_pb2.DT_DOUBLE, [draw(FLOATS)]
    elif kind == "string":
        t.dtype, t.string_val[:] = types_pb2.DT_STRING, [draw(st.binary(max_size=20))]
    elif kind == "vector":
        t.dtype, t.float_val[:] = types_pb2.DT_FLOAT, [1.0, 2.0, 3.0]
        t.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]))
    elif kind == "bytes":
        t.dtype, t.tensor_content = types_pb2.DT_DOUBLE, draw(st.binary(max_size=20))
    elif kind == "half":
        t.dtype, t.half_val[:] = types_pb2.DT_HALF, [draw(st.integers(0, 2**16 - 1))]
    elif kind == "int64":
        t.dtype, t.int64_val[:] = types_pb2.DT_INT64, [draw(INT64)]
    else:
        t.dtype = draw(st.sampled_from([types_pb2.DT_FLOAT, types_pb2.DT_BOOL, types_pb2.DT_COMPLEX64, 0]))
    return summary_pb2.Summary.Value(tag=tag, tensor=t, metadata=meta)


@st.composite
def event_files(draw):
    """(bytes of an event file, mutations that may each cost one step, whether the rest still reads)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    events = [event_pb2.Event(wall_time=WALL0, file_version="brain.Event:2")]
    for s in range(0, 50, 5):
        summary = summary_pb2.Summary(value=[_value("train/loss", 3.0 - s / 100), _value("lr", 1e-4)])
        events.append(event_pb2.Event(step=s, wall_time=WALL0 + s, summary=summary))
    mutations = 0
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(1, len(events) - 1))
        ev = events[i]
        kind = draw(st.sampled_from(["step", "step", "wall", "value", "tag", "tensor", "other", "delete", "dup"]))
        mutations += 1
        if kind == "step":
            ev.step = draw(INT64)
        elif kind == "wall":
            ev.wall_time = draw(FLOATS)
        elif kind == "value" and ev.summary.value:
            ev.summary.value[0].simple_value = draw(FLOATS)
        elif kind == "tag" and ev.summary.value:
            tag = draw(st.one_of(st.text(max_size=30), st.just("x" * (fuzzing.FIELD_LIMIT + 1)), st.just("")))
            ev.summary.value[0].tag = tag.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        elif kind == "tensor":
            ev.summary.value.append(_tensor_value(draw, draw(st.sampled_from(["t", "train/loss", "lr"]))))
        elif kind == "other":
            events.insert(i, event_pb2.Event(step=draw(INT64), wall_time=draw(FLOATS), file_version="x"))
        elif kind == "delete":
            del events[i]
        elif kind == "dup":
            events.insert(draw(st.integers(1, len(events))), ev)
    buf = io.BytesIO()
    writer = RecordWriter(buf)
    for ev in events:
        writer.write(ev.SerializeToString())
    data = buf.getvalue()
    whole = True
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip", "append", "length"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif damage == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif damage == "length":  # a record that claims to be enormous
        data += struct.pack("<Q", draw(st.integers(2**40, 2**64 - 1))) + b"\0" * 8
    whole = damage == "none"
    return data, mutations, whole


def test_fuzz_tensorboard_importer(fuzz_dir, shared_store):
    counts = COUNTS["tensorboard"]
    sample: dict[tuple, object] = {}
    serial = itertools.count()
    good = 10  # the unmutated file's steps

    @fuzz_settings()
    @given(event_files())
    def case(drawn):
        data, mutations, whole = drawn
        n = next(serial)
        counts.cases += 1
        logdir = fuzz_dir / f"logs-{n}"
        logdir.mkdir()
        (logdir / "events.out.tfevents.1700000000.host.1.0").write_bytes(data)
        run_dir = fuzz_dir / f"tensorboard-{n}"
        report = try_import("tensorboard", [logdir], run_dir, counts)
        if report is None:
            shutil.rmtree(logdir)
            return
        if whole:
            assert report.steps >= good - mutations, report.describe()
        if report.segments and signature(report) not in sample:
            sample[signature(report)] = run_dir
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(logdir)

    case()
    check_store(shared_store, list(sample.values())[: fuzzing.STORE_SAMPLE], counts, documents_too=True)
