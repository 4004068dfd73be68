"""The diffusion results: image grids baseline vs each variant with the difference, and the per-step strip."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from lab.views import diffusion as diffusion_views


def show_diffusion_views(exp) -> None:
    if not diffusion_views.is_diffusion(exp) or not exp.runs or not exp.runs[0].outputs:
        return
    _step_strip(exp)
    rows = diffusion_views.equal_compute_rows(exp)
    if rows:
        st.markdown("**Against fewer steps at equal compute** — each cache beside the step-reduction curve of "
                    "this experiment (baseline and its fewer-step variants), interpolated at the same share of "
                    "blocks computed, and at the same measured speedup. It beats fewer steps when both PSNR and "
                    "SSIM are higher.")
        cells = pd.DataFrame(rows).set_index("Variant").map(
            lambda v: "–" if v is None else (f"{v:g}" if isinstance(v, float) else v))
        st.table(cells)
    captions = ("requested → classified digit" if exp.spec.get("workload") == "digits" else
                "the prompts' keys (data/prompts/images.toml); stored as thumbnails, scored at full size")
    st.markdown("**Images** — the baseline, each variant from the same seed, and their difference (amplified "
                f"4x; white = identical). Captions: {captions}.")
    for run in exp.runs[1:]:
        rows = diffusion_views.comparison_rows(exp, run.variant)
        with st.expander(run.variant, expanded=run is exp.runs[1]):
            st.caption("   ".join(rows["captions"]))
            base = exp.runs[0].variant
            st.image(rows["baseline"], caption=base if base == "baseline" else f"baseline ({base})")
            st.image(rows["variant"], caption=run.variant)
            st.image(rows["difference"], caption="difference")
    if len(exp.runs) == 1:
        rows = diffusion_views.comparison_rows(exp, exp.runs[0].variant)
        st.image(rows["baseline"], caption="baseline")


def _step_strip(exp) -> None:
    data = pd.DataFrame(diffusion_views.step_strip(exp))
    if data.empty:
        return
    st.markdown("**Per step: computed or reused** — share of the denoiser's blocks each sampler step computed "
                "(counted by hooks). Reused steps are light; fewer-step variants have fewer columns.")
    chart = alt.Chart(data).mark_rect(stroke="white", strokeWidth=1).encode(
        x=alt.X("step:O", title="sampler step"),
        y=alt.Y("variant:N", title=None, sort=[r.variant for r in exp.runs]),
        color=alt.Color("computed:Q", title="computed [%]", scale=alt.Scale(domain=[0, 100], scheme="blues")),
        tooltip=["variant", "step", alt.Tooltip("computed", title="computed [%]"), "state"],
    ).properties(height=28 * len(exp.runs) + 40)
    st.altair_chart(chart, width="stretch")
