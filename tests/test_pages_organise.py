"""AppTest of keeping order on the experiment page: rename, tag, annotate, delete (asks first)."""
from lab import store
from tests.test_pages import page, run_and_store


def _widget(widgets, label):
    return next(w for w in widgets if w.label == label)


def test_rename_tag_and_note_are_saved_and_shown_as_text(tiny_spec):
    exp_id = run_and_store(tiny_spec)
    at = page("pages/1_LLM_Lab.py", experiment=str(exp_id))
    _widget(at.text_input, "Name").set_value("renamed run")
    _widget(at.text_input, "Tags (comma-separated)").set_value("cpu, bf16 , cpu")
    _widget(at.text_area, "Note").set_value("[a link](http://x) <b>bold</b>")
    at = _widget(at.button, "Save").click().run()
    assert not at.exception and not at.error
    with store.session() as s:
        exp = s.get(store.Experiment, exp_id)
        assert (exp.name, exp.tags, exp.note) == ("renamed run", ["bf16", "cpu"], "[a link](http://x) <b>bold</b>")
    texts = [t.value for t in at.text]
    assert "Tags: bf16, cpu" in texts and "Note: [a link](http://x) <b>bold</b>" in texts
    assert any("renamed run" in h.value for h in at.subheader)


def test_a_bad_tag_is_refused_and_nothing_changes(tiny_spec):
    exp_id = run_and_store(tiny_spec)
    at = page("pages/1_LLM_Lab.py", experiment=str(exp_id))
    _widget(at.text_input, "Name").set_value("should not stick")
    _widget(at.text_input, "Tags (comma-separated)").set_value("x" * 41)
    at = _widget(at.button, "Save").click().run()
    assert any("Not saved" in e.value and "at most 40" in e.value for e in at.error)
    with store.session() as s:
        assert s.get(store.Experiment, exp_id).name == "tiny"


def test_delete_asks_first_and_removes_only_that_experiment(tiny_spec):
    keep, drop = run_and_store(tiny_spec), run_and_store(tiny_spec)
    at = page("pages/1_LLM_Lab.py", experiment=str(drop))
    assert _widget(at.button, "Delete experiment").disabled  # not before the box is ticked
    at = _widget(at.checkbox, f"Delete experiment {drop} with all its runs (cannot be undone)").check().run()
    at = _widget(at.button, "Delete experiment").click().run()
    assert not at.exception
    assert any(f"Deleted experiment {drop}" in s.value for s in at.success)
    with store.session() as s:
        assert s.get(store.Experiment, drop) is None
        assert len(s.get(store.Experiment, keep).runs) == 2
