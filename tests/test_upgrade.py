"""A store made by migration 0001, holding real results, upgrades to the newest schema the first time the lab opens
it, keeps every row as it was, and every page, the results views, the report and the CLI show the old results.

The fixture, tests/data/lab_0001.db, is a real 0001 store: an LLM experiment on SmolLM2 (baseline and two KV-cache
variants) and a diffusion experiment on the digits DiT, measured by the lab; tests/data/make_lab_0001.py says how
it was made and remakes it. The expected values are read from the fixture itself with plain sqlite3 before any
upgrade, so nothing here depends on which numbers that run measured.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, select

from lab import store
from lab.report import download
from lab.views import experiments, results
from tests.test_pages import all_text, page

FIXTURE = Path(__file__).parent / "data" / "lab_0001.db"
TABLES_0001 = ["experiments", "workers", "jobs", "runs", "metrics", "outputs"]  # every table 0001 creates
JSON_COLUMNS = {"spec", "params", "environment", "samples", "token_ids", "extra"}


# --- reading a store raw, with sqlite3 (not through the models the upgrade is meant to satisfy) ----------------

@contextmanager
def connect_read_only(path: Path):
    """A plain sqlite3 connection, closed after use (sqlite3's own context manager only commits). Read-only: the
    checked-in fixture must never be written, not even its journal mode."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def columns_of(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def read_rows(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Every row of each table, only the columns named, in id order."""
    with connect_read_only(path) as db:
        return {table: db.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY id").fetchall()
                for table, names in columns.items()}


def read_rows_any_order(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    # alembic_version has no id column
    with connect_read_only(path) as db:
        return {table: sorted(db.execute(f"SELECT {', '.join(names)} FROM {table}").fetchall(), key=repr)
                for table, names in columns.items()}


def all_columns(path: Path, tables: list[str]) -> dict[str, list[str]]:
    with connect_read_only(path) as db:
        return {table: columns_of(db, table) for table in tables}


def alembic_version(path: Path) -> str:
    with connect_read_only(path) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def as_dicts(rows: list[tuple], columns: list[str]) -> list[dict]:
    """Rows as dicts, JSON text decoded (what the models hand back)."""
    return [{c: json.loads(v) if c in JSON_COLUMNS and v is not None else v for c, v in zip(columns, row)}
            for row in rows]


@dataclass
class Old:
    """What the fixture holds before any upgrade: 0001's columns and their rows, and the rows as dicts."""
    columns: dict[str, list[str]]
    rows: dict[str, list[tuple]]

    def table(self, name: str) -> list[dict]:
        return as_dicts(self.rows[name], self.columns[name])

    def experiment(self, model_kind: str) -> dict:
        """The LLM ("llm") or the diffusion ("diffusion") experiment."""
        diffusion = [e for e in self.table("experiments") if e["spec"]["workload"] == "digits"]
        llm = [e for e in self.table("experiments") if e["spec"]["workload"] != "digits"]
        return (diffusion if model_kind == "diffusion" else llm)[0]

    def runs(self, experiment_id: int) -> list[dict]:
        return sorted((r for r in self.table("runs") if r["experiment_id"] == experiment_id),
                      key=lambda r: r["position"])

    def metric(self, run_id: int, name: str) -> dict:
        return next(m for m in self.table("metrics") if m["run_id"] == run_id and m["name"] == name)

    def outputs(self, run_id: int) -> list[dict]:
        return [o for o in self.table("outputs") if o["run_id"] == run_id]


@pytest.fixture(scope="module")
def old() -> Old:
    columns = all_columns(FIXTURE, TABLES_0001)
    return Old(columns, read_rows(FIXTURE, columns))


@pytest.fixture
def upgraded(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture as the lab's store (replacing isolated_db's empty one); the store upgrades it to head
    the first time it is opened."""
    path = tmp_path / "old_store.db"
    shutil.copyfile(FIXTURE, path)
    monkeypatch.setenv("LAB_DATABASE_URL", f"sqlite:///{path}")
    store.reset_engines()
    return path


def open_store(path: Path) -> None:
    """Open the store the way every process does (it migrates on first open), then forget the engine."""
    with store.session() as s:
        s.get(store.Experiment, 1)
    store.reset_engines()


def head_revision(path: Path) -> str:
    return ScriptDirectory.from_config(store.alembic_config(f"sqlite:///{path}")).get_current_head()


# --- the fixture is what it claims to be -----------------------------------------------------------------------

def schema(path: Path) -> list[tuple]:
    return read_rows_any_order(path, {"sqlite_master": ["type", "name", "tbl_name", "sql"]})["sqlite_master"]


def test_the_fixture_is_a_0001_store_with_finished_real_results(old, tmp_path):
    assert alembic_version(FIXTURE) == "0001"
    command.upgrade(store.alembic_config(f"sqlite:///{tmp_path / 'new_0001.db'}"), "0001")
    assert schema(FIXTURE) == schema(tmp_path / "new_0001.db")  # exactly what migration 0001 creates
    assert "tags" not in old.columns["experiments"] and "device" not in old.columns["jobs"]  # before 0003, 0004
    llm, diffusion = old.experiment("llm"), old.experiment("diffusion")
    assert (llm["spec"]["model"], diffusion["spec"]["model"]) == ("smollm2-135m-instruct", "digits-dit")
    assert {e["status"] for e in old.table("experiments")} == {"done"}
    assert {j["status"] for j in old.table("jobs")} == {"done"}
    for exp in (llm, diffusion):
        runs = old.runs(exp["id"])
        assert len(runs) >= 2 and runs[0]["is_baseline"] and runs[0]["environment"]["device_name"]
        assert all(old.outputs(r["id"]) for r in runs)  # the outputs are there for the pages to show
    kv = {t["name"] for r in old.runs(llm["id"]) for t in r["params"]["techniques"]}
    assert kv & {"streaming_llm", "quantized_kv", "snapkv"}


# --- the upgrade ---------------------------------------------------------------------------------------------

def test_opening_the_store_upgrades_it_to_head_and_keeps_every_row(upgraded, old):
    assert head_revision(upgraded) != "0001"  # otherwise this test would prove nothing
    open_store(upgraded)
    assert alembic_version(upgraded) == head_revision(upgraded)
    assert read_rows(upgraded, old.columns) == old.rows  # every row, every 0001 column, value for value


def test_the_new_columns_hold_their_defaults_for_old_rows(upgraded, old):
    open_store(upgraded)
    with connect_read_only(upgraded) as db:
        catalog = db.execute("SELECT tags, note, origin, imported_from FROM experiments").fetchall()
        jobs = db.execute("SELECT device_kind, device, runner FROM jobs").fetchall()
        workers = db.execute("SELECT device FROM workers").fetchall()
    assert catalog == [("[]", "", "local", None)] * len(old.rows["experiments"])
    assert jobs == [("auto", None, "worker")] * len(old.rows["jobs"])
    assert workers == [("cpu",)] * len(old.rows["workers"])
    with store.session() as s:  # and the models read them as the values new rows get
        for exp in s.scalars(select(store.Experiment)):
            assert (exp.tags, exp.note, exp.origin, exp.imported_from) == ([], "", store.ORIGIN_LOCAL, None)


def test_the_upgraded_schema_is_the_one_the_models_declare(upgraded):
    open_store(upgraded)
    engine = create_engine(f"sqlite:///{upgraded}")
    try:
        with engine.connect() as conn:
            # tables, columns, types, nullability, indexes. Not server defaults: Alembic reports the SQLite default
            # '' as differing from the model's "" (a false alarm); the defaults are checked on the rows above
            assert compare_metadata(MigrationContext.configure(conn), store.Base.metadata) == []
    finally:
        engine.dispose()


def test_opening_an_upgraded_store_again_changes_nothing(upgraded):
    open_store(upgraded)
    every_column = {**all_columns(upgraded, TABLES_0001), "alembic_version": ["version_num"],
                    "sqlite_master": ["type", "name", "tbl_name", "sql"]}  # rows, version and schema alike
    once = read_rows_any_order(upgraded, every_column)
    open_store(upgraded)  # a second process opening it
    command.upgrade(store.alembic_config(f"sqlite:///{upgraded}"), "head")  # and an explicit upgrade
    assert read_rows_any_order(upgraded, every_column) == once



# --- the old results through the views, the CLI and the report ----------------------------------------------

def test_the_results_views_read_every_old_run_metric_and_output(upgraded, old):
    for raw in old.table("experiments"):
        exp = results.load_experiment(raw["id"])
        assert (exp.name, exp.spec, exp.status) == (raw["name"], raw["spec"], raw["status"])
        assert exp.created_at == datetime.fromisoformat(raw["created_at"])
        assert [r.variant for r in exp.runs] == [r["variant"] for r in old.runs(raw["id"])]
        for run in exp.runs:
            stored = {m.name: (m.value, m.p10, m.p90, m.n, m.unit, m.samples) for m in run.metrics}
            assert stored == {m["name"]: (m["value"], m["p10"], m["p90"], m["n"], m["unit"], m["samples"])
                              for m in old.table("metrics") if m["run_id"] == run.id}
            assert [(o.item_key, o.text, o.token_ids, o.extra) for o in run.outputs] == \
                [(o["item_key"], o["text"], o["token_ids"], o["extra"]) for o in old.outputs(run.id)]
        rows = results.summary_rows(exp)
        assert [r["Variant"] for r in rows] == [r.variant for r in exp.runs]


def test_lab_show_and_list_print_the_old_results(upgraded, old, capsys):
    from lab.cli import main
    for kind, metric in (("llm", "tokens_per_s"), ("diffusion", "s_per_image")):
        raw = old.experiment(kind)
        assert main(["show", str(raw["id"])]) == 0
        shown = capsys.readouterr().out
        assert f"experiment {raw['id']}: {raw['name']} [done]" in shown
        for run in old.runs(raw["id"]):
            assert run["variant"] in shown
        assert results.fmt(old.metric(old.runs(raw["id"])[0]["id"], metric)["value"]) in shown
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(e["name"] in listed for e in old.table("experiments"))


def test_the_json_report_exports_every_old_metric_unchanged(upgraded, old):
    ids = [e["id"] for e in old.table("experiments")]
    report = json.loads(download.report_bytes("json", experiment_ids=ids))
    exported = {(r["id"], m["name"]): (m["median"], m["p10"], m["p90"], m["n"], m["unit"], m["samples"])
                for e in report["experiments"] for r in e["runs"] for m in r["metrics"]}
    assert exported == {(m["run_id"], m["name"]): (m["value"], m["p10"], m["p90"], m["n"], m["unit"], m["samples"])
                        for m in old.table("metrics")}
    assert [(e["name"], e["origin"], e["tags"]) for e in report["experiments"]] == \
        [(e["name"], "local", []) for e in old.table("experiments")]


def test_the_csv_report_exports_every_old_median(upgraded, old):
    ids = [e["id"] for e in old.table("experiments")]
    rows = csv.DictReader(io.StringIO(download.report_bytes("csv", experiment_ids=ids).decode()))
    exported = {(int(r["run"]), r["variant"], r["metric"]): r["median"] for r in rows}
    variants = {r["id"]: r["variant"] for r in old.table("runs")}
    # CSV writes a float as repr() does and a missing median as an empty cell
    assert exported == {(m["run_id"], variants[m["run_id"]], m["name"]): "" if m["value"] is None else repr(m["value"])
                        for m in old.table("metrics")}


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_the_html_and_markdown_reports_name_every_old_experiment_and_variant(upgraded, old, fmt):
    ids = [e["id"] for e in old.table("experiments")]
    data = download.report_bytes(fmt, experiment_ids=ids)
    if fmt == "md":  # a zip of the Markdown file and its charts
        archive = zipfile.ZipFile(io.BytesIO(data))
        data = archive.read(next(n for n in archive.namelist() if n.endswith(".md")))
    text = data.decode()
    assert all(e["name"] in text for e in old.table("experiments"))
    assert all(r["variant"] in text for r in old.table("runs"))


# --- every page shows the old results ------------------------------------------------------------------------

def test_home_lists_both_old_experiments(upgraded, old):
    at = page("app.py")
    assert not at.exception
    recent = next(t.value for t in at.table if "Name" in t.value.columns)
    assert {(i, recent.loc[i, "Name"]) for i in recent.index} >= {(e["id"], e["name"])
                                                                   for e in old.table("experiments")}


def test_the_llm_lab_shows_the_old_llm_experiment_with_its_numbers_and_outputs(upgraded, old):
    raw = old.experiment("llm")
    runs = old.runs(raw["id"])
    at = page("pages/1_LLM_Lab.py", experiment=str(raw["id"]))
    assert not at.exception and not at.error
    table = at.table[0].value
    assert list(table.index) == [r["variant"] for r in runs]
    tokens = old.metric(runs[0]["id"], "tokens_per_s")
    assert table.loc[runs[0]["variant"], "Tokens/s [tok/s]"].startswith(results.fmt(tokens["value"]) + " (")
    assert any("Outputs side by side" in m.value for m in at.markdown)
    assert old.outputs(runs[1]["id"])[0]["text"] in [t.value for t in at.text]
    # the catalogue's widgets start from the defaults the upgrade gave the old row
    name_box = next(t for t in at.text_input if t.label == "Name")
    tags_box = next(t for t in at.text_input if t.label == "Tags (comma-separated)")
    assert (name_box.value, tags_box.value) == (raw["name"], "")
    assert [b.proto.label for b in at.get("download_button")] == [download.LABELS[f] for f in download.MIME]


def test_the_diffusion_lab_shows_the_old_diffusion_experiment_with_its_numbers_and_images(upgraded, old):
    raw = old.experiment("diffusion")
    runs = old.runs(raw["id"])
    at = page("pages/2_Diffusion_Lab.py", experiment=str(raw["id"]))
    assert not at.exception and not at.error
    table = at.table[0].value
    assert list(table.index) == [r["variant"] for r in runs]
    per_image = old.metric(runs[1]["id"], "s_per_image")
    assert table.loc[runs[1]["variant"], "Time per image [s]"].startswith(results.fmt(per_image["value"]))
    assert len(at.get("image")) >= 3  # the stored thumbnails: baseline, variant and their difference


def test_compare_sets_the_old_runs_side_by_side(upgraded, old):
    run_ids = [r["id"] for r in old.table("runs")]
    at = page("pages/3_Compare.py", runs=experiments.runs_param(run_ids))
    assert not at.exception
    assert sorted(at.multiselect[0].value) == run_ids
    table = at.table[0].value
    assert table.shape[1] == len(run_ids)
    assert list(table.loc["variant"]) == [r["variant"] for r in old.table("runs")]
    llm_baseline = old.runs(old.experiment("llm")["id"])[0]
    tokens = old.metric(llm_baseline["id"], "tokens_per_s")
    assert any(results.fmt(tokens["value"]) in str(cell) for cell in table.loc["Tokens/s [tok/s]"])
    assert [b.proto.label for b in at.get("download_button")] == [download.LABELS[f] for f in download.MIME]


def test_compare_without_a_link_opens_the_newest_old_experiment(upgraded, old):
    at = page("pages/3_Compare.py")
    assert not at.exception
    newest = max(e["id"] for e in old.table("experiments"))
    assert sorted(at.multiselect[0].value) == [r["id"] for r in old.runs(newest)]


def test_techniques_show_what_the_old_runs_measured(upgraded, old, monkeypatch):
    # "measured here" means this host: the page runs on the host the fixture's runs were measured on
    hosts = {r["environment"]["host"] for r in old.table("runs")}
    assert len(hosts) == 1
    monkeypatch.setattr("platform.node", lambda: next(iter(hosts)))
    at = page("pages/4_Techniques.py")
    assert not at.exception
    measured = [m.value for m in at.markdown if m.value.startswith("**Measured here.**")]
    used = {t["name"]: r["experiment_id"] for r in old.table("runs") for t in r["params"]["techniques"]}
    assert used  # the fixture's variants used techniques
    for technique, exp_id in used.items():
        assert any(f"(experiment {exp_id})" in m and f"experiment={exp_id}" in m for m in measured), technique
    assert len(measured) == len(used)


def test_what_if_sets_the_old_baseline_tpot_beside_its_estimate(upgraded, old):
    raw = old.experiment("llm")
    tpot = old.metric(old.runs(raw["id"])[0]["id"], "tpot_ms")
    at = page("pages/5_What_if.py")
    assert not at.exception
    text = all_text(at)
    assert f"**Measured here** (experiment {raw['id']}, {raw['spec']['workload']}, baseline" in text
    assert f"TPOT {tpot['value']:.3g} ms (n={tpot['n']})" in text
