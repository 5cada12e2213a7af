"""Energy and CO2eq of a run: metered, estimated and nameplate figures side by side.

Three figures, never mixed up:

- **metered**: the sum of energy-counter deltas (telemetry `energy_j`) over every device of every
  node: NVML on GPUs, RAPL on CPUs. The sampler's counter starts at 0 when it starts (one sampler
  per node per segment); a counter that goes backwards (a reset or a restarted sampler) is taken to
  have restarted from 0, so its new value is the energy since the reset. Summing non-negative deltas
  per (segment, host, device) series survives any number of resets, where max - min would not.
- **estimated**: the same arithmetic over `energy_est_j` (the trainer's CPU estimate, TDP x
  utilisation). It is labelled an estimate everywhere and never counted as metered.
- **nameplate**: TDP x wall time x device count, an upper bound, only where a TDP is known: the
  devices reported it (`telemetry_start`, `devices[].tdp_w`, from NVML), the user gave a device and
  TDP at init (`midflight.init(..., device=, tdp_w=)`), or gives one to the report (`--tdp-w`).
- **none**: without any of these a segment has no energy figure, and says so ("no energy data").
  There is no silent default: a loop that mostly slept must not be charged an A100's 400 W.

Per-step energy interpolates each series' cumulative energy linearly at the wall time at which
a step was logged. Samples come every ~0.1-0.5 s, so a step shorter than the sampling interval
gets a share of an interval's energy, not a measurement of its own: sum steps over a range
(hundreds of steps) before reading anything into them.

CO2eq = energy x PUE x grid carbon intensity. `grid_intensity.csv` (shipped with the package)
holds per-country and per-cloud-region intensities, each with its year, source and licence.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from midflight.logbook.values import missing

J_PER_KWH = 3.6e6
METERED_NAME = "energy_j"  # NVML (GPU) or RAPL (CPU) counter: a measurement
ESTIMATE_NAME = "energy_est_j"  # the trainer's CPU estimate (TDP x utilisation): never a measurement
GRID_TABLE = Path(__file__).with_name("grid_intensity.csv")

# Reference points, with how each figure was computed. `co2eq_kg` reproduces the GPT-3 numbers.
REFERENCES = {
    "gpt3": {
        "name": "GPT-3 175B",
        "co2eq_t": 552.0,
        "energy_mwh": 1287.0,
        "pue": 1.1,
        "intensity_g_per_kwh": 429.0,
        "method": "Patterson et al. 2021 (arXiv:2104.10350), Table 4: 1,287 MWh of facility energy (PUE 1.1 "
        "included) x 0.429 kgCO2e/kWh = 552 tCO2e; the IT energy alone (1,287 / 1.1 = 1,170 MWh) x 0.429 "
        "gives about 502 t, i.e. the figure without PUE.",
        "estimated": True,
    },
    "opt175b": {
        "name": "OPT-175B",
        "co2eq_t": 75.0,
        "method": "Zhang et al. 2022 (arXiv:2205.01068): the authors' own estimate of about 75 tCO2eq for the "
        "final training run (vs. ~500 t for GPT-3 and 380 t for Gopher). An estimate, not a metered figure; "
        "the paper's footnote says the true total, counting ablations, baselines and downtime, was about 2x "
        "higher.",
        "estimated": True,
    },
}


# ----------------------------------------------------------------- pure arithmetic
def cumulative(values, start: float = 0.0) -> np.ndarray:
    """Reset-tolerant cumulative energy of one counter series (samples in time order).

    The first sample is the energy since the sampler started; each later sample adds its delta,
    or, when the counter went backwards (reset, restarted sampler), its own value (energy since
    the reset). NaN samples are skipped. start: the counter's value before these samples (a series
    continued from its last kept value, so only new samples are read): the first sample adds its delta
    from it.
    """
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    x = v[ok]
    prev = np.concatenate(([float(start)], x[:-1]))
    total = np.cumsum(np.where(x >= prev, x - prev, np.maximum(x, 0.0)))
    last = np.cumsum(ok) - 1  # per sample: the last finite sample at or before it (-1: none yet)
    return np.where(last >= 0, total[np.maximum(last, 0)] if len(total) else 0.0, 0.0)


def energy_at(times, cum, t: float) -> float:
    """Cumulative energy at wall time t: linear between samples, 0 before the first, flat after the last."""
    times = np.asarray(times, dtype=float)
    if len(times) == 0:
        return 0.0
    if t <= times[0]:
        # before the first sample: the first sample's energy accrued since the sampler started;
        # without its start time, attribute it to the first sample's instant
        return 0.0
    return float(np.interp(t, times, np.asarray(cum, dtype=float)))


def co2eq_kg(energy_j: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """CO2eq in kg = energy (J -> kWh) x PUE x grid intensity (gCO2eq/kWh -> kg)."""
    return energy_j / J_PER_KWH * pue * intensity_g_per_kwh / 1000.0


# ----------------------------------------------------------------- grid intensity table
@lru_cache(maxsize=1)
def grid_table() -> tuple[dict, ...]:
    """Rows of grid_intensity.csv: key, kind (country|cloud_region), name, g_per_kwh, year, source, url, licence."""
    with open(GRID_TABLE, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    for r in rows:
        r["g_per_kwh"] = float(r["g_per_kwh"])
        r["year"] = int(r["year"])
    return tuple(rows)


def grid_intensity(region: str) -> dict:
    """The table row for a country (name or ISO-3 code) or a cloud region id, case-insensitive."""
    want = region.strip().lower()
    for r in grid_table():
        if want in (r["key"].lower(), r["key"].split(":", 1)[-1].lower(), r["name"].lower()):
            return dict(r)
    raise KeyError(f"no grid intensity for {region!r}: pass intensity_g_per_kwh, or a key from {GRID_TABLE.name}")


# ----------------------------------------------------------------- projection
def project(
    measured_j: float,
    measured_tokens: float,
    planned_tokens: float,
    *,
    n_params: float | None = None,
    planned_params: float | None = None,
    intensity_g_per_kwh: float | None = None,
    pue: float = 1.0,
    estimated: bool = False,
) -> dict:
    """Project the energy and CO2eq of a planned run from measured J/token (and J/FLOP with 6·N·D)."""
    if measured_tokens <= 0:
        raise ValueError("measured_tokens must be positive")
    j_per_token = measured_j / measured_tokens
    assumptions = [
        f"energy scales linearly with tokens at the measured {j_per_token:.4g} J/token "
        f"({'an ESTIMATE, not metered' if estimated else 'metered'}, from {measured_tokens:.4g} tokens)",
        "same hardware, parallelism, utilisation and batch size as the measured stretch",
        "no restarts, rollbacks, evaluation or idle time beyond what the measured stretch contained",
    ]
    out = {"j_per_token": j_per_token, "planned_tokens": planned_tokens, "estimated": estimated}
    if n_params:
        n_plan = planned_params or n_params
        j_per_flop = measured_j / (6.0 * n_params * measured_tokens)
        out["j_per_flop"] = j_per_flop
        out["projected_j"] = j_per_flop * 6.0 * n_plan * planned_tokens
        assumptions.append(
            f"training FLOPs = 6·N·D (N = {n_plan:.4g} parameters; attention FLOPs ignored), at the measured "
            f"{j_per_flop:.4g} J/FLOP of the N = {n_params:.4g} run"
        )
    else:
        out["projected_j"] = j_per_token * planned_tokens
    out["projected_kwh"] = out["projected_j"] / J_PER_KWH
    if intensity_g_per_kwh is not None:
        out["co2eq_kg"] = co2eq_kg(out["projected_j"], intensity_g_per_kwh, pue)
        assumptions.append(f"grid intensity {intensity_g_per_kwh:g} gCO2eq/kWh and PUE {pue:g}, constant over the run")
    else:
        out["co2eq_kg"] = None
    out["assumptions"] = "; ".join(assumptions) + "."
    return out


# ----------------------------------------------------------------- meters and per-segment figures (from frames)
@dataclass
class Meter:
    """One cumulative energy series: one device of one node in one segment."""

    segment_id: str
    host: str
    device: str
    metered: bool  # False for energy_est_j
    times: np.ndarray
    cum: np.ndarray
    last: float = math.nan  # the counter's last finite reading (where a continued series starts from)

    def between(self, t0: float, t1: float) -> float:
        return max(0.0, energy_at(self.times, self.cum, t1) - energy_at(self.times, self.cum, t0))

    @property
    def total(self) -> float:
        return float(self.cum[-1]) if len(self.cum) else 0.0


@dataclass
class MeterTotal:
    """What a segment's figures need of a Meter: whose it is and its total (kept in the store per segment)."""

    segment_id: str
    host: str
    device: str
    metered: bool
    total: float
    last_t: float = math.nan  # the newest sample integrated, and its reading: where the next window starts
    last: float = math.nan


