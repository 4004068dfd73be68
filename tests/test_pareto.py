"""The Pareto front of speed against quality: hand-made points for every direction, ties and missing values, and
the points read from a store."""
from __future__ import annotations

import math

import pytest

from lab import store
from lab.views.pareto import default_axes, pareto_front, pareto_points


def pts(*xy):
    return [{"x": x, "y": y} for x, y in xy]


def test_both_higher_is_better_keeps_the_points_nothing_beats_on_both():
    points = pts((1.0, 100.0), (2.0, 90.0), (1.5, 80.0), (3.0, 50.0), (0.5, 99.0))
    # (1.5, 80) is beaten by (2, 90); (0.5, 99) by (1, 100)
    assert pareto_front(points, "x", "y", True, True) == [0, 1, 3]


def test_directions_flip_which_points_win():
    points = pts((1.0, 10.0), (2.0, 5.0), (3.0, 1.0), (2.0, 10.0))
    assert pareto_front(points, "x", "y", False, False) == [0, 1, 2]  # lower is better on both
    assert pareto_front(points, "x", "y", True, True) == [2, 3]
    assert pareto_front(points, "x", "y", True, False) == [2]  # the fastest is also the lowest y
    assert pareto_front(points, "x", "y", False, True) == [0]


def test_equal_points_are_both_kept_and_a_tie_on_one_axis_is_decided_by_the_other():
    points = pts((2.0, 90.0), (2.0, 90.0), (2.0, 80.0), (1.0, 95.0))
    assert pareto_front(points, "x", "y", True, True) == [0, 1, 3]


def test_missing_or_non_finite_values_are_on_no_front_and_beat_nothing():
    points = [{"x": 1.0, "y": 1.0}, {"x": None, "y": 1000.0}, {"x": 5.0}, {"x": math.nan, "y": 5.0},
              {"x": math.inf, "y": 5.0}, {"x": 0.5, "y": 2.0}]
    assert pareto_front(points, "x", "y", True, True) == [0, 5]
    assert pareto_front([], "x", "y", True, True) == []


def test_a_single_point_is_its_own_front():
    assert pareto_front(pts((3.0, 4.0)), "x", "y", True, False) == [0]


def test_default_axes_prefer_speedup_and_the_first_quality_metric_in_catalogue_order():
    assert default_axes({"tpot_ms", "speedup", "answer_similarity", "agreement"}) == ("speedup", "agreement")
    assert default_axes({"tpot_ms", "perplexity"}) == ("tpot_ms", "perplexity")
    assert default_axes({"new_tokens", "agreement"}) == (None, "agreement")  # new tokens: no better direction


def _store_runs() -> list[int]:
    values = [("baseline", True, {"speedup": 1.0, "perplexity": 10.0}), ("fast", False, {"speedup": 2.0,
              "perplexity": 12.0}), ("slow-bad", False, {"speedup": 0.9, "perplexity": 11.0}),
              ("lossless", False, {"speedup": 1.4, "perplexity": 10.0}), ("no-ppl", False, {"speedup": 3.0})]
    with store.session() as s:
        exp = store.Experiment(name="e", spec={"workload": "perplexity"}, spec_hash="h", status="done")
        for i, (variant, base, metrics) in enumerate(values):
            run = store.Run(position=i, variant=variant, is_baseline=base, params={}, environment={})
            run.metrics = [store.Metric(name=k, value=v, p10=v, p90=v, n=1, unit="") for k, v in metrics.items()]
            exp.runs.append(run)
        s.add(exp)
        s.flush()
        return [r.id for r in exp.runs]


def test_pareto_points_reads_runs_and_marks_the_front_under_each_metrics_direction():
    ids = _store_runs()
    df = pareto_points(list(reversed(ids)))
    assert list(df["run"]) == sorted(ids)  # sorted by run id whatever order they were chosen in
    front = dict(zip(df["variant"], df["on_front"]))
    # perplexity is lower-better: the baseline (1x, 10) is beaten by lossless (1.4x, 10); slow-bad by both
    assert front == {"baseline": False, "fast": True, "slow-bad": False, "lossless": True, "no-ppl": False}
    assert df.loc[df["variant"] == "no-ppl", "y"].isna().all()
    assert df.loc[df["variant"] == "baseline", "is_baseline"].item()


def test_pareto_points_with_named_axes_and_without_any_quality_metric():
    ids = _store_runs()
    df = pareto_points(ids, "perplexity", "speedup")
    assert list(df.loc[df["on_front"], "variant"]) == ["fast", "lossless"]
    with pytest.raises(ValueError, match="no better direction"):
        pareto_points(ids, "speedup", "new_tokens")
    assert pareto_points([]).empty
