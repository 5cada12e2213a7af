"""The Recorder API: `run = logbook.init(...)`, `run.log({...}, step=N)`, `run.event(...)`, `run.finish()`.

Contract with the training loop:
- `log()`, `event()` and `telemetry()` only append a tuple to an in-memory queue
  (a few microseconds); a daemon thread turns the queue into records and appends
  them to this rank's log at least every `flush_every` seconds.
- I/O degrades, misuse raises, loss is counted. A full disk or a read-only
  directory never raises into the training loop: it becomes a warning (once per
  cause) and a counter; records that could not be written are kept and retried,
  and recording resumes when the error clears. A segment that ends while its disk
  is full waits up to `finish_wait_s` for space, so that its close record (and
  everything before it) still reaches the disk when space returns; a run that
  ended is then never left reading as "running" or "unknown". A caller's mistake raises at the
  call site, before anything is queued: a metric value that is not a real number
  (TypeError), a reserved or non-text metric name, a step that is not an integer
  (TypeError), or a step lower than the last one logged without a `restart`
  event in between (ValueError). See `Run.log` for what counts as a number.
- 0-d tensors are kept as references and resolved on the flush thread, one
  stacked device->host copy per device and dtype per flush, so `log()` never
  syncs the GPU.
- Memory is bounded: at most `max_queue` calls wait for the flush thread and
  `max_pending_bytes` wait for a disk that refuses writes; beyond that records
  are dropped and counted (the newest calls, or the oldest unwritten bytes),
  and the training process never grows without bound.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import numbers
import os
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from midflight.logbook import roles as roles_vocab
from midflight.logbook.record import dist, layout, records, runmeta, segments
from midflight.logbook.record.histograms import Histogram
from midflight.logbook.record.runmeta import Summary, Text
from midflight.logbook.values import STEP_LIMIT

END_REASONS = ("completed", "crashed", "stopped", "rewound")

_METRICS, _EVENT, _TELEMETRY, _RAW, _TEL_BLOCK = 0, 1, 2, 3, 4
_TEL_HOLD_MAX = 3600  # node samples held for one telemetry record at most (bounds memory and the line)
_FAST = (float, int)
_INF = float("inf")

# Metric and telemetry names that would read as something else: the empty name, and the columns every
# point already has in the store and in every export (`step`, `wall_time`), which a metric of that name
# would be confused with in any table that spreads names into columns.
RESERVED_NAMES = frozenset({"", "step", "wall_time"})
# Value types known to be real scalars (a value of one is accepted with one set lookup). Grows as numpy
# scalar types and other numbers.Real types are first seen; tensors and arrays never enter (their shape
# is checked on every call).
_SCALARS = {float, int, bool}
# Write errors that can clear while the process waits: space freed on a full disk or under a quota.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_MAX_NAMES = 100_000  # metric names remembered as checked, per Run (beyond that: new ones checked every call)
_TENSOR_TYPES: set = set()  # torch tensor types seen so far: shape and dtype checked per value
_TENSOR_DTYPES: set = set()  # torch dtypes seen so far that hold real numbers (not complex)


class RecorderWarning(UserWarning):
    """Something kept midflight from recording; training is unaffected."""


class Run:
    """One rank's recorder for one segment (launch) of a run. Build it with `logbook.init`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        name: str,
        segment_id: str,
        info: dist.DistInfo,
        header: dict | None,
        flush_every: float,
        fsync_every: float,
        max_pending_bytes: int,
        max_queue: int,
        finish_wait_s: float = 30.0,
        telemetry_every: float = 5.0,
        config: dict | None = None,
        tags: tuple = (),
        notes: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.name = name
        self.segment_id = segment_id
        self.rank = info.rank
        self.world_size = info.world_size
        self.path = layout.rank_file(self.run_dir, segment_id, info.rank)
        self.flush_every = float(flush_every)
        self.fsync_every = float(fsync_every)
        self.max_pending_bytes = int(max_pending_bytes)
        self.max_queue = int(max_queue)
        self.finish_wait_s = float(finish_wait_s)
        self.telemetry_every = float(telemetry_every)
        if not 0.0 <= self.telemetry_every < _INF:
            raise ValueError(f"telemetry_every must be a finite number of seconds >= 0, not {telemetry_every!r}")
        if not 0.0 <= self.finish_wait_s < _INF:  # NaN too: a wait that could never end
            raise ValueError(f"finish_wait_s must be a finite number of seconds >= 0, not {finish_wait_s!r}")
        # Counters a user (and the close record) can read.
        self.write_errors = 0
        self._dropped = 0  # touched by the flush thread only
        self._rejected = 0  # calls refused at the call site; touched by callers only
        self.dropped_values = 0
        self.records_written = 0

        self._q: deque = deque()
        self._tel_held: list = []  # node telemetry samples waiting to share one record (flush thread only)
        self._tel_since = 0.0  # monotonic time the oldest held sample was taken off the queue
        self._next_step = 0
        self._last_step: float = -_INF  # the lowest step log() accepts next (a restart event lowers it)
        self._names_ok: set = set()  # metric names log() has checked (text, not reserved)
        self._header = header
        self.config: dict = dict(config or {})  # as given to init, then as update_config changed it
        self._tags: tuple = tuple(tags)
        self._notes = notes
        self.group = group  # fixed at init (it places the run among others); in the header
        self.job_type = job_type
        self.summary = Summary(self._record_summary)  # run.summary["best"] = x: a `summary` event each change
        self._pending = bytearray()
        self._fd: int | None = None
        self._torn = False  # a failed write may have left a partial line on disk
        self._failing = False
        self._last_errno: int | None = None  # of the last failed write; None once a write succeeds
        self._last_touch = self._last_fsync = time.monotonic()
        self._unsynced = False
        self._warned: set = set()
        self._finished = False
        self._uncaught: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

        self._q.append(
            (
                _RAW,
                {
                    "k": records.OPEN,
                    "v": records.FORMAT_VERSION,
                    "run": name,
                    "segment": segment_id,
                    "rank": info.rank,
                    "local_rank": info.local_rank,
                    "world": info.world_size,
                    "host": os.uname().nodename,
                    "pid": os.getpid(),
                    "t": time.time(),
                },
            )
        )
        self._thread = threading.Thread(target=self._loop, name=f"midflight-recorder-r{info.rank}", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)
        self._prev_excepthook = sys.excepthook
        sys.excepthook = self._excepthook

    @property
    def dropped_records(self) -> int:
        """Records lost: sent while the queue was full or after finish(), or evicted while the disk was unwritable."""
        return self._dropped + self._rejected

    # ------------------------------------------------------------------ hot path
    def log(self, metrics: dict, step: int | None = None) -> None:
        """Record metrics (and text samples, histograms) for a step.

        Values: real numbers (int, float, bool as 0/1, `numbers.Real` such as numpy integer and float
        scalars, numpy bool), and 0-d (or one-element) numpy arrays and torch tensors of a real or bool
        dtype. NaN and +-Inf are valid and recorded as such. Beyond numbers: `Histogram(values)` records
        the distribution as quantile metrics `<name>/p0 ... /p100` and `<name>/count` (record.histograms);
        a `str` or `Text(...)` records a `text` event (name, text) at the step; a dict of such values records
        its dotted names (`{"val": {"loss": x}}` -> `val.loss`). Anything else (an image, a table, a list,
        a tensor of several elements) raises, saying what to do instead. Names: non-empty text other than the
        reserved `step` and `wall_time`. `step`: an integer (int or numpy integer; not a bool or a
        tensor), never lower than the last step logged by this `Run` unless `event("restart", step=K)`
        came in between (then never lower than K); the same step again is fine (eval metrics at a
        train step). Omitted, it is the last step + 1.

        Misuse raises here, before anything is queued: TypeError for a value that is not a real number,
        a name that is not text or a step that is not an integer; ValueError for a reserved name, a
        tensor or array with more than one element, or a step that goes back. I/O never raises.

        A tensor is read on the flush thread (up to `flush_every` s later), not now, so that this call
        never waits for the GPU. For a tensor you modify in place afterwards (an accumulator), pass
        `t.detach().clone()`; `loss.detach()` of a fresh loss is fine as it is.
        """
        values = dict(metrics) if type(metrics) is dict else _as_dict("run.log()", metrics)
        # Cheap on the hot path: one C-level pass over the names (a loop logs the same few names, each
        # checked once) and one over the value types; item by item only when one of them misses.
        if not self._names_ok.issuperset(values):
            _check_names("run.log()", values)
            if len(self._names_ok) < _MAX_NAMES:
                self._names_ok.update(values)
        texts = None
        if not _SCALARS.issuperset(map(type, values.values())):  # text, histograms, nested dicts, or misuse
            values, texts = _log_values("run.log()", values)
        if step is None:
            step = self._next_step
        else:
            if type(step) is not int or not 0 <= step < STEP_LIMIT:
                step = _as_step("run.log()", step)
            if step < self._last_step:
                raise ValueError(
                    f"run.log(step={step}): the step went back (this segment last logged step "
                    f"{self._last_step}). Logging the same step again is fine; to replay steps after loading "
                    f'a checkpoint, record run.event("restart", step=CHECKPOINT_STEP) first, or start a new '
                    f"segment with logbook.init(..., resume_step=CHECKPOINT_STEP)"
                )
        self._last_step = step  # also when the call is refused below: the caller's steps went on
        self._next_step = step + 1
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        if texts is None:
            self._q.append((_METRICS, step, time.time(), values))
            return
        t = time.time()
        if values:
            self._q.append((_METRICS, step, t, values))
        for name, text in texts:
            self._q.append((_EVENT, "text", step, t, {"name": name, "text": text}))

    def event(self, kind: str, step: int | None = None, **fields) -> None:
        """Record a discrete event: overflow, checkpoint, restart, intervention_applied, alert, ...

        `kind` must be non-empty text and `step` an integer or None (TypeError/ValueError otherwise);
        an event's step may be lower than the metrics' steps. Fields may hold anything: what JSON
        cannot hold is stored as text. A `restart` event with step K lets `log()` go back to step K
        (the run resumed from the checkpoint of step K); without a step it lets `log()` go back to any step.
        """
        if type(kind) is not str:
            raise TypeError(f"run.event(): kind must be text, not {type(kind).__name__} ({kind!r:.80})")
        if not kind:
            raise ValueError("run.event(): kind must not be empty")
        if step is not None and (type(step) is not int or not 0 <= step < STEP_LIMIT):
            step = _as_step(f"run.event({kind!r})", step)
        if kind == "restart":  # also when refused below: the caller goes on to log the replayed steps
            self._last_step = -_INF if step is None else step
            if step is not None:
                self._next_step = step + 1
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        self._q.append((_EVENT, kind, step, time.time(), fields))

    def update_config(self, values: Mapping, step: int | None = None) -> dict:
        """Record a config change made after init (W&B's `run.config.update`, Lightning's `log_hyperparams`).

        Merges `values` (nested dicts allowed) into the run's config and records a `config` event holding
        the diff, {dotted.key: [old, new]}, at `step` (default: the next step). Returns the diff; an update
        that changes nothing records nothing. Values follow the header's rule: what JSON cannot hold is text.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"run.update_config(): give a dict of config values, not {type(values).__name__}")
        merged = segments.merge_config(self.config, values)
        diff = segments.config_diff(self.config, merged)
        self.config = merged
        if diff:
            self.event("config", step=self._next_step if step is None else step, diff=diff)
        return diff

    # ------------------------------------------------------------------ what people say about the run
    @property
    def tags(self) -> tuple:
        """The run's tags (init's `tags=`); `run.tags = run.tags + ("best",)` records a `tags` event."""
        return self._tags

    @tags.setter
    def tags(self, tags) -> None:
        new = runmeta.check_tags("run.tags", tags)
        added = [t for t in new if t not in self._tags]
        removed = [t for t in self._tags if t not in new]
        self._tags = new
        if added or removed:
            self.event("tags", step=self._current_step(), tags=list(new), added=added, removed=removed)

    @property
    def notes(self) -> str | None:
        """The run's notes (init's `notes=`); setting them records a `notes` event."""
        return self._notes

    @notes.setter
    def notes(self, notes) -> None:
        notes = None if notes is None else runmeta.check_text("run.notes", notes, runmeta.MAX_NOTES, what="notes")
        if notes != self._notes:
            self._notes = notes
            self.event("notes", step=self._current_step(), notes=notes)

    def alert(self, title: str, text: str, level: str = "INFO", step: int | None = None) -> None:
        """Record an `alert` event (title, text, level INFO / WARN / ERROR) at `step` (default: the last step
        logged): W&B's `run.alert`. Routing alerts to people is the watcher's (issue 18); this records them."""
        title, text, level = runmeta.check_alert(title, text, level)
        self.event("alert", step=self._current_step() if step is None else step, title=title, text=text, level=level)

    def _current_step(self) -> int | None:
        """The last step logged, or None before the first."""
        return self._next_step - 1 if self._next_step else None

    def _record_summary(self, values: dict, removed: list) -> None:
        fields = {"values": values}
        if removed:
            fields["removed"] = removed
        self.event("summary", step=self._current_step(), **fields)

    def telemetry(self, values: dict, device: str, step: int | None = None) -> None:
        """Record one sample of device telemetry (GPU power, temperature, ...) for `device`.

        Values and names follow `log()`'s rules; `device` must be non-empty text and `step` an integer
        or None. Telemetry steps may go back (a sampler thread reads the step asynchronously).
        """
        values = _device_sample("run.telemetry()", device, values)
        if step is not None and (type(step) is not int or not 0 <= step < STEP_LIMIT):
            step = _as_step("run.telemetry()", step)
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        self._q.append((_TELEMETRY, device, step, time.time(), values))

    def telemetry_block(self, samples: Mapping, step: int | None = None, *, decimals: Mapping | None = None) -> None:
        """Record one tick of telemetry for several devices at once: `{device: {name: value}}`.

        The NVML sampler calls this once per tick for all GPUs of the node. Samples are held on the flush
        thread for up to `telemetry_every` seconds (init's argument, 5 s by default) and written as ONE
        columnar record per node (records.encode_telemetry): ~6 bytes per point instead of ~40 for one
        record per device. `decimals` ({name: digits}) rounds a name to its sensor's real resolution;
        names not in it are kept exact. Checks as `telemetry()`: misuse raises here, I/O never does.
        """
        if not isinstance(samples, Mapping):
            raise TypeError(f"run.telemetry_block() takes {{device: {{name: number}}}}, not {type(samples).__name__}")
        block = {}
        for device, values in samples.items():
            block[device] = _device_sample("run.telemetry_block()", device, values)
        if decimals is not None:
            if not isinstance(decimals, Mapping):
                raise TypeError(f"run.telemetry_block(): decimals must be {{name: int}}, not {type(decimals).__name__}")
            decimals = dict(decimals)
            for key, d in decimals.items():
                if type(d) is not int or not -9 <= d <= 15:
                    raise ValueError(
                        f"run.telemetry_block(): decimals[{key!r:.40}] must be an int in [-9, 15], not {d!r:.40}"
                    )
            decimals = tuple(sorted((str(k), d) for k, d in decimals.items()))
        if step is not None and (type(step) is not int or not 0 <= step < STEP_LIMIT):
            step = _as_step("run.telemetry_block()", step)
        if not block:
            return
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        self._q.append((_TEL_BLOCK, step, time.time(), block, decimals))

    def _refuse(self) -> None:
        self._rejected += 1
        if self._finished:
            self._warn_once("after-finish", "midflight ignores records sent after run.finish()")
        else:
            self._warn_once(
                "queue-full",
                f"midflight's queue holds {self.max_queue:,} unflushed calls; "
                "the flush thread cannot keep up, so new records are dropped (counted)",
            )

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> bool:
        """Write everything queued so far; True if nothing is left pending. Safe from any thread."""
        with self._lock:
            self._flush_locked()
            return not self._pending

    def _flush_locked(self, close: dict | None = None, force: bool = True) -> None:
        try:
            body = self._encode(self._drain(), force)
            if close is not None:  # the counters as they stand after the final encode
                close.update(dropped_records=self.dropped_records, dropped_values=self.dropped_values)
            self._write(body + (records.encode(close) if close else b""))
        except Exception as exc:  # never into the training loop, never kill the flush thread
            self._warn_once(("flush", type(exc)), f"midflight recorder error (recording continues): {exc!r}")

    def finish(self, reason: str = "completed", *, exit_code: int | None = None, error: str | None = None) -> None:
        """End this rank's segment with a close record: completed, crashed, stopped or rewound (by intervention)."""
        if reason not in END_REASONS:
            raise ValueError(f"finish(reason={reason!r}): reason must be one of {', '.join(END_REASONS)}")
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        self._thread.join(timeout=max(5.0, 4 * self.flush_every))
        with self._lock:
            close = {
                "k": records.CLOSE,
                "t": time.time(),
                "reason": reason,
                "exit_code": exit_code,
                "error": error,
                "last_step": self._next_step - 1 if self._next_step else None,
                "dropped_records": self.dropped_records,
                "dropped_values": self.dropped_values,
                "write_errors": self.write_errors,
            }
            self._flush_locked(close)
            self._wait_for_space()
            if self._pending:
                self._warn_once(
                    "final",
                    f"midflight could not write the last {len(self._pending)} bytes of "
                    f"{self.path}; everything before them is on disk",
                )
            self._close_fd()
        atexit.unregister(self._at_exit)
        if sys.excepthook == self._excepthook:  # bound methods compare equal, never identical
            sys.excepthook = self._prev_excepthook

    def _wait_for_space(self) -> None:
        """At finish, on a full disk: retry the last records (the close among them) until space returns.

        Bounded by `finish_wait_s`; only for errors that can clear (ENOSPC, EDQUOT), never for a read-only
        or missing directory. Called with the lock held, after the flush thread has stopped.
        """
        if not (self._pending or self._header is not None) or self._last_errno not in _SPACE_ERRNOS:
            return
        self._warn_once(
            "final-wait",
            f"midflight cannot record the end of this segment: the disk of {self.path} is full; "
            f"waiting up to {self.finish_wait_s:g} s for space",
        )
        deadline = time.monotonic() + self.finish_wait_s
        while (self._pending or self._header is not None) and self._last_errno in _SPACE_ERRNOS:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left))
            self._flush_locked()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.finish("completed")
        elif isinstance(exc, SystemExit) and exc.code in (0, None):
            self.finish("completed", exit_code=0)
        elif isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
            self.finish("crashed", exit_code=code, error=None if isinstance(exc.code, int) else str(exc.code))
        else:
            self.finish("crashed", error=_describe(exc))

    def _excepthook(self, exc_type, exc, tb) -> None:
        self._uncaught = exc
        self._prev_excepthook(exc_type, exc, tb)

    def _at_exit(self) -> None:
        if self._uncaught is not None:
            self.finish("crashed", error=_describe(self._uncaught))
        else:
            self.finish("completed")

    # ------------------------------------------------------------------ flush thread
    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every):
            with self._lock:
                self._flush_locked(force=False)
                self._heartbeat()

    def _drain(self) -> list:
        q = self._q
        return [q.popleft() for _ in range(len(q))]

    def _encode(self, items: list, force: bool = True) -> bytes:
        """Queue items -> record lines. Metrics are grouped into columnar blocks per key set; node telemetry
        is held until `telemetry_every` seconds have passed (or `force`), then written as node records."""
        tel = b""
        if items:
            self._resolve_tensors(items)
            if not self._tel_held:
                self._tel_since = time.monotonic()
            self._tel_held.extend(item for item in items if item[0] == _TEL_BLOCK)
        if self._tel_held and (
            force or len(self._tel_held) >= _TEL_HOLD_MAX or time.monotonic() - self._tel_since >= self.telemetry_every
        ):
            held, self._tel_held = self._tel_held, []
            tel = self._encode_node_telemetry(held)
        if not items:
            return tel
        return self._encode_items(items) + tel

    def _encode_node_telemetry(self, held: list) -> bytes:
        """Held node samples -> one record per run of samples with the same devices, names and decimals."""
        out, group, key = [], [], None
        for _, step, t, block, decimals in held:
            cleaned = {dev: self._clean(values) for dev, values in block.items()}
            names: dict = {}
            for n, _v, _b in cleaned.values():
                names.update(dict.fromkeys(n))
            if not names:
                continue
            k = (tuple(cleaned), tuple(names), decimals)
            if k != key and group:
                out.append(_node_record(key, group))
                group = []
            key = k
            group.append((step, t, cleaned))
        if group:
            out.append(_node_record(key, group))
        return b"".join(out)

    def _encode_items(self, items: list) -> bytes:
        out: list[bytes] = []
        blocks: dict = {}  # (kind, device, names) -> (rows, nonfinite), in first-seen order
        items = _merge_summaries(items)
        for item in items:
            tag = item[0]
            if tag == _METRICS:
                _, step, t, values = item
                names, vals, bad = self._clean(values)
                if names:
                    rows, nonfinite = blocks.setdefault((_METRICS, None, names), ([], []))
                    nonfinite.extend([len(rows), j, token] for j, token in bad)
                    rows.append([step, t, *vals])
            elif tag == _TELEMETRY:
                _, device, step, t, values = item
                names, vals, bad = self._clean(values)
                if names:
                    rows, nonfinite = blocks.setdefault((_TELEMETRY, device, names), ([], []))
                    nonfinite.extend([len(rows), j, token] for j, token in bad)
                    rows.append([t, step, *vals])
            elif tag == _TEL_BLOCK:
                continue  # held, written by _encode_node_telemetry
            elif tag == _EVENT:
                _, kind, step, t, fields = item
                out.append(records.encode({"k": records.EVENT, "kind": kind, "step": step, "t": t, "fields": fields}))
            else:
                out.append(records.encode(item[1]))
        for (kind, device, names), (rows, nonfinite) in blocks.items():
            rec = {"k": records.METRICS if kind == _METRICS else records.TELEMETRY, "names": list(names), "rows": rows}
            if kind == _TELEMETRY:
                rec["device"] = device
            if nonfinite:
                rec["nonfinite"] = nonfinite
            out.append(records.encode_block(rec))
        return b"".join(out)

    def _clean(self, values: dict) -> tuple[tuple, list, list]:
        """(names, numeric values, [(index, token)] of the NaN/Inf values among them).

        The values passed the call-site check; one that still cannot be read here (a tensor whose
        device copy failed, a numbers.Real whose float() raises) is dropped and counted in `dropped_values`.
        """
        names, vals, bad = [], [], []
        for key, v in values.items():
            if type(v) not in _FAST:
                try:
                    if isinstance(v, (str, bytes)):
                        raise TypeError
                    v = float(v)  # bool, numpy scalar
                except Exception:
                    self.dropped_values += 1
                    self._warn_once(
                        ("bad-value", key), f"midflight dropped metric {key!r}: could not read value {v!r:.80}"
                    )
                    continue
            if not -_INF < v < _INF:  # NaN or +-Inf: kept faithfully, listed beside the block
                bad.append((len(vals), records.nonfinite_token(v)))
            names.append(key if type(key) is str else str(key))
            vals.append(v)
        return tuple(names), vals, bad

    def _resolve_tensors(self, items: list) -> None:
        """Replace 0-d tensors in metric dicts by floats: one stacked device->host copy per (device, dtype)."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        tensor = torch.Tensor
        groups: dict = {}  # (device, dtype) -> (dicts, keys, tensors)
        for item in items:
            if item[0] == _METRICS or item[0] == _TELEMETRY:
                dicts = (item[-1],)
            elif item[0] == _TEL_BLOCK:
                dicts = item[3].values()
            else:
                continue
            for values in dicts:
                for key, v in values.items():
                    if isinstance(v, tensor):
                        group = groups.get((v.device, v.dtype))
                        if group is None:
                            group = groups[(v.device, v.dtype)] = ([], [], [])
                        group[0].append(values)
                        group[1].append(key)
                        group[2].append(v)
        if not groups:
            return
        with torch.no_grad():
            for dicts, keys, tensors in groups.values():
                try:  # one dtype per group: stack, then one exact conversion and one copy
                    flat = torch.stack([v if v.dim() == 0 else v.reshape(()) for v in tensors])
                    resolved = flat.to("cpu", torch.float64).tolist()
                except Exception:  # a tensor with more than one element, or an odd device
                    resolved = []
                    for v in tensors:
                        try:
                            resolved.append(float(v.detach().reshape(()).item()))
                        except Exception:
                            resolved.append(None)  # dropped and counted by _clean
                for values, key, value in zip(dicts, keys, resolved):
                    values[key] = value

    def _write(self, data: bytes) -> None:
        if self._header is not None:
            try:
                segments.write_header(self.run_dir, self._header)
                self._header = None
            except OSError as exc:
                self._io_failed(exc, "segment header")
        if data:
            self._pending += data
            self._cap_pending()
        if not self._pending:
            return
        written = 0
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                self._torn = False
                if os.fstat(self._fd).st_size and os.pread(self._fd, 1, os.fstat(self._fd).st_size - 1) != b"\n":
                    self._torn = True
            if self._torn:
                os.write(self._fd, records.TORN_TERMINATOR)  # readers count the fragment as one malformed line
                self._torn = False
            data = bytes(self._pending)
            while written < len(data):
                written += os.write(self._fd, data[written:])
            self.records_written += self._pending.count(b"\n")
            self._pending.clear()
            self._unsynced = True
            self._last_errno = None
            if self._failing:
                self._failing = False
                warnings.warn(f"midflight is writing to {self.path} again", RecorderWarning, stacklevel=2)
        except OSError as exc:
            whole = self._pending.rfind(b"\n", 0, written) + 1  # complete lines that did reach the disk
            self.records_written += self._pending.count(b"\n", 0, whole)
            del self._pending[:whole]
            if written > whole:
                self._torn = True
                try:
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - (written - whole))
                    self._torn = False
                except (OSError, TypeError):
                    pass
            self._io_failed(exc, str(self.path))
            self._close_fd()
        if self._unsynced and time.monotonic() - self._last_fsync >= self.fsync_every and self._fd is not None:
            try:
                os.fsync(self._fd)
                self._unsynced = False
            except OSError as exc:  # written, but maybe not durable: say so, keep going
                self._warn_once(("fsync", exc.errno), f"midflight cannot fsync {self.path}: {exc}")
            self._last_fsync = time.monotonic()

    def _cap_pending(self) -> None:
        """While writes fail, keep at most max_pending_bytes: drop the oldest whole records and count them."""
        excess = len(self._pending) - self.max_pending_bytes
        if excess <= 0:
            return
        cut = self._pending.find(b"\n", excess) + 1 or len(self._pending)
        n = self._pending.count(b"\n", 0, cut)
        del self._pending[:cut]
        self._dropped += n
        self._warn_once(
            "pending-cap",
            f"midflight's write buffer is full ({self.max_pending_bytes} bytes) "
            f"while {self.path} is unwritable; dropping the oldest unwritten records (counted)",
        )

    def _heartbeat(self) -> None:
        """Touch the log while idle so a live run (long eval, slow step) is not mistaken for a dead one."""
        now = time.monotonic()
        if self._fd is not None and now - self._last_touch >= 5.0:
            try:
                os.utime(self._fd)
            except OSError:
                pass
            self._last_touch = now

    def _io_failed(self, exc: OSError, what: str) -> None:
        self.write_errors += 1
        self._failing = True
        self._last_errno = exc.errno
        self._warn_once(
            ("io", exc.errno, what),
            f"midflight cannot write {what}: {exc.strerror or exc} "
            f"(errno {exc.errno}). Training continues; {len(self._pending)} bytes are held "
            "in memory and retried every flush.",
        )

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _warn_once(self, cause, message: str) -> None:
        if cause in self._warned:
            return
        self._warned.add(cause)
        warnings.warn(message, RecorderWarning, stacklevel=3)


def _node_record(key, group: list) -> bytes:
    """One node telemetry record of `group` [(step, wall time, {device: (names, values, _)})]."""
    devices, names, decimals = key
    col = {n: j for j, n in enumerate(names)}
    k = len(names)
    rows = []
    for _, _, cleaned in group:
        row = [None] * (len(devices) * k)  # a name a device did not report: absent
        for d, (n, v, _) in enumerate(cleaned.values()):
            for name, value in zip(n, v):
                row[d * k + col[name]] = value
        rows.append(row)
    return records.encode_telemetry(
        devices, names, [t for _, t, _ in group], [s for s, _, _ in group], rows, decimals=dict(decimals or ())
    )


def _merge_summaries(items: list) -> list:
    """The `summary` events of one flush as one (at the last one's place): a loop that sets the summary every
    step writes one event per flush, not one per step. Last value wins per key, as when the summary is read."""
    at = [i for i, item in enumerate(items) if item[0] == _EVENT and item[1] == "summary"]
    if len(at) < 2:
        return items
    values: dict = {}
    removed: dict = {}
    for i in at:
        fields = items[i][4]
        for key in fields.get("removed", ()):
            values.pop(key, None)
            removed[key] = None
        for key, value in fields["values"].items():
            removed.pop(key, None)
            values[key] = value
    _, kind, step, t, _ = items[at[-1]]
    merged = {"values": values, "removed": list(removed)} if removed else {"values": values}
    skip = set(at[:-1])
    return [(_EVENT, kind, step, t, merged) if i == at[-1] else item for i, item in enumerate(items) if i not in skip]


_MAX_NESTING = 8  # dicts of dicts logged as dotted names, at most this deep


def _log_values(where: str, values: dict, depth: int = 0) -> tuple[dict, list | None]:
    """log()'s values beyond plain numbers: (numbers to record, [(name, text)] to record as `text` events).

    A Histogram becomes its quantile metrics, a str or Text a text event, a dict of numbers its dotted names
    (`{"val": {"loss": x}}` -> `val.loss`, as W&B names them); everything else must be a number
    (`_check_values`, whose errors say what to do instead). Raises before anything is queued.
    """
    try:  # the common case, 0-d tensors and numpy scalars: one pass with the tensor fast path
        _check_values(where, values, log=True)
        return values, None
    except (TypeError, ValueError):
        pass  # text, a histogram, a dict, or misuse: value by value below (which raises misuse again, same message)
    out: dict = {}
    texts: list = []
    for key, v in values.items():
        if type(v) in _SCALARS:
            out[key] = v
        elif isinstance(v, Histogram):
            out.update(v.metrics(key))
        elif isinstance(v, Text):
            texts.append((key, v.text))
        elif isinstance(v, str):
            texts.append((key, runmeta.check_text(f"{where}: metric {key!r:.80}", v, runmeta.MAX_TEXT)))
        elif isinstance(v, Mapping):
            if depth >= _MAX_NESTING:
                raise ValueError(f"{where}: metric {key!r:.80} nests dicts more than {_MAX_NESTING} deep")
            _check_names(where, v)
            sub, subtexts = _log_values(where, {f"{key}.{k}": x for k, x in v.items()}, depth + 1)
            out.update(sub)
            texts += subtexts or ()
        else:
            _check_values(where, {key: v}, log=True)
            out[key] = v
    return out, texts or None


def check_log_values(where: str, metrics) -> dict:
    """`metrics` checked as `Run.log` checks it (TypeError / ValueError, one line), recording nothing, and flat:
    histograms as their quantile metrics, text as Text, nested dicts as dotted names. For a caller that holds
    values before logging them (W&B's `log(..., commit=False)` merges several calls into one step)."""
    values = dict(metrics) if type(metrics) is dict else _as_dict(where, metrics)
    _check_names(where, values)
    if _SCALARS.issuperset(map(type, values.values())):
        return values
    flat, texts = _log_values(where, values)
    for name, text in texts or ():
        flat[name] = Text(text)
    return flat


def _as_dict(where: str, metrics) -> dict:
    """A copy of a Mapping other than a dict; TypeError for anything else (None, a list, a number)."""
    if isinstance(metrics, Mapping):
        return dict(metrics)
    raise TypeError(f"{where} takes a dict of {{name: number}}, not {type(metrics).__name__} ({metrics!r:.80})")


def _device_sample(where: str, device, values) -> dict:
    """One device's telemetry sample, checked as `log()` checks metrics (TypeError / ValueError on misuse)."""
    if type(device) is not str:
        raise TypeError(f"{where}: device must be text, not {type(device).__name__} ({device!r:.80})")
    if not device:
        raise ValueError(f"{where}: device must not be empty")
    values = dict(values) if type(values) is dict else _as_dict(where, values)
    _check_names(where, values)
    _check_values(where, values)
    return values


def _as_step(where: str, step) -> int:
    """A step that is not a plain int in range, checked: an int in [0, 2**63) (logbook.values' rule).

    TypeError for anything but an integer: a bool is refused (a flag passed by mistake), and so is a
    tensor, since reading it would sync the GPU. ValueError for an integer outside [0, 2**63), which
    no store column or reader could hold.
    """
    if isinstance(step, numbers.Integral) and not isinstance(step, bool) and _module(step) != "torch":
        step = int(step)
        if 0 <= step < STEP_LIMIT:
            return step
        raise ValueError(f"{where}: step must be in [0, 2**63), not {str(step)[:40]}")
    raise TypeError(f"{where}: step must be an integer, not {type(step).__name__} ({step!r:.80})")


def _module(v) -> str:
    return type(v).__module__.partition(".")[0]


def _check_names(where: str, names) -> None:
    """Raise for the first metric name that is not text or is reserved."""
    for key in names:
        if not isinstance(key, str):
            raise TypeError(f"{where}: metric names must be text, not {type(key).__name__} ({key!r:.80})")
        if key in RESERVED_NAMES:
            what = "empty" if not key else f"{key!r}, which is reserved (every point already has a {key})"
            raise ValueError(f"{where}: a metric name must not be {what}; reserved: step, wall_time and ''")


_HISTOGRAM_HINT = "log one number per name, or wrap it in midflight.Histogram(...) to record its distribution"


def _check_values(where: str, values: dict, log: bool = False) -> None:
    """Raise for the first value `log()`/`telemetry()` cannot record; return if all are fine.

    `log`: the message for run.log, which also takes histograms and text, says so."""
    for key, v in values.items():
        t = type(v)
        if t in _SCALARS:
            continue
        if t in _TENSOR_TYPES and v.dtype in _TENSOR_DTYPES and not v.ndim:  # two metadata reads
            continue
        if _module(v) == "torch":
            _check_tensor(where, key, v, log)
            continue
        text = isinstance(v, (str, bytes))  # numpy's str_ and bytes_ too: refused below, never a number
        if not text and isinstance(v, numbers.Real):  # numpy integer and float scalars, Fraction, ...
            _SCALARS.add(t)
            continue
        if not text and _module(v) == "numpy":  # numpy bool_, 0-d arrays; complex and datetime values are refused
            kind = getattr(getattr(v, "dtype", None), "kind", None)
            if kind in ("b", "i", "u", "f"):
                if getattr(v, "size", 1) != 1:
                    hint = _HISTOGRAM_HINT if log else "log one number per name"
                    raise ValueError(f"{where}: metric {key!r} is an array of {v.size} values; {hint}")
                if isinstance(v, sys.modules["numpy"].generic):
                    _SCALARS.add(t)  # a scalar type (numpy.bool_): its values are always one number
                continue
        if not log:
            raise TypeError(
                f"{where}: metric {key!r} is {t.__name__} ({v!r:.80}), not a real number; "
                "log an int, float, numpy scalar or 0-d tensor"
            )
        refusal = getattr(t, "_midflight_refusal", None)  # a W&B media type of midflight.wandb says what it is
        if isinstance(refusal, str):
            raise TypeError(f"{where}: metric {key!r}: {refusal}")
        if isinstance(v, (list, tuple)) and all(isinstance(x, numbers.Real) for x in v):
            raise TypeError(f"{where}: metric {key!r} is a {t.__name__} of {len(v)} numbers; {_HISTOGRAM_HINT}")
        raise TypeError(
            f"{where}: metric {key!r} is {t.__name__} ({v!r:.80}), not a real number; midflight records numbers, "
            "histograms and text: log an int, float, numpy scalar or 0-d tensor, midflight.Histogram(values) "
            "or midflight.Text(text)"
        )


def _check_tensor(where: str, key, v, log: bool = False) -> None:
    """A torch tensor: one element of a real or bool dtype. Reads only metadata (no .item(), no GPU sync)."""
    dtype = getattr(v, "dtype", None)
    if dtype is None or getattr(dtype, "is_complex", False) or not hasattr(v, "numel"):
        raise TypeError(
            f"{where}: metric {key!r} is a {type(v).__name__} of {dtype}, not a real number; "
            "log an int, float, numpy scalar or 0-d tensor"
        )
    if v.ndim != 0 and v.numel() != 1:
        hint = ", or wrap it in midflight.Histogram(...) to record its distribution" if log else ""
        raise ValueError(
            f"{where}: metric {key!r} is a tensor of shape {tuple(v.shape)}; log one number per name "
            f"(a 0-d tensor such as loss.detach(), or t.mean()){hint}"
        )
    _TENSOR_TYPES.add(type(v))
    _TENSOR_DTYPES.add(dtype)


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    return text[-4000:]


_current: Run | None = None
_inits: dict[str, int] = {}  # run directory -> inits made by this process there (the agreement's scope)


def _segment_id_for(run_dir: Path, info: dist.DistInfo) -> tuple[str, bool]:
    """One id for every rank of this launch that calls init, without a collective (any subset of ranks may call it).

    One process: a fresh id. Several, with torch.distributed up: rank 0's fresh id, read by the others from the
    process group's store (rank 0 never waits). Otherwise, or if rank 0 does not record: an id derived from the
    launch's shared environment (torchrun, SLURM), the same on every rank.

    Returns (id, writes the header): rank 0 writes it; so does a rank that waited for rank 0 in vain.
    """
    if info.world_size <= 1:
        return segments.new_segment_id(), info.is_main
    where = str(run_dir.resolve())
    _inits[where] = _inits.get(where, 0) + 1
    scope = hashlib.sha1(f"{where}|{_inits[where]}".encode()).hexdigest()[:16]
    agreed, rank0_absent = None, False
    if dist.torch_dist() is not None:
        agreed, rank0_absent = dist.agree_on(segments.new_segment_id(), info, scope)
    if agreed is not None:
        return agreed, info.is_main
    key = dist.launch_key()
    if key is None:
        warnings.warn(
            f"rank {info.rank} of {info.world_size} found no launcher environment (torchrun, SLURM) and no process "
            "group to agree on a segment id: it records its own segment; pass segment_id= (the same on every rank) "
            "or set MIDFLIGHT_LAUNCH_ID",
            RecorderWarning,
            stacklevel=3,
        )
        return segments.new_segment_id(), True
    return "seg-" + hashlib.sha1(f"{key}|{where}|{_inits[where]}".encode()).hexdigest()[
        :16
    ], info.is_main or rank0_absent


def init(
    run_dir: str | os.PathLike,
    name: str | None = None,
    config: dict | None = None,
    *,
    resume_step: int | None = None,
    parent: str | None = None,
    reason: str | None = None,
    segment_id: str | None = None,
    flush_every: float = 0.5,
    fsync_every: float = 5.0,
    max_pending_bytes: int = 256 << 20,
    max_queue: int = 200_000,
    finish_wait_s: float = 30.0,
    telemetry_every: float = 5.0,
    device: str | None = None,
    tdp_w: float | None = None,
    devices: int | None = None,
    roles: dict | None = None,
    tags=None,
    notes: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
) -> Run:
    """Start recording one launch (segment) of a run into `run_dir`.

    Args:
        run_dir: the run's directory; everything midflight writes stays inside it.
        name: display name (any text; never used in a path). Defaults to the folder name.
        config: the resolved config; stored in the segment header, diffed against the parent's.
        resume_step: the checkpoint step this launch resumed from (None for a fresh start).
        parent: the segment resumed from; inferred from `resume_step` when omitted.
        reason: why this launch happened ("resume after NCCL timeout", "rollback, lr x0.5").
        segment_id: force an id (all ranks must pass the same). Otherwise rank 0's, agreed without a collective,
            so init may be called on any subset of ranks (rank 0 only, as W&B users do) and never blocks.
        flush_every: seconds between background flushes.
        finish_wait_s: at finish, how long to wait for space on a full disk (ENOSPC, EDQUOT) so that the
            segment's close record is still written; other write errors never wait.
        telemetry_every: seconds node telemetry (`telemetry_block`) is held so that many ticks share one
            compact record (the bytes per point fall ~7x); 0 writes each flush's samples at once.
        device, tdp_w, devices: for a run without power telemetry, the accelerator model, its TDP in W and how
            many the launch uses (default: the world size). Its energy is then reported as a labelled nameplate
            estimate (TDP x wall time); without them it has no energy figure at all, never a silent default.
        roles: which of your metric names plays which role, when midflight cannot tell from the name
            (`{"loss": "my_loss", "lr": "sched/lr"}`; roles in logbook.roles: loss, eval_loss, lr, grad_norm,
            loss_scale, throughput, step_time, param_norm). Common names (`train/loss`, `learning_rate`, ...)
            need no declaration. Kept in the segment header; a bad one raises here.
        tags, notes, group, job_type: what people say about the run (W&B's arguments), kept in the segment
            header as text: tags a list of short labels (at most 100, 64 characters each), notes at most 4,096
            characters, group and job_type one line each. Later changes: `run.tags = ...`, `run.notes = ...`.
    """
    given = _given_power(device, tdp_w, devices)
    global _current
    declared = roles_vocab.validate(roles)  # a caller's mistake raises here, before anything is written
    tags = runmeta.check_tags("init()", tags)  # user text is checked before anything is written
    notes = None if notes is None else runmeta.check_text("init()", notes, runmeta.MAX_NOTES, what="notes")
    group = runmeta.check_label("init()", group, what="group")
    job_type = runmeta.check_label("init()", job_type, what="job_type")
    run_dir = Path(run_dir)
    info = dist.detect()
    writes_header = info.is_main
    if segment_id is None:
        segment_id, writes_header = _segment_id_for(run_dir, info)
    layout.segment_dir(run_dir, segment_id)  # validates the id before anything is written
    name = str(name) if name is not None else (run_dir.resolve().name or "run")
    header = None
    if writes_header and (
        info.is_main or not (layout.segment_dir(run_dir, segment_id) / layout.SEGMENT_HEADER).exists()
    ):
        if parent is None:
            try:
                parent = segments.infer_parent(run_dir, resume_step)
            except OSError as exc:  # an unreadable run directory: record this launch as a new root
                msg = f"midflight could not read the lineage in {run_dir}: {exc!r}"
                warnings.warn(msg, RecorderWarning, stacklevel=2)
        header = segments.build_header(
            run_dir,
            segment_id=segment_id,
            name=name,
            config=dict(config or {}),
            parent=parent,
            resume_step=resume_step,
            reason=reason,
            world_size=info.world_size,
            roles=declared,
            meta={"tags": list(tags), "notes": notes, "group": group, "job_type": job_type},
        )
    run = Run(
        run_dir,
        name=name,
        segment_id=segment_id,
        info=info,
        header=header,
        flush_every=flush_every,
        fsync_every=fsync_every,
        max_pending_bytes=max_pending_bytes,
        max_queue=max_queue,
        finish_wait_s=finish_wait_s,
        telemetry_every=telemetry_every,
        config=header["config"] if header else config,
        tags=tags,
        notes=notes,
        group=group,
        job_type=job_type,
    )
    if header is not None and given is not None:  # once per launch, by the rank that writes the header
        n = given[2] or info.world_size
        run.event(
            "telemetry_start",
            given=True,
            devices=[{"device": f"given{i}", "model": given[0], "tdp_w": given[1]} for i in range(n)],
        )
    run.flush()  # header and open record on disk now, or a warning now
    _current = run
    return run


def _given_power(device, tdp_w, devices) -> tuple[str, float, int | None] | None:
    """init's device/tdp_w/devices, checked: (model, watts, count or None), or None when no TDP is given."""
    if tdp_w is None:
        if device is not None or devices is not None:
            raise ValueError("midflight.init(): give tdp_w (watts per device) with device= or devices=")
        return None
    if isinstance(tdp_w, bool) or not isinstance(tdp_w, int | float) or not 0 < tdp_w <= 100_000:
        raise ValueError(f"midflight.init(): tdp_w must be a number of watts in (0, 100000], not {tdp_w!r:.40}")
    if devices is not None and (type(devices) is not int or not 0 < devices <= 1_000_000):
        raise ValueError(f"midflight.init(): devices must be a whole number in [1, 1000000], not {devices!r:.40}")
    if device is not None and not isinstance(device, str):
        raise TypeError(f"midflight.init(): device must be text such as 'A100-SXM4-80GB', not {type(device).__name__}")
    return (device or "device")[:80], float(tdp_w), devices


def _require_run() -> Run:
    if _current is None:
        raise RuntimeError("call logbook.init(run_dir, ...) first")
    return _current


def log(metrics: dict, step: int | None = None) -> None:
    _require_run().log(metrics, step=step)


def event(kind: str, step: int | None = None, **fields) -> None:
    _require_run().event(kind, step=step, **fields)


def finish(reason: str = "completed", **kwargs) -> None:
    _require_run().finish(reason, **kwargs)
