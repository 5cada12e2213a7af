"""A Plotly chart that updates in place: a Live refresh never blanks it.

st.plotly_chart derives its element's identity from the figure (Streamlit 1.67:
`key_as_main_identity=False`, the spec hashed in), so each refresh with new data mounts a new chart and
the old one disappears until the new one is drawn. A components-v2 element with a `key` keeps its identity
whatever its data (`key_as_main_identity=True`), and Streamlit calls its module again with the same
parentElement: `app/chart_frontend/chart.js` applies each new figure to the plot already there with
`Plotly.react`, so the last image stays on screen until the new one is drawn. It is drawn in the page
itself (`isolate_styles=False`, no iframe), as st.plotly_chart is. A click or a box selection comes back
as the `selection` trigger, which runs the `on_change` callback.

plotly.js is the plotly.min.js that the installed plotly package ships: no CDN, the dashboard works
offline. It is loaded once per page from the dashboard's own server: a v1 component (never drawn) whose
directory holds a copy of it, since Streamlit serves a v1 component's files by URL and only from inside
its directory (a symlink that leaves it is refused); the copy is made once, into a cache directory named
by a hash of the file. (v2 serves files only from a packaged `asset_dir`; inlining 4.8 MB of JavaScript
per chart, or one iframe with its own plotly.js per chart, cost seconds per page.)
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import plotly
import plotly.io as pio
import streamlit as st
import streamlit.components.v1 as components_v1
import streamlit.components.v2 as components_v2

NAME = "midflight_chart"  # the chart element's component name
FILES = "midflight_files"  # the v1 component that serves plotly.min.js
MODULE = Path(__file__).with_name("chart_frontend") / "chart.js"


def plotly_js() -> Path:
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "midflight"


@functools.cache
def frontend_dir() -> str:
    """A directory holding plotly.min.js, prepared once per plotly.js version (temp + rename)."""
    js = plotly_js()
    digest = hashlib.sha256(js.read_bytes()).hexdigest()[:16]
    for root in (cache_root(), Path(tempfile.gettempdir()) / f"midflight-{os.getuid()}"):
        target = root / f"plotly-{digest}"
        if (target / "plotly.min.js").is_file():
            return str(target)
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".plotly-", dir=root))
            shutil.copyfile(js, work / "plotly.min.js")
            try:
                work.rename(target)
            except OSError:  # another server prepared it first
                shutil.rmtree(work, ignore_errors=True)
            if (target / "plotly.min.js").is_file():
                return str(target)
        except OSError:
            continue  # an unwritable cache: try the next place
    raise RuntimeError(f"cannot prepare plotly.js for the charts in {cache_root()} or the temp directory")


@functools.cache
def module_js() -> str:
    return MODULE.read_text()


def spec_of(fig) -> str:
    """The figure as JSON for Plotly.react, without plotly.py's default template (the chart themes it)."""
    d = fig.to_plotly_json()
    d["layout"] = {k: v for k, v in d.get("layout", {}).items() if k != "template"}
    return pio.json.to_json_plotly(d)


def plotly_js_url(files_name: str) -> str:
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return "/" + "/".join(p for p in (base, "component", files_name, "plotly.min.js") if p)


def plotly_chart(fig, *, key: str, on_change=None, config: dict | None = None):
    """Draw `fig` in the element named `key`, updating the plot already there. `on_change` runs on a click
    or a box selection; it reads `st.session_state[key]["selection"]` ({"points": [...], "box": [...]})."""
    files = components_v1.declare_component(FILES, path=frontend_dir())  # registers the URL with this runtime
    chart = components_v2.component(NAME, js=module_js(), isolate_styles=False)
    data = {"spec": spec_of(fig), "config": config or {}, "key": key, "plotly_js": plotly_js_url(files.name)}
    return chart(key=key, data=data, on_selection_change=on_change or (lambda: None))
