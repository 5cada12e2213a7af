"""TelemetrySampler -> real Recorder -> event log -> DuckDB, on whatever this machine has (CPU; GPU when present)."""

import contextlib
import glob
import json
import os
import sys
import time
import types
import warnings

import pytest
import torch

from midflight import logbook
from midflight.logbook.store import queries
from midflight.trainer import nvml, telemetry
from midflight.trainer.telemetry import EnergyCounter, TelemetrySampler, TelemetryWarning

GPU_KEYS = {"util_pct", "mem_used_gib", "power_w", "energy_j", "temp_c", "sm_clock_mhz", "throttle_reasons"}


def _nvml_opens() -> bool:
    nv, _ = nvml.open_nvml()
    if nv is None:
        return False
    nv.close()
    return True


def _rapl_readable() -> bool:
    """Independent of the code under test: can this process read any RAPL package energy counter?"""
    for path in glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                float(f.read())
            return True
    return False


def _proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies, read here independently of the code under test."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4] - v[7], sum(v)


def _recorded(run_dir):
    """(samples as dicts ordered by time, [(event kind, fields)]) read back through logbook.open_run."""
    store, _ = logbook.open_run(run_dir)
    try:
        rows = (
            store.cursor()
            .execute(
                "SELECT device, step, wall_time, name, value FROM telemetry WHERE run_id = ? ORDER BY wall_time",
                [run_dir.name],
            )
            .fetchall()
        )
        ev = queries.events(store, run_dir.name)
        events = [(k, json.loads(f)) for k, f in zip(ev["kind"], ev["fields"])]
    finally:
        store.close()
    samples: dict = {}
    for device, step, t, name, value in rows:
        samples.setdefault((device, t), {"device": device, "step": step, "t": t})[name] = value
    return sorted(samples.values(), key=lambda s: s["t"]), events


def _only(events, kind):
    found = [f for k, f in events if k == kind]
    assert len(found) == 1, (kind, events)
    return found[0]


# ---------------------------------------------------------------------------------------------- EnergyCounter
def test_energy_counter_accumulates_deltas_from_its_first_reading():
    c = EnergyCounter()
    assert c.update(5_000) == 0.0  # the baseline: energy since the sampler started, not since boot
    assert [c.update(r) for r in (5_000, 5_250, 6_000, 6_000.5)] == [0.0, 250.0, 1_000.0, 1_000.5]
    assert c.update(float("nan")) == 1_000.5 and c.update(6_100.5) == 1_100.5  # garbage reading ignored


def test_energy_counter_reset_counts_from_zero_never_negative():
    c = EnergyCounter()
    totals = [c.update(r) for r in (1_000, 1_400, 100, 300, 50)]  # resets at 100 and at 50
    assert totals == [0.0, 400.0, 500.0, 700.0, 750.0]
    assert all(b >= a for a, b in zip(totals, totals[1:]))


def test_energy_counter_wraps_at_known_range():
    c = EnergyCounter(wrap_at=1_000)
    assert [c.update(r) for r in (900, 990, 20, 500)] == [0.0, 90.0, 120.0, 600.0]  # 990 -> wrap -> 20 is +30
    c = EnergyCounter(wrap_at=100)  # a reading above the stated range: treated as a reset, not a negative delta
    assert [c.update(r) for r in (150, 10)] == [0.0, 10.0]


