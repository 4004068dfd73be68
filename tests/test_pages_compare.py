"""AppTest of the Compare page's selection in the URL, run-list filters and environment warning."""
import pytest

from lab import catalog, store
from lab.views import experiments
from tests.test_pages import page, run_and_store


def _run_ids(exp_id: int) -> list[int]:
    with store.session() as s:
        return sorted(r.id for r in s.get(store.Experiment, exp_id).runs)


@pytest.mark.both_databases
def test_the_selection_lives_in_the_url_and_a_link_opens_the_same_view(tiny_spec):
    first, second = run_and_store(tiny_spec), run_and_store(tiny_spec)
    picked = [_run_ids(first)[1], _run_ids(second)[0]]
    at = page("pages/3_Compare.py", runs=experiments.runs_param(picked))
    assert not at.exception
    assert sorted(at.multiselect[0].value) == picked  # not the newest experiment's runs, the link's
    assert at.table[0].value.shape[1] == 2
    assert experiments.runs_param(picked) in at.query_params["runs"]


@pytest.mark.both_databases
def test_an_unknown_run_in_the_link_is_named_not_fatal(tiny_spec):
    exp = run_and_store(tiny_spec)
    at = page("pages/3_Compare.py", runs=f"{_run_ids(exp)[0]},999,abc")
    assert not at.exception
    assert any("999, abc" in w.value for w in at.warning)
    assert at.multiselect[0].value == [_run_ids(exp)[0]]


@pytest.mark.both_databases
def test_filter_by_tag_offers_only_that_experiments_runs(tiny_spec):
    tagged, other = run_and_store(tiny_spec), run_and_store(tiny_spec)
    catalog.set_tags(tagged, ["long context"])
    at = page("pages/3_Compare.py")
    tag_box = next(b for b in at.selectbox if b.label == "Filter by tag")
    assert tag_box.options == ["any", "long context"]
    at = tag_box.set_value("long context").run()
    offered_text = " ".join(at.multiselect[0].options)
    assert len(at.multiselect[0].options) == 2 and f"#{tagged} " in offered_text and f"#{other} " not in offered_text
    assert sorted(at.multiselect[0].value) == _run_ids(tagged)  # the newest experiment the filter lets through


@pytest.mark.both_databases
def test_runs_from_different_environments_are_flagged(tiny_spec):
    first, second = run_and_store(tiny_spec), run_and_store(tiny_spec)
    with store.session() as s:
        for run in s.get(store.Experiment, second).runs:
            run.environment = {**run.environment, "threads": 64}
    same = page("pages/3_Compare.py", runs=experiments.runs_param(_run_ids(first)))
    assert not same.warning
    mixed = page("pages/3_Compare.py", runs=experiments.runs_param(_run_ids(first) + _run_ids(second)))
    assert any("differ in environment" in w.value and "threads" in w.value and "64" in w.value
               for w in mixed.warning)


@pytest.mark.both_databases
def test_an_imported_report_compares_beside_local_runs_and_is_marked(tiny_spec, tmp_path):
    from lab.report.export import write_report
    from lab.report.importer import import_report
    local = run_and_store(tiny_spec)
    write_report(tmp_path / "colleague.json", "json", [local])
    with store.session() as s:  # the local runs now differ from the exported ones in their CPU
        for run in s.get(store.Experiment, local).runs:
            run.environment = {**run.environment, "device_name": "Colleague's CPU"}
    imported = import_report(tmp_path / "colleague.json")
    at = page("pages/3_Compare.py", runs=experiments.runs_param(_run_ids(local) + _run_ids(imported)))
    assert not at.exception
    assert at.table[0].value.shape[1] == 4
    assert sum("[imported]" in label for label in at.multiselect[0].options) == 2  # both imported runs, marked
    assert any("device_name" in w.value for w in at.warning)
