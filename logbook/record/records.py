"""The event-log record format: JSON lines, one record per line, append-only.

Why JSON lines (see docs/architecture.md): a record is complete exactly when its
terminating newline is on disk, so a reader that stops at the last newline never
sees a torn record; `tail -f` and `grep` work on a live run; and metric records are
written *columnar* (one line holds a block of steps for one set of metric names),
which keeps parsing fast enough for multi-million-point ingests.

Metric and telemetry blocks are strict JSON written with orjson (20x faster than
the standard library on float rows). Strict JSON has no NaN or Infinity, so a
non-finite value is written as null in `rows` and listed in the block's
`nonfinite`: [[row, value_index, "NaN" | "Infinity" | "-Infinity"], ...]; readers
put it back, so a NaN loss is stored faithfully. Other records (events, headers)
use the standard library, whose NaN/Infinity tokens the reader also accepts.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

import orjson

FORMAT_VERSION = 2  # 2: blocks are strict JSON with `nonfinite`; 1 wrote NaN tokens in rows (still read)

# Ends a fragment left by a writer that died or failed mid-line. Not a bare newline: a fragment
# cut just before its own newline is a whole record, and a newline would bring it back to life
# next to the full copy written again after it. No JSON prefix followed by this parses.
TORN_TERMINATOR = b"#torn\n"

# Record kinds ("k" field).
OPEN = "open"  # first record of a rank file: who is writing
METRICS = "metrics"  # {"names": [...], "rows": [[step, wall_time, v1, ...], ...]}
EVENT = "event"  # {"kind": str, "step": int|None, "t": float, "fields": {...}}
TELEMETRY = "telemetry"  # {"device": str, "names": [...], "rows": [[wall_time, step|null, v1, ...]]}
CLOSE = "close"  # last record of a rank file: why it ended

# A segment config key an importer sets when the log had no clock and its wall times were made
# up from per-iteration times: the summary, dashboard and exports label every wall time, wasted
# hour and energy figure of such a run as estimated (importers/wallclock.py).
WALL_TIME_SOURCE = "wall_time_source"
WALL_TIME_ESTIMATED = "estimated from iteration times"


def encode(record: dict) -> bytes:
    """One record as one newline-terminated line. Never raises on odd field values."""
    return (json.dumps(record, separators=(",", ":"), default=_fallback) + "\n").encode("utf-8")


def encode_block(record: dict) -> bytes:
    """A metrics/telemetry block (strict JSON, non-finite values already listed in `nonfinite`)."""
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:  # an int beyond 64 bits, say: the slow path writes anything
        return encode(record)


def nonfinite_token(v: float) -> str:
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _fallback(obj):
    """Make anything a user passes as an event field storable (as text if need be)."""
    try:
        return float(obj)  # numpy scalars, 0-d tensors
    except Exception:
        return repr(obj)


def decode(line: bytes) -> dict:
    """Parse one line; raises ValueError for anything that is not a JSON object record."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):  # no record nests 1,024 deep; never hand it to a recursive parser
            raise ValueError("JSON nested too deeply") from None
        try:
            rec = json.loads(line)  # NaN/Infinity tokens (events, format 1); raises ValueError if garbage
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("k"), str):
        raise ValueError("not a midflight record (expected a JSON object with a 'k' field)")
    return rec


def iter_records(path: Path):
    """Every readable record of a small file, skipping torn or foreign lines (ingest counts those)."""
    for _, rec in numbered_records(path):
        yield rec


def numbered_records(path: Path):
    """(line number from 1, record) for every readable record of a small file: the numbering ingest uses."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    for line_no, line in enumerate(data.split(b"\n"), 1):
        try:
            yield line_no, decode(line)
        except ValueError:
            continue


MAX_ID = 64  # characters of an annotation or intervention id (ours are 12 hex digits)


def record_id(rec: dict, line_no: int) -> str:
    """The id an annotation or intervention record goes by: its own if that is short non-empty text.

    A hand-written line may carry any JSON as its id (a list, a number, a megabyte of text). Such a
    record goes by `line-N` (its line number in the file) instead, so the trainer can answer it, the
    store can show it and every reader agrees on the name, without the odd id ever being used as one.
    """
    rid = rec.get("id")
    if isinstance(rid, str) and 0 < len(rid) <= MAX_ID and rid.isprintable():
        return rid
    return f"line-{line_no}"


def read_complete(path: Path, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """Bytes of whole lines from `offset`, at most ~max_bytes; returns (data, new_offset).

    A trailing partial line (a record still being written, or a torn tail left by
    a killed writer) is not returned and not consumed. A single line longer than
    max_bytes is still returned whole.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(max_bytes)
        end = data.rfind(b"\n")
        while end < 0 and data:
            more = f.read(max_bytes)
            if not more:
                return b"", offset  # only a partial line: wait for the rest
            data += more
            end = data.rfind(b"\n")
    if end < 0:
        return b"", offset
    return data[: end + 1], offset + end + 1


def append_line(path: Path, record: dict) -> None:
    """Append one record durably, for small, rare writers (annotations, interventions).

    An exclusive flock plus O_APPEND keeps concurrent appenders (CLI and
    dashboard) from interleaving; fsync makes the record survive a power cut.
    """
    data = encode(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the torn-tail check and the write are one step for all appenders
        _terminate_torn_tail(fd)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _terminate_torn_tail(fd: int) -> None:
    """If a previous writer died mid-line, end that fragment so our record stays whole."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, TORN_TERMINATOR)


def json_document(obj: dict) -> bytes:
    """The bytes `write_json_atomic` writes for `obj` (so a caller can tell whether a file already holds them)."""
    return json.dumps(obj, indent=1, default=_fallback).encode("utf-8")


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write a small JSON document via temp file + rename, so readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json_document(obj)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:  # os.write may write less than asked (a disk filling up): never publish a partial file
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
