"""Effective history across restarts and rollbacks, superseded data, x-axes and M4 downsampling."""

import math

import numpy as np
import pytest

from midflight import logbook
from midflight.logbook.store import ingest as ingest_mod
from midflight.logbook.store import lineage, memory, queries
from midflight.logbook.store.ingest import ingest


def _segment(run_dir, seg_id, steps, *, value, resume_step=None, parent=None, finish="completed"):
    run = logbook.init(run_dir, segment_id=seg_id, resume_step=resume_step, parent=parent, flush_every=60)
    for s in steps:
        run.log({"loss": value(s), "tokens": s * 2048}, step=s)
    run.finish(finish)


def _store(*run_dirs):
    store = memory()
    ingest(store, list(run_dirs))
    return store


def test_opt_rollback_12_07_to_12_08(tmp_path):
    """12.07 ran to 13,459; 12.08 resumed from 13,251 (the OPT-175B logbook's overlap)."""
    run = tmp_path / "opt"
    _segment(run, "12.06", range(12_000, 12_101), value=lambda s: 2.0)
    _segment(run, "12.07", range(12_101, 13_460), value=lambda s: 2.1, resume_step=12_100, finish="crashed")
    _segment(run, "12.08", range(13_252, 13_600), value=lambda s: 1.9, resume_step=13_251)
    store = _store(run)
    segs = queries.segments(store, "opt")
    assert segs["parent_id"].tolist()[1:] == ["12.06", "12.07"]  # inferred from resume steps
    eff = queries.series(store, "opt", "loss")
    assert eff["step"].is_unique and eff["step"].is_monotonic_increasing
    assert eff["step"].min() == 12_000 and eff["step"].max() == 13_599
    by_step = dict(zip(eff["step"], eff["segment_id"]))
    assert by_step[13_251] == "12.07" and by_step[13_252] == "12.08" and by_step[12_100] == "12.06"
    sup = queries.series(store, "opt", "loss", which="superseded")
    assert set(sup["segment_id"]) == {"12.07"}
    assert (sup["step"].min(), sup["step"].max(), len(sup)) == (13_252, 13_459, 208)
    everything = queries.series(store, "opt", "loss", which="all")
    assert len(everything) == len(eff) + len(sup)
    assert queries.effective_steps(store, "opt") == 13_600 - 12_000


def test_abandoned_branch_is_superseded_even_where_nothing_overwrote_it(tmp_path):
    run = tmp_path / "r"
    _segment(run, "a", range(1, 1001), value=lambda s: 1.0)
    _segment(run, "b", range(501, 601), value=lambda s: 9.0, resume_step=500, finish="crashed")
    _segment(run, "c", range(801, 1201), value=lambda s: 0.5, resume_step=800, parent="a")
    store = _store(run)
    eff = queries.series(store, "r", "loss")
    assert "b" not in set(eff["segment_id"])
    assert eff.loc[eff.step == 550, "segment_id"].item() == "a"
    assert [s.segment_id for s in lineage.effective_path(queries.lineage_segments(store, "r"))] == ["a", "c"]
    segs = queries.segments(store, "r").set_index("segment_id")
    assert segs.loc["b", "effective"] == False and segs.loc["c", "effective"] == True  # noqa: E712


def test_lineage_survives_missing_and_cyclic_parents():
    segs = [lineage.Seg("x", "y", 10, 2.0, 11), lineage.Seg("y", "x", 5, 1.0, 6)]
    assert [s.segment_id for s in lineage.effective_path(segs)] == ["y", "x"]
    orphan = [lineage.Seg("x", "gone", 10, 2.0, 11)]
    assert lineage.effective_ranges(orphan) == [lineage.Range("x", 10, lineage.POS_INF)]


def test_x_axes_tokens_and_time_and_multi_run(tmp_path):
    _segment(tmp_path / "r1", "s", range(1, 51), value=lambda s: 1.0 / s)
    _segment(tmp_path / "r2", "s", range(1, 31), value=lambda s: 2.0 / s)
    store = _store(tmp_path / "r1", tmp_path / "r2")
    tok = queries.series(store, "r1", "loss", x="tokens")
    assert tok["x"].tolist() == [s * 2048 for s in range(1, 51)]
    t = queries.series(store, "r1", "loss", x="time")
    assert t["x"].is_monotonic_increasing and t["x"].iloc[0] > 1e9
    zoom = queries.series(store, "r1", "loss", x_range=(10, 19))
    assert zoom["step"].tolist() == list(range(10, 20))
    assert len(queries.series(store, "r2", "loss")) == 30  # runs in one store stay apart
    with pytest.raises(ValueError):
        queries.series(store, "r1", "loss", x="epochs")