def meters_from(
    samples: pd.DataFrame, *, metered: bool, start: dict | None = None, after: dict | None = None
) -> list[Meter]:
    """One Meter per (segment, host, device) of one counter's samples (wall_time, segment_id, host, rank,
    device, value). A node has one sampler: when two ranks report a device, the lower rank's counter is
    kept, so two counters are never interleaved. For series that continue a kept integral: start
    {(segment, host, device): the counter's reading before these samples} (see cumulative) and after
    {(segment, host, device): wall time}: that series' samples up to then are already counted."""
    if samples.empty:
        return []
    host = samples["host"]
    if host.isna().any():  # a rank without an open record: named by its rank
        host = host.astype(object).where(host.notna(), "rank" + samples["rank"].astype(str))
    df = samples.assign(host=host)
    df = df[df["rank"] == df.groupby(["segment_id", "host", "device"])["rank"].transform("min")]
    if after:
        done = pd.DataFrame([(*k, t) for k, t in after.items()], columns=["segment_id", "host", "device", "_after"])
        df = df.merge(done, how="left", on=["segment_id", "host", "device"])
        df = df[~(df["wall_time"] <= df["_after"])].drop(columns="_after")
    df = df.sort_values(["segment_id", "host", "device", "wall_time"], kind="stable")
    out = []
    for (seg, host, dev), g in df.groupby(["segment_id", "host", "device"], sort=False):
        v = g["value"].to_numpy(float)
        cum = cumulative(v, (start or {}).get((seg, host, dev), 0.0))
        fin = v[np.isfinite(v)]
        last = float(fin[-1]) if len(fin) else math.nan
        out.append(Meter(seg, host, dev, metered, g["wall_time"].to_numpy(float), cum, last))
    return out


