"""When a worker counts as gone: stopped, its process no longer alive on this host, or its heartbeat stale.
The queue (lab/jobs/__init__.py) and the device leases (lab/jobs/leases.py) both judge workers by these rules."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

from lab.store import RETRY_FOR_S, Worker

# a heartbeat older than this means the worker is gone (checked by pid first where we can). Longer than a writer
# waits out a locked database (store.RETRY_FOR_S): a worker whose beats were blocked that long is not dead.
STALE_S = RETRY_FOR_S + 30.0
HOST = socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed child not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def worker_dead(w: Worker, now) -> bool:
    if w.stopped:
        return True
    if w.host == HOST and not pid_alive(w.pid):
        return True
    return now - w.heartbeat_at > timedelta(seconds=STALE_S)
