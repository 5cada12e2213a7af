"""Fixtures of the AppTest suites: fresh Streamlit caches, closed Sources, and a copy of the sample runs."""

import shutil
import sys
from pathlib import Path

import pytest
import streamlit as st

from midflight.app import context as app_context
from midflight.app.source import ENV_RUNS, Source

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sources(monkeypatch):
    """Fresh caches per test, no pytest argv leaking into roots_from, and every Source closed afterwards."""
    opened: list[Source] = []

    class Closing(Source):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            opened.append(self)

    monkeypatch.setattr(app_context, "Source", Closing)
    monkeypatch.setattr(sys, "argv", ["streamlit"])
    st.cache_data.clear()
    st.cache_resource.clear()
    yield opened
    st.cache_resource.clear()
    st.cache_data.clear()
    for s in opened:
        s.close()


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A copy of sample_runs/ without its store: nothing is ever written into the shipped samples."""
    root = tmp_path / "runs"
    shutil.copytree(ROOT / "sample_runs", root, ignore=shutil.ignore_patterns(".midflight", "README.md"))
    monkeypatch.setenv(ENV_RUNS, str(root))
    return root
