"""Engine 'llama_cpp': llama.cpp on the built-in model's own GGUF as a reference row. Its token ids are the lab
tokenizer's, greedy is the argmax of its own logits, sampling follows the seed, the perplexity score is the sum
over full logits, and each call starts from an empty KV cache; validation refuses a model without a GGUF and a
machine without llama-cpp-python, the form offers it only where it is installed, and a small experiment runs it
end to end beside the lab's baseline."""
from __future__ import annotations

import importlib
import importlib.util
import math
import re

import numpy as np
import pytest

from lab.bench.validate import validate
from lab.errors import SpecError
from lab.llm import llama_cpp as lc
from lab.ops.sampling import GenerationSettings

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    from lab.bench.loader import load
    return load(MODEL, device="cpu", kind="llm")


@pytest.fixture(scope="module")
def engine(smollm2):
    importlib.import_module("llama_cpp")  # make test installs it: missing is a failure, not a skip
    return lc.LlamaCppEngine(MODEL, smollm2.tokenizer, threads=2)


def reference_llama(engine, logits_all: bool):
    """llama-cpp-python's own high-level Llama on the same GGUF, fed through its public eval(): the reference the
    engine's own batches are checked against."""
    import llama_cpp
    return llama_cpp.Llama(model_path=str(engine.path), n_ctx=256, n_batch=256, logits_all=logits_all, verbose=False,
                           use_mmap=False, n_threads=2, n_threads_batch=2)


@pytest.fixture(scope="module")
def reference(engine):
    """With logits for every position (in .scores), for the perplexity score."""
    return reference_llama(engine, logits_all=True)


