"""Compact node telemetry records, their vectorised ingest and the telemetry tiles the charts read.

Real record bytes, real DuckDB stores: the node record (format 3) must give exactly the rows the
per-device records (format <= 2) give, the tiles must equal a brute-force pandas aggregation of those
rows, and a one-sample spike on one GPU at 1 Hz over days must survive every downsampled view.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from midflight import logbook
from midflight.logbook.record import layout, records
from midflight.logbook.store import open_store, queries, ranks, schema
from midflight.logbook.store.ingest import ingest
from midflight.trainer.telemetry import DECIMALS

NAMES = ["util_pct", "mem_used_gib", "power_w", "temp_c", "sm_clock_mhz", "energy_j"]
T0 = 1_700_000_000.0


def _sample(rng, ticks: int, gpus: int = 8, hz: float = 1.0):
    """Realistic NVML readings at their real resolution: [ticks, gpus * 6], device-major; times; steps."""
    t = T0 + np.arange(ticks) / hz
    cols = []
    for _ in range(gpus):
        power = np.round(400 + 10 * rng.standard_normal(ticks), 3)  # NVML: mW
        cols += [
            np.clip(np.round(97 + rng.standard_normal(ticks)), 0, 100),
            (71.5 * 2**30 + np.round(rng.standard_normal(ticks) * 2**24)) / 2**30,  # bytes / GiB
            power,
            np.round(70 + 1.5 * rng.standard_normal(ticks)),
            np.round(1980 - 5 * np.abs(rng.standard_normal(ticks))),
            np.round(np.cumsum(power / hz), 3),  # energy counter, mJ-exact
        ]
    return t, (np.arange(ticks) // 20).tolist(), np.column_stack(cols)


def _write(run_dir, blocks: list[bytes], rank: int = 0, segment: str = "seg-a"):
    path = layout.rank_file(run_dir, segment, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    opened = {"k": records.OPEN, "v": records.FORMAT_VERSION, "run": "r", "segment": segment, "rank": rank}
    opened.update(local_rank=0, world=1, host=f"node{rank}", pid=1, t=T0)
    with open(path, "ab") as f:
        f.write(records.encode(opened) + b"".join(blocks))
    return path


def _node_records(t, steps, vals, devices, names, ticks_per_record=5, decimals=None):
    out, t, vals = [], np.asarray(t).tolist(), np.asarray(vals).tolist()
    for a in range(0, len(t), ticks_per_record):
        b = a + ticks_per_record
        out.append(records.encode_telemetry(devices, names, t[a:b], steps[a:b], vals[a:b], decimals=decimals))
    return out


def _device_records(t, steps, vals, devices, names):
    """The same samples the old way: one block per device, rows [wall_time, step, v...] (format 2)."""
    k, out = len(names), []
    for d, dev in enumerate(devices):
        rows, nonfinite = [], []
        for i in range(len(t)):
            row = [float(t[i]), steps[i]]
            for j, v in enumerate(vals[i, d * k : (d + 1) * k].tolist()):
                if not np.isfinite(v):
                    nonfinite.append([i, j, records.nonfinite_token(v)])
                    v = None
                row.append(v)
            rows.append(row)
        rec = {"k": records.TELEMETRY, "device": dev, "names": names, "rows": rows}
        if nonfinite:
            rec["nonfinite"] = nonfinite
        out.append(records.encode_block(rec))
    return out


def _rows(store, table="telemetry"):
    cols = "device, step, wall_time, name, value" if table == "telemetry" else "*"
    return store.cursor().execute(f"SELECT {cols} FROM {table}").df()


def _sorted(df):
    return df.sort_values(list(df.columns[:4]), kind="stable", ignore_index=True)


def test_bytes_per_point_of_a_realistic_node_sample_is_under_10():
    """8 GPUs x 6 names at 1 Hz, 5 ticks per record (telemetry_every=5 s), at the sampler's resolutions."""
    t, steps, vals = _sample(np.random.default_rng(0), 3600)
    devices = [f"gpu{g}" for g in range(8)]
    new = b"".join(_node_records(t, steps, vals, devices, NAMES, decimals=DECIMALS))
    old = b"".join(_device_records(t, steps, vals, devices, NAMES))
    points = vals.size
    assert len(new) / points < 10, len(new) / points
    assert len(old) > 1.5 * len(new)  # the same readings, one record per device and tick row


