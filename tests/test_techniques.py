import pytest

from lab.errors import SpecError
from lab.techniques import all_techniques, build, get
from lab.techniques.slots import SLOTS


def test_registry_discovers_weight_dtype_with_its_declaration():
    techniques = all_techniques()
    assert "weight_dtype" in techniques
    cls = techniques["weight_dtype"]
    assert cls.slot in SLOTS and cls.family == "quantization" and cls.paper
    (dtype,) = cls.knobs()
    assert dtype.name == "dtype" and dtype.default == "bf16" and dtype.choices == ("bf16", "fp16") and dtype.help


@pytest.mark.parametrize("name", sorted(all_techniques()))
def test_every_technique_declares_knobs_completely(name):
    cls = get(name)
    assert cls.title and cls.summary and cls.paper and cls.family
    for k in cls.knobs():
        assert k.help, f"{name}.{k.name} has no help"
        k.validate(name, k.default)  # the default must pass its own validation
    assert cls.from_params({}).params() == {k.name: k.default for k in cls.knobs()}


def test_unknown_technique_lists_registered_ones():
    with pytest.raises(SpecError, match="unknown technique 'nope'.*weight_dtype"):
        build([{"name": "nope"}])


def test_bad_choice_names_knob_and_allowed_values():
    with pytest.raises(SpecError, match="knob 'dtype'.*'int3'.*allowed: bf16, fp16"):
        build([{"name": "weight_dtype", "dtype": "int3"}])


def test_unknown_knob_is_refused_by_name():
    with pytest.raises(SpecError, match="unknown knob.*bits.*its knobs are: dtype"):
        build([{"name": "weight_dtype", "bits": 4}])


def test_two_techniques_in_one_slot_are_refused():
    with pytest.raises(SpecError, match="both use the weights slot"):
        build([{"name": "weight_dtype", "dtype": "bf16"}, {"name": "weight_dtype", "dtype": "fp16"}])


def test_numeric_knob_range_is_enforced():
    from lab.knobs import KnobInfo
    k = KnobInfo(name="ratio", type=float, default=0.5, help="h", min=0.0, max=0.9)
    assert k.validate("t", 0.25) == 0.25
    assert k.validate("t", 0) == 0.0
    with pytest.raises(SpecError, match=r"out of range; allowed: 0.0 to 0.9"):
        k.validate("t", 0.95)
    with pytest.raises(SpecError, match="expected a float"):
        k.validate("t", "half")
    ki = KnobInfo(name="window", type=int, default=4, help="h", min=1, max=64)
    with pytest.raises(SpecError, match="expected an? int"):
        ki.validate("t", 2.5)
