"""The dashboard's one door to the data: a store that followers keep current, and slow analyses run off the page thread.

One `Source` per server process (st.cache_resource). It owns the DuckDB store of the
first root folder (or a private in-memory one if another process holds it, see
logbook.store), follows every root with watchdog, and counts the ingests that added
records: that count is the `version` every cache is keyed on. Pages read only
through `logbook.queries` and the analysis modules, with this store.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from midflight.app import sample_runs
from midflight.app.detector import Detector
from midflight.logbook.record import layout
from midflight.logbook.report import incidents as incident_report
from midflight.logbook.store import StoreWarning, open_store, queries
from midflight.logbook.store.follow import Follower

ENV_RUNS = "MIDFLIGHT_RUNS"  # run directories or folders of runs, separated by os.pathsep


def roots_from(argv: list[str], environ: dict) -> list[Path]:
    """The folders to show: `--runs PATH` arguments, else $MIDFLIGHT_RUNS, else sample_runs/.

    Raises ValueError with a message a person can act on for a path that does not exist.
    """
    given: list[str] = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--runs" and args:
            given.append(args.pop(0))
        elif a.startswith("--runs="):
            given.append(a.split("=", 1)[1])
    if not given and environ.get(ENV_RUNS):
        given = [p for p in environ[ENV_RUNS].split(os.pathsep) if p]
    roots = [Path(p).expanduser().resolve() for p in given] or [sample_runs()]
    for r in roots:
        if not r.is_dir():
            raise ValueError(f"run folder {str(r)!r} does not exist or is not a folder")
    return roots


_PRELOADED: dict[tuple[str, ...], Source] = {}


def preload(src: Source) -> None:
    """Hand a Source opened before the server started (app.serve) to the first page run that asks for it."""
    _PRELOADED[tuple(str(r) for r in src.roots)] = src


def take_preloaded(roots: tuple[str, ...]) -> Source | None:
    return _PRELOADED.pop(roots, None)


class Background:
    """The latest result of each slow analysis, recomputed on a thread when the data version moves on.

    A page asks `get(key, version, fn)` and gets the newest finished result (possibly of an
    older version) at once, or after waiting up to `wait` seconds for a first one, so a big
    run's incident scan never blocks a page. A key is recomputed at most once at a time and
    no more often than every 4x its last duration (and `min_interval`), so a live run's scans
    cannot hog the CPU or the GIL that the page thread needs.
    """

    def __init__(self, min_interval: float = 5.0):
        self.min_interval = min_interval  # seconds between recomputations of one key, at least
        self._lock = threading.Lock()
        self._done: dict = {}  # key -> (version, value, finished_at, seconds)
        self._running: dict = {}  # key -> threading.Event
        self._closed = False

    def get(self, key, version: int, fn: Callable, *, wait: float = 2.0, delay: float = 0.0):
        """(value or None, busy): busy is True while a newer result is being computed. `delay` holds a first
        computation back, so that a big run's first page render has the CPU (and the GIL) to itself."""
        with self._lock:
            done = self._done.get(key)
            running = self._running.get(key)
            stale = done is None or done[0] != version
            due = done is None or time.time() - done[2] >= max(4 * done[3], self.min_interval)
            if stale and running is None and due and not self._closed:
                running = threading.Event()
                self._running[key] = running
                first = 0.0 if done is not None else delay
                threading.Thread(target=self._compute, args=(key, version, fn, running, first), daemon=True).start()
        if done is None and running is not None:
            running.wait(wait)
            with self._lock:
                done = self._done.get(key)
        with self._lock:
            busy = key in self._running
        if done is None:
            return None, True
        if isinstance(done[1], BaseException):
            raise done[1]
        return done[1], busy or done[0] != version

    def close(self, timeout: float = 60.0) -> None:
        """Start nothing new, and wait for the computations in flight: they query the store, and closing a
        DuckDB connection under a running query fails ("connection is busy with another call")."""
        deadline = time.time() + timeout
        with self._lock:
            self._closed = True
            running = list(self._running.values())
        for finished in running:
            finished.wait(max(0.0, deadline - time.time()))

    def _compute(self, key, version, fn, finished: threading.Event, delay: float = 0.0) -> None:
        time.sleep(delay)
        t0 = time.time()
        try:
            value = fn()
        except Exception as exc:  # shown by the page that asked; the next version retries
            value = exc
        with self._lock:
            self._done[key] = (version, value, time.time(), time.time() - t0)
            self._running.pop(key, None)
        finished.set()


class Source:
    """The store, the followers that keep it current, and the run directories by run id."""

    def __init__(self, roots: list[Path], *, store_path: Path | None = None):
        self.roots = roots
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreWarning)
            self.store = open_store(store_path or layout.default_store_path(roots[0]))
        self.note = "; ".join(str(w.message) for w in caught) or None
        self.background = Background()
        self._version = 0
        self._lock = threading.Lock()
        self.detector = Detector()
        self.live = incident_report.LiveIncidents(self.detector.incidents)  # a kept detector per live run
        self.followers = [Follower(self.store, r, on_ingest=self._bump, allow_empty=True) for r in roots]
        for f in self.followers:
            f.start()

    def incidents(self, run: str) -> list:
        """The run's incidents: read here (DuckDB releases the GIL), detected in the worker process."""
        return self.live.incidents(self.store, run)

    def _bump(self, _report) -> None:
        with self._lock:
            self._version += 1

    @property
    def version(self) -> int:
        """Goes up whenever an ingest added records: the key of every cached query."""
        return self._version

    def refresh(self) -> None:
        """Ingest now (after the dashboard itself wrote an annotation or a request), not at the next wake-up."""
        for f in self.followers:
            f.ingest_once()

    def run_dir(self, run: str) -> Path | None:
        df = queries.runs(self.store)
        rows = df.loc[df.run_id == run, "path"]
        return Path(rows.iloc[0]) if len(rows) else None

    def close(self) -> None:
        for f in self.followers:
            f.stop()
        self.background.close()  # before the store: a scan in flight is still reading it
        self.detector.close()
        self.store.close()
