"""Where steps are on the chart's x axis (step, tokens or wall time), and what is drawn there: the run's
markers and its metric lines, both taken from `logbook` (queries via app.data, markers from
logbook.present.markers) and placed on the current axis."""

from __future__ import annotations

import numpy as np
import pandas as pd

from midflight.app import data
from midflight.app.context import Ctx
from midflight.app.zoom import zoom
from midflight.logbook.present.figures import Line
from midflight.logbook.present.markers import Marker, run_markers


def _axis_curve(ctx: Ctx, run: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, x) along the run's effective curve on the current axis: how steps map to tokens or time."""
    names = data.metric_names(ctx.src, ctx.k, run)
    loss = data.roles(ctx.src, ctx.k, run).get("loss")  # the run's loss, whatever it is called (logbook.roles)
    name = loss.metric if loss else (names[0] if names else None)
    df = data.series(ctx.src, ctx.k, run, name, x=ctx.axis) if name else pd.DataFrame()
    if df.empty:
        return np.empty(0), np.empty(0)
    df = df.sort_values("step")
    return df["step"].to_numpy(float), df["x"].to_numpy(float)


def step_mapper(ctx: Ctx, run: str | None = None):
    """step -> x on the current axis, interpolated along the run's effective curve (identity on the step axis)."""
    if ctx.axis == "step":
        return lambda s: np.asarray(s, dtype="float64")
    steps, xs = _axis_curve(ctx, run or ctx.run)
    if not len(steps):
        return lambda s: np.full(np.shape(s), np.nan)
    return lambda s: np.interp(np.asarray(s, dtype="float64"), steps, xs)


def x_to_step(ctx: Ctx, x: float) -> int:
    """The step at a point of the current axis (a box selection's edge on the tokens or time axis)."""
    if ctx.axis == "step":
        return int(round(x))
    steps, xs = _axis_curve(ctx, ctx.run)
    if not len(steps):
        return 0
    order = np.argsort(xs, kind="stable")
    return int(round(np.interp(x, xs[order], steps[order])))


def markers(ctx: Ctx, run: str | None = None) -> list[Marker]:
    """Every marker of a run (logbook.present.markers), placed on the current axis. Incident markers appear
    once the background scan is in: never wait for it here."""
    run = run or ctx.run
    incs, _ = data.incidents(ctx.src, run, wait=0)
    ms = run_markers(
        data.segments(ctx.src, ctx.k, run, data.tick()),
        incs,
        data.annotations(ctx.src, ctx.k, run),
        data.interventions(ctx.src, ctx.k, run),
    )
    if not ms or ctx.axis == "step":
        return ms
    xs = step_mapper(ctx, run)([m.step for m in ms])
    return [m.at(x) for m, x in zip(ms, xs) if np.isfinite(x)]


def line(
    ctx: Ctx, name: str, *, rank=0, label: str | None = None, buckets: int = data.GRID_BUCKETS, **kw
) -> Line | None:
    """A metric of the run as a chart line, downsampled by the query layer, within the zoom range."""
    df = data.series(ctx.src, ctx.k, ctx.run, name, x=ctx.axis, rank=rank, x_range=zoom(ctx), buckets=buckets)
    if df.empty:
        return None
    return Line(label or name, df["x"].to_numpy(), df["value"].to_numpy(), df["step"].to_numpy(), **kw)
