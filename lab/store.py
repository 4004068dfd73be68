"""The store: SQLAlchemy 2 tables on SQLite (WAL) at data/lab.db, or any URL in LAB_DATABASE_URL (a team shares
one PostgreSQL: postgresql+psycopg://user:password@host/db).

Generic tables (experiments, runs, metrics in long format, outputs, jobs, workers, leases) so a new technique
never needs a schema change. The schema is created and upgraded by Alembic migrations (lab/migrations),
applied automatically the first time a process opens the store.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from lab.paths import data_dir


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


ORIGIN_LOCAL = "local"  # run on this machine
ORIGIN_IMPORTED = "imported"  # read from a colleague's exported report; `imported_from` says which
ORIGIN_GALLERY = "gallery"  # recorded by the lab on the default models and shipped in data/gallery (read-only)
RUNNER_WORKER = "worker"  # a job any fitting worker may claim
RUNNER_RAY = "ray"  # a job one Ray task was started for (`python -m lab run --ray`): no worker claims it
NAME_LIMIT = 200  # characters of an experiment's name (the column's length)


class Experiment(Base):
    """One submitted spec and its runs, with what the user keeps to find it again (name, tags, a note) and where
    it came from (`origin`, and for an imported one `imported_from`: file, exported_at_commit, original_id).

    The server defaults give rows written before migration 0003 an empty tag list, an empty note and a local
    origin."""
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LIMIT))
    spec: Mapped[dict] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued/running/done/failed/cancelled
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    tags: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    note: Mapped[str] = mapped_column(Text, default="", server_default="")
    origin: Mapped[str] = mapped_column(String(20), default=ORIGIN_LOCAL, server_default=ORIGIN_LOCAL)
    imported_from: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    runs: Mapped[list["Run"]] = relationship(back_populates="experiment", cascade="all, delete-orphan",
                                             order_by="Run.position")


class Run(Base):
    """One variant of one experiment: its techniques, environment and results."""
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(200))
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    params: Mapped[dict] = mapped_column(JSON)
    environment: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    experiment: Mapped[Experiment] = relationship(back_populates="runs")
    metrics: Mapped[list["Metric"]] = relationship(cascade="all, delete-orphan", order_by="Metric.id")
    outputs: Mapped[list["Output"]] = relationship(cascade="all, delete-orphan", order_by="Output.item_index")


class Metric(Base):
    """One metric of one run, long format: a summary (median, p10, p90, n) plus the raw samples."""
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    p10: Mapped[float | None] = mapped_column(Float, nullable=True)
    p90: Mapped[float | None] = mapped_column(Float, nullable=True)
    n: Mapped[int] = mapped_column(Integer, default=1)
    unit: Mapped[str] = mapped_column(String(30), default="")
    samples: Mapped[list | None] = mapped_column(JSON, nullable=True)


class Output(Base):
    """What a run produced for one workload item, kept so quality can be recomputed later."""
    __tablename__ = "outputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    item_index: Mapped[int] = mapped_column(Integer)
    item_key: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list] = mapped_column(JSON)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # what the spec asked for: "auto" (any worker), "cpu" or "cuda"; `device` is where it ran ("cuda:0@host")
    device_kind: Mapped[str] = mapped_column(String(20), default="auto", server_default="auto")
    device: Mapped[str | None] = mapped_column(String(250), nullable=True)
    # who may claim it: "worker" (any `python -m lab worker` that fits) or "ray" (only its Ray task)
    runner: Mapped[str] = mapped_column(String(20), default=RUNNER_WORKER, server_default=RUNNER_WORKER)


class Worker(Base):
    """A live worker process announces itself here and heartbeats, so others can tell it is alive."""
    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
    device: Mapped[str] = mapped_column(String(50), default="cpu", server_default="cpu")  # "cpu" or "cuda:<i>"


class Lease(Base):
    """Who measures on a device right now: one row per device key ("cpu:<host>", "cuda:<host>:<index>").

    A worker takes the row (insert, or compare-and-set over a dead holder) before it claims a job for that
    device and deletes it when the job ends, so two jobs never measure side by side on one device."""
    __tablename__ = "leases"
    resource: Mapped[str] = mapped_column(String(200), primary_key=True)
    worker_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    acquired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def database_url() -> str:
    return os.environ.get("LAB_DATABASE_URL") or f"sqlite:///{data_dir() / 'lab.db'}"


_engines: dict[str, tuple] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (the page) never block the writer (the worker)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def alembic_config(url: str):
    """Alembic's configuration for the lab's migrations against `url` (tests upgrade to a chosen revision)."""
    # lazy: only when the schema is created or upgraded
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _migrate(url: str) -> None:
    # lazy: only when the schema is created or upgraded
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def sessionmaker_for(url: str | None = None):
    url = url or database_url()
    with _lock:
        if url not in _engines:
            # SQLite: wait for a writer's lock; a server: check a pooled connection before use (a restarted
            # PostgreSQL or a dropped network leaves stale ones in the pool)
            kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
            engine = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(engine, "connect", _sqlite_pragmas)
            _migrate(url)
            _engines[url] = (engine, sessionmaker(engine, expire_on_commit=False))
        return _engines[url][1]


@contextmanager
def session():
    """A transaction: committed on success, rolled back whole on any error (nothing half-written)."""
    s = sessionmaker_for()()
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()


def reset_engines() -> None:
    """Forget cached engines (tests switch LAB_DATABASE_URL between databases)."""
    with _lock:
        for engine, _ in _engines.values():
            engine.dispose()
        _engines.clear()


# --- retrying a whole write transaction when another writer holds the lock ---------------------------------
RETRY_FOR_S = 60.0  # give up after this long: a lock held longer is a stuck writer, not a busy one
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.2, 5.0
# PostgreSQL: serialization failure, deadlock detected, lock not available (lock_timeout, NOWAIT)
_PG_RETRYABLE = {"40001", "40P01", "55P03"}
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_log = logging.getLogger("lab.store")
_retrying = threading.local()


def write_with_retry(fn, what: str):
    """Run `fn` (a whole write transaction: it opens its own `session()`) and return its result; when the
    database is locked by another writer past its busy timeout, run it again from scratch, with backoff, for up
    to RETRY_FOR_S seconds in all. Each retry is logged (a warning on stderr, naming `what`).

    Safe because a locked or serialization-failed transaction was rolled back whole: nothing of it is stored, so
    running `fn` again writes everything exactly once. Other errors (constraints, a lost connection, whose
    commit may or may not have happened) are raised at once. Nested calls run `fn` directly: the outermost call
    re-runs the whole transaction, and waits are not multiplied."""
    if getattr(_retrying, "active", False):
        return fn()
    _retrying.active = True
    try:
        return _retry_loop(fn, what)
    finally:
        _retrying.active = False


def retried(what: str):
    """Decorator for a function that is one whole write transaction (or several idempotent ones, each a
    compare-and-set): on a lock conflict it is re-run from scratch by write_with_retry."""
    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            return write_with_retry(lambda: fn(*args, **kwargs), what)
        return run
    return decorate


def _retry_loop(fn, what: str):
    deadline, pause, attempt = time.monotonic() + RETRY_FOR_S, _BACKOFF_FIRST_S, 1
    while True:
        try:
            return fn()
        except OperationalError as e:
            if not lock_conflict(e) or time.monotonic() + pause > deadline:
                raise
            _log.warning("%s: the database is busy (%s); retrying the whole transaction within %.1f s (attempt %d)",
                         what, str(e.orig).strip() or type(e.orig).__name__, pause, attempt + 1)
        time.sleep(pause * random.uniform(0.5, 1.0))  # jitter: writers that collided do not collide again
        pause, attempt = min(2 * pause, _BACKOFF_MAX_S), attempt + 1


def lock_conflict(e: OperationalError) -> bool:
    """Whether `e` says another writer was in the way (so the transaction was rolled back and may be re-run)."""
    orig = e.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)  # extended codes keep the primary in the low byte
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3, psycopg2
    if state is not None:
        return state in _PG_RETRYABLE
    return "database is locked" in str(orig)
