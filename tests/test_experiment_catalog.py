"""The experiment catalog (lab/catalog.py) and migration 0003: each operation changes exactly what it says and
nothing else, bad input and unknown ids change nothing, deleting cascades to one experiment's rows only, the
filters pick the right experiments, and a database at revision 0002 upgrades keeping its rows."""
from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from lab import catalog, store
from lab.catalog import ExperimentBusy
from lab.errors import SpecError, UnknownExperiment
from lab.store import Experiment, Job, Metric, Output, Run

TABLES = {"runs": Run, "metrics": Metric, "outputs": Output, "jobs": Job}


def make_experiment(name: str, model: str = "tiny", workload: str = "chat", techniques=(("weight_dtype",),),
                    tags=(), job_status: str = "done") -> int:
    """An experiment with a baseline and one run per entry of `techniques`, each run with 2 metrics and
    3 outputs, and one job in `job_status`; returns its id."""
    variants = [{"name": "baseline", "engine": "lab", "techniques": []}]
    variants += [{"name": f"v{i}", "engine": "lab", "techniques": [{"name": t} for t in names]}
                 for i, names in enumerate(techniques)]
    with store.session() as s:
        exp = Experiment(name=name, spec={"name": name, "model": model, "workload": workload, "variants": variants},
                         spec_hash="0" * 64, status="done", tags=list(tags))
        for position, variant in enumerate(variants):
            run = Run(position=position, variant=variant["name"], is_baseline=position == 0,
                      params={"techniques": variant["techniques"]}, environment={})
            run.metrics = [Metric(name=m, value=1.0, unit="s") for m in ("ttft_s", "tokens_per_s")]
            run.outputs = [Output(item_index=i, item_key=f"k{i}", prompt="p", text="t", token_ids=[1], extra={})
                           for i in range(3)]
            exp.runs.append(run)
        s.add(exp)
        s.flush()
        s.add(Job(experiment_id=exp.id, status=job_status, message=job_status))
        return exp.id


def rows_of(experiment_id: int) -> dict[str, int]:
    """How many rows of each dependent table belong to the experiment."""
    with store.session() as s:
        run_ids = select(Run.id).where(Run.experiment_id == experiment_id)
        return {"runs": s.scalar(select(func.count()).select_from(Run).where(Run.experiment_id == experiment_id)),
                "metrics": s.scalar(select(func.count()).select_from(Metric).where(Metric.run_id.in_(run_ids))),
                "outputs": s.scalar(select(func.count()).select_from(Output).where(Output.run_id.in_(run_ids))),
                "jobs": s.scalar(select(func.count()).select_from(Job).where(Job.experiment_id == experiment_id))}


def total_rows() -> dict[str, int]:
    with store.session() as s:
        return {name: s.scalar(select(func.count()).select_from(model)) for name, model in TABLES.items()}


def stored(experiment_id: int) -> dict:
    """Every column of the experiment row as stored."""
    with store.session() as s:
        exp = s.get(Experiment, experiment_id)
        return {attr.key: getattr(exp, attr.key) for attr in Experiment.__mapper__.column_attrs}


# --- schema ------------------------------------------------------------------------------------------
def test_a_new_experiment_starts_untagged_without_a_note_and_local():
    exp_id = make_experiment("a")
    row = stored(exp_id)
    assert (row["tags"], row["note"], row["origin"], row["imported_from"]) == ([], "", "local", None)


def test_an_imported_experiment_keeps_where_it_came_from():
    with store.session() as s:
        exp = Experiment(name="from Ada", spec={"variants": []}, spec_hash="1" * 64, origin=store.ORIGIN_IMPORTED,
                         imported_from={"file": "ada.zip", "exported_at_commit": "abc123", "original_id": 7})
        s.add(exp)
        s.flush()
        exp_id = exp.id
    entry = catalog.catalog_entry(exp_id)
    assert entry["origin"] == "imported"
    assert entry["imported_from"] == {"file": "ada.zip", "exported_at_commit": "abc123", "original_id": 7}