def llama_cpp_installed(monkeypatch, installed: bool) -> None:
    """Make find_spec say llama_cpp is (or is not) installed, whatever this machine has."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "llama_cpp" else real(name, *a))


def prompt_ids(tokenizer, text: str = QUESTION) -> list[int]:
    from lab.llm.workloads import chat_input_ids
    return chat_input_ids(tokenizer, text)


def reference_logits(reference, ids: list[int]) -> np.ndarray:
    """Logits at every position of `ids`, from a fresh teacher-forced pass of the reference Llama."""
    reference.reset()
    reference.eval(ids)
    return np.array(reference.scores[:len(ids)], dtype=np.float64)


@pytest.mark.real_model
def test_llama_cpp_tokenizes_as_the_lab_tokenizer_does(engine, smollm2):
    tok = smollm2.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    for text in (QUESTION, "  Tabs\tand  spaces, émigré 123456 naïve\n\nend.", chat):
        ids = tok(text, add_special_tokens=False).input_ids
        assert engine.llama.tokenize(text.encode(), add_bos=False, special=True) == ids, text
    assert engine.eos_ids == {tok.eos_token_id} == {2}  # <|im_end|> on both sides


@pytest.mark.real_model
def test_greedy_takes_the_argmax_of_llama_cpps_own_logits_at_every_step(engine, smollm2):
    import llama_cpp
    ids = prompt_ids(smollm2.tokenizer)
    gen = engine.generate(ids, GenerationSettings(max_new_tokens=12))
    assert gen.prompt_len == len(ids) and len(gen.token_ids) == 12 and gen.stopped_by == "length"
    # the same steps through llama-cpp-python's eval (a prefill, then one token at a time: llama.cpp's kernels
    # for a batch and for one token round differently, so a single teacher-forced pass would not match exactly)
    ref = reference_llama(engine, logits_all=False)
    ref.eval(ids)
    for i, token in enumerate(gen.token_ids):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ref.ctx, -1), shape=(ref.n_vocab(),))
        assert token == int(logits.argmax()), i
        ref.eval([token])


@pytest.mark.real_model
def test_each_call_starts_from_an_empty_cache(engine, smollm2):
    settings = GenerationSettings(max_new_tokens=8)
    a, b = prompt_ids(smollm2.tokenizer), prompt_ids(smollm2.tokenizer, "Name three primary colours.")
    first = engine.generate(a, settings).token_ids
    engine.generate(b, settings)
    assert engine.generate(a, settings).token_ids == first  # nothing of the call on b is left over
    # the context is a prompt + question split as the needle workload sends it: the same tokens as one prompt
    assert engine.generate(a[:10], settings, question_ids=a[10:]).token_ids == first


@pytest.mark.real_model
def test_sampling_follows_the_seed_and_a_tiny_nucleus_is_greedy(engine, smollm2):
    ids = prompt_ids(smollm2.tokenizer)
    hot = GenerationSettings(max_new_tokens=16, temperature=1.5, seed=1)
    one = engine.generate(ids, hot).token_ids
    assert engine.generate(ids, hot).token_ids == one
    assert engine.generate(ids, GenerationSettings(16, temperature=1.5, seed=2)).token_ids != one
    greedy = engine.generate(ids, GenerationSettings(max_new_tokens=16)).token_ids
    assert one != greedy
    # top_p keeps the smallest set of tokens reaching that mass: at 1e-6 only the most likely one
    assert engine.generate(ids, GenerationSettings(16, temperature=1.5, top_p=1e-6, seed=3)).token_ids == greedy


@pytest.mark.real_model
def test_eos_stops_the_generation(engine, smollm2, monkeypatch):
    ids = prompt_ids(smollm2.tokenizer)
    first = engine.generate(ids, GenerationSettings(max_new_tokens=4)).token_ids
    monkeypatch.setattr(engine, "eos_ids", {first[1]})
    gen = engine.generate(ids, GenerationSettings(max_new_tokens=4))
    assert gen.token_ids == first[:2] and gen.stopped_by == "eos"


@pytest.mark.real_model
def test_times_increase_and_kv_bytes_grow_one_token_at_a_time(engine, smollm2):
    ids = prompt_ids(smollm2.tokenizer)
    gen = engine.generate(ids, GenerationSettings(max_new_tokens=10))
    assert gen.token_times[0] > 0 and all(b > a for a, b in zip(gen.token_times, gen.token_times[1:]))
    cfg = smollm2.model.config  # f16 K and V of every layer, from the HF side's sizes
    per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    assert per_token == 23040
    seen = list(range(len(ids), len(ids) + len(gen.token_ids)))  # after the prefill, then after each decode
    assert gen.kv_trace == [(n, n * per_token) for n in seen]
    assert gen.kv_bytes == seen[-1] * per_token and gen.tokens_seen == seen[-1]


@pytest.mark.real_model
def test_continuation_nll_is_the_sum_over_full_logits(engine, reference, smollm2):
    from lab.llm.engine import Engine
    from lab.llm.workloads import perplexity_windows
    ids = perplexity_windows(smollm2.tokenizer, 96, 96)[0]
    prefix, cont = ids[:40], ids[40:]
    nll, n = engine.continuation_nll(prefix, cont)
    assert n == len(cont) and math.isfinite(nll) and nll > 0
    logits = reference_logits(reference, prefix + cont[:-1])
    expected = 0.0
    for i, token in enumerate(cont):
        row = logits[len(prefix) - 1 + i]  # the last prefix token predicts cont[0]
        expected += math.log(np.exp(row - row.max()).sum()) + row.max() - row[token]
    assert nll == pytest.approx(expected, rel=1e-3)
    # the same Q4_1 weights in fp32 (the lab's loop): a close perplexity, and a shift by one position is not
    lab_nll, _ = Engine(smollm2.model, smollm2.tokenizer).continuation_nll(prefix, cont)
    assert math.exp(nll / n) == pytest.approx(math.exp(lab_nll / n), rel=0.05)
    assert engine.continuation_nll(prefix, cont) == (nll, n)  # a fresh cache each call


@pytest.mark.real_model
def test_the_engine_reports_its_gguf_type_and_tensor_bytes(engine):
    assert engine.dtype_name == "Q4_1"
    file_bytes = engine.path.stat().st_size
    # the tensor data: the file less its header (metadata and the 49,152-token vocabulary)
    assert 0.95 * file_bytes < engine.weight_bytes() < file_bytes
    assert engine.weights_to_page_in() is None and engine.techniques == [] and engine.calibration is None


def test_gguf_path_finds_the_builtin_file_and_one_gguf_in_a_folder(tmp_path):
    builtin = lc.gguf_path(MODEL)
    assert builtin.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and builtin.is_file()
    (tmp_path / "model.Q8_0.gguf").write_bytes(b"GGUF")
    assert lc.gguf_path(str(tmp_path)) == tmp_path / "model.Q8_0.gguf"
    (tmp_path / "model.F16.gguf").write_bytes(b"GGUF")
    with pytest.raises(SpecError, match="has 2 .*model.F16.gguf, model.Q8_0.gguf"):
        lc.gguf_path(str(tmp_path))


@pytest.mark.parametrize("model, message", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "has none here .*allowed: a built-in model \\(smollm2-135m-instruct\\)"),
    ("no/such/folder", "has none here"),
])
def test_check_llama_cpp_refuses_a_model_without_a_gguf(model, message, monkeypatch):
    llama_cpp_installed(monkeypatch, True)
    with pytest.raises(SpecError, match=message):
        lc.check_llama_cpp(model)


def test_validation_refuses_llama_cpp_on_a_folder_without_a_gguf(tiny_spec, tiny_model_dir, monkeypatch):
    llama_cpp_installed(monkeypatch, True)
    message = re.escape(f"the folder '{tiny_model_dir}' has no *.gguf; allowed: a built-in model")
    with pytest.raises(SpecError, match=message):
        validate({**tiny_spec, "variants": [{"name": "llama.cpp", "engine": "llama_cpp"}]})


def test_validation_refuses_llama_cpp_when_llama_cpp_python_is_missing(monkeypatch):
    llama_cpp_installed(monkeypatch, False)
    with pytest.raises(SpecError, match=r"engine 'llama_cpp' needs llama-cpp-python: pip install "
                                        r"llama-cpp-python==0\.3\.36 \(make test installs it\)"):
        validate({"model": MODEL, "variants": [{"name": "llama.cpp", "engine": "llama_cpp"}]})


@pytest.mark.parametrize("installed", [True, False])
def test_the_form_offers_llama_cpp_only_where_it_is_installed(installed, monkeypatch):
    from ui import forms_view
    llama_cpp_installed(monkeypatch, installed)
    offered = forms_view.offered_engines(("lab", "hf_generate", "llama_cpp"))
    assert offered == (("lab", "hf_generate", "llama_cpp") if installed else ("lab", "hf_generate"))
    assert "llama_cpp: llama.cpp on the model's GGUF" in forms_view.ENGINE_HELP


@pytest.mark.parametrize("installed", [True, False])
def test_the_llm_form_shows_the_llama_cpp_engine_where_it_is_installed(installed, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT
    llama_cpp_installed(monkeypatch, installed)
    at = AppTest.from_file(str(ROOT / "pages" / "1_LLM_Lab.py"), default_timeout=60).run()
    assert not at.exception
    engines = next(s for s in at.selectbox if s.label == "Engine")
    assert list(engines.options) == (["lab", "hf_generate", "llama_cpp"] if installed else ["lab", "hf_generate"])


def reference_perplexity(reference, windows: list[list[int]]) -> float:
    """Perplexity of each window's second half given its first, from the reference Llama's own logits (float64
    log-softmax over the vocabulary), pooled over the windows as the runner pools them."""
    nll, n = 0.0, 0
    for ids in windows:
        half = len(ids) // 2
        z = reference_logits(reference, ids[:-1])
        for i in range(half - 1, len(ids) - 1):
            top = z[i].max()
            nll += float(top + np.log(np.exp(z[i] - top).sum()) - z[i][ids[i + 1]])
            n += 1
    return math.exp(nll / n)


@pytest.mark.real_model
def test_a_small_experiment_runs_llama_cpp_beside_the_baseline(reference, smollm2):
    importlib.import_module("llama_cpp")  # make test installs it: missing is a failure, not a skip
    from lab.bench import run
    from lab.llm.workloads import perplexity_windows
    spec = validate({"model": MODEL, "workload": "chat", "prompts": 1, "max_new_tokens": 8, "repeats": 1,
                     "perplexity_tokens": 64, "perplexity_window": 32,
                     "variants": [{"name": "llama.cpp", "engine": "llama_cpp"}]})
    base, llama = run.execute(spec)
    assert (base.engine, llama.engine) == ("lab", "llama_cpp")
    for name in ("tokens_per_s", "ttft_s", "tpot_ms", "kv_cache_mb", "agreement", "speedup"):
        assert len(llama.samples[name]) == 1 and math.isfinite(llama.samples[name][0]), name
    assert llama.samples["tokens_per_s"][0] > 0 and 0 <= llama.samples["agreement"][0] <= 100
    assert llama.samples["kv_cache_mb"][0] == pytest.approx(base.samples["kv_cache_mb"][0] / 2)  # f16 vs fp32
    assert llama.environment["dtype"] == "Q4_1" and llama.samples["weight_mb"][0] < base.samples["weight_mb"][0] / 4
    # the row's perplexity is llama.cpp's own: the same windows scored from its eval logits give the same number
    # (batched vs one-token kernels round differently, hence not to the last digit)
    windows = perplexity_windows(smollm2.tokenizer, spec.perplexity_tokens, spec.perplexity_window)
    assert llama.samples["perplexity"][0] == pytest.approx(reference_perplexity(reference, windows), rel=1e-3)
    for res in (base, llama):  # no decode is faster than streaming its bytes at the measured bandwidth
        assert res.samples["tpot_over_floor"] and min(res.samples["tpot_over_floor"]) >= 1, res.name
    assert "memory_probe" not in llama.environment
    parts = [llama.samples[m][0] for m in ("mem_runtime_mb", "mem_weights_mb", "mem_rise_mb")]
    assert llama.samples["peak_mem_mb"][0] == pytest.approx(sum(parts), abs=1)  # the peak is its three parts
    assert parts[1] > llama.samples["weight_mb"][0]  # the GGUF's tensors are in what the weights part holds
    assert parts[0] < base.samples["mem_runtime_mb"][0]  # its process holds no torch
    assert llama.outputs[0]["token_ids"] and llama.outputs[0]["extra"]["stopped_by"] in ("eos", "length")
