"""Cached reads for the pages: thin st.cache_data wrappers over logbook.store.queries and logbook.report.

Every wrapper takes the Source (not hashed) and its `key`: the root folders plus the
data version, so a cached answer lives exactly until an ingest adds records. Queries
whose answer also depends on the clock (is a run still live?) add a 10-second tick.
The slow analyses (incident detection, energy) run on the Source's Background
threads and may be a version behind while a newer answer is being computed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from midflight.app.source import Source
from midflight.logbook import exporters
from midflight.logbook.oncall import alerts as alert_log
from midflight.logbook.oncall import autopilot
from midflight.logbook.report import energy as energy_report
from midflight.logbook.report import goodput as goodput_report
from midflight.logbook.report import progress as progress_report
from midflight.logbook.report import summary
from midflight.logbook.report import timeline as timeline_report
from midflight.logbook.report import wasted as wasted_report
from midflight.logbook.store import queries, ranks

# M4 buckets per trace (each keeps up to 4 points: first, last, min, max). About one bucket per pixel
# column is visually lossless (Jugel et al., M4, VLDB 2014) and no spike is lost at any count; more only
# costs the browser: a grid chart is ~460 px wide, a full-width one ~1,100.
GRID_BUCKETS = 600
WIDE_BUCKETS = 1200
STATUS_TICK_S = 10.0


def key(src: Source) -> tuple:
    return (tuple(str(r) for r in src.roots), src.version)


def tick() -> int:
    return int(time.time() // STATUS_TICK_S)


@st.cache_data(max_entries=512, show_spinner=False)
def series(
    _src: Source, k: tuple, run: str, name: str, x="step", rank=0, which="effective", x_range=None, buckets=GRID_BUCKETS
):
    return queries.series(_src.store, run, name, x=x, rank=rank, which=which, x_range=x_range, buckets=buckets)


@st.cache_data(max_entries=128, show_spinner=False)
def segments(_src: Source, k: tuple, run: str, tick: int) -> pd.DataFrame:
    return queries.segments(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def run_status(_src: Source, k: tuple, run: str, tick: int) -> str:
    return queries.run_status(_src.store, run)


@st.cache_data(max_entries=64, show_spinner=False)
def runs(_src: Source, k: tuple) -> pd.DataFrame:
    """The runs under the root folders: the store may still hold runs another launch followed."""
    df = queries.runs(_src.store)
    inside = [any(Path(p).is_relative_to(r) for r in _src.roots) for p in df["path"]]
    return df[inside].reset_index(drop=True)


@st.cache_data(max_entries=128, show_spinner=False)
def run_notes(_src: Source, k: tuple, run: str) -> dict:
    """Tags, notes, group, summary values, config changes after init and alerts (report.summary.run_notes)."""
    return summary.run_notes(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def ingest_problems(_src: Source, k: tuple, run: str) -> list[dict]:
    return queries.ingest_problems(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def metric_names(_src: Source, k: tuple, run: str) -> list[str]:
    return queries.metric_names(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def roles(_src: Source, k: tuple, run: str) -> dict:
    """role -> logbook.roles.Resolved: which of the run's metrics is its loss, LR, ... (declared, else the
    best alias), resolved once per run and data version from its metric names, never from its series."""
    return queries.metric_roles(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def telemetry_names(_src: Source, k: tuple, run: str) -> list[str]:
    return queries.telemetry_names(_src.store, run)


@st.cache_data(max_entries=256, show_spinner=False)
def telemetry(_src: Source, k: tuple, run: str, name: str) -> pd.DataFrame:
    return queries.telemetry(_src.store, run, name)


@st.cache_data(max_entries=256, show_spinner=False)
def telemetry_series(_src: Source, k: tuple, run: str, name: str) -> pd.DataFrame:
    """A telemetry chart's points: M4 from telemetry_tiles over long runs (queries.telemetry_series)."""
    return queries.telemetry_series(_src.store, run, name)


@st.cache_data(max_entries=128, show_spinner=False)
def events(_src: Source, k: tuple, run: str, kinds: tuple | None = None) -> pd.DataFrame:
    return queries.events(_src.store, run, list(kinds) if kinds else None)


@st.cache_data(max_entries=128, show_spinner=False)
def annotations(_src: Source, k: tuple, run: str) -> pd.DataFrame:
    return queries.annotations(_src.store, run)


