"""`python -m lab run SPEC --ray ADDRESS`: a sweep's measurement units spread over a Ray cluster.

A unit is the baseline and one variant, measured interleaved in one process on one device, so every paired ratio
compares like with like wherever Ray puts the unit. Each unit is an experiment and job of its own in the shared
store, tagged with the sweep's tag so Compare finds them together. Its job's runner is "ray": no local worker
claims it; the Ray task started for it runs it as a one-job worker (lab/jobs/worker.py run_assigned) on the node
Ray chose: it waits for that device's lease (a worker may be measuring there), runs the job in its own process,
and the results land in the store with that node's environment.

Ray places tasks on nodes with free CPUs or GPUs; nothing here schedules. Every node runs the lab from its own
checkout (`ray start` from it, PYTHONPATH at it), and reaches the store by the URL the driver passes.
"""
from __future__ import annotations

import socket
import time
from dataclasses import replace

from sqlalchemy.engine import make_url

from lab import store
from lab.errors import SpecError
from lab.jobs import _finish_if, get_job, submit
from lab.jobs.liveness import HOST
from lab.spec import Spec
from lab.store import NAME_LIMIT, RUNNER_RAY

ENDED = ("done", "failed", "cancelled")


def split_units(spec: Spec) -> list[Spec]:
    """One unit per variant, each with the baseline (the spec's first variant) measured beside it."""
    baseline, others = spec.variants[0], spec.variants[1:]
    if not others:
        return [spec]
    return [replace(spec, name=f"{spec.name} · {variant.name}"[:NAME_LIMIT], variants=[baseline, variant])
            for variant in others]


def unit_resources(spec: Spec, cluster: dict[str, float]) -> dict[str, float]:
    """What one unit asks Ray for: a GPU when the spec runs on cuda (or on auto where the cluster has GPUs),
    else the CPU threads it measures with. Refused here when no node could ever give it (Ray would wait forever)."""
    gpus = cluster.get("GPU", 0)
    if spec.device == "cuda" and not gpus:
        raise SpecError(f"spec {spec.name!r} asks for device 'cuda' but the Ray cluster has no GPU; allowed here: "
                        f"device = 'cpu' or 'auto'")
    if spec.device == "cuda" or (spec.device == "auto" and gpus):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(1, spec.threads)}


def check_store_reachable(url: str, nodes: list[dict]) -> None:
    """A SQLite file is on one machine: refuse it when a node of the cluster is another machine."""
    if make_url(url).get_backend_name() != "sqlite":
        return
    others = sorted({n["NodeManagerHostname"] for n in nodes if n.get("Alive")} - {HOST})
    if others:
        raise SpecError(f"the store is a SQLite file on this machine ({url}) but Ray nodes {', '.join(others)} are "
                        f"other machines and cannot write to it; set LAB_DATABASE_URL to a PostgreSQL URL that "
                        f"every node reaches (postgresql+psycopg://user:password@host/db)")


def _run_unit(job_id: int) -> str:
    """The Ray task: run one unit's job on this node's device. Ray has set CUDA_VISIBLE_DEVICES to the GPU it
    gave the task, so that GPU is cuda:0 here and its lease still names the physical one."""
    # lazy: imported where Ray runs the task, not when the driver imports this module
    import os

    import ray

    from lab.jobs.worker import run_assigned
    os.environ["LAB_RAY_NODE"] = ray.get_runtime_context().get_node_id()  # recorded in the run's environment
    return run_assigned(job_id, "cuda" if ray.get_gpu_ids() else "cpu")


def import_ray():
    try:
        # lazy: Ray is only needed for --ray
        import ray
    except ImportError as e:
        raise SpecError(f"--ray needs the ray package ({e}); install it with `pip install ray==2.60.0` "
                        f"(requirements.txt pins it)") from e
    return ray


def check_head_answers(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address where no Ray head listens, at once: ray.init() would wait minutes for it."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise SpecError(f"--ray {address!r}: expected HOST:PORT of the Ray cluster's head (the port `ray start "
                        f"--head --port PORT` opened; 6379 by default)")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SpecError(f"no Ray cluster answers at {address} ({e.strerror or e}); start its head with `ray start "
                        f"--head --port {port}` from a lab checkout, or check the address") from e


def submit_units(specs: list[Spec], address: str) -> list[tuple[int, int, object]]:
    """Connect to the cluster, store every unit as a queued job and start its Ray task.
    Returns (experiment id, job id, task ref) per unit. SpecError before anything is stored if the cluster
    cannot run them."""
    ray = import_ray()
    check_head_answers(address)
    url = store.database_url()
    ray.init(address=address, runtime_env={"env_vars": {"LAB_DATABASE_URL": url}}, logging_level="ERROR",
             log_to_driver=False)
    check_store_reachable(url, ray.nodes())
    cluster = ray.cluster_resources()
    units = [(unit, unit_resources(unit, cluster)) for spec in specs for unit in split_units(spec)]
    tag = time.strftime("ray-sweep-%Y%m%d-%H%M%S")
    task = ray.remote(_run_unit)
    submitted = []
    for unit, resources in units:
        exp_id, job_id = submit(unit, runner=RUNNER_RAY, tags=[tag])
        # max_retries=0: a unit is never measured twice behind the user's back; a failure is reported instead
        ref = task.options(**resources, max_retries=0, name=f"lab-job-{job_id}").remote(job_id)
        submitted.append((exp_id, job_id, ref))
    return submitted


def wait_units(submitted: list[tuple[int, int, object]], say=print) -> dict[int, str]:
    """Wait for every unit's task; a task that failed on its node fails its job with Ray's reason.
    Returns each job's final status."""
    ray = import_ray()
    pending = {ref: job_id for _, job_id, ref in submitted}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            job_id = pending.pop(ref)
            try:
                ray.get(ref)
            except Exception as e:  # the node could not run it (no lab there, died...): say so in the job
                _fail_unit(job_id, e)
            say(f"job {job_id}: {get_job(job_id).status}")
    return {job_id: get_job(job_id).status for _, job_id, _ in submitted}


def _fail_unit(job_id: int, error: Exception) -> None:
    reason = f"the Ray task for this unit failed on its node: {type(error).__name__}: {error}"
    for expected in ("queued", "running"):
        _finish_if(job_id, expected, "failed", reason, "failed on Ray")
