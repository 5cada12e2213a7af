"""The fuzz suite's scratch space and shared store, and its counts printed at the end of the session (cases
run, rejected lines, one-line errors, per format), so a long run (MIDFLIGHT_FUZZ_EXAMPLES=5000) reports
what it covered."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.fuzz import fuzzing

SHM = Path("/dev/shm")
SHM_MIN_FREE = 1 << 30


def _scratch(fallback: Path):
    """A folder on tmpfs when there is room, else `fallback`. An import fsyncs every file it writes (the
    timeline's 47 headers and 68 annotations); on a disk 300 cases of it cost minutes, on tmpfs seconds."""
    try:
        vfs = os.statvfs(SHM)
        free = vfs.f_bavail * vfs.f_frsize if os.access(SHM, os.W_OK) else 0
    except OSError:
        free = 0
    if free < SHM_MIN_FREE:
        yield fallback
        return
    d = Path(tempfile.mkdtemp(prefix="midflight-fuzz-", dir=SHM))
    try:
        yield d
    finally:
        if not os.environ.get("MIDFLIGHT_FUZZ_KEEP"):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fuzz_dir(tmp_path):
    yield from _scratch(tmp_path)


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory):
    """One DuckDB store that every fuzz test ingests its sample of runs into (ingest is incremental)."""
    from midflight.logbook.store.database import open_store

    for folder in _scratch(tmp_path_factory.mktemp("fuzz-store")):
        store = open_store(folder / "store.duckdb")
        yield store, folder
        store.close()


def pytest_terminal_summary(terminalreporter):
    if fuzzing.COUNTS:
        terminalreporter.write_sep("-", "fuzz counts")
        for line in fuzzing.report_lines():
            terminalreporter.write_line(line)
