"""`midflight import FORMAT PATH... --run-dir DIR`."""

from __future__ import annotations

import sys

from midflight.logbook.importers import FORMATS, import_logs


def cmd_import(args) -> int:
    report = import_logs(
        args.format,
        args.paths,
        args.run_dir,
        name=args.name,
        tz=args.tz,
        replace=args.replace,
        progress=not args.quiet,
        world_size=args.world_size,
    )
    print(report.describe())
    print(f"open it with: midflight dashboard {args.run_dir}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "import",
        help="make a midflight run from another trainer's logs",
        description="Import logs that midflight did not record. Re-importing is safe: nothing is duplicated, "
        "and a log that has grown since is brought up to date.",
    )
    sp.add_argument("format", choices=(*FORMATS, "auto"), help="the logs' format; auto tells it from the first file")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="log files, in launch order (or a TensorBoard folder)")
    sp.add_argument("--run-dir", required=True, help="the run directory to write (created if missing)")
    sp.add_argument("--name", default=None, help="the run's display name (default: the run directory's name)")
    sp.add_argument(
        "--tz", default=None, help="time zone the log's timestamps are in, e.g. Europe/Paris (default: UTC)"
    )
    sp.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="devices the job ran on (logs rarely say): sizes the nameplate energy estimate",
    )
    sp.add_argument(
        "--replace", action="store_true", help="rewrite a source that changed in place since its last import"
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_import)
