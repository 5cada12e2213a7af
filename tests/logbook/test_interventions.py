"""The intervention log: requests, outcomes, and the store's view of them."""

import json

import pytest

from midflight import logbook
from midflight.logbook.record import interventions
from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest


@pytest.fixture
def run_dir(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        run.log({"loss": 1.0}, step=1)
    return tmp_path / "run"


def test_request_apply_reject_and_view(run_dir):
    a = interventions.request(run_dir, "clip", {"max_norm": 0.3}, author="naman")
    b = interventions.request(run_dir, "lr_multiplier", {"factor": 0.5})
    c = interventions.request(run_dir, "stop")
    assert [r["id"] for r in interventions.pending(run_dir)] == [a, b, c]
    interventions.resolve(run_dir, a, applied=True, step=13_251)
    interventions.resolve(run_dir, b, applied=False, detail="run is in warm-up")
    assert [r["id"] for r in interventions.pending(run_dir)] == [c]
    store = memory()
    ingest(store, [run_dir])
    view = queries.interventions(store, "run").set_index("intervention_id")
    assert view.loc[a, "status"] == "applied" and view.loc[a, "applied_step"] == 13_251
    assert json.loads(view.loc[a, "params"]) == {"max_norm": 0.3} and view.loc[a, "author"] == "naman"
    assert view.loc[b, "status"] == "rejected" and view.loc[b, "detail"] == "run is in warm-up"
    assert view.loc[c, "status"] == "pending"


@pytest.mark.parametrize(
    "action, params, message",
    [
        ("lr_multiplyer", {"factor": 2}, "unknown intervention"),
        ("clip", {"max_norm": 0.3, "typo": 1}, "does not take typo"),
    ],
)
def test_bad_requests_are_refused(run_dir, action, params, message):
    with pytest.raises(ValueError, match=message):
        interventions.request(run_dir, action, params)


def test_request_needs_a_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        interventions.request(tmp_path, "stop")
