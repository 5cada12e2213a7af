"""`midflight`: ingest, summary, annotate and intervene from a shell.

Errors a user can cause (a missing run directory, a bad step) are one-line
messages and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
import warnings

from midflight.logbook import values
from midflight.logbook.record import annotations, layout


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (the usage block is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (a grid intensity or a PUE of nan or inf means nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]} is not a finite number > 0")
    return value


def _step(text: str) -> int:
    """An argparse type: a step, by logbook.values' one rule (an integer in [0, 2**63))."""
    try:
        return values.step(int(text) if text.strip().isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _open(args):
    from midflight.logbook import open_run

    return open_run(args.path, args.store, progress=not args.quiet)


def cmd_ingest(args) -> int:
    store, report = _open(args)
    if store.note:
        print(f"note: {store.note}", file=sys.stderr)
    print(report.describe())
    if not args.follow:
        return 0
    from midflight.logbook.store.follow import Follower

    def show(rep):
        print(f"{time.strftime('%H:%M:%S')} +{rep.records:,} records ({rep.metric_points:,} points)", flush=True)

    follower = Follower(store, args.path, poll=args.poll, rescan_every=args.rescan, on_ingest=show)
    # Our own handlers, not Python's default: a process started in the background by a non-interactive
    # shell inherits SIGINT ignored, and a service manager stops a follower with SIGTERM.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    follower.start()
    how = "polling" if follower.poll else "inotify"
    print(f"following {args.path} ({how}, rescan every {args.rescan:g}s; Ctrl-C or SIGTERM to stop)", flush=True)
    while not stop.is_set():  # a timed wait: the signal handler runs between waits
        stop.wait(1.0)
    follower.stop()
    return 0


def cmd_summary(args) -> int:
    from midflight.logbook.present.summary import format_text
    from midflight.logbook.report.summary import summarize
    from midflight.logbook.store import queries

    store, report = _open(args)
    if store.note:
        print(f"note: {store.note}", file=sys.stderr)
    for error in report.errors:
        print(f"warning: {error}", file=sys.stderr)
    runs = queries.run_ids(store) if args.run is None else [args.run]
    out = []
    for run in runs:
        if run not in queries.run_ids(store):
            raise ValueError(f"no run named {run!r} in {args.path}")
        out.append(
            summarize(
                store,
                run,
                region=args.region,
                intensity_g_per_kwh=args.intensity,
                pue=args.pue,
                tdp_w=args.tdp_w,
                step_s=args.step_seconds,
            )
        )
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1, default=str, allow_nan=False))
    else:
        print("\n\n".join(format_text(s) for s in out))
    return 0


def cmd_annotate(args) -> int:
    if not layout.is_run_dir(args.path):
        raise ValueError(f"{args.path!r} is not a midflight run directory (no '{layout.SEGMENTS}/' folder)")
    ann_id = annotations.annotate(
        args.path, step=args.step, text=args.text, kind=args.kind, step_end=args.step_end, author=args.author
    )
    print(f"annotation {ann_id} added at step {args.step}")
    return 0


def _dest(name: str) -> str:
    return f"iv_{name}"  # apart from the subcommand's own path, note and author


def add_intervention_flags(sp: argparse.ArgumentParser) -> None:
    """One flag per entry of the intervention vocabulary: a value for its first parameter, or a switch."""
    from midflight.logbook.record import interventions

    for name, knob in interventions.VOCABULARY.items():
        if knob.params:
            kind = knob.params[0].type
            sp.add_argument(knob.flag, dest=_dest(name), type=kind, default=None, metavar=knob.metavar, help=knob.help)
        else:
            sp.add_argument(knob.flag, dest=_dest(name), action="store_true", help=knob.help)


def _intervention_from_args(args) -> tuple[str, dict]:
    """The one action the flags ask for; a rewind may carry any rewind changes with it."""
    from midflight.logbook.record import interventions

    table = interventions.VOCABULARY
    given = {name: getattr(args, _dest(name), None) for name in table}
    given = {name: value for name, value in given.items() if value is not None and value is not False}
    rewind = interventions.REWIND
    if rewind in given:
        step = given.pop(rewind)
        other = [name for name in given if not table[name].rewind_change]
        if other:
            raise ValueError(f"{table[rewind].flag} cannot be combined with {table[other[0]].flag}")
        return rewind, {table[rewind].params[0].name: step, "changes": given}
    rewind_only = [name for name in given if not table[name].action]
    if rewind_only:
        flag = table[rewind_only[0]].flag
        raise ValueError(f"{flag} only applies with {table[rewind].flag} {table[rewind].metavar}")
    if len(given) != 1:
        raise ValueError(
            f"give exactly one change (or {table[rewind].flag} {table[rewind].metavar} with any of them); got "
            + (", ".join(table[name].flag for name in given) if given else "none")
        )
    ((name, value),) = given.items()
    knob = table[name]
    return name, ({knob.params[0].name: value} if knob.params else {})


def cmd_intervene(args) -> int:
    from midflight.logbook.record import interventions

    action, params = _intervention_from_args(args)
    req_id = interventions.request(args.path, action, params, note=args.note, author=args.author)
    print(f"intervention {req_id} requested: {action} {json.dumps(params)} (pending until the run applies it)")
    return 0


