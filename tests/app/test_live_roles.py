"""The Live page for runs that use their own metric names: role charts first, then a searchable panel grid.

Real Recorder runs (Hugging Face's names, `train/...` names, a histogram logged as quantiles, a run with
many names of its own), a real store, the real page driven headless with Streamlit's AppTest.
"""

import base64

import numpy as np
import pytest

from midflight import logbook
from midflight.app import grid
from midflight.app.source import ENV_RUNS
from midflight.logbook.record.histograms import QUANTILES, quantile_name

from .test_pages import plotly_specs, start

pytestmark = pytest.mark.usefixtures("sources")


def _run(root, name, rows):
    with logbook.init(root / name, name=name) as run:
        for step in range(1, 41):
            run.log(rows(step), step=step)


def _values(y) -> list[float]:
    """A trace's values, plain or as Plotly's typed array ({"dtype", "bdata"})."""
    if isinstance(y, dict):
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=np.dtype(y["dtype"])).tolist()
    return list(y)


def titles(at) -> list[str]:
    return [s["layout"]["title"]["text"] for s in plotly_specs(at)]


@pytest.fixture
def hf_run(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _run(
        root,
        "hf",
        lambda s: {
            "loss": 3.0 - s / 100,
            "learning_rate": 1e-4,
            "grad_norm": 0.5,
            "epoch": s / 40,
            "attn/entropy": 1.0 + s / 1000,
            **({"eval_loss": 2.9 - s / 100} if s % 10 == 0 else {}),
        },
    )
    monkeypatch.setenv(ENV_RUNS, str(root))
    return root


def test_hugging_face_names_get_the_role_charts_and_a_grid(hf_run):
    at = start("live", run="hf")
    got = titles(at)
    assert sorted(got[:3]) == ["grad norm", "learning rate (learning_rate)", "loss"], got  # role charts first
    loss = plotly_specs(at)[0]
    assert {t["name"] for t in loss["data"]} >= {"loss", "eval loss"}  # eval loss on the loss chart
    assert "attn/entropy" in got and "epoch" in got  # the grid: every other metric, one panel each
    assert "learning_rate" not in got and "eval_loss" not in got  # a role metric is not drawn twice
    assert [s.value for s in at.subheader][0] == "Other metrics (2)"
    at.text_input(key="live:grid:filter").input("ENTROPY").run()
    got = titles(at)
    assert "attn/entropy" in got and "epoch" not in got
    assert sorted(got[:3]) == ["grad norm", "learning rate (learning_rate)", "loss"]  # the role charts stay


def test_slash_names_keep_the_users_name_in_the_title(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _run(root, "slash", lambda s: {"train/loss": 3.0 - s / 100, "train/learning_rate": 1e-4, "step_time_ms": 120.0})
    monkeypatch.setenv(ENV_RUNS, str(root))
    got = titles(start("live", run="slash"))
    assert got[0] == "loss (train/loss)"
    assert "learning rate (train/learning_rate)" in got
    assert "step time per rank (ms, step_time_ms)" in got  # milliseconds stay milliseconds, and say so


def test_a_histogram_family_is_one_panel_with_bands(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _run(
        root,
        "hist",
        lambda s: {"loss": 1.0, **{quantile_name("act", q): q / 10 + s / 100 for q in QUANTILES}},
    )
    monkeypatch.setenv(ENV_RUNS, str(root))
    at = start("live", run="hist")
    specs = {s["layout"]["title"]["text"]: s for s in plotly_specs(at)}
    panel = specs["act (p50, p25–p75, p5–p95)"]
    assert not [t for t in specs if t.startswith("act/p")]  # no panel per quantile
    names = [t.get("name") for t in panel["data"]]
    assert "p50" in names and "p5–p95" in names and "p25–p75" in names
    median = next(t for t in panel["data"] if t.get("name") == "p50")
    assert _values(median["y"])[0] == pytest.approx(5.0 + 1 / 100)  # p50 at step 1


def test_many_names_are_capped_and_the_filter_reaches_the_rest(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    n = grid.CAP + 36
    _run(root, "wide", lambda s: {"loss": 1.0, **{f"layer{i:03d}/norm": float(i) for i in range(n)}})
    monkeypatch.setenv(ENV_RUNS, str(root))
    at = start("live", run="wide")
    panels = [t for t in titles(at) if t.startswith("layer")]
    assert len(panels) == grid.CAP
    assert "36 more: refine the filter" in [c.value for c in at.caption]
    at.text_input(key="live:grid:filter").input("layer059").run()
    assert [t for t in titles(at) if t.startswith("layer")] == ["layer059/norm"]


def test_panels_group_families_and_filter_on_every_word():
    names = ["loss", "w/p5", "w/p50", "w/p95", "x/p25", "eval/acc", "eval/f1", "train/acc"]
    found = grid.panels(names, drawn={"loss"})
    assert [p.title for p in found] == ["eval/acc", "eval/f1", "train/acc", "w", "x/p25"]  # no median: plain
    assert found[3].quantiles == {5: "w/p5", 50: "w/p50", 95: "w/p95"}
    assert [p.title for p in grid.panels(names, {"loss"}, "acc EVAL")] == ["eval/acc"]
    shown, more = grid.visible(found, cap=2)
    assert len(shown) == 2 and more == 3


def test_runs_table_shows_the_loss_whatever_it_is_called(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _run(root, "megatron", lambda s: {"lm loss": 3.0 - s / 100, "learning-rate": 1e-4})
    monkeypatch.setenv(ENV_RUNS, str(root))
    at = start()
    table = next(df.value for df in at.dataframe if "loss" in df.value.columns)
    assert table.set_index("run").loc["megatron", "loss"] == pytest.approx(3.0 - 40 / 100)
