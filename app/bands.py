"""Distribution bands: how a chart shows hundreds of ranks or devices at once.

Why: one line per rank stops being readable (and drawable: 992 Plotly traces took 51 s) long before a
fleet's size. Past `data.FEW` series a chart draws, from one aggregate query (logbook.store.ranks), the
median across the fleet per bucket, the p5-p95 and min-max bands around it, and the worst member's own
curve, named. The Live page and the Energy page draw their fleet charts through here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from midflight.logbook.present import figures


def distribution(x, b: pd.DataFrame) -> list:
    """The min-max and p5-p95 bands of a FleetView's `band` frame, at x."""
    return [
        figures.Band("min–max", x, b["min"].to_numpy(), b["max"].to_numpy(), opacity=0.12),
        figures.Band("p5–p95", x, b["p5"].to_numpy(), b["p95"].to_numpy(), opacity=0.3),
    ]


def telemetry_band(view, step_to_x, *, on_time: bool) -> tuple[list, list]:
    """Many devices: the median of the devices' per-bucket extremes with its bands, and the worst device's
    curve, named. on_time: x is wall time (the bucket's middle); else step_to_x maps the bucket's step."""
    b = view.band
    steps = b["step"].ffill().bfill().fillna(0).to_numpy()
    x = ((b["x_lo"] + b["x_hi"]) / 2).to_numpy() if on_time else step_to_x(steps)
    lines = [figures.Line("median", x, b["median"].to_numpy(), steps, colour="#1f77b4", mode="lines")]
    if len(view.outliers):
        worst = view.outliers.iloc[0]
        i = list(view.rows["label"]).index(worst["label"])
        keep = np.isfinite(view.cells[i])
        ws = pd.Series(view.step).ffill().bfill().fillna(0).to_numpy()[keep]
        bx = ((view.x_lo + view.x_hi) / 2)[keep] if on_time else step_to_x(ws)
        y = view.cells[i][keep]
        lines.append(figures.Line(f"worst: {worst['label']}", bx, y, ws, colour="#d62728", mode="lines"))
    return lines, distribution(x, b)
