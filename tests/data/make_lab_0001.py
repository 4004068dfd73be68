"""Remake tests/data/lab_0001.db: a store as migration 0001 left it, holding real results, for tests/test_upgrade.py.

How it is made (not part of the test suite; run it by hand, about five minutes on 2 CPU cores):

    .venv/bin/python tests/data/make_lab_0001.py

1. The two small specs below (an LLM experiment on the built-in SmolLM2-135M-Instruct, baseline + two KV-cache
   variants on context QA; a diffusion experiment on the shipped digits DiT, baseline + block cache + fewer
   steps) are run for real with `python -m lab run SPEC --wait` into a fresh store at today's schema, in a
   temporary folder (a worker is autostarted against that store; the built-in model must be prepared under
   data/cache, as `python -m lab prepare` does).
   The worker idles out a minute after the last job and marks itself stopped; the script waits for that.
2. A second, empty database is created by `alembic upgrade 0001` (the lab's own migrations), so its schema is
   exactly 0001's and alembic_version says '0001'.
3. Every row of experiments, jobs, workers, runs, metrics and outputs is copied across with plain sqlite3,
   only the columns 0001 has, values untouched (JSON text and timestamps byte for byte as the lab wrote them).
4. The copy is switched out of WAL mode and VACUUMed, so the fixture is one small file.

Caveat: the rows are written by today's code, so the JSON inside them (spec, environment, params, extra) has
today's keys; an old store's JSON may lack some of them. The columns are 0001's.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FIXTURE = Path(__file__).resolve().parent / "lab_0001.db"
# parents before children, so foreign keys hold while copying
TABLES = ["experiments", "workers", "jobs", "runs", "metrics", "outputs"]

LLM_SPEC = """
name = "upgrade fixture: KV cache"
description = "Tiny real run for the 0001 upgrade fixture: SmolLM2 baseline vs two KV-cache techniques."
model = "smollm2-135m-instruct"
workload = "context_qa"
prompts = 2
max_new_tokens = 16
repeats = 2
warmup = 1
seed = 0
threads = 2
perplexity_tokens = 256
perplexity_window = 128

[[variants]]
name = "streaming_llm@0.5"
techniques = [{ name = "streaming_llm", compression_ratio = 0.5 }]

[[variants]]
name = "int8-kv"
techniques = [{ name = "quantized_kv", bits = 8 }]
"""

DIFFUSION_SPEC = """
name = "upgrade fixture: digits DiT"
description = "Tiny real run for the 0001 upgrade fixture: digits DiT baseline vs block cache and fewer steps."
model = "digits-dit"
workload = "digits"
classes = [0, 1, 2, 3]
images_per_class = 1
batch_size = 4
steps = 10
guidance = 1.5
sampler = "ddim"
repeats = 2
warmup = 1
seed = 0
threads = 2

[[variants]]
name = "block cache, every 2nd step"
techniques = [{ name = "block_cache", interval = 2 }]

[[variants]]
name = "5 steps"
techniques = [{ name = "step_reduction", steps = 5 }]
"""


def run_experiments(folder: Path, url: str) -> None:
    """Run both specs for real into the store at `url`, the way a user would from the command line."""
    env = {**os.environ, "LAB_DATABASE_URL": url, "LAB_WORKER_AUTOSTART": "1", "HF_HUB_OFFLINE": "1"}
    for name, text in (("llm.toml", LLM_SPEC), ("diffusion.toml", DIFFUSION_SPEC)):
        spec = folder / name
        spec.write_text(text)
        subprocess.run([sys.executable, "-m", "lab", "run", str(spec), "--wait"], cwd=ROOT, env=env, check=True)


def wait_for_workers(path: Path, timeout_s: float = 300.0) -> None:
    """Wait until the autostarted worker has idled out (it marks itself stopped), as in a store left alone: its
    row is then final, and no worker outlives the temporary folder it writes to."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(sqlite3.connect(path)) as db:
            if db.execute("SELECT count(*) FROM workers WHERE stopped = 0").fetchone()[0] == 0:
                return
        time.sleep(2)
    raise TimeoutError(f"a worker on {path} did not stop within {timeout_s:.0f} s")


def create_0001(path: Path) -> None:
    """An empty store at exactly revision 0001, made by the lab's own migration (not a hand-written schema)."""
    from alembic import command

    from lab.store import alembic_config
    command.upgrade(alembic_config(f"sqlite:///{path}"), "0001")


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def copy_rows(source: Path, target: Path) -> dict[str, int]:
    """Copy every row, only the columns the 0001 table has; returns the row count per table."""
    counts = {}
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        for table in TABLES:
            names = columns(dst, table)
            listed = ", ".join(names)
            rows = src.execute(f"SELECT {listed} FROM {table} ORDER BY id").fetchall()
            dst.executemany(f"INSERT INTO {table} ({listed}) VALUES ({', '.join('?' * len(names))})", rows)
            counts[table] = len(rows)
        dst.commit()
    return counts


def compact(path: Path) -> None:
    """One self-contained file: no WAL beside it, no free pages."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("VACUUM")
    db.close()


def check(path: Path) -> None:
    """Refuse to write a fixture without finished results of both kinds."""
    db = sqlite3.connect(path)
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
    statuses = db.execute("SELECT e.status, j.status FROM experiments e JOIN jobs j ON j.experiment_id = e.id")
    assert sorted(statuses) == [("done", "done"), ("done", "done")], "both experiments must have finished"
    assert db.execute("SELECT count(*) FROM workers WHERE stopped = 0").fetchone()[0] == 0
    for table in ("runs", "metrics", "outputs"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
    db.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "current.db"
        run_experiments(folder, f"sqlite:///{source}")
        wait_for_workers(source)
        target = folder / "lab_0001.db"
        create_0001(target)
        counts = copy_rows(source, target)
        compact(target)
        check(target)
        FIXTURE.write_bytes(target.read_bytes())
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1024:.0f} KiB): {counts}")


if __name__ == "__main__":
    main()
