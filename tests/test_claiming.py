"""Claiming jobs from many workers at once: each job is taken exactly once, on SQLite and on a real PostgreSQL,
and on PostgreSQL a row another worker has locked is skipped (FOR UPDATE SKIP LOCKED), not waited for."""
import threading

import pytest
from sqlalchemy import select

from lab import jobs, store
from lab.bench.validate import validate
from lab.jobs import worker
from lab.store import Job

CLAIMERS, QUEUED = 6, 30


def queue_jobs(tiny_spec, n: int) -> list[int]:
    spec = validate(tiny_spec)
    return [jobs.submit(spec)[1] for _ in range(n)]


@pytest.mark.both_databases
def test_workers_claiming_at_once_take_each_job_exactly_once(tiny_spec):
    job_ids = queue_jobs(tiny_spec, QUEUED)
    claimers = [worker._register("cpu") for _ in range(CLAIMERS)]
    claimed: dict[int, list[int]] = {w: [] for w in claimers}
    errors = []
    start = threading.Barrier(CLAIMERS)

    def claim_until_empty(worker_id: int):
        try:
            start.wait()
            while (job := worker._claim_oldest(worker_id, "cpu")) is not None:
                claimed[worker_id].append(job.id)
        except Exception as e:  # reported below: a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=claim_until_empty, args=(w,)) for w in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(j for taken in claimed.values() for j in taken) == job_ids  # all taken, none twice
    with store.session() as s:
        rows = {j.id: (j.status, j.worker_id) for j in s.scalars(select(Job))}
    assert rows == {j: ("running", w) for w, taken in claimed.items() for j in taken}


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_row_locked_by_another_worker_is_skipped_not_waited_for(tiny_spec):
    first, second, _ = queue_jobs(tiny_spec, 3)
    claimer = worker._register("cpu")
    engine = store.sessionmaker_for().kw["bind"]
    with engine.connect() as other:  # another worker, mid-claim: it holds the oldest row's lock
        other.execute(select(Job.id).where(Job.id == first).with_for_update())
        result = []
        t = threading.Thread(target=lambda: result.append(worker._claim_oldest(claimer, "cpu")))
        t.start()
        t.join(timeout=20)
        assert not t.is_alive(), "the claim waited for the locked row instead of skipping it"
        other.rollback()
    assert result[0].id == second
    assert jobs.get_job(first).status == "queued"  # the locked one stays for its holder
