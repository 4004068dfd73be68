"""A variant's own thread count (the thread sweep of bench_engine): validated, stored only when set, applied to that
variant's calls alone (LLM and diffusion) and recorded in its environment as the count torch ran with."""
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


def test_the_environment_records_the_threads_torch_ran_with_not_the_ones_asked_for(tiny_spec, monkeypatch):
    granted = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: granted(min(n, 1)))  # a machine that grants one thread
    spec = validate({**tiny_spec, "threads": 1, "repeats": 1, "prompts": 1, "perplexity_tokens": 0,
                     "variants": [{"name": "two threads asked", "threads": 2}]})
    base, asked_two = run.execute(spec)
    assert base.environment["threads"] == 1 and asked_two.environment["threads"] == 1


def test_variant_threads_yields_the_count_torch_runs_with():
    before = torch.get_num_threads()
    with variant_threads(1) as ran:
        assert ran == torch.get_num_threads() == 1
    with variant_threads(0) as ran:
        assert ran == before


def test_a_diffusion_variant_runs_on_its_own_threads_and_records_them(data_in_tmp):
    spec = validate({"name": "digits threads", "model": "digits-dit", "workload": "digits", "classes": [0],
                     "images_per_class": 1, "steps": 4, "repeats": 1, "threads": 2,
                     "variants": [{"name": "one thread", "threads": 1}]})
    base, single = run.execute(spec)
    assert base.environment["threads"] == 2 and single.environment["threads"] == 1
    assert single.samples["speedup"]
