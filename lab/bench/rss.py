"""This process's resident memory (Linux /proc), without torch: the memory probe's llama.cpp child measures itself
with this and must not load torch (python + torch alone is about 200 MB, more than llama.cpp's own work).

The peak comes from the kernel's own high-water mark (VmHWM), reset at the start of the measured block by writing
5 to /proc/self/clear_refs (Linux 4.0+): exact, where a sampling thread can miss a peak shorter than its interval.
Where the reset is refused, a thread samples RSS every 2 ms instead.
"""
from __future__ import annotations

import os
import threading

SAMPLE_INTERVAL_S = 0.002


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_bytes() -> int | None:
    """VmHWM: the largest RSS since the process started or since reset_high_water(); None where not reported."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def reset_high_water() -> bool:
    """Set VmHWM to the current RSS; False where the kernel refuses (not Linux, or clear_refs not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return high_water_bytes() is not None


class PeakRSS:
    """Peak RSS during a block and the RSS at its start: VmHWM where it can be reset, else sampled every 2 ms."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S):
        self.interval = interval
        self.start = self.peak = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self.exact = reset_high_water()
        if not self.exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        hwm = high_water_bytes() if self.exact else None
        self.peak = max(self.peak, rss_bytes(), hwm or 0)
        return False

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.start)
