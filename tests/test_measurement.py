"""Numbers that cannot mislead: headline speedups that answer length cannot game, KV bytes compared at equal
token counts and read from the tensors that exist, each variant's memory with only its own weights alive, and
a speedup from too little data flagged as such."""
import pytest
import torch

from lab.bench.llm_runner import _record_pair
from lab.llm.engine import Engine
from lab.ops.generation import Generation
from lab.ops.sampling import GenerationSettings
from lab.techniques import build
from tests.conftest import build_byte_tokenizer, build_tiny_llama


def generation(new_tokens: int, ttft: float, tpot: float, kv_per_token: int = 100, prompt: int = 50) -> Generation:
    """A generation whose timings and KV trace follow a steady per-token cost."""
    times = [ttft + i * tpot for i in range(new_tokens)]
    trace = [(prompt + i, kv_per_token * (prompt + i)) for i in range(new_tokens)]
    return Generation(prompt_len=prompt, token_ids=[1] * new_tokens, token_times=times,
                      kv_bytes=trace[-1][1], kv_trace=trace)


def pair(base, variant, headline="decode_speedup") -> dict:
    samples = {k: [] for k in ("decode_speedup", "prefill_speedup", "speedup", "kv_compression")}
    _record_pair(samples, [base], [variant], headline)
    return {k: v[0] for k, v in samples.items() if v}


def test_a_variant_that_rambles_on_is_not_faster():
    """Same prefill, same time per token, four times the tokens: latency-based tokens/s called it 1.5x faster."""
    base, rambling = generation(10, ttft=5.0, tpot=0.1), generation(40, ttft=5.0, tpot=0.1)
    old_style = (40 / rambling.latency) / (10 / base.latency)
    assert old_style > 1.4
    ratios = pair(base, rambling)
    assert ratios["decode_speedup"] == pytest.approx(1.0)
    assert ratios["prefill_speedup"] == pytest.approx(1.0)
    assert ratios["speedup"] == pytest.approx(1.0)


def test_headline_follows_the_workload_and_each_phase_is_its_own_ratio():
    base, variant = generation(20, ttft=6.0, tpot=0.10), generation(20, ttft=3.0, tpot=0.08)
    decode_led = pair(base, variant, "decode_speedup")
    prefill_led = pair(base, variant, "prefill_speedup")
    assert decode_led["decode_speedup"] == pytest.approx(0.10 / 0.08)
    assert decode_led["prefill_speedup"] == pytest.approx(2.0)
    assert decode_led["speedup"] == pytest.approx(1.25) and prefill_led["speedup"] == pytest.approx(2.0)


def test_a_variant_that_stops_early_is_not_more_compressed():
    """Same bytes per token, half the tokens: end-of-run bytes would say 1.3x; at equal counts it is 1x."""
    base, short = generation(40, 1.0, 0.1), generation(20, 1.0, 0.1)
    assert base.kv_bytes / short.kv_bytes > 1.2
    assert pair(base, short)["kv_compression"] == pytest.approx(1.0)
    halved = generation(20, 1.0, 0.1, kv_per_token=50)
    assert pair(base, halved)["kv_compression"] == pytest.approx(2.0)


def test_headline_speedup_per_workload_is_declared_for_every_llm_workload():
    from lab.bench.llm_runner import HEADLINE_SPEEDUP
    from lab.prompts import WORKLOADS
    generation_workloads = set(WORKLOADS) - {"perplexity", "digits", "image_prompts"}
    assert set(HEADLINE_SPEEDUP) == generation_workloads


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(layers=2), build_byte_tokenizer()


def test_kv_trace_reads_the_cache_after_every_forward(tiny):
    model, tok = tiny
    gen = Engine(model, tok).generate(list(range(10, 40)), GenerationSettings(6))
    per_token = 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * 16 * 4  # k+v, fp32
    assert [seen for seen, _ in gen.kv_trace] == list(range(30, 36))
    assert all(b == seen * per_token for seen, b in gen.kv_trace)
    assert gen.kv_bytes == gen.kv_trace[-1][1]


def test_every_row_of_a_ragged_batch_holds_the_bytes_of_the_whole_row(tiny):
    """Batch KV is read from the cache tensors: a short prompt left-padded beside a long one holds a row as wide
    as the long one's (holes included); before, it was extrapolated from its own token count."""
    model, tok = tiny
    gens = Engine(model, tok).generate_batch([list(range(10, 20)), list(range(10, 70))], GenerationSettings(4))
    assert gens[0].kv_bytes == gens[1].kv_bytes
    per_token = 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * 16 * 4
    assert gens[0].kv_bytes == (60 + 3) * per_token


