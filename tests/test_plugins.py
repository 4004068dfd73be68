"""A user adds techniques of their own without forking: one file in a folder named by LAB_TECHNIQUES_PATH, with a
KV press, a weights technique and an attention technique, each with a metric of its own. Nothing else is edited,
and the techniques reach `lab techniques`, the page form, validation, a run, the stored metrics and the compare
table. (Run on the tiny random model: test data, never shown to a user.)"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lab import store
from lab.bench import record, run
from lab.bench.validate import validate
from lab.errors import SpecError
from lab.paths import ROOT, child_env
from lab.techniques import registry
from lab.views import compare, forms

USER_TECHNIQUES = textwrap.dedent('''
    """Three techniques of a user's own, each in the class of its slot."""
    from __future__ import annotations

    import copy
    from dataclasses import dataclass

    from lab.techniques import AttentionTechnique, WeightsTechnique, knob, metric
    from lab.techniques.kv_cache.base import KVPress


    @dataclass
    class KeepNewest(KVPress):
        name = "user_keep_newest"
        title = "Keep the newest tokens (a user's press)"
        summary = "Scores each token by its position, so the newest are kept."
        paper = "none: a test of the plugin path"
        metrics = (metric("user_kv_bytes_per_token", "KV bytes per token seen", "B",
                          "KV bytes at the end over the tokens the cache has seen.", False),)

        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            import torch
            positions = torch.arange(keys.shape[-2], dtype=torch.float32)
            return positions.expand(keys.shape[:-1]).clone()

        def measure(self, output):
            return {"user_kv_bytes_per_token": output.kv_bytes / output.tokens_seen}


    @dataclass
    class ZeroSmallWeights(WeightsTechnique):
        name = "user_zero_small"
        family = "user"
        title = "Zero small weights (a user's weights technique)"
        summary = "Sets every weight of a linear layer below a threshold in magnitude to zero."
        paper = "none: a test of the plugin path"
        metrics = (metric("user_zeroed_pct", "Weights zeroed", "%", "Share of linear weights set to zero.", None),)

        threshold: float = knob(0.01, min=0.0, max=1.0, help="Magnitude below which a weight becomes zero.")

        def transform_weights(self, model):
            import torch
            model, zeroed, total = copy.deepcopy(model), 0, 0
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    small = module.weight.abs() < self.threshold
                    module.weight.data[small] = 0.0
                    zeroed, total = zeroed + int(small.sum()), total + small.numel()
            self.zeroed_pct = 100.0 * zeroed / total
            return model

        def measure(self, output):
            return {"user_zeroed_pct": self.zeroed_pct}


    @dataclass
    class CountingAttention(AttentionTechnique):
        name = "user_counting_sdpa"
        family = "user"
        title = "sdpa that counts its calls (a user's attention technique)"
        summary = "transformers' sdpa attention, counting the layer calls of each generation."
        paper = "none: a test of the plugin path"
        metrics = (metric("user_attention_calls", "Attention calls", "calls",
                          "Attention calls (one per layer and forward) in one generation.", None),)

        def attend(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            from transformers.integrations.sdpa_attention import sdpa_attention_forward
            self.calls = getattr(self, "calls", 0) + 1
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)

        def measure(self, output):
            calls, self.calls = getattr(self, "calls", 0), 0
            return {"user_attention_calls": calls}
