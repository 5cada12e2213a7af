"""The dashboard driven headless with Streamlit's AppTest, on copies of the sample runs."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from midflight import logbook
from midflight.app import data, live_chart, sample_runs
from midflight.app.source import ENV_RUNS, roots_from
from midflight.logbook.analysis import energy
from midflight.logbook.record import annotations as ann_log

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app" / "streamlit_app.py")  # AppTest resolves relative paths against the calling file
SAMPLES = ROOT / "sample_runs"
FAULTS, ROLLBACK, OPT = "opt-tiny-faults", "tiny-rollback", "opt175b-timeline"
PAGES = {
    "runs": "Runs",
    "live": "Live · {run}",
    "ranks": "Ranks & devices · {run}",
    "lineage": "Lineage & logbook · {run}",
    "incidents": "Incidents · {run}",
    "energy": "Energy & CO2 · {run}",
    "compare": "Compare runs",
}
XSS = "<script>alert(1)</script><b>x</b>"


pytestmark = pytest.mark.usefixtures("sources")


@pytest.fixture
def live_run(tmp_path, monkeypatch):
    """A run still being written: no close record, last write just now."""
    root = tmp_path / "live"
    run = logbook.init(root / "live-run", name="live-run", config={"steps": 50, "lr": 1e-3})
    for i in range(20):
        run.log({"loss": 5.0 - 0.1 * i, "grad_norm": 1.0, "lr": 1e-3, "tokens": 1024 * (i + 1)}, step=i)
    run.flush()
    monkeypatch.setenv(ENV_RUNS, str(root))
    yield root / "live-run"
    run.finish()


def start(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def plotly_specs(at: AppTest) -> list[dict]:
    """Every figure on the page: st.plotly_chart's and the in-place charts' (app.live_chart), in page order."""
    specs = []
    for e in at.main:
        if e.type == "plotly_chart":
            specs.append(json.loads(e.proto.spec))
        elif e.type == "bidi_component" and e.proto.component_name == live_chart.NAME:
            specs.append(json.loads(json.loads(e.proto.json)["spec"]))
    return specs


def frame(at: AppTest, *columns: str):
    """The first dataframe on the page that has all these columns."""
    for df in at.dataframe:
        if set(columns) <= set(df.value.columns):
            return df.value
    raise AssertionError(f"no dataframe with columns {columns}")


def select(at: AppTest, run: str, step: int, sid: int = 1) -> None:
    at.session_state["selection"] = {
        "run": run,
        "axis": "step",
        "chart": "x",
        "step": step,
        "step_end": None,
        "x0": None,
        "x1": None,
    }
    at.session_state["selection_id"] = sid


def ops(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ----------------------------------------------------------------- every page
@pytest.mark.parametrize("run", [FAULTS, ROLLBACK, OPT])  # OPT: an imported lineage with no metrics at all
def test_every_page_renders_with_its_title(runs, run):
    at = start(run=run)
    for page, title in PAGES.items():
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert titles(at) == [title.format(run=run)]
        assert at.session_state["run"] == run


def test_every_page_renders_on_a_live_run(live_run):
    at = start()
    assert at.session_state["run"] == "live-run"
    for page, title in PAGES.items():
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert titles(at)[0] == title.format(run="live-run")


# ----------------------------------------------------------------- runs
def test_runs_table_and_open_button(runs):
    at = start()
    table = frame(at, "run", "status", "incidents")
    deadline = time.time() + 30
    while table["incidents"].isna().any() and time.time() < deadline:  # the scan runs in a worker process
        time.sleep(0.5)
        table = frame(at.run(), "run", "status", "incidents")
    assert sorted(table["run"]) == [FAULTS, OPT, ROLLBACK]
    assert set(table["status"]) == {"finished"}
    faults = table.set_index("run").loc[FAULTS]
    assert faults["incidents"] > 0 and faults["segments"] == 3 and faults["last step"] == 700
    opt = table.set_index("run").loc[OPT]
    assert opt["segments"] == 49 and opt["last step"] == 143052
    at.button(key=f"runs:open:{ROLLBACK}").click().run()
    assert not at.exception
    assert at.session_state["run"] == ROLLBACK
    assert titles(at) == [f"Live · {ROLLBACK}"]


def test_open_button_survives_the_analyses_settling_during_the_click(runs, monkeypatch):
    """The flaky CI failure, made deterministic: the analyses finish during the page run that carries the
    click, and the table region's rerun must not swallow it."""
    at = start()
    totals = frame(at, "incidents", "energy basis")[["incidents", "energy basis"]]  # energy basis: None until summed
    deadline = time.time() + 30
    while totals.isna().any(axis=None) and time.time() < deadline:  # every scan and energy total is in
        time.sleep(0.5)
        totals = frame(at.run(), "incidents", "energy basis")[["incidents", "energy basis"]]
    ready = data.analyses_ready
    checks = []

    def settles_now(src, run):  # the page's first check still sees a scan running, the table region's do not
        checks.append(run)
        return len(checks) > 1 and ready(src, run)

    monkeypatch.setattr(data, "analyses_ready", settles_now)
    at.button(key=f"runs:open:{ROLLBACK}").click().run()
    assert not at.exception
    assert at.session_state["run"] == ROLLBACK
    assert titles(at) == [f"Live · {ROLLBACK}"]