@pytest.mark.slow
def test_m4_keeps_a_single_spike_and_a_nan_among_10m_points():
    store = memory()
    n, spike_step, nan_step = 10_000_000, 7_654_321, 1_234_567
    store.cursor().execute(
        """INSERT INTO metrics SELECT 'big', 's', 0, i, 'loss',
               CASE WHEN i = ? THEN 1e6 WHEN i = ? THEN 'nan'::DOUBLE ELSE 2.0 + sin(i / 1000.0) END, i
           FROM range(?) t(i)""",
        [spike_step, nan_step, n],
    )
    store.cursor().execute(
        "INSERT INTO segments (run_id, segment_id, config, config_diff, has_header) "
        "VALUES ('big', 's', '{}', '{}', true)"
    )
    store.cursor().execute("INSERT INTO runs VALUES ('big', '', 'big')")
    cur = store.cursor()
    for path in ("raw rows", "ingest-time tiles"):
        if path == "ingest-time tiles":  # build the tiles exactly as ingest does, from the same rows
            cur.execute(
                "CREATE TEMP VIEW _mf_metrics AS SELECT run_id, segment_id, rank, step, name, value, wall_time "
                "FROM metrics"
            )
            cur.execute(ingest_mod._TILES_SQL)
            assert cur.execute("SELECT sum(n) FROM metric_tiles").fetchone()[0] == n
        down = queries.series(store, "big", "loss", buckets=1000)
        assert len(down) <= 5 * 1000, path
        assert down["value"].max() == 1e6 and down.loc[down["value"].idxmax(), "step"] == spike_step, path
        assert down.loc[down["value"].isna(), "step"].tolist() == [nan_step], path
        assert down["value"].min() == pytest.approx(1.0, abs=1e-6), path
        assert down["x"].is_monotonic_increasing, path
    # Zoom re-queries at full resolution: every point in a small range comes back.
    zoom = queries.series(store, "big", "loss", buckets=1000, x_range=(spike_step - 1000, spike_step + 1000))
    assert len(zoom) == 2001 and zoom["value"].max() == 1e6


def test_m4_small_series_is_returned_whole(tmp_path):
    _segment(tmp_path / "r", "s", range(100), value=lambda s: math.sin(s))
    store = _store(tmp_path / "r")
    got = queries.series(store, "r", "loss", buckets=50)
    assert len(got) == 100
    np.testing.assert_allclose(got["value"], [math.sin(s) for s in range(100)])


def _reference_m4(df, origin: int, width: int) -> set:
    """M4 by hand with numpy/pandas over raw points: first, last, min, max and first NaN per bucket."""
    out = set()
    df = df.assign(bucket=(df["step"] - origin) // width)
    for _, g in df.groupby("bucket"):
        g = g.sort_values("step")
        pick = [g.iloc[0], g.iloc[-1]]
        finite = g[~g["value"].isna()]
        if len(finite):
            pick += [finite.loc[finite["value"].idxmin()], finite.loc[finite["value"].idxmax()]]
        nans = g[g["value"].isna()]
        if len(nans):
            pick.append(nans.iloc[0])
        out |= {(int(p["step"]), "nan" if math.isnan(p["value"]) else p["value"]) for p in pick}
    return out


def test_tile_path_equals_m4_of_the_raw_effective_points(tmp_path):
    """Downsampling from ingest-time tiles gives exactly the M4 of the raw points, across a mid-tile rollback."""
    rng = np.random.default_rng(7)
    run = tmp_path / "r"
    values = {}
    for seg, steps, resume in (("a", range(0, 120_000), None), ("b", range(90_038, 200_000), 90_037)):
        v = rng.normal(2.0, 0.1, len(steps))
        v[rng.choice(len(steps), 5, replace=False)] = 1e3  # spikes
        v[rng.choice(len(steps), 3, replace=False)] = np.nan
        values[seg] = dict(zip(steps, v))
        _segment(run, seg, steps, value=values[seg].__getitem__, resume_step=resume)
    store = memory()
    ingest(store, [run], chunk_bytes=1 << 20)  # many chunks: tiles are merged across chunk boundaries
    assert store.cursor().execute("SELECT sum(n) FROM metric_tiles WHERE name = 'loss'").fetchone()[0] == 229_962
    raw = queries.series(store, "r", "loss")
    for buckets, x_range in ((300, None), (200, (12_345, 187_654))):
        got = queries.series(store, "r", "loss", buckets=buckets, x_range=x_range)
        pts = raw if x_range is None else raw[(raw.step >= x_range[0]) & (raw.step <= x_range[1])]
        origin = (int(pts.step.min()) >> 8) << 8
        width = math.ceil((int(pts.step.max()) - origin + 1) / buckets / 256) * 256
        want = _reference_m4(pts, origin, width)
        have = {(int(s), "nan" if math.isnan(v) else v) for s, v in zip(got["step"], got["value"])}
        assert have == want
        assert len(got) < len(pts) / 50
        assert set(got.loc[got.step > 90_037, "segment_id"]) == {"b"}
