"""The fuzz suite's shared parts: hostile values, seed documents from the real fixtures, a mutator, the
invariants every imported run must satisfy, and the counts printed at the end of a session.

Why Hypothesis: its strategies shrink a failure to a minimal document, and `derandomize=True` makes
CI's cases the same on every run (reproducible), while MIDFLIGHT_FUZZ_EXAMPLES raises the count for
a long run. Cases run in-process through the Python APIs (an import costs milliseconds); the store,
the summary and the exports, which cost ~0.3 s a run, run on a sample chosen for variety (one run per
distinct shape of import: segments, events, rejected lines, largest step), reusing one DuckDB store.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from midflight.logbook.importers import import_logs
from midflight.logbook.record import layout, records
from midflight.logbook.values import STEP_LIMIT

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"

CI_EXAMPLES = 300
EXAMPLES = int(os.environ.get("MIDFLIGHT_FUZZ_EXAMPLES", CI_EXAMPLES))
# runs per format that go through the store, the summary and the exports (the expensive part)
STORE_SAMPLE = 5 if EXAMPLES <= CI_EXAMPLES else 40
FIELD_LIMIT = 128 * 1024  # the csv module's default field size limit


def fuzz_settings(examples: int = EXAMPLES):
    return settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run: CI is reproducible
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# ----------------------------------------------------------------------------------------- counts
@dataclass
class Counts:
    cases: int = 0
    rejected_lines: int = 0  # counted malformed lines over all cases
    one_line_errors: int = 0  # cases refused as a whole with a one-line error
    summarised: int = 0
    exported: int = 0
    examples: list = field(default_factory=list)


COUNTS: dict[str, Counts] = defaultdict(Counts)


def report_lines() -> list[str]:
    out = [f"fuzz: {EXAMPLES} examples per format (MIDFLIGHT_FUZZ_EXAMPLES)"]
    for fmt, c in sorted(COUNTS.items()):
        out.append(
            f"  {fmt:<22} cases {c.cases:>6}  rejected lines {c.rejected_lines:>6}  one-line errors "
            f"{c.one_line_errors:>5}  summarised {c.summarised:>3}  exported {c.exported:>3}"
        )
    return out


# ------------------------------------------------------------------------------------ hostile values
HOSTILE_NUMBERS = (
    "99999999999999999999",
    "9" * 401,
    "-1",
    "-12",
    "0.5",
    "12.75",
    "1e30",
    "1E+30",
    "1e308",
    "1e400",
    "-1e400",
    "inf",
    "-inf",
    "Infinity",
    "nan",
    "NaN",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "-9223372036854775809",
    "0",
    "000000000000000000000000000001",
    "1_000",
    "0x1f",
    "+7",
    "\u0663",  # an Arabic-Indic digit: \d matches it and int() reads it
    "",
    "4.9e-324",
    "1.7976931348623157e308",
)

numbers = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
_FENCE = re.compile(rb"^\s*(```|~~~)")
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
LONG_FIELD = st.integers(min_value=FIELD_LIMIT + 1, max_value=FIELD_LIMIT + 5000)


# ------------------------------------------------------------------------------------------- seeds
def fixture_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _meg(i, *, skipped=0, nan=0, loss=None) -> str:
    loss = 3 - i / 1000 if loss is None else loss
    return (
        f"[default3]: iteration {i:>8}/ 1000 | consumed samples: {i * 8} | elapsed time per iteration (s): 1.5 | "
        f"learning rate: 1.000E-04 | global batch size: 8 | lm loss: {loss:.6E} | loss scale: 4096.0 | "
        f"grad norm: 0.5 | number of skipped iterations: {skipped:3d} | number of nan iterations: {nan:3d} |"
    )


MEGATRON_EXTRA = [
    _meg(10),
    _meg(20, skipped=2, nan=1),
    " successfully loaded checkpoint from /ckpt/global_step15 at iteration 15",
    _meg(30),
    " validation loss at iteration 30 | lm loss value: 2.9E+00 | lm loss PPL: 1.8E+01 |",
    " [2024-05-01 10:00:00] iteration      40/    1000 | consumed samples:        320 | elapsed time per "
    "iteration (ms): 1234.5 | learning rate: 1.000000E-04 | lm loss: 2.8E+00 | loss scale: 1.0 | "
    "number of skipped iterations:   0 | number of nan iterations:   0 |",
    "[after training is done]",
]
FAIRSEQ_EXTRA = [
    "2024-01-01 10:00:00 | INFO | train_inner | epoch 001:   10 / 9999 loss=5.1, ppl=34.3, num_updates=10, lr=0.1",
    "| WARNING: overflow detected, setting loss scale to: 0.25",
    "| loaded checkpoint /ckpt/checkpoint_5.pt (epoch 1 @ 5 updates)",
    "| epoch 001:   12 / 9999 loss=5.0, ppl=32.0, num_updates=12, lr=0.1, gnorm=1.5",
    "| epoch 001 | valid on 'valid' subset | loss 4.9 | ppl 29.8 | num_updates 12",
    "2024-01-01 11:00:00 | INFO | fairseq_cli.train | done training in 3600.1 seconds",
]
METASEQ_EXTRA = [
    '2022-11-11 14:05:27 | INFO | train_inner | {"epoch": 1, "actv_norm": "1.2", "loss": "15.878", '
    '"ppl": "60214.8", "num_updates": "90", "lr": "1e-05", "gnorm": "1.5"}',
    "2022-08-20 23:35:25 | INFO | metaseq.optim.dynamic_loss_scaler | *** SCALE_WINDOW: 256, loss scale: 4 ***",
    "2022-11-11 14:06:27 | INFO | metaseq.checkpoint_utils | Loaded checkpoint /ckpt/checkpoint_80.pt "
    "(epoch 1 @ 80 updates)",
    '2022-11-11 14:07:27 | INFO | valid | {"epoch": 1, "valid_loss": "4.1", "valid_ppl": "17.1", "num_updates": "95"}',
]


def _table(rows: list[list], delimiter: str = ",") -> list[bytes]:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return [line.encode() for line in buf.getvalue().splitlines()]


def seeds(fmt: str) -> list[list[bytes]]:
    """Seed documents (lists of lines) for a format, from the real fixtures and the lines the tests use."""
    if fmt == "metaseq":
        return [
            fixture_lines(FIX / "metaseq_train_inner_json.log"),
            fixture_lines(FIX / "metaseq_misc_lines.log") + fixture_lines(FIX / "metaseq_train_inner_json.log"),
            [s.encode() for s in METASEQ_EXTRA] + fixture_lines(FIX / "metaseq_train_inner_json.log"),
        ]
    if fmt == "fairseq":
        return [
            fixture_lines(FIX / "fairseq_legacy_pipe_format.log"),
            fixture_lines(FIX / "fairseq_modern_train_inner_format.log"),
            [s.encode() for s in FAIRSEQ_EXTRA],
        ]
    if fmt == "megatron":
        return [
            fixture_lines(FIX / "bloom_tr11_176B_megatron_deepspeed.log"),
            [s.encode() for s in MEGATRON_EXTRA],
        ]
    if fmt == "csv":
        wandb = [["", "_step", "_runtime", "_timestamp", "trainer/global_step", "train/loss", "lr", "grad_norm"]]
        wandb += [[i, i, 10.0 * i, 1_700_000_000 + 10 * i, 100 * i, 3.0 - i / 10, 1e-4, 0.5 + i / 7] for i in range(12)]
        wide = [["step", "time", "loss", "lr"]]
        wide += [[s, f"2024-01-01T10:{s:02d}:00", 2.5 - s / 50, 0.1] for s in range(10)]
        long = [["step", "metric", "value"]] + [[s, m, v] for m in ("loss", "lr") for s, v in ((1, 3.0), (2, 2.5))]
        long += [[1, "loss", 2.9], [2, "loss", 2.4]]  # a rollback inside the metric's group
        return [_table(wandb), _table(wide), _table(long), _table(wide, ";")]
    if fmt == "timeline":
        return [fixture_lines(ROOT / "sample_runs" / "opt175b-timeline" / "opt175b_timeline.csv")]
    if fmt == "mllog":
        return [
            fixture_lines(FIX / "mlperf_v4.0_habana_llama2_70b_lora.txt"),
            fixture_lines(FIX / "mlperf_v3.1_nvidia_gpt3_nemo_excerpt.txt"),
            fixture_lines(FIX / "mlperf_v4.0_fujitsu_llama2_lora_rank_prefixed_excerpt.txt"),
        ]
    if fmt == "chronicle":
        return [
            fixture_lines(FIX / "glm130b_training_log_excerpt.md"),
            fixture_lines(FIX / "bloom_tr11_176B_chronicles_excerpt.md"),
            fixture_lines(FIX / "opt175b_10_percent_update_excerpt.md"),
        ]
    raise ValueError(fmt)


# ------------------------------------------------------------------------------------------ mutator
MUTATIONS = ("number", "number", "number", "truncate", "long", "unicode", "junk", "json", "duplicate", "delete")
TABLE_MUTATIONS = ("cell", "cell", "cell", "number", "truncate", "long", "unicode", "junk", "duplicate", "delete")
SPECIAL = {
    "fairseq": (
        "| loaded checkpoint /ckpt/c.pt (epoch 1 @ {n} updates)",
        "| epoch 001:   3 / 9999 loss=4.0, ppl=16.0, num_updates={n}, lr=0.1",
        "| WARNING: overflow detected, setting loss scale to: {n}",
        "*** SCALE_WINDOW: {n}, loss scale: {n} ***",
        "done training in {n} seconds",
        "| epoch 001 | valid on 'valid' subset | loss {n} | ppl 29.8 | num_updates {n}",
    ),
    "megatron": (
        " successfully loaded checkpoint from /ckpt/x at iteration {n}",
        " iteration {n}/ 1000 | lm loss: 2.0E+00 | number of skipped iterations: {n} | number of nan iterations: {n} |",
        " iteration 50/ {n} | lm loss: {n} | consumed samples: {n} | consumed tokens: {n} | samples per second: {n} |",
        " validation loss at iteration {n} | lm loss value: {n} | lm loss PPL: {n} |",
    ),
}
SPECIAL["mllog"] = (
    ':::MLLOG {{"namespace": "", "time_ms": {n}, "event_type": "POINT_IN_TIME", "key": "train_loss", '
    '"value": {n}, "metadata": {{"step": {n}}}}}',
    ':::MLLOG {{"namespace": "", "time_ms": 1715240877183, "event_type": "POINT_IN_TIME", "key": "tracked_stats", '
    '"value": {{"train_step_timing": {n}, "reduced_train_loss": {n}}}, "metadata": {{"samples_count": {n}}}}}',
    '0: :::MLLOG {{"time_ms": 1, "event_type": "INTERVAL_END", "key": "run_stop", "value": {n}, '
    '"metadata": {{"status": "{n}", "epoch_num": {n}}}}}',
)
SPECIAL["chronicle"] = (
    "## 2022-05-11 12:13 Node failure\n\nn30115 breaks down, restart from {n} step",
    "- 2021-11-12 {n}:{n} restarting from global_step{n} (iteration {n})",
    "**Nov {n}, 2021** loss scale fell at step {n}",
)
SPECIAL["metaseq"] = SPECIAL["fairseq"] + (
    '2022-11-11 14:05:27 | INFO | train_inner | {{"loss": "{n}", "ppl": "{n}", "num_updates": "{n}"}}',
    '2022-11-11 14:05:27 | INFO | train_inner | {{"loss": {n}, "num_updates": {n}}}',
)
JSON_VALUES = st.one_of(
    st.sampled_from([[1], {"a": 1}, None, True, False, "x", [], {}, 1e300, -5, 2**70, "1e30", "nan"]),
    st.text(max_size=10),
    st.integers(),
)


@dataclass
class Doc:
    lines: list[bytes]
    mutations: int  # how many good lines the mutations may have cost (at most one each)
    newline: bytes = b"\n"
    trailing: bool = True
    whole: bool = True  # False: a mutation may change how the rest of the document reads (header, quoting)

    def __repr__(self) -> str:  # what Hypothesis prints for a failing case: long lines shortened
        lines = [ln if len(ln) <= 300 else ln[:150] + b"...<%d bytes>..." % len(ln) + ln[-50:] for ln in self.lines]
        return f"Doc(lines={lines!r}, mutations={self.mutations}, newline={self.newline!r}, trailing={self.trailing})"

    def data(self) -> bytes:
        body = self.newline.join(self.lines)
        return body + (self.newline if self.trailing and self.lines else b"")


def _replace_number(draw, line: bytes) -> bytes:
    spots = list(_NUMBER.finditer(line))
    if not spots:
        return line + b" " + draw(numbers).encode()
    m = draw(st.sampled_from(spots))
    return line[: m.start()] + draw(numbers).encode("utf-8") + line[m.end() :]


def _json_wrong_type(draw, line: bytes) -> bytes:
    brace = line.find(b"{")
    end = line.rfind(b"}")
    try:
        rec = json.loads(line[brace : end + 1]) if 0 <= brace < end else None
    except (ValueError, RecursionError):
        rec = None
    if not isinstance(rec, dict) or not rec:
        return line + b" {" * draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:  # nested beyond the parser's recursion limit
        return line[:brace] + b'{"num_updates": ' + b"[" * 100_000 + b"}"
    key = draw(st.sampled_from(sorted(rec)))
    rec[key] = draw(JSON_VALUES)
    return line[:brace] + json.dumps(rec).encode() + line[end + 1 :]


def _table_cell(draw, line: bytes, delimiter: str) -> bytes:
    try:
        cells = next(csv.reader([line.decode("utf-8", "replace")], delimiter=delimiter), [])
    except csv.Error:  # a field over the limit already: mutate it as text
        return _replace_number(draw, line)
    if not cells:
        return line
    j = draw(st.integers(0, len(cells) - 1))
    cells[j] = draw(st.one_of(numbers, st.text(max_size=8).filter(lambda s: '"' not in s)))
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerow(cells)
    return buf.getvalue()[:-1].encode("utf-8", "surrogatepass")  # one row, even with a quoted line break in it


@st.composite
def documents(draw, fmt: str) -> tuple[int, Doc]:
    """(seed index, a mutated copy of that seed document)."""
    all_seeds = seeds(fmt)
    index = draw(st.integers(0, len(all_seeds) - 1))
    lines = list(all_seeds[index])
    tabular = fmt in ("csv", "timeline")
    delimiter = ";" if tabular and b";" in lines[0] and b"," not in lines[0] else ","
    doc = Doc(lines, 0)
    touched: list[bytes] = []  # lines before and after each mutation
    if draw(st.integers(0, 39)) == 0:
        doc.lines, doc.whole = [], False  # an empty file
        return index, doc
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(TABLE_MUTATIONS if tabular else MUTATIONS))
        if not doc.lines:
            break
        lo = 1 if tabular else 0  # a table's header is mutated on its own below
        if lo >= len(doc.lines):
            break
        i = draw(st.integers(lo, len(doc.lines) - 1))
        line = doc.lines[i]
        doc.mutations += 1
        if kind == "number":
            doc.lines[i] = _replace_number(draw, line)
        elif kind == "cell":
            doc.lines[i] = _table_cell(draw, line, delimiter)
        elif kind == "truncate":
            doc.lines[i] = line[: draw(st.integers(0, max(0, len(line) - 1)))]
            if tabular and doc.lines[i].count(b'"') % 2:
                doc.whole = False  # cut inside a quoted cell: CSV reads on into the next lines (its rule)
        elif kind == "long":
            n = draw(LONG_FIELD)
            filler = draw(st.sampled_from([b"9", b"x", b"|", b"{"])) * n
            if draw(st.booleans()):
                spots = list(_NUMBER.finditer(line))
                m = spots[draw(st.integers(0, len(spots) - 1))] if spots else None
                doc.lines[i] = line[: m.start()] + filler + line[m.end() :] if m else line + filler
            else:
                at = draw(st.integers(0, len(line)))
                doc.lines[i] = line[:at] + filler + line[at:]
        elif kind == "unicode":
            at = draw(st.integers(0, len(line)))
            text = draw(st.text(max_size=24))
            if tabular:
                text = text.replace('"', "")
            doc.lines[i] = line[:at] + text.encode("utf-8", "surrogatepass") + line[at:]
        elif kind == "junk":
            junk = draw(st.binary(min_size=1, max_size=200))
            if tabular:
                junk = junk.replace(b'"', b"")
            if draw(st.booleans()):
                doc.lines[i] = junk
            else:
                doc.lines.insert(i, junk)
        elif kind == "json":
            doc.lines[i] = _json_wrong_type(draw, line)
        elif kind == "duplicate":
            doc.lines.insert(draw(st.integers(0, len(doc.lines))), line)
            doc.mutations -= 1  # a copy costs nothing
        elif kind == "delete":
            del doc.lines[i]
        touched += [line, doc.lines[i] if i < len(doc.lines) else b""]
    special = SPECIAL.get(fmt)
    if special and draw(st.integers(0, 2)) == 0:
        template = draw(st.sampled_from(special))
        doc.lines.insert(draw(st.integers(0, len(doc.lines))), template.format(n=draw(numbers)).encode("utf-8"))
        doc.mutations += 1
    if fmt == "chronicle" and any(_FENCE.match(t) for t in touched):
        doc.whole = False  # a code fence made or broken: Markdown reads the rest inside (or outside) a code block
    if tabular and doc.lines and draw(st.integers(0, 14)) == 0:
        doc.lines[0] = _table_cell(draw, doc.lines[0], delimiter)
        doc.whole = False  # a mutated header may rename or lose the step column
    doc.newline = draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    doc.trailing = draw(st.booleans())
    if draw(st.integers(0, 19)) == 0:
        doc.lines.insert(0, b"\xef\xbb\xbf")  # a byte-order mark on a line of its own
        doc.whole = doc.whole and not tabular
    return index, doc


# ------------------------------------------------------------------------------------ invariants
ALLOWED_ERRORS = (ValueError, FileNotFoundError)


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg.strip(), f"{type(exc).__name__} with no message"
    assert "\n" not in msg, f"a multi-line error: {msg[:300]!r}"
    assert "Traceback" not in msg
    return msg


def _valid_step(v, where: str) -> None:
    assert type(v) is int and 0 <= v < STEP_LIMIT, f"{where}: step {v!r} outside [0, 2**63)"


def _optional_step(v, where: str) -> None:
    if v is not None:
        _valid_step(v, where)


def check_written(run_dir: Path) -> None:
    """Every step an importer wrote is an int in [0, 2**63) and every record is readable strict JSON."""
    for header_path in (run_dir / layout.SEGMENTS).glob(f"*/{layout.SEGMENT_HEADER}"):
        header = json.loads(header_path.read_bytes(), parse_constant=_no_constant)
        _optional_step(header.get("resume_step"), f"{header_path}: resume_step")
        imp = header.get("import") or {}
        _optional_step(imp.get("first_step"), f"{header_path}: first_step")
        _optional_step(imp.get("last_step"), f"{header_path}: last_step")
        start = header.get("start_time")
        assert start is None or math.isfinite(start), f"{header_path}: start_time {start!r}"
    for rank in (run_dir / layout.SEGMENTS).glob("*/rank-*.jsonl"):
        for n, line in enumerate(rank.read_bytes().splitlines(), 1):
            rec = records.decode(line)
            where = f"{rank.parent.name}/{rank.name}:{n}"
            if rec["k"] == records.METRICS:
                for row in rec["rows"]:
                    _valid_step(row[0], where)
            elif rec["k"] == records.EVENT:
                _optional_step(rec.get("step"), where)
            elif rec["k"] == records.CLOSE:
                _optional_step(rec.get("last_step"), where)
    for rec in records.iter_records(run_dir / layout.ANNOTATIONS):  # a chronicle entry may have no step
        _optional_step(rec.get("step"), f"{run_dir.name}/annotations")


def _no_constant(token: str):
    raise ValueError(f"{token} is not strict JSON")


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity (what a strict consumer of `summary --json` does)."""
    return json.loads(text, parse_constant=_no_constant)


def written_files(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / layout.SEGMENTS).rglob("*") if p.is_file()] if run_dir.exists() else []


def try_import(fmt: str, paths, run_dir: Path, counts: Counts):
    """Import; a whole-input refusal must be one line and leave no half-written run. Returns the report or None."""
    try:
        report = import_logs(fmt, paths, run_dir)
    except ALLOWED_ERRORS as exc:
        one_line(exc)
        counts.one_line_errors += 1
        left = written_files(run_dir)
        assert not left, f"a failed import left files behind: {[str(p) for p in left[:5]]}"
        return None
    counts.rejected_lines += report.malformed
    check_written(run_dir)
    return report


def signature(report) -> tuple:
    """The shape of an import, to choose a varied sample of runs for the store, summary and exports."""
    last = [s["last_step"] for s in report.segments if s.get("last_step") is not None]
    top = max(last, default=-1)
    return (
        min(len(report.segments), 3),
        report.events > 0,
        report.malformed > 0,
        report.annotations > 0,
        len(str(top)) // 4,
        any(s.get("resume_step") is not None for s in report.segments),
    )
