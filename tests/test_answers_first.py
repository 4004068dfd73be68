"""Answers first (issue 29): a verdict per variant (lab/views/verdict.py) before the table, read from the stored
metrics with their noise flags; peak memory drawn in its parts; axes that stay readable. The data below is shaped
as a report holds it; its numbers are the quick start's on an AMD EPYC (2026-12-07), standing in for any stored
run."""
import pytest

from lab.views.verdict import verdicts


def metric(name, median, p10=None, p90=None, n=1):
    return {"name": name, "median": median, "p10": median if p10 is None else p10,
            "p90": median if p90 is None else p90, "n": n}


def quickstart(**bf16_speedup) -> dict:
    speedup = {"median": 1.32, "p10": 1.28, "p90": 1.33, "n": 8, **bf16_speedup}
    return {"spec": {"warmup": 1}, "busy_warning": None, "runs": [
        {"variant": "baseline", "is_baseline": True, "metrics": [
            metric("speedup", 1.0, n=8), metric("weight_mb", 513.0), metric("peak_mem_mb", 958.0),
            metric("perplexity", 16.8), metric("agreement", 100.0, n=4), metric("kv_compression", 1.0, n=8)]},
        {"variant": "bf16", "is_baseline": False, "metrics": [
            metric("speedup", **speedup), metric("weight_mb", 257.0), metric("peak_mem_mb", 697.0),
            metric("perplexity", 16.7), metric("agreement", 100.0, n=4), metric("kv_compression", 2.0, n=8)]}]}


def test_the_bf16_verdict_names_its_speedup_weights_peak_and_perplexity_change():
    [v] = verdicts(quickstart())
    assert v.variant == "bf16" and v.headline == "1.32x faster (1.28–1.33)" and v.flags == []
    assert "weights 257 MB (−50%)" in v.parts and "peak 697 MB (−27%)" in v.parts
    assert "perplexity 16.7 ppl (−0.60%)" in v.parts and "agreement 100%" in v.parts
    assert "KV compression 2.00x" in v.parts  # the KV family's own figure, shown where it moved


def test_a_ratio_within_noise_reads_as_fast_and_says_why():
    [v] = verdicts(quickstart(median=1.02, p10=0.97, p90=1.08))
    assert v.headline == "1.02x as fast (0.970–1.08)" and v.flags == ["within noise"]
    [slower] = verdicts(quickstart(median=0.8, p10=0.78, p90=0.83))
    assert slower.headline.startswith("0.800x slower") and slower.flags == []


def test_a_busy_machine_and_too_few_pairs_show_in_the_verdict():
    exp = quickstart(n=2)
    exp["busy_warning"] = "other processes used 40% of the CPU"
    [v] = verdicts(exp)
    assert v.flags == ["only 2 pairs", "busy machine: other processes used 40% of the CPU"]


def test_a_techniques_own_metric_is_its_figure_and_an_unmoved_family_figure_is_left_out():
    exp = quickstart()
    bf16 = exp["runs"][1]["metrics"]
    bf16[:] = [m for m in bf16 if m["name"] != "kv_compression"] + [metric("kv_compression", 1.0),
                                                                     metric("attended_share", 27.5)]
    [v] = verdicts(exp)
    assert "Computed share 27.5%" in v.parts  # declared in lab/techniques/sparse_attention/base.py
    assert not any(p.startswith("KV compression") for p in v.parts)


@pytest.mark.parametrize("runs", [[], [{"variant": "a", "is_baseline": False, "metrics": []}]])
def test_no_baseline_no_verdict(runs):
    assert verdicts({"runs": runs}) == []


def test_an_axis_whose_values_are_all_equal_spans_around_them_and_any_other_follows_the_data():
    """Agreement 100% for every variant drew one tick labelled "100.000000" (issue 29)."""
    from lab.views.charts import value_scale
    assert value_scale([100.0, 100.0, None]).to_dict() == {"zero": False, "domain": [95.0, 105.0]}
    assert value_scale([1.0, 1.0]).to_dict() == {"zero": False, "domain": [0.0, 2.0]}
    assert value_scale([0.9, 1.3]).to_dict() == {"zero": False}


def test_the_memory_chart_stacks_each_peak_from_its_parts_with_the_kv_cache_inside_the_work():
    from types import SimpleNamespace

    from lab.views.charts import memory_chart, memory_rows

    def run(variant, **values):
        return SimpleNamespace(variant=variant, metrics=[SimpleNamespace(name=k, value=v) for k, v in values.items()])
    runs = [run("baseline", mem_runtime_mb=390.0, mem_weights_mb=554.0, mem_rise_mb=14.0, kv_cache_mb=2.9),
            run("int8 KV", mem_runtime_mb=390.0, mem_weights_mb=554.0, mem_rise_mb=1.0, kv_cache_mb=2.0),
            run("no probe", kv_cache_mb=2.9)]
    rows = memory_rows(runs)
    parts = {(r["label"], r["part"]): r["mb"] for r in rows}
    assert {label for label, _ in parts} == {"baseline", "int8 KV"}  # a run without the probe's parts is left out
    assert sum(mb for (label, _), mb in parts.items() if label == "baseline") == pytest.approx(390 + 554 + 14)
    assert parts[("baseline", "KV cache")] == pytest.approx(2.9) and parts[("baseline", "other work")] == \
        pytest.approx(11.1)
    assert parts[("int8 KV", "KV cache")] == 1.0 and parts[("int8 KV", "other work")] == 0.0  # KV at most the work
    assert memory_chart(rows).to_dict()["encoding"]["x"]["stack"] == "zero"