def test_a_database_at_0002_upgrades_keeping_its_rows_with_defaults(isolated_db):
    url = f"sqlite:///{isolated_db}"
    command.upgrade(store.alembic_config(url), "0002")
    old = create_engine(url)
    with old.begin() as c:
        c.execute(text("insert into experiments (id, name, spec, spec_hash, status, created_at) values "
                       "(1, 'old one', '{\"model\": \"m\", \"variants\": []}', 'h', 'done', '2026-01-01')"))
        c.execute(text("insert into runs (id, experiment_id, position, variant, is_baseline, params, environment, "
                       "created_at) values (5, 1, 0, 'baseline', 1, '{}', '{}', '2026-01-01')"))
        c.execute(text("insert into metrics (run_id, name, value, n, unit) values (5, 'ttft_s', 0.5, 1, 's')"))
        c.execute(text("insert into outputs (run_id, item_index, item_key, prompt, text, token_ids, extra) "
                       "values (5, 0, 'k', 'p', 't', '[1]', '{}')"))
    old.dispose()

    statements = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        engine = store.sessionmaker_for().kw["bind"]  # the first open applies 0003
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    # Plain ADD COLUMNs: the table a worker writes to is never copied, dropped and renamed.
    assert sum("ALTER TABLE experiments ADD COLUMN" in st for st in statements) == 4
    assert not any("DROP TABLE" in st for st in statements)
    with engine.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar() == "0004"
    row = stored(1)
    assert (row["name"], row["spec"], row["status"]) == ("old one", {"model": "m", "variants": []}, "done")
    assert (row["tags"], row["note"], row["origin"], row["imported_from"]) == ([], "", "local", None)
    assert rows_of(1) == {"runs": 1, "metrics": 1, "outputs": 1, "jobs": 0}
    assert catalog.set_tags(1, ["kept"]) == ["kept"]  # the new columns are writable on the upgraded row


def test_downgrading_0003_keeps_the_experiments_and_their_runs(isolated_db):
    exp_id = make_experiment("a")
    before = rows_of(exp_id)
    store.reset_engines()
    url = f"sqlite:///{isolated_db}"
    command.downgrade(store.alembic_config(url), "0002")  # SQLite rebuilds the table: must not cascade
    engine = create_engine(url)
    with engine.connect() as c:
        columns = {r[1] for r in c.execute(text("PRAGMA table_info(experiments)"))}
        assert "tags" not in columns and "origin" not in columns
        assert c.execute(text("select name from experiments")).scalars().all() == ["a"]
        assert c.execute(text("select count(*) from runs")).scalar() == before["runs"]
        assert c.execute(text("select count(*) from outputs")).scalar() == before["outputs"]
    engine.dispose()


# --- rename, tags, note ------------------------------------------------------------------------------
@pytest.mark.both_databases
def test_rename_changes_only_the_name():
    a, b = make_experiment("a", tags=["x"]), make_experiment("b")
    before_a, before_b = stored(a), stored(b)
    assert catalog.rename_experiment(a, "  fp16 vs int8  ") == "fp16 vs int8"
    assert stored(a) == {**before_a, "name": "fp16 vs int8"}
    assert stored(a)["spec"]["name"] == "a"  # the spec keeps the name it ran under
    assert stored(b) == before_b


@pytest.mark.both_databases
@pytest.mark.parametrize("bad, cause", [("", "empty"), ("   ", "empty"), ("x" * 201, "at most 200"),
                                        ("two\nlines", "line break"), (None, "expected text")])
def test_a_bad_name_is_refused_and_nothing_changes(bad, cause):
    a = make_experiment("a")
    with pytest.raises(SpecError, match=cause):
        catalog.rename_experiment(a, bad)
    assert stored(a)["name"] == "a"


@pytest.mark.both_databases
def test_a_name_of_exactly_the_column_length_fits():
    a = make_experiment("a")
    assert catalog.rename_experiment(a, "n" * 200) == "n" * 200
    assert stored(a)["name"] == "n" * 200


