"""The autopilot's headline scenario (issue 18): a divergence a plain run does not survive, rescued by policy.

Three 2-rank CPU runs of the real trainer (`torchrun -m midflight.trainer`, gloo), same seed and data:

  clean      no fault
  plain      `--inject diverge@150-152`: three batches of bad data, and from the first an LR surge (x300,
             doubling every 10 steps) that lasts until the segment ends; nobody intervenes: the loss climbs
             until it is NaN and the run crashes on `faults.nan_tolerance`
  autopilot  the same fault, with `midflight autopilot run RUN --policy POLICY` beside it (a separate process,
             as in production): it sees the loss spike, and under the `auto` policy below it rewinds to the
             last complete checkpoint at least 50 steps before the onset, skips the batches through the spike
             window and halves the LR, all through the intervention channel; the run finishes healthy.

A slow last rank (`slow-rank`, 60 ms a step) gives the autopilot, which polls every 0.5 s on a shared 2-core
machine, time to act before the plain run's divergence becomes NaN (about 140 steps after the onset).

    python -m benchmarks.autopilot_rescue [--out docs/autopilot_rescue.png] [--json results.json] [--keep DIR]
    bash scripts/demo.sh --autopilot    # the same, runs kept in runs/autopilot-demo, then the dashboard on them

prints the three final losses and writes the chart of the three loss curves (the effective history: the
autopilot run's abandoned branch is drawn dashed). tests/trainer/test_autopilot_rescue.py runs the same
scenario (plain and autopilot) as the headline test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONSET = 150
STEPS = 300
SURGE = 300  # the diverge fault's LR factor at its onset (it doubles every 10 steps after)
POLICY = """\
version = 1

