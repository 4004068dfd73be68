"""Sweeps on Ray: a real local Ray head on loopback with 2 CPUs (`ray start`, as a team would start one), a sweep
sent to it with `python -m lab run SPEC --ray ADDRESS`, its units measured by Ray's workers into a PostgreSQL
store (the shared one a team would use). Each unit keeps the baseline beside its variant; each run names its
Ray node. Bad addresses and clusters that cannot run the spec are refused before anything is stored."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lab import store
from lab.errors import SpecError
from lab.jobs import ray_units
from lab.store import Experiment, Job
from lab.views import results
from tests.conftest import ROOT

RAY = str(Path(sys.executable).with_name("ray"))
SPEC_KEYS = ("model", "workload", "prompts", "max_new_tokens", "repeats", "warmup", "perplexity_tokens",
             "perplexity_window", "threads")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on loopback with 2 CPUs whose workers import the lab from this checkout; stopped at the end."""
    temp = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                    "2", "--num-gpus", "0", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir",
                    str(temp)], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def write_spec(tmp_path, tiny_spec, variants: str, device: str = "cpu") -> Path:
    lines = ['name = "ray sweep"', f'device = "{device}"']
    lines += [f'{k} = "{tiny_spec[k]}"' if isinstance(tiny_spec[k], str) else f"{k} = {tiny_spec[k]}"
              for k in SPEC_KEYS]
    path = tmp_path / "sweep.toml"
    path.write_text("\n".join(lines) + "\n" + variants)
    return path


def lab_run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "run", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "LAB_WORKER_AUTOSTART": "0"})


SWEEP = """
[[variants]]
name = "bf16"
techniques = [{ name = "weight_dtype", dtype = "bf16" }]
[[variants]]
name = "knorm"
techniques = [{ name = "knorm", compression_ratio = 0.5 }]
"""


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_sweep_on_ray_lands_in_the_shared_store_one_unit_per_variant(ray_head, tiny_spec, tmp_path):
    done = lab_run(write_spec(tmp_path, tiny_spec, SWEEP), "--ray", ray_head)
    assert done.returncode == 0, done.stderr[-3000:]
    with store.session() as s:
        experiments = list(s.scalars(select(Experiment).order_by(Experiment.id)))
        units = [(e.id, e.name, e.status, e.tags) for e in experiments]
        job_rows = [(j.runner, j.status, j.device) for j in s.scalars(select(Job).order_by(Job.id))]
    assert [name for _, name, _, _ in units] == ["ray sweep · bf16", "ray sweep · knorm"]
    assert all(status == "done" for _, _, status, _ in units)
    tags = {tuple(t) for _, _, _, t in units}
    assert len(tags) == 1 and tags.pop()[0].startswith("ray-sweep-")  # one tag finds the sweep in Compare
    assert job_rows == [("ray", "done", job_rows[0][2])] * 2 and job_rows[0][2].startswith("cpu@")
    by_unit = {name: results.load_experiment(exp_id) for exp_id, name, _, _ in units}
    for name, technique in (("ray sweep · bf16", "bf16"), ("ray sweep · knorm", "knorm")):
        runs = by_unit[name].runs
        assert [r.variant for r in runs] == ["baseline", technique]  # the baseline measured beside each variant
        assert all(r.environment.get("ray_node") for r in runs)  # which Ray node measured it
        assert len({r.environment["ray_node"] for r in runs}) == 1  # both sides of the ratio on one node
    # each unit's technique moved its own metric against its own baseline
    weights = {r.variant: m.value for r in by_unit["ray sweep · bf16"].runs for m in r.metrics if m.name == "weight_mb"}
    assert weights["bf16"] == pytest.approx(weights["baseline"] / 2)
    kv = {r.variant: m.value for r in by_unit["ray sweep · knorm"].runs for m in r.metrics if m.name == "kv_cache_mb"}
    assert kv["knorm"] < kv["baseline"]
    assert "ray sweep · bf16" in done.stdout and "ray sweep · knorm" in done.stdout  # the tables are printed


def test_a_cuda_sweep_on_a_cluster_without_gpus_is_refused_before_anything_is_stored(ray_head, tiny_spec, tmp_path):
    done = lab_run(write_spec(tmp_path, tiny_spec, SWEEP, device="cuda"), "--ray", ray_head)
    assert done.returncode == 2
    assert "asks for device 'cuda' but the Ray cluster has no GPU" in done.stderr and "Traceback" not in done.stderr
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Experiment)) == 0


def test_an_address_where_no_head_listens_is_refused_at_once(tiny_spec, tmp_path):
    done = lab_run(write_spec(tmp_path, tiny_spec, SWEEP), "--ray", f"127.0.0.1:{free_port()}", timeout=60)
    assert done.returncode == 2 and "no Ray cluster answers at 127.0.0.1:" in done.stderr
    assert "ray start --head" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("address", ["localhost", "head:port", ""])
def test_an_address_without_a_port_names_the_form_expected(address):
    with pytest.raises(SpecError, match="expected HOST:PORT"):
        ray_units.check_head_answers(address)


def test_without_ray_installed_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the package is missing
    with pytest.raises(SpecError, match=r"pip install ray==2\.60\.0"):
        ray_units.import_ray()


def test_a_sqlite_store_is_refused_when_a_node_is_another_machine():
    nodes = [{"NodeManagerHostname": "gpu-box-2", "Alive": True}]
    with pytest.raises(SpecError, match="gpu-box-2 are other machines.*PostgreSQL URL"):
        ray_units.check_store_reachable("sqlite:////tmp/lab.db", nodes)
    ray_units.check_store_reachable("postgresql+psycopg://lab@db/lab", nodes)  # a server every node reaches
