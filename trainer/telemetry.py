"""Device telemetry: a background thread that records `run.telemetry(...)` samples for the node's devices.

A thread, because one NVML sample costs ~4.4 ms on an H100 (too much inside a step) and the GPU energy counter only
changes every ~100 ms, so energy is accumulated here over time, never read per step. Sources (`source`):
- "nvml", device "gpu{i}": util_pct, mem_used_gib, power_w, energy_j, temp_c, sm_clock_mhz, throttle_reasons,
  ecc_errors (a field a GPU does not support is absent).
- "rapl", device "cpu": util_pct, mem_used_gib, proc_rss_gib, power_w, energy_j (RAPL package counters, measured).
- "estimate", device "cpu": util_pct, mem_used_gib, proc_rss_gib, power_est_w, energy_est_j: cpu_tdp_w x utilisation,
  under other keys so that a model is never mistaken for a measurement.
Energy is in joules since the sampler started, util_pct in 0-100, memory in GiB (2**30 bytes).
"""

from __future__ import annotations

import glob
import math
import os
import threading
import time
import warnings
from collections.abc import Callable

from midflight.logbook.record.recorder import RecorderWarning

from . import nvml as _nvml

PROC_STAT = "/proc/stat"
PROC_MEMINFO = "/proc/meminfo"
PROC_SELF_STATUS = "/proc/self/status"
RAPL_ROOT = "/sys/class/powercap"
# Default nameplate power per logical core for the estimate: current server parts sit at ~2-3 W per hardware
# thread at TDP (EPYC 9654: 360 W / 192, Xeon 8480+: 350 W / 112), desktops and small VMs higher. Pass
# cpu_tdp_w when you know the real figure.
CPU_W_PER_LOGICAL_CORE = 4.0
_GIB = float(1 << 30)
# Decimals each NVML field is written with: its sensor's real resolution, so that the logs do not spend ~17
# digits per value on noise (docs/architecture.md, "Compact telemetry"). NVML reports utilisation, temperature
# and clocks as whole numbers; power comes in mW but GPU power sensors are good to ~1 % of a few hundred watts,
# so 0.1 W keeps more than the sensor knows; memory to 1 MiB. energy_j is a counter that every energy figure
# integrates: it is NOT listed, so it is written exactly (mJ resolution, as NVML counts it).
DECIMALS = {
    "util_pct": 0,
    "temp_c": 0,
    "sm_clock_mhz": 0,
    "power_w": 1,
    "mem_used_gib": 3,
    "throttle_reasons": 0,
    "ecc_errors": 0,
}


class TelemetryWarning(RecorderWarning):
    """Telemetry is degraded or partly missing; training is unaffected."""


class EnergyCounter:
    """Cumulative energy from a hardware counter's deltas, so that it survives counter wraps and resets.

    The first reading is the baseline (total 0). A reading lower than the previous one means the counter wrapped
    (at `wrap_at`, when known, as RAPL's does at max_energy_range_uj) or was reset (a driver reload): the delta is
    then `raw + wrap_at - prev`, or `raw` (counted from zero) when the wrap point is unknown. Never negative.
    Units are the counter's own.
    """

    def __init__(self, wrap_at: float | None = None):
        self.wrap_at = wrap_at
        self.total = 0.0
        self._prev: float | None = None

    def update(self, raw: float) -> float:
        raw = float(raw)
        if not math.isfinite(raw) or raw < 0:  # a garbage reading: ignore it, keep the baseline
            return self.total
        prev, self._prev = self._prev, raw
        if prev is not None:
            if raw >= prev:
                delta = raw - prev
            elif self.wrap_at and prev <= self.wrap_at:
                delta = raw + self.wrap_at - prev
            else:
                delta = raw
            self.total += delta
        return self.total


def _read_number(path: str) -> float:
    with open(path) as f:
        return float(f.read().strip())


