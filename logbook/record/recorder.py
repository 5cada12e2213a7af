"""The Recorder API: `run = logbook.init(...)`, `run.log({...}, step=N)`, `run.event(...)`, `run.finish()`.

Contract with the training loop:
- `log()`, `event()` and `telemetry()` only append a tuple to an in-memory queue
  (a few microseconds); a daemon thread turns the queue into records and appends
  them to this rank's log at least every `flush_every` seconds.
- Nothing here raises into the training loop. A full disk, a read-only directory
  or a bad value becomes a warning (once per cause) and a counter; records that
  could not be written are kept and retried, and recording resumes when the
  error clears.
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
import hashlib
import os
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from pathlib import Path

from logbook.record import dist, layout, records, segments

END_REASONS = ("completed", "crashed", "stopped", "rewound")

_METRICS, _EVENT, _TELEMETRY, _RAW = 0, 1, 2, 3
_FAST = (float, int)
_INF = float("inf")


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
        # Counters a user (and the close record) can read.
        self.write_errors = 0
        self._dropped = 0  # touched by the flush thread only
        self._rejected = 0  # calls refused at the call site; touched by callers only
        self.dropped_values = 0
        self.records_written = 0

        self._q: deque = deque()
        self._next_step = 0
        self._header = header
        self._pending = bytearray()
        self._fd: int | None = None
        self._torn = False  # a failed write may have left a partial line on disk
        self._failing = False
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
        """Records lost: refused at the call site, unreadable at flush, or evicted while the disk was unwritable."""
        return self._dropped + self._rejected

    # ------------------------------------------------------------------ hot path
    def log(self, metrics: dict, step: int | None = None) -> None:
        """Record scalar metrics for a step. Values: Python numbers, numpy scalars or 0-d tensors.

        A tensor is read on the flush thread (up to `flush_every` s later), not now, so that this call
        never waits for the GPU. For a tensor you modify in place afterwards (an accumulator), pass
        `t.detach().clone()`; `loss.detach()` of a fresh loss is fine as it is.
        """
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        try:
            if step is None:
                step = self._next_step
            self._next_step = step + 1
            self._q.append((_METRICS, step, time.time(), dict(metrics)))
        except Exception as exc:  # a caller's bad argument must not stop training
            self._rejected += 1
            self._warn_once(("log-arg", type(exc)), f"run.log() ignored a call it could not read: {exc!r}")

    def event(self, kind: str, step: int | None = None, **fields) -> None:
        """Record a discrete event: overflow, checkpoint, restart, intervention_applied, alert, ..."""
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        try:
            self._q.append((_EVENT, str(kind), step, time.time(), fields))
        except Exception as exc:
            self._rejected += 1
            self._warn_once(("event-arg", type(exc)), f"run.event() ignored a call it could not read: {exc!r}")

    def telemetry(self, values: dict, device: str, step: int | None = None) -> None:
        """Record one sample of device telemetry (GPU power, temperature, ...) for `device`."""
        if self._finished or len(self._q) >= self.max_queue:
            self._refuse()
            return
        try:
            self._q.append((_TELEMETRY, str(device), step, time.time(), dict(values)))
        except Exception as exc:
            self._rejected += 1
            self._warn_once(("telemetry-arg", type(exc)), f"run.telemetry() ignored a call it could not read: {exc!r}")

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

    def _flush_locked(self, close: dict | None = None) -> None:
        try:
            body = self._encode(self._drain())
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
                self._flush_locked()
                self._heartbeat()

    def _drain(self) -> list:
        q = self._q
        return [q.popleft() for _ in range(len(q))]

    def _encode(self, items: list) -> bytes:
        """Queue items -> record lines. Metrics are grouped into columnar blocks per key set."""
        if not items:
            return b""
        self._resolve_tensors(items)
        out: list[bytes] = []
        blocks: dict = {}  # (kind, device, names) -> (rows, nonfinite), in first-seen order
        for item in items:
            tag = item[0]
            if tag == _METRICS:
                _, step, t, values = item
                step = self._as_step(step)
                if step is None:
                    continue
                names, vals, bad = self._clean(values)
                if names:
                    rows, nonfinite = blocks.setdefault((_METRICS, None, names), ([], []))
                    nonfinite.extend([len(rows), j, token] for j, token in bad)
                    rows.append([step, t, *vals])
            elif tag == _TELEMETRY:
                _, device, step, t, values = item
                names, vals, bad = self._clean(values)
                if names:
                    s = None if step is None else self._as_step(step, optional=True)
                    rows, nonfinite = blocks.setdefault((_TELEMETRY, device, names), ([], []))
                    nonfinite.extend([len(rows), j, token] for j, token in bad)
                    rows.append([t, s, *vals])
            elif tag == _EVENT:
                _, kind, step, t, fields = item
                step = None if step is None else self._as_step(step, optional=True)
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

    def _as_step(self, step, optional: bool = False) -> int | None:
        try:
            return int(step)
        except Exception:
            if optional:  # events and telemetry are kept, without their step
                self._warn_once("bad-step-kept", f"midflight kept a record without its step ({step!r}: not an integer)")
            else:
                self._dropped += 1
                self._warn_once("bad-step", f"midflight dropped a record whose step {step!r} is not an integer")
            return None

    def _clean(self, values: dict) -> tuple[tuple, list, list]:
        """(names, numeric values, [(index, token)] of the NaN/Inf values among them)."""
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
                        ("bad-value", key), f"midflight dropped metric {key!r}: value {v!r:.80} is not a number"
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
                values = item[-1]
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


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8))
    return text[-4000:]


_current: Run | None = None


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
) -> Run:
    """Start recording one launch (segment) of a run into `run_dir`.

    Args:
        run_dir: the run's directory; everything midflight writes stays inside it.
        name: display name (any text; never used in a path). Defaults to the folder name.
        config: the resolved config; stored in the segment header, diffed against the parent's.
        resume_step: the checkpoint step this launch resumed from (None for a fresh start).
        parent: the segment resumed from; inferred from `resume_step` when omitted.
        reason: why this launch happened ("resume after NCCL timeout", "rollback, lr x0.5").
        segment_id: force an id (all ranks must pass the same); generated by rank 0 otherwise.
        flush_every: seconds between background flushes.
    """
    global _current
    run_dir = Path(run_dir)
    info = dist.detect()
    if segment_id is None:
        key = dist.launch_key() if info.world_size > 1 and dist.torch_dist() is None else None
        if key is not None:  # ranks cannot talk yet: derive the same id from the launch's shared env
            segment_id = "seg-" + hashlib.sha1(key.encode()).hexdigest()[:16]
        else:
            segment_id = dist.agree_on(segments.new_segment_id(), info)
    layout.segment_dir(run_dir, segment_id)  # validates the id before anything is written
    name = str(name) if name is not None else (run_dir.resolve().name or "run")
    header = None
    if info.is_main:
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
    )
    run.flush()  # header and open record on disk now, or a warning now
    _current = run
    return run


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
