"""How busy the machine was while a run measured, so a timing taken beside other work is never silently valid.

`LoadMonitor` wraps a run: it reads the load average at the start, every ~0.5 s and at the end, and the CPU
time the whole machine spent busy (/proc/stat, or psutil where /proc is missing) minus the CPU time of this
process and its waited-for children (os.times), and of the children it counts as its own while they live (the
memory probe's server: /proc). What is left was used by other processes while we measured.
`busy_reason` turns such a summary (merged into a run's environment) into one sentence, or None.

No torch here: pages and the CLI import it to label stored runs.
"""
from __future__ import annotations

import os
import threading
import time

OTHER_CPU_LIMIT = 0.25  # others using over a quarter of all cores' time makes a timing suspect
SAMPLE_S = 0.5


def busy_reason(environment: dict) -> str | None:
    """Why a run with this environment counts as measured on a busy machine, in one sentence; None if it doesn't.

    Runs stored before the lab recorded machine load carry no such keys and get None (unknown, not busy)."""
    cores = environment.get("cores") or environment.get("cpu_count")
    share = environment.get("other_cpu_share")
    if share is not None and share > OTHER_CPU_LIMIT:
        on = f" of {cores} cores" if cores else ""
        return (f"other processes used {share:.0%} of the CPU time{on} during the run "
                f"(more than {OTHER_CPU_LIMIT:.0%} counts as busy)")
    load = environment.get("load_avg_max")
    # the run's own threads count in the load average, so only what exceeds cores + own threads is others' work;
    # its memory probe runs variants side by side (lab/bench/probe_server.py), more threads than the timed part
    own = max(environment.get("threads") or 1, environment.get("memory_probe_threads") or 0)
    if load is not None and cores and load > cores + own:
        return (f"the load average reached {load:.1f} on {cores} cores while the run itself used {own} "
                f"thread{'s' if own != 1 else ''}")
    return None


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform (Windows)
        return None


def _proc_stat() -> tuple[float, int] | None:
    """(seconds all CPUs spent busy since boot, number of CPUs) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = [int(x) for x in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy; guest is inside user;
    # steal counts as busy because the hypervisor gave our CPU to someone else
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), cores


def _psutil_stat() -> tuple[float, int] | None:
    try:
        # optional: only where /proc is missing
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    busy = sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
    return busy, psutil.cpu_count() or 1


def _machine_busy() -> tuple[float, int] | None:
    return _proc_stat() or _psutil_stat()


def _own_cpu_s() -> float:
    t = os.times()  # all threads of this process, plus children it has waited for
    return t.user + t.system + t.children_user + t.children_system + _live_children_cpu_s()


_own_children: set[int] = set()  # children whose work is the run's own, though they outlive it


def count_as_own(pid: int) -> None:
    """Count this child's CPU time (and its waited-for children's) as the run's own while it lives: os.times
    counts a child only once it is waited for, and the memory probe's server lives on after a run
    (lab/bench/probe_server.py), so its work would read as other processes'. Any other child stays another
    process until it is waited for."""
    _own_children.add(pid)


def _live_children_cpu_s() -> float:
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in list(_own_children):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # waited for (its time is in os.times now), or not Linux
            _own_children.discard(pid)
            continue
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


class LoadMonitor:
    """Context manager that records the machine's load while its block runs; read it with `.summary()`."""

    def __init__(self, interval: float = SAMPLE_S):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="load-monitor")
        self._loads: list[float] = []
        self._start = self._end = None

    def __enter__(self) -> "LoadMonitor":
        self._start = self._snapshot()
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._end = self._snapshot()

    def _snapshot(self) -> dict:
        load = _loadavg()
        if load is not None:
            self._loads.append(load)
        return {"wall": time.monotonic(), "own": _own_cpu_s(), "machine": _machine_busy(), "load": load}

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            load = _loadavg()
            if load is not None:
                self._loads.append(load)

    def summary(self) -> dict:
        """load_avg_start/end/max (1-minute), cores, wall_s, own_cpu_s, other_cpu_s, other_cpu_share."""
        start, end = self._start, self._end or self._snapshot()
        wall = max(end["wall"] - start["wall"], 1e-9)
        own = end["own"] - start["own"]
        out = {"load_avg_start": start["load"], "load_avg_end": end["load"],
               "load_avg_max": max(self._loads) if self._loads else None,
               "wall_s": round(wall, 3), "own_cpu_s": round(own, 3),
               "cores": None, "other_cpu_s": None, "other_cpu_share": None}
        if start["machine"] and end["machine"]:
            cores = end["machine"][1]
            # jiffies are coarse (10 ms) and sampled at slightly different instants: clamp the noise at 0
            other = max(0.0, end["machine"][0] - start["machine"][0] - own)
            out.update(cores=cores, other_cpu_s=round(other, 3),
                       other_cpu_share=round(min(1.0, other / (wall * cores)), 4))
        return out
