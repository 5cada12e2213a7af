"""The page's context: the logbook source, the selected run, its status and the x axis.

Every page starts with `context()`. The source is one per set of root folders (cache_resource), so
every session reads the same store; the data key in `Ctx.k` versions every cached answer.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from midflight.app import data
from midflight.app.source import Source, roots_from, take_preloaded

AXES = {"step": "step", "tokens": "tokens", "time": "wall time"}


@st.cache_resource(show_spinner="opening the logbook…")
def _source(roots: tuple[str, ...]) -> Source:
    return take_preloaded(roots) or Source([Path(r) for r in roots])


def source() -> Source:
    try:
        roots = roots_from(sys.argv[1:], dict(os.environ))
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    return _source(tuple(str(r) for r in roots))


@dataclass
class Ctx:
    src: Source
    k: tuple  # the data key: cached answers live until it changes
    run: str | None
    axis: str
    status: str | None
    run_dir: Path | None

    @property
    def live(self) -> bool:
        return self.status == "running"


def context() -> Ctx:
    src = source()
    k = data.key(src)
    run = st.session_state.get("run")
    status = data.run_status(src, k, run, data.tick()) if run else None
    return Ctx(src, k, run, st.session_state.get("axis", "step"), status, src.run_dir(run) if run else None)


def require_run(ctx: Ctx) -> None:
    if not ctx.run:
        st.info(
            "No run yet: point the dashboard at a run folder (`midflight dashboard PATH`), or wait for a run to log."
        )
        st.stop()


def plain(text) -> str:
    """Free text (a run id) safe inside markdown: its markdown, LaTeX and shortcode characters escaped."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~$:])", r"\\\1", str(text))


def until_ready(ready, message: str) -> None:
    """Show `message`, then rerun the page as soon as `ready()` holds (checked every second); stops the page."""
    st.info(message)

    @st.fragment(run_every=1.0)
    def poll():
        if ready():
            st.rerun(scope="app")

    poll()
    st.stop()


def author() -> str:
    try:
        return f"{getpass.getuser()} (dashboard)"
    except Exception:
        return "dashboard"


def context_for(run: str, axis: str) -> Ctx:
    src = source()
    return Ctx(src, data.key(src), run, axis, None, None)
