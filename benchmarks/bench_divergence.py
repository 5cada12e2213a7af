"""Labelled benchmark for divergence detection: midflight's rule against the rules used in practice.

Data (seeded):
  labelled curves  synthetic loss + grad-norm curves (warm-up, power-law decay, slow drift, Student-t(5)
                   noise clipped at 6 sigma, sigma 0.5-3 % on loss and 8-30 % on grad norm) with
                   injected spikes of five shapes (single step, jump + decay, BLOOM-like ramp,
                   divergent level shift, divergent growth) and three sizes;
  clean curves     the same generator without spikes, for false alarms;
  BLOOM-176B       the real iterations 31214-31222 and 31250-31251 from
                   tests/fixtures/bloom_tr11_176B_megatron_deepspeed.log (grad norm 0.242 -> 960),
                   preceded and followed by synthetic steps drawn around the excerpt's own normal values
                   (the excerpt has no history of its own). The excerpt's gap 31223-31249 stays a gap.

Methods, each on loss and on grad norm (alarms of both merged into intervals; gaps <= 3 steps merge):
  midflight   logbook.analysis.divergence.detect with its defaults (robust z over 128 + ratio to EWMA)
  olmo-core   x > mean + 6 sigma of the previous 128 values
  wandb       x > mean + 3 sigma of the previous 30 values
  megatron    x >= 10 x the largest of the first 100 values

A label is found when an interval starts in [onset - 2, end + 3]; delay = start - onset. Unmatched
intervals are false positives; on clean curves they are false alarms.

    python benchmarks/bench_divergence.py             # seed 1, about 10 s
    python benchmarks/bench_divergence.py --seed 2 --quick
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midflight.logbook.analysis import divergence  # noqa: E402

BLOOM = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bloom_tr11_176B_megatron_deepspeed.log"
LINE = re.compile(r"iteration\s+(\d+)/.*?lm loss: ([0-9.E+-]+) \| grad norm: ([0-9.]+)")
SHAPES = ("single", "decay", "ramp", "divergent_level", "divergent_growth")
SIZES = {"small": ((1.08, 1.2), (3, 8)), "medium": ((1.2, 1.8), (8, 50)), "large": ((1.8, 4.0), (50, 5000))}


def parse_megatron(path: Path) -> pd.DataFrame:
    rows = [(int(m[1]), float(m[2]), float(m[3])) for m in map(LINE.search, path.read_text().splitlines()) if m]
    return pd.DataFrame(rows, columns=["step", "loss", "grad_norm"])


def clean_curve(rng, n: int, step0: int = 1) -> pd.DataFrame:
    steps = np.arange(step0, step0 + n)
    s = steps - step0 + 1.0
    floor, amp, tau = rng.uniform(1.8, 3.0), rng.uniform(1.0, 3.0), rng.uniform(200, 2000)
    warm = 6.0 * np.exp(-s / rng.uniform(30, 80))  # the first steps' steep drop
    sig_l, sig_g = rng.uniform(0.005, 0.03), rng.uniform(0.08, 0.3)
    noise = lambda: np.clip(rng.standard_t(5, n), -6, 6)  # noqa: E731  heavy tails; beyond 6 sigma is a spike
    loss = (floor + amp * (1 + s / tau) ** -0.5 + warm) * np.exp(sig_l * noise())
    g0 = rng.uniform(0.15, 2.0)
    wiggle = np.convolve(rng.normal(0, 0.05, n + 99), np.ones(100) / 10, "valid")[:n]  # slow drift of the level
    grad = g0 * (1 + 3 * np.exp(-s / 150)) * np.exp(wiggle + sig_g * noise())
    return pd.DataFrame({"step": steps, "loss": loss, "grad_norm": grad})


def inject(rng, df: pd.DataFrame, n_spikes: int) -> list[dict]:
    """Multiply spikes into df in place; return the labels."""
    n, labels = len(df), []
    loss, grad = df["loss"].to_numpy().copy(), df["grad_norm"].to_numpy().copy()
    slots = np.linspace(400, n - 300, n_spikes).astype(int)
    for k, at in enumerate(slots):
        shape = SHAPES[rng.integers(len(SHAPES))] if k == n_spikes - 1 else SHAPES[rng.integers(3)]
        size = list(SIZES)[rng.integers(3)]
        (l_lo, l_hi), (g_lo, g_hi) = SIZES[size]
        fl, fg = rng.uniform(l_lo, l_hi), np.exp(rng.uniform(np.log(g_lo), np.log(g_hi)))
        rel = np.arange(n) - at
        if shape == "single":
            w, end = (rel == 0).astype(float), at
        elif shape == "decay":
            t = rng.uniform(2, 15)
            w = np.where(rel >= 0, np.exp(-np.maximum(rel, 0) / t), 0.0)
            end = at + int(t * 3)
        elif shape == "ramp":  # BLOOM-like: grows over a few steps, then decays
            up, t = int(rng.integers(3, 7)), rng.uniform(5, 20)
            w = np.where(
                rel < 0, 0.0, np.where(rel < up, 2.0 ** np.minimum(rel - up + 1, 0), np.exp(-(rel - up + 1) / t))
            )
            end = at + up + int(t * 3)
        elif shape == "divergent_level":
            w, end = (rel >= 0).astype(float), n - 1
        else:  # divergent_growth: keeps rising
            w, end = np.clip(np.where(rel >= 0, (rel + 1) / 10.0, 0.0), 0, 1), n - 1
            fl, fg = max(fl, 1.3), max(fg, 8.0)
        lag = int(rng.integers(0, 3))  # the loss follows the grad norm by 0-2 steps
        loss *= np.exp(np.log(fl) * np.roll(w, lag) * (np.arange(n) >= at + lag))
        grad *= np.exp(np.log(fg) * w)
        end = min(max(end, at + lag), n - 1)
        labels.append({"onset": int(df["step"].iloc[at]), "end": int(df["step"].iloc[end]), "shape": shape,
                       "size": size, "divergent": shape.startswith("divergent")})  # fmt: skip
        if shape.startswith("divergent"):
            break
    df["loss"], df["grad_norm"] = loss, grad
    return labels


def bloom_case(rng) -> tuple[pd.DataFrame, list[dict]]:
    real = parse_megatron(BLOOM)
    spike = real[(real.step >= 31214) & (real.step <= 31251)]
    normal = real[real.step >= 31250]  # the excerpt's normal steps after the spike
    g_med, l_med = float(normal.grad_norm.median()), float(spike.loss.iloc[0])

    def synth(steps):
        k = len(steps)
        return pd.DataFrame({"step": steps, "loss": l_med * np.exp(0.01 * rng.standard_normal(k)),
                             "grad_norm": g_med * np.exp(0.2 * rng.standard_normal(k))})  # fmt: skip

    df = pd.concat([synth(np.arange(31014, 31214)), spike, synth(np.arange(31252, 31352))], ignore_index=True)
    return df, [{"onset": 31215, "end": 31249, "shape": "bloom", "size": "real", "divergent": False}]


# ----------------------------------------------------------------- methods
def _intervals(steps: np.ndarray, alarm: np.ndarray, gap: int = 3) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s in steps[alarm]:
        if out and s - out[-1][1] <= gap:
            out[-1][1] = s
        else:
            out.append([s, s])
    return [tuple(x) for x in out]


def _merge(iv: list[tuple[int, int]], gap: int = 3) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(iv):
        if out and a - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [tuple(x) for x in out]


def rolling_rule(df: pd.DataFrame, window: int, k: float, min_periods: int = 20) -> list[tuple[int, int]]:
    iv = []
    for col in ("loss", "grad_norm"):
        x = df[col]
        prev = x.shift(1).rolling(window, min_periods=min_periods)
        alarm = (x > prev.mean() + k * prev.std()).to_numpy()
        iv += _intervals(df["step"].to_numpy(), alarm)
    return _merge(iv)


def megatron_rule(df: pd.DataFrame) -> list[tuple[int, int]]:
    iv = []
    for col in ("loss", "grad_norm"):
        x = df[col].to_numpy()
        alarm = x >= 10 * np.max(x[:100])
        alarm[:100] = False
        iv += _intervals(df["step"].to_numpy(), alarm)
    return _merge(iv)


def midflight(df: pd.DataFrame) -> list[tuple[int, int, str]]:
    """Intervals start at the step the online detector raised them (detected_step), for a fair delay."""
    found = divergence.detect(df[["step", "loss", "grad_norm"]], CONFIG)
    return [(i.detected_step, i.end_step, i.classification) for i in found]


CONFIG = divergence.DivergenceConfig()
METHODS = {
    "midflight": midflight,
    "olmo-core 6σ/128": lambda df: rolling_rule(df, 128, 6.0),
    "wandb 3σ/30": lambda df: rolling_rule(df, 30, 3.0),
    "megatron 10×": megatron_rule,
}


def score(found, labels) -> tuple[int, int, list[int], list]:
    """(true-positive intervals, false-positive intervals, delays of found labels, matched (label, class))."""
    tp = fp = 0
    delays, matched = [], []
    hit: dict[int, tuple] = {}
    for iv in found:
        owner = next((j for j, lab in enumerate(labels) if lab["onset"] - 2 <= iv[0] <= lab["end"] + 3), None)
        if owner is None:
            fp += 1
            continue
        tp += 1
        if owner not in hit or iv[0] < hit[owner][0]:
            hit[owner] = iv
    for j, iv in hit.items():
        delays.append(max(0, iv[0] - labels[j]["onset"]))
        matched.append((labels[j], iv[2] if len(iv) > 2 else None))
    return tp, fp, delays, matched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a quarter of the curves")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n_lab, n_clean = (20, 12) if args.quick else (160, 96)
    t0 = time.perf_counter()
    labelled = []
    for _ in range(n_lab):
        df = clean_curve(rng, 3000)
        labelled.append((df, inject(rng, df, 3)))
    labelled.append(bloom_case(rng))
    clean = [clean_curve(rng, 5000) for _ in range(n_clean)]
    n_labels = sum(len(lab) for _, lab in labelled)
    clean_steps = sum(len(df) for df in clean)
    print(f"{len(labelled)} labelled curves ({n_labels} spikes, one of them BLOOM-176B), "
          f"{len(clean)} clean curves ({clean_steps} steps), seed {args.seed}")  # fmt: skip
    rows, classes = [], []
    for name, fn in METHODS.items():
        t = time.perf_counter()
        tp = fp = 0
        delays, found_labels, bloom = [], 0, "missed"
        for df, labels in labelled:
            a, b, d, m = score(fn(df), labels)
            tp, fp, delays, found_labels = tp + a, fp + b, delays + d, found_labels + len(m)
            if labels[0]["shape"] == "bloom" and m:
                bloom = f"step {labels[0]['onset'] + d[0]}"
            if name == "midflight":
                classes += m
        fa = sum(len(fn(df)) for df in clean)
        precision = tp / (tp + fp + fa) if tp + fp + fa else 1.0
        recall = found_labels / n_labels
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        med = statistics.median(delays) if delays else float("nan")
        rows.append((name, precision, recall, f1, med, fp, fa * 1e4 / clean_steps, bloom, time.perf_counter() - t))
    head = ("method", "precision", "recall", "F1", "median delay", "FP (labelled)", "FA / 10k clean", "BLOOM", "s")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, p, r, f1, med, fp, fa, bloom, secs in rows:
        print(f"| {name} | {p:.3f} | {r:.3f} | {f1:.3f} | {med:.0f} | {fp} | {fa:.2f} | {bloom} | {secs:.1f} |")
    print("\nmidflight recall and classification by shape and size:")
    by: dict[tuple, list] = {}
    for _, labels in labelled:
        for lab in labels:
            by.setdefault((lab["shape"], lab["size"]), [0, 0, 0])[0] += 1
    for lab, cls in classes:
        cell = by[(lab["shape"], lab["size"])]
        cell[1] += 1
        cell[2] += (cls == "divergent") == lab["divergent"]
    print("| shape | size | spikes | found | right class |")
    print("|---|---|---|---|---|")
    for (shape, size), (n, f, c) in sorted(by.items()):
        print(f"| {shape} | {size} | {n} | {f} | {c} |")
    print(f"\n(total {time.perf_counter() - t0:.1f} s; right class = divergent iff the label is divergent)")


if __name__ == "__main__":
    main()
