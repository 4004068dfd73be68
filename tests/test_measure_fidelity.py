import math

import pytest

from lab.bench.fidelity import agreement, perplexity
from lab.bench.measure import PeakMemory, environment, percentile, summarize


def test_summary_median_and_percentiles():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0, float("nan")])
    assert (s.median, s.n) == (3.0, 5)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(4.6)
    assert math.isnan(percentile([], 50))


def test_peak_memory_sees_an_allocation():
    import torch
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 1024 * 1024 // 4 * 3)  # 192 MB, touched so it is resident
        x += 1
        del x
    assert mem.rise > 150 * 1024 * 1024
    with PeakMemory("cpu") as idle:
        pass
    assert idle.rise < 50 * 1024 * 1024


@pytest.mark.parametrize("base, var, rate, first", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0, 4),
    ([1, 2, 3, 4], [1, 2, 9, 4], 0.75, 2),
    ([1, 2, 3, 4], [1, 2], 0.5, 2),
    ([1, 2], [1, 2, 3, 4], 0.5, 2),
    ([1, 2, 3, 4], [9, 9, 9, 9], 0.0, 0),
    ([], [], 1.0, 0),
])
def test_agreement(base, var, rate, first):
    assert agreement(base, var) == (rate, first)


def test_perplexity_of_uniform_guess_is_vocab_size():
    assert perplexity(10 * math.log(50), 10) == pytest.approx(50)


def test_environment_records_what_makes_runs_comparable():
    env = environment("cpu", "float32", "abc")
    for key in ("device", "threads", "dtype", "torch", "transformers", "diffusers", "lab_commit", "spec_hash"):
        assert env[key] not in (None, "")
    assert env["spec_hash"] == "abc" and env["threads"] >= 1
