"""What does recording cost the real trainer's step? (goal: <= 0.5 % of step time, OPT-125M on a GPU)

Two arms of the same training loop, `python -m midflight.trainer`'s own `run_segment`, in this process:

  off   --log.enabled=false: a no-op NullRun instead of the logbook recorder, and no telemetry sampler
  on    the default instrumentation: ~11 scalars per step through `run.log` (enqueue only; the recorder's
        background thread encodes and writes JSON lines every 0.5 s), the param-norm/memory record every
        50 steps, and the telemetry sampler thread at --telemetry-hz (1 Hz, the trainer's default)

Everything else is identical in both arms: same config, seed, data and model init (so the same arithmetic),
the trainer's one host read per step (grad norm, loss, activation norm), the metric dict it builds, the
intervention-channel poll (one stat() per step), and also the param norm it computes every 50 steps (a full
pass over the weights and a host read) and, with several ranks, the per-log-step loss all-reduce: the trainer
does those even with recording off, so they are in the baseline and NOT in the measured difference. The
difference is what the recorder and the sampler cost. Checkpoints and progress printing are off in both
(--checkpoint.every=0 --checkpoint.at_end=false --log.print_every=0).

How a repeat is timed. Each repeat is one fresh `run_segment` in a fresh run directory, W + N steps long.
The script swaps in a subclass of `trainer.trainer.Trainer` that stamps `time.perf_counter()` at every step
boundary (on entry to `Trainer._control(s)`, the first thing each step does) and once more when `train()`
returns. The repeat's step time is (end - stamp of step W+1) / N: the mean wall time of steps W+1..W+N, so
the first W steps (allocator and kernel warm-up, the recorder's and sampler's first writes) and everything
outside the loop (model build, recorder start, run.finish, sampler stop) are excluded, in both arms alike.
A mean, not a per-step median, on purpose: recording's costs are bursty (a flush every 0.5 s, a telemetry
sample every second) and a median step would hide them. The recorder's last < 0.5 s of queued records is
written by run.finish() after the window; the flushes inside the window carry the earlier steps' records,
so the window holds about one window's worth of flush work. With --device cuda the first and last stamps
follow a torch.cuda.synchronize() (the loop's own .tolist() syncs every step in between).

A second, far less noisy figure: the CPU time of the recording threads (the recorder's flush thread and
the telemetry sampler, read with pthread_getcpuclockid at the window's edges) per timed step, and as a share
of the step. When the step keeps every core busy, as a CPU step does, that CPU comes out of the step, so it
estimates the wall overhead without the repeat-to-repeat noise; it leaves out the caller's side (`run.log`
itself, under a microsecond per step, see bench_log_call.py) and any effect on caches or the GIL.

Pairs. Repeats run as pairs, off/on, alternating which arm goes first (off-on, on-off, ...), so that slow
drift on a shared machine hits both arms equally; overhead = median over pairs of (on / off - 1), shown
with the min .. max over pairs, which is the noise you should read it against. `--aa` adds a third repeat
to every pair, recording off again, and reports (off again / off - 1) the same way: the noise floor, an
A/A control. One untimed warm-up segment per config runs first (imports, first allocations). Before each
repeat the script runs gc.collect() and gc.freeze(): a full collection of the long-lived heap (torch and
the models of earlier repeats) takes ~120 ms here, and one landing in one arm by chance swings a pair by
~2 %; frozen, full collections only walk what the repeat itself allocated, the recorder's queue included
(--no-gc-freeze turns this off). The progress lines count the full collections inside each window.

Other load. On a shared machine a concurrent job (a test suite, another training run) takes cores from torch's
threads and can slow a CPU step tenfold, which no pairing can cancel. Each repeat measures the CPU that other
processes used meanwhile (/proc/stat busy time minus this process's own CPU); a pair in which it exceeded
--max-other-load (5 % of all cores) is discarded and redone, at most --redo times per config, and the table
shows the highest other load among the kept pairs and how many pairs were redone. Before each pair the
script also waits (up to --wait-quiet seconds) for a quiet second.

Not a pass/fail test: docs/benchmarks.md interprets the table.

    python benchmarks/bench_trainer_overhead.py            # CPU: tiny b16 + tiny b64, 5 pairs (about 2.5 min)
    python benchmarks/bench_trainer_overhead.py --quick    # 2 pairs, fewer steps (about 25 s)
    python benchmarks/bench_trainer_overhead.py --configs 125m-s32   # the real OPT-125M shape on CPU (~2.5 min)
    python benchmarks/bench_trainer_overhead.py --device cuda --model 125m --precision fp16   # the goal's setting
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))  # the trainer package lives beside logbook in the repository root

from _common import machine_info, median, note, print_header, print_table, spread  # noqa: E402

GOAL_PCT = 0.5
OTHER_LOAD_WARN = 0.05  # other processes' share of all CPUs above which a repeat is flagged as contended


@dataclass
class Shape:
    """One benchmark configuration: a trainer preset and batch shape, and how many steps to time."""

    name: str
    model: str
    seq_len: int  # 0 = the preset's max_seq_len
    batch_size: int
    warmup: int  # steps run but not timed, at the start of every repeat
    steps: int  # steps timed per repeat


# Measured on the 2-vCPU VM (fp32, torch's default 2 threads): tiny b16 ~32 ms/step, tiny b64 ~130 ms/step,
# 125m seq 32 b1 ~0.55 s/step (its first steps take 5, 1.4, 0.8 s: the AdamW state of 125M parameters is allocated).
SHAPES = {
    "tiny-b16": Shape("tiny-b16", "tiny", 0, 16, warmup=10, steps=150),
    "tiny-b64": Shape("tiny-b64", "tiny", 0, 64, warmup=5, steps=40),
    "125m-s32": Shape("125m-s32", "125m", 32, 1, warmup=6, steps=12),
}
DEFAULT_SHAPES = "tiny-b16,tiny-b64"
QUICK = {"tiny-b16": (5, 50), "tiny-b64": (3, 12), "125m-s32": (4, 4)}  # (warmup, steps) under --quick


# ----------------------------------------------------------------- timing the loop
class _Stamps:
    """Step-boundary timestamps of the current repeat (perf_counter seconds)."""

    def __init__(self):
        self.first_timed = 0  # the step whose start opens the timed window (W + 1)
        self.sync = None  # torch.cuda.synchronize on CUDA, else None
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.boundaries = 0
        self.bg_start: dict = {}  # CPU seconds of each midflight-* thread at the window's start / end
        self.bg_end: dict = {}
        self.full_gcs, self.gc_s, self._gc_t0 = 0, 0.0, None

    def reset(self, first_timed: int, sync) -> None:
        self.first_timed, self.sync = first_timed, sync
        self.t_start = self.t_end = None
        self.boundaries = 0
        self.bg_start, self.bg_end = {}, {}
        self.full_gcs, self.gc_s, self._gc_t0 = 0, 0.0, None

    def on_gc(self, phase: str, info: dict) -> None:
        """gc.callbacks hook: count full collections and all GC time inside the timed window."""
        if self.t_start is None or self.t_end is not None:
            return
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            self.gc_s += time.perf_counter() - self._gc_t0
            self.full_gcs += info.get("generation") == 2
            self._gc_t0 = None

    def bg_cpu_s(self) -> dict:
        """{"recorder": s, "telemetry": s}: CPU the recording threads spent inside the timed window."""
        out = {"recorder": 0.0, "telemetry": 0.0}
        for key, v in self.bg_start.items():
            if key in self.bg_end:
                kind = "telemetry" if "telemetry" in key[1] else "recorder"
                out[kind] += self.bg_end[key] - v
        return out


def background_cpu() -> dict:
    """{(ident, name): CPU seconds} of the live midflight-* threads (recorder flush thread, telemetry sampler)."""
    out = {}
    for t in threading.enumerate():
        if t.name.startswith("midflight-") and t.ident is not None:
            with contextlib.suppress(AttributeError, OSError):  # not POSIX, or the thread just ended
                out[t.ident, t.name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return out


STAMPS = _Stamps()


def timed_trainer_class():
    """A Trainer that stamps the step boundaries; identical in both arms, two perf_counter calls per step at most."""
    from midflight.trainer.trainer import Trainer

    class TimedTrainer(Trainer):
        def _control(self, s):
            STAMPS.boundaries += 1
            if s == STAMPS.first_timed:
                if STAMPS.sync is not None:
                    STAMPS.sync()
                STAMPS.bg_start = background_cpu()
                STAMPS.t_start = time.perf_counter()
            return super()._control(s)

        def train(self):
            outcome = super().train()
            if STAMPS.sync is not None:
                STAMPS.sync()
            STAMPS.t_end = time.perf_counter()
            STAMPS.bg_end = background_cpu()
            return outcome

    return TimedTrainer


@contextlib.contextmanager
def timed_trainer():
    """Swap trainer.build's Trainer for the timed subclass while the benchmark runs (this process only)."""
    from midflight.trainer import build

    original = build.Trainer
    build.Trainer = timed_trainer_class()
    gc.callbacks.append(STAMPS.on_gc)
    try:
        yield
    finally:
        build.Trainer = original
        gc.callbacks.remove(STAMPS.on_gc)