# ---------------------------------------------------------------------------------------------- CPU path
def test_cpu_sampler_records_plausible_samples(tmp_path):
    run_dir = tmp_path / "cpu-run"
    run = logbook.init(run_dir, name="cpu", config={})
    state = {"step": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = TelemetrySampler(run=run, hz=20, device_type="cpu", step_fn=lambda: state["step"], cpu_tdp_w=100)
        sampler.start()
        time.sleep(0.06)
        busy0, total0 = _proc_stat()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # keep a core busy so utilisation, hence the estimate, is > 0
            state["step"] += 1
            sum(range(2_000))
        busy1, total1 = _proc_stat()
        sampler.stop()
    run.finish()
    assert not [w for w in caught if issubclass(w.category, TelemetryWarning)]
    assert sampler.errors == 0
    samples, events = _recorded(run_dir)
    rapl = _rapl_readable()
    assert sampler.source == ("rapl" if rapl else "estimate")
    start = _only(events, "telemetry_start")
    assert start["source"] == sampler.source and start["measured"] is rapl and start["hz"] == 20
    assert start["devices"][0]["device"] == "cpu" and start["devices"][0]["tdp_w"] == 100
    assert start["method"]
    assert _only(events, "telemetry_stop")["samples"] == len(samples)

    assert 5 <= len(samples) <= 14  # 20 Hz for 0.5 s, plus the final sample
    assert {s["device"] for s in samples} == {"cpu"}
    steps = [s["step"] for s in samples]
    assert all(isinstance(x, int) for x in steps) and steps == sorted(steps) and steps[-1] > steps[0]
    assert steps[-1] <= state["step"]
    mem_total_gib = start["devices"][0]["mem_total_gib"]
    for s in samples:
        assert 0 < s["mem_used_gib"] < mem_total_gib
        assert 0 < s["proc_rss_gib"] < mem_total_gib
    # The final sample can come less than a jiffy after the last tick: then it has no utilisation (nor estimate).
    assert all("util_pct" in s for s in samples[:-1])
    if "util_pct" not in samples[-1]:
        assert "energy_est_j" not in samples[-1] and "power_est_w" not in samples[-1]
        samples = samples[:-1]
    assert all(0 <= s["util_pct"] <= 100 for s in samples)
    # the samples inside the busy window agree with /proc/stat read independently over that window
    util = 100 * (busy1 - busy0) / (total1 - total0)
    inside = [s["util_pct"] for s in samples[1:-1]]
    assert sum(inside) / len(inside) == pytest.approx(util, abs=15) and util > 20
    energy_key, power_key = ("energy_j", "power_w") if rapl else ("energy_est_j", "power_est_w")
    other = "energy_est_j" if rapl else "energy_j"
    assert all(energy_key in s and other not in s for s in samples)
    energy = [s[energy_key] for s in samples]
    assert all(b >= a for a, b in zip(energy, energy[1:])) and energy[-1] > energy[0] >= 0
    if not rapl:  # the estimate is exactly tdp x utilisation, integrated over the sampler's clock
        assert all(s[power_key] == pytest.approx(100 * s["util_pct"] / 100) for s in samples)
        dt = [b["t"] - a["t"] for a, b in zip(samples, samples[1:])]
        integral = sum(p["power_est_w"] * d for p, d in zip(samples[1:], dt))
        assert energy[-1] - energy[0] == pytest.approx(integral, rel=0.25)


def test_rapl_counters_are_summed_over_packages_with_wrap(tmp_path, monkeypatch):
    root = tmp_path / "powercap"
    files = {}
    increments = {"intel-rapl:0": 50_000, "intel-rapl:1": 50_000, "intel-rapl:0:0": 30_000, "intel-rapl:2": 70_000}
    for domain, name, start in [
        ("intel-rapl:0", "package-0", 900_000),
        ("intel-rapl:1", "package-1", 10),
        ("intel-rapl:0:0", "core", 0),  # a sub-domain: inside package-0, must not be added again
        ("intel-rapl:2", "psys", 0),  # the platform domain overlaps the packages
    ]:
        d = root / domain
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "max_energy_range_uj").write_text("1000000\n")
        files[domain] = [d / "energy_uj", start]
        (d / "energy_uj").write_text(f"{start}\n")
    monkeypatch.setattr(telemetry, "RAPL_ROOT", str(root))

    def advance(domain, uj):
        path, value = files[domain]
        files[domain][1] = value = (value + uj) % 1_000_000
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, path)  # atomically: the sampler reads concurrently

    run_dir = tmp_path / "rapl-run"
    run = logbook.init(run_dir)
    sampler = TelemetrySampler(run=run, hz=20, device_type="cpu").start()
    time.sleep(0.1)  # the baseline reading
    for _ in range(20):  # 20 x 50 mJ per package; package-0 wraps after 2
        for domain in files:
            advance(domain, increments[domain])
        time.sleep(0.02)
    sampler.stop()
    run.finish()
    assert sampler.source == "rapl" and sampler.errors == 0
    samples, events = _recorded(run_dir)
    start = _only(events, "telemetry_start")
    assert start["measured"] is True and "2 package" in start["method"]
    energy = [s["energy_j"] for s in samples]
    assert all("energy_est_j" not in s and "power_est_w" not in s for s in samples)
    assert all(b >= a for a, b in zip(energy, energy[1:]))
    assert energy[-1] == pytest.approx(2.0)  # 2 packages x 20 x 0.05 J; core and psys left out
    assert any(s.get("power_w", 0) > 0 for s in samples)


