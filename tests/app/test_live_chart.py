"""The in-place chart (app/live_chart.py): plotly.js prepared once from the installed plotly and served by
the dashboard itself, a module that loads nothing else, and the figure handed over without plotly.py's theme."""

import json
import re
from pathlib import Path

import plotly.graph_objects as go
import pytest

from midflight.app import live_chart


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    live_chart.frontend_dir.cache_clear()
    yield tmp_path
    live_chart.frontend_dir.cache_clear()


def test_the_served_directory_holds_a_copy_of_the_packaged_plotly_js(fresh):
    d = Path(live_chart.frontend_dir())
    assert d.parent == fresh / "cache" / "midflight"
    assert (d / "plotly.min.js").read_bytes() == live_chart.plotly_js().read_bytes()
    assert not (d / "plotly.min.js").is_symlink()  # Streamlit refuses a symlink that leaves the directory
    mtime = (d / "plotly.min.js").stat().st_mtime_ns
    live_chart.frontend_dir.cache_clear()
    assert Path(live_chart.frontend_dir()) == d  # a second server reuses it
    assert (d / "plotly.min.js").stat().st_mtime_ns == mtime
    assert [p.name for p in d.parent.iterdir()] == [d.name]  # no half-built directory left behind


def test_an_unwritable_cache_falls_back_to_the_temp_directory(fresh, monkeypatch):
    (fresh / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setattr(live_chart.tempfile, "tempdir", str(fresh / "tmp"))
    (fresh / "tmp").mkdir()
    d = Path(live_chart.frontend_dir())
    assert d.parent.parent == fresh / "tmp" and (d / "plotly.min.js").is_file()


def test_the_module_loads_nothing_from_the_network():
    js = live_chart.module_js()
    assert not re.findall(r"https?://", js)
    assert not re.findall(r"\bimport\b|fetch\(|XMLHttpRequest", js)  # its one script is the URL it is given
    assert "s.src = src" in js


def test_plotly_js_is_asked_for_at_the_dashboards_own_component_route():
    assert live_chart.plotly_js_url("midflight.app.live_chart.midflight_files") == (
        "/component/midflight.app.live_chart.midflight_files/plotly.min.js"
    )


def test_the_spec_keeps_the_figure_and_leaves_the_theme_to_the_chart():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3.0, 4.0], customdata=[10, 20]))
    fig.update_layout(title={"text": "loss"}, height=240, dragmode="select")
    spec = json.loads(live_chart.spec_of(fig))
    assert "template" not in spec["layout"]
    assert spec["layout"]["height"] == 240 and spec["layout"]["dragmode"] == "select"
    assert spec["data"][0]["x"] == [1, 2] and spec["data"][0]["customdata"] == [10, 20]
