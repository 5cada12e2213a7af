"""midflight's data layer: per-rank event logs in, DuckDB store and queries out.

Writing (any training loop):   run = logbook.init(run_dir, name=..., config={...})
                               run.log({"loss": loss}, step=step); run.finish()
Reading (dashboard, CLI):      store, report = logbook.open_run(path)
                               logbook.queries.series(store, run_id, "loss", buckets=2000)

This package imports neither torch nor streamlit.
"""

from .annotations import KINDS as ANNOTATION_KINDS
from .annotations import annotate, delete_annotation, edit_annotation
from .recorder import Run, event, finish, init, log

__all__ = [
    "ANNOTATION_KINDS",
    "Run",
    "Store",
    "annotate",
    "delete_annotation",
    "edit_annotation",
    "event",
    "finish",
    "init",
    "log",
    "open_run",
    "open_store",
]


def __getattr__(name):
    # The store side imports duckdb; load it only when asked, so a training process never does.
    if name in ("Store", "open_store"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'logbook' has no attribute {name!r}")


def open_run(path, store_path=None, *, progress: bool = False):
    """Open the store for a run (or a folder of runs) and bring it up to date. Returns (store, report)."""
    from . import layout
    from .ingest import ingest
    from .store import open_store

    runs = layout.discover_runs(path)
    store = open_store(store_path or layout.default_store_path(path))
    return store, ingest(store, runs, progress=progress)