''')
USER_NAMES = ("user_keep_newest", "user_zero_small", "user_counting_sdpa")


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    folder = tmp_path / "my_techniques"
    folder.mkdir()
    (folder / "mine.py").write_text(USER_TECHNIQUES)
    monkeypatch.setenv(registry.PLUGIN_PATH_VARIABLE, str(folder))
    yield folder
    registry.forget_plugins()  # the registry is per process: later tests see only the lab's techniques


def test_a_users_techniques_are_listed_by_the_cli(user_folder):
    out = subprocess.run([sys.executable, "-m", "lab", "techniques"], capture_output=True, text=True, cwd=ROOT,
                         env=child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    for name in USER_NAMES:
        assert name in out.stdout


def test_a_users_techniques_are_offered_by_the_llm_form(user_folder):
    from streamlit.testing.v1 import AppTest
    offered = forms.techniques_for("llm")
    assert set(USER_NAMES) <= set(offered) and "user_zero_small" in forms.techniques_for("llm")
    at = AppTest.from_file(str(ROOT / "pages" / "1_LLM_Lab.py"), default_timeout=60).run()
    assert not at.exception
    labels = {f"{offered[name].title} ({offered[name].slot})" for name in USER_NAMES}  # as the picker shows them
    assert labels <= set(at.multiselect[0].options)


def test_a_users_knobs_are_validated_by_name(user_folder, tiny_spec):
    with pytest.raises(SpecError, match=r"technique 'user_zero_small', knob 'threshold': 2.0 is out of range; "
                                        r"allowed: 0.0 to 1.0"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "user_zero_small", "threshold": 2.0}]}]})
    # a press that scores by attention weights needs its own attention path, which the user's would replace
    with pytest.raises(SpecError, match="'h2o' and 'user_counting_sdpa' cannot be combined"):
        validate({**tiny_spec, "variants": [{"techniques": [{"name": "h2o"}, {"name": "user_counting_sdpa"}]}]})


def test_a_users_techniques_run_fill_their_metrics_and_reach_the_store_and_compare(user_folder, tiny_spec,
                                                                                    tiny_model_dir):
    from transformers import AutoConfig
    layers = AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers
    spec = validate({**tiny_spec, "repeats": 1, "warmup": 0, "perplexity_tokens": 0, "prompts": 1, "variants": [
        {"name": "newest", "techniques": [{"name": "user_keep_newest", "compression_ratio": 0.5}]},
        {"name": "newest-all", "techniques": [{"name": "user_keep_newest", "compression_ratio": 0.0}]},
        {"name": "zero", "techniques": [{"name": "user_zero_small", "threshold": 0.05}]},
        {"name": "counted", "techniques": [{"name": "user_counting_sdpa"}]}]})
    results = {r.name: r for r in run.execute(spec)}

    newest, zero, counted = results["newest"].samples, results["zero"].samples, results["counted"].samples
    assert newest["kv_compression"][0] > 1.5  # half the prompt evicted: fewer KV bytes than the baseline's
    # the press's own metric moves with its knob: evicting half the prompt holds fewer bytes per token seen
    assert 0 < newest["user_kv_bytes_per_token"][0] < results["newest-all"].samples["user_kv_bytes_per_token"][0]
    assert 0 < zero["user_zeroed_pct"][0] < 100
    generated = len(results["counted"].outputs[0]["token_ids"])
    assert counted["user_attention_calls"] == [layers * generated]  # one call per layer and forward
    assert counted["agreement"] == [100.0]  # sdpa under another name: the same tokens as the baseline
    assert "user_attention_calls" not in results["baseline"].samples

    with store.session() as s:
        exp = store.Experiment(name="plugins", spec=spec.to_dict(), spec_hash="x", status="done")
        s.add(exp)
        s.flush()
        exp_id = exp.id
    record.save(exp_id, list(results.values()))
    with store.session() as s:
        runs = {r.variant: r for r in s.get(store.Experiment, exp_id).runs}
        stored = {m.name: m for m in runs["zero"].metrics}
        assert stored["user_zeroed_pct"].unit == "%" and stored["user_zeroed_pct"].value == zero["user_zeroed_pct"][0]
        run_ids = [r.id for r in runs.values()]
    table = compare.comparison_table(run_ids)
    for label in ("KV bytes per token seen [B]", "Weights zeroed [%]", "Attention calls [calls]"):
        assert label in table.index
    speed_axis, _quality_axis = compare.scatter_axes(compare.scatter_points(run_ids))
    assert "user_kv_bytes_per_token" in speed_axis  # measured, lower is better: the scatter offers it


def test_a_technique_from_an_installed_package_registers_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares `[project.entry-points."lab.techniques"] name = "module"` is imported by discover()."""
    import importlib.metadata

    (tmp_path / "installed_techniques.py").write_text(USER_TECHNIQUES.replace('name = "user_', 'name = "pkg_'))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("mine", "installed_techniques", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [entry] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        assert {"pkg_keep_newest", "pkg_zero_small", "pkg_counting_sdpa"} <= set(registry.all_techniques())
    finally:
        for name in ("pkg_keep_newest", "pkg_zero_small", "pkg_counting_sdpa"):
            registry.unregister(name)
        sys.modules.pop("installed_techniques", None)


def test_a_missing_folder_or_a_broken_file_is_reported_and_the_lab_keeps_working(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.PLUGIN_PATH_VARIABLE, str(tmp_path / "nowhere"))
    try:
        assert "h2o" in registry.all_techniques()
        assert any("nowhere, which is not a folder" in e for e in registry.plugin_errors())
        (tmp_path / "broken.py").write_text("raise RuntimeError('typo in my technique')\n")
        monkeypatch.setenv(registry.PLUGIN_PATH_VARIABLE, str(tmp_path))
        assert "h2o" in registry.all_techniques()
        assert any("broken.py" in e and "failed to load: RuntimeError: typo in my technique" in e
                   for e in registry.plugin_errors())
        with pytest.raises(SpecError, match="unknown technique 'mine'.*broken.py.*typo in my technique"):
            registry.get("mine")
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file(str(ROOT / "pages" / "1_LLM_Lab.py"), default_timeout=60).run()
        assert not at.exception and any("typo in my technique" in w.value for w in at.warning)
        (tmp_path / "broken.py").write_text(USER_TECHNIQUES)  # fixed: the next discovery loads it
        assert "user_zero_small" in registry.all_techniques()
        assert not any("broken.py" in e for e in registry.plugin_errors())
    finally:
        registry.forget_plugins()