def test_cuda_without_nvml_warns_and_falls_back_to_cpu(tmp_path, monkeypatch):
    if _nvml_opens():  # a GPU machine: make NVML unavailable the way a missing package would
        monkeypatch.setitem(sys.modules, "pynvml", None)
    run_dir = tmp_path / "run"
    run = logbook.init(run_dir)
    line = r"^midflight: NVML unavailable \(.+\); recording CPU figures instead, GPU telemetry is off$"
    with pytest.warns(TelemetryWarning, match=line):
        sampler = TelemetrySampler(run=run, hz=20, device_type="cuda", gpu_indices=[0]).start()
    time.sleep(0.2)
    sampler.stop()
    run.finish()
    assert sampler.source in ("rapl", "estimate") and sampler.errors == 0
    samples, events = _recorded(run_dir)
    assert len(samples) >= 2 and {s["device"] for s in samples} == {"cpu"}
    assert "util_pct" in samples[0] and "mem_used_gib" in samples[0]
    warning = _only(events, "telemetry_warning")
    assert warning["reason"] and warning["reason"] in warning["message"]
    assert _only(events, "telemetry_start")["source"] == sampler.source


def test_failing_reads_are_counted_warned_once_per_cause_and_sampling_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(telemetry, "PROC_STAT", str(tmp_path / "no-such-stat"))
    run_dir = tmp_path / "run"
    run = logbook.init(run_dir)

    def bad_step():
        raise ZeroDivisionError("step")

    with pytest.warns(TelemetryWarning) as caught:
        sampler = TelemetrySampler(run=run, hz=50, device_type="cpu", step_fn=bad_step).start()
        time.sleep(0.3)
        assert sampler._thread.is_alive()
        sampler.stop()
    run.finish()
    messages = [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]
    assert len([m for m in messages if "no-such-stat" in m]) == 1
    assert len([m for m in messages if "step_fn" in m]) == 1
    assert len(messages) == 2
    assert sampler.errors >= 2 * 8  # ~15 ticks at 50 Hz, two failures each
    samples, events = _recorded(run_dir)
    assert len(samples) >= 8
    assert all("mem_used_gib" in s and "util_pct" not in s and s["step"] is None for s in samples)
    assert all("energy_est_j" not in s for s in samples)  # no utilisation, no estimate: never a made-up figure
    assert len([f for k, f in events if k == "telemetry_warning"]) == 2


def test_any_exception_in_a_sample_is_caught_counted_and_warned_once(tmp_path):
    class FlakyRun:  # a Run never raises; the sampler must survive anything that does
        def __init__(self, run):
            self.run, self.fails = run, 3

        def event(self, *args, **kwargs):
            self.run.event(*args, **kwargs)

        def telemetry(self, *args, **kwargs):
            if self.fails:
                self.fails -= 1
                raise RuntimeError("flaky sink")
            self.run.telemetry(*args, **kwargs)

    run_dir = tmp_path / "run"
    run = logbook.init(run_dir)
    with pytest.warns(TelemetryWarning, match="flaky sink") as caught:
        sampler = TelemetrySampler(run=FlakyRun(run), hz=50, device_type="cpu").start()
        time.sleep(0.3)
        assert sampler._thread.is_alive()
        sampler.stop()
    run.finish()
    assert len(caught) == 1 and sampler.errors == 3
    samples, _ = _recorded(run_dir)
    assert len(samples) >= 5 and sampler.samples == len(samples)


