"""Start Streamlit with the dashboard warm: its modules imported and its store opened before the first visit.

`midflight dashboard` runs `midflight dashboard.serve run app/streamlit_app.py ... -- --runs PATH ...`.
Without this, the first visit after a start paid for the imports (pandas, plotly, duckdb),
the store's first ingest and the detector worker's start: seconds, not the ~1 s of a later visit.
"""

from __future__ import annotations

import sys

import pandas  # noqa: F401  (the heavy imports happen now, not in the first page run)
import plotly.graph_objects  # noqa: F401
from streamlit.web import cli

from midflight.app.source import (
    Source,
    preload,
    roots_from,
)  # not app.data/context: their st.cache_* need the runtime first


def main() -> int:
    argv = sys.argv[1:]
    roots = roots_from(argv[argv.index("--") + 1 :] if "--" in argv else [], {})
    print("midflight: reading the run logs into the store…", flush=True)
    preload(Source(roots))
    return cli.main(argv, prog_name="streamlit", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