# ----------------------------------------------------------------- one repeat
def overrides(shape: Shape, args, run_dir: Path, recording: bool, steps: int) -> list[tuple[str, object]]:
    ov = [
        ("run_dir", str(run_dir)),
        ("steps", steps),
        ("device", args.device),
        ("precision.dtype", args.precision),
        ("model.preset", shape.model),
        ("data.seq_len", shape.seq_len),
        ("data.batch_size", shape.batch_size),
        ("checkpoint.every", 0),
        ("checkpoint.at_end", False),
        ("log.print_every", 0),
        ("telemetry.hz", args.telemetry_hz),
    ]
    for item in args.set:
        key, _, value = item.partition("=")
        ov.append((key.strip().lstrip("-"), value))
    ov.append(("log.enabled", recording))  # last: --set cannot turn the baseline's recording back on
    return ov


class ForeignLoad:
    """CPU used by other processes while a repeat ran, as a fraction of the machine (Linux /proc/stat; else None).

    Busy jiffies of the whole machine minus this process's own CPU time (all its threads). On a shared VM a
    concurrent job steals cores from torch's threads, which can slow a step by 10x; this tells such repeats apart.
    """

    def __init__(self):
        self.t0 = time.perf_counter()
        self.busy0 = _machine_busy_s()
        self.own0 = _own_cpu_s()

    def fraction(self) -> float | None:
        busy = _machine_busy_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        foreign = (busy - self.busy0) - (_own_cpu_s() - self.own0)
        return max(0.0, foreign) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in parts[1:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_once(shape: Shape, args, run_dir: Path, recording: bool, info, *, timed: bool = True) -> tuple[float, dict]:
    """One fresh segment of warmup + steps: (mean step time, recording threads' CPU per step) of the timed steps, s."""
    import torch

    from midflight.trainer import build, config

    total = shape.warmup + shape.steps
    cfg = config.resolve(overrides(shape, args, run_dir, recording, total))
    STAMPS.reset(shape.warmup + 1, torch.cuda.synchronize if args.device == "cuda" else None)
    nxt = build.run_segment(cfg, info, build.Start())
    if nxt is not None:
        raise RuntimeError(f"{shape.name}: the segment asked for another one ({nxt.reason}); expected a plain run")
    if STAMPS.boundaries != total or STAMPS.t_start is None or STAMPS.t_end is None:
        raise RuntimeError(
            f"{shape.name}: saw {STAMPS.boundaries} step boundaries for {total} steps; has Trainer._control moved?"
        )
    written = dir_bytes(run_dir)
    if timed and recording and written == 0:
        raise RuntimeError(f"{shape.name}: the instrumented arm wrote nothing to {run_dir}")
    if timed and not recording and written:
        raise RuntimeError(f"{shape.name}: the baseline arm wrote {written} bytes to {run_dir}; it must record nothing")
    bg = {k: v / shape.steps for k, v in STAMPS.bg_cpu_s().items()}
    return (STAMPS.t_end - STAMPS.t_start) / shape.steps, bg


def wait_quiet(threshold: float, timeout: float) -> float | None:
    """Wait until other processes use at most `threshold` of the CPUs over one second; the last reading."""
    t0 = time.perf_counter()
    while True:
        load = ForeignLoad()
        time.sleep(1.0)
        other = load.fraction()
        if other is None or other <= threshold or time.perf_counter() - t0 >= timeout:
            return other


ARM_LABEL = {"off": "off", "on": "on", "aa": "off again"}


def bench_shape(shape: Shape, args, tmp: Path, info) -> dict:
    """Warm-up segment, then `pairs` interleaved (off, on[, off again]) rounds of repeats; per-repeat results."""
    t0 = time.perf_counter()
    warm = replace(shape, steps=max(2, shape.warmup))
    run_once(warm, args, tmp / f"{shape.name}-warmup", True, info, timed=False)
    note(f"[{shape.name}] warm-up segment done in {time.perf_counter() - t0:.1f} s")
    arms = ["off", "on", "aa"] if args.aa else ["off", "on"]
    out = {"off": [], "on": [], "aa": [], "bg": [], "other": [], "redone": 0}
    pair = 0
    while pair < args.pairs:
        k = pair % len(arms)
        order = arms[k:] + arms[:k]  # rotate who goes first: off-on, on-off, ...
        got, bg, others = {}, {}, []
        if args.wait_quiet > 0:
            t_wait = time.perf_counter()
            other = wait_quiet(args.max_other_load, args.wait_quiet)
            if time.perf_counter() - t_wait > 1.5:
                note(f"[{shape.name}] waited {time.perf_counter() - t_wait:.0f} s for other processes to go quiet")
                if other is not None and other > args.max_other_load:
                    note(f"[{shape.name}] still {other * 100:.0f}% CPU used by other processes; going on")
        for arm in order:
            if args.gc_freeze:
                gc.unfreeze()
            gc.collect()
            if args.gc_freeze:
                gc.freeze()  # full collections then skip the long-lived heap (torch, earlier repeats): less noise
            run_dir = tmp / f"{shape.name}-{pair}-{arm}-{out['redone']}"
            t_rep = time.perf_counter()
            load = ForeignLoad()
            got[arm], bg[arm] = run_once(shape, args, run_dir, arm == "on", info)
            other = load.fraction()
            if other is not None:
                others.append(other)
            note(
                f"[{shape.name}] pair {pair + 1}/{args.pairs} {ARM_LABEL[arm]:>9}: {got[arm] * 1e3:8.2f} ms/step over "
                f"{shape.steps} steps; in them: recording threads {sum(bg[arm].values()) * 1e6:.0f} µs CPU/step, "
                f"{STAMPS.full_gcs} full GCs ({STAMPS.gc_s * 1e3:.0f} ms of GC); "
                f"logbook {dir_bytes(run_dir) / 1024:.0f} KiB; "
                + (f"other processes {other * 100:.0f}% CPU; " if other is not None else "")
                + f"{time.perf_counter() - t_rep:.1f} s"
            )
            shutil.rmtree(run_dir, ignore_errors=True)
        ratio = got["on"] / got["off"] - 1
        if others and max(others) > args.max_other_load and out["redone"] < args.redo:
            out["redone"] += 1
            note(
                f"[{shape.name}] pair {pair + 1}: on/off - 1 = {ratio * 100:+.2f}%, discarded: other processes used "
                f"{max(others) * 100:.0f}% CPU (> {args.max_other_load * 100:g}%); redo {out['redone']}/{args.redo}"
            )
            continue
        for arm in arms:
            out[arm].append(got[arm])
        out["bg"].append(bg["on"])
        out["other"] += others
        aa = f", A/A off again/off - 1 = {(got['aa'] / got['off'] - 1) * 100:+.2f}%" if args.aa else ""
        note(f"[{shape.name}] pair {pair + 1}: on/off - 1 = {ratio * 100:+.2f}%{aa}")
        pair += 1
    if args.gc_freeze:
        gc.unfreeze()
    out["wall_s"] = time.perf_counter() - t0
    return out


def _pct_range(base: list, other: list) -> tuple[str, str]:
    ratios = [(b / a - 1) * 100 for a, b in zip(base, other)]  # paired: adjacent repeats, same machine state
    return f"{median(ratios):+.2f}%", f"{min(ratios):+.2f}% .. {max(ratios):+.2f}%"


def table_row(shape: Shape, res: dict, args) -> list:
    off, on = res["off"], res["on"]
    seq = f"seq {shape.seq_len}" if shape.seq_len else "seq max"
    rec_us, tel_us = (median([b[k] for b in res["bg"]]) * 1e6 for k in ("recorder", "telemetry"))
    row = [
        f"{shape.name} ({shape.model}, {seq}, batch {shape.batch_size}, {args.precision}, {args.device})",
        f"{shape.steps} x {len(off)}",
        median(off) * 1e3,
        median(on) * 1e3,
        *_pct_range(off, on),
    ]
    if args.aa:
        row.append(" / ".join(_pct_range(off, res["aa"])))
    return row + [
        f"{spread(off) * 100:.1f}% / {spread(on) * 100:.1f}%",
        f"{rec_us:.1f} + {tel_us:.1f}",
        f"{median([sum(b.values()) / t for b, t in zip(res['bg'], on)]) * 100:.3f}%",
        f"{max(res['other']) * 100:.0f}%" if res["other"] else "?",
        res["redone"],
        f"<= {GOAL_PCT}%",
    ]


# ----------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Configs: "
        + "; ".join(
            f"{s.name} = {s.model}, seq {s.seq_len or 'max'}, batch {s.batch_size}, {s.warmup}+{s.steps} steps"
            for s in SHAPES.values()
        ),
    )
    ap.add_argument("--quick", action="store_true", help="2 pairs and fewer steps (a smoke check, about 25 s on CPU)")
    ap.add_argument("--configs", default=DEFAULT_SHAPES, help=f"comma-separated, of {', '.join(SHAPES)} (%(default)s)")
    ap.add_argument("--model", help="one config of this trainer preset (e.g. 125m) instead of --configs")
    ap.add_argument("--seq-len", type=int, help="sequence length for every config (with --model: default the preset's)")
    ap.add_argument("--batch-size", type=int, help="sequences per step for every config (with --model: default 8)")
    ap.add_argument("--warmup", type=int, help="untimed steps at the start of each repeat (with --model: default 10)")
    ap.add_argument("--steps", type=int, help="timed steps per repeat (with --model: default 100)")
    ap.add_argument("--pairs", type=int, help="(off, on) pairs per config (default 5; quick 2)")
    ap.add_argument(
        "--max-other-load",
        type=float,
        default=OTHER_LOAD_WARN,
        help="redo a pair when other processes used more than this fraction of all CPUs during it (%(default)s)",
    )
    ap.add_argument("--redo", type=int, default=5, help="most pairs redone per config for other load (%(default)s)")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each pair, wait up to this many seconds for other processes to go quiet (%(default)s; 0: never)",
    )
    ap.add_argument(
        "--aa",
        action="store_true",
        help="add an A/A control to every pair: recording off again (shows the noise floor)",
    )
    ap.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not gc.freeze() the heap before each repeat (default: freeze, so that a full collection of the "
        "long-lived heap, ~120 ms here, does not land in one arm by chance)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--telemetry-hz", type=float, default=1.0, help="telemetry sampling rate of the instrumented arm")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (default 0: torch's own)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other trainer config key for both arms, e.g. --set parallel.fsdp=none (repeatable)",
    )
    args = ap.parse_args(argv)
    args.pairs = args.pairs or (2 if args.quick else 5)
    if args.pairs < 1:
        ap.error("--pairs must be >= 1")
    if args.model:
        shapes = [Shape(args.model, args.model, 0, 8, warmup=3 if args.quick else 10, steps=20 if args.quick else 100)]
    else:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in SHAPES]
        if unknown or not names:
            ap.error(f"--configs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SHAPES)}")
        shapes = [SHAPES[n] for n in names]
        if args.quick:
            shapes = [replace(s, warmup=QUICK[s.name][0], steps=QUICK[s.name][1]) for s in shapes]
    fields = {"seq_len": args.seq_len, "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps}
    for key, value in fields.items():
        if value is not None:
            if value < (1 if key in ("batch_size", "steps") else 0):
                ap.error(f"--{key.replace('_', '-')} is out of range: {value}")
            shapes = [replace(s, **{key: value}) for s in shapes]
    if args.model:
        s = shapes[0]
        shapes = [replace(s, name=f"{s.model}-s{s.seq_len or 'max'}-b{s.batch_size}")]
    args.shapes = shapes
    return args


def main(argv=None) -> None:
    args = parse_args(argv)

    import torch

    from midflight import logbook, trainer
    from midflight.trainer import build, config

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        for s in args.shapes:  # fail on a bad shape or --set before minutes of work
            config.resolve(overrides(s, args, Path("unused"), True, s.warmup + s.steps))
        info = build.init_distributed(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    extra = {
        "logbook": Path(logbook.__file__).parent,
        "trainer": Path(trainer.__file__).parent,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "precision": args.precision,
        "telemetry_hz": args.telemetry_hz,
        "pairs": args.pairs,
    }
    print_header("bench_trainer_overhead: instrumented trainer step vs recording off", machine_info(extra))
    tmp = Path(tempfile.mkdtemp(prefix="mf-bench-trainer-"))
    t0 = time.perf_counter()
    rows, walls, loads = [], [], []
    try:
        with timed_trainer():
            for shape in args.shapes:
                res = bench_shape(shape, args, tmp, info)
                rows.append(table_row(shape, res, args))
                walls.append(f"{shape.name} {res['wall_s']:.0f} s")
                loads += res["other"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(
        [
            "config",
            "steps timed x pairs",
            "step ms, off (median)",
            "step ms, on (median)",
            "overhead (median of pairs)",
            "min .. max of pairs",
            *(["A/A control: off again vs off, median / min .. max"] if args.aa else []),
            "spread off / on",
            "recording threads CPU µs/step: recorder + telemetry",
            "same, % of step (on)",
            "other CPU load (max)",
            "pairs redone",
            "goal",
        ],
        rows,
        title=f"Instrumented step (log + telemetry at {args.telemetry_hz:g} Hz) vs --log.enabled=false; "
        f"step = mean of the timed steps of one repeat; {args.pairs} interleaved off/on pair(s), median shown; "
        f"gc.freeze {'on' if args.gc_freeze else 'off'}",
    )
    print(f"# took {time.perf_counter() - t0:.0f} s ({', '.join(walls)})")
    if loads and max(loads) > args.max_other_load:
        print(
            f"# WARNING: other processes used up to {max(loads) * 100:.0f}% of the machine's CPU during some repeats "
            "(progress lines on stderr): those pairs measure contention, not recording. Rerun on a quiet machine."
        )


if __name__ == "__main__":
    main()
