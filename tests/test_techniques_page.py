"""The Techniques page: every registered technique explains itself (idea, paper claim, picture), the pictures draw,
the catalogue lists each technique once, and "measured here" finds this machine's own latest finished run (alone
before a stack, the stack named, noise and busy notes carried; gallery, imported and other hosts' runs labelled as
recorded elsewhere) from rows written here directly, no model runs; the page under AppTest."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from lab import store
from lab.techniques import all_techniques, registry
from lab.techniques.slots import WeightsTechnique
from lab.views import technique_pictures, techniques
from tests.conftest import ROOT

SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


@pytest.mark.parametrize("name", sorted(all_techniques()))
def test_every_technique_explains_itself(name):
    cls = all_techniques()[name]
    for field in ("idea", "paper_claim", "picture"):  # its own, not inherited from the technique it extends
        assert field in vars(cls) and vars(cls)[field].strip(), f"{name} declares no {field} of its own"
    assert len(SENTENCE_END.findall(cls.idea)) >= 2, f"{name}: the idea needs at least two sentences"
    assert cls.picture in technique_pictures.PICTURES, f"{name}: no builder draws a {cls.picture!r} picture"


def test_no_two_techniques_share_an_explanation():
    ideas = [cls.idea for cls in all_techniques().values()]
    claims = [cls.paper_claim for cls in all_techniques().values()]
    assert len(set(ideas)) == len(ideas) and len(set(claims)) == len(claims)


@pytest.mark.parametrize("kind", sorted(technique_pictures.PICTURES))
def test_every_picture_draws_the_same_chart_each_time_and_says_it_is_an_illustration(kind):
    spec = technique_pictures.picture(kind).to_dict()
    assert spec == technique_pictures.picture(kind).to_dict()  # deterministic: hand-made data, no randomness
    assert spec.get("layer") or spec.get("mark")
    assert technique_pictures.caption(kind).startswith("An illustration, not a measurement")


def _cells(kind: str) -> pd.DataFrame:
    spec = technique_pictures.picture(kind).to_dict()
    return pd.DataFrame(next(iter(spec["datasets"].values())))


def test_the_attention_mask_picture_keeps_sinks_and_window_and_marks_each_pair_with_a_glyph():
    cells = _cells("attention_mask").set_index(["y", "x"])  # y = query, x = key
    assert cells.loc[(15, 0), "category"] == "attended"  # a sink
    assert cells.loc[(15, 5), "category"] == "skipped (sparse)"
    assert cells.loc[(15, 12), "category"] == "attended"  # in the window of 4
    assert cells.loc[(3, 9), "category"] == "future (never attended)"
    assert dict(zip(cells["category"], cells["glyph"])) == {"attended": "●", "skipped (sparse)": "×",
                                                            "future (never attended)": ""}


def test_the_kv_eviction_picture_evicts_half_of_the_tokens():
    cells = _cells("kv_eviction")
    assert len(cells) == 24 and (cells["category"] == "evicted").sum() == 12
    assert set(cells.loc[cells["category"] == "evicted", "glyph"]) == {"×"}


def test_catalogue_lists_every_registered_technique_once_in_teaching_order():
    families = techniques.catalogue()
    listed = [e.name for f in families for e in f.techniques]
    assert sorted(listed) == sorted(all_techniques()) and len(listed) == len(set(listed))
    assert [f.name for f in families] == [f for f in techniques.FAMILIES if f in {f.name for f in families}]
    assert all(f.about for f in families)
    snapkv = next(e for f in families for e in f.techniques if e.name == "snapkv")
    assert snapkv.picture == "kv_eviction" and "3.6x" in snapkv.paper_claim
    window = next(k for k in snapkv.knobs if k["Knob"] == "window_size")
    assert window == {"Knob": "window_size", "Type": "int", "Default": "64", "Allowed": "1 to 1024",
                      "Unit": "tokens", "What it does": "Observation window at the context's end."}


def test_a_technique_of_a_new_family_is_listed_last_under_its_own_name():
    @dataclass
    class Novel(WeightsTechnique):
        name = "page_test_novel"
        family = "novel_family"
        title, summary, paper = "Novel", "A test technique.", "none"

    try:
        last = techniques.catalogue()[-1]
        assert (last.name, last.title, [e.name for e in last.techniques]) == ("novel_family", "Novel family",
                                                                                ["page_test_novel"])
    finally:
        registry.unregister("page_test_novel")


LLM_SPEC = {"name": "kv study", "model": "smollm2-135m-instruct", "workload": "chat"}
DIGITS_SPEC = {"name": "cache study", "model": "digits-dit", "workload": "digits"}


HERE = {"host": platform.node(), "device_name": "this CPU"}


def _add_experiment(spec: dict, variants: list[tuple[str, list[str], dict]], status: str = "done",
                    finished: datetime | None = datetime(2026, 1, 2), origin: str = store.ORIGIN_LOCAL,
                    environment: dict | None = None) -> int:
    """An experiment of `variants` (name, technique names, metric -> (median, p10, p90, n)); the first is the
    baseline. By default measured by this machine (origin local, this host)."""
    with store.session() as s:
        exp = store.Experiment(name=spec["name"], spec=spec, spec_hash="h", status=status, finished_at=finished,
                               origin=origin)
        for i, (variant, names, metrics) in enumerate(variants):
            run = store.Run(position=i, variant=variant, is_baseline=i == 0, environment=dict(environment or HERE),
                            params={"techniques": [{"name": n} for n in names], "engine": "lab"})
            run.metrics = [store.Metric(name=m, value=v, p10=lo, p90=hi, n=n) for m, (v, lo, hi, n) in metrics.items()]
            exp.runs.append(run)
        s.add(exp)
        s.flush()
        return exp.id


SNAPKV_RUN = ("snapkv 50%", ["snapkv"], {"speedup": (1.6, 1.4, 1.8, 6), "tpot_ms": (12.5, 11.0, 14.0, 6),
                                         "perplexity": (9.5, 9.5, 9.5, 1), "agreement": (80.0, 70.0, 90.0, 2)})
BASELINE = ("baseline", [], {"speedup": (1.0, 1.0, 1.0, 6)})


def test_measured_here_finds_the_latest_finished_run_with_its_speedup_and_first_quality_metric():
    _add_experiment(LLM_SPEC, [BASELINE, ("snapkv old", ["snapkv"], {"speedup": (1.1, 1.0, 1.2, 6)})],
                    finished=datetime(2025, 6, 1))
    latest = _add_experiment(LLM_SPEC, [BASELINE, SNAPKV_RUN])
    _add_experiment(LLM_SPEC, [BASELINE, SNAPKV_RUN], status="failed", finished=datetime(2026, 3, 1))
    measured = techniques.measured_here("snapkv")
    assert (measured.experiment_id, measured.variant, measured.page) == (latest, "snapkv 50%", "LLM Lab")
    assert measured.link == f"/LLM_Lab?experiment={latest}"
    # the summary table's order: agreement comes before perplexity, and a metric without spread shows its median
    assert measured.metrics == {"Speedup [x]": "1.60 (1.40–1.80)", "Agreement [%]": "80.0 (70.0–90.0)"}
    assert techniques.measured_here("h2o") is None  # never used by a stored run


def test_measured_here_links_a_diffusion_run_to_the_diffusion_lab():
    exp = _add_experiment(DIGITS_SPEC, [BASELINE, ("every 2", ["block_cache"], {"psnr_db": (30.0, 30.0, 30.0, 2)})])
    measured = techniques.measured_here("block_cache")
    assert measured.link == f"/Diffusion_Lab?experiment={exp}" and measured.metrics == {"PSNR [dB]": "30.0"}


ELSEWHERE = {"host": "workshop-box", "device_name": "AMD EPYC 7B13"}


def test_gallery_imported_and_other_hosts_runs_are_never_measured_here_but_labelled_as_recorded():
    gallery = _add_experiment({**LLM_SPEC, "name": "gallery kv"}, [BASELINE, SNAPKV_RUN], finished=datetime(2026, 5, 1),
                              origin=store.ORIGIN_GALLERY, environment=ELSEWHERE)
    _add_experiment({**LLM_SPEC, "name": "imported kv"}, [BASELINE, SNAPKV_RUN], finished=datetime(2026, 4, 1),
                    origin=store.ORIGIN_IMPORTED, environment=ELSEWHERE)
    _add_experiment({**LLM_SPEC, "name": "team kv"}, [BASELINE, SNAPKV_RUN], finished=datetime(2026, 3, 1),
                    environment=ELSEWHERE)  # local to a shared store, measured by another host
    assert techniques.measured_here("snapkv") is None
    recorded = techniques.measurements()["snapkv"]
    assert (recorded.here, recorded.experiment_id) == (False, gallery)
    assert recorded.where == "recorded by the lab on AMD EPYC 7B13 (the shipped gallery), not this machine"
    mine = _add_experiment(LLM_SPEC, [BASELINE, SNAPKV_RUN], finished=datetime(2025, 1, 1))  # older, but here
    assert techniques.measured_here("snapkv").experiment_id == mine
    at = page(technique="snapkv")
    assert not at.exception
    measured = [m.value for m in at.markdown if m.value.startswith("**Measured here.**")]
    assert len(measured) == 1 and f"(experiment {mine})" in measured[0] and "snapkv alone" in measured[0]
    assert not any(m.value.startswith("**Recorded") for m in at.markdown)


def test_a_recorded_result_is_shown_with_its_label_and_what_to_run_here():
    exp = _add_experiment({**LLM_SPEC, "name": "imported kv"}, [BASELINE, SNAPKV_RUN], origin=store.ORIGIN_IMPORTED,
                          environment=ELSEWHERE)
    with store.session() as s:
        s.get(store.Experiment, exp).imported_from = {"file": "colleague.json"}
    at = page(technique="snapkv")
    assert not at.exception
    texts = [m.value for m in at.markdown]
    assert not any(t.startswith("**Measured here.**") for t in texts)
    shown = next(t for t in texts if t.startswith("**Recorded, not measured here.**"))
    assert "imported from colleague.json, recorded on AMD EPYC 7B13, not this machine" in shown and "1.60" in shown
    assert any("Not measured here yet: run the preset 'kv_quick'" in i.value for i in at.info)


def test_a_stacks_speedup_names_the_stack_and_a_technique_alone_is_preferred():
    stack = ("bf16 + lookup", ["weight_dtype", "prompt_lookup"], {"speedup": (4.85, 4.5, 5.1, 6)})
    stacked = _add_experiment({**LLM_SPEC, "name": "stacked"}, [BASELINE, stack])
    measured = techniques.measured_here("prompt_lookup")
    assert (measured.experiment_id, measured.stack, measured.alone) == (stacked, ("weight_dtype", "prompt_lookup"),
                                                                         False)
    at = page(technique="prompt_lookup")
    shown = next(m.value for m in at.markdown if m.value.startswith("**Measured here.**"))
    assert "as part of weight\\_dtype + prompt\\_lookup (the numbers are the whole stack's)" in shown
    assert f"stacked (experiment {stacked})" in shown and "4.85" in shown
    alone = ("lookup", ["prompt_lookup"], {"speedup": (2.02, 1.9, 2.1, 6)})
    older = _add_experiment({**LLM_SPEC, "name": "alone"}, [BASELINE, alone, stack], finished=datetime(2025, 1, 1))
    measured = techniques.measured_here("prompt_lookup")
    assert (measured.experiment_id, measured.variant, measured.alone) == (older, "lookup", True)
    assert techniques.measured_here("weight_dtype").experiment_id == stacked  # only ever in a stack: the latest
    shown = [m.value for m in page(technique="prompt_lookup").markdown if m.value.startswith("**Measured here.**")]
    assert any(f"alone (experiment {older}), variant lookup]" in t and "prompt\\_lookup alone" in t for t in shown)


def test_measured_here_carries_the_noise_and_busy_notes_of_the_results_page():
    noisy = ("snapkv noisy", ["snapkv"], {"speedup": (1.05, 0.9, 1.2, 2)})
    _add_experiment(LLM_SPEC, [BASELINE, noisy], environment={**HERE, "cores": 2, "other_cpu_share": 0.6})
    measured = techniques.measured_here("snapkv")
    assert measured.metrics == {"Speedup [x]": "1.05 (0.900–1.20) · only 2 pairs, within noise"}
    assert "other processes used 60% of the CPU time" in measured.busy
    at = page(technique="snapkv")
    assert any("within noise" in m.value for m in at.markdown if m.value.startswith("**Measured here.**"))
    assert any(w.value.startswith("Measured on a busy machine: other processes used 60%") for w in at.warning)


def test_an_unmeasured_technique_is_told_which_preset_measures_it():
    hints = techniques.unmeasured_hints()
    assert set(hints) == set(all_techniques())
    assert hints["snapkv"] == "Not measured here yet: run the preset 'kv_quick' on the LLM Lab page."
    assert "'diffusion_quickstart' on the Diffusion Lab page" in hints["block_cache"]


def page(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "4_Techniques.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _default_tab(at: AppTest) -> int:
    """The tab a page opens on (AppTest shows it only on the tab container's proto)."""
    stack = [at._tree]
    while stack:
        node = stack.pop()
        proto = getattr(node, "proto", None)
        if proto is not None and proto.DESCRIPTOR.name == "Block" and proto.WhichOneof("type") == "tab_container":
            return proto.tab_container.default_tab_index
        stack.extend(getattr(node, "children", {}).values())
    raise AssertionError("the page has no tabs")


def test_page_lists_every_family_and_technique_with_its_picture():
    at = page()
    assert not at.exception and not at.warning
    assert [t.label for t in at.tabs] == [f.title for f in techniques.catalogue()]
    assert len(at.expander) == len(all_techniques()) and not any(e.proto.expanded for e in at.expander)
    captions = [c.value for c in at.caption]
    assert sum(c.startswith("An illustration, not a measurement") for c in captions) == len(all_techniques())
    assert any("run the preset 'kv_quick'" in i.value for i in at.info)


def test_a_link_to_one_technique_opens_its_family_and_expander_with_the_stored_run():
    exp = _add_experiment({**LLM_SPEC, "name": "kv $study$ [1]"}, [BASELINE, SNAPKV_RUN])
    at = page(technique="snapkv")
    assert not at.exception
    assert [e.label for e in at.expander if e.proto.expanded] == ["SnapKV (observation-window voting) · snapkv"]
    assert _default_tab(at) == [f.name for f in techniques.catalogue()].index("kv_cache")
    measured = [m.value for m in at.markdown if m.value.startswith("**Measured here.**")]
    assert len(measured) == 1 and f"](/LLM_Lab?experiment={exp})" in measured[0] and "1.60" in measured[0]
    assert "[kv \\$study\\$ \\[1\\] (experiment" in measured[0]  # a name is shown as typed, never as LaTeX or a link


def test_a_link_to_an_unknown_technique_says_so_and_lists_them_all():
    at = page(technique="nope")
    assert not at.exception and "No technique is named nope" in at.warning[0].value
    assert not any(e.proto.expanded for e in at.expander)


def test_page_opens_without_torch(isolated_db):
    """Every technique module is imported to build the page; none may load torch at import (pages open fast)."""
    code = ("import sys\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file('pages/4_Techniques.py', default_timeout=60).run()\n"
            "assert not at.exception, at.exception\n"
            "assert 'torch' not in sys.modules, 'the Techniques page imported torch'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "LAB_DATABASE_URL": f"sqlite:///{isolated_db}"})
