"""A Plotly chart that updates in place: a Live refresh never blanks it.

st.plotly_chart derives its element's identity from the figure (Streamlit 1.67:
`key_as_main_identity=False`, the spec hashed in), so each refresh with new data mounts a new chart and
the old one disappears before the new one is drawn. A v1 custom component with a `key` keeps its identity
across argument changes (`key_as_main_identity={"name", "url"}`), so its iframe, and the Plotly plot in it,
live as long as the element: each new figure is applied with `Plotly.react`, and the last image stays on
screen until the new one is drawn. A click or a box selection comes back as the widget's value.

The frontend is `app/chart_frontend/index.html` and the plotly.min.js that the installed plotly package
ships: no CDN, the dashboard works offline. Streamlit serves a component's files only from inside its
directory (symlinks that leave it are refused), so both are copied once into a cache directory named by
a hash of their contents.
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
import streamlit.components.v1 as components

NAME = "midflight_chart"  # the iframe's title ends with it: tests and benchmarks find the charts by it
FRONTEND = Path(__file__).with_name("chart_frontend") / "index.html"


def plotly_js() -> Path:
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "midflight"


@functools.cache
def frontend_dir() -> str:
    """The component's directory: index.html and plotly.min.js, prepared once per content (temp + rename)."""
    html, js = FRONTEND.read_bytes(), plotly_js()
    digest = hashlib.sha256(html + js.read_bytes()).hexdigest()[:16]
    for root in (cache_root(), Path(tempfile.gettempdir()) / f"midflight-{os.getuid()}"):
        target = root / f"chart-{digest}"
        if (target / "index.html").is_file() and (target / "plotly.min.js").is_file():
            return str(target)
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".chart-", dir=root))
            (work / "index.html").write_bytes(html)
            shutil.copyfile(js, work / "plotly.min.js")
            try:
                work.rename(target)
            except OSError:  # another server prepared it first
                shutil.rmtree(work, ignore_errors=True)
            if (target / "plotly.min.js").is_file():
                return str(target)
        except OSError:
            continue  # an unwritable cache: try the next place
    raise RuntimeError(f"cannot prepare the chart component in {cache_root()} or the temp directory")


def spec_of(fig) -> str:
    """The figure as JSON for Plotly.react, without plotly.py's default template (the component themes it)."""
    d = fig.to_plotly_json()
    d["layout"] = {k: v for k, v in d.get("layout", {}).items() if k != "template"}
    return pio.json.to_json_plotly(d)


def plotly_chart(fig, *, key: str, on_change=None, config: dict | None = None):
    """Draw `fig` in the element named `key`, updating the plot already there; returns the last selection
    ({"selection": {"points": [...], "box": [...]}, "n": ...}) or None. `on_change` runs on a new selection."""
    component = components.declare_component(NAME, path=frontend_dir())  # registers with this session's runtime
    return component(spec=spec_of(fig), config=config or {}, key=key, on_change=on_change, default=None)