def test_stop_is_prompt_idempotent_and_takes_a_final_sample(tmp_path):
    run_dir = tmp_path / "run"
    run = logbook.init(run_dir)
    sampler = TelemetrySampler(run=run, hz=0.2, device_type="cpu", step_fn=lambda: 7).start()
    time.sleep(0.2)
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 0.5  # the period is 5 s
    assert not sampler._thread.is_alive()
    t0 = time.monotonic()
    sampler.stop()
    sampler.start()  # a stopped sampler stays stopped
    assert time.monotonic() - t0 < 0.05 and not sampler._thread.is_alive()
    with TelemetrySampler(run=run, hz=0.2, device_type="cpu") as second:
        assert second._thread.is_alive()
    assert not second._thread.is_alive()
    run.finish()
    samples, events = _recorded(run_dir)
    assert [s["step"] for s in samples] == [7, None]  # one final sample each, no period waited for
    assert len([k for k, _ in events if k == "telemetry_stop"]) == 2
    assert len([k for k, _ in events if k == "telemetry_start"]) == 2


def test_an_overrunning_sample_skips_ticks_instead_of_piling_up(tmp_path):
    run_dir = tmp_path / "run"
    run = logbook.init(run_dir)
    calls = []

    def slow_once():
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(0.35)  # seven 50 ms periods
        return len(calls)

    sampler = TelemetrySampler(run=run, hz=20, device_type="cpu", step_fn=slow_once).start()
    time.sleep(0.8)
    sampler.stop()
    run.finish()
    assert sampler.ticks_skipped >= 5
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.35
    assert sum(g < 0.02 for g in gaps[1:-1]) <= 1  # catching up would fire the missed ticks back to back
    assert len(calls) <= 0.8 * 20 - 5 + 2


# ---------------------------------------------------------------------------------------------- NVML path
class _NotSupported(Exception):
    """What the stand-in NVML raises for a field the card lacks."""


def _fake_pynvml(energy_mj: dict, event_reasons: bool = True):
    """A stand-in pynvml module: two GPUs, ECC unsupported, energy readings taken from `energy_mj[handle]`."""
    nv = types.ModuleType("pynvml")
    nv.closed = False
    nv.NVML_TEMPERATURE_GPU, nv.NVML_CLOCK_SM = 0, 1
    nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC = 1, 0
    nv.nvmlInit = lambda: None
    nv.nvmlShutdown = lambda: setattr(nv, "closed", True)
    nv.nvmlDeviceGetCount = lambda: 2
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37, memory=5)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 << 30, total=80 << 30)
    nv.nvmlDeviceGetPowerUsage = lambda h: 250_000  # mW
    nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(energy_mj[h])
    nv.nvmlDeviceGetTemperature = lambda h, sensor: 61
    nv.nvmlDeviceGetClockInfo = lambda h, clock: 1980 if clock == 1 else 0
    reasons = "nvmlDeviceGetCurrentClocksEventReasons" if event_reasons else "nvmlDeviceGetCurrentClocksThrottleReasons"
    setattr(nv, reasons, lambda h: 4)

    def ecc(h, kind, counter):
        raise _NotSupported("Not Supported")

    nv.nvmlDeviceGetTotalEccErrors = ecc
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    return nv


def _readings(*values, step=1_000):
    yield from values
    last = values[-1]
    while True:
        last += step
        yield last


def test_open_nvml_never_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    nv, reason = nvml.open_nvml()
    assert nv is None and "pynvml" in reason
    fake = _fake_pynvml({})

    def init_fails():
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = init_fails
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nv, reason = nvml.open_nvml()
    assert nv is None and "Not Found" in reason


