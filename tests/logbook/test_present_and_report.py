"""What moved out of the pages into logbook: markers, the restart tree's lanes, the timeline, progress and ETA,
open incidents, the CO2 basis, and the missing-value helpers every layer shares."""

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from midflight import logbook
from midflight.logbook.analysis import energy, progress
from midflight.logbook.analysis import incidents as triage
from midflight.logbook.analysis.divergence import Incident
from midflight.logbook.present import figures, markers, tree
from midflight.logbook.report import progress as progress_report
from midflight.logbook.report import timeline
from midflight.logbook.store import queries
from midflight.logbook.store.database import memory
from midflight.logbook.store.ingest import ingest
from midflight.logbook.values import finite, first, missing, number, text, whole


def _incident(start, end, superseded=False, kind="loss_spike"):
    return Incident(kind, start, end, 9.0, start, "high", "transient", superseded=superseded)


@pytest.fixture
def run(tmp_path):
    """A run of two segments (a rollback from 40 to 30), an annotation, an applied and a pending intervention."""
    run_dir = tmp_path / "r"
    with logbook.init(run_dir, name="r", config={"steps": 200}, segment_id="seg-a") as r:
        for s in range(1, 51):
            r.log({"loss": 3.0 - s / 100, "step_time_s": 0.5 if s < 45 else 2.0, "tokens": 100.0 * s}, step=s)
    with logbook.init(run_dir, name="r", config={"steps": 200}, segment_id="seg-b", resume_step=30) as r:
        r.event("restart", step=30, reason="rollback")
        for s in range(31, 81):
            r.log({"loss": 2.5 - s / 200, "step_time_s": 1.0 if s % 2 else 3.0, "tokens": 100.0 * s}, step=s)
    logbook.annotate(run_dir, step=35, step_end=38, kind="lr", text="<b>lowered</b> the LR", author="ana")
    from midflight.logbook.record import interventions

    done = interventions.request(run_dir, "clip", {"max_norm": 0.3}, note="spiky", author="bo")
    interventions.resolve(run_dir, done, applied=True, step=60, detail="optim.clip = 0.3")
    interventions.request(run_dir, "stop", {}, note="later", author="bo")
    store = memory()
    ingest(store, [run_dir])
    return store


def test_run_markers_mark_restarts_incidents_annotations_and_applied_interventions(run):
    incs = [_incident(50, 52), _incident(45, 49, superseded=True)]
    ms = markers.run_markers(
        queries.segments(run, "r"), incs, queries.annotations(run, "r"), queries.interventions(run, "r")
    )
    got = [(m.kind, m.step) for m in ms]
    assert got == [("restart", 30), ("annotation", 35), ("incident", 50), ("intervention", 60)]
    by_kind = {m.kind: m.label for m in ms}
    assert by_kind["annotation"] == "[lr] <b>lowered</b> the LR (ana)"  # plain text: each renderer escapes it
    assert by_kind["intervention"] == "clip (max_norm=0.3): spiky"
    assert by_kind["restart"].startswith("seg-b: ")
    assert [m.step for m in markers.within(ms, 31, 55)] == [35, 50]
    moved = ms[0].at(1234.5)
    assert (moved.x, moved.step, ms[0].x) == (1234.5, 30, None)
    # no detection yet (None): every other marker is still there
    assert [
        m.kind
        for m in markers.run_markers(
            queries.segments(run, "r"), None, queries.annotations(run, "r"), queries.interventions(run, "r")
        )
    ] == ["restart", "annotation", "intervention"]


def test_lanes_of_the_restart_tree(run):
    lanes = tree.lanes(queries.segments(run, "r"))
    assert [(ln["id"], ln["start"], ln["end"], ln["parent_lane"], ln["effective"]) for ln in lanes] == [
        ("seg-a", 1, 50, None, True),
        ("seg-b", 30, 80, 0, True),
    ]
    assert tree.lanes(queries.segments(run, "nope")) == []


def test_timeline_merges_every_kind_of_entry_and_searches_as_text(run):
    tl = timeline.timeline(run, "r")
    assert list(tl.columns) == timeline.COLUMNS
    assert tl["time"].is_monotonic_increasing
    assert set(tl["type"]) == {"event", "intervention", "annotation", "segment"}
    assert (tl["type"] == "segment").sum() == 2 and (tl["type"] == "intervention").sum() == 2
    ann = tl[tl["type"] == "annotation"].iloc[0]
    assert (ann["step"], ann["what"], ann["who"]) == (35, "lr", "ana")
    assert set(timeline.search(tl, types=["intervention"])["what"]) == {"clip (applied)", "stop (pending)"}
    assert list(timeline.search(tl, needle="LOWERED")["type"]) == ["annotation"]  # case-insensitive
    assert timeline.search(tl, needle="(applied").shape[0] == 1  # a plain string, not a regex
    assert timeline.search(tl, types=["event"], kinds=["restart"]).shape[0] == 1


