"""How fast do other trainers' logs become a midflight run? Import, then ingest, per format.

Most users arrive with a finished job's logs, so `midflight import` followed by the
first dashboard open (one ingest) is their time-to-first-chart. For each format this script
writes a realistic log of N steps (Megatron iteration lines as BLOOM-176B printed them,
metaseq JSON `train_inner` lines, a W&B history CSV, a TensorBoard event file with the
same 10 scalars per step) and times:

- **import**: `logbook.importers.import_logs` (parse + write the run directory);
- **ingest**: the first `ingest()` of that run into a fresh DuckDB store;
- a **floor** for the text formats: reading every line and splitting it (`str.split("|")`),
  the least any parser must do, so the ratio says what parsing costs on top of reading;
- the **peer** for TensorBoard: TensorBoard's own `EventAccumulator(path).Reload()` on the
  same file (what TensorBoard pays to load it), so the ratio compares like with like.

Not a pass/fail test: docs/benchmarks.md interprets the table.

    python benchmarks/bench_import.py              # 100k steps per format
    python benchmarks/bench_import.py --steps 20000
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midflight.logbook.importers import import_logs  # noqa: E402
from midflight.logbook.record import layout  # noqa: E402
from midflight.logbook.store import open_store  # noqa: E402
from midflight.logbook.store.ingest import ingest  # noqa: E402


def megatron(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(1, n + 1):
            loss = 2.5 + 0.3 * math.sin(i / 50)
            f.write(
                f"[default7]: iteration {i:>8}/  115311 | consumed samples: {i * 2048:>12} | consumed tokens: "
                f"{i * 2048 * 2048:>14} | elapsed time per iteration (s): 105.22 | learning rate: 5.969E-05 | "
                f"global batch size:  2048 | lm loss: {loss:.6E} | grad norm: 0.174 | num zeros: 0.0 | "
                "number of skipped iterations:   0 | number of nan iterations:   0 | samples per second: 19.463 | "
                "TFLOPs: 149.02 |\n"
            )


def metaseq(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(1, n + 1):
            rec = {
                "epoch": 1, "loss": f"{15 - i / n:.3f}", "ppl": f"{2 ** (15 - i / n):.1f}", "wps": "739601",
                "ups": "0.71", "wpb": "1.04858e+06", "bsz": "512", "num_updates": str(i), "lr": "5.6e-07",
                "gnorm": "16.783", "clip": "100", "train_wall": "1", "wall": str(75 + i),
            }  # fmt: skip
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1.668e9 + 2 * i))
            f.write(f"slurm_procid 0 : {stamp} | INFO | train_inner | {json.dumps(rec)}\n")


NAMES = ("loss", "grad_norm", "lr", "loss_scale", "tokens_per_s", "step_time_s", "actv_norm", "ppl", "mfu", "tokens")


def wandb_csv(path: Path, n: int) -> None:
    with open(path, "w") as f:
        f.write("_step,_runtime,_timestamp," + ",".join(f"train/{k}" for k in NAMES) + "\n")
        for i in range(n):
            vals = ",".join(f"{(i % 97) * 0.01 + j:.5f}" for j in range(len(NAMES)))
            f.write(f"{i},{i * 0.5:.1f},{1.7e9 + i * 0.5:.1f},{vals}\n")


def tensorboard(path: Path, n: int) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(path))
    for i in range(n):
        for j, k in enumerate(NAMES):
            w.add_scalar(f"train/{k}", (i % 97) * 0.01 + j, i)
    w.close()
    return path


def floor(path: Path) -> float:
    t = time.perf_counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line.split("|")
    return time.perf_counter() - t


def peer_tensorboard(path: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = time.perf_counter()
    EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    args = ap.parse_args()
    n = args.steps
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    rows = []
    try:
        cases = [
            ("megatron", "megatron.log", megatron),
            ("metaseq", "metaseq.log", metaseq),
            ("csv", "history.csv", wandb_csv),
            ("tensorboard", "tb", tensorboard),
        ]
        for fmt, name, make in cases:
            src = work / name
            print(f"[{fmt}] writing {n:,} steps ...", file=sys.stderr, flush=True)
            make(src, n)
            size = sum(p.stat().st_size for p in ([src] if src.is_file() else src.rglob("*")) if p.is_file())
            run_dir = work / f"run-{fmt}"
            print(f"[{fmt}] importing ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            report = import_logs(fmt, [src], run_dir)
            t_import = time.perf_counter() - t
            store = open_store(str(work / f"{fmt}.duckdb"))
            t = time.perf_counter()
            ing = ingest(store, layout.discover_runs(run_dir))
            t_ingest = time.perf_counter() - t
            store.close()
            if fmt == "tensorboard":
                base, base_label = peer_tensorboard(src), "TensorBoard EventAccumulator.Reload"
            else:
                base, base_label = floor(src), "read + split every line"
            rows.append((fmt, report.steps, ing.metric_points, size, t_import, t_ingest, base, base_label))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{n:,} steps per format (python {sys.version.split()[0]})\n")
    cols = "format | steps | points | MB | import s | steps/s | ingest s | import+ingest s | baseline s | ratio"
    print(f"| {cols} | baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for fmt, steps, points, size, ti, tg, base, label in rows:
        print(
            f"| {fmt} | {steps:,} | {points:,} | {size / 1e6:.1f} | {ti:.2f} | {steps / ti:,.0f} | {tg:.2f} | "
            f"{ti + tg:.2f} | {base:.2f} | {(ti + tg) / base:.1f}x | {label} |"
        )


if __name__ == "__main__":
    main()
