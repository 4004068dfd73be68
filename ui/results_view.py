"""Render one experiment's results: summary table with spread, metric definitions, outputs side by side."""
from __future__ import annotations

import collections

import pandas as pd
import streamlit as st

from lab.views import results, verdict
from lab.views.diffusion import is_diffusion
from ui.charts_view import show_experiment_charts
from ui.diffusion_view import show_diffusion_views
from ui.export_view import show_downloads
from ui.kv_cache_view import show_kv_views
from ui.organise_view import show_labels, show_organise
from ui.quantization_view import show_quantization_views
from ui.sparse_attention_view import show_sparse_attention_views
from ui.speculative_view import show_speculative_views
from ui.workshop_view import show_result_questions


def show_job_failure(job) -> None:
    first = (job.error or job.message or "unknown error").strip().splitlines()[0]
    st.error(f"The run {job.status}: {first}")
    if job.error and len(job.error.splitlines()) > 1:
        with st.expander("Details for a bug report"):
            st.code(job.error)


def show_experiment(exp) -> None:
    spec = exp.spec
    st.subheader(f"Experiment {exp.id}: {exp.name}")
    st.caption(_describe(spec))
    show_labels(exp)
    show_result_questions(exp.name)
    show_organise(exp)
    if not exp.runs:
        st.info("No results stored for this experiment.")
        return
    busy = results.busy_runs(exp)
    if busy:
        st.warning(f"Measured on a busy machine: {busy}. Timings and speedups may be wrong; run it again on a "
                   f"quiet machine.")
    _show_verdicts(exp)
    rows = results.summary_rows(exp)
    st.markdown("**Results** — median (p10–p90) and n of each cell; speedups are paired against the baseline, "
                "which ran interleaved in the same process, and say so when they cannot be told from noise.")
    st.table(pd.DataFrame(rows).set_index("Variant"))
    show_experiment_charts(exp)
    show_downloads(experiment_ids=[exp.id], key=f"report_{exp.id}")
    names = [m.name for m in exp.runs[0].metrics]
    with st.expander("What each metric means"):
        st.table(pd.DataFrame(results.definitions_for(results.SUMMARY_METRICS if not names else
                                                      [n for n in results.SUMMARY_METRICS if n in names])))
    with st.expander("Environment"):
        env = exp.runs[0].environment
        st.table(pd.DataFrame([{"Field": k, "Value": str(v)} for k, v in env.items()]).set_index("Field"))
    if is_diffusion(exp):
        show_diffusion_views(exp)
        return
    show_kv_views(exp)
    show_speculative_views(exp)
    show_quantization_views(exp)
    show_sparse_attention_views(exp)
    _outputs_side_by_side(exp)


def _show_verdicts(exp) -> None:
    found = verdict.of_experiment(exp)
    if found:
        st.markdown("**Verdict** — each variant against the baseline; the table below has every measurement.")
        st.markdown("\n".join(f"- {_verdict_markdown(v)}" for v in found))


def _verdict_markdown(v) -> str:
    return f"**{v.variant}**: **{v.headline}**{v.flag_note()}" + "".join(f" · {p}" for p in v.parts)


def _describe(spec: dict) -> str:
    # an imported report may come from an older lab whose specs lacked a field: show "?" rather than fail
    spec = collections.defaultdict(lambda: "?", spec)
    if spec["workload"] == "digits":
        what = (f"classes {', '.join(map(str, spec['classes']))} × {spec['images_per_class']} · {spec['sampler']} "
                f"{spec['steps']} steps · guidance {spec['guidance']} · batch {spec['batch_size']}")
    else:
        what = f"{spec['prompts']} items · max_new_tokens {spec['max_new_tokens']}"
    return (f"model {spec['model']} · workload {spec['workload']} · {what} · {spec['repeats']} repeats after "
            f"{spec['warmup']} warm-up · seed {spec['seed']}")


def _outputs_side_by_side(exp) -> None:
    by_item: dict[int, dict] = {}
    for run in exp.runs:
        for out in run.outputs:
            by_item.setdefault(out.item_index, {"prompt": out.prompt, "texts": {}})["texts"][run.variant] = out.text
    if not by_item:
        return
    st.markdown("**Outputs side by side**")
    for index in sorted(by_item):
        item = by_item[index]
        with st.expander(f"Prompt {index + 1}: {item['prompt'][:90]}", expanded=index == 0):
            cols = st.columns(len(item["texts"]))
            for col, (variant, text) in zip(cols, item["texts"].items()):
                col.markdown(f"**{variant}**")
                col.text(text)
