import pytest

from lab.bench.validate import validate
from lab.errors import SpecError
from lab.spec import spec_hash


def test_defaults_and_baseline_first(tiny_model_dir):
    spec = validate({"model": str(tiny_model_dir),
                     "variants": [{"name": "bf16", "techniques": [{"name": "weight_dtype"}]}]})
    assert [v.name for v in spec.variants] == ["baseline", "bf16"]
    assert spec.variants[1].techniques == [{"name": "weight_dtype", "dtype": "bf16"}]
    assert spec.repeats == 3 and spec.workload == "chat" and spec.model_kind == "llm"


def test_explicit_baseline_is_moved_first(tiny_model_dir):
    spec = validate({"model": str(tiny_model_dir), "variants": [
        {"name": "half", "techniques": [{"name": "weight_dtype"}]}, {"name": "ref", "techniques": []}]})
    assert [v.name for v in spec.variants] == ["ref", "half"]


@pytest.mark.parametrize("raw, message", [
    ({"repeats": 0}, "field 'repeats': 0 is out of range; allowed: 1 to 100"),
    ({"workload": "poems"}, "field 'workload': 'poems' is not allowed; allowed: chat, perplexity, needle, grounded, context_qa"),
    ({"colour": "red"}, "unknown field.*colour.*allowed fields: name"),
    ({"max_new_tokens": "many"}, "field 'max_new_tokens': expected an int"),
    ({"prompts": 99}, "field 'prompts': 99 is more than the chat workload has; allowed: 1 to 14"),
    ({"variants": [{"name": "x", "techniques": [{"name": "weight_dtype", "dtype": "fp8"}]}]},
     r"variants\[0\] \(x\): technique 'weight_dtype', knob 'dtype'"),
    ({"variants": [{"name": "x", "engine": "vllm"}]}, "engine.*'vllm' is not allowed; allowed: lab, hf_generate"),
    ({"variants": [{"name": "a", "techniques": [{"name": "weight_dtype"}]},
                   {"name": "a", "techniques": [{"name": "weight_dtype", "dtype": "fp16"}]}]}, "used twice: a"),
])
def test_spec_errors_name_field_and_allowed_values(tiny_model_dir, raw, message):
    with pytest.raises(SpecError, match=message):
        validate({"model": str(tiny_model_dir), **raw})


def test_unknown_model_lists_builtins():
    with pytest.raises(SpecError, match="unknown model 'no-such-model'.*smollm2-135m-instruct"):
        validate({"model": "no-such-model"})


def test_hash_ignores_name_but_not_settings(tiny_model_dir):
    a = validate({"model": str(tiny_model_dir), "name": "a"})
    b = validate({"model": str(tiny_model_dir), "name": "b"})
    c = validate({"model": str(tiny_model_dir), "name": "a", "seed": 1})
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)


def test_shipped_specs_validate():
    from lab.bench.validate import load_toml_specs
    from lab.paths import ROOT
    for path in sorted((ROOT / "experiments").glob("*.toml")):
        for spec in load_toml_specs(path):
            assert spec.variants[0].techniques == []


def test_a_spec_file_with_runs_gives_one_experiment_per_run(tmp_path, tiny_model_dir):
    from lab.bench.validate import load_toml, load_toml_specs
    path = tmp_path / "two.toml"
    path.write_text(f'name = "two"\nmodel = "{tiny_model_dir}"\nprompts = 2\n'
                    '[[runs]]\nworkload = "chat"\n[[runs]]\nworkload = "grounded"\nprompts = 3\n'
                    '[[variants]]\ntechniques = [{ name = "prompt_lookup" }]\n')
    chat, grounded = load_toml_specs(path)
    assert (chat.workload, chat.prompts, chat.name) == ("chat", 2, "two (chat)")
    assert (grounded.workload, grounded.prompts) == ("grounded", 3)
    assert chat.variants == grounded.variants
    with pytest.raises(SpecError, match="holds 2 experiments"):
        load_toml(path)
    path.write_text(f'model = "{tiny_model_dir}"\n[[runs]]\nworkload = "poems"\n')
    with pytest.raises(SpecError, match="runs\\[0\\]: field 'workload'"):
        load_toml_specs(path)


def test_batch_size_is_refused_for_variants_that_run_batch_1(tiny_model_dir):
    base = {"model": str(tiny_model_dir), "batch_size": 4}
    assert validate({**base, "variants": [{"techniques": [{"name": "layer_skip", "draft_layers": 1}]}]})
    with pytest.raises(SpecError, match="batch_size.*cache technique 'streaming_llm'.*allowed: 1"):
        validate({**base, "variants": [{"techniques": [{"name": "streaming_llm"}]}]})
    with pytest.raises(SpecError, match="batch_size.*hf_generate"):
        validate({**base, "variants": [{"engine": "hf_generate"}]})
