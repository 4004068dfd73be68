"""A class pressing the same button: an identical spec joins the run in flight, or shows the finished result
measured here at once; a fresh measurement is a click away. A finished result stands for a new run only when it
would measure the same thing: this host, the same clean commit (never "+dirty" or "unknown"), the same library
versions and model weights, and a machine that was not busy."""
import os
import platform

import pytest
from sqlalchemy import func, select

from lab import store
from lab.bench import measure, provenance
from lab.bench.validate import validate
from lab.jobs import reuse
from tests.test_pages import page, run_and_store

CLEAN = "c0ffee" * 6 + "c0ff"  # a commit with no changes beside it


@pytest.fixture
def commit(monkeypatch):
    """The commit the runs record and the reuse check sees, set by the test (the checkout's own may be dirty)."""
    def use(name: str) -> None:
        monkeypatch.setattr(measure, "git_commit", lambda: name)
        monkeypatch.setattr(reuse, "git_commit", lambda: name)
    use(CLEAN)
    return use


def _set_environment(exp_id: int, **changes) -> None:
    with store.session() as s:
        for run in s.get(store.Experiment, exp_id).runs:
            run.environment = {**run.environment, **changes}


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
def test_a_finished_result_measured_here_is_shown_at_once_and_a_fresh_run_is_one_click_away(tiny_spec, commit):
    exp_id = run_and_store(tiny_spec)
    here = reuse.environment_here(validate(tiny_spec))
    with store.session() as s:  # the tiny run was measured by this process: what a run now would record
        for run in s.get(store.Experiment, exp_id).runs:
            assert {k: run.environment.get(k) for k in here} == here
    assert here["lab_commit"] == CLEAN and here[provenance.WEIGHTS_KEY]
    assert reuse.matching_experiment(validate({**tiny_spec, "name": "same spec, other name"}))["id"] == exp_id
    assert reuse.matching_experiment(validate({**tiny_spec, "max_new_tokens": 9})) is None  # another spec


def test_a_result_from_another_machine_or_commit_is_not_reused(tiny_spec, commit):
    exp_id = run_and_store(tiny_spec)
    _set_environment(exp_id, host="someone-elses-laptop")
    assert reuse.matching_experiment(validate(tiny_spec)) is None
    _set_environment(exp_id, host=platform.node(), lab_commit="0" * 40)
    assert reuse.matching_experiment(validate(tiny_spec)) is None


@pytest.mark.parametrize("checkout", [CLEAN + "+dirty", "unknown"])
def test_a_run_of_a_dirty_tree_or_a_checkout_without_git_is_never_reused(tiny_spec, commit, checkout):
    """"+dirty" and "unknown" name no code: two runs recording the same one may have run different code."""
    commit(checkout)
    exp_id = run_and_store(tiny_spec)
    with store.session() as s:
        assert {r.environment["lab_commit"] for r in s.get(store.Experiment, exp_id).runs} == {checkout}
    assert reuse.matching_experiment(validate(tiny_spec)) is None
    assert "named by no commit" in reuse.refusal([], reuse.environment_here(validate(tiny_spec)))


@pytest.mark.parametrize("key, other", [("torch", "2.0.0"), ("transformers", "4.0.0"), ("diffusers", "0.1.0"),
                                        ("llama_cpp", "0.1.0"), (provenance.WEIGHTS_KEY, "0123456789ab")])
def test_a_result_from_other_library_versions_or_other_weights_is_not_reused(tiny_spec, commit, key, other):
    exp_id = run_and_store(tiny_spec)
    assert reuse.matching_experiment(validate(tiny_spec))["id"] == exp_id
    _set_environment(exp_id, **{key: other})
    assert reuse.matching_experiment(validate(tiny_spec)) is None


def test_a_result_measured_on_a_busy_machine_is_not_reused(tiny_spec, commit):
    exp_id = run_and_store(tiny_spec)
    _set_environment(exp_id, cores=2, other_cpu_share=0.6)  # what lab/jobs/process.py merges from its LoadMonitor
    assert reuse.matching_experiment(validate(tiny_spec)) is None
    here = reuse.environment_here(validate(tiny_spec))
    with store.session() as s:
        assert "busy machine" in reuse.refusal(s.get(store.Experiment, exp_id).runs, here)


def test_the_weights_fingerprint_changes_with_the_model_files_and_not_without(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    first = provenance.weights_fingerprint(str(folder))
    assert first and provenance.weights_fingerprint(str(folder)) == first  # cheap and stable: stat only
    stat = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # retrained in place
    assert provenance.weights_fingerprint(str(folder)) != first
    assert provenance.weights_fingerprint(str(tmp_path / "nowhere")) is None


def test_the_environment_records_the_versions_the_reuse_check_reads_without_torch():
    env = measure.environment("cpu", "float32", "h")
    assert {k: env[k] for k in provenance.LIBRARIES} == provenance.library_versions()


def test_the_page_shows_the_earlier_result_and_measure_again_queues_a_fresh_one(tiny_spec, commit, monkeypatch):
    from lab.spec import spec_hash
    from lab.views import forms
    exp_id = run_and_store(tiny_spec)
    quickstart = validate(forms.presets()["quickstart"])
    with store.session() as s:  # let the tiny run stand for a finished quick start measured here
        s.get(store.Experiment, exp_id).spec_hash = spec_hash(quickstart)
        tiny_weights = s.get(store.Experiment, exp_id).runs[0].environment[provenance.WEIGHTS_KEY]
    monkeypatch.setattr(reuse, "weights_fingerprint", lambda _model: tiny_weights)  # and for its model's weights
    at = _press("Run quickstart")
    assert not at.exception and _experiments() == 1
    assert _shown(at) == exp_id
    assert any("Shown at once" in i.value and f"experiment {exp_id}" in i.value for i in at.info)
    at = _press("Measure again (a fresh run)", at)
    assert not at.exception and _experiments() == 2 and _shown(at) != exp_id
