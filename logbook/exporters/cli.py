"""`midflight export FORMAT RUN_DIR -o OUT`: the exporters from a shell.

RUN_DIR is one run directory, or a folder of runs with `--run NAME` (the run id is the folder's
name). A mistake a user can make (an unknown format, a missing directory, a run that is not
there, -o naming the wrong kind of path) is a ValueError / FileNotFoundError, which
`logbook.cli.main` prints as one `error:` line with exit code 2. Progress goes to stderr, one
plain line per step, so stdout carries only the paths written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from midflight.logbook.exporters.bundle import FORMATS


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "export",
        help="write a run's logbook (markdown, html) or its data (parquet, csv)",
        description="markdown: OUT is the .md file, its charts go to OUT_files/. html: OUT is one self-contained "
        "page. parquet, csv: OUT is a directory of tables (metrics, events, telemetry, segments, annotations, "
        "interventions, incidents).",
    )
    # FORMAT is checked by the exporter, not by argparse choices, so a bad one is the usual one-line error, exit 2
    sp.add_argument("format", metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    sp.add_argument("path", metavar="RUN_DIR", help="a run directory, or a folder of runs with --run")
    sp.add_argument("-o", "--output", required=True, metavar="OUT", help="file (markdown, html) or directory")
    sp.add_argument("--run", default=None, help="the run to export when RUN_DIR is a folder of runs")
    sp.add_argument("--store", default=None, help="DuckDB store file (default: RUN_DIR/.midflight/store.duckdb)")
    sp.add_argument("--region", default=None, help="grid for CO2eq: a country (name or ISO-3) or cloud region")
    sp.add_argument("--intensity", type=float, default=None, metavar="G_PER_KWH", help="grid intensity override")
    sp.add_argument("--pue", type=float, default=None, help="datacentre PUE (default 1.0: IT energy only)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    sp.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from midflight.logbook.exporters.bundle import check_format, export
    from midflight.logbook.store import queries
    from midflight.logbook.store.ingest import open_run

    fmt = check_format(args.format)
    started = time.monotonic()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    progress(f"reading {args.path}")
    store, report = open_run(Path(args.path), args.store, progress=not args.quiet)
    if store.note:
        print(f"note: {store.note}", file=sys.stderr)
    for error in report.errors:
        print(f"warning: {error}", file=sys.stderr)
    runs = queries.run_ids(store)
    if args.run is not None:
        run = args.run
        if run not in runs:
            raise ValueError(f"no run named {run!r} in {args.path} (runs: {', '.join(runs) or 'none'})")
    else:
        here = Path(args.path).resolve().name
        if here in runs:
            run = here
        elif len(runs) == 1:
            run = runs[0]
        else:
            raise ValueError(f"{args.path} holds {len(runs)} runs: pick one with --run ({', '.join(runs)})")
    paths = export(
        store,
        run,
        fmt,
        Path(args.output),
        region=args.region,
        intensity_g_per_kwh=args.intensity,
        pue=args.pue,
        progress=progress,
    )
    progress(f"done: {len(paths)} file{'s' if len(paths) != 1 else ''}")
    for p in paths:
        print(p)
    return 0
