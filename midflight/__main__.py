"""The `midflight` command: the dashboard, the trainer and every logbook subcommand under one name.

    midflight dashboard [PATH ...] [--demo] [--port N]   the dashboard (python -m midflight.app)
    midflight train --model tiny --run-dir runs/x        the instrumented trainer (python -m midflight.trainer)
    midflight ingest|summary|import|export|annotate|intervene|...   the logbook CLI (python -m midflight.logbook)

A command whose extra is not installed (`pip install midflight` is the Recorder alone) says which one to add.
"""

from __future__ import annotations

import runpy
import sys

EPILOG = "also: `midflight dashboard [PATH ...]` (the dashboard) and `midflight train ...` (the trainer)"
# the package a command may miss -> the extra that brings it
EXTRAS = {
    "duckdb": "store",
    "pandas": "store",
    "numpy": "store",
    "pyarrow": "store",
    "watchdog": "store",
    "tqdm": "store",
    "matplotlib": "store",
    "streamlit": "dashboard",
    "plotly": "dashboard",
    "torch": "trainer",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in EXTRAS:
            raise
        command = argv[0] if argv else "midflight"
        print(
            f"error: `midflight {command}` needs {top}, which is not installed: pip install 'midflight[{EXTRAS[top]}]'",
            file=sys.stderr,
        )
        return 2


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "dashboard":
        from midflight.app.__main__ import main as dashboard

        return dashboard(argv[1:])
    if argv and argv[0] == "train":  # exactly `python -m midflight.trainer`, whose exit skips Gloo's finalization
        sys.argv = ["midflight train", *argv[1:]]
        runpy.run_module("midflight.trainer", run_name="__main__", alter_sys=True)
    from midflight.logbook.cli import main as logbook_cli

    return logbook_cli(argv, prog="midflight", epilog=EPILOG)


if __name__ == "__main__":
    sys.exit(main())
