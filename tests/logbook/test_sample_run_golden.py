"""Golden test of ingest over the shipped trainer sample, sample_runs/opt-tiny-faults.

The trainer does not run here: the sample was recorded once by examples/record_sample_run.py, and
these tests check that ingest, queries and the summary read from it the story its README tells.
"""

import json
from pathlib import Path

from midflight.logbook.record import layout
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import open_store, queries
from midflight.logbook.store.ingest import ingest

SAMPLE = Path(__file__).resolve().parents[2] / "sample_runs" / "opt-tiny-faults"


def test_sample_is_small():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file() and ".midflight" not in p.parts)
    assert size < 5_000_000


def test_sample_has_spike_crash_restart_and_rewind():
    store = open_store(None)
    ingest(store, layout.discover_runs(SAMPLE))
    (run,) = queries.run_ids(store)
    s = summarize(store, run)
    crashed, restarted, rewound = s["segments"]
    assert crashed["end_reason"] == "crashed" and "injected crash at step 380" in crashed["error"]
    assert restarted["parent"] == crashed["id"] and restarted["resume_step"] == 350
    assert restarted["reason"].startswith("automatic restart 1 (torchrun)")
    assert restarted["end_reason"] == "rewound"
    assert rewound["parent"] == restarted["id"] and rewound["resume_step"] == 500
    assert rewound["config_diff"] == {"optim.clip": [1.0, 0.3], "optim.lr_multiplier": [1.0, 0.5]}
    assert s["effective_steps"] == 700 and s["status"] == "finished"
    # the spike at step 300 is real: loss and grad norm jump
    loss = queries.series(store, run, "loss", x_range=(290, 305)).set_index("step")["value"]
    assert loss[300] > loss.loc[290:299].max() + 1.0
    # fp16 overflows halved the scale; rank 1 was a straggler at 470-490
    assert s["events"]["overflow"] == 3 and s["events"]["loss_scale_decrease"] == 3
    slow = queries.series(store, run, "step_time_s", rank=1, which="all").set_index("step")["value"]
    assert slow.loc[470:490].min() > 0.15 > slow.loc[430:460].median()
    (rewind,) = s["interventions"]
    assert rewind["kind"] == "rewind" and rewind["status"] == "applied" and "OPT" in rewind["note"]
    assert json.loads(json.dumps(rewind["params"]))["changes"] == {"lr_multiplier": 0.5, "clip": 0.3}
    assert s["annotations"] == 4
    cpu = store.cursor().execute("SELECT count(*) FROM telemetry WHERE run_id = ? AND device = 'cpu'", [run])
    assert cpu.fetchone()[0] > 10


def test_summary_of_the_sample_lists_its_incidents():
    store = open_store(None)
    ingest(store, layout.discover_runs(SAMPLE))
    (run,) = queries.run_ids(store)
    incidents = summarize(store, run)["incidents"]
    for i in incidents:
        assert {"kind", "start_step", "end_step", "severity", "classification"} <= set(i)
    found = {(i["kind"], i["start_step"]) for i in incidents}
    assert ("loss_spike", 300) in found and ("loss_scale_collapse", 250) in found
    straggler = [i for i in incidents if i["kind"] == "straggler"]
    assert straggler and 468 <= straggler[0]["start_step"] <= 472 and straggler[0]["end_step"] >= 488
    json.dumps(incidents, allow_nan=False)  # what summary --json prints is strict JSON
