"""A class pressing the same button: an identical spec joins the run in flight, or shows the finished result
measured here with this commit at once; a fresh measurement is a click away; another machine's result is not
taken for this one's."""
import platform

import pytest
from sqlalchemy import func, select

from lab import store
from lab.bench.validate import validate
from lab.jobs import reuse
from lab.paths import git_commit
from tests.test_pages import page, run_and_store


def _experiments() -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(store.Experiment))


def _shown(at) -> int:
    value = at.query_params["experiment"]
    return int(value[0] if isinstance(value, list) else value)


def _press(button: str, at=None):
    at = at or page("pages/1_LLM_Lab.py")
    return next(b for b in at.button if b.label == button).click().run()


@pytest.mark.both_databases
def test_a_second_quickstart_joins_the_queued_one_instead_of_queueing_again():
    first = _press("Run quickstart")
    second = _press("Run quickstart")  # another student, another session
    assert not second.exception and _experiments() == 1
    assert _shown(second) == _shown(first)
    assert any("already queued" in i.value for i in second.info)


@pytest.mark.both_databases
def test_a_finished_result_measured_here_is_shown_at_once_and_a_fresh_run_is_one_click_away(tiny_spec):
    exp_id = run_and_store(tiny_spec)
    with store.session() as s:  # the tiny run was measured by this process: this host, this commit
        assert all(r.environment["host"] == platform.node() and r.environment["lab_commit"] == git_commit()
                   for r in s.get(store.Experiment, exp_id).runs)
    assert reuse.matching_experiment(validate({**tiny_spec, "name": "same spec, other name"}))["id"] == exp_id
    assert reuse.matching_experiment(validate({**tiny_spec, "max_new_tokens": 9})) is None  # another spec


def test_a_result_from_another_machine_or_commit_is_not_reused(tiny_spec):
    exp_id = run_and_store(tiny_spec)
    with store.session() as s:
        for run in s.get(store.Experiment, exp_id).runs:
            run.environment = {**run.environment, "host": "someone-elses-laptop"}
    assert reuse.matching_experiment(validate(tiny_spec)) is None
    with store.session() as s:
        for run in s.get(store.Experiment, exp_id).runs:
            run.environment = {**run.environment, "host": platform.node(), "lab_commit": "0" * 40}
    assert reuse.matching_experiment(validate(tiny_spec)) is None


def test_the_page_shows_the_earlier_result_and_measure_again_queues_a_fresh_one(tiny_spec):
    from lab.spec import spec_hash
    from lab.views import forms
    exp_id = run_and_store(tiny_spec)
    quickstart = validate(forms.presets()["quickstart"])
    with store.session() as s:  # let the tiny run stand for a finished quick start measured here
        s.get(store.Experiment, exp_id).spec_hash = spec_hash(quickstart)
    at = _press("Run quickstart")
    assert not at.exception and _experiments() == 1
    assert _shown(at) == exp_id
    assert any("Shown at once" in i.value and f"experiment {exp_id}" in i.value for i in at.info)
    at = _press("Measure again (a fresh run)", at)
    assert not at.exception and _experiments() == 2 and _shown(at) != exp_id
