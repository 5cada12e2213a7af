"""The fuzz suite's shared store, and its counts printed at the end of the session (cases run, rejected lines,
one-line errors, per format), so a long run (MIDFLIGHT_FUZZ_EXAMPLES=5000) reports what it covered."""

from __future__ import annotations

import pytest

from tests.fuzz import fuzzing


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory):
    """One DuckDB store that every fuzz test ingests its sample of runs into (ingest is incremental)."""
    from logbook.store.database import open_store

    folder = tmp_path_factory.mktemp("fuzz-store")
    store = open_store(folder / "store.duckdb")
    yield store, folder
    store.close()


def pytest_terminal_summary(terminalreporter):
    if fuzzing.COUNTS:
        terminalreporter.write_sep("-", "fuzz counts")
        for line in fuzzing.report_lines():
            terminalreporter.write_line(line)