def test_node_records_ingest_to_the_same_rows_and_tiles_as_per_device_records(tmp_path):
    rng = np.random.default_rng(1)
    t, steps, vals = _sample(rng, 400, gpus=3, hz=0.5)
    steps[7] = None  # a sample taken before the first step
    vals[3, 2] = np.nan  # NaN, +Inf and -Inf are kept, in both formats
    vals[10, 7] = np.inf
    vals[11, 14] = -np.inf
    devices = ["gpu0", "gpu1", "gpu2"]
    _write(tmp_path / "old", _device_records(t, steps, vals, devices, NAMES))
    _write(tmp_path / "new", _node_records(t, steps, vals, devices, NAMES, ticks_per_record=7))
    frames = {}
    for run in ("old", "new"):
        with open_store(None) as store:
            report = ingest(store, [tmp_path / run], chunk_bytes=4096)  # many chunks: tiles merge across them
            assert report.malformed == 0 and report.telemetry_points == vals.size
            frames[run] = (_sorted(_rows(store)), _tile_frame(store))
    pd.testing.assert_frame_equal(frames["old"][0], frames["new"][0])
    pd.testing.assert_frame_equal(frames["old"][1], frames["new"][1])
    got = frames["new"][0]
    assert got["value"].isna().sum() == 1 and np.isposinf(got["value"]).sum() == 1
    assert np.isneginf(got["value"]).sum() == 1 and got["step"].isna().sum() == 3 * 6  # every point of that tick


def _tile_frame(store):
    df = (
        store.cursor()
        .execute(
            "SELECT rank, device, name, width, tile, n, p_first.t AS first_t, p_first.value AS first_v, "
            "p_last.t AS last_t, p_last.value AS last_v, p_min.value AS min_v, p_min.t AS min_t, "
            "p_max.value AS max_v, p_max.t AS max_t, p_nan.t AS nan_t FROM telemetry_tiles"
        )
        .df()
    )
    return df.sort_values(["rank", "device", "name", "width", "tile"], ignore_index=True)


def test_tiles_equal_a_brute_force_aggregation_of_the_rows(tmp_path):
    rng = np.random.default_rng(2)
    t, steps, vals = _sample(rng, 900, gpus=2, hz=1.0)
    t = t + rng.uniform(0, 0.4, len(t))  # ticks off the whole second, as a real sampler's are
    vals[100:140, 2] = np.nan
    _write(tmp_path / "r", _node_records(t, steps, vals, ["gpu0", "gpu1"], NAMES, decimals=DECIMALS), rank=0)
    _write(tmp_path / "r", _node_records(t, steps, vals[:, :6], ["gpu0"], NAMES, decimals=DECIMALS), rank=1)
    with open_store(None) as store:
        ingest(store, [tmp_path / "r"], chunk_bytes=16384)
        raw = store.cursor().execute("SELECT rank, device, name, wall_time, value FROM telemetry").df()
        got = _tile_frame(store)
    parts = []
    for w in schema.TELEMETRY_TILES:
        df = raw.assign(width=np.int32(w), tile=np.floor(raw["wall_time"] / w).astype("int64"))
        df = df.sort_values("wall_time", kind="stable")
        g = df.groupby(["rank", "device", "name", "width", "tile"])
        finite = df[~df["value"].isna()].groupby(["rank", "device", "name", "width", "tile"])["value"]
        parts.append(
            pd.DataFrame(
                {
                    "n": g.size(),
                    "first_t": g["wall_time"].first(),
                    "last_t": g["wall_time"].last(),
                    "min_v": finite.min(),
                    "max_v": finite.max(),
                    "nan_t": df[df["value"].isna()]
                    .groupby(["rank", "device", "name", "width", "tile"])["wall_time"]
                    .min(),
                }
            ).reset_index()
        )
    want = pd.concat(parts).sort_values(["rank", "device", "name", "width", "tile"], ignore_index=True)
    assert len(got) == len(want) and len(got) > 100
    for col in ("rank", "device", "name", "width", "tile", "n"):
        assert (got[col].to_numpy() == want[col].to_numpy()).all(), col
    for col in ("first_t", "last_t", "min_v", "max_v", "nan_t"):
        np.testing.assert_array_equal(got[col].to_numpy("float64"), want[col].to_numpy("float64"), err_msg=col)


