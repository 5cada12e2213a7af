"""Write a fleet-shaped run (hundreds of nodes x 8 GPUs) in midflight's own record format, fast.

Why: every view of midflight must stay readable and fast at the shape it exists for (OPT-175B:
124 nodes x 8 GPUs = 992 ranks), and tests and benchmarks need such runs in seconds, with known
incidents to find. The Recorder writes one rank per process; driving 992 of them from one process
would measure thread scheduling, not midflight. So this module writes the same bytes the Recorder's
flush thread writes (logbook.record.records: an `open` record, orjson `metrics` / `telemetry` blocks,
`event` records, a `close` record; a `segment.json` header from logbook.record.segments) into the
paths of logbook.record.layout, one rank file per rank, as the trainer lays them out:

- rank 0 logs the training metrics per step (loss, ppl, grad_norm, clipped, clip, lr, tokens,
  tokens_per_s, step_time_s, loss_scale, actv_norm);
- every other rank logs step_time_s per step;
- each node's local rank 0 logs NVML-like telemetry (util_pct, mem_used_gib, power_w, temp_c,
  sm_clock_mhz, energy_j) for the node's GPUs at `telemetry_hz`.

Records are blocks of `block` steps (a 0.5 s flush at a fast step writes a few steps per block).

Planted incidents (`plant`, each optional; steps scale with the run):
- "spike":     a loss spike (x3) for 3 steps at 60 % of the run;
- "overflow":  an overflow streak (fp16 loss-scale halvings, `overflow` events) of 5 steps at 40 %;
- "straggler": one rank +15 % step time for 50 steps from 50 % of the run (the rank is `straggler_rank`,
               default the middle rank: neither rank 0 nor a node's local rank 0);
- "slow_node": every rank of one node +8 % step time over the last quarter (off by default);
- "throttled_gpu": one GPU thermally throttled from 30 % of the run to its end: SM clock -30 %, +18 degC,
               power held at its cap, and its rank computes 12 % slower (off by default);
- "silent_gpu": one GPU's telemetry stops at 50 % of the run while every other device reports on; its
               rank trains on (off by default).

`synchronous=True` makes the ranks behave as synchronous data-parallel training does: every rank waits
for the slowest one, so `step_time_s` is the SAME on every rank (the slowest rank's compute plus a
collective), and what tells the ranks apart is what the trainer logs next to it: `compute_s` (the
rank's own work before it blocks on its peers) and `wait_s` (step_time_s - compute_s, time blocked in
collectives). The telemetry follows: a GPU's power follows its busy fraction (compute_s / step_time_s),
so the waiting ranks draw less than the culprit. `synchronous=False` (the default, kept for the views'
tests) logs each rank's own time as step_time_s, as if no rank waited.
`write_fleet_run` returns a dict describing what was planted (ranks, hosts, step ranges), so a test
asserts against the truth it planted, never a hard-coded number.

    python benchmarks/fleet_run.py RUN_DIR --nodes 64 --steps 300            # 512 ranks
    python benchmarks/fleet_run.py RUN_DIR --nodes 124 --steps 1000 --telemetry-hz 0.2 --plant spike,straggler
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midflight.logbook.record import layout, records, segments  # noqa: E402
from midflight.logbook.values import step as valid_step  # noqa: E402

PLANTS = ("spike", "overflow", "straggler", "slow_node", "throttled_gpu", "silent_gpu")
DEFAULT_PLANT = ("spike", "overflow", "straggler")
STRAGGLER_EXTRA = 0.15
STRAGGLER_STEPS = 50
SLOW_NODE_EXTRA = 0.08
THROTTLE_EXTRA = 0.12  # a throttled GPU's rank computes this much slower
THROTTLE_CLOCK = 0.70  # ... at this fraction of its SM clock
COLLECTIVE_S = 0.02  # synchronous: the collective's own cost, per step, as a fraction of step_s
TELEMETRY_NAMES = ["util_pct", "mem_used_gib", "power_w", "temp_c", "sm_clock_mhz", "energy_j"]
# As trainer.telemetry.DECIMALS (the sampler's sensor resolutions); energy_j is kept exact.
DECIMALS = {"util_pct": 0, "mem_used_gib": 3, "power_w": 1, "temp_c": 0, "sm_clock_mhz": 0}
TELEMETRY_RECORD_TICKS = 5  # a sampler at 1 Hz holding telemetry_every=5 s writes 5 ticks per record


def _block(kind: str, names: list[str], rows: list, device: str | None = None) -> bytes:
    rec = {"k": kind, "names": names, "rows": rows}
    if device is not None:
        rec["device"] = device
    return orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def write_fleet_run(
    run_dir: Path,
    *,
    nodes: int = 4,
    gpus_per_node: int = 8,
    steps: int = 300,
    telemetry_hz: float = 0.2,
    step_s: float = 20.0,
    seed: int = 0,
    plant=DEFAULT_PLANT,
    straggler_rank: int | None = None,
    block: int = 1,
    start_time: float = 1_780_000_000.0,
    segment_id: str = "seg-fleet-0",
    name: str | None = None,
    closed: bool = True,
    synchronous: bool = False,
    on_rank=None,
) -> dict:
    """Write the run; returns what was planted: {"ranks", "nodes", "steps", "straggler": {...}, ...}, and what
    was written: "points" and "bytes" ({"metrics", "telemetry"} points; {"logs", "telemetry"} bytes).
    `on_rank(rank)` is called after each rank's file is written (a progress bar)."""
    nodes, gpus_per_node, steps, block = (int(v) for v in (nodes, gpus_per_node, steps, block))
    if nodes < 1 or gpus_per_node < 1 or block < 1:
        raise ValueError("nodes, gpus_per_node and block must be >= 1")
    valid_step(steps)
    if steps < 10:
        raise ValueError(f"steps={steps}: a fleet run needs at least 10 steps")
    if not (telemetry_hz >= 0) or not (step_s > 0):
        raise ValueError("telemetry_hz must be >= 0 and step_s > 0")
    plant = tuple(plant)
    unknown = set(plant) - set(PLANTS)
    if unknown:
        raise ValueError(f"unknown incident(s) {sorted(unknown)}: choose from {', '.join(PLANTS)}")
    world = nodes * gpus_per_node
    run_dir = Path(run_dir)
    seg_dir = layout.segment_dir(run_dir, segment_id)
    seg_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hosts = [f"node{n:04d}" for n in range(nodes)]
    truth: dict = {"ranks": world, "nodes": nodes, "steps": steps, "hosts": hosts, "segment": segment_id}

    # ---- step times: every rank its own noisy time; the planted slow ones on top
    base = step_s * (1 + 0.01 * rng.standard_normal((world, steps)))  # ranks x steps
    if "straggler" in plant:
        r = (
            straggler_rank
            if straggler_rank is not None
            else world // 2 + (1 if (world // 2) % gpus_per_node == 0 else 0)
        )
        r = min(int(r), world - 1)
        s0 = steps // 2
        s1 = min(steps, s0 + STRAGGLER_STEPS)
        base[r, s0:s1] *= 1 + STRAGGLER_EXTRA
        truth["straggler"] = {"rank": r, "host": hosts[r // gpus_per_node], "first_step": s0, "last_step": s1 - 1}
    if "slow_node" in plant and nodes > 1:
        n = nodes - 1
        s0 = steps - steps // 4
        base[n * gpus_per_node : (n + 1) * gpus_per_node, s0:] *= 1 + SLOW_NODE_EXTRA
        truth["slow_node"] = {"host": hosts[n], "ranks": list(range(n * gpus_per_node, (n + 1) * gpus_per_node))}
        truth["slow_node"].update(first_step=s0, last_step=steps - 1)
    taken = {truth.get("straggler", {}).get("rank")} | set(truth.get("slow_node", {}).get("ranks", []))
    throttled = silent = None
    if "throttled_gpu" in plant:
        throttled = _pick(world, gpus_per_node, taken, frac=0.3, local=3)
        taken.add(throttled)
        s0 = int(steps * 0.3)
        base[throttled, s0:] *= 1 + THROTTLE_EXTRA
        node, g = divmod(throttled, gpus_per_node)
        truth["throttled_gpu"] = {"rank": throttled, "host": hosts[node], "device": f"gpu{g}"}
        truth["throttled_gpu"].update(first_step=s0, last_step=steps - 1)
    if "silent_gpu" in plant:
        silent = _pick(world, gpus_per_node, taken, frac=0.7, local=5)
        node, g = divmod(silent, gpus_per_node)
        truth["silent_gpu"] = {"rank": silent, "host": hosts[node], "device": f"gpu{g}"}
        truth["silent_gpu"].update(first_step=steps // 2, last_step=steps - 1)
    compute = base
    if synchronous:  # everyone waits for the slowest rank, then pays the collective
        step_all = base.max(axis=0) + COLLECTIVE_S * step_s
        base = np.broadcast_to(step_all, base.shape)
    # a step ends when its slowest rank does (synchronous training): wall clock from the max
    step_end = start_time + np.cumsum(base.max(axis=0))
    truth["synchronous"] = bool(synchronous)
    step_ids = np.arange(steps, dtype=np.int64)

    # ---- rank 0's training metrics
    loss = 10.0 * np.exp(-step_ids / max(steps / 3, 1)) + 2.0 + 0.02 * rng.standard_normal(steps)
    grad_norm = 1.0 + 0.1 * np.abs(rng.standard_normal(steps))
    scale = np.full(steps, 65536.0)
    events = []
    if "spike" in plant:
        s0 = int(steps * 0.6)
        loss[s0 : s0 + 3] *= 3.0
        grad_norm[s0 : s0 + 3] *= 20.0
        truth["spike"] = {"first_step": s0, "last_step": s0 + 2}
    if "overflow" in plant:
        s0 = int(steps * 0.4)
        for i, s in enumerate(range(s0, min(steps, s0 + 5))):
            before = 65536.0 / 2**i
            scale[s:] = before / 2
            ev = {"k": records.EVENT, "kind": "overflow", "step": s, "t": float(step_end[s])}
            ev["fields"] = {"scale_before": before, "scale_after": before / 2, "skipped": True}
            events.append((s, records.encode(ev)))
        truth["overflow"] = {"first_step": s0, "last_step": min(steps, s0 + 5) - 1}
    tokens_per_step = 2048 * 1024
    lr = np.full(steps, 6e-5)
    m_names = ["loss", "ppl", "grad_norm", "clipped", "clip", "lr", "tokens", "tokens_per_s", "step_time_s"]
    m_names += ["loss_scale", "actv_norm"]
    if synchronous:
        m_names += ["compute_s", "wait_s"]
    rank0 = np.column_stack(
        [
            step_ids,
            step_end,
            loss,
            np.exp(np.minimum(loss, 700)),
            grad_norm,
            (grad_norm > 1.0).astype(float),
            np.ones(steps),
            lr,
            (step_ids + 1) * tokens_per_step,
            tokens_per_step / base[0],
            base[0],
            scale,
            1.0 + 0.01 * rng.standard_normal(steps),
            *([compute[0], base[0] - compute[0]] if synchronous else []),
        ]
    )
    rank_names = ["step_time_s", "compute_s", "wait_s"] if synchronous else ["step_time_s"]

    # ---- telemetry samples (each node's local rank 0, for its GPUs)
    t_end = float(step_end[-1])
    n_samples = int((t_end - start_time) * telemetry_hz) if telemetry_hz > 0 else 0
    t_samples = start_time + (np.arange(n_samples) + 1) / telemetry_hz if n_samples else np.empty(0)
    t_steps = np.searchsorted(step_end, t_samples).clip(0, steps - 1)

    header = {
        "v": records.FORMAT_VERSION,
        "segment": segment_id,
        "run": name or run_dir.name,
        "parent": None,
        "resume_step": None,
        "reason": None,
        "start_time": start_time,
        "world_size": world,
        "host": hosts[0],
        "pid": 1,
        "config": {"model": "fleet", "nodes": nodes, "gpus_per_node": gpus_per_node, "steps": steps},
        "config_diff": {},
    }
    segments.write_header(run_dir, header)

    n_points = {"metrics": 0, "telemetry": 0}
    n_bytes = {"logs": 0, "telemetry": 0}
    for rank in range(world):
        node, local = divmod(rank, gpus_per_node)
        out = []
        opened = {"k": records.OPEN, "v": records.FORMAT_VERSION, "run": header["run"], "segment": segment_id}
        opened.update(rank=rank, local_rank=local, world=world, host=hosts[node], pid=1000 + rank, t=start_time)
        out.append(records.encode(opened))
        ev_i = 0
        for b0 in range(0, steps, block):
            b1 = min(steps, b0 + block)
            if rank == 0:
                out.append(_block(records.METRICS, m_names, _int_steps(rank0[b0:b1].tolist())))
                while ev_i < len(events) and events[ev_i][0] < b1:
                    out.append(events[ev_i][1])
                    ev_i += 1
            else:
                cols = [step_ids[b0:b1], step_end[b0:b1], base[rank, b0:b1]]
                if synchronous:
                    cols += [compute[rank, b0:b1], base[rank, b0:b1] - compute[rank, b0:b1]]
                rows = _int_steps(np.column_stack(cols).tolist())
                out.append(_block(records.METRICS, rank_names, rows))
        n_points["metrics"] += steps * (len(m_names) if rank == 0 else len(rank_names))
        if local == 0 and n_samples:
            tel = _telemetry(rng, node, gpus_per_node, t_samples, t_steps, compute, base, truth)
            out.extend(tel)
            n_bytes["telemetry"] += sum(len(r) for r in tel)
            n_points["telemetry"] += n_samples * gpus_per_node * len(TELEMETRY_NAMES)
            if silent is not None and silent // gpus_per_node == node:  # its samples stop: no points
                n_points["telemetry"] -= int((t_steps >= truth["silent_gpu"]["first_step"]).sum()) * len(
                    TELEMETRY_NAMES
                )
        if closed:
            close = {"k": records.CLOSE, "t": t_end, "reason": "completed", "exit_code": 0, "error": None}
            close.update(last_step=steps - 1, dropped_records=0, dropped_values=0, write_errors=0)
            out.append(records.encode(close))
        data = b"".join(out)
        n_bytes["logs"] += len(data)
        layout.rank_file(run_dir, segment_id, rank).write_bytes(data)
        if on_rank is not None:
            on_rank(rank)
    # what was written, counted as it was written: a benchmark's bytes per point divide these
    truth.update(points=n_points, bytes=n_bytes, t_end=t_end, step_s=step_s, telemetry_hz=telemetry_hz)
    truth.update(gpus_per_node=gpus_per_node, metric_names=m_names, rank_names=rank_names)
    return truth


class LiveFleet:
    """A written fleet run that goes on, for live-lag benchmarks: a new segment resumed from the run's last
    step (as a restart from the last checkpoint would be), to which `append()` writes the next step for
    every rank, as their Recorders' flushes would: rank 0's training metrics, every rank's step_time_s
    (and compute_s / wait_s when synchronous), and one telemetry tick of each node's GPUs from its local
    rank 0. Times are the wall clock, so the run is live; the step is on disk when append() returns.
    `close()` ends the segment as a finished run ends it."""

    def __init__(self, run_dir: Path, truth: dict, *, segment_id: str = "seg-fleet-live", seed: int = 1):
        self.run_dir, self.truth, self.segment_id = Path(run_dir), truth, segment_id
        self.world, self.gpus = truth["ranks"], truth["gpus_per_node"]
        self.step = truth["steps"]  # the parent ends at steps - 1: its last checkpoint
        self.rng = np.random.default_rng(seed)
        parent = segments.read_header(layout.segment_dir(self.run_dir, truth["segment"]) / layout.SEGMENT_HEADER)
        header = dict(parent, segment=segment_id, parent=truth["segment"], resume_step=truth["steps"] - 1)
        header.update(reason="benchmark: the fleet run goes on", start_time=time.time())
        segments.write_header(self.run_dir, header)
        now = time.time()
        for rank in range(self.world):
            opened = {"k": records.OPEN, "v": records.FORMAT_VERSION, "run": header["run"], "segment": segment_id}
            opened.update(rank=rank, local_rank=rank % self.gpus, world=self.world, pid=5000 + rank, t=now)
            opened["host"] = truth["hosts"][rank // self.gpus]
            self._append(rank, records.encode(opened))
        self.energy = np.zeros(self.world)

    def _append(self, rank: int, data: bytes) -> None:
        with open(layout.rank_file(self.run_dir, self.segment_id, rank), "ab") as f:
            f.write(data)

    def append(self) -> int:
        """Write step `self.step` on every rank; returns it."""
        i, t, step_s = self.step, time.time(), self.truth["step_s"]
        sync = self.truth["synchronous"]
        compute = step_s * (1 + 0.01 * self.rng.standard_normal(self.world))
        step_time = np.full(self.world, compute.max() * (1 + COLLECTIVE_S)) if sync else compute
        loss = 2.0 + 0.02 * self.rng.standard_normal()
        tokens = 2048 * 1024
        named = {
            "loss": loss, "ppl": float(np.exp(loss)), "grad_norm": 1.0, "clipped": 0.0, "clip": 1.0, "lr": 6e-5,
            "tokens": (i + 1) * tokens, "tokens_per_s": tokens / step_time[0], "step_time_s": step_time[0],
            "loss_scale": 65536.0, "actv_norm": 1.0, "compute_s": compute[0], "wait_s": step_time[0] - compute[0],
        }  # fmt: skip
        names = self.truth["metric_names"]
        self._append(0, _block(records.METRICS, names, [[i, t, *(float(named[n]) for n in names)]]))
        for rank in range(1, self.world):
            row = [i, t, float(step_time[rank])]
            if sync:
                row += [float(compute[rank]), float(step_time[rank] - compute[rank])]
            self._append(rank, _block(records.METRICS, self.truth["rank_names"], [row]))
        if self.truth["telemetry_hz"] > 0:
            devices = [f"gpu{g}" for g in range(self.gpus)]
            power = 120 + 300 * compute / step_time + 10 * self.rng.standard_normal(self.world)
            self.energy += power * step_s
            for node in range(self.world // self.gpus):
                vals = []
                for g in range(self.gpus):
                    r = node * self.gpus + g
                    vals += [97.0, 71.5, float(power[r]), 70.0, 1980.0, round(float(self.energy[r]), 3)]
                rec = records.encode_telemetry(devices, TELEMETRY_NAMES, [t], [i], [vals], decimals=DECIMALS)
                self._append(node * self.gpus, rec)
        self.step += 1
        return i

    def close(self) -> None:
        t = time.time()
        for rank in range(self.world):
            close = {"k": records.CLOSE, "t": t, "reason": "completed", "exit_code": 0, "error": None}
            close.update(last_step=self.step - 1, dropped_records=0, dropped_values=0, write_errors=0)
            self._append(rank, records.encode(close))


def _int_steps(rows: list) -> list:
    for row in rows:  # steps are integers in the record format, as the Recorder writes them
        row[0] = int(row[0])
    return rows


def _pick(world: int, gpus: int, taken: set, *, frac: float, local: int) -> int:
    """A rank near `frac` of the fleet at local index `local` (never a node's local rank 0), not taken."""
    r = (int(world * frac) // gpus) * gpus + min(local, gpus - 1)
    while r in taken or (gpus > 1 and r % gpus == 0):
        r = (r + gpus) % world if world > gpus else (r + 1) % world
    return r


def _telemetry(rng, node, gpus, t, t_steps, compute, step_time, truth: dict) -> list[bytes]:
    """One node's NVML-like samples as compact node records (records.encode_telemetry, as the sampler writes
    them): columns util, mem, power, temp, clock, energy per GPU, rounded as trainer.telemetry.DECIMALS.

    Asynchronous (legacy) model: a slow rank's GPU draws less power and runs cooler while it lags, so the
    straggler shows in power and SM clock too. Synchronous model: a GPU's power follows its busy fraction
    (compute_s / step_time_s): the ranks that wait for a straggler draw less than it does. A throttled
    GPU runs at THROTTLE_CLOCK of its clock, hot, with its power held at a cap; a silent GPU's samples
    stop at its first_step (absent, not NaN, from then on)."""
    n = len(t)
    dt = np.diff(t, prepend=t[0] - (t[1] - t[0] if n > 1 else 1.0))
    sync = truth.get("synchronous", False)
    thr, sil = truth.get("throttled_gpu"), truth.get("silent_gpu")
    cols, silent_cols = [], []
    for g in range(gpus):
        rank = node * gpus + g
        util = np.clip(97 + rng.standard_normal(n), 0, 100)
        mem = np.full(n, 71.5) + 0.05 * rng.standard_normal(n)
        clock = 1980 - 5 * np.abs(rng.standard_normal(n))
        if sync:
            busy = compute[rank, t_steps] / step_time[rank, t_steps]
            power = 120 + 300 * busy + 10 * rng.standard_normal(n)
            temp = 55 + 18 * busy + 1.5 * rng.standard_normal(n)
        else:
            slow = compute[rank, t_steps] / np.median(compute[:, t_steps], axis=0) - 1  # > 0 while this rank lags
            power = 400 + 10 * rng.standard_normal(n) - 600 * np.clip(slow, 0, None)
            temp = 70 + 1.5 * rng.standard_normal(n) - 20 * np.clip(slow, 0, None)
            clock = clock - 1500 * np.clip(slow, 0, None)
        if thr and thr["rank"] == rank:
            hot = t_steps >= thr["first_step"]
            clock = np.where(hot, clock * THROTTLE_CLOCK, clock)
            temp = np.where(hot, 89 + 0.8 * rng.standard_normal(n), temp)
            power = np.where(hot, np.minimum(power, 330 + 2 * rng.standard_normal(n)), power)
        energy = np.round(np.cumsum(power * dt), 3)  # NVML counts mJ
        if sil and sil["rank"] == rank:
            silent_cols = range(len(cols), len(cols) + len(TELEMETRY_NAMES))
        cols += [util, mem, power, temp, clock, energy]
    values = np.column_stack(cols).tolist()
    if silent_cols:
        for i in np.flatnonzero(t_steps >= sil["first_step"]):
            for j in silent_cols:
                values[i][j] = None  # the GPU stopped reporting: no sample, not a NaN one
    devices = [f"gpu{g}" for g in range(gpus)]
    steps, t = t_steps.tolist(), t.tolist()
    out = []
    for a in range(0, n, TELEMETRY_RECORD_TICKS):  # ticks per record: what the sampler holds (telemetry_every)
        b = min(n, a + TELEMETRY_RECORD_TICKS)
        rec = records.encode_telemetry(devices, TELEMETRY_NAMES, t[a:b], steps[a:b], values[a:b], decimals=DECIMALS)
        out.append(rec)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--nodes", type=int, default=124)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--telemetry-hz", type=float, default=0.2)
    ap.add_argument("--step-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block", type=int, default=1, help="steps per metrics record (a flush)")
    ap.add_argument("--plant", default=",".join(DEFAULT_PLANT), help=f"comma-separated: {', '.join(PLANTS)} or none")
    ap.add_argument("--synchronous", action="store_true", help="every rank waits for the slowest (logs compute_s)")
    a = ap.parse_args(argv)
    plant = () if a.plant in ("", "none") else tuple(p.strip() for p in a.plant.split(","))
    if a.run_dir.exists() and any(a.run_dir.iterdir()):
        ap.error(f"{a.run_dir} exists and is not empty")
    t0 = time.perf_counter()
    try:
        truth = write_fleet_run(
            a.run_dir, nodes=a.nodes, gpus_per_node=a.gpus_per_node, steps=a.steps, telemetry_hz=a.telemetry_hz,
            step_s=a.step_s, seed=a.seed, plant=plant, block=a.block, synchronous=a.synchronous,
        )  # fmt: skip
    except ValueError as exc:
        ap.error(str(exc))
    size = sum(p.stat().st_size for p in a.run_dir.rglob("*") if p.is_file())
    truth.pop("hosts")
    print(json.dumps(truth))
    took = time.perf_counter() - t0
    print(f"wrote {truth['ranks']} ranks x {truth['steps']} steps, {size / 1e6:.1f} MB in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
