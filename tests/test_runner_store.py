"""The runner on a tiny model end to end, and the store: migrations, one-transaction saves."""
import pytest
from sqlalchemy import func, inspect, select, text

from lab import store
from lab.bench import record, run
from lab.bench.validate import validate
from lab.jobs import submit
from lab.views import results


@pytest.fixture
def ran(tiny_spec):
    spec = validate(tiny_spec)
    return spec, run.execute(spec)


def test_runner_measures_every_metric_with_the_baseline_interleaved(ran):
    spec, res = ran
    assert [r.name for r in res] == ["baseline", "bf16"]
    n = spec.repeats * spec.prompts
    for r in res:
        for name in ("ttft_s", "tpot_ms", "tokens_per_s", "latency_s", "kv_cache_mb", "speedup", "decode_speedup",
                     "prefill_speedup", "decode_tokens_per_s", "prefill_tokens_per_s"):
            assert len(r.samples[name]) == n, name
        assert len(r.samples["peak_mem_mb"]) == 1  # one fresh-process probe per variant
        assert len(r.samples["agreement"]) == spec.prompts
        assert r.samples["perplexity"][0] > 1
        assert r.environment["threads"] == 1 and r.environment["spec_hash"]
    base, half = res
    # each ratio pairs the same item in the same repeat: the i-th sample of one variant with the baseline's
    b, h = base.samples, half.samples
    for i in range(n):
        assert h["decode_speedup"][i] == pytest.approx(b["tpot_ms"][i] / h["tpot_ms"][i])
        assert h["prefill_speedup"][i] == pytest.approx(b["ttft_s"][i] / h["ttft_s"][i])
    assert half.samples["speedup"] == half.samples["decode_speedup"]  # chat leads with the decode speedup
    # agreement recomputed from the stored token ids of both variants
    from lab.bench.fidelity import agreement
    for out, score in zip(half.outputs, half.samples["agreement"]):
        twin = next(o for o in base.outputs if o["item_index"] == out["item_index"])
        assert score == pytest.approx(100 * agreement(twin["token_ids"], out["token_ids"])[0])
    # answer similarity (MiniLM) per item: exactly 100 where the texts are equal, below where they differ
    assert len(half.samples["answer_similarity"]) == spec.prompts
    for out, sim in zip(half.outputs, half.samples["answer_similarity"]):
        twin = next(o for o in base.outputs if o["item_index"] == out["item_index"])
        assert (sim == 100.0) == (out["text"] == twin["text"]) and sim <= 100.0 + 1e-6
    assert half.samples["weight_mb"][0] == pytest.approx(base.samples["weight_mb"][0] / 2)
    assert max(half.samples["kv_cache_mb"]) < min(base.samples["kv_cache_mb"])  # bf16 KV: fewer bytes held
    assert half.samples["kv_compression"] == pytest.approx([2.0] * n)  # at equal token counts, exactly half
    assert half.environment["dtype"] == "bfloat16" and base.environment["dtype"] == "float32"


@pytest.mark.both_databases
def test_save_writes_runs_metrics_outputs_and_reads_back_as_a_table(ran):
    spec, res = ran
    exp_id, _ = submit(spec)
    record.save(exp_id, res)
    exp = results.load_experiment(exp_id)
    assert [r.variant for r in exp.runs] == ["baseline", "bf16"] and exp.runs[0].is_baseline
    assert len(exp.runs[0].outputs) == 2 and exp.runs[0].outputs[0].token_ids
    tps = next(m for m in exp.runs[0].metrics if m.name == "tokens_per_s")
    assert tps.unit == "tok/s" and tps.n == 4 and tps.p10 <= tps.value <= tps.p90
    rows = results.summary_rows(exp)
    assert rows[0]["Variant"] == "baseline" and "TTFT [s]" in rows[0] and "Perplexity [ppl]" in rows[1]


@pytest.mark.both_databases
def test_a_failing_save_leaves_nothing_half_written(ran, monkeypatch):
    spec, res = ran
    exp_id, _ = submit(spec)
    res[1].outputs[0]["prompt"] = None  # violates NOT NULL on the second run's output, mid-transaction
    with pytest.raises(Exception):
        record.save(exp_id, res)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(store.Run)) == 0
        assert s.scalar(select(func.count()).select_from(store.Metric)) == 0


def test_schema_comes_from_the_alembic_migration_in_wal_mode(isolated_db):
    maker = store.sessionmaker_for()
    engine = maker.kw["bind"]
    tables = set(inspect(engine).get_table_names())
    assert {"experiments", "runs", "metrics", "outputs", "jobs", "workers", "alembic_version"} <= tables
    with engine.connect() as c:
        assert c.execute(text("select version_num from alembic_version")).scalar() == "0004"
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"


@pytest.mark.both_databases
def test_migration_matches_the_models(isolated_db):
    """A model change without a migration fails here (autogenerate finds no difference when in sync)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    engine = store.sessionmaker_for().kw["bind"]
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), store.Base.metadata)
    assert diff == []
