"""The workshop presets: one per family, in order, each with questions, each a valid spec offered by the forms;
their questions show under the preset and under its result. (Their run times live in the closing note, measured
with `python -m lab run`, never timed here.)"""
import pytest

from lab.bench.validate import load_toml
from lab.techniques.registry import get
from lab.views import forms, workshop
from tests.test_pages import page

FAMILIES = {"kv_cache", "speculative", "quantization", "sparse_attention", "diffusion_cache"}


def test_questions_are_read_from_the_header_comment_with_continuations():
    text = "# intro\n# Q: first?\n#    goes on\n# Q: second?\nname = 'x'\n# Q: not a question: after the header\n"
    assert workshop.questions_in(text) == ["first? goes on", "second?"]


def test_one_preset_per_family_in_order_each_with_two_or_three_questions():
    steps = workshop.steps()
    families = []
    for step in steps:
        spec = load_toml(step.path)
        families.append({get(t["name"]).family for v in spec.variants for t in v.techniques} - {"sampler"})
        assert 2 <= len(step.questions) <= 3 and all(q.endswith("?") or "?" in q for q in step.questions)
        assert spec.threads == 2 and spec.repeats <= 2  # sized for a class of weak laptops
    assert [len(f) for f in families] == [1] * len(steps) and set().union(*families) == FAMILIES
    assert [s.preset for s in steps] == sorted(s.preset for s in steps)


@pytest.mark.parametrize("kind", ["llm", "diffusion"])
def test_the_forms_offer_the_workshop_right_after_the_quick_start(kind):
    labels = list(forms.presets(kind))
    workshop_labels = [label for label in labels if label.startswith("workshop/")]
    assert workshop_labels and labels[1:1 + len(workshop_labels)] == workshop_labels


def test_a_workshop_preset_shows_its_questions_in_the_form():
    at = page("pages/1_LLM_Lab.py")
    at.selectbox(key="llm_preset").select("workshop/1_kv_cache").run()
    assert not at.exception
    assert any("Questions to discuss" in i.value and "StreamingLLM" in i.value for i in at.info)


def test_a_workshop_result_shows_its_questions(tiny_spec):
    from tests.test_pages import run_and_store
    exp_id = run_and_store({**tiny_spec, "name": "workshop 3: quantization"})  # tiny test model, real page
    at = page("pages/1_LLM_Lab.py", experiment=str(exp_id))
    assert not at.exception
    assert any("Questions to discuss (workshop)" in i.value and "Weights [MB]" in i.value for i in at.info)