def test_nvml_sample_units_and_unsupported_fields(monkeypatch):
    fake = _fake_pynvml({"h0": _readings(123_456)}, event_reasons=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nv, reason = nvml.open_nvml()
    assert reason == ""
    assert list(nv.devices()) == [0, 1] and list(nv.devices([1])) == [1]
    sample = nv.sample(nv.devices([0])[0])
    assert sample == {
        "util_pct": 37.0,
        "mem_used_gib": 3.0,
        "power_w": 250.0,
        "energy_mj_raw": 123_456.0,
        "temp_c": 61.0,
        "sm_clock_mhz": 1980.0,
        "throttle_reasons": 4.0,  # from the older ...ThrottleReasons name
    }  # ecc_errors unsupported: absent, not an error
    assert nv.static_info("h0") == {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-h0",
        "mem_total_gib": 80.0,
        "tdp_w": 700.0,
    }
    nv.close()
    nv.close()
    assert fake.closed


def test_nvml_sampler_records_per_gpu_energy_from_deltas(tmp_path, monkeypatch):
    # gpu0's counter resets (12 J -> 1 J); the first reading is the baseline
    energy = {"h0": _readings(10_000, 12_000, 1_000, 4_000), "h1": _readings(0, step=500)}
    fake = _fake_pynvml(energy)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    run_dir = tmp_path / "run"
    run = logbook.init(run_dir)
    sampler = TelemetrySampler(run=run, hz=20, device_type="cuda", step_fn=lambda: 3).start()
    time.sleep(0.35)
    sampler.stop()
    run.finish()
    assert sampler.source == "nvml" and sampler.errors == 0 and fake.closed
    samples, events = _recorded(run_dir)
    start = _only(events, "telemetry_start")
    assert start["measured"] is True and "nvmlDeviceGetTotalEnergyConsumption" in start["method"]
    assert [d["device"] for d in start["devices"]] == ["gpu0", "gpu1"]
    assert start["devices"][0]["tdp_w"] == 700.0 and start["devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    gpu0 = [s for s in samples if s["device"] == "gpu0"]
    gpu1 = [s for s in samples if s["device"] == "gpu1"]
    assert len(gpu0) == len(gpu1) >= 4 and len(gpu0) + len(gpu1) == len(samples)
    assert all(set(s) - {"device", "step", "t"} == GPU_KEYS for s in samples)
    assert all(s["step"] == 3 and s["power_w"] == 250.0 and s["mem_used_gib"] == 3.0 for s in samples)
    assert [s["energy_j"] for s in gpu0][:5] == pytest.approx([2.0, 3.0, 6.0, 7.0, 8.0])
    assert [s["energy_j"] for s in gpu1][:3] == pytest.approx([0.5, 1.0, 1.5])


@pytest.mark.skipif(not (torch.cuda.is_available() and _nvml_opens()), reason="needs a CUDA GPU and NVML")
def test_real_gpu_fields_and_energy_rise_under_load(tmp_path):
    run_dir = tmp_path / "gpu-run"
    run = logbook.init(run_dir)
    state = {"step": 0}
    sampler = TelemetrySampler(run=run, hz=10, device_type="cuda", step_fn=lambda: state["step"]).start()
    a = torch.randn(8192, 8192, device="cuda")
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # the energy counter changes about every 100 ms: run well beyond that
        a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
        state["step"] += 1
    sampler.stop()
    run.finish()
    assert sampler.source == "nvml" and sampler.errors == 0
    samples, events = _recorded(run_dir)
    start = _only(events, "telemetry_start")
    assert start["measured"] is True and start["devices"]
    for dev in start["devices"]:
        assert dev["name"] and dev["tdp_w"] > 0 and dev["mem_total_gib"] > 0
    by_device: dict = {}
    for s in samples:
        by_device.setdefault(s["device"], []).append(s)
    assert set(by_device) == {d["device"] for d in start["devices"]}
    loaded = []
    for rows in by_device.values():
        assert len(rows) >= 10  # 10 Hz for >= 2 s; even 8 GPUs x ~4.4 ms fit in a period
        for s in rows:
            assert GPU_KEYS <= set(s)
            assert 0 <= s["util_pct"] <= 100 and s["mem_used_gib"] > 0 and s["power_w"] > 0
            assert 0 < s["temp_c"] < 120 and s["sm_clock_mhz"] > 0 and s["throttle_reasons"] >= 0
            assert s.get("ecc_errors", 0) >= 0
        energy = [s["energy_j"] for s in rows]
        assert all(b >= a for a, b in zip(energy, energy[1:])) and energy[-1] > energy[0]
        if max(s["util_pct"] for s in rows) > 50:
            loaded.append(energy[-1] - energy[0])
    assert loaded and max(loaded) > 100  # >= 2 s of matmuls draws well over 50 W on any datacenter GPU
    assert max(s["step"] for s in samples) > 0


def test_sampler_thread_is_a_daemon(tmp_path):
    run = logbook.init(tmp_path / "run")
    sampler = TelemetrySampler(run=run, hz=5, device_type="cpu").start()
    try:
        assert sampler._thread.daemon and sampler._thread.is_alive()
    finally:
        sampler.stop()
        run.finish()
