"""The DuckDB store: a derived, rebuildable index over a run's (or a folder of runs') event logs.

Concurrency model (docs/architecture.md): DuckDB lets one process open a database
file read-write and then locks everyone else out, readers included. The first
process to open the store owns it and ingests into it. Any other process (a
second dashboard, a CLI call) that finds it locked, or cannot write it, builds a
private in-memory store from the same logs instead: the logs are the source of
truth, so both see the same data. Within a process every query takes its own
cursor, because one connection shared by threads returns wrong results.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import duckdb

from midflight.logbook.store import schema


class StoreWarning(UserWarning):
    """The store could not be used as asked; a fallback was taken."""


class Store:
    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path | None, note: str | None = None):
        self.con = con
        self.path = path  # None for a private in-memory store
        self.note = note  # why this is a private store, if it is one
        # (run dir, segment) -> the sizes its Parquet was confirmed for; (run dir, None): the run was checked whole
        self.sealed_manifests: dict = {}

    @property
    def private(self) -> bool:
        return self.path is None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one query or one thread; never share one across threads."""
        return self.con.cursor()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def memory() -> Store:
    con = duckdb.connect(":memory:")
    _ensure_schema(con)
    return Store(con, None)


def open_store(path: str | os.PathLike | None, *, fallback: bool = True) -> Store:
    """Open (or create) the store file at `path`; None means in memory.

    With `fallback`, a store that is locked by another process or cannot be
    written gives a private in-memory store and a StoreWarning saying why.
    """
    if path is None:
        return memory()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "not a valid DuckDB database" not in str(exc):
                raise
            # A damaged store (a half-copied file, a disk error): it is derived data, so rebuild it.
            warnings.warn(
                f"the store {path} is damaged ({exc}); rebuilding it from the logs", StoreWarning, stacklevel=2
            )
            path.unlink()
            Path(str(path) + ".wal").unlink(missing_ok=True)
            con = duckdb.connect(str(path))
    except (duckdb.IOException, OSError) as exc:
        if not fallback:
            raise
        reason = "held by another process" if "lock" in str(exc).lower() else f"not writable ({exc})"
        note = f"the store {path} is {reason}; reading the logs into a private in-memory store instead"
        warnings.warn(note, StoreWarning, stacklevel=2)
        store = memory()
        store.note = note
        return store
    if _version(con) not in (None, schema.SCHEMA_VERSION):
        con.close()  # a store from another schema version: it is derived data, so rebuild it
        path.unlink()
        Path(str(path) + ".wal").unlink(missing_ok=True)
        con = duckdb.connect(str(path))
    _ensure_schema(con)
    return Store(con, path)


def _version(con) -> int | None:
    try:
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    except duckdb.CatalogException:
        return None
    return row[0]


def _ensure_schema(con) -> None:
    if _version(con) is None:
        con.execute("BEGIN TRANSACTION")
        con.execute(schema.DDL)
        con.execute("INSERT INTO schema_version VALUES (?)", [schema.SCHEMA_VERSION])
        con.execute("COMMIT")
