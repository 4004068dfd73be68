"""Limits checked before a run: every malformed spec is a SpecError naming the field (never another exception),
names fit the store's columns, inputs fit the model's context, and the peak-memory estimate fits what is free.

No test here loads a model or torch: the built-in's sizes are declared in lab/llm/models.py, and local models are
config-only folders."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import store
from lab.bench.limits import check_memory, estimate_peak_memory
from lab.bench.validate import validate
from lab.errors import SpecError
from lab.llm.models import BUILTIN_MODELS, model_shape
from lab.spec import ENGINES, FIELDS, column_limit, expand_runs
from lab.techniques import all_techniques

SMOLLM2 = "smollm2-135m-instruct"


def _config_folder(tmp_path, context: int = 1024):
    """A local LLM folder with only a config.json: enough for validation, which never loads weights."""
    folder = tmp_path / "tiny-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 260, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": context, "tie_word_embeddings": True}))
    return folder


def _count(table) -> int:
    from sqlalchemy import func, select
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(table))


# --- context length -------------------------------------------------------------------------------------------
def test_needle_longer_than_the_builtin_context_is_refused_naming_field_and_limit():
    with pytest.raises(SpecError, match=r"field 'needle_lengths': 32768 .*8192-token context.*allowed: 64 to \d+"):
        validate({"workload": "needle", "needle_lengths": [1024, 32768]}, check_model_exists=False)
    validate({"workload": "needle", "needle_lengths": [2048]}, check_model_exists=False)  # a fitting one passes


def test_builtin_context_and_sizes_are_known_without_converting_it():
    shape = model_shape(SMOLLM2)
    assert shape == BUILTIN_MODELS[SMOLLM2].shape
    assert (shape.context, shape.layers, shape.heads, shape.kv_heads, shape.vocab) == (8192, 30, 9, 3, 49152)


def test_local_model_context_is_read_from_its_config(tmp_path):
    folder = str(_config_folder(tmp_path, context=1024))
    with pytest.raises(SpecError, match=r"field 'perplexity_window': 2048 .*1024-token context.*allowed: 16 to 1024"):
        validate({"model": folder, "workload": "perplexity", "perplexity_window": 2048}, check_model_exists=False)
    with pytest.raises(SpecError, match=r"field 'max_new_tokens': 4096 .*1024-token context.*allowed: 1 to \d+"):
        validate({"model": folder, "max_new_tokens": 4096}, check_model_exists=False)
    assert validate({"model": folder, "max_new_tokens": 64}, check_model_exists=False)


# --- names against the store's columns ---------------------------------------------------------------------
def test_name_limits_come_from_the_store_columns():
    assert column_limit("Experiment", "name") == store.Experiment.__table__.c.name.type.length == 200
    assert column_limit("Run", "variant") == store.Run.__table__.c.variant.type.length


@pytest.mark.parametrize("raw, message", [
    ({"name": "x" * 201}, r"field 'name': 201 characters .*allowed: at most 200"),
    ({"variants": [{"name": "v" * 201, "techniques": [{"name": "weight_dtype"}]}]},
     r"variants\[0\]\.name: 201 characters .*allowed: at most 200"),
])
def test_names_longer_than_the_store_keeps_are_refused(raw, message):
    with pytest.raises(SpecError, match=message):
        validate(raw, check_model_exists=False)


def test_long_name_is_refused_by_the_cli_before_anything_is_stored(tmp_path, capsys):
    from lab.cli import main
    path = tmp_path / "long.toml"
    path.write_text(f'name = "{"x" * 201}"\nmodel = "{_config_folder(tmp_path)}"\n')
    assert main(["run", str(path)]) == 2
    assert "field 'name'" in capsys.readouterr().err
    assert _count(store.Experiment) == 0 and _count(store.Job) == 0


# --- types --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, message", [
    ({"name": "x", "techniques": [{"name": ["h2o"]}]}, r"variants\[0\] \(x\): technique #1, field 'name': expected "
                                                       r"a string, one of: .*h2o"),
    ({"name": ["h2o"], "techniques": [{"name": "h2o"}]}, r"variants\[0\]\.name: expected a string"),
    ({"name": False}, r"variants\[0\]\.name: expected a string, got False"),
    ({"engine": ["lab"]}, r"variants\[0\]\.engine: \['lab'\] is not allowed; allowed: lab, hf_generate"),
    ({"techniques": [{"name": "knorm", "compress_every": float("inf")}]}, r"knob 'compress_every': expected an int"),
    ({"techniques": [{"name": "h2o", "compression_ratio": float("nan")}]}, r"knob 'compression_ratio': expected a "
                                                                          r"float from 0.0 to 0.95, got nan"),
    ({"techniques": [{"name": "h2o", "window": [1.5]}]}, r"knob 'window': expected an int"),
    ({"techniques": {"name": "h2o"}}, r"variants\[0\]\.techniques: expected a list of tables"),
])
def test_wrong_types_in_variants_are_spec_errors_naming_them(variant, message):
    with pytest.raises(SpecError, match=message):
        validate({"variants": [variant]}, check_model_exists=False)


@pytest.mark.parametrize("raw, message", [
    ({"temperature": float("nan")}, r"field 'temperature': expected a float from 0.0 to 5.0, got nan"),
    ({1: 2}, r"unknown field\(s\) 1; allowed fields: name"),
    (["name"], r"the spec: expected a table of fields"),
    ({"model": "x" * 5000}, r"field 'model': 'x+\.\.\. cannot be read"),
    ({"model": "a\nb"}, r"field 'model': 'a\\nb' holds control characters"),
])
def test_wrong_top_level_values_are_spec_errors_naming_the_field(raw, message):
    with pytest.raises(SpecError, match=message):
        validate(raw, check_model_exists=False)


def test_cli_prints_one_line_naming_the_field_without_traceback(tmp_path, capsys):
    from lab.cli import main
    path = tmp_path / "bad.toml"
    path.write_text(f'model = "{_config_folder(tmp_path)}"\n'
                    '[[variants]]\nname = "x"\ntechniques = [{ name = ["h2o"] }]\n')
    assert main(["run", str(path)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "variants[0] (x): technique #1, field 'name': expected a string" in err
    assert _count(store.Experiment) == 0


# --- memory ---------------------------------------------------------------------------------------------------
def test_estimate_counts_the_weight_returning_attention_scores():
    shape, n = BUILTIN_MODELS[SMOLLM2].shape, 32768
    sdpa = estimate_peak_memory(shape, n)
    eager = estimate_peak_memory(shape, n, attention_weights=True)
    assert sdpa.weights == shape.parameters * 4 and sdpa.attention_scores == 0
    assert sdpa.kv_cache == 2 * 30 * 3 * 64 * n * 4
    assert eager.attention_scores == 2 * 9 * n * n * 4  # scores and softmax of one layer: ~77 GB at 32k
    assert eager.total - sdpa.total == eager.attention_scores


def test_memory_estimate_refuses_a_spec_when_only_1_gb_is_free():
    spec = validate({"workload": "needle", "needle_lengths": [4096],
                     "variants": [{"name": "h2o", "techniques": [{"name": "h2o"}]}]}, check_model_exists=False)
    shape = BUILTIN_MODELS[SMOLLM2].shape
    with pytest.raises(SpecError, match=r"field 'needle_lengths': 4096 needs about \d+\.\d GB at its peak "
                                        r"\(.*attention scores.*h2o.*\), more than the 1\.0 GB free; reduce "
                                        r"needle_lengths; allowed: up to about \d+"):
        check_memory(spec, shape, available=10**9)
    check_memory(spec, shape, available=64 * 10**9)  # the same spec fits 64 GB


def test_validate_uses_the_free_memory_it_reads(monkeypatch):
    import lab.bench.limits
    monkeypatch.setattr(lab.bench.limits, "free_memory", lambda device: (10**9, "free"))
    with pytest.raises(SpecError, match="field 'needle_lengths'.*more than the 1.0 GB free"):
        validate({"workload": "needle", "needle_lengths": [4096],
                  "variants": [{"techniques": [{"name": "tova"}]}]}, check_model_exists=False)
    monkeypatch.setattr(lab.bench.limits, "free_memory", lambda device: (10**8, "free"))
    with pytest.raises(SpecError, match="field 'model': 'smollm2-135m-instruct' needs about 0.5 GB for its weights"):
        validate({}, check_model_exists=False)


def test_free_memory_reads_the_gpu_on_cuda_and_memavailable_on_cpu(monkeypatch):
    import sys
    import types

    from lab.bench.limits import free_memory
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True,
                                                            mem_get_info=lambda: (3 * 10**9, 8 * 10**9)))
    monkeypatch.setitem(sys.modules, "torch", fake)  # no GPU needed to check which number is read
    assert free_memory("cuda") == (3 * 10**9, "free on the GPU")
    free, where = free_memory("cpu")
    assert free is None or (free > 0 and "MemAvailable" in where)


def test_validating_a_cpu_spec_does_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, lab.bench.validate as e; e.validate({'device': 'cpu', 'workload': 'needle', "
            "'variants': [{'techniques': [{'name': 'h2o'}]}]}, check_model_exists=False); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# --- property: any malformed spec is a SpecError naming the field ------------------------------------------
# Each value is well typed nine times in ten and junk otherwise, so the examples get past the type checks
# into composition, the context and the memory estimate, not only the first refusal.
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.dates(), st.times(), st.datetimes())  # TOML has dates and times too
JSON_LIKE = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) |
                         st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
NAMES = list(FIELDS)
WORDS = ["chat", "needle", "perplexity", "context_qa", "grounded", "digits", "image_prompts", "auto", "cpu", "ddim",
         "pipeline", "digits-dit", SMOLLM2, ""]


def _mostly(good):
    """`good` nine times in ten, junk otherwise."""
    return st.integers(0, 9).flatmap(lambda i: JSON_LIKE if i == 0 else good)


def _field_value(name: str):
    field = FIELDS[name]
    ftype, lo, hi = field.type, field.min, field.max
    if ftype is list:  # around the allowed range, so out-of-range and too-long-for-the-model values come up
        good = st.lists(st.integers(lo - 1, hi + 1), max_size=4)
    elif ftype is int:
        good = st.integers(lo - 1, hi + 1)
    elif ftype is float:
        good = st.floats(lo - 1, hi + 1) | st.integers(int(lo) - 1, int(hi) + 1)
    elif field.choices:  # mostly allowed choices, so the checks behind the choice are reached
        good = st.integers(0, 3).flatmap(lambda i: st.sampled_from(WORDS) if i == 0 else st.sampled_from(field.choices))
    else:
        good = st.sampled_from(WORDS) | st.text(max_size=8) | st.text(min_size=199, max_size=202)
    return _mostly(good)


def _knob_value(knob):
    if knob.choices is not None:
        good = st.sampled_from(knob.choices)
    elif knob.type is bool:
        good = st.booleans()
    elif knob.type in (int, float):
        lo = knob.min if knob.min is not None else -10
        hi = knob.max if knob.max is not None else 10_000
        good = st.integers(int(lo) - 1, int(hi) + 1) | (st.floats(lo, hi) if knob.type is float else st.nothing())
    else:
        good = st.sampled_from(["truncated", "smollm2-distilled", SMOLLM2, ""]) | st.text(max_size=8)
    return _mostly(good)


def _entry(name: str):
    """A table for technique `name` with some of its own knobs (and sometimes an unknown one)."""
    knobs = {k.name: _knob_value(k) for k in all_techniques()[name].knobs()}
    return st.fixed_dictionaries({"name": _mostly(st.just(name))}, optional={**knobs, "nope": JSON_LIKE})


TECHNIQUE_ENTRY = _mostly(st.sampled_from(sorted(all_techniques())).flatmap(_entry))
VARIANT = _mostly(st.fixed_dictionaries({}, optional={
    "name": _mostly(st.text(max_size=8) | st.text(min_size=199, max_size=202)),
    "engine": _mostly(st.sampled_from(ENGINES)),
    "techniques": _mostly(st.lists(TECHNIQUE_ENTRY, max_size=3))}))
VARIANTS = _mostly(st.lists(VARIANT, max_size=3))
FIELD_VALUES = {name: _field_value(name) for name in NAMES}
RUNS = _mostly(st.lists(st.fixed_dictionaries({}, optional={k: FIELD_VALUES[k] for k in ("workload", "name",
                                                                                    "needle_lengths")}),
                        min_size=1, max_size=2))


def _some_fields(keys: list[str]):
    return st.fixed_dictionaries({k: FIELD_VALUES[k] for k in keys}, optional={"variants": VARIANTS, "runs": RUNS})


# a few fields at a time, so one bad value does not always hide the checks after it
SPEC_FILE = _mostly(st.lists(st.sampled_from(NAMES), max_size=6, unique=True).flatmap(_some_fields))
FIELD_NAME = re.compile(r"field '\w+'|variants\[\d+\]|unknown field|the spec")
# database=None: no .hypothesis folder of saved examples in the checkout
PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _validate_or_spec_error(raw) -> str | None:
    """validate() either passes or raises SpecError (any other exception fails the test); the message."""
    try:
        validate(raw, check_model_exists=False)
    except SpecError as e:
        return str(e)
    return None


@PROPERTY
@given(field_value=st.sampled_from(NAMES).flatmap(lambda f: st.tuples(st.just(f), FIELD_VALUES[f])))
def test_any_value_of_a_field_validates_or_names_that_field(field_value):
    field, value = field_value
    message = _validate_or_spec_error({field: value})
    assert message is None or f"field '{field}'" in message, message


@PROPERTY
@given(variants=VARIANTS)
def test_any_shape_of_variants_and_techniques_validates_or_names_the_variant(variants):
    message = _validate_or_spec_error({"variants": variants})
    assert message is None or "variants" in message, message


@PROPERTY
@given(raw=SPEC_FILE)
def test_any_spec_file_content_validates_or_names_a_field(raw):
    try:
        raws = expand_runs(raw)  # what a file with [[runs]] becomes
    except SpecError as e:
        assert FIELD_NAME.search(str(e)), str(e)
        return
    for one in raws:
        message = _validate_or_spec_error(one)
        assert message is None or FIELD_NAME.search(message), message


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory):
    return str(_config_folder(tmp_path_factory.mktemp("limits"), context=1024))


LIMIT_FIELDS = ("needle_lengths", "max_new_tokens", "perplexity_window", "perplexity_tokens", "batch_size", "prompts")
LLM_SPEC = st.fixed_dictionaries(
    {"workload": st.sampled_from(["chat", "grounded", "context_qa", "needle", "perplexity"])},
    optional={**{k: FIELD_VALUES[k] for k in LIMIT_FIELDS},
              "variants": st.lists(st.fixed_dictionaries({"techniques": st.lists(st.sampled_from(
                  ["h2o", "tova", "snapkv", "knorm", "weight_dtype", "prompt_lookup"]).map(lambda n: {"name": n}),
                  max_size=1)}), max_size=2)})


@PROPERTY
@given(raw=LLM_SPEC, builtin=st.booleans())
def test_llm_limits_validate_or_name_the_field_to_change(config_folder, raw, builtin):
    """The context and memory checks on the built-in (8192 tokens) and a config-only model (1024 tokens)."""
    message = _validate_or_spec_error({**raw, "model": SMOLLM2 if builtin else config_folder})
    assert message is None or FIELD_NAME.search(message), message
    if message and "context of model" in message:
        assert re.match(r"field '(needle_lengths|max_new_tokens|perplexity_window)'", message), message
