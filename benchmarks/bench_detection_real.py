"""Detection on real training logs next to the synthetic benchmark, for this detector and the previous one.

Why: the synthetic curves of bench_divergence.py are dense (a point every step) and start at step 1;
real logs of large runs print a line every 10-100 steps and are often excerpts that start mid-run.
This scores both on the labelled real excerpts in tests/fixtures/real_spikes/labels.json (BigScience
tr1-13B, tr8-104B, tr8b-104B and BLOOM-176B chronicles; fairseq and metaseq issues), each imported
through midflight's own importer into a real store and read back the way the dashboard reads it.

Scoring (real logs): incidents of the kinds in labels.json, not superseded, merged when they overlap
or are within one logging interval. An incident is a true positive when the step it was raised at
(detected_step) lies in [onset - tol, end + tol], tol = max(3, the file's median step gap); a label is
found when one does; any other incident is a false positive. Tuning and held-out cases are scored
apart. Synthetic: bench_divergence.py's labelled and clean curves (same seed), scored as there.

"previous" is logbook/analysis/divergence.py at commit PREVIOUS, loaded from git into this process
and fed what the store gave it before (metric rows only, overflow as a flag).

    python benchmarks/bench_detection_real.py            # seed 1, full synthetic set
    python benchmarks/bench_detection_real.py --quick    # a quarter of the synthetic curves
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_divergence as synth  # noqa: E402

from midflight import logbook  # noqa: E402
from midflight.logbook.analysis import divergence  # noqa: E402
from midflight.logbook.importers import import_logs  # noqa: E402
from midflight.logbook.report import incidents as incident_report  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
LABELS = FIX / "real_spikes" / "labels.json"
PREVIOUS = "8960ec1"  # the detector before sparse-log support (issue 14)


def previous_module():
    """The previous detector, from git, as a module of its own; None where git or the commit is missing."""
    try:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{PREVIOUS}:logbook/analysis/divergence.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("divergence_previous", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["divergence_previous"] = mod  # dataclasses look their module up
    exec(compile(src, f"divergence@{PREVIOUS}", "exec"), mod.__dict__)
    return mod


def previous_frames(frames: dict) -> dict:
    """What the store gave the previous detector: rows with metrics only, overflow as a flag."""
    out = dict(frames)
    for key in ("effective", "superseded"):
        df = frames[key]
        if "events_only" in df.columns:
            df = df[~df["events_only"].fillna(False).astype(bool)].drop(columns=["events_only"])
        if "overflow" in df.columns:
            df = df.assign(overflow=df["overflow"].fillna(0).astype(float) > 0)
        out[key] = df.reset_index(drop=True)
    return out


def load_cases(tmp: Path) -> list[dict]:
    """Each labelled file imported with its importer into its own run directory, and its detector inputs."""
    spec = json.loads(LABELS.read_text())
    cases = []
    for k, case in enumerate(spec["cases"]):
        run_dir = tmp / f"case{k}"
        import_logs(case["format"], [FIX / case["file"]], run_dir)
        store, _ = logbook.open_run(run_dir, store_path=str(tmp / f"case{k}.duckdb"))
        frames = incident_report.inputs(store, run_dir.name)
        steps = np.sort(frames["effective"]["step"].to_numpy(dtype=float))
        gap = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
        cases.append({**case, "frames": frames, "tol": max(3.0, gap), "points": len(steps)})
    return cases, set(spec["kinds"])


def score_real(found, case, kinds) -> tuple[int, int, int]:
    """(true positives, false positives, labels found) for one case."""
    iv = sorted(
        (i.detected_step if i.detected_step is not None else i.start_step, i.end_step)
        for i in found
        if i.kind in kinds and not i.superseded
    )
    merged: list[list[float]] = []
    for a, b in iv:
        if merged and a <= merged[-1][1] + case["tol"]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    tp = fp = 0
    hit = set()
    for a, _ in merged:
        j = next(
            (
                j
                for j, lab in enumerate(case["incidents"])
                if lab["onset"] - case["tol"] <= a <= lab["end"] + case["tol"]
            ),
            None,
        )
        if j is None:
            fp += 1
        else:
            tp += 1
            hit.add(j)
    return tp, fp, len(hit)


def prf(tp: int, fp: int, found: int, labels: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = found / labels if labels else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def synthetic(detect, seed: int, quick: bool) -> tuple[float, float, float, float]:
    """bench_divergence.py's curves and scoring: (precision, recall, F1, false alarms / 10k clean steps)."""
    rng = np.random.default_rng(seed)
    n_lab, n_clean = (20, 12) if quick else (160, 96)
    labelled = []
    for _ in range(n_lab):
        df = synth.clean_curve(rng, 3000)
        labelled.append((df, synth.inject(rng, df, 3)))
    labelled.append(synth.bloom_case(rng))
    clean = [synth.clean_curve(rng, 5000) for _ in range(n_clean)]

    def run(df):
        return [(i.detected_step, i.end_step) for i in detect(df[["step", "loss", "grad_norm"]])]

    tp = fp = found = n_labels = 0
    for df, labels in labelled:
        a, b, _, m = synth.score(run(df), labels)
        tp, fp, found, n_labels = tp + a, fp + b, found + len(m), n_labels + len(labels)
    fa = sum(len(run(df)) for df in clean)
    p = tp / (tp + fp + fa) if tp + fp + fa else 1.0
    r = found / n_labels
    return p, r, (2 * p * r / (p + r) if p + r else 0.0), fa * 1e4 / sum(len(df) for df in clean)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a quarter of the synthetic curves")
    ap.add_argument("--cases", action="store_true", help="also print every real case's incidents")
    args = ap.parse_args()
    t0 = time.perf_counter()
    prev = previous_module()
    detectors = {"this": (divergence, lambda f: f)}
    if prev is not None:
        detectors[f"previous ({PREVIOUS})"] = (prev, previous_frames)
    else:
        print(f"(previous detector unavailable: no git or no commit {PREVIOUS})")
    with tempfile.TemporaryDirectory() as tmp:
        cases, kinds = load_cases(Path(tmp))
        rows = []
        for name, (mod, adapt) in detectors.items():
            cells = {}
            for split in ("tuning", "held-out"):
                tp = fp = found = labels = 0
                for case in (c for c in cases if c["split"] == split):
                    got = mod.incidents_from(adapt(case["frames"]))
                    a, b, h = score_real(got, case, kinds)
                    tp, fp, found, labels = tp + a, fp + b, found + h, labels + len(case["incidents"])
                    if args.cases:
                        short = [(i.kind, i.detected_step, i.end_step) for i in got if i.kind in kinds]
                        print(f"  {name:<22} {split:<8} {case['file']:<52} tp={a} fp={b} {short}")
                cells[split] = (*prf(tp, fp, found, labels), tp, fp, found, labels)
            sp, sr, sf, sfa = synthetic(mod.detect, args.seed, args.quick)
            rows.append((name, cells, (sp, sr, sf, sfa)))
    n = {s: sum(1 for c in cases if c["split"] == s) for s in ("tuning", "held-out")}
    lab = {s: sum(len(c["incidents"]) for c in cases if c["split"] == s) for s in ("tuning", "held-out")}
    pts = {s: sum(c["points"] for c in cases if c["split"] == s) for s in ("tuning", "held-out")}
    print(
        f"real logs: tuning {n['tuning']} files ({lab['tuning']} incidents, {pts['tuning']} points), held-out "
        f"{n['held-out']} files ({lab['held-out']} incidents, {pts['held-out']} points); synthetic: seed {args.seed}"
        f"{' (quick)' if args.quick else ''}"
    )
    head = ("detector", "synthetic P / R / F1", "FA / 10k clean", "real tuning P / R / F1 (FP)",
            "real held-out P / R / F1 (FP)")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name, cells, (sp, sr, sf, sfa) in rows:
        real = [f"{c[0]:.2f} / {c[1]:.2f} / {c[2]:.2f} ({c[4]})" for c in (cells["tuning"], cells["held-out"])]
        print(f"| {name} | {sp:.3f} / {sr:.3f} / {sf:.3f} | {sfa:.2f} | {real[0]} | {real[1]} |")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