[[policy]]
name = "rollback-spike"
mode = "auto"
max_per_hour = 2
cooldown_s = 600
[policy.when]
kind = ["loss_spike", "grad_norm_spike"]
severity = "medium"
[policy.then]
action = "rollback"
before = 50        # the last complete checkpoint at least 50 steps before the onset
skip = "window"    # skip the batches from that checkpoint through the spike window
lr_factor = 0.5    # and halve the LR on the way back
"""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def trainer_cmd(run_dir: Path, inject: bool, steps: int = STEPS, onset: int = ONSET, slow_s: float = 0.06) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=0",
        "-m",
        "midflight.trainer",
        "--run-dir",
        str(run_dir),
        "--model",
        "tiny",
        "--data.seq_len=64",
        "--data.batch_size=8",
        "--telemetry.enabled=false",
        "--log.print_every=10",
        f"--steps={steps}",
        "--checkpoint.every=25",
        "--checkpoint.keep_latest=50",
        f"--faults.slow_rank_s={slow_s}",
        f"--faults.spike_lr_factor={SURGE}",
        f"--inject=slow-rank@1-{steps}",
        *([f"--inject=diverge@{onset}-{onset + 2}"] if inject else []),
    ]


def run_scenario(run_dir: Path, *, inject: bool, autopilot: bool, timeout: float = 400, **shape) -> dict:
    """Run one arm to its end; returns what it recorded (final loss, status, segments, interventions, curve)."""
    run_dir = Path(run_dir)
    pilot = None
    if autopilot:
        policy = run_dir.parent / f"{run_dir.name}-policy.toml"
        policy.write_text(POLICY)
        cmd = [sys.executable, "-m", "midflight.logbook", "autopilot", "run", str(run_dir), "--policy", str(policy)]
        cmd += ["--every", "0.5", "--until-finished", "--store", str(run_dir.parent / f"{run_dir.name}-pilot.duckdb")]
        pilot = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
    t0 = time.monotonic()
    try:
        train = subprocess.run(
            trainer_cmd(run_dir, inject, **shape), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout
        )
    finally:
        pilot_out = ""
        if pilot is not None:
            try:
                pilot_out, _ = pilot.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                pilot.terminate()
                pilot_out, _ = pilot.communicate(timeout=30)
    wall = time.monotonic() - t0
    return {
        **recorded(run_dir),
        "returncode": train.returncode,
        "wall_s": round(wall, 1),
        "pilot_log": pilot_out,
        "trainer_tail": (train.stdout + train.stderr)[-3000:],
    }


def recorded(run_dir: Path) -> dict:
    from midflight import logbook
    from midflight.logbook.store import queries

    store, _ = logbook.open_run(run_dir, store_path=run_dir.parent / f"{run_dir.name}.duckdb")
    (run,) = queries.run_ids(store)
    eff = queries.series(store, run, "loss", rank=0, which="effective")
    gone = queries.series(store, run, "loss", rank=0, which="superseded")
    curve = {int(s): float(v) for s, v in zip(eff["step"], eff["value"])}
    abandoned = {int(s): float(v) for s, v in zip(gone["step"], gone["value"])}
    finite = [v for _, v in sorted(curve.items()) if math.isfinite(v)]
    last = sorted(curve)[-10:]
    segs = queries.segments(store, run)
    iv = queries.interventions(store, run)
    return {
        "status": queries.run_status(store, run),
        "last_step": max(curve) if curve else None,
        "final_loss": finite[-1] if finite else None,
        "final_loss_mean10": sum(curve[s] for s in last) / len(last) if last else None,
        "segments": [str(r) for r in segs["end_reason"]],
        "interventions": iv[["action", "author", "status", "applied_step", "params", "note"]].to_dict("records"),
        "curve": curve,
        "abandoned": abandoned,
    }


def chart(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    colors = {"clean": "#2a7", "plain": "#c33", "autopilot": "#36c"}
    labels = {"clean": "clean run", "plain": "divergence, no autopilot", "autopilot": "divergence, autopilot on"}
    for arm, res in results.items():
        xs = sorted(s for s, v in res["curve"].items() if math.isfinite(v))
        ax.plot(xs, [res["curve"][s] for s in xs], color=colors[arm], lw=1.2, label=labels[arm])
        if res["abandoned"]:
            xs = sorted(s for s, v in res["abandoned"].items() if math.isfinite(v))
            ax.plot(
                xs,
                [res["abandoned"][s] for s in xs],
                color=colors[arm],
                lw=1,
                ls="--",
                alpha=0.6,
                label="autopilot run: abandoned branch",
            )
    ax.axvline(ONSET, color="#888", lw=0.8, ls=":")
    ax.text(ONSET + 2, ax.get_ylim()[1] * 0.9 if ax.get_yscale() == "linear" else 10, "fault", color="#666")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title("A self-feeding divergence at step 150: rescued by the autopilot (2 ranks, CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "autopilot_rescue.png"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the three runs in DIR (for the dashboard)")
    args = ap.parse_args(argv)
    results = {}
    if args.keep and Path(args.keep).exists() and any(Path(args.keep).iterdir()):
        ap.error(f"--keep {args.keep}: the folder is not empty")
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        for arm, inject, pilot in (("clean", False, False), ("plain", True, False), ("autopilot", True, True)):
            res = run_scenario(where / arm, inject=inject, autopilot=pilot)
            results[arm] = res
            print(
                f"{arm:9} status {res['status']:8} last step {res['last_step']} final loss {res['final_loss']} "
                f"(mean of last 10 logged: {res['final_loss_mean10']}) segments {res['segments']} {res['wall_s']}s",
                flush=True,
            )
    for iv in results["autopilot"]["interventions"]:
        print(
            f"autopilot intervention: {iv['action']} by {iv['author']} {iv['status']} at {iv['applied_step']}: "
            f"{iv['params']}"
        )
    chart(results, Path(args.out))
    print(f"chart: {args.out}")
    if args.json:
        slim = {k: {kk: vv for kk, vv in v.items() if kk not in ("curve", "abandoned")} for k, v in results.items()}
        Path(args.json).write_text(json.dumps(slim, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
