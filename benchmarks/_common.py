"""Small helpers shared by the benchmark scripts: machine info, a plain table, stats, progress.

Kept deliberately tiny so each bench_*.py reads on its own. Nothing here imports
logbook, torch or duckdb.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time

# The 10 scalars a training loop logs per step in every benchmark (the goals are "10 scalars per step").
TEN_METRICS = [
    "loss",
    "grad_norm",
    "lr",
    "loss_scale",
    "tokens_per_s",
    "step_time",
    "param_norm",
    "update_ratio",
    "clip_frac",
    "mem_gb",
]


def machine_info(extra: dict | None = None) -> dict:
    """What produced the numbers: CPU, cores, Python and library versions."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):  # no /proc/cpuinfo: keep platform's name
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    info.update(extra or {})
    return info


def print_header(title: str, info: dict) -> None:
    print(f"# {title}")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print()


def print_table(headers: list[str], rows: list[list], title: str | None = None) -> None:
    """A plain, aligned text table (also valid as a Markdown table)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)) + " |")
    print()
    sys.stdout.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        if a >= 1e5:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return bool(s) and (s[0].isdigit() or s[0] in "+-.") and not s.startswith("--")


def median(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> float:
    """(max - min) / median of a set of repeats: how noisy the measurement was."""
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


def progress(total: int, desc: str):
    """A tqdm bar on stderr (stdout stays a clean table)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Timer:
    """`with Timer() as t: ...; t.s` — wall seconds via perf_counter_ns."""

    def __enter__(self):
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, *exc):
        self.ns = time.perf_counter_ns() - self._t0
        self.s = self.ns / 1e9
