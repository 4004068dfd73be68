"""The gallery: recorded from the workshop's newest runs into one JSON report, loaded once into a store as
read-only experiments marked as recorded, and offered on the home page."""
import pytest

from lab import catalog, store
from lab.errors import SpecError
from lab.report import gallery
from lab.views import workshop
from tests.test_pages import page, run_and_store


@pytest.fixture
def recorded(tiny_spec, tmp_path, monkeypatch):
    """A gallery file recorded from tiny-model runs named like the workshop presets (test data only)."""
    ids = [run_and_store({**tiny_spec, "name": step.name}) for step in workshop.steps()[:2]]
    target = gallery.record(ids, tmp_path / "recorded.json")
    monkeypatch.setattr(gallery, "GALLERY_FILE", target)
    for fn in (gallery.summary, gallery.loaded_ids, gallery.load):  # their defaults were bound at import
        monkeypatch.setattr(fn, "__defaults__", (target,))
    return ids


def test_record_without_ids_takes_the_newest_finished_run_of_each_workshop_preset(tiny_spec):
    names = [s.name for s in workshop.steps()]
    with pytest.raises(LookupError, match="no finished run of the workshop preset"):
        gallery.workshop_experiment_ids()
    ids = [run_and_store({**tiny_spec, "name": n}) for n in names]
    newer = run_and_store({**tiny_spec, "name": names[0]})
    assert gallery.workshop_experiment_ids() == [newer, *ids[1:]]


def test_loading_twice_imports_once_and_the_results_are_read_only(recorded):
    first = gallery.load()
    assert gallery.load() == first and len(first) == 2
    with store.session() as s:
        assert {s.get(store.Experiment, i).origin for i in first} == {store.ORIGIN_GALLERY}
    with pytest.raises(SpecError, match="read-only"):
        catalog.rename_experiment(first[0], "mine now")
    with pytest.raises(SpecError, match="read-only"):
        catalog.delete_experiment(first[0])
    assert catalog.rename_experiment(recorded[0], "local ones stay editable") == "local ones stay editable"


def test_the_home_page_opens_the_gallery_and_the_result_says_it_was_recorded(recorded):
    at = page("app.py")
    assert not at.exception
    assert any("Browse recorded results" in h.value for h in at.subheader)
    at = next(b for b in at.button if b.label == "Open the recorded results").click().run()
    assert not at.exception and len(gallery.loaded_ids()) == 2
    exp = page("pages/1_LLM_Lab.py", experiment=str(gallery.loaded_ids()[0]))
    assert any("Recorded result" in i.value and "read-only" in i.value for i in exp.info)
    assert not [e for e in exp.expander if "Rename" in e.label]
    compare = page("pages/3_Compare.py", runs=",".join(str(r) for r in range(1, 9)))
    assert any("[recorded]" in o for o in compare.multiselect[0].options)
