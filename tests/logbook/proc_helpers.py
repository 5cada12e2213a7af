"""Shared helpers for the process-level tests: real subprocesses, real files, real DuckDB.

Used by test_crash_safety, test_exactly_once, test_concurrency and test_io_errors.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import duckdb

from midflight.logbook.record import records

ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra) -> dict:
    """The environment for a child Python: this checkout first on the path, no inherited rank variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


class Proc:
    """A child process whose stdout lines are pumped by a thread (so a full pipe never blocks it).

    Each line is kept with the parent's receive time; stderr goes to a temp file (read it with `.stderr`).
    """

    def __init__(self, args: list, *, stdin: bool = False, env: dict | None = None, cwd=None):
        self._err = tempfile.TemporaryFile()
        self.args = [str(a) for a in args]
        self.p = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env or child_env(),
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    @property
    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode("utf-8", "replace")

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """The next stdout line that matches the regex `prefix` at its start (a plain word: starts with it).

        Fails the test on EOF or timeout, showing the child's stderr.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._q.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"no {prefix!r} line from {self.args[-3:]} within {timeout}s; "
                    f"stdout tail {self.lines[-5:]}; stderr:\n{self.stderr[-3000:]}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"{self.args[-3:]} exited ({self.p.wait()}) before printing {prefix!r}; "
                    f"stdout tail {self.lines[-5:]}; stderr:\n{self.stderr[-3000:]}"
                )
            if re.match(prefix, line):
                return line

    def send(self, text: str) -> None:
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def sigkill(self) -> bool:
        """SIGKILL now; True if it was still running (a real kill, not a clean exit)."""
        alive = self.p.poll() is None
        if alive:
            os.kill(self.p.pid, signal.SIGKILL)
        self.wait(30)
        return alive

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(
                f"{self.args[-3:]} still running after {timeout}s; stderr:\n{self.stderr[-3000:]}"
            ) from None
        self._pump.join(10)
        return rc

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self._pump.join(10)
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                f.close()
        self._err.close()


def python(code: str, *args, stdin: bool = False, **env) -> Proc:
    """Run dedented `code` in a fresh interpreter (`python -c`), argv[1:] = args."""
    return Proc([sys.executable, "-c", textwrap.dedent(code), *args], stdin=stdin, env=child_env(**env))


def python_ok(code: str, *args, timeout: float = 60.0, **env) -> Proc:
    """Run `code` like `python()` to the end and assert it exited 0; its output lines stay in `.lines`."""
    proc = python(code, *args, **env)
    try:
        assert proc.wait(timeout) == 0, proc.stderr
    finally:
        proc.close()
    return proc


def cli(*args, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`midflight ...` as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "midflight.logbook", *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=timeout,
    )


# ------------------------------------------------------------------ reading logs the way a reader must
def parse_log(path: Path) -> tuple[list[dict], int, bytes]:
    """(records of complete lines, complete lines that are not records, the torn tail after the last newline)."""
    return parse_bytes(Path(path).read_bytes())


def parse_bytes(data: bytes) -> tuple[list[dict], int, bytes]:
    """parse_log for bytes already read (e.g. a file's prefix up to a committed offset)."""
    end = data.rfind(b"\n") + 1
    recs, bad = [], 0
    for line in data[:end].split(b"\n")[:-1]:
        try:
            recs.append(records.decode(line))
        except ValueError:
            bad += 1
    return recs, bad, data[end:]


def metric_points(recs: list[dict]) -> list[tuple[int, str, float]]:
    """(step, name, value) for every metric value in `recs`, in file order."""
    out = []
    for r in recs:
        if r["k"] == records.METRICS:
            for row in r["rows"]:
                out.extend((int(row[0]), name, v) for name, v in zip(r["names"], row[2:]))
    return out


# ------------------------------------------------------------------ store inspection
# Every table ingest writes: what two stores built from the same logs must hold alike.
STORE_TABLES = (
    "runs",
    "segments",
    "rank_logs",
    "metrics",
    "metric_tiles",
    "events",
    "telemetry",
    "telemetry_tiles",
    "annotation_ops",
    "intervention_ops",
    "ingest_files",
)


def store_snapshot_diff(path_a: Path, path_b: Path, tables: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """Per table: (rows in a, rows only in a, rows only in b), comparing as multisets (EXCEPT ALL).

    Both stores are attached read-only in a throwaway connection; no other process may hold them.
    """
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{path_a}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{path_b}' AS b (READ_ONLY)")
        out = {}
        for t in tables:
            n = con.execute(f"SELECT count(*) FROM a.{t}").fetchone()[0]
            only_a, only_b = (
                con.execute(
                    f"SELECT count(*) FROM (SELECT * FROM {x}.{t} EXCEPT ALL SELECT * FROM {y}.{t})"
                ).fetchone()[0]
                for x, y in (("a", "b"), ("b", "a"))
            )
            out[t] = (n, only_a, only_b)
        return out
    finally:
        con.close()


def duplicate_metric_keys(cur) -> int:
    """Metric rows beyond the first for any (run, segment, rank, step, name): 0 means exactly once."""
    return cur.execute(
        "SELECT count(*) - count(DISTINCT (run_id, segment_id, rank, step, name)) FROM metrics"
    ).fetchone()[0]
