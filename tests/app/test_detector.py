"""The incident-detection worker process gives exactly the in-process answer, and survives its own death."""

import pytest

from midflight.app.detector import Detector
from midflight.logbook.analysis import divergence
from midflight.logbook.record import layout
from midflight.logbook.report import incidents as incident_report
from midflight.logbook.store import memory
from midflight.logbook.store.ingest import ingest

from .test_pages import FAULTS, ROOT


@pytest.fixture(scope="module")
def frames():
    store = memory()
    ingest(store, layout.discover_runs(ROOT / "sample_runs"))
    return incident_report.inputs(store, FAULTS)


def test_worker_matches_in_process_detection_and_restarts_after_a_kill(frames):
    det = Detector()
    try:
        want = [i.to_dict() for i in divergence.incidents_from(frames)]
        assert want, "the sample run has incidents"
        assert [i.to_dict() for i in det.incidents(frames)] == want
        det._proc.kill()  # a worker killed (out of memory, say) is replaced on the next call
        det._proc.wait()
        assert [i.to_dict() for i in det.incidents(frames)] == want
    finally:
        det.close()
    assert det._proc is None


def test_bad_input_is_an_error_for_the_caller_not_a_dead_worker(frames):
    det = Detector()
    try:
        with pytest.raises(RuntimeError, match="incident detection failed"):
            det.incidents({"effective": "not a frame"})
        assert len(det.incidents(frames)) > 0  # the same worker goes on
    finally:
        det.close()
