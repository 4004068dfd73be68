"""The device table: memory bandwidth, dense peak FLOPs per dtype and memory of common GPUs and CPUs
(data/devices.toml, each row with its source), and which dtype's peak a computation gets on a device."""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import SpecError, shown
from lab.paths import SHIPPED_DATA

DEVICES_FILE = SHIPPED_DATA / "devices.toml"
DTYPES = ("fp32", "tf32", "bf16", "fp16", "int8")
# Where a device lacks the dtype a computation asks for, the next one it has: a GPU without bf16 (T4) runs bf16
# models in fp16 at best; a CPU without a bf16 unit computes in fp32.
FALLBACK = {"fp32": ("fp32",), "tf32": ("tf32", "fp32"), "bf16": ("bf16", "fp16", "fp32"),
            "fp16": ("fp16", "bf16", "fp32"), "int8": ("int8", "fp16", "bf16", "fp32")}


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # gpu | cpu
    bandwidth_gbs: float  # 10^9 bytes/s
    peak_tflops: dict = field(default_factory=dict)  # dtype -> dense peak, 10^12 FLOP/s (int8: 10^12 op/s)
    memory_gb: float | None = None
    source: str = ""
    measured_at: str | None = None  # set for "this machine, measured once"

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9

    def peak(self, dtype: str) -> tuple[str, float]:
        """(the dtype whose peak is used, FLOP/s) for a computation in `dtype` (see FALLBACK)."""
        for candidate in FALLBACK.get(dtype, (dtype,)):
            if candidate in self.peak_tflops:
                return candidate, self.peak_tflops[candidate] * 1e12
        raise SpecError(f"{self.name} lists no peak for {dtype} or a dtype that stands in for it")


def _positive(device: str, what: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"device '{device}': {what} must be a positive number, got {shown(value)}")
    return float(value)


def device_from_dict(raw: dict) -> Device:
    """A checked Device from a table row (or from machine.json): positive bandwidth and peaks, known dtypes."""
    name = str(raw.get("name", "unnamed"))
    peaks = raw.get("peak_tflops") or {}
    unknown = sorted(set(peaks) - set(DTYPES))
    if unknown:
        raise SpecError(f"device '{name}': unknown dtype {', '.join(unknown)} in peak_tflops; allowed: "
                        f"{', '.join(DTYPES)}")
    if "fp32" not in peaks:
        raise SpecError(f"device '{name}': peak_tflops needs fp32 (every other dtype falls back to it)")
    memory = raw.get("memory_gb")
    return Device(name=name, kind=str(raw.get("kind", "gpu")),
                  bandwidth_gbs=_positive(name, "bandwidth_gbs", raw.get("bandwidth_gbs")),
                  peak_tflops={d: _positive(name, f"peak_tflops.{d}", v) for d, v in peaks.items()},
                  memory_gb=None if memory is None else _positive(name, "memory_gb", memory),
                  source=str(raw.get("source", "")), measured_at=raw.get("measured_at"))


def load_devices(path: Path = DEVICES_FILE) -> dict[str, Device]:
    """The device table by name, in file order."""
    with open(path, "rb") as f:
        rows = tomllib.load(f).get("device", [])
    return {device.name: device for device in map(device_from_dict, rows)}
