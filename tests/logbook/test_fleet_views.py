"""The per-rank and per-device aggregates (logbook.store.ranks) against a brute-force pandas computation.

The brute force reads the generated run's own log files (not the store), so a wrong join, bucket
edge or tile read in the query shows as a difference; the planted straggler must survive every
downsampling, on the raw path (a bucket of a few steps) and on the tile path (a bucket of whole tiles).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.fleet_run import write_fleet_run
from midflight.logbook.record import records
from midflight.logbook.store import ingest, ranks
from midflight.logbook.store.downsample import TILE

NODES, GPUS = 4, 8


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fleet") / "fleet"
    truth = write_fleet_run(run_dir, nodes=NODES, gpus_per_node=GPUS, steps=1200, telemetry_hz=0.01, seed=3)
    store, _ = ingest.open_run(run_dir)
    yield store, truth, _raw(run_dir)
    store.close()


def _raw(run_dir):
    """(step times: rank, host, step, value; telemetry: host, device, wall_time, step, name, value) from the logs."""
    m, t = [], []
    for path in sorted(run_dir.glob("segments/*/rank-*.jsonl")):
        host = None
        for rec in records.iter_records(path):
            if rec["k"] == "open":
                host, rank = rec["host"], rec["rank"]
            elif rec["k"] == "metrics":
                i = rec["names"].index("step_time_s") + 2
                m += [(rank, host, int(r[0]), r[i]) for r in rec["rows"]]
            elif rec["k"] == "telemetry" and "devices" in rec:  # a node block: [dt_ms, step, values device-major]
                k = len(rec["names"])
                for r in rec["rows"]:
                    wall = rec["t0"] + r[0] / 1000
                    for d, dev in enumerate(rec["devices"]):
                        vals = r[2 + d * k : 2 + (d + 1) * k]
                        t += [(host, dev, wall, r[1], n, v) for n, v in zip(rec["names"], vals)]
            elif rec["k"] == "telemetry":
                for r in rec["rows"]:
                    t += [(host, rec["device"], r[0], r[1], n, v) for n, v in zip(rec["names"], r[2:])]
    return (
        pd.DataFrame(m, columns=["rank", "host", "step", "value"]),
        pd.DataFrame(t, columns=["host", "device", "wall_time", "step", "name", "value"]),
    )


def test_raw_path_cells_band_and_outliers_match_brute_force(fleet):
    store, truth, (m, _) = fleet
    v = ranks.metric_view(store, "fleet", "step_time_s", buckets=600)  # 2 steps a bucket: below a tile
    m = m.assign(bucket=m["step"] // 2)
    want = m.groupby(["rank", "bucket"])["value"].max().unstack().sort_index()
    assert v.cells.shape == want.shape == (NODES * GPUS, 600)
    np.testing.assert_allclose(v.cells, want.to_numpy())
    assert list(v.rows["label"]) == [f"rank {r}" for r in want.index]
    assert list(v.rows["host"]) == [f"node{r // GPUS:04d}" for r in want.index]
    np.testing.assert_allclose(v.band["median"], want.median(axis=0).to_numpy())
    np.testing.assert_allclose(v.band["max"], want.max(axis=0).to_numpy())
    np.testing.assert_allclose(v.band["p95"], want.quantile(0.95, axis=0).to_numpy())
    np.testing.assert_array_equal(v.band["x_lo"], np.arange(0, 1200, 2))
    s = truth["straggler"]
    top = v.outliers.iloc[0]
    assert (top["rank"], top["host"]) == (s["rank"], s["host"])
    assert abs(top["vs_median"] - 0.15) < 0.05
    assert top["since_step"] == s["first_step"] and top["until_step"] == s["last_step"] - 1  # bucket starts
    in_episode = v.band[(v.band["x_lo"] >= s["first_step"]) & (v.band["x_hi"] <= s["last_step"])]
    assert set(in_episode["worst"]) == {f"rank {s['rank']}"}


def test_tile_path_reads_whole_tiles_and_the_straggler_cell_survives(fleet):
    store, truth, (m, _) = fleet
    v = ranks.metric_view(store, "fleet", "step_time_s", buckets=2)  # 600 steps a bucket -> 3 tiles (768)
    width = 3 * TILE
    m = m.assign(bucket=m["step"] // width)
    want = m.groupby(["rank", "bucket"])["value"].max().unstack().sort_index()
    np.testing.assert_allclose(v.cells, want.to_numpy())
    np.testing.assert_array_equal(v.x_lo, [0, width])
    np.testing.assert_array_equal(v.x_hi, [width - 1, 1199])
    s = truth["straggler"]
    b = s["first_step"] // width
    straggler_max = m[(m["rank"] == s["rank"])]["value"].max()
    assert v.cells[s["rank"], b] == pytest.approx(straggler_max)  # its worst point, not an average
    assert v.band["worst"].iat[b] == f"rank {s['rank']}"
    assert v.outliers["rank"].iat[0] == s["rank"]


def test_node_grouping_is_the_max_over_the_nodes_ranks(fleet):
    store, truth, (m, _) = fleet
    v = ranks.metric_view(store, "fleet", "step_time_s", buckets=1200, group="node")
    want = m.groupby(["host", "step"])["value"].max().unstack().sort_index()
    assert list(v.rows["label"]) == list(want.index)
    np.testing.assert_allclose(v.cells, want.to_numpy())
    assert v.outliers["label"].iat[0] == truth["straggler"]["host"]


@pytest.mark.parametrize(
    "name,group,buckets",
    [("power_w", "device", 50), ("sm_clock_mhz", "device", 50), ("temp_c", "node", 50), ("power_w", "device", 1000)],
)
def test_telemetry_cells_match_brute_force_time_buckets(fleet, name, group, buckets):
    """50 buckets are wider than a 64 s tile (the tile path), 1000 are narrower (raw rows): both equal the
    extremes of the raw samples in the view's own bucket edges."""
    store, truth, (_, t) = fleet
    v = ranks.telemetry_view(store, "fleet", name, buckets=buckets, group=group)
    t = t[t["name"] == name]
    assert v.x_lo[0] == t["wall_time"].min() and v.x_hi[-1] == t["wall_time"].max()
    t = t.assign(bucket=np.searchsorted(v.x_lo[1:], t["wall_time"].to_numpy(), side="right"))
    key = t["host"] + "/" + t["device"] if group == "device" else t["host"]
    cell = "min" if name == "sm_clock_mhz" else "max"
    assert v.cell == cell
    want = t.groupby([key, "bucket"])["value"].agg(cell).unstack().sort_index()
    want = want.reindex(columns=range(v.cells.shape[1]))  # buckets no sample fell in: NaN in both
    assert list(v.rows["label"]) == list(want.index)
    np.testing.assert_allclose(v.cells, want.to_numpy())
    if name == "sm_clock_mhz":  # the straggler's GPU runs slow while it lags: the lowest clock of the fleet
        s = truth["straggler"]
        assert v.outliers["label"].iat[0] == f"{s['host']}/gpu{s['rank'] % GPUS}"
        assert v.outliers["vs_median"].iat[0] < -0.05


def test_a_zoom_and_bad_arguments(fleet):
    store, truth, _ = fleet
    v = ranks.metric_view(store, "fleet", "step_time_s", x_range=(100, 199), buckets=1000)
    assert v.x_lo[0] == 100 and v.x_hi[-1] == 199 and v.cells.shape[1] == 100
    assert ranks.metric_view(store, "fleet", "no_such_metric").empty
    assert ranks.telemetry_view(store, "nope", "power_w").empty
    for kw in ({"buckets": 0}, {"buckets": "9"}, {"cell": "mean"}, {"group": "rack"}, {"top": -1}):
        with pytest.raises(ValueError):
            ranks.metric_view(store, "fleet", **kw)


def test_generator_refuses_bad_shapes(tmp_path):
    for kw in ({"nodes": 0}, {"steps": 5}, {"steps": -1}, {"plant": ["meteor"]}, {"telemetry_hz": float("nan")}):
        with pytest.raises(ValueError):
            write_fleet_run(tmp_path / "r", **kw)