def test_progress_plans_and_eta(run):
    p = progress_report.progress(run, "r")
    assert (p["step"], p["planned"]) == (80, 200)
    # the effective steps 1..80: 1..30 of seg-a at 0.5 s, then seg-b alternating 1 s and 3 s: the median is 1 s
    assert p["step_time_s"] == pytest.approx(1.0)
    assert p["eta_s"] == pytest.approx((200 - 80) * p["step_time_s"])
    assert progress.planned_steps('{"steps": 5}') == 5
    assert progress.planned_steps({"steps": "5"}) is None and progress.planned_steps("not json") is None
    assert progress.planned_steps({"steps": True}) is None and progress.planned_steps(None) is None
    assert progress.eta_s(10, 4, [1.0, np.nan, 3.0, -1.0]) == pytest.approx(12.0)  # NaN and negatives ignored
    assert progress.eta_s(10, 12, [1.0]) == 0.0  # past the plan
    assert progress.eta_s(None, 4, [1.0]) is None and progress.eta_s(10, 4, []) is None


def test_open_incidents_are_those_no_annotation_covers():
    anns = pd.DataFrame({"step": [10, 100, 40], "step_end": [20, np.nan, 45]})
    incs = [
        _incident(5, 9),
        _incident(15, 16),
        _incident(21, 39),
        _incident(44, 60),
        _incident(100, 100),
        _incident(101, 120),
        _incident(15, 16, superseded=True),
    ]
    still = triage.open_incidents(incs, anns)
    assert [(i.start_step, i.end_step) for i in still] == [(5, 9), (21, 39), (101, 120)]
    assert triage.open_incidents(incs[:2], anns.iloc[:0]) == incs[:2]
    assert triage.open_incidents(None, anns) == []
    # a long annotation that started early still covers a later incident (the running maximum of ends)
    wide = pd.DataFrame({"step": [0, 5], "step_end": [1000, 6]})
    assert triage.open_incidents([_incident(500, 510)], wide) == []
    assert triage.annotation_kind("ecc_errors") == "hardware"
    assert triage.annotation_kind("loss_scale_collapse") == "optimizer"
    assert triage.annotation_kind("loss_spike") == "note"


def test_co2_basis_says_where_every_number_came_from():
    world = energy.co2_basis(energy.DEFAULT_REGION)
    assert world["intensity_g_per_kwh"] == pytest.approx(481.0) and "Ember" in world["source"]
    assert world["pue"] == 1.0 and "not given" in world["pue_source"]
    given = energy.co2_basis("France", 100.0, 1.2)  # an intensity given beats the region
    assert (given["intensity_g_per_kwh"], given["source"], given["pue"]) == (100.0, "given by the user", 1.2)
    assert energy.co2eq_of(3.6e6, given) == pytest.approx(0.12)  # 1 kWh x 1.2 x 100 g
    none = energy.co2_basis()
    assert none["intensity_g_per_kwh"] is None and energy.co2eq_of(3.6e6, none) is None
    assert energy.co2eq_of(None, world) is None
    with pytest.raises(KeyError):
        energy.co2_basis("Atlantis")


def test_one_meaning_of_missing():
    assert all(missing(v) for v in (None, math.nan, np.nan, pd.NA, pd.NaT, np.float32("nan")))
    assert not any(missing(v) for v in (0, 0.0, "", "x", math.inf, [1], False))
    assert number(3.0) == 3 and isinstance(number(3.0), int) and number(2.5) == 2.5
    assert number(np.int64(7)) == 7 and number(None) is None and number(math.nan) is None and number("x") is None
    assert number(pd.NA) is None and number(math.inf) == math.inf and number(True) == 1
    assert finite(math.inf) is None and finite("2.5") == 2.5 and whole(7.9) == 7 and whole(None) is None
    assert text("a") == "a" and text(math.nan) is None
    assert first(None, math.nan, pd.NA, 0, 5) == 0 and first(None) is None


def test_the_summary_json_is_built_from_the_same_pieces(run):
    from midflight.logbook.report.summary import summarize

    s = summarize(run, "r")
    json.dumps(s, allow_nan=False, default=str)
    assert s["co2"]["source"].startswith("World") and s["energy"]["basis"] == "none"  # no telemetry, no TDP
    assert [i["kind"] for i in s["interventions"]] == ["clip", "stop"]
    assert time.time() - s["segments"][0]["start_time"] < 600


def test_an_autopilot_action_is_a_marker_type_of_its_own(run):
    """The same intervention, authored by the autopilot under a policy, is drawn as its own marker type,
    labelled with the policy, so a reader tells a person's move from the autopilot's on every chart."""
    ivs = queries.interventions(run, "r").assign(author="autopilot:rollback-spike")
    ms = markers.run_markers(queries.segments(run, "r"), None, queries.annotations(run, "r"), ivs)
    (auto,) = [m for m in ms if m.step == 60]
    assert auto.kind == "autopilot" and auto.label == "[autopilot:rollback-spike] clip (max_norm=0.3): spiky"
    assert "autopilot" in figures.MARKER_STYLE
