"""A variant's own thread count (the thread sweep of bench_engine): validated, stored only when set, applied to that
variant's calls alone and recorded in its environment."""
import pytest
import torch

from lab.bench import run
from lab.bench.engines import variant_threads
from lab.bench.validate import validate
from lab.errors import SpecError


@pytest.mark.parametrize("threads", [-1, 257, "2", True, 1.5])
def test_a_bad_thread_count_is_refused_naming_the_range(tiny_spec, threads):
    with pytest.raises(SpecError, match=r"variants\[0\]\.threads: .* allowed: an integer from 0"):
        validate({**tiny_spec, "variants": [{"name": "x", "threads": threads}]})


def test_threads_are_stored_only_when_set_and_a_one_thread_plain_row_is_not_the_baseline(tiny_spec):
    spec = validate({**tiny_spec, "variants": [{"name": "one thread", "threads": 1}]})
    assert [v.name for v in spec.variants] == ["baseline", "one thread"]
    stored = spec.to_dict()["variants"]
    assert "threads" not in stored[0] and stored[1]["threads"] == 1


def test_variant_threads_applies_and_restores():
    before = torch.get_num_threads()
    with variant_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with variant_threads(0):  # 0: the spec's count stays
        assert torch.get_num_threads() == before


def test_the_run_records_each_variants_threads(tiny_spec):
    spec = validate({**tiny_spec, "threads": 2, "repeats": 1, "prompts": 1, "perplexity_tokens": 0,
                     "variants": [{"name": "one thread", "threads": 1}]})
    base, single = run.execute(spec)
    assert base.environment["threads"] == 2 and single.environment["threads"] == 1
    assert single.samples["speedup"]  # paired against the baseline like any variant
