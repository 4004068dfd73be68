"""The decode loop on a tiny random Llama: equality with generate(), sampling, and the metrics it feeds."""
import pytest
import torch

from lab.llm.engine import Engine
from lab.ops.sampling import GenerationSettings, sample_next
from lab.techniques import build
from tests.conftest import build_byte_tokenizer, build_tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(), build_byte_tokenizer()


PROMPT = list(range(10, 30))


def test_greedy_equals_transformers_generate(tiny):
    model, tok = tiny
    engine = Engine(model, tok)
    settings = GenerationSettings(max_new_tokens=24)
    ours = engine.generate(PROMPT, settings)
    ref = engine.generate_hf(PROMPT, settings)
    raw = model.generate(torch.tensor([PROMPT]), max_new_tokens=24, do_sample=False, eos_token_id=257,
                         pad_token_id=257)[0, len(PROMPT):].tolist()
    assert ours.token_ids == ref.token_ids == raw
    assert len(ours.token_times) == len(ours.token_ids)
    assert all(b >= a for a, b in zip(ours.token_times, ours.token_times[1:]))  # timestamps are monotone


def test_sampling_is_seeded_and_nucleus_of_tiny_mass_is_greedy(tiny):
    model, tok = tiny
    engine = Engine(model, tok)
    a = engine.generate(PROMPT, GenerationSettings(16, temperature=1.5, seed=1)).token_ids
    b = engine.generate(PROMPT, GenerationSettings(16, temperature=1.5, seed=1)).token_ids
    c = engine.generate(PROMPT, GenerationSettings(16, temperature=1.5, seed=2)).token_ids
    greedy = engine.generate(PROMPT, GenerationSettings(16)).token_ids
    nucleus = engine.generate(PROMPT, GenerationSettings(16, temperature=1.0, top_p=1e-6, seed=3)).token_ids
    assert a == b
    assert a != c  # a random 260-way model at temperature 1.5 repeats 16 draws with negligible probability
    assert nucleus == greedy  # top_p below the top token's mass keeps only the argmax


def test_top_p_only_samples_inside_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, GenerationSettings(temperature=1.0, top_p=0.7), g)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are outside


def test_eos_stops_generation(tiny):
    model, tok = tiny
    engine = Engine(model, tok)
    first = engine.generate(PROMPT, GenerationSettings(1)).token_ids[0]
    engine.eos_ids = {first}
    gen = engine.generate(PROMPT, GenerationSettings(10))
    assert gen.token_ids == [first] and gen.stopped_by == "eos"


def test_kv_bytes_are_read_from_the_cache_tensors(tiny):
    model, tok = tiny
    gen = Engine(model, tok).generate(PROMPT, GenerationSettings(8))
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # the last sampled token is never fed back, so the cache holds prompt + new - 1 positions
    positions = len(PROMPT) + len(gen.token_ids) - 1
    expected = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * positions * 4
    assert gen.kv_bytes == expected


def test_bf16_halves_weight_and_kv_bytes_and_leaves_original_untouched(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = Engine(model, tok)
    half = Engine(model, tok, build([{"name": "weight_dtype", "dtype": "bf16"}]))
    assert half.model is not model and next(half.model.parameters()).dtype == torch.bfloat16
    assert half.weight_bytes() * 2 == base.weight_bytes()
    s = GenerationSettings(8)
    g_base, g_half = base.generate(PROMPT, s), half.generate(PROMPT, s)
    assert len(g_half.token_ids) == len(g_base.token_ids) == 8
    assert g_half.kv_bytes * 2 == g_base.kv_bytes
    assert next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_runs_on_cpu(tiny):
    model, tok = tiny
    gen = Engine(model, tok, build([{"name": "weight_dtype", "dtype": "fp16"}])).generate(PROMPT, GenerationSettings(4))
    assert len(gen.token_ids) == 4


def test_continuation_nll_without_a_technique_is_the_models_own_loss(tiny):
    model, tok = tiny
    ids = list(range(40, 72))
    nll, n = Engine(model, tok).continuation_nll(ids[:16], ids[16:])
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, 15:-1]
    expected = torch.nn.functional.cross_entropy(logits, x[0, 16:], reduction="sum")
    assert n == 16 and nll == pytest.approx(float(expected), rel=1e-5)


def test_diffusion_technique_slot_is_refused_for_llm(tiny):
    from dataclasses import dataclass

    from lab.techniques.slots import DenoiserTechnique

    @dataclass
    class FakeDenoiser(DenoiserTechnique):  # defined without a name: not registered, used only here
        pass

    model, tok = tiny
    with pytest.raises(ValueError, match="denoiser slot, which an LLM's decode loop does not have"):
        Engine(model, tok, [FakeDenoiser()])


def test_a_technique_for_a_kind_its_slot_ignores_is_refused_when_defined():
    from dataclasses import dataclass

    from lab.techniques.slots import CacheTechnique, DenoiserTechnique

    with pytest.raises(TypeError, match="applies to diffusion models, whose runs never use its cache slot"):
        @dataclass
        class DiffusionKV(CacheTechnique):
            name = "test_diffusion_kv"
            applies_to = ("diffusion",)
    with pytest.raises(TypeError, match="applies to llm models, whose runs never use its denoiser slot"):
        @dataclass
        class LLMDenoiser(DenoiserTechnique):
            name = "test_llm_denoiser"
            applies_to = ("llm",)
