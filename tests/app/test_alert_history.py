"""The Incidents page shows the run's alert history (the watcher's outbox) and acknowledges an open alert."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from midflight.logbook.oncall import alerts, autopilot
from midflight.logbook.record import records

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app" / "streamlit_app.py")
RUN = "opt-tiny-faults"


@pytest.mark.slow  # the Incidents page scans the sample run (~12 s here)
def test_alert_history_and_ack_on_the_incidents_page(runs, sources):
    box = alerts.Outbox(runs / RUN)
    wanted = [
        alerts.Wanted(
            alerts.alert_key(RUN, "crash", "seg-x"),
            alerts.snapshot(RUN, "crash", "high", 120, "crash: <b>segment</b> died at step 120"),
            active=True,
        ),
        alerts.Wanted(
            alerts.alert_key(RUN, "restart", "seg-y"),
            alerts.snapshot(RUN, "restart", "low", 100, "restart"),
            active=False,
            instant=True,
        ),
    ]
    alerts.reconcile(box, RUN, wanted, now=0.0, resend_after_s=None)
    crash_id = box.by_key[wanted[0].key]

    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["run"] = RUN
    at.run()
    at.switch_page("app_pages/incidents.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(df.value for df in at.dataframe if {"id", "kind", "state"} <= set(df.value.columns))
    assert set(table["kind"]) == {"crash", "restart"}
    assert table.set_index("id").loc[crash_id, "what"] == "crash: <b>segment</b> died at step 120"  # text, as is
    assert at.selectbox(key="incidents:alerts:pick").value == crash_id  # only the open, unacknowledged one
    at.button(key="incidents:alerts:ack").click().run()
    assert not at.exception, [e.value for e in at.exception]
    again = alerts.Outbox(runs / RUN)
    assert again.alerts[crash_id].acked and again.alerts[crash_id].acked_by.endswith("(dashboard)")
    table = next(df.value for df in at.dataframe if {"id", "acked by"} <= set(df.value.columns))
    assert table.set_index("id").loc[crash_id, "acked by"].endswith("(dashboard)")
    assert not [s for s in at.selectbox if s.key == "incidents:alerts:pick"]  # nothing left to acknowledge

    # an `ask` proposal of the autopilot waits on the same page: one click approves it, through the channel
    decision = autopilot.Decision(
        "halve-lr", "ask", "loss_spike/loss/300", 310, "lr_multiplier", {"factor": 0.5}, "spike"
    )
    proposal = autopilot.act(runs / RUN, decision)
    at.run()
    assert at.selectbox(key="incidents:autopilot:pick").value == proposal["id"]
    at.button(key="incidents:autopilot:approve").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (entry,) = autopilot.Ledger(runs / RUN).entries()
    assert entry["status"] == "approved" and entry["by"].endswith("(dashboard)")
    requests = [r for r in records.iter_records(runs / RUN / "interventions.jsonl") if r.get("id") == entry["request"]]
    assert requests and requests[0]["author"] == "autopilot:halve-lr" and "approved by" in requests[0]["note"]
    assert not [s for s in at.selectbox if s.key == "incidents:autopilot:pick"]  # nothing left to approve