def test_a_one_second_spike_on_one_gpu_survives_nine_days_at_1hz(tmp_path):
    """One sample of 900 W among 1.5M at 1 Hz: every downsampled view keeps it, at its own time."""
    ticks, gpus = 9 * 86_400, 2
    rng = np.random.default_rng(3)
    t = T0 + np.arange(ticks, dtype=np.float64)
    vals = np.round(400 + 10 * rng.standard_normal((ticks, gpus)), 1)
    spike = 5 * 86_400 + 1234
    vals[spike, 1] = 900.0
    edge = 200_000  # T0 + 200,000 s is a multiple of 64 s: the first sample after a zoom's last whole tile
    vals[edge, 0] = 950.0
    steps = (np.arange(ticks) // 20).tolist()
    blocks = _node_records(t, steps, vals, ["gpu0", "gpu1"], ["power_w"], ticks_per_record=300)
    _write(tmp_path / "r", blocks)
    with open_store(None) as store:
        ingest(store, [tmp_path / "r"])
        for buckets in (200, 2000):  # 3888 s buckets read 64 s tiles; 388 s buckets too; both keep it
            v = ranks.telemetry_view(store, "r", "power_w", buckets=buckets)
            gpu1 = list(v.rows["label"]).index("node0/gpu1")
            assert np.nanmax(v.cells[gpu1]) == 900.0 and np.nanmax(v.cells) == 950.0
        v = ranks.telemetry_view(store, "r", "power_w", buckets=100)  # 7776 s buckets: the 4096 s tiles
        assert np.nanmax(v.cells[list(v.rows["label"]).index("node0/gpu1")]) == 900.0
        for x_range in (None, (T0 + spike - 50_000.5, T0 + spike + 70_000.3)):  # zoom: raw rows at the edges
            s = queries.telemetry_series(store, "r", "power_w", buckets=500, x_range=x_range)
            assert len(s) < 5 * 500 * gpus + 20  # bounded, not 1.5M rows
            top = s.loc[s[s["device"] == "gpu1"]["value"].idxmax()]
            assert (top["value"], top["wall_time"], top["device"], top["step"]) == (
                900.0,
                t[spike],
                "gpu1",
                spike // 20,
            )
        zoom = (T0 + 1000.5, T0 + edge + 0.3)  # ragged edges on both sides: raw rows there, tiles inside
        v = ranks.telemetry_view(store, "r", "power_w", buckets=200, x_range=zoom)
        assert np.nanmax(v.cells) == 950.0 and v.outliers["label"].iat[0] == "node0/gpu0"
        s = queries.telemetry_series(store, "r", "power_w", buckets=200, x_range=zoom)
        assert s["value"].max() == 950.0 and s["wall_time"].max() == T0 + edge
        short = queries.telemetry_series(store, "r", "power_w", x_range=(T0 + spike - 100, T0 + spike + 100))
        assert len(short) == 201 * gpus  # a short window: its raw rows


def test_the_recorder_writes_a_node_block_and_keeps_old_telemetry_calls(tmp_path):
    os.environ.pop("RANK", None)
    run = logbook.init(tmp_path / "rec", name="rec", flush_every=60, telemetry_every=60)
    for i in range(4):
        block = {
            f"gpu{g}": {"power_w": 400.123456 + g + i, "temp_c": 70.4, "energy_j": 1234.56789 + i} for g in range(8)
        }
        block["gpu7"].pop("temp_c")  # a field one GPU does not report: absent, not NaN
        block["gpu3"]["power_w"] = float("nan")
        run.telemetry_block(block, step=i, decimals={"power_w": 1, "temp_c": 0})
    run.telemetry({"util_pct": 5.0}, device="cpu")  # the per-device call still works
    with pytest.raises(TypeError):
        run.telemetry_block({"gpu0": {"power_w": "hot"}})
    with pytest.raises(ValueError):
        run.telemetry_block({"": {"power_w": 1.0}})
    with pytest.raises(ValueError):
        run.telemetry_block({"gpu0": {"power_w": 1.0}}, decimals={"power_w": 99})
    run.finish()
    lines = [records.decode(x) for x in run.path.read_bytes().splitlines()]
    node = [r for r in lines if r["k"] == "telemetry" and "devices" in r]
    assert len(node) == 1 and len(node[0]["rows"]) == 4  # held across flushes, one record
    with open_store(None) as store:
        ingest(store, [tmp_path / "rec"])
        df = _rows(store)
    gpu = df[df["device"] != "cpu"]
    assert len(gpu) == 4 * (8 * 3 - 1)
    p = gpu[(gpu["name"] == "power_w") & (gpu["device"] == "gpu0")].sort_values("step")
    assert p["value"].tolist() == [400.1, 401.1, 402.1, 403.1]  # rounded as asked
    e = gpu[(gpu["name"] == "energy_j") & (gpu["device"] == "gpu5")].sort_values("step")
    assert e["value"].tolist() == [1234.56789 + i for i in range(4)]  # not listed in decimals: exact
    assert gpu[(gpu["name"] == "temp_c")]["value"].eq(70.0).all()
    assert gpu[(gpu["device"] == "gpu3") & (gpu["name"] == "power_w")]["value"].isna().all()
    assert df[df["device"] == "cpu"]["value"].tolist() == [5.0]


@pytest.mark.parametrize(
    "bad",
    [
        {"names": ["p"], "devices": ["gpu0"], "t0": T0, "rows": [[0, -1, 1.0]]},  # negative step
        {"names": ["p"], "devices": ["gpu0"], "t0": T0, "rows": [[0, 1.5, 1.0]]},  # fractional step
        {"names": ["p"], "devices": ["gpu0"], "t0": T0, "rows": [[0, 2.0**63, 1.0]]},  # beyond BIGINT
        {"names": ["p"], "devices": ["gpu0"], "t0": "x", "rows": [[0, 1, 1.0]]},
        {"names": ["p"], "devices": ["gpu0"], "t0": T0, "rows": [[None, 1, 1.0]]},
        {"names": ["p"], "devices": [], "t0": T0, "rows": [[0, 1, 1.0]]},
        {"names": ["p"], "devices": ["gpu0", "gpu1"], "t0": T0, "rows": [[0, 1, 1.0]]},
        {"names": ["p"], "devices": ["gpu0"], "t0": T0, "rows": [[0, 1, None]], "nonfinite": [[0, 1, "NaN"]]},
        {"names": ["p"], "device": "gpu0", "rows": [[T0, -5, 1.0]]},  # the old shape keeps its step check
    ],
)
def test_a_bad_node_block_is_one_malformed_line_and_hides_nothing(tmp_path, bad):
    good = records.encode_telemetry(["gpu0"], ["p"], [T0 + 1], [3], [[2.5]])
    _write(tmp_path / "r", [good, records.encode_block({"k": "telemetry", **bad}), good])
    with open_store(None) as store:
        report = ingest(store, [tmp_path / "r"])
        assert report.malformed == 1, report.describe()
        assert _rows(store)["value"].tolist() == [2.5, 2.5]
        assert store.cursor().execute("SELECT sum(n) FROM telemetry_tiles WHERE width = 64").fetchone()[0] == 2
