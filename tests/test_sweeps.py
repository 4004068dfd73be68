"""Sweeps in a spec: a knob given a list, and a [sweep] table, expand into variants that are validated whole
before anything runs, stored expanded, and offered by the page's variant editor.

No test here loads a model: validation reads the built-in's declared sizes (check_model_exists=False), and the
page test only submits (no worker runs under tests)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from lab import jobs, store
from lab.bench.validate import load_toml, load_toml_specs, stored_spec, validate
from lab.errors import SpecError
from lab.knobs import KnobInfo
from lab.spec import MAX_VARIANTS, spec_hash
from lab.techniques import build, get
from lab.views import forms
from tests.conftest import ROOT


def _validate(**raw):
    return validate(raw, check_model_exists=False)


def _names(spec) -> list[str]:
    return [v.name for v in spec.variants]


def _knob(technique: str, name: str) -> KnobInfo:
    return next(k for k in get(technique).knobs() if k.name == name)


def _toml(tmp_path, text: str):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


RATIO_SWEEP = {"name": "snapkv ratio sweep", "techniques": [{"name": "snapkv", "compression_ratio": [0.25, 0.5, 0.75]}]}


# --- a knob given a list inside a variant -------------------------------------------------------------------
def test_a_listed_knob_runs_the_variant_once_per_value_named_by_the_value():
    spec = _validate(variants=[RATIO_SWEEP])
    assert _names(spec) == ["baseline", "snapkv ratio sweep (compression_ratio=0.25)",
                            "snapkv ratio sweep (compression_ratio=0.5)", "snapkv ratio sweep (compression_ratio=0.75)"]
    ratios = [v.techniques[0]["compression_ratio"] for v in spec.variants[1:]]
    assert ratios == [0.25, 0.5, 0.75]
    # the other knobs keep their defaults in every expanded variant
    assert {v.techniques[0]["window_size"] for v in spec.variants[1:]} == {_knob("snapkv", "window_size").default}


def test_several_listed_knobs_run_every_combination_in_declaration_order():
    spec = _validate(variants=[{"name": "grid", "techniques": [
        {"name": "weight_dtype", "dtype": ["bf16", "fp16"]},
        {"name": "snapkv", "window_size": [32, 64], "compression_ratio": [0.25, 0.5]}]}])
    assert len(spec.variants) == 1 + 2 * 2 * 2
    assert _names(spec)[1:4] == ["grid (dtype=bf16, window_size=32, compression_ratio=0.25)",
                                 "grid (dtype=bf16, window_size=32, compression_ratio=0.5)",
                                 "grid (dtype=bf16, window_size=64, compression_ratio=0.25)"]
    assert _names(spec)[-1] == "grid (dtype=fp16, window_size=64, compression_ratio=0.5)"
    last = {t["name"]: t for t in spec.variants[-1].techniques}
    assert (last["weight_dtype"]["dtype"], last["snapkv"]["window_size"], last["snapkv"]["compression_ratio"]) == \
        ("fp16", 64, 0.5)


def test_the_same_knob_listed_in_two_techniques_is_named_with_its_technique():
    spec = _validate(variants=[{"name": "two", "techniques": [
        {"name": "dense_sparse", "bits": [3, 4]}, {"name": "quantized_kv", "bits": [8, 4]}]}])
    assert _names(spec)[1] == "two (dense_sparse.bits=3, quantized_kv.bits=8)"
    assert len(spec.variants) == 5


def test_an_unnamed_variant_is_named_by_its_techniques_values_included():
    spec = _validate(variants=[{"techniques": [{"name": "tova", "compression_ratio": [0.25, 0.5]}]}])
    assert len(spec.variants) == 3
    assert "compression_ratio=0.25" in _names(spec)[1] and "compression_ratio=0.5" in _names(spec)[2]


def test_a_variant_after_a_sweep_keeps_its_own_index_in_errors():
    with pytest.raises(SpecError, match=r"^variants\[1\] \(bad\): technique 'weight_dtype', knob 'dtype'"):
        _validate(variants=[RATIO_SWEEP, {"name": "bad", "techniques": [{"name": "weight_dtype", "dtype": "fp8"}]}])


# --- refused before anything runs --------------------------------------------------------------------------
@pytest.mark.parametrize("techniques, message", [
    ([{"name": "snapkv", "compression_ratio": [0.25, 1.5, 0.5]}],
     r"variants\[0\] \(x\): technique 'snapkv', knob 'compression_ratio': 1\.5 is out of range; "
     r"allowed: 0\.0 to 0\.95"),
    ([{"name": "weight_dtype", "dtype": ["bf16", "fp8"]}],
     r"variants\[0\] \(x\): technique 'weight_dtype', knob 'dtype': 'fp8' is not allowed; allowed: bf16, fp16"),
    ([{"name": "snapkv", "window_size": [32, 0.5]}],
     r"knob 'window_size': expected an int from 1 to 1024, got 0\.5"),
    ([{"name": "snapkv", "compression_ratio": []}],
     r"variants\[0\] \(x\): technique 'snapkv', knob 'compression_ratio': an empty list sweeps nothing"),
    ([{"name": "draft_model", "adaptive": [True, False]}],
     r"knob 'adaptive': a list of values sweeps a number or choice knob; this one takes true or false"),
    ([{"name": "draft_model", "draft": ["a", "b"]}],
     r"knob 'draft': a list of values sweeps a number or choice knob; this one takes a string"),
    ([{"name": "snapkv", "compression_ratio": [0.5, 0.25, 0.5]}],
     r"knob 'compression_ratio': 0\.5 is listed twice"),
    ([{"name": "snapkv_typo", "compression_ratio": [0.5, 0.25]}],
     r"variants\[0\] \(x\): unknown technique 'snapkv_typo'"),
])
def test_a_bad_listed_value_is_refused_naming_variant_knob_and_value(techniques, message):
    with pytest.raises(SpecError, match=message):
        _validate(variants=[{"name": "x", "techniques": techniques}])


def test_more_than_64_variants_are_refused_with_the_count():
    ratios = [round(0.01 * i, 2) for i in range(13)]
    windows = [8 * (i + 1) for i in range(5)]
    with pytest.raises(SpecError, match=r"expand to 66 variants \(variants\[1\]: 13 x 5 = 65\); allowed: at most 64"):
        _validate(variants=[{"name": "one", "techniques": [{"name": "tova"}]},
                            {"name": "grid", "techniques": [{"name": "snapkv", "compression_ratio": ratios,
                                                             "window_size": windows}]}])
    assert len(_validate(variants=[{"name": "grid", "techniques": [
        {"name": "snapkv", "compression_ratio": ratios[:8], "window_size": [8 * (i + 1) for i in range(8)]}]}]
    ).variants) == 1 + MAX_VARIANTS == 65  # exactly 64 pass (the baseline validation adds is not counted)


def test_a_very_long_list_is_refused_by_its_length_before_its_values_are_checked():
    with pytest.raises(SpecError, match=r"knob 'window_size': 100000 values would make 100000 variants; allowed"):
        _validate(variants=[{"name": "x", "techniques": [{"name": "snapkv", "window_size": list(range(100_000))}]}])


def test_names_that_collide_after_expansion_are_refused():
    with pytest.raises(SpecError, match=r"used twice: r \(compression_ratio=0\.5\)"):
        _validate(variants=[{"name": "r (compression_ratio=0.5)", "techniques": [{"name": "tova"}]},
                            {"name": "r", "techniques": [{"name": "snapkv", "compression_ratio": [0.25, 0.5]}]}])


def test_a_listed_knob_never_reaches_a_technique_unexpanded():
    with pytest.raises(SpecError, match=r"knob 'compression_ratio': expected a float"):
        build([{"name": "snapkv", "compression_ratio": [0.25, 0.5]}])
    spec = _validate(variants=[RATIO_SWEEP])
    assert all(not isinstance(value, list) for v in spec.variants for t in v.techniques for value in t.values())


# --- the sweep table ------------------------------------------------------------------------------------------
def test_a_sweep_table_appends_a_variant_per_combination_and_keeps_the_baseline(tmp_path):
    spec = load_toml(_toml(tmp_path, '''
name = "kv sweep"
[[variants]]
name = "plain"
techniques = []
[[variants]]
name = "tova"
techniques = [{ name = "tova" }]
[sweep]
technique = "snapkv"
compression_ratio = [0.25, 0.5, 0.75]
window_size = [32, 64]
kernel_size = 7
'''))
    assert _names(spec)[:2] == ["plain", "tova"]
    assert spec.variants[0].is_baseline and len(spec.variants) == 2 + 3 * 2
    assert _names(spec)[2:4] == ["snapkv (compression_ratio=0.25, window_size=32)",
                                 "snapkv (compression_ratio=0.25, window_size=64)"]
    swept = [v.techniques[0] for v in spec.variants[2:]]
    assert {t["name"] for t in swept} == {"snapkv"} and {t["kernel_size"] for t in swept} == {7}
    assert [(t["compression_ratio"], t["window_size"]) for t in swept][-1] == (0.75, 64)


def test_an_inline_sweep_with_a_name_and_a_list_of_sweeps():
    spec = _validate(sweep={"technique": "snapkv", "name": "kv", "compression_ratio": [0.25, 0.5]})
    assert _names(spec) == ["baseline", "kv (compression_ratio=0.25)", "kv (compression_ratio=0.5)"]
    spec = _validate(sweep=[{"technique": "snapkv", "compression_ratio": [0.25, 0.5]},
                            {"technique": "tova", "compression_ratio": [0.5]}])
    assert _names(spec)[1:] == ["snapkv (compression_ratio=0.25)", "snapkv (compression_ratio=0.5)",
                                "tova (compression_ratio=0.5)"]


def test_a_sweep_inside_runs_applies_to_its_run_only(tmp_path):
    specs = load_toml_specs(_toml(tmp_path, '''
name = "kv"
[[runs]]
workload = "chat"
[[runs]]
workload = "grounded"
[runs.sweep]
technique = "tova"
compression_ratio = [0.25, 0.5]
'''))
    assert _names(specs[0]) == ["baseline"]
    assert _names(specs[1]) == ["baseline", "tova (compression_ratio=0.25)", "tova (compression_ratio=0.5)"]


@pytest.mark.parametrize("sweep, message", [
    ({"compression_ratio": [0.25]}, r"sweep\.technique: expected the name of a technique, got None"),
    ({"technique": "snapkv", "compression_ratio": 0.5}, r"sweep \(snapkv\): no knob of 'snapkv' is given a list"),
    ({"technique": "snapkv", "compression_ratio": [0.25, 2.0]},
     r"sweep \(snapkv\): technique 'snapkv', knob 'compression_ratio': 2\.0 is out of range; allowed: 0\.0 to 0\.95"),
    ({"technique": "nope", "x": [1]}, r"sweep \(nope\): unknown technique 'nope'"),
    ({"technique": "snapkv", "name": 3, "compression_ratio": [0.25]}, r"sweep\.name: expected a non-empty string"),
    ({"technique": "snapkv", "colour": [1, 2], "compression_ratio": [0.25]},
     r"sweep \(snapkv \(compression_ratio=0\.25\)\): technique 'snapkv': unknown knob\(s\) colour"),
    ("snapkv", r"field 'sweep': expected a table"),
    ([], r"field 'sweep': expected a table"),
])
def test_a_bad_sweep_table_is_refused_naming_what_is_wrong(sweep, message):
    with pytest.raises(SpecError, match=message):
        _validate(sweep=sweep)


# --- the store keeps the expanded variants -------------------------------------------------------------------
def test_a_stored_sweep_reruns_exactly_the_expanded_variants():
    spec = _validate(variants=[RATIO_SWEEP], sweep={"technique": "tova", "compression_ratio": [0.3, 0.6]})
    exp_id, _job = jobs.submit(spec)
    with store.session() as s:
        stored = s.get(store.Experiment, exp_id).spec
    assert "sweep" not in stored
    assert [v["name"] for v in stored["variants"]] == _names(spec) and len(stored["variants"]) == 6
    again = stored_spec(stored)
    assert again.variants == spec.variants and again.to_dict() == spec.to_dict()
    # the same experiment written out variant by variant is the same experiment (same hash)
    written_out = _validate(variants=[{"name": v.name, "techniques": v.techniques} for v in spec.variants[1:]])
    assert spec_hash(written_out) == spec_hash(spec)


# --- the page form ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("0.25, 0.5, 0.75", [0.25, 0.5, 0.75]),
    ("0.25;0.5  0.75", [0.25, 0.5, 0.75]),
    (" 0.5 ", 0.5),  # one value: no sweep
    ("0, 1e-1", [0.0, 0.1]),
])
def test_form_parses_several_values_for_a_float_knob(text, expected):
    assert forms.parse_sweep_values(text, _knob("snapkv", "compression_ratio")) == expected


def test_form_parses_whole_numbers_for_an_int_knob():
    window = _knob("snapkv", "window_size")
    assert forms.parse_sweep_values("32, 64, 128", window) == [32, 64, 128]
    assert all(type(v) is int for v in forms.parse_sweep_values("32, 64.0", window))


@pytest.mark.parametrize("text, message", [
    ("0.25, abc", r"knob 'compression_ratio': 'abc' is not a number; .*each a float from 0\.0 to 0\.95"),
    ("0.25, 1.5", r"knob 'compression_ratio': 1\.5 is out of range; allowed: 0\.0 to 0\.95"),
    ("", r"knob 'compression_ratio': enter one value, or several separated by commas"),
    (" , ", r"enter one value"),
    ("0.25, 0.25", r"0\.25 is listed twice"),
    ("nan", r"expected a float from 0\.0 to 0\.95, got nan"),
    (", ".join(["0.1"] * 65), r"65 values would make 65 variants; allowed: at most 64"),
])
def test_form_refuses_bad_sweep_text_naming_the_value(text, message):
    with pytest.raises(SpecError, match=message):
        forms.parse_sweep_values(text, _knob("snapkv", "compression_ratio"))


def test_form_submits_bad_text_as_it_is_so_validation_refuses_it_too():
    value, error = forms.sweep_field("0.25, x", _knob("snapkv", "compression_ratio"))
    assert value == "0.25, x" and "'x' is not a number" in error
    with pytest.raises(SpecError, match=r"knob 'compression_ratio': expected a float"):
        _validate(variants=[{"name": "x", "techniques": [{"name": "snapkv", "compression_ratio": value}]}])
    assert forms.sweep_field("0.25, 0.5", _knob("snapkv", "compression_ratio")) == ([0.25, 0.5], None)


def test_form_helpers_round_trip_a_presets_list():
    techniques = forms.techniques_for("llm")
    assert forms.has_sweep(RATIO_SWEEP["techniques"], techniques)
    assert not forms.has_sweep([{"name": "snapkv", "compression_ratio": 0.5}], techniques)
    assert forms.sweep_text([0.25, 0.5]) == "0.25, 0.5" and forms.sweep_text(0.5) == "0.5"
    assert forms.single_value([0.25, 0.5]) == 0.25 and forms.single_value(0.5) == 0.5
    assert forms.sweep_choices(["bf16", "fp8"], ["bf16", "fp16"]) == ["bf16"]
    assert forms.chosen_values(["bf16"]) == "bf16" and forms.chosen_values(["bf16", "fp16"]) == ["bf16", "fp16"]
    assert forms.sweepable(_knob("snapkv", "compression_ratio")) and forms.sweepable(_knob("weight_dtype", "dtype"))
    assert not forms.sweepable(_knob("draft_model", "adaptive"))


def test_the_form_values_expand_as_the_file_form_does():
    ratio = forms.parse_sweep_values("0.25, 0.5, 0.75", _knob("snapkv", "compression_ratio"))
    raw = forms.spec_from_form({}, {}, [{"name": "baseline", "engine": "lab", "techniques": []},
                                        {"name": "snapkv ratio sweep", "engine": "lab",
                                         "techniques": [{"name": "snapkv", "compression_ratio": ratio}]}])
    assert validate(raw, check_model_exists=False).to_dict() == _validate(variants=[RATIO_SWEEP]).to_dict()


def test_llm_page_sweeps_a_variants_knob_and_stores_every_value():
    at = AppTest.from_file(str(ROOT / "pages/1_LLM_Lab.py"), default_timeout=60).run()
    key = forms.form_key("llm", "quickstart") + "v0_"
    at.multiselect(key=f"{key}tech").set_value(["snapkv"]).run()
    at.checkbox(key=f"{key}sweep").check().run()
    at.text_input(key=f"{key}snapkv_compression_ratio_values").set_value("0.25, 9").run()
    assert any("9.0 is out of range" in e.value for e in at.error)  # shown under the widget while typing
    at.text_input(key=f"{key}snapkv_compression_ratio_values").set_value("0.25, 0.5").run()
    assert not at.exception and not at.error
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with store.session() as s:
        (exp,) = s.query(store.Experiment).all()
    assert [v["name"] for v in exp.spec["variants"]] == ["baseline", "bf16 (compression_ratio=0.25)",
                                                         "bf16 (compression_ratio=0.5)"]
