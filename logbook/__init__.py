"""midflight's data layer: per-rank event logs in, DuckDB store and analyses out.

Writing (any training loop):   run = logbook.init(run_dir, name=..., config={...})
                               run.log({"loss": loss}, step=step); run.finish()
Reading (dashboard, CLI):      store, report = logbook.open_run(path)
                               logbook.queries.series(store, run_id, "loss", buckets=2000)

The layers, each a subpackage that imports only those before it (tests/test_layers.py):
record (the write side) -> store (DuckDB, every SQL statement) -> analysis (pure) -> report
(store + analysis: answers about a run) -> present (what people see); then importers,
exporters and cli. `import logbook` loads the write side only: neither duckdb, pandas, torch
nor streamlit. The other layers load when first used (`logbook.queries`, `logbook.report`, ...).
"""

import importlib

from midflight.logbook.record.annotations import KINDS as ANNOTATION_KINDS
from midflight.logbook.record.annotations import annotate, delete_annotation, edit_annotation
from midflight.logbook.record.histograms import Histogram
from midflight.logbook.record.recorder import Run, event, finish, init, log
from midflight.logbook.record.runmeta import Text

__all__ = [
    "ANNOTATION_KINDS",
    "Histogram",
    "Run",
    "Store",
    "Text",
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

# Loaded on first use, so a training process that only records never imports duckdb or pandas.
_LAZY = {
    "Store": ("midflight.logbook.store.database", "Store"),
    "open_store": ("midflight.logbook.store.database", "open_store"),
    "queries": ("midflight.logbook.store.queries", None),
    "record": ("midflight.logbook.record", None),
    "store": ("midflight.logbook.store", None),
    "analysis": ("midflight.logbook.analysis", None),
    "report": ("midflight.logbook.report", None),
    "present": ("midflight.logbook.present", None),
    "importers": ("midflight.logbook.importers", None),
    "exporters": ("midflight.logbook.exporters", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'logbook' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def open_run(path, store_path=None, *, progress: bool = False):
    """Open the store for a run (or a folder of runs) and bring it up to date. Returns (store, report)."""
    from midflight.logbook.store.ingest import open_run as open_and_ingest

    return open_and_ingest(path, store_path, progress=progress)
