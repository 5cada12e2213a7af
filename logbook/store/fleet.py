"""How often a run's devices report telemetry: the one number across-rank detection needs to size its buckets.

Why: a device is "silent" only after it missed more than a sampling period, and a time bucket shorter
than the period is empty by chance, not because the device stopped. One aggregate answers it.
"""

from __future__ import annotations

from midflight.logbook.store import schema
from midflight.logbook.store.database import Store


def telemetry_cadence(store: Store, run: str, name: str) -> dict | None:
    """{"devices", "samples", "t_lo", "t_hi", "period_s"} of one telemetry series of a run, or None if it
    has none. period_s: the mean time between two samples of one device. Read from the widest tiles
    (a few rows per device however long the run), not from the samples."""
    row = (
        store.cursor()
        .execute(
            """SELECT count(DISTINCT (rank, device)), sum(n), min(p_first.t), max(p_last.t)
           FROM telemetry_tiles WHERE run_id = ? AND name = ? AND width = ?""",
            [run, name, schema.TELEMETRY_TILES[-1]],
        )
        .fetchone()
    )
    if not row or not row[1]:
        return None
    devices, samples, lo, hi = int(row[0]), int(row[1]), float(row[2]), float(row[3])
    per_device = samples / max(devices, 1)
    period = (hi - lo) / (per_device - 1) if per_device > 1 else float("inf")
    return {"devices": devices, "samples": samples, "t_lo": lo, "t_hi": hi, "period_s": period}