def cmd_watch(args) -> int:
    from midflight.logbook.oncall import channels
    from midflight.logbook.oncall.watch import watch

    cfg = channels.load_config(args.alerts) if args.alerts else channels.Config(channels=[])
    for path in args.paths:
        layout.discover_runs(path)  # a missing or foreign path: one error line before anything else
    if not cfg.channels:
        print("note: no channels configured: alerts go to each run's alerts.jsonl only", file=sys.stderr)
    stop = threading.Event()
    if not args.once:  # our own handlers (see cmd_ingest): a service manager stops a watcher with SIGTERM
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"watching {len(args.paths)} run(s) every {cfg.poll_s:g} s (Ctrl-C or SIGTERM to stop)", flush=True)
    return watch(args.paths, cfg, once=args.once, stop=stop)


def cmd_alerts(args) -> int:
    from midflight.logbook.oncall import alerts

    if not layout.is_run_dir(args.path):
        raise ValueError(f"{args.path!r} is not a midflight run directory (no '{layout.SEGMENTS}/' folder)")
    if args.alerts_command == "ack":
        alerts.ack(args.path, args.alert_id, author=args.author, note=args.note)
        print(f"alert {args.alert_id} acknowledged: it will not be re-sent")
        return 0
    rows = alerts.history(args.path)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if not rows:
        print("no alerts")
    for r in rows:
        state = r["state"] + (f", acked by {r['acked_by']}" if r["acked"] else "")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["opened"]))
        print(f"{r['id']}  {when}  {str(r['severity']):6}  {state:28}  {r['title']}")
    return 0


def build_parser(prog: str = "midflight", epilog: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="midflight logbook: ingest and read run logs", epilog=epilog)
    sub = p.add_subparsers(dest="command", required=True)

    def add_path(sp):
        sp.add_argument("path", help="a run directory, or a folder of run directories")
        sp.add_argument("--store", default=None, help="DuckDB store file (default: PATH/.midflight/store.duckdb)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    sp = sub.add_parser("ingest", help="bring the store up to date with the run's logs")
    add_path(sp)
    sp.add_argument("--follow", action="store_true", help="keep ingesting as the run writes")
    sp.add_argument(
        "--poll",
        action="store_true",
        default=None,
        help="poll instead of inotify (chosen automatically on NFS, Lustre, CIFS, ...)",
    )
    sp.add_argument("--rescan", type=float, default=2.0, help="seconds between safety rescans in --follow")
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("summary", help="what happened in a run")
    add_path(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--run", default=None, help="only this run of a folder of runs")
    sp.add_argument("--region", default=None, help="grid for CO2eq: a country (name or ISO-3) or cloud region")
    sp.add_argument(
        "--intensity", type=_positive_number, default=None, metavar="G_PER_KWH", help="grid intensity override"
    )
    sp.add_argument("--pue", type=_positive_number, default=None, help="datacentre PUE (default 1.0: IT energy only)")
    sp.add_argument(
        "--tdp-w",
        type=_positive_number,
        default=None,
        metavar="WATTS",
        help="per-rank TDP for segments without power telemetry: a labelled nameplate estimate (default: none)",
    )
    sp.add_argument(
        "--step-seconds",
        type=_positive_number,
        default=None,
        metavar="S",
        help="goodput ledger: time per step to assume where a run logged none (default: a published figure)",
    )
    sp.set_defaults(func=cmd_summary)

    sp = sub.add_parser("annotate", help="pin a note to a step")
    sp.add_argument("path", help="the run directory")
    sp.add_argument("--step", type=_step, required=True)
    sp.add_argument("--step-end", type=_step, default=None, help="end of a step range")
    sp.add_argument("--text", required=True)
    sp.add_argument("--kind", default="note", choices=annotations.KINDS)
    sp.add_argument("--author", default=None)
    sp.set_defaults(func=cmd_annotate)

    sp = sub.add_parser("intervene", help="ask a live run to change course (audited)")
    sp.add_argument("path", help="the run directory")
    add_intervention_flags(sp)
    sp.add_argument("--note", required=True, help="why: kept in the audit record")
    sp.add_argument("--author", default=None)
    sp.set_defaults(func=cmd_intervene)

    sp = sub.add_parser("watch", help="alert on incidents, crashes, restarts, stalls and interventions (headless)")
    sp.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories to watch")
    sp.add_argument("--alerts", default=None, metavar="TOML", help="channels and thresholds (see docs: Alerts)")
    sp.add_argument("--once", action="store_true", help="one pass: update the alerts, deliver, exit")
    sp.set_defaults(func=cmd_watch)

    sp = sub.add_parser("alerts", help="list or acknowledge a run's alerts")
    asub = sp.add_subparsers(dest="alerts_command", required=True)
    ap = asub.add_parser("list", help="every alert of the run, newest first")
    ap.add_argument("path", help="the run directory")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=cmd_alerts)
    ap = asub.add_parser("ack", help="acknowledge an alert (stops re-sends)")
    ap.add_argument("path", help="the run directory")
    ap.add_argument("alert_id")
    ap.add_argument("--author", default=None)
    ap.add_argument("--note", default=None)
    ap.set_defaults(func=cmd_alerts)

    from midflight.logbook.exporters.cli import add_parser as add_export
    from midflight.logbook.importers.cli import add_parser as add_import
    from midflight.logbook.oncall.cli import add_parser as add_autopilot

    add_import(sub)
    add_export(sub)
    add_autopilot(sub)
    return p


def main(argv=None, prog: str = "midflight", epilog: str | None = None) -> int:
    args = build_parser(prog, epilog).parse_args(argv)
    warnings.simplefilter("ignore", category=UserWarning)  # the CLI prints its own notes
    try:
        return args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, PermissionError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
