"""What does `run.log()` cost the training loop? (goal: <= 5 µs per call, <= 0.2 % step time)

The Recorder promises that `log()` only appends to an in-memory queue and that a
background thread does the encoding and writing. This script measures both halves,
side by side with TensorBoard's `SummaryWriter.add_scalar` in the same process:

1. Per call (micro): a tight loop of N steps, each logging a dict of 10 scalars.
   Variants, interleaved repeat by repeat so they share the machine's noise:
     baseline     build the same dict, log nothing (subtracted from the others)
     mf-float     midflight `run.log(d, step=i)`, 10 Python floats
     mf-tensor    midflight `run.log(d, step=i)`, 10 0-d torch CPU tensors
     tensorboard  `writer.add_scalar(k, v, i)` once per scalar (10 calls per step)
   Reported: caller wall µs per step (median of repeats, minus baseline), the CPU
   µs per step of all threads including an explicit flush after each batch (the
   work the background thread has to do for that step), and how often CPython's
   full GC ran during the calls (it explains the caller-side outliers).
2. End to end: wall time of N steps of a toy workload (a CPU matmul sized to about
   200 µs per step, torch on one thread) with and without logging, as % overhead.
   Variants, including a second no-logging run (an A/A control that shows the
   noise floor), run in rotating order for several rounds; the overhead is the
   median of per-round ratios. Each trial ends with a timed flush, so no variant's
   backlog spills into the next trial.

Not a pass/fail test: it prints tables, and docs/benchmarks.md interprets them.

    python benchmarks/bench_log_call.py            # full (about 2.5 minutes)
    python benchmarks/bench_log_call.py --quick    # smaller, about 20 seconds
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, median, note, print_header, print_table, progress, spread  # noqa: E402

VALUES = [
    2.718281828459045,
    0.8414709848078965,
    0.00029999999999999997,
    65536.0,
    123456.78901234,
    0.21347826086956523,
    1234.5678901234567,
    0.0012345678901234567,
    0.0625,
    41.99999237060547,
]


def step_metrics(v):
    """The dict every variant builds each step (the baseline builds it and drops it)."""
    return {
        "loss": v[0],
        "grad_norm": v[1],
        "lr": v[2],
        "loss_scale": v[3],
        "tokens_per_s": v[4],
        "step_time": v[5],
        "param_norm": v[6],
        "update_ratio": v[7],
        "clip_frac": v[8],
        "mem_gb": v[9],
    }


# ----------------------------------------------------------------- the loggers under test
class Variant:
    """One way of logging a step: `call(step, values)` on the hot path, `flush()` outside it."""

    name = "?"

    def call(self, step: int, values) -> None:
        """Every variant overrides this: the hot-path call being measured."""
        raise TypeError(f"{type(self).__name__} does not define call()")

    def flush(self) -> None:
        """Most variants have nothing to flush outside the hot path."""

    def close(self) -> None:
        """Most variants hold nothing to release."""


class Baseline(Variant):
    name = "baseline (build dict only)"

    def call(self, step, values):
        step_metrics(values)


class Midflight(Variant):
    def __init__(self, run_dir: Path, label: str):
        from midflight import logbook

        self.name = label
        self.run = logbook.init(run_dir, name=label)  # flush_every: the default (0.5 s)
        self._log = self.run.log

    def call(self, step, values):
        self._log(step_metrics(values), step=step)

    def flush(self):
        self.run.flush()

    def close(self):
        self.run.finish()
        if self.run.dropped_records or self.run.write_errors:
            note(f"warning: {self.name} dropped {self.run.dropped_records} records, {self.run.write_errors} errors")


class TensorBoard(Variant):
    name = "tensorboard add_scalar x10"

    def __init__(self, log_dir: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))  # defaults: max_queue=10, flush_secs=120
        self._add = self.writer.add_scalar

    def call(self, step, values):
        add = self._add
        for k, v in step_metrics(values).items():
            add(k, v, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


def tensor_values():
    import torch

    return [torch.tensor(v) for v in VALUES]


# ----------------------------------------------------------------- micro: cost per call
def gc_runs() -> tuple[int, int]:
    """(all cyclic-GC collections so far, full (generation 2) ones)."""
    stats = gc.get_stats()
    return sum(s["collections"] for s in stats), stats[2]["collections"]


def time_batch(variant: Variant, values, first_step: int, n: int) -> tuple[int, float, int]:
    """(wall ns of n calls, CPU s of all threads for the calls plus the flush after them, full GCs during the calls).

    Full collections matter: a queued dict of tensors is a GC-tracked container (a dict of floats
    is not), so every collection while the queue is long walks all of it, on the caller's thread.
    """
    call = variant.call
    gc0 = gc_runs()[1]
    cpu0 = time.process_time()
    t0 = time.perf_counter_ns()
    for i in range(first_step, first_step + n):
        call(i, values)
    wall = time.perf_counter_ns() - t0
    full_gcs = gc_runs()[1] - gc0
    variant.flush()
    return wall, time.process_time() - cpu0, full_gcs


def micro(variants: list[tuple[Variant, list, int]], repeats: int) -> dict:
    """Interleaved repeats; returns {name: {"wall_us": [...], "cpu_us": [...]}} per step."""
    out = {v.name: {"wall_us": [], "cpu_us": [], "full_gcs": 0, "steps": 0} for v, _, _ in variants}
    steps = {v.name: 0 for v, _, _ in variants}
    bar = progress(repeats * len(variants), "log-call micro")
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate who goes first
        for variant, values, n in order:
            wall, cpu, full_gcs = time_batch(variant, values, steps[variant.name], n)
            steps[variant.name] += n
            out[variant.name]["wall_us"].append(wall / n / 1e3)
            out[variant.name]["cpu_us"].append(cpu / n * 1e6)
            out[variant.name]["full_gcs"] += full_gcs
            out[variant.name]["steps"] += n
            bar.update(1)
    bar.close()
    return out


def micro_table(res: dict, baseline: str, peer: str) -> list[list]:
    base_wall = median(res[baseline]["wall_us"])
    base_cpu = median(res[baseline]["cpu_us"])
    peer_cost = median(res[peer]["wall_us"]) - base_wall
    rows = []
    for name, r in res.items():
        wall = median(r["wall_us"])
        cost = wall - base_wall if name != baseline else wall
        cpu = median(r["cpu_us"]) - base_cpu if name != baseline else median(r["cpu_us"])
        vs_peer = (
            f"{cost / peer_cost:.4f} (1/{peer_cost / cost:,.0f})"
            if name not in (baseline, peer) and cost > 0
            else "1"
            if name == peer
            else "-"
        )
        rows.append(
            [
                name,
                wall,
                cost,
                min(r["wall_us"]),
                max(r["wall_us"]),
                f"{spread(r['wall_us']) * 100:.0f}%",
                cpu,
                f"{r['full_gcs'] / r['steps'] * 1e5:.1f}",
                vs_peer,
            ]
        )
    return rows


# ----------------------------------------------------------------- end to end: a toy training loop
class Workload:
    """A CPU matmul sized so that one step takes about `target_us`."""

    def __init__(self, target_us: float):
        import torch

        self.torch = torch
        self.size = 64
        while True:
            self._build(self.size)
            if self.step_us() >= target_us or self.size >= 1024:
                break
            self.size += 16

    def _build(self, n: int) -> None:
        self.a = self.torch.randn(n, n)
        self.b = self.torch.randn(n, n)
        self.c = self.torch.empty(n, n)

    def step(self) -> None:
        self.torch.mm(self.a, self.b, out=self.c)

    def step_us(self, n: int = 300) -> float:
        for _ in range(30):
            self.step()
        t0 = time.perf_counter_ns()
        for _ in range(n):
            self.step()
        return (time.perf_counter_ns() - t0) / n / 1e3


def e2e_trial(work: Workload, variant: Variant, values, first_step: int, steps: int) -> float:
    """Wall seconds of `steps` training steps, each logging one dict through `variant`, plus a final flush.

    The flush is timed so that a variant's backlog never spills into the next variant's trial; it
    counts at most one flush period's work (0.5 s of steps) as if it ran in the foreground.
    """
    step, call = work.step, variant.call
    t0 = time.perf_counter_ns()
    for i in range(first_step, first_step + steps):
        step()
        call(i, values)
    variant.flush()
    return (time.perf_counter_ns() - t0) / 1e9


def e2e(work: Workload, variants: list[tuple[Variant, list]], steps: int, rounds: int) -> dict:
    """{name: [wall s per round]}, variants in rotating order each round."""
    out = {v.name: [] for v, _ in variants}
    first = {v.name: 0 for v, _ in variants}
    bar = progress(rounds * len(variants), "end-to-end")
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant, values in order:
            out[variant.name].append(e2e_trial(work, variant, values, first[variant.name], steps))
            first[variant.name] += steps
            bar.update(1)
    bar.close()
    return out


def e2e_table(res: dict, baseline: str, steps: int, bounds: dict) -> list[list]:
    """bounds: {name: (caller µs/step, all-threads CPU µs/step)} from the micro run."""
    base = res[baseline]
    base_step = median(base) / steps * 1e6
    rows = []
    for name, walls in res.items():
        ratios = [w / b for w, b in zip(walls, base)]  # paired: same round, same machine state
        step_us = median(walls) / steps * 1e6
        if name == baseline:
            rows.append([name, step_us, "-", "-", f"{spread(walls) * 100:.1f}%", "-"])
            continue
        lo, hi = bounds.get(name, (None, None))
        rows.append(
            [
                name,
                step_us,
                f"{(median(ratios) - 1) * 100:+.2f}%",
                f"{(min(ratios) - 1) * 100:+.2f}% .. {(max(ratios) - 1) * 100:+.2f}%",
                f"{spread(walls) * 100:.1f}%",
                f"{lo / base_step * 100:+.2f}% .. {hi / base_step * 100:+.2f}%" if lo is not None else "-",
            ]
        )
    return rows


# ----------------------------------------------------------------- main
def run_micro(tmp: Path, calls: int, repeats: int) -> dict:
    """Print the per-call table; return {variant: (caller µs/step, all-threads CPU µs/step)} for the e2e table."""
    floats, tensors = list(VALUES), tensor_values()
    tb_calls = max(calls // 50, 200)  # ~30 µs per add_scalar: keep its batches about as long as the others'
    base = Baseline()
    mf_f = Midflight(tmp / "micro-float", "midflight log() floats")
    mf_t = Midflight(tmp / "micro-tensor", "midflight log() 0-d tensors")
    tb = TensorBoard(tmp / "micro-tb")
    res = micro([(base, floats, calls), (mf_f, floats, calls), (mf_t, tensors, calls), (tb, floats, tb_calls)], repeats)
    for v in (mf_f, mf_t, tb):
        v.close()
    print_table(
        [
            "variant",
            "wall µs/step",
            "cost µs/step (- baseline)",
            "min",
            "max",
            "spread",
            "CPU µs/step incl. flush",
            "full GCs per 100k steps",
            "cost vs tensorboard",
        ],
        micro_table(res, base.name, tb.name),
        title=f"Per call: median of {repeats} repeats of {calls:,} steps "
        f"(tensorboard: {tb_calls:,} steps); 10 scalars per step; goal <= 5 µs",
    )
    # What the micro numbers predict for a training step: at best only the caller's cost shows
    # (the flush thread runs on the spare core), at worst all CPU of all threads serialises with it.
    base_wall, base_cpu = median(res[base.name]["wall_us"]), median(res[base.name]["cpu_us"])
    return {
        n: (median(r["wall_us"]) - base_wall, median(r["cpu_us"]) - base_cpu) for n, r in res.items() if n != base.name
    }


def run_e2e(tmp: Path, step_us: float, steps: int, rounds: int, torch_threads: int, bounds: dict) -> None:
    floats, tensors = list(VALUES), tensor_values()
    work = Workload(step_us)
    note(f"toy workload: {work.size}x{work.size} matmul, {work.step_us():.0f} µs/step")
    base, control = Baseline(), Baseline()
    base.name, control.name = "no logging", "no logging again (A/A: the noise floor)"
    mf_f = Midflight(tmp / "e2e-float", "midflight log() floats")
    mf_t = Midflight(tmp / "e2e-tensor", "midflight log() 0-d tensors")
    tb = TensorBoard(tmp / "e2e-tb")
    walls = e2e(work, [(base, floats), (control, floats), (mf_f, floats), (mf_t, tensors), (tb, floats)], steps, rounds)
    for v in (mf_f, mf_t, tb):
        v.close()
    print_table(
        [
            "variant",
            "µs/step",
            "overhead (median of rounds)",
            "min .. max of rounds",
            "spread of rounds",
            "micro predicts (caller .. all CPU)",
        ],
        e2e_table(walls, base.name, steps, bounds),
        title=f"End to end: {rounds} rounds x {steps:,} steps of a {work.size}x{work.size} matmul "
        f"(torch threads={torch_threads}); goal <= +0.2%; peers on a GPU: "
        "TensorBoard +1.07%, W&B offline +0.75%",
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and rounds (about 20 s)")
    ap.add_argument("--calls", type=int, help="log() calls per micro repeat (default 20000; quick 5000)")
    ap.add_argument("--repeats", type=int, help="micro repeats (default 9; quick 5)")
    ap.add_argument("--steps", type=int, help="training steps per end-to-end trial (default 10000; quick 3000)")
    ap.add_argument("--rounds", type=int, help="end-to-end rounds (default 9; quick 3)")
    ap.add_argument("--step-us", type=float, default=200.0, help="toy workload step time to aim for (µs)")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for the workload (default 1: the other core is left for the "
        "logging threads, as the host CPU is on a GPU node)",
    )
    ap.add_argument("--skip-e2e", action="store_true", help="only the per-call table")
    args = ap.parse_args(argv)
    calls = args.calls or (5000 if args.quick else 20000)
    repeats = args.repeats or (5 if args.quick else 9)
    steps = args.steps or (3000 if args.quick else 10000)
    rounds = args.rounds or (3 if args.quick else 9)

    import tensorboard
    import torch

    from midflight import logbook

    torch.set_num_threads(args.torch_threads)
    print_header(
        "bench_log_call: cost of one log() of 10 scalars",
        machine_info(
            {
                "logbook": Path(logbook.__file__).parent,
                "torch": torch.__version__,
                "tensorboard": tensorboard.__version__,
                "torch_threads": args.torch_threads,
                "calls": calls,
                "repeats": repeats,
            }
        ),
    )
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-log-"))
    try:
        bounds = run_micro(tmp, calls, repeats)
        if not args.skip_e2e:
            run_e2e(tmp, args.step_us, steps, rounds, args.torch_threads, bounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
