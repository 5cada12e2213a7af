"""Across-rank detection (analysis.stragglers via report.incidents) on generated synchronous fleets.

Each run is written by benchmarks.fleet_run with ONE planted case and synchronous ranks (step_time_s
equal on every rank: all wait for the slowest), ingested into a real store, and read back through
report.incidents, as `summary` and the dashboard read it. Every assertion is against the truth the
generator returns: the right kind, the right rank / host / device, found within 30 steps of onset, and
nothing on the clean ranks.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmarks.fleet_run import write_fleet_run
from midflight.logbook.analysis import stragglers
from midflight.logbook.report import incidents
from midflight.logbook.store import ingest, ranks
from tests.logbook.proc_helpers import ROOT, child_env

NODES, STEPS, HZ = 8, 150, 0.05  # 64 ranks; one telemetry sample per 20 s step
FLEET_KINDS = {"straggler", "slow_node", "throttled_gpu", "device_silent"}
WITHIN = 30


def _run(tmp_path_factory, plant, seed=2):
    run_dir = tmp_path_factory.mktemp("fleet") / "fleet"
    truth = write_fleet_run(run_dir, nodes=NODES, steps=STEPS, telemetry_hz=HZ, plant=plant, seed=seed,
                            synchronous=True)  # fmt: skip
    store, _ = ingest.open_run(run_dir)
    try:
        found = [i for i in incidents.incidents(store, "fleet") if i.kind in FLEET_KINDS]
        naive = stragglers.slow_ranks(
            stragglers.Grid.from_dict(incidents._grid(ranks.metric_view(store, "fleet", "step_time_s",
                                                                        buckets=STEPS // 5, cell="min", top=0))),
            metric="step_time_s",
        )  # fmt: skip
    finally:
        store.close()
    return truth, found, naive


@pytest.fixture(scope="module", params=["straggler", "slow_node", "throttled_gpu", "silent_gpu"])
def case(request, tmp_path_factory):
    return request.param, *_run(tmp_path_factory, (request.param,))


KIND = {"straggler": "straggler", "slow_node": "slow_node", "throttled_gpu": "throttled_gpu",
        "silent_gpu": "device_silent"}  # fmt: skip


def test_each_planted_case_is_found_named_and_early_with_nothing_else(case):
    plant, truth, found, _ = case
    t = truth[plant]
    assert [i.kind for i in found] == [KIND[plant]], [(i.kind, i.detail) for i in found]
    inc = found[0]
    if plant == "slow_node":
        assert inc.detail["host"] == t["host"] and sorted(inc.detail["ranks"]) == t["ranks"]
    elif plant == "straggler":
        assert (inc.detail["rank"], inc.detail["host"]) == (t["rank"], t["host"])
        assert inc.detail["vs_median"] == pytest.approx(0.15, abs=0.03)
    else:
        assert (inc.detail["host"], inc.detail["device"], inc.detail["rank"]) == (t["host"], t["device"], t["rank"])
    assert t["first_step"] <= inc.detected_step <= t["first_step"] + WITHIN
    assert abs(inc.start_step - t["first_step"]) <= 10
    if plant == "throttled_gpu":  # the cause is named, and its rank's slowness is folded into it
        assert inc.detail["cause"] == "hot" and inc.detail["sm_clock_vs_median"] < -0.2
        assert inc.detail["rank_slower"] == pytest.approx(0.12, abs=0.03)


def test_step_time_alone_cannot_tell_the_ranks_apart(case):
    plant, truth, _, naive = case
    assert naive == []  # synchronous: every rank's step time is the slowest rank's


def test_a_clean_fleet_raises_no_alarm(tmp_path_factory):
    for seed in (0, 1):
        _, found, _ = _run(tmp_path_factory, (), seed=seed)
        assert found == [], [(i.kind, i.detail) for i in found]


def _grid(cells, hosts):
    n, b = cells.shape
    return stragglers.Grid(cells, [f"rank {r}" for r in range(n)], list(range(n)), hosts, np.arange(b) * 5.0,
                           np.arange(b) * 5.0 + 4)  # fmt: skip


def test_one_slow_bucket_is_noise_and_a_slow_node_is_one_incident_not_eight():
    rng = np.random.default_rng(0)
    cells = 20 * (1 + 0.005 * rng.standard_normal((32, 20)))
    hosts = [f"h{r // 8}" for r in range(32)]
    cells[5, 7] *= 1.3  # one bucket only: below the persistence
    assert stragglers.slow_ranks(_grid(cells, hosts)) == []
    cells[8:16, 10:] *= 1.1  # host h1, from bucket 10
    cells[20, 3:9] *= 1.2  # rank 20 on h2
    found = stragglers.slow_ranks(_grid(cells, hosts))
    assert sorted((i.kind, i.start_step, i.detected_step) for i in found) == [("slow_node", 50, 59),
                                                                              ("straggler", 15, 24)]  # fmt: skip


def test_a_device_is_silent_only_while_its_peers_report():
    cells = np.full((10, 12), 1980.0)
    cells[:, 8:] = np.nan  # every device stops: the run ended, nobody is silent
    cells[3, 4:] = np.nan  # device 3 stops 4 buckets earlier
    g = stragglers.Grid(cells, [f"h/gpu{i}" for i in range(10)], [None] * 10, ["h"] * 10, np.arange(12.0),
                        np.arange(12.0))  # fmt: skip
    (inc,) = stragglers.silent(g)
    assert (inc.detail["device"], inc.start_step, inc.end_step, inc.detail["last_seen_step"]) == ("gpu3", 4, 7, 3)


def test_summary_names_where_each_fleet_incident_is(tmp_path):
    run_dir = tmp_path / "fleet"
    plant = ("straggler", "slow_node", "throttled_gpu", "silent_gpu")
    t = write_fleet_run(run_dir, nodes=NODES, steps=120, telemetry_hz=HZ, plant=plant, seed=4, synchronous=True)
    out = subprocess.run([sys.executable, "-m", "midflight.logbook", "summary", str(run_dir)], capture_output=True,
                         text=True,
                         env=child_env(), cwd=ROOT, check=True).stdout  # fmt: skip
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("    ") and " steps " in ln}
    s, n, th, si = (t[k] for k in plant)
    assert f"on rank {s['rank']} ({s['host']})" in lines["straggler"] and "transient" in lines["straggler"]
    assert f"on {n['host']} (8 ranks)" in lines["slow_node"]
    assert f"on {th['host']}/{th['device']} (rank {th['rank']})" in lines["throttled_gpu"]
    assert f"on {si['host']}/{si['device']} (rank {si['rank']})" in lines["device_silent"]