def _read_stat() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot; idle, iowait and steal count as not busy."""
    with open(PROC_STAT) as f:
        parts = f.readline().split()
    if not parts or parts[0] != "cpu":
        raise ValueError(f"unexpected first line in {PROC_STAT}: {' '.join(parts)[:80]!r}")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[1:9])  # guest is inside user
    return user + nice + system + irq + softirq, user + nice + system + idle + iowait + irq + softirq + steal


def _read_kib(path: str, *keys: str) -> list[int]:
    """The kB values of `keys` in a /proc 'Key:   123 kB' file, in order; KeyError if one is missing."""
    found = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                found[key] = int(rest.split()[0])
    return [found[k] for k in keys]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.partition(":")[2].strip() for ln in f if ln.startswith("model name")), "cpu")
    except OSError:
        return "cpu"


def rapl_domains() -> list[tuple[str, float | None]]:
    """(energy_uj path, wrap point in uJ) of every readable RAPL package domain; [] if none (no RAPL, or not root).

    Only "package-N" domains are summed: the core/uncore/dram sub-domains and "psys" overlap with them.
    """
    found = []
    for d in sorted(glob.glob(os.path.join(RAPL_ROOT, "intel-rapl:*"))):
        try:
            with open(os.path.join(d, "name")) as f:
                if not f.read().startswith("package"):
                    continue
            path = os.path.join(d, "energy_uj")
            _read_number(path)  # readable by us? (root-only on kernels patched for PLATYPUS)
        except (OSError, ValueError):
            continue
        try:
            wrap: float | None = _read_number(os.path.join(d, "max_energy_range_uj"))
        except (OSError, ValueError):
            wrap = None
        found.append((path, wrap))
    return found


class TelemetrySampler:
    """Samples the node's devices at `hz` on a daemon thread and records them with `run.telemetry`.

    One per node (create it on local rank 0 only). Args, all keyword:
        run: the logbook Run to record into; call stop() before run.finish().
        hz: samples per second (NVML data are ~100 ms granular, so > 10 Hz buys nothing on GPUs).
        device_type: "cuda" (NVML, falling back to CPU figures with a warning) or "cpu".
        gpu_indices: NVML indices to sample (default: all GPUs on the node); devices are named "gpu{index}".
        step_fn: returns the trainer's current step, stamped on each sample (None: unstamped).
        cpu_tdp_w: CPU package nameplate power in W, for the "estimate" source only (default:
            CPU_W_PER_LOGICAL_CORE x os.cpu_count()).
    Never raises after construction: errors are counted in `errors`, warned once per cause, and sampling goes on.
    """

    def __init__(
        self,
        *,
        run,
        hz: float = 1.0,
        device_type: str,
        gpu_indices: list[int] | None = None,
        step_fn: Callable[[], int | None] | None = None,
        cpu_tdp_w: float | None = None,
    ):
        if not hz > 0:
            raise ValueError(f"TelemetrySampler(hz={hz!r}): hz must be > 0")
        if device_type not in ("cuda", "cpu"):
            raise ValueError(f"TelemetrySampler(device_type={device_type!r}): expected 'cuda' or 'cpu'")
        self.run, self.hz, self.device_type, self.step_fn = run, float(hz), device_type, step_fn
        self.gpu_indices = None if gpu_indices is None else [int(i) for i in gpu_indices]
        self.tdp_given = cpu_tdp_w is not None
        self.cpu_tdp_w = float(cpu_tdp_w) if cpu_tdp_w is not None else CPU_W_PER_LOGICAL_CORE * (os.cpu_count() or 1)
        self.source: str | None = None  # "nvml", "rapl" or "estimate", set by start()
        self.errors = self.samples = self.ticks_skipped = 0
        self._warned: set = set()
        self._nvml: _nvml.Nvml | None = None
        self._gpus: dict[int, tuple[object, EnergyCounter]] = {}  # NVML index -> (handle, energy counter)
        self._rapl: list[tuple[str, EnergyCounter]] = []
        self._rapl_prev: tuple[float, float] | None = None  # (joules, monotonic time)
        self._stat_prev: tuple[int, int, float] | None = None  # (busy, total, monotonic time)
        self._energy_est_j = 0.0
        self._stop_evt, self._lock = threading.Event(), threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TelemetrySampler:
        """Choose the source, record `telemetry_start`, start the thread. Idempotent; never raises."""
        with self._lock:
            if self._thread is not None or self._stopped:
                return self
            try:
                self._setup()
            except Exception as exc:
                self._fail("setup", exc)
            self._thread = threading.Thread(target=self._loop, name="midflight-telemetry", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Take a final sample, join the thread, record `telemetry_stop`. Idempotent; prompt (no period wait)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stop_evt.set()
            thread = self._thread
            if thread is None:
                return
            thread.join(timeout)
            if thread.is_alive():  # a hung driver call: leave the daemon thread, don't hang the trainer
                self._fail("stop", TimeoutError(f"sampler thread still busy after {timeout} s; left running"))
            elif self._nvml is not None:
                self._nvml.close()
            self.run.event("telemetry_stop", samples=self.samples, errors=self.errors, skipped=self.ticks_skipped)

    def __enter__(self) -> TelemetrySampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _setup(self) -> None:
        if self.device_type == "cuda":
            nv, reason = _nvml.open_nvml()
            if nv is not None:
                self._gpus = {i: (h, EnergyCounter()) for i, h in nv.devices(self.gpu_indices).items()}
                if self._gpus:
                    self._nvml = nv
                else:
                    nv.close()
                    reason = "NVML found no GPU" + ("" if self.gpu_indices is None else f" at {self.gpu_indices}")
            if self._nvml is None:
                msg = f"midflight: NVML unavailable ({reason}); recording CPU figures instead, GPU telemetry is off"
                warnings.warn(msg, TelemetryWarning, stacklevel=3)
                self.run.event("telemetry_warning", reason=reason, message=msg)
        hz = f"on a background thread at {self.hz:g} Hz"
        if self._nvml is not None:
            self.source, measured = "nvml", True
            devices = [
                {"device": f"gpu{i}", "index": i, **self._nvml.static_info(h)} for i, (h, _) in self._gpus.items()
            ]
            method = (
                f"NVML {hz}; energy_j accumulates deltas of nvmlDeviceGetTotalEnergyConsumption (mJ, updated about "
                "every 100 ms, so use windows >= 100 ms); power_w is nvmlDeviceGetPowerUsage"
            )
        else:
            self._rapl = [(path, EnergyCounter(wrap)) for path, wrap in rapl_domains()]
            measured = bool(self._rapl)
            self.source = "rapl" if measured else "estimate"
            mem = self._guard("memory from " + PROC_MEMINFO, _read_kib, PROC_MEMINFO, "MemTotal")
            tdp_how = "given" if self.tdp_given else f"default {CPU_W_PER_LOGICAL_CORE:g} W x {os.cpu_count()} cores"
            cpu = {"device": "cpu", "name": _cpu_name(), "logical_cores": os.cpu_count(), "tdp_source": tdp_how}
            devices = [{**cpu, "mem_total_gib": mem and mem[0] * 1024 / _GIB, "tdp_w": self.cpu_tdp_w}]
            method = (
                f"RAPL {hz}: energy_j sums the deltas of {len(self._rapl)} package energy_uj counter(s), wrapping at "
                "max_energy_range_uj; power_w = energy delta / time"
                if measured
                else f"ESTIMATE, not a measurement (no readable energy counter), {hz}: power_est_w = cpu_tdp_w "
                f"({self.cpu_tdp_w:g} W, {tdp_how}) x machine CPU utilisation from /proc/stat; energy_est_j is its "
                "integral over time"
            )
        self.run.event(
            "telemetry_start", source=self.source, measured=measured, hz=self.hz, devices=devices, method=method
        )

    # ------------------------------------------------------------------ sampler thread
    def _loop(self) -> None:
        period = 1.0 / self.hz
        self._tick(record=False)  # baselines for the /proc/stat and energy deltas
        next_t = time.monotonic() + period
        while not self._stop_evt.wait(max(0.0, next_t - time.monotonic())):
            self._tick()
            next_t += period
            now = time.monotonic()
            if next_t <= now:  # the sample overran its period: skip the missed ticks, never pile up
                missed = int((now - next_t) // period) + 1
                self.ticks_skipped += missed
                next_t += missed * period
        self._tick()  # the final sample

    def _tick(self, record: bool = True) -> None:
        try:
            step = self._step() if record else None
            if self._nvml is not None:
                self._sample_gpus(step, record)
            else:
                self._sample_cpu(step, record)
        except Exception as exc:  # the thread must never die
            self._fail("sample", exc)

    def _step(self) -> int | None:
        step = self._guard("step_fn", self.step_fn) if self.step_fn is not None else None
        return None if step is None else self._guard("step_fn", int, step)

    def _sample_gpus(self, step: int | None, record: bool) -> None:
        block = {}
        for i, (handle, energy) in self._gpus.items():
            values = self._nvml.sample(handle)
            raw = values.pop("energy_mj_raw", None)
            if raw is not None:
                values["energy_j"] = energy.update(raw) / 1000.0
            if values:
                block[f"gpu{i}"] = values
        if record and block:  # one call per tick for all of the node's GPUs: one compact record per flush
            self.run.telemetry_block(block, step=step, decimals=DECIMALS)
            self.samples += len(block)

    def _sample_cpu(self, step: int | None, record: bool) -> None:
        now, values = time.monotonic(), {}
        readers = [
            ("CPU utilisation from " + PROC_STAT, self._util),
            ("memory from " + PROC_MEMINFO, self._memory),
            ("process RSS from " + PROC_SELF_STATUS, self._rss),
        ]
        if self._rapl:
            readers.append(("RAPL energy", self._rapl_energy))
        for what, read in readers:  # one failing source costs only its own keys
            values.update(self._guard(what, read, now) or {})
        if record and values:
            self.run.telemetry(values, device="cpu", step=step)
            self.samples += 1

    def _util(self, now: float) -> dict[str, float]:
        """util_pct averaged since the previous reading, and (without RAPL) the estimate over that interval."""
        busy, total = _read_stat()
        prev = self._stat_prev
        if prev is not None and total <= prev[1]:  # no jiffy elapsed yet: keep the older baseline
            return {}
        self._stat_prev = (busy, total, now)
        if prev is None:
            return {}
        util = min(100.0, max(0.0, 100.0 * (busy - prev[0]) / (total - prev[1])))
        if self._rapl:
            return {"util_pct": util}
        power = self.cpu_tdp_w * util / 100.0
        self._energy_est_j += power * (now - prev[2])
        return {"util_pct": util, "power_est_w": power, "energy_est_j": self._energy_est_j}

    def _memory(self, now: float) -> dict[str, float]:
        total, available = _read_kib(PROC_MEMINFO, "MemTotal", "MemAvailable")
        return {"mem_used_gib": (total - available) * 1024 / _GIB}

    def _rss(self, now: float) -> dict[str, float]:
        return {"proc_rss_gib": _read_kib(PROC_SELF_STATUS, "VmRSS")[0] * 1024 / _GIB}

    def _rapl_energy(self, now: float) -> dict[str, float]:
        joules = sum(counter.update(_read_number(path)) for path, counter in self._rapl) / 1e6
        prev, self._rapl_prev = self._rapl_prev, (joules, now)
        if prev is None or now <= prev[1]:
            return {"energy_j": joules}
        return {"energy_j": joules, "power_w": (joules - prev[0]) / (now - prev[1])}

    # ------------------------------------------------------------------ errors
    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            self._fail(what, exc)
            return None

    def _fail(self, what: str, exc: BaseException) -> None:
        """Count, and warn (and record a telemetry_warning event) once per (what, exception type)."""
        self.errors += 1
        cause = (what, type(exc))
        if cause in self._warned:
            return
        self._warned.add(cause)
        msg = f"midflight telemetry: {what} failed: {exc!r}; sampling goes on, repeats are only counted"
        warnings.warn(msg, TelemetryWarning, stacklevel=2)
        self.run.event("telemetry_warning", reason=msg, where=what)
