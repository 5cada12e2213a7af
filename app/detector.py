"""Incident detection in a worker process, so a big run's scan never holds the dashboard server's GIL.

The detector is a Python loop (~13 µs a step: ~13 s for 1M steps). Run on a thread of the
Streamlit server, it starved the page threads (a cold Live page took 19 s instead of 5).
The server reads the detector's inputs from its store (DuckDB releases the GIL) and sends
them, pickled, to one long-lived `midflight dashboard.detector` process over its stdin; the
incidents come back on its stdout. A plain subprocess, not multiprocessing: "spawn"
re-imports the parent's __main__, which inside Streamlit is the page script itself.

Frames on the pipe: an 8-byte little-endian length, then a pickle.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import threading

from midflight.app import child_env
from midflight.logbook.analysis import divergence

_HEAD = struct.Struct("<Q")


def _send(stream, obj) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEAD.pack(len(blob)))
    stream.write(blob)
    stream.flush()


def _receive(stream):
    head = stream.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise EOFError("the detector process closed its pipe")
    (n,) = _HEAD.unpack(head)
    blob = stream.read(n)
    if len(blob) < n:
        raise EOFError("the detector process closed its pipe mid-message")
    return pickle.loads(blob)


class Detector:
    """One worker process, started at once (its imports take ~1 s) and again if it dies."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "midflight.app.detector"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )

    def incidents(self, frames: dict, keep: dict | None = None) -> list:
        """incidents_from(frames, keep=keep), computed in the worker (in this process if the worker cannot be
        used); `keep` receives the worker's fed detector (report.incidents.LiveIncidents feeds it on)."""
        with self._lock:
            for _attempt in range(2):
                if self._proc is None or self._proc.poll() is not None:
                    self._start()
                try:
                    _send(self._proc.stdin, (frames, keep is not None))
                    status, value = _receive(self._proc.stdout)
                except (OSError, EOFError, pickle.UnpicklingError):
                    self._proc.kill()
                    self._proc = None
                    continue
                if status == "ok":
                    found, kept = value
                    if keep is not None:
                        keep.update(kept)
                    return found
                raise RuntimeError(f"incident detection failed: {value}")
        return divergence.incidents_from(frames, keep=keep)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._proc = None


def main() -> int:
    """The worker: answer frames until stdin closes."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the pipe
    while True:
        try:
            frames, want = _receive(inp)
        except EOFError:
            return 0
        try:
            keep: dict | None = {} if want else None
            _send(out, ("ok", (divergence.incidents_from(frames, keep=keep), keep)))
        except Exception as exc:  # a bad input must not kill the worker: report it to the page
            _send(out, ("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    sys.exit(main())
