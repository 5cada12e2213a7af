"""Straggler and hardware detection across ranks, scored against labelled synthetic fleets.

Why: a detector is only as good as its precision and recall on cases whose answer is known. Each
case is a synchronous fleet written by benchmarks.fleet_run (every rank waits for the slowest, so
step_time_s is equal everywhere; compute_s, wait_s and GPU telemetry tell the ranks apart) with one
labelled incident, or none, or all four at once; it is ingested into a real store and detected
through report.incidents' fleet inputs and analysis.stragglers. Scored per kind:

- recall: planted incidents found with the right identity (rank; host; host and device);
- precision: found incidents of the kind that match a planted one;
- delay: detected_step - the planted onset (steps);
- false alarms: incidents on ranks/devices that had nothing planted.

The naive baseline is the same robust across-rank test on step_time_s (a per-rank step-time z-score):
it should find nothing, because synchronous step times are equal.

    python benchmarks/bench_stragglers.py --nodes 124 --steps 120 --seeds 2 --telemetry-hz 0.025
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fleet_run import write_fleet_run  # noqa: E402
from midflight.logbook.analysis import stragglers  # noqa: E402
from midflight.logbook.report import incidents  # noqa: E402
from midflight.logbook.store import ingest, ranks  # noqa: E402

CASES = {
    "clean": (),
    "straggler": ("straggler",),
    "slow_node": ("slow_node",),
    "throttled_gpu": ("throttled_gpu",),
    "silent_gpu": ("silent_gpu",),
    "all four": ("straggler", "slow_node", "throttled_gpu", "silent_gpu"),
}
KIND = {
    "straggler": "straggler",
    "slow_node": "slow_node",
    "throttled_gpu": "throttled_gpu",
    "silent_gpu": "device_silent",
}
KINDS = list(KIND.values())


def _matches(inc, plant: str, t: dict) -> bool:
    d = inc.detail
    if inc.kind != KIND[plant]:
        return False
    if plant == "straggler":
        return d.get("rank") == t["rank"]
    if plant == "slow_node":
        return d.get("host") == t["host"]
    return (d.get("host"), d.get("device")) == (t["host"], t["device"])


def _culprit_ranks(truth: dict) -> set:
    out = set()
    for plant in KIND:
        t = truth.get(plant)
        if t:
            out |= set(t.get("ranks", [t.get("rank")]))
    return out


def run_case(root: Path, name: str, plant: tuple, seed: int, a) -> dict:
    run_dir = root / f"{name.replace(' ', '_')}-{seed}" / "fleet"
    t0 = time.perf_counter()
    truth = write_fleet_run(run_dir, nodes=a.nodes, steps=a.steps, telemetry_hz=a.telemetry_hz, plant=plant,
                            seed=seed, synchronous=True, name="fleet")  # fmt: skip
    t1 = time.perf_counter()
    store, _ = ingest.open_run(run_dir)
    t2 = time.perf_counter()
    try:
        frame = incidents.fleet_frame(store, "fleet")
        t3 = time.perf_counter()
        found = stragglers.fleet_incidents(frame)
        t4 = time.perf_counter()
        view = ranks.metric_view(
            store, "fleet", "step_time_s", buckets=len(frame["compute"]["x_lo"]), cell="min", top=0
        )
        naive = stragglers.slow_ranks(stragglers.Grid.from_dict(incidents._grid(view)), metric="step_time_s")
    finally:
        store.close()
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    return {"truth": truth, "found": found, "naive": naive, "write_s": t1 - t0, "ingest_s": t2 - t1,
            "read_s": t3 - t2, "detect_s": t4 - t3}  # fmt: skip


def score(results: list[dict], key: str) -> dict:
    """Per kind: planted, tp, found, delays; and false alarms on clean ranks/devices over all runs."""
    per = {k: {"planted": 0, "tp": 0, "found": 0, "delays": []} for k in KINDS}
    false_alarms, clean_ranks = 0, 0
    for r in results:
        truth, found = r["truth"], r[key]
        culprits = _culprit_ranks(truth)
        clean_ranks += truth["ranks"] - len(culprits)
        for inc in found:
            if inc.kind in per:
                per[inc.kind]["found"] += 1
        for plant, kind in KIND.items():
            t = truth.get(plant)
            if not t:
                continue
            per[kind]["planted"] += 1
            hit = [i for i in found if _matches(i, plant, t)]
            if hit:
                per[kind]["tp"] += 1
                per[kind]["delays"].append(min(i.detected_step for i in hit) - t["first_step"])
        for inc in found:
            d = inc.detail
            ids = set(d.get("ranks") or []) | ({d["rank"]} if d.get("rank") is not None else set())
            if ids and not ids & culprits:
                false_alarms += 1
    return {"per": per, "false_alarms": false_alarms, "clean_ranks": clean_ranks}


def _fmt(x, pct=True):
    return "n/a" if x is None else (f"{x:.0%}" if pct else str(x))


def table(det: dict, naive: dict) -> str:
    lines = [
        "| kind | planted | recall | precision | delay (steps, max) | naive recall | naive precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in KINDS:
        p, n = det["per"][k], naive["per"][k]
        rec = p["tp"] / p["planted"] if p["planted"] else None
        prec = p["tp"] / p["found"] if p["found"] else None
        nrec = n["tp"] / n["planted"] if n["planted"] else None
        nprec = n["tp"] / n["found"] if n["found"] else None
        delay = f"{sorted(p['delays'])[len(p['delays']) // 2]} ({max(p['delays'])})" if p["delays"] else "-"
        naive_kind = k in ("straggler", "slow_node")
        lines.append(
            f"| {k} | {p['planted']} | {_fmt(rec)} | {_fmt(prec)} | {delay} | "
            f"{_fmt(nrec) if naive_kind else 'n/a'} | {_fmt(nprec) if naive_kind else 'n/a'} |"
        )
    lines.append(
        f"\nfalse alarms on clean ranks/devices: {det['false_alarms']} of {det['clean_ranks']:,} clean rank-runs "
        f"(naive: {naive['false_alarms']})"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=124)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--telemetry-hz", type=float, default=0.025)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    a = ap.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}: choose from {', '.join(CASES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stragglers-") as tmp:
        for seed in range(a.seeds):
            for name in cases:
                r = run_case(Path(tmp), name, CASES[name], seed, a)
                results.append(r)
                kinds = ", ".join(f"{i.kind}@{i.detected_step}" for i in r["found"]) or "none"
                took = f"write {r['write_s']:.1f} s, ingest {r['ingest_s']:.1f} s, read {r['read_s']:.2f} s"
                print(f"{name:>14} seed {seed}: found {kinds} | {took}, detect {r['detect_s']:.3f} s", flush=True)
    world = a.nodes * 8
    print(f"\n{world} ranks x {a.steps} steps, telemetry {a.telemetry_hz} Hz at a 20 s step, {a.seeds} seed(s)\n")
    print(table(score(results, "found"), score(results, "naive")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
