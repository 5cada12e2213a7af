"""`midflight autopilot replay | run | approve | list`: the autopilot's front door (logbook/oncall/autopilot.py).

Why a module of its own: the command group is added to the main parser like the importers' and exporters'
(`add_parser`), so logbook/cli.py stays the one place that lists the commands.
"""

from __future__ import annotations

import json
import signal
import threading
import time


def cmd_replay(args) -> int:
    from midflight.logbook.oncall import autopilot
    from midflight.logbook.store.ingest import open_run

    policies = autopilot.load_policies(args.policy)
    store, _ = open_run(args.path, args.store, progress=False)
    from midflight.logbook.store import queries

    runs = queries.run_ids(store)
    if not runs:
        raise ValueError(f"{args.path}: no run in it")
    out = []
    for run in runs:
        for r in autopilot.replay(store, run, policies):
            out.append(
                {
                    "run": run,
                    "detected_step": r.detected_step,
                    "after_rollback": r.after_rollback,
                    **r.decision.to_dict(),
                }
            )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    if not out:
        print("the policies would have done nothing on this run (no incident matched)")
    for d in out:
        head = f"[{d['run']}] step {d['detected_step']}: {d['policy']} ({d['mode']})"
        later = " (after an earlier rollback: the run would have gone another way)" if d["after_rollback"] else ""
        if d["held"]:
            print(f"{head} held on {d['incident']}: {d['held']}{later}")
        else:
            print(f"{head} on {d['incident']}: {d['action']} {json.dumps(d['params'])}{later}")
    return 0


def cmd_run(args) -> int:
    from midflight.logbook.oncall import autopilot

    policies = autopilot.load_policies(args.policy)
    stop = threading.Event()
    before = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _follow(args, autopilot, policies, stop)
    finally:
        for sig, handler in before.items():  # in-process callers (tests) get their handlers back
            signal.signal(sig, handler)


def _follow(args, autopilot, policies, stop) -> int:
    from midflight.logbook.record import layout

    waited = time.monotonic()
    while not layout.is_run_dir(args.path):  # started before the run: wait for its first segment
        if stop.is_set() or time.monotonic() - waited > args.wait:
            raise FileNotFoundError(f"{args.path!r} is not a midflight run directory (waited {args.wait:g}s)")
        stop.wait(0.2)
    pilot = autopilot.Pilot(args.path, policies, store=_store(args), log=lambda m: print(m, flush=True))
    print(
        f"autopilot on {args.path}: {len(policies)} policies, every {args.every:g}s (Ctrl-C or SIGTERM to stop)",
        flush=True,
    )
    while not stop.is_set():
        pilot.tick()
        status = pilot.status()
        if args.until_finished and status in ("finished", "crashed") and not autopilot.pending_autopilot(pilot.run_dir):
            print(f"the run is {status}: autopilot stops", flush=True)
            break
        stop.wait(args.every)
    return 0


def cmd_approve(args) -> int:
    from midflight.logbook.oncall import autopilot

    got = autopilot.approve(args.path, args.id, author=args.author, decline=args.decline)
    if args.decline:
        print(f"proposal {args.id} declined by {args.author}")
    else:
        print(
            f"proposal {args.id} approved by {args.author}: intervention {got['request']} requested ({got['action']})"
        )
    return 0


def cmd_list(args) -> int:
    from midflight.logbook.oncall import autopilot

    entries = autopilot.Ledger(args.path).entries()
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    for e in entries:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["t"])) if e["t"] else "?"
        what = f"{e['action']} {json.dumps(e['params'])}"
        print(f"{e['id']} {t} step {e['step']} {e['policy']} ({e['mode']}, {e['status']}): {what}")
    return 0


def _store(args):
    if args.store is None:
        return None
    from midflight.logbook.store.database import open_store

    return open_store(args.store)


def add_parser(sub) -> None:
    sp = sub.add_parser("autopilot", help="apply the restart playbook under a policy (replay, run, approve, list)")
    ap = sp.add_subparsers(dest="autopilot_command", required=True)

    p = ap.add_parser("replay", help="what a policy would have done on a finished or imported run")
    p.add_argument("path", help="a run directory, or a folder of run directories")
    p.add_argument("--policy", required=True, help="the policy file (TOML)")
    p.add_argument("--store", default=None, help="DuckDB store file (default: PATH/.midflight/store.duckdb)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_replay)

    p = ap.add_parser("run", help="follow a live run and act on its incidents under the policy")
    p.add_argument("path", help="the run directory")
    p.add_argument("--policy", required=True, help="the policy file (TOML)")
    p.add_argument("--store", default=None, help="DuckDB store file (default: PATH/.midflight/store.duckdb)")
    p.add_argument("--every", type=float, default=2.0, help="seconds between looks at the run")
    p.add_argument("--until-finished", action="store_true", help="stop once the run has finished or crashed")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the run directory to appear")
    p.set_defaults(func=cmd_run)

    p = ap.add_parser("approve", help="approve (or --decline) a proposal of an `ask` policy")
    p.add_argument("path", help="the run directory")
    p.add_argument("id", help="the proposal id (`midflight autopilot list`)")
    p.add_argument("--author", required=True, help="who approves: kept in the audit record")
    p.add_argument("--decline", action="store_true", help="refuse the proposal instead")
    p.set_defaults(func=cmd_approve)

    p = ap.add_parser("list", help="the autopilot's proposals and what became of them")
    p.add_argument("path", help="the run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
