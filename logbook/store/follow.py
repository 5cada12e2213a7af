"""Follow mode: keep the store current while a run is writing.

watchdog wakes the ingester as soon as a log changes; a periodic rescan backs
it up, because watchdog drops events silently when its queue overflows and sees
nothing on network filesystems (use poll=True there: the polling observer).
Ingest is incremental and exactly-once, so a spurious wake-up costs only a stat.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

from watchdog.events import EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from midflight.logbook.record import layout
from midflight.logbook.store.database import Store
from midflight.logbook.store.ingest import IngestReport, ingest

NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "beegfs",
    "fuse.sshfs",
    "9p",
    "ceph",
    "fuse.gcsfuse",
    "fuse.s3fs",
    "fuse.juicefs",
    "wekafs",
}


def filesystem_type(path, mounts: str = "/proc/mounts") -> str | None:
    """The filesystem type of the mount holding `path` (Linux), or None if it cannot be told."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    target, best, fstype = str(Path(path).resolve()), -1, None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, fstype = len(point), parts[2]
    return fstype


class _Wake(FileSystemEventHandler):
    def __init__(self, flag: threading.Event):
        self.flag = flag

    def on_any_event(self, event) -> None:
        if event.event_type in (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE):
            return  # a read is not a change: ingest itself reads segment.json, and waking on that would loop
        path = getattr(event, "dest_path", "") or event.src_path
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if path.endswith((".jsonl", layout.SEGMENT_HEADER)) or event.is_directory:
            self.flag.set()


class Follower:
    """Ingest `path` (a run or a folder of runs) into `store` now and whenever it changes.

    poll: True for the polling observer, False for inotify, None to choose by
    filesystem (polling on NFS, Lustre, CIFS and the like, where inotify never
    hears about writes made on other machines).
    on_ingest(report) is called after every ingest that added records.
    allow_empty: a folder that holds no run yet is not an error (the dashboard watches
    a folder a demo run is about to write into); the rescan picks the run up.
    """

    def __init__(
        self,
        store: Store,
        path,
        *,
        poll: bool | None = None,
        rescan_every: float = 2.0,
        debounce: float = 0.02,
        on_ingest=None,
        allow_empty: bool = False,
    ):
        self.store, self.path = store, Path(path)
        if poll is None:
            poll = filesystem_type(self.path) in NETWORK_FS
        self.poll, self.rescan_every, self.debounce = poll, rescan_every, debounce
        self.on_ingest, self.allow_empty = on_ingest, allow_empty
        self._wake, self._stop = threading.Event(), threading.Event()
        self._observer = None
        self._thread: threading.Thread | None = None
        self._ingest_lock = threading.Lock()  # the loop and a caller's ingest_once() must not race
        self.last_report: IngestReport | None = None
        self.ingests = 0

    def start(self) -> Follower:
        self.ingest_once()
        self._observer = PollingObserver(timeout=0.5) if self.poll else Observer()
        self._observer.schedule(_Wake(self._wake), str(self.path), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._thread = threading.Thread(target=self._loop, name="midflight-follow", daemon=True)
        self._thread.start()
        return self

    def ingest_once(self) -> IngestReport:
        try:
            runs = layout.discover_runs(self.path)
        except ValueError:
            if not self.allow_empty:
                raise
            runs = []  # no run here yet
        with self._ingest_lock:
            report = ingest(self.store, runs, seal=True)  # a run that finishes is sealed once
            self.last_report = report
            self.ingests += 1
        if report.records and self.on_ingest is not None:
            self.on_ingest(report)
        return report

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.rescan_every)
            if self._stop.is_set():
                return
            time.sleep(self.debounce)  # let a burst of writes land, then ingest once
            self._wake.clear()
            try:
                self.ingest_once()
            except Exception as exc:  # keep following; a bad moment is not fatal
                warnings.warn(f"midflight follow: ingest failed, will retry: {exc!r}", stacklevel=1)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
