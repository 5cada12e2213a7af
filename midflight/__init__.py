"""midflight: an observability dashboard and logbook for large training runs.

    import midflight
    run = midflight.init("runs/opt", config=cfg)        # on any subset of ranks; never a collective
    midflight.log({"loss": loss, "lr": lr}, step=step)
    midflight.log({"w": midflight.Histogram(w), "sample": midflight.Text(s)}, step=step)
    midflight.finish()

The distribution is one namespace, `midflight`, so that installing it never shadows another
project's top-level package (PyPI's `Logbook` imports as `logbook`, Coqui's as `trainer`).
Its parts are `midflight.logbook` (record -> store -> analysis -> report -> present), `midflight.app`
(the dashboard) and `midflight.trainer` (the instrumented OPT trainer), plus the integrations
(`midflight.integrations.*`) and a W&B-compatible module (`midflight.wandb`).

In a checkout the parts live at the repository's top (`logbook/`, `app/`, `trainer/`, the layout
docs/architecture.md draws) and this package's path is extended to it; a wheel carries them inside
`midflight/` (setup.py maps them there). Either way they are imported only as `midflight.<part>`.
Importing `midflight` loads the write side only: no DuckDB, pandas, torch or Streamlit.
"""

import os as _os

if not _os.path.isdir(_os.path.join(__path__[0], "logbook")):  # a checkout: the parts sit one folder up
    __path__.append(_os.path.dirname(_os.path.abspath(__path__[0])))

from midflight.logbook import (  # noqa: E402
    ANNOTATION_KINDS,
    Histogram,
    Run,
    Text,
    annotate,
    event,
    finish,
    init,
    log,
    open_run,
)

__version__ = "0.2.0"
__all__ = [
    "ANNOTATION_KINDS",
    "Histogram",
    "Run",
    "Text",
    "annotate",
    "event",
    "finish",
    "init",
    "log",
    "open_run",
    "__version__",
]