@st.cache_data(max_entries=64, show_spinner=False)
def annotation_history(_src: Source, k: tuple, run: str) -> pd.DataFrame:
    return queries.annotation_history(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def interventions(_src: Source, k: tuple, run: str) -> pd.DataFrame:
    return queries.interventions(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def last_value(_src: Source, k: tuple, run: str, name: str) -> float | None:
    return queries.last_value(_src.store, run, name)


@st.cache_data(max_entries=64, show_spinner=False)
def wasted(_src: Source, k: tuple, run: str) -> list[dict]:
    return wasted_report.wasted(_src.store, run)


@st.cache_data(max_entries=64, show_spinner=False)
def goodput(_src: Source, k: tuple, run: str, tick: int) -> dict:
    return goodput_report.ledger(_src.store, run)


# ----------------------------------------------------------------- slow analyses, off the page thread
BIG_RUN_STEPS = 100_000  # from here on, a first scan waits for the first page render (Background's delay)
FIRST_RENDER_S = 1.5


def _delay(src: Source, run: str) -> float:
    segs = segments(src, key(src), run, tick())
    last = segs["end_step"].max() if len(segs) else None
    return FIRST_RENDER_S if last is not None and last == last and last > BIG_RUN_STEPS else 0.0


def incidents(src: Source, run: str, *, wait: float = 2.0) -> tuple[list | None, bool]:
    """(incidents or None while the first scan runs, busy)."""
    fn = lambda: src.incidents(run)  # noqa: E731
    return src.background.get(("incidents", run), src.version, fn, wait=wait, delay=_delay(src, run))


def energy_summary(src: Source, run: str, *, wait: float = 2.0) -> tuple[dict | None, bool]:
    """The run's energy and wasted branches (without CO2: region and PUE are applied by the page)."""
    fn = lambda: summary.energy_summary(src.store, run)  # noqa: E731
    return src.background.get(("energy", run), src.version, fn, wait=wait, delay=_delay(src, run))


@st.cache_data(max_entries=32, show_spinner=False)
def meters(_src: Source, k: tuple, run: str) -> list:
    return energy_report.meters(_src.store, run)


@st.cache_data(max_entries=32, show_spinner=False)
def fleet_curves(_src: Source, k: tuple, run: str) -> pd.DataFrame:
    return energy_report.fleet_curves(_src.store, run)


@st.cache_data(max_entries=64, show_spinner=False)
def gpu_counts(_src: Source, k: tuple, run: str) -> dict[str, int]:
    return queries.gpu_counts(_src.store, run)


@st.cache_data(max_entries=32, show_spinner=False)
def step_energy(_src: Source, k: tuple, run: str) -> pd.DataFrame:
    return energy_report.step_energy(_src.store, run)


@st.cache_data(max_entries=64, show_spinner=False)
def timeline(_src: Source, k: tuple, run: str) -> pd.DataFrame:
    return timeline_report.timeline(_src.store, run)


@st.cache_data(max_entries=128, show_spinner=False)
def progress(_src: Source, k: tuple, run: str) -> dict:
    return progress_report.progress(_src.store, run)


@st.cache_data(max_entries=64, show_spinner=False)
def projection(_src: Source, k: tuple, run: str, energy: dict, co2: dict) -> dict | None:
    return summary.projection(_src.store, run, {"energy": energy, "co2": co2}, queries.effective_steps(_src.store, run))


@st.cache_data(max_entries=64, show_spinner=False)
def effective_steps(_src: Source, k: tuple, run: str) -> int:
    return queries.effective_steps(_src.store, run)


def analyses_ready(src: Source, run: str) -> bool:
    """Have the run's incident scan and energy totals finished at least once? (Starts them if not.)"""
    return incidents(src, run, wait=0)[0] is not None and energy_summary(src, run, wait=0)[0] is not None


@st.cache_data(max_entries=8, show_spinner=False)
def export_file(_src: Source, k: tuple, run: str, fmt: str) -> bytes:
    """One download, generated when its button is clicked and kept until the run's data changes."""
    return exporters.export_bytes(_src.store, run, fmt)[2]


# ----------------------------------------------------------------- fleet views (every rank or device at once)
FEW = 8  # up to this many ranks or devices a chart draws one line each; beyond, the distribution band


@st.cache_data(max_entries=64, show_spinner=False)
def metric_view(
    _src: Source, k: tuple, run: str, name: str, buckets: int, group="rank", cell=None, x_range=None
) -> ranks.FleetView:
    return ranks.metric_view(_src.store, run, name, buckets=buckets, group=group, cell=cell, x_range=x_range)


@st.cache_data(max_entries=64, show_spinner=False)
def telemetry_view(_src: Source, k: tuple, run: str, name: str, buckets: int, group="device", cell=None):
    return ranks.telemetry_view(_src.store, run, name, buckets=buckets, group=group, cell=cell)


def _file_stamp(run_dir, name: str) -> tuple | None:
    """(size, mtime) of one of a run's append-only files, the cache key of what is read from it: such files
    are not in the store, and a watcher, an autopilot or a click may grow them at any time. None: no file."""
    if run_dir is None:
        return None
    try:
        info = (Path(run_dir) / name).stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def alert_history(run_dir) -> list[dict]:
    """The run's alerts (the watcher's outbox, RUN_DIR/alerts.jsonl: logbook.oncall.alerts), newest first."""
    stamp = _file_stamp(run_dir, alert_log.OUTBOX)
    return [] if stamp is None else _alert_history(str(run_dir), stamp)


@st.cache_data(max_entries=64, show_spinner=False)
def _alert_history(run_dir: str, stamp: tuple) -> list[dict]:
    return alert_log.history(run_dir)


def autopilot_proposals(run_dir) -> list[dict]:
    """The autopilot's proposals for the run (its ledger, RUN_DIR/autopilot.jsonl), oldest first."""
    stamp = _file_stamp(run_dir, autopilot.LEDGER)
    return [] if stamp is None else _autopilot_proposals(str(run_dir), stamp)


@st.cache_data(max_entries=64, show_spinner=False)
def _autopilot_proposals(run_dir: str, stamp: tuple) -> list[dict]:
    try:
        return autopilot.Ledger(run_dir).entries()
    except FileNotFoundError:
        return []