def test_a_draft_models_own_cache_is_counted_apart_from_the_targets(tiny):
    model, tok = tiny
    engine = Engine(model, tok, build([{"name": "draft_model", "draft": "truncated", "draft_layers": 1, "k": 2}]))
    gen = engine.generate(list(range(10, 40)), GenerationSettings(6))
    layer_bytes = 2 * model.config.num_key_value_heads * 16 * 4  # one layer, k+v, fp32, per token
    assert gen.draft_kv_bytes > 0 and gen.draft_kv_bytes % layer_bytes == 0
    assert gen.draft_kv_bytes < gen.kv_bytes  # one draft layer against two target layers
    plain = Engine(model, tok, build([{"name": "prompt_lookup"}])).generate(list(range(10, 40)), GenerationSettings(6))
    assert plain.draft_kv_bytes == 0


@pytest.mark.parametrize("p10, p90, n, warmup, expected", [
    (1.5, 1.8, 12, 1, None),
    (0.9, 2.5, 12, 1, "within noise"),
    (1.9, 1.9, 1, 1, "only 1 pair"),
    (1.5, 1.8, 12, 0, "no warm-up"),
    (1.8, 2.2, 2, 0, "no warm-up, only 2 pairs"),
])
def test_ratio_note_says_when_a_speedup_cannot_be_told_from_noise(p10, p90, n, warmup, expected):
    from lab.views.results import ratio_note
    assert ratio_note(p10, p90, n, warmup) == expected


def test_the_table_flags_a_speedup_measured_without_warm_up_and_gives_each_cell_its_n(tiny_spec):
    from lab.bench import record, run
    from lab.bench.validate import validate
    from lab.jobs import submit
    from lab.views import results
    spec = validate({**tiny_spec, "warmup": 0, "repeats": 1, "perplexity_tokens": 0,
                     "variants": [{"name": "snapkv", "techniques": [{"name": "snapkv", "compression_ratio": 0.5}]}]})
    res = run.execute(spec)
    exp_id, _ = submit(spec)
    record.save(exp_id, res)
    rows = results.summary_rows(results.load_experiment(exp_id))
    cell = rows[1]["Speedup [x]"]
    assert "no warm-up" in cell and "only 2 pairs" in cell and "n=2" in cell
    assert rows[1]["Peak memory [MB]"].endswith("n=1")  # one probe per variant, not one per generation
    assert "no warm-up" not in rows[0]["Speedup [x]"]  # the baseline is the reference, not a measurement of it


def test_the_memory_probe_of_an_llm_holds_no_diffusion_libraries_and_no_scorers(tiny_spec):
    """The probe's own process is what it measures: an LLM variant's peak must not include diffusers and sklearn
    (about 60 MB that the LLM never uses), nor the runner and its scorers (about 130 MB and 3 s per variant), so
    the probe server, whose forks measure, imports each kind's work only for that kind
    (probe_server._import_common, _import_for)."""
    import json
    import subprocess
    import sys

    from lab.bench.validate import validate
    from lab.paths import ROOT, child_env
    code = ("import sys, json, lab.bench.probe_server as s; s._import_common('llm'); "
            "s._import_for(json.loads(sys.argv[1])); "
            "import lab.bench.engines; "
            "print(sorted(k for k in ('diffusers', 'sklearn', 'lab.bench.llm_runner') if k in sys.modules))")
    spec = json.dumps(validate(tiny_spec).to_dict())
    out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, cwd=ROOT,
                         env=child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_memory_probe_of_a_llama_cpp_row_holds_no_torch():
    """A llama.cpp row's probe process must not hold torch (about 200 MB that llama.cpp never uses): the probe
    module, llama.cpp's engine and its settings import without it."""
    import subprocess
    import sys

    from lab.paths import ROOT, child_env
    code = ("import sys, lab.bench.memory_probe, lab.llm.llama_cpp, lab.ops.settings; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=child_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_a_live_child_counted_as_own_adds_its_cpu_to_the_runs_not_to_other_processes():
    """The memory probe's server lives on after a run (lab/bench/probe_server.py) and os.times counts a child only
    once it is waited for: without /proc's count of live children, its seconds of work read as other processes'
    and flagged the run busy (27% "other" on bench_memory)."""
    import subprocess
    import sys
    import time

    from lab.bench import machine_load
    before = machine_load._own_cpu_s()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    machine_load.count_as_own(child.pid)  # as probe_server does for its server
    try:
        deadline = time.time() + 60
        while machine_load._own_cpu_s() - before < 1.0 and time.time() < deadline:
            time.sleep(0.2)
        assert child.poll() is None  # still alive and never waited for: os.times alone does not see it
        assert machine_load._own_cpu_s() - before >= 1.0
    finally:
        child.kill()
        child.wait()


def test_the_memory_probe_counts_the_threads_its_children_run_side_by_side(tiny_spec):
    """The probe runs two variants at once: their threads together are the run's own in the load average."""
    from lab.bench.probe_server import threads_at_once
    from lab.bench.validate import validate
    spec = validate({**tiny_spec, "variants": [{"name": "a", "threads": 2}, {"name": "b", "threads": 1}]})
    assert threads_at_once(spec, {"threads": [1, 2, 1]}) == 3  # the two largest of baseline, a, b
    assert threads_at_once(validate({**tiny_spec, "variants": []}), {"threads": [1]}) == 1