def totals_rows(totals: pd.DataFrame, *, metered: bool) -> list[list]:
    """[host, device, metered, total, last_t, last] per meter from a store's per-(rank, device) counter
    totals (queries.counter_totals), named and chosen as meters_from does: a rank without a host is
    "rank<N>", and of two ranks reporting one device the lower rank's counter counts."""
    out: dict = {}
    for r in totals.itertuples():
        host = r.host if isinstance(r.host, str) else f"rank{r.rank}"
        key = (r.segment_id, host, r.device)
        if key not in out or r.rank < out[key][0]:
            out[key] = (r.rank, [host, r.device, metered, float(r.total), float(r.last_t), float(r.last)])
    return [row for _, row in out.values()]


def summed_curve(ms: list[Meter], points: int) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative energy of several meters together at `points` evenly spaced wall times over their
    span (each meter interpolated, 0 before its first sample, flat after its last)."""
    ms = [m for m in ms if len(m.times)]
    if not ms:
        return np.empty(0), np.empty(0)
    lo, hi = min(float(m.times[0]) for m in ms), max(float(m.times[-1]) for m in ms)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    return grid, sum(np.interp(grid, m.times, m.cum, left=0.0) for m in ms)


def nameplate(starts: pd.DataFrame, hosts: dict, world_sizes: dict, tdp_w: float | None = None) -> dict[str, dict]:
    """Per segment with a known TDP: {"watts", "devices", "source"}. Never a silent default: a segment whose
    TDP nobody gave has no entry, and its energy is unknown ("no energy data").

    In order: the TDPs its devices reported (telemetry_start events from NVML, `starts`: segment_id, rank,
    fields); else the device and TDP the user gave at init (`midflight.init(..., tdp_w=, device=)`, a
    telemetry_start event marked `given`); else `tdp_w` given now (`midflight summary --tdp-w`) x world size.
    A reported device without a TDP takes `tdp_w` when given, else is left out. hosts: {(segment, rank): host}.
    """
    seen: dict[str, dict] = {}
    for r in starts.itertuples():
        try:
            fields = json.loads(r.fields) if isinstance(r.fields, str) else {}
        except ValueError:
            fields = {}
        if not isinstance(fields, dict):
            continue
        host = hosts.get((r.segment_id, r.rank)) or f"rank{r.rank}"
        given = fields.get("given") is True
        entry = seen.setdefault(r.segment_id, {"reported": {}, "given": {}, "label": None})
        for d in fields.get("devices") or [] if isinstance(fields.get("devices"), list) else []:
            if isinstance(d, dict) and d.get("device") is not None:
                tdp = d.get("tdp_w")
                tdp = float(tdp) if isinstance(tdp, int | float) and 0 < tdp < math.inf else tdp_w
                if tdp is not None:
                    entry["given" if given else "reported"][(host, str(d["device"]))] = tdp
                    if given:
                        entry["label"] = f"{str(d.get('model') or 'device')[:60]} {tdp:g} W"
    out = {}
    for seg, world in world_sizes.items():
        entry = seen.get(seg, {})
        if entry.get("reported"):
            devs = entry["reported"]
            out[seg] = {"watts": sum(devs.values()), "devices": len(devs), "source": "TDP reported by the devices"}
        elif entry.get("given"):
            devs = entry["given"]
            source = f"TDP given at init: {entry['label']} x {len(devs)}"
            out[seg] = {"watts": sum(devs.values()), "devices": len(devs), "source": source}
        elif tdp_w is not None:
            n = 1 if missing(world) else int(world)
            out[seg] = {"watts": n * tdp_w, "devices": n, "source": f"TDP given: {tdp_w:g} W x {n} ranks"}
    return out


def window_energy(ms: list[Meter], segment_id: str, t0: float, t1: float) -> dict:
    """Metered and estimated joules of one segment between two wall times (None where no such series)."""
    metered = [m.between(t0, t1) for m in ms if m.segment_id == segment_id and m.metered]
    est = [m.between(t0, t1) for m in ms if m.segment_id == segment_id and not m.metered]
    return {"metered_j": sum(metered) if metered else None, "estimated_j": sum(est) if est else None}


NO_DATA = "none"  # the basis of a figure nobody can give: no meter, no estimate, no TDP


def best(row: dict) -> dict:
    """The figure to report for a segment or a branch: metered, else estimated, else nameplate (a TDP someone
    gave or a device reported), else none at all; and its basis."""
    if row["metered_j"] is not None:
        return {"energy_j": row["metered_j"], "basis": "metered", "estimated": False}
    if row["estimated_j"] is not None:
        return {"energy_j": row["estimated_j"], "basis": "estimate", "estimated": True}
    if row["nameplate_j"] is not None:
        return {"energy_j": row["nameplate_j"], "basis": "nameplate", "estimated": True}
    return {"energy_j": None, "basis": NO_DATA, "estimated": False}


def segment_rows(
    segments: list[tuple[str, bool]],
    ms: list[Meter] | list[MeterTotal],
    times: dict[str, tuple[float, float]],
    plates: dict[str, dict],
) -> list[dict]:
    """One dict per (segment_id, effective) pair: metered_j, estimated_j, nameplate_j, energy_j (best), basis.
    ms: Meters or MeterTotals (only each one's segment, host, device, kind and total are read)."""
    out = []
    for seg, effective in segments:
        t0, t1 = times.get(seg, (math.nan, math.nan))
        duration = max(0.0, t1 - t0) if math.isfinite(t0) else 0.0
        mine = [m for m in ms if m.segment_id == seg]
        metered = [m.total for m in mine if m.metered]
        est = [m.total for m in mine if not m.metered]
        plate = plates.get(seg, {"watts": None, "devices": None, "source": None})
        row = {
            "segment_id": seg,
            "effective": bool(effective),
            "duration_s": duration,
            "metered_j": sum(metered) if metered else None,
            "estimated_j": sum(est) if est else None,
            "nameplate_j": None if plate["watts"] is None else plate["watts"] * duration,
            "nameplate_w": plate["watts"],
            "nameplate_devices": plate["devices"],
            "nameplate_source": plate["source"],
            "meters": sorted(f"{m.host}/{m.device}{'' if m.metered else ' (estimate)'}" for m in mine),
        }
        row.update(best(row))
        out.append(row)
    return out


def totals(segs: list[dict]) -> dict:
    """The run's figures from its segment rows: every segment counts, wasted branches included; the best
    figure per segment is summed, so the run is `estimated` if any segment lacks a meter."""

    def total(key):
        vals = [s[key] for s in segs if s[key] is not None]
        return sum(vals) if vals else None

    bases = sorted({s["basis"] for s in segs})
    return {
        "metered_j": total("metered_j"),
        "estimated_j": total("estimated_j"),
        "nameplate_j": total("nameplate_j"),
        "segments": segs,
        "energy_j": total("energy_j"),
        "basis": "+".join(bases) if bases else NO_DATA,
        "estimated": any(s["estimated"] for s in segs),
    }


def per_step(
    step_times: pd.DataFrame,
    ms: list[Meter],
    times: dict[str, tuple[float, float]],
    plates: dict[str, dict],
    ranges: dict,
) -> pd.DataFrame:
    """Energy of each logged step (step_times: segment_id, step, wall_time), with columns steps, metered_j,
    estimated_j, nameplate_j and effective. A step's energy is the interpolated cumulative energy at its wall
    time minus that at the previous logged step of its segment (the segment's start for the first); `steps`
    is how many steps that covers when not every step is logged. ranges: {segment_id: effective Range}.
    Precision is the sampling interval, not the step: sum over hundreds of steps before reading anything in."""
    if step_times.empty:
        return step_times.assign(steps=[], metered_j=[], estimated_j=[], nameplate_j=[], effective=[])
    parts = []
    for seg, g in step_times.groupby("segment_id", sort=False):
        t = g["wall_time"].to_numpy(float)
        start = times.get(seg, (t[0], t[0]))[0]
        prev_t = np.concatenate([[min(start, t[0])], t[:-1]])
        steps = g["step"].to_numpy()
        prev_s = np.concatenate([[steps[0] - 1], steps[:-1]])
        cols = {}
        for label, flag in (("metered_j", True), ("estimated_j", False)):
            mine = [m for m in ms if m.segment_id == seg and m.metered == flag]
            if mine:
                at = sum(np.interp(t, m.times, m.cum, left=0.0) for m in mine)
                before = sum(np.interp(prev_t, m.times, m.cum, left=0.0) for m in mine)
                cols[label] = np.maximum(at - before, 0.0)
            else:
                cols[label] = np.full(len(t), np.nan)
        rng = ranges.get(seg)
        eff = (steps > rng.lo) & (steps <= rng.hi) if rng else np.zeros(len(t), bool)
        watts = plates.get(seg, {"watts": math.nan})["watts"]  # NaN: no TDP known for this segment
        parts.append(g.assign(steps=steps - prev_s, nameplate_j=watts * (t - prev_t), effective=eff, **cols))
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------- CO2eq settings
DEFAULT_REGION = "World"  # without a region or an intensity, CO2eq uses the world-average grid (Ember 2023)
ENERGY_METHOD = (
    "metered = sum of non-negative energy_j counter deltas per (segment, host, device), NVML/RAPL; "
    "estimated = the same over energy_est_j (TDP x utilisation, not a measurement); "
    "nameplate = TDP x wall time x devices, only where the devices reported their TDP or the user gave one "
    "(never a default); energy_j is the best figure per segment (metered, else estimate, else nameplate, else "
    "none: no energy data), summed over the segments that have one, wasted branches included; "
    "j_per_token divides it by the effective tokens"
)


def co2_basis(region: str | None = None, intensity_g_per_kwh: float | None = None, pue: float | None = None) -> dict:
    """How CO2eq will be computed, with where each number came from: the given intensity, else the region's
    row of the grid table, else none (CO2eq unknown). PUE defaults to 1.0 (IT energy only) and says so.
    Raises KeyError for a region the table does not have."""
    co2: dict = {"intensity_g_per_kwh": None, "pue": 1.0 if pue is None else float(pue), "source": None}
    if intensity_g_per_kwh is not None:
        co2.update(intensity_g_per_kwh=float(intensity_g_per_kwh), source="given by the user")
    elif region is not None:
        row = grid_intensity(region)
        co2.update(
            intensity_g_per_kwh=row["g_per_kwh"],
            source=f"{row['name']} {row['year']}: {row['source']} ({row['url']}), {row['licence']}",
        )
    co2["pue_source"] = "given by the user" if pue is not None else "not given: 1.0 (IT energy only)"
    return co2


def co2eq_of(energy_j: float | None, basis: dict) -> float | None:
    """CO2eq in kg of `energy_j` under a co2_basis(); None when either is unknown."""
    if energy_j is None or basis["intensity_g_per_kwh"] is None:
        return None
    return co2eq_kg(energy_j, basis["intensity_g_per_kwh"], basis["pue"])