@pytest.mark.both_databases
def test_tags_are_stripped_deduplicated_and_sorted_and_replace_the_old_ones():
    a, b = make_experiment("a", tags=["old"]), make_experiment("b", tags=["other"])
    before_a, before_b = stored(a), stored(b)
    assert catalog.set_tags(a, [" int8", "baseline ", "int8", "", "  ", "Int8"]) == ["Int8", "baseline", "int8"]
    assert stored(a) == {**before_a, "tags": ["Int8", "baseline", "int8"]}
    assert stored(b) == before_b
    assert catalog.set_tags(a, []) == [] and stored(a)["tags"] == []


@pytest.mark.both_databases
@pytest.mark.parametrize("bad, cause", [(["a,b"], "comma"), (["t" * 41], "at most 40"), (["ok", 3], "expected text"),
                                        (["line\nbreak"], "line break"), ("int8", "list of tags")])
def test_a_bad_tag_is_refused_and_the_old_tags_stay(bad, cause):
    a = make_experiment("a", tags=["keep"])
    with pytest.raises(SpecError, match=cause):
        catalog.set_tags(a, bad)
    assert stored(a)["tags"] == ["keep"]


@pytest.mark.both_databases
def test_a_tag_of_forty_characters_fits():
    a = make_experiment("a")
    assert catalog.set_tags(a, ["t" * 40]) == ["t" * 40]


def test_set_note_changes_only_the_note_and_an_empty_one_clears_it():
    a, b = make_experiment("a"), make_experiment("b")
    before_a, before_b = stored(a), stored(b)
    assert catalog.set_note(a, "  int8 loses 2 points on needle at 4k.\nRerun with 8 repeats.\n") == (
        "int8 loses 2 points on needle at 4k.\nRerun with 8 repeats.")
    assert stored(a) == {**before_a, "note": "int8 loses 2 points on needle at 4k.\nRerun with 8 repeats."}
    assert stored(b) == before_b
    catalog.set_note(a, "")
    assert stored(a) == before_a
    with pytest.raises(SpecError, match="expected text"):
        catalog.set_note(a, 42)


def test_all_tags_lists_each_tag_once_sorted():
    assert catalog.all_tags() == []
    make_experiment("a", tags=["int8", "needle"])
    make_experiment("b", tags=["baseline", "int8"])
    make_experiment("c")
    assert catalog.all_tags() == ["baseline", "int8", "needle"]


# --- delete ------------------------------------------------------------------------------------------
@pytest.mark.both_databases
def test_deleting_an_experiment_removes_its_rows_and_leaves_the_others():
    a = make_experiment("a", techniques=[("weight_dtype",), ("snapkv",)])
    b = make_experiment("b")
    rows_a, rows_b, totals = rows_of(a), rows_of(b), total_rows()
    assert rows_a == {"runs": 3, "metrics": 6, "outputs": 9, "jobs": 1}

    assert catalog.delete_experiment(a) == rows_a
    assert rows_of(a) == {"runs": 0, "metrics": 0, "outputs": 0, "jobs": 0}
    assert rows_of(b) == rows_b
    assert total_rows() == {name: totals[name] - rows_a[name] for name in TABLES}
    with store.session() as s:
        assert s.scalars(select(Experiment.id)).all() == [b]


@pytest.mark.both_databases
@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_experiment_whose_job_is_queued_or_running_is_not_deleted(status):
    a = make_experiment("a", job_status=status)
    before, totals = rows_of(a), total_rows()
    with pytest.raises(ExperimentBusy, match=f"experiment {a} has a queued or running job"):
        catalog.delete_experiment(a)
    assert rows_of(a) == before and total_rows() == totals
    assert stored(a)["name"] == "a"


@pytest.mark.both_databases
@pytest.mark.parametrize("status", ["done", "failed", "cancelled"])
def test_an_experiment_whose_job_ended_is_deleted(status):
    a = make_experiment("a", job_status=status)
    catalog.delete_experiment(a)
    assert rows_of(a) == {"runs": 0, "metrics": 0, "outputs": 0, "jobs": 0}


