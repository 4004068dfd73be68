"""Device leases: one measuring job per device at a time, however many workers there are.

A lease is a row per device ("cpu:<host>", "cuda:<host>:<index>") naming the worker and job that hold it,
taken with an insert or a compare-and-set over a dead, silent or finished holder, so it works the same on
SQLite and PostgreSQL.

A worker measures on one device (`python -m lab worker --device cuda:1`); a job asks for a kind (the spec's
device: auto, cpu or cuda) and only a worker of that kind claims it."""
from __future__ import annotations

import glob
import importlib.util
import os
import re
from datetime import timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from lab import store
from lab.jobs.liveness import HOST, STALE_S, worker_dead
from lab.store import Job, Lease, Worker, utcnow

LEASE_GRACE_S = 10.0  # a lease whose job is no longer running is free after this (covers a failed release)


DEVICES_ALLOWED = "auto, cpu, cuda or cuda:<index>"


def resolve_device(device: str | None) -> str:
    """A worker's device as stored: "cpu" or "cuda:<index>"; "auto" is the first GPU when one is usable, else cpu.

    Decided without importing torch so the worker stays light. A GPU named but not usable here is refused now,
    not when its first job fails."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda:0" if cuda_usable() else "cpu"
    if name == "cpu":
        return "cpu"
    found = re.fullmatch(r"cuda(?::(\d+))?", name)
    if found is None:
        raise ValueError(f"device {device!r} is not one a worker measures on; allowed: {DEVICES_ALLOWED}")
    if not cuda_usable():
        raise ValueError(f"device {device!r}: no usable CUDA GPU here (no /dev/nvidia*, torch built without CUDA, "
                         f"or CUDA_VISIBLE_DEVICES hides them); allowed here: auto or cpu")
    return f"cuda:{found.group(1) or 0}"


def device_kinds(device: str) -> tuple[str, ...]:
    """The spec devices ("auto", "cpu", "cuda") a worker on `device` runs: its own kind, and "auto"."""
    return ("auto", "cuda") if device.startswith("cuda") else ("auto", "cpu")


def lease_key(device: str) -> str:
    """The lease of a worker's device: "cpu:<host>" or "cuda:<host>:<physical index>"."""
    if device.startswith("cuda"):
        return f"cuda:{HOST}:{_cuda_index(device)}"
    return f"cpu:{HOST}"


def child_device_env(device: str) -> dict[str, str]:
    """What the job's process sees: only the worker's GPU (as cuda:0), or none on a CPU worker, so the spec's
    "auto" and "cuda" resolve to the worker's own device there."""
    return {"CUDA_VISIBLE_DEVICES": _cuda_index(device) if device.startswith("cuda") else ""}


@cache
def cuda_usable() -> bool:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) and _torch_built_with_cuda()


def _torch_built_with_cuda() -> bool:
    """Read torch/version.py instead of importing torch (seconds and hundreds of MB in the worker)."""
    found = importlib.util.find_spec("torch")
    if found is None or not found.submodule_search_locations:
        return False
    try:
        text = (Path(list(found.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return False
    return re.search(r"^cuda\b[^=\n]*=\s*['\"]", text, re.MULTILINE) is not None


def _cuda_index(device: str) -> str:
    """The physical GPU: torch's index mapped through CUDA_VISIBLE_DEVICES, so workers with different
    visible sets that share a GPU share its lease."""
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


@store.retried("taking a device lease")
def acquire_lease(resource: str, worker_id: int, job_id: int | None) -> bool:
    """Take the lease of a device for a job: insert it, or take it over (compare-and-set) from ourselves or
    from a holder that is dead, silent or done. Works the same on SQLite and PostgreSQL."""
    now = utcnow()
    try:
        with store.session() as s:
            s.add(Lease(resource=resource, worker_id=worker_id, job_id=job_id, acquired_at=now, heartbeat_at=now))
        return True
    except IntegrityError:  # someone holds it (the primary key): see whether it may be taken over
        pass
    with store.session() as s:
        lease = s.get(Lease, resource)
        if lease is None:
            return False  # released in between: the next poll takes it
        if lease.worker_id != worker_id and not _lease_stale(s, lease, now):
            return False
        # of two workers taking over the same lease, exactly one matches the holder it saw
        return s.execute(update(Lease).where(
            Lease.resource == resource, Lease.worker_id == lease.worker_id, Lease.job_id == lease.job_id).values(
            worker_id=worker_id, job_id=job_id, acquired_at=now, heartbeat_at=now)).rowcount == 1


def _lease_stale(s, lease: Lease, now) -> bool:
    holder = s.get(Worker, lease.worker_id)
    if holder is None or worker_dead(holder, now):
        return True
    if now - lease.heartbeat_at > timedelta(seconds=STALE_S):
        return True
    job_status = s.scalar(select(Job.status).where(Job.id == lease.job_id)) if lease.job_id else None
    # a live holder whose job ended keeps the lease only for the moment between taking it and claiming
    return job_status != "running" and now - lease.acquired_at > timedelta(seconds=LEASE_GRACE_S)


@store.retried("naming a lease's job")
def attach_job(resource: str, worker_id: int, job_id: int) -> None:
    """Name the job a held lease measures (taken before the job was chosen)."""
    with store.session() as s:
        s.execute(update(Lease).where(Lease.resource == resource, Lease.worker_id == worker_id).values(job_id=job_id))


@store.retried("releasing a worker's leases")
def release_leases(worker_id: int) -> None:
    with store.session() as s:
        s.execute(delete(Lease).where(Lease.worker_id == worker_id))


@store.retried("releasing a device lease")
def release_lease(resource: str, worker_id: int) -> None:
    with store.session() as s:
        s.execute(delete(Lease).where(Lease.resource == resource, Lease.worker_id == worker_id))


def leases() -> dict[str, int | None]:
    """Which job holds each device now (for the page, the CLI and tests)."""
    with store.session() as s:
        return {lease.resource: lease.job_id for lease in s.scalars(select(Lease))}