# ----------------------------------------------------------------- live
def test_an_alerts_link_opens_live_on_its_step_once(runs):
    """The watcher's alerts link to BASE_URL/live?run=NAME&step=N: Live opens zoomed around N, once (a reset
    by the user is kept), and a hostile step is a warning, never an exception."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = FAULTS
    at.query_params["step"] = "300"
    at.run()
    at.switch_page("app_pages/live.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state[f"zoom:{FAULTS}:step"] == (100.0, 500.0)
    at.button(key="live:unzoom").click().run()  # the user resets the zoom: the same link does not zoom again
    assert f"zoom:{FAULTS}:step" not in at.session_state
    at.query_params["step"] = "1e30"
    at.run()
    assert not at.exception and any("?step= is not a step" in w.value for w in at.warning)


def test_live_header_on_a_finished_run(runs):
    at = start("live", run=FAULTS)
    m = metrics(at)
    deadline = time.time() + 30
    while m["open incidents"] == "…" and time.time() < deadline:  # the scan runs in a worker process
        time.sleep(0.5)
        m = metrics(at.run())
    assert m["step (of 700)"] == "700"
    assert m["ETA"] == "—"  # a finished run has nothing left to wait for
    assert m["open incidents"].isdigit()
    captions = [c.value for c in at.caption]
    assert "status: finished" in captions  # no "refreshing every" timer on a finished run
    assert "Interventions go to live runs; this run is finished." in captions
    assert "live:iv:action" not in [w.key for w in at.selectbox]  # no intervention form
    assert len(plotly_specs(at)) >= 4


def test_annotate_a_selected_step(runs):
    run_dir = runs / FAULTS
    before = ann_log.current(run_dir)
    at = start("live", run=FAULTS)
    select(at, FAULTS, 123)
    at.run()
    assert "**Selected step 123**" in [m.value for m in at.markdown]
    assert "paused while you annotate" in " ".join(c.value for c in at.caption)
    assert at.number_input(key="live:ann_step:1").value == 123
    assert ann_log.current(run_dir) == before  # the form alone writes nothing
    at.text_area(key="live:ann_text:1").input("bad batch near here")
    at.selectbox(key="live:ann_kind:1").select("data")
    at.button[[b.label for b in at.button].index("Save annotation")].click().run()
    assert not at.exception
    new = [a for i, a in ann_log.current(run_dir).items() if i not in before]
    assert len(new) == 1
    assert (new[0]["step"], new[0]["kind"], new[0]["text"]) == (123, "data", "bad batch near here")
    assert new[0]["author"].endswith("(dashboard)")
    assert "selection" not in at.session_state  # the form closed
    at.switch_page("app_pages/lineage.py").run()
    labels = at.selectbox(key="lineage:edit_pick").options
    assert len(labels) == len(before) + 1
    assert "step 123 [data] bad batch near here" in labels


def test_user_text_is_stored_verbatim_and_never_rendered_as_html(runs):
    run_dir = runs / FAULTS
    at = start("live", run=FAULTS)
    select(at, FAULTS, 200)
    at.run()
    at.text_area(key="live:ann_text:1").input(XSS)
    at.button[[b.label for b in at.button].index("Save annotation")].click().run()
    assert XSS in [a["text"] for a in ann_log.current(run_dir).values()]
    for page in ("live", "lineage", "incidents"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception
        assert not [m.value for m in at.markdown if "<script>" in m.value or "<b>x" in m.value], page
        for spec in plotly_specs(at):
            assert "<script>" not in json.dumps(spec, ensure_ascii=False), page
    # the live chart markers carry it escaped, the timeline shows it as plain data
    at.switch_page("app_pages/live.py").run()
    hover = json.dumps([s["data"] for s in plotly_specs(at)], ensure_ascii=False)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hover
    at.switch_page("app_pages/lineage.py").run()
    assert XSS in list(frame(at, "type", "detail")["detail"])


# ----------------------------------------------------------------- lineage
def test_lineage_segments_and_timeline_filters(runs):
    at = start("lineage", run=FAULTS)
    segs = frame(at, "segment", "how it ended")
    assert list(segs["how it ended"]) == ["crashed", "rewound", "completed"]
    timeline = frame(at, "type", "what", "detail")
    assert {"event", "intervention", "annotation", "segment"} <= set(timeline["type"])
    at.multiselect(key="lineage:types").set_value(["annotation"]).run()
    only = frame(at, "type", "what", "detail")
    assert set(only["type"]) == {"annotation"} and len(only) == 4
    at.multiselect(key="lineage:types").set_value(sorted(set(timeline["type"]))).run()
    at.text_input(key="lineage:search").input("corrupted batch").run()
    found = frame(at, "type", "what", "detail")
    assert 0 < len(found) < len(timeline)
    assert all("corrupted batch" in f"{w} {d} {u}".lower() for w, d, u in zip(found.what, found.detail, found.who))


def test_lineage_page_draws_the_opt175b_restart_tree(runs):
    at = start("lineage", run=OPT)
    tree = next(s for s in plotly_specs(at) if "restart tree" in s["layout"]["title"]["text"].lower())
    lanes = tree["layout"]["yaxis"]["ticktext"]
    assert len(lanes) == 49 and lanes[0] == "11.0" and lanes[-1] == "12.47"
    ends = [max(t["x"]) for t in tree["data"] if t.get("name") and t.get("x") and None not in t["x"]]
    assert max(ends) == 143052  # the final update
    thick = {t["name"] for t in tree["data"] if t.get("line", {}).get("width") == 9}
    assert "12.08" in thick and "11.10" not in thick  # the effective path is the 12.x lineage
    table = frame(at, "segment", "why it started")
    assert "resumed from an earlier checkpoint" in table.set_index("segment").loc["12.08", "why it started"]


def test_lineage_edit_and_delete_an_annotation(runs):
    run_dir = runs / FAULTS
    at = start("lineage", run=FAULTS)
    pick = at.selectbox(key="lineage:edit_pick")
    aid = pick.value
    assert aid in ann_log.current(run_dir)
    at.text_area(key=f"lineage:edit_text:{aid}").input("edited in the dashboard")
    at.button[[b.label for b in at.button].index("Save edit")].click().run()
    assert not at.exception
    assert ann_log.current(run_dir)[aid]["text"] == "edited in the dashboard"
    assert ops(run_dir, "annotations.jsonl")[-1]["op"] == "edit"

    n = len(ops(run_dir, "annotations.jsonl"))
    at.button[[b.label for b in at.button].index("Delete")].click().run()  # not confirmed: nothing written
    assert "Tick 'yes, delete it'" in " ".join(w.value for w in at.warning)
    assert len(ops(run_dir, "annotations.jsonl")) == n and aid in ann_log.current(run_dir)

    at.checkbox(key=f"lineage:edit_confirm:{aid}").check()
    at.button[[b.label for b in at.button].index("Delete")].click().run()
    assert not at.exception
    assert aid not in ann_log.current(run_dir)
    last = ops(run_dir, "annotations.jsonl")[-1]
    assert (last["op"], last["id"]) == ("delete", aid) and last["author"].endswith("(dashboard)")
    assert len(at.selectbox(key="lineage:edit_pick").options) == 3


# ----------------------------------------------------------------- incidents
def test_incidents_listed_and_annotate_opens_prefilled_form(runs):
    at = start("incidents", run=FAULTS)
    table = frame(at, "kind", "steps", "classification")
    assert len(table) >= 1
    first = at.expander[0].label
    kind, steps = table.iloc[0]["kind"], table.iloc[0]["steps"]
    assert first.startswith(f"{kind} · steps {steps}")
    at.button(key="incidents:ann:0").click().run()
    assert not at.exception
    start_step = int(steps.split("–")[0])
    assert at.number_input(key="incidents:0:ann_step:0").value == start_step
    assert at.text_area(key="incidents:0:ann_text:0").value.startswith(f"{kind} (")
    assert at.button(key="incidents:iv:0").disabled  # finished run: no intervening


# ----------------------------------------------------------------- energy
def _co2_t(at: AppTest) -> float:
    return float(frame(at, "what", "tCO2eq")["tCO2eq"].iloc[0])


def test_energy_co2_follows_region_and_pue(runs):
    at = start("energy", run=FAULTS)
    base = _co2_t(at)
    assert base > 0 and metrics(at)["CO2eq"] != "—"
    at.number_input(key="energy:pue").set_value(2.0).run()
    assert _co2_t(at) == pytest.approx(2 * base)
    assert "PUE 2" in " ".join(c.value for c in at.caption)
    at.number_input(key="energy:pue").set_value(1.0).run()
    grid = {r["name"]: r["g_per_kwh"] for r in energy.grid_table()}
    region = at.selectbox(key="energy:region")
    here, other = region.value, next(n for n in region.options if grid[n] != grid[region.value])
    region.select(other).run()
    assert _co2_t(at) == pytest.approx(base * grid[other] / grid[here])
    assert metrics(at)["CO2eq"] != "—"


def test_energy_page_says_when_wall_times_are_estimated_from_iteration_times(tmp_path, monkeypatch):
    """A Megatron log without timestamps: its energy rests on wall times made up from iteration times."""
    from midflight.logbook.importers import import_logs

    root = tmp_path / "imported"
    import_logs("megatron", [ROOT / "tests" / "fixtures" / "bloom_tr11_176B_megatron_deepspeed.log"], root / "bloom")
    monkeypatch.setenv(ENV_RUNS, str(root))
    at = start("energy", run="bloom")
    deadline = time.time() + 60
    while not at.warning and time.time() < deadline:  # the energy summary may still be computing
        time.sleep(0.5)
        at.run()
    assert any("estimated from iteration times" in w.value for w in at.warning), [w.value for w in at.warning]
    assert any(i.value.startswith("No energy data") for i in at.info)  # no telemetry, no TDP: no silent 400 W


# ----------------------------------------------------------------- compare
def test_compare_overlays_both_runs(runs):
    at = start("compare", run=FAULTS)
    at.multiselect(key="compare:runs").set_value([FAULTS, ROLLBACK]).run()
    assert not at.exception
    (spec,) = plotly_specs(at)
    assert {FAULTS, ROLLBACK} <= {t.get("name") for t in spec["data"]}
    at.multiselect(key="compare:runs").set_value([ROLLBACK]).run()
    (spec,) = plotly_specs(at)
    names = {t.get("name") for t in spec["data"]}
    assert ROLLBACK in names and FAULTS not in names


# ----------------------------------------------------------------- interventions
def test_intervention_review_then_confirm(live_run):
    at = start("live")
    assert at.caption[0].value.startswith("status: running")
    at.selectbox(key="live:iv:action").select("clip").run()
    at.number_input(key="live:iv:clip").set_value(0.7)
    at.text_input(key="live:iv:note").input("spiky grads")
    at.button(key="live:iv:review_btn").click().run()
    assert not at.exception
    assert at.session_state["live:iv:review"] == {"action": "clip", "params": {"max_norm": 0.7}, "note": "spiky grads"}
    assert "Set the gradient-clip threshold" in at.warning[0].value
    assert ops(live_run, "interventions.jsonl") == []  # reviewing sends nothing
    at.button(key="live:iv:confirm").click().run()
    assert not at.exception
    (req,) = ops(live_run, "interventions.jsonl")
    assert (req["op"], req["action"], req["note"]) == ("request", "clip", "spiky grads")
    assert req["params"] == {"max_norm": 0.7}
    assert "(dashboard)" in req["author"]
    assert "live:iv:review" not in at.session_state
    assert "pending" in list(frame(at, "action", "state")["state"])


def test_intervention_cancel_writes_nothing(live_run):
    at = start("live")
    at.selectbox(key="live:iv:action").select("skip_batches").run()
    at.button(key="live:iv:review_btn").click().run()
    assert at.session_state["live:iv:review"]["params"] == {"n": 10}
    at.button(key="live:iv:cancel").click().run()
    assert not at.exception
    assert "live:iv:review" not in at.session_state
    assert ops(live_run, "interventions.jsonl") == []
    assert "live:iv:action" in [w.key for w in at.selectbox]  # back to the form


# ----------------------------------------------------------------- roots_from
def test_roots_from(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert roots_from([], {}) == [sample_runs()] == [ROOT / "sample_runs"]  # a checkout: in place
    assert roots_from(["--runs", str(a), f"--runs={b}"], {}) == [a.resolve(), b.resolve()]
    env = {ENV_RUNS: f"{a}{os.pathsep}{b}"}
    assert roots_from([], env) == [a.resolve(), b.resolve()]
    assert roots_from(["--runs", str(b)], env) == [b.resolve()]  # --runs wins over the environment
    with pytest.raises(ValueError, match="does not exist or is not a folder") as err:
        roots_from(["--runs", str(tmp_path / "missing")], {})
    assert "missing" in str(err.value)


def test_bad_runs_path_shows_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_RUNS, str(tmp_path / "nope"))
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


def test_only_runs_under_the_current_roots_are_listed(tmp_path, monkeypatch, sources):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(SAMPLES / FAULTS, a / FAULTS)
    shutil.copytree(SAMPLES / ROLLBACK, b / ROLLBACK)
    monkeypatch.setenv(ENV_RUNS, f"{a}{os.pathsep}{b}")
    assert start().selectbox(key="run").options == [FAULTS, ROLLBACK]
    st.cache_resource.clear()
    sources.pop().close()  # a new server process on the same store (a/.midflight), with only a as its root
    monkeypatch.setenv(ENV_RUNS, str(a))
    at = start()
    assert at.selectbox(key="run").options == [FAULTS]
    assert list(frame(at, "run", "status")["run"]) == [FAULTS]


def test_run_names_are_not_rendered_as_markdown(tmp_path, monkeypatch):
    name = "lr [sweep](example.com) *1*"  # the run id is the folder name
    with logbook.init(tmp_path / name, config={"steps": 1}) as run:
        run.log({"loss": 1.0}, step=0)
    monkeypatch.setenv(ENV_RUNS, str(tmp_path))
    at = start("live")
    assert at.session_state["run"] == name
    shown = [e.value for e in [*at.title, *at.markdown, *at.caption, *at.warning]]
    assert not [s for s in shown if "[sweep](example.com)" in s]


def test_intervention_cancel_keeps_the_choices(live_run):
    at = start("live")
    at.selectbox(key="live:iv:action").select("skip_batches").run()
    at.text_input(key="live:iv:note").input("keep me")
    at.button(key="live:iv:review_btn").click().run()
    at.button(key="live:iv:cancel").click().run()
    assert at.selectbox(key="live:iv:action").value == "skip_batches"
    assert at.text_input(key="live:iv:note").value == "keep me"


# ----------------------------------------------------------------- hostile input
def _poison(run_dir: Path) -> list[str]:
    """One bad line appended to each record file of the run (a 20-digit step, or a step of 1e30)."""
    huge = 99999999999999999999
    bad = {
        "annotations.jsonl": {"k": "annotation", "op": "create", "id": "p", "step": huge, "kind": "note", "text": "x"},
        "interventions.jsonl": {"k": "intervention", "op": "applied", "id": "p", "step": huge},
    }
    poisoned = []
    for path in sorted(run_dir.rglob("*.jsonl")):
        rec = bad.get(path.name, {"k": "metrics", "names": ["loss"], "rows": [[1e30, 1.0, 99.0]]})
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        poisoned.append(path.relative_to(run_dir).as_posix())
    return poisoned


def test_a_poisoned_line_in_every_record_file_hides_no_good_data(runs):
    """The same run twice, one copy with a bad line in each of its record files: every page shows the same
    data for both, and the poisoned copy says what it skipped."""
    shutil.copytree(runs / FAULTS, runs / "poisoned")
    poisoned = _poison(runs / "poisoned")
    assert len(poisoned) == 8  # 3 segments x 2 ranks, annotations, interventions
    seen = {}
    for run in (FAULTS, "poisoned"):
        at = start("live", run=run)
        deadline = time.time() + 60
        while metrics(at)["open incidents"] == "…" and time.time() < deadline:  # markers come with the analyses
            time.sleep(0.5)
            at.run()
        loss = next(s for s in plotly_specs(at) if "loss" in json.dumps(s.get("layout", {}).get("title", "")))
        seen[run] = {
            "header": metrics(at)["step (of 700)"],
            "loss": [(t.get("name"), len(t.get("x") or [])) for t in loss["data"]],
            "skipped": [e.label for e in at.expander if "malformed" in e.label],
        }
        at.switch_page("app_pages/lineage.py").run()
        assert not at.exception
        table = frame(at, "type", "detail")
        seen[run]["timeline"] = sorted(map(str, zip(table["type"], table["detail"])))
        seen[run]["segments"] = frame(at, "segment", "how it ended").shape
    clean, bad = seen[FAULTS], seen["poisoned"]
    assert clean["header"] == bad["header"] == "700"
    assert clean["loss"] == bad["loss"] and clean["timeline"] == bad["timeline"]
    assert clean["segments"] == bad["segments"]
    assert clean["skipped"] == [] and bad["skipped"] == [
        "⚠ 8 malformed lines skipped in 8 files; everything else in the run is shown"
    ]


# ----------------------------------------------------------------- fleet scale: many ranks and devices
@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    """A generated run of 48 ranks on 6 nodes (more than the Live page draws one line each for)."""
    from benchmarks.fleet_run import write_fleet_run

    root = tmp_path_factory.mktemp("fleet")
    truth = write_fleet_run(root / "fleet", nodes=6, gpus_per_node=8, steps=240, telemetry_hz=0.02, seed=1)
    return root, truth


def test_live_page_draws_the_distribution_band_and_the_worst_ranks_for_many_ranks(fleet_dir, monkeypatch):
    root, truth = fleet_dir
    monkeypatch.setenv(ENV_RUNS, str(root))
    at = start("live", run="fleet")
    specs = plotly_specs(at)
    step_time = [s for s in specs if "step time across 48 ranks" in s["layout"]["title"]["text"]]
    assert len(step_time) == 1
    names = [t.get("name") for t in step_time[0]["data"]]
    assert "median" in names and "p5–p95" in names and "min–max" in names
    s = truth["straggler"]
    assert f"rank {s['rank']} ({s['host']})" in names  # the straggler, named, with its own line
    assert sum(1 for n in names if n and n.startswith("rank ")) <= 3  # not one line per rank
    power = [sp for sp in specs if sp["layout"]["title"]["text"].startswith("power (W), 48 devices")]
    assert len(power) == 1 and len(power[0]["data"]) < 10  # a band, not 48 lines


def test_ranks_page_heatmap_outliers_and_a_linked_rank(fleet_dir, monkeypatch):
    root, truth = fleet_dir
    monkeypatch.setenv(ENV_RUNS, str(root))
    s = truth["straggler"]
    at = start("ranks", run="fleet")
    assert titles(at) == ["Ranks & devices · fleet"]
    heat = [sp for sp in plotly_specs(at) if sp["data"] and sp["data"][0]["type"] == "heatmap"]
    assert len(heat) == 2  # step time per rank, and a device telemetry
    assert len(heat[0]["data"][0]["y"]) == 48
    table = frame(at, "rank", "host", "vs median", "since step")
    assert (table["rank"].iat[0], table["host"].iat[0]) == (s["rank"], s["host"])
    assert table["since step"].iat[0] == s["first_step"]
    assert at.selectbox(key="ranks:rank").value == s["rank"]  # the worst rank's own series is shown first
    one = [sp for sp in plotly_specs(at) if sp["layout"]["title"]["text"].startswith("step_time_s: rank")]
    assert [t.get("name") for t in one[0]["data"]][-1] == f"rank {s['rank']}"
    at.radio(key="ranks:group").set_value("node").run()
    assert frame(at, "host", "vs median")["host"].iat[0] == s["host"]
    at.radio(key="ranks:group").set_value("rank").run()
    at.selectbox(key="ranks:rank").set_value(3).run()
    assert at.query_params["rank"] == ["3"] or at.query_params["rank"] == "3"


def test_a_constant_series_is_drawn_on_an_axis_that_shows_its_value(runs):
    import numpy as np

    from midflight.logbook.present import figures

    fig = figures.metric_figure("lr", [figures.Line("lr", np.arange(5), np.full(5, 6e-5), np.arange(5))])
    lo, hi = fig.layout.yaxis.range
    assert lo < 6e-5 < hi and hi - lo < 2e-5  # around the value, not -1..1
    varying = figures.metric_figure("x", [figures.Line("x", np.arange(5), np.arange(5.0), np.arange(5))])
    assert varying.layout.yaxis.range is None  # data that vary keep Plotly's autorange


def test_ranks_page_follows_a_rank_link_and_refuses_a_bad_one(fleet_dir, monkeypatch):
    root, truth = fleet_dir
    monkeypatch.setenv(ENV_RUNS, str(root))
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["run"] = "fleet"
    at.query_params["rank"] = "7"
    at.run()
    at.switch_page("app_pages/ranks.py").run()
    assert not at.exception
    assert at.selectbox(key="ranks:rank").value == 7
    at.query_params["rank"] = "-1"
    at.run()
    assert not at.exception and any("?rank= must be a rank number" in w.value for w in at.warning)


@pytest.fixture(scope="module")
def sync_fleet_dir(tmp_path_factory):
    """48 synchronous ranks: every rank waits for the slowest, so only compute_s tells the straggler apart."""
    from benchmarks.fleet_run import write_fleet_run

    root = tmp_path_factory.mktemp("sync")
    truth = write_fleet_run(root / "fleet", nodes=6, gpus_per_node=8, steps=240, telemetry_hz=0.05, seed=3,
                            synchronous=True)  # fmt: skip
    return root, truth


def test_synchronous_fleet_pages_show_each_ranks_own_work_and_the_fleets_energy(sync_fleet_dir, monkeypatch):
    root, truth = sync_fleet_dir
    monkeypatch.setenv(ENV_RUNS, str(root))
    s = truth["straggler"]
    at = start("live", run="fleet")
    compute = [sp for sp in plotly_specs(at) if sp["layout"]["title"]["text"].startswith("compute before collectives")]
    assert len(compute) == 1
    assert f"rank {s['rank']} ({s['host']})" in [t.get("name") for t in compute[0]["data"]]

    at.switch_page("app_pages/ranks.py").run()
    assert not at.exception
    assert at.selectbox(key="ranks:metric").value == "compute_s"
    assert frame(at, "rank", "host")["rank"].iat[0] == s["rank"]

    at.switch_page("app_pages/energy.py").run()
    assert not at.exception
    specs = {sp["layout"]["title"]["text"]: sp for sp in plotly_specs(at)}
    cum = specs["cumulative energy (MJ) per segment, all devices"]
    assert [t["name"] for t in cum["data"]] == ["leet-0: 48 devices (metered)"]  # one curve, not 48
    power = next(sp for title, sp in specs.items() if title.startswith("power (W) across 48 devices"))
    assert len(power["data"]) < 10  # a band, not 48 lines


def test_runs_table_shows_tags_and_group_as_text(tmp_path, monkeypatch):
    with logbook.init(tmp_path / "tagged", tags=["baseline", XSS[:60]], group="sweep <7>") as run:
        run.log({"loss": 1.0}, step=0)
        run.tags = run.tags + ("promoted",)
    monkeypatch.setenv(ENV_RUNS, str(tmp_path))
    table = frame(start(), "run", "tags", "group").set_index("run")
    assert table.loc["tagged", "tags"] == f"baseline, {XSS[:60]}, promoted"  # the characters, in a text cell
    assert table.loc["tagged", "group"] == "sweep <7>"


def test_lineage_page_shows_the_goodput_ledger(runs):
    """One stacked bar per segment plus the run total; the OPT-175B timeline's ledger is flagged as an estimate."""
    at = start("lineage", run=OPT)
    fig = next(s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("Goodput"))
    assert "(estimate)" in fig["layout"]["title"]["text"] and fig["layout"]["barmode"] == "stack"
    bars = fig["data"]
    assert {t["orientation"] for t in bars} == {"h"}
    labels = bars[0]["y"]
    assert len(labels) == 49 + 1 and labels[-1] == "run total" and "11.0 (abandoned)" in labels
    assert {t["name"] for t in bars} >= {"productive", "wasted", "downtime", "unattributed"}
    assert any("14.4 s per step" in w.value and "arXiv:2205.01068" in w.value for w in at.warning)
    table = frame(at, "category", "hours", "how", "method")
    assert table.set_index("category").loc["productive", "how"] == "estimated"
    at = start("lineage", run=FAULTS)  # a trainer run: measured, three segments plus the total
    fig = next(s for s in plotly_specs(at) if s["layout"]["title"]["text"].startswith("Goodput"))
    assert "(estimate)" not in fig["layout"]["title"]["text"] and len(fig["data"][0]["y"]) == 4
    assert frame(at, "category", "how").set_index("category").loc["productive", "how"] == "measured"