def test_an_id_read_from_a_dataframe_works_like_an_int():
    import numpy as np
    a, b = make_experiment("a"), make_experiment("b")
    assert catalog.set_tags(np.int64(a), ["x"]) == ["x"]
    catalog.delete_experiment(np.int64(a))
    assert rows_of(a)["runs"] == 0 and rows_of(b)["runs"] == 2


def test_the_store_turns_sqlite_foreign_keys_on_so_the_cascade_runs():
    with store.session() as s:
        assert s.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_connection_without_foreign_keys_is_refused_before_anything_is_deleted(isolated_db):
    a = make_experiment("a")
    plain = create_engine(f"sqlite:///{isolated_db}")  # no store pragmas: foreign keys off
    with Session(plain) as s, pytest.raises(RuntimeError, match="foreign keys are off"):
        catalog._require_cascade(s)
    plain.dispose()
    assert rows_of(a)["runs"] == 2


# --- unknown ids -------------------------------------------------------------------------------------
@pytest.mark.both_databases
@pytest.mark.parametrize("operation", [
    lambda i: catalog.rename_experiment(i, "x"), lambda i: catalog.set_tags(i, ["x"]),
    lambda i: catalog.set_note(i, "x"), catalog.delete_experiment, catalog.catalog_entry],
    ids=["rename", "tags", "note", "delete", "entry"])
def test_an_unknown_id_is_a_clear_error_and_changes_nothing(operation):
    a = make_experiment("a")
    before, totals = stored(a), total_rows()
    with pytest.raises(UnknownExperiment, match=f"no experiment has id {a + 1}"):
        operation(a + 1)
    with pytest.raises(UnknownExperiment, match="no experiment has id '1'"):
        operation("1")
    assert stored(a) == before and total_rows() == totals


# --- filters -----------------------------------------------------------------------------------------
@pytest.fixture
def three_experiments():
    return {"kv": make_experiment("kv", model="smollm2", workload="needle", techniques=[("snapkv",), ("h2o",)],
                                  tags=["kv", "long"]),
            "quant": make_experiment("quant", model="smollm2", workload="chat",
                                     techniques=[("weight_dtype", "w8a8")], tags=["int8"]),
            "digits": make_experiment("digits", model="digits-dit", workload="digits",
                                      techniques=[("first_block_cache",)])}


@pytest.mark.parametrize("filters, expected", [
    ({}, ["digits", "quant", "kv"]),
    ({"model": "smollm2"}, ["quant", "kv"]),
    ({"workload": "needle"}, ["kv"]),
    ({"technique": "w8a8"}, ["quant"]),
    ({"technique": "h2o"}, ["kv"]),
    ({"tag": "long"}, ["kv"]),
    ({"model": "smollm2", "technique": "snapkv", "tag": "kv"}, ["kv"]),
    ({"model": "smollm2", "workload": "digits"}, []),
    ({"technique": "none"}, []),
    ({"model": "", "tag": None}, ["digits", "quant", "kv"]),
])
@pytest.mark.both_databases
def test_filters_return_the_matching_experiments_newest_first(three_experiments, filters, expected):
    rows = catalog.filter_experiments(**filters)
    assert [r["id"] for r in rows] == [three_experiments[name] for name in expected]


def test_a_filter_row_says_what_the_page_shows(three_experiments):
    catalog.set_note(three_experiments["kv"], "needle at 4k")
    row = catalog.filter_experiments(tag="kv")[0]
    assert {k: row[k] for k in ("name", "model", "workload", "techniques", "tags", "note", "origin")} == {
        "name": "kv", "model": "smollm2", "workload": "needle", "techniques": ["h2o", "snapkv"],
        "tags": ["kv", "long"], "note": "needle at 4k", "origin": "local"}


def test_filter_options_list_the_values_present(three_experiments):
    assert catalog.filter_options() == {
        "model": ["digits-dit", "smollm2"], "workload": ["chat", "digits", "needle"],
        "technique": ["first_block_cache", "h2o", "snapkv", "w8a8", "weight_dtype"], "tag": ["int8", "kv", "long"]}
