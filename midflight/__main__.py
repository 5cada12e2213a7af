"""The `midflight` command: the dashboard, the trainer and every logbook subcommand under one name.

midflight dashboard [PATH ...] [--demo] [--port N]   the dashboard (midflight dashboard)
midflight train --model tiny --run-dir runs/x        the instrumented trainer (python -m midflight.trainer)
midflight ingest|summary|import|export|annotate|intervene|...   the logbook CLI (midflight)
"""

from __future__ import annotations

import runpy
import sys

EPILOG = "also: `midflight dashboard [PATH ...]` (the dashboard) and `midflight train ...` (the trainer)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
