"""The store: DuckDB, built from the event logs, and the only place SQL lives.

`database` opens the store (and falls back to a private in-memory copy when another process
owns the file), `schema` defines it, `ingest` and `follow` bring it up to date exactly once,
`queries` reads it (parameterised SQL, DataFrames out), `downsample` is M4 in SQL, and
`lineage` decides which segment's data is the effective history. `sealed` writes each finished segment
as immutable Parquet in the run directory and loads it back in place of its logs.

Rule: imports `logbook.record` (the format it reads) and nothing above it.
"""

from midflight.logbook.store.database import Store, StoreWarning, memory, open_store

__all__ = ["Store", "StoreWarning", "memory", "open_store"]
