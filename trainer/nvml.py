"""Thin NVML access for the telemetry sampler; the only module that imports pynvml, and only inside open_nvml().

Nothing here raises: a machine without a GPU or without libnvidia-ml gets `(None, reason)` from open_nvml(), and a
field a GPU does not support (ECC on consumer cards, energy on old ones) is simply absent from a sample.
"""

from __future__ import annotations

import contextlib

_GIB = float(1 << 30)


def open_nvml() -> tuple[Nvml | None, str]:
    """Import pynvml and initialise NVML: `(Nvml, "")`, or `(None, reason)` when that is impossible. Never raises."""
    try:
        import pynvml
    except Exception as exc:  # not installed, or a broken install
        return None, f"cannot import pynvml (nvidia-ml-py): {exc}"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound on a machine without the driver, DriverNotLoaded, ...
        return None, f"nvmlInit failed: {exc}"
    return Nvml(pynvml), ""


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class Nvml:
    """An initialised NVML session. Handles are NVML indices (index i = NVML device i, not CUDA_VISIBLE_DEVICES)."""

    def __init__(self, module):
        self._nv = module
        self._open = True

    def count(self) -> int:
        try:
            return int(self._nv.nvmlDeviceGetCount())
        except Exception:
            return 0

    def devices(self, indices: list[int] | None = None) -> dict[int, object]:
        """{NVML index: handle} for all local GPUs or the given indices; an index NVML cannot open is left out."""
        handles = {}
        for i in range(self.count()) if indices is None else indices:
            with contextlib.suppress(Exception):  # an index NVML cannot open is left out
                handles[int(i)] = self._nv.nvmlDeviceGetHandleByIndex(int(i))
        return handles

    def sample(self, handle) -> dict[str, float]:
        """One reading of every field the GPU supports (~4.4 ms on an H100: call it off the training thread).

        energy_mj_raw is NVML's raw cumulative counter (mJ since driver load); the sampler turns it into deltas.
        """
        nv = self._nv
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        fields = {
            "util_pct": lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu,
            "mem_used_gib": lambda: nv.nvmlDeviceGetMemoryInfo(handle).used / _GIB,
            "power_w": lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # mW
            "energy_mj_raw": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle),
            "temp_c": lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM),
            "throttle_reasons": lambda: reasons(handle),  # bitmask of nvmlClocksEventReason*
            "ecc_errors": lambda: nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            ),
        }
        out = {}
        for key, read in fields.items():
            with contextlib.suppress(Exception):  # NVMLError_NotSupported and friends: the field is absent
                out[key] = float(read())
        return out

    def static_info(self, handle) -> dict:
        """name, uuid, tdp_w (enforced power limit, else the default limit) and mem_total_gib, where readable."""
        nv = self._nv
        info: dict = {}
        for key, read in (
            ("name", lambda: _text(nv.nvmlDeviceGetName(handle))),
            ("uuid", lambda: _text(nv.nvmlDeviceGetUUID(handle))),
            ("mem_total_gib", lambda: nv.nvmlDeviceGetMemoryInfo(handle).total / _GIB),
            ("tdp_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
            ("tdp_w", lambda: nv.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000.0),
        ):
            if key in info:
                continue
            with contextlib.suppress(Exception):
                info[key] = read()
        return info

    def close(self) -> None:
        """nvmlShutdown, once."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
