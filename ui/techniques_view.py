"""The Techniques page: a tab per family, an expander per technique with its idea, a picture of what it does, its
knobs, its paper and the paper's claim, and what this machine measured for it (a link to the stored run, the stack
it was part of, the noise and busy notes); a result recorded elsewhere is labelled so, never as measured here."""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from lab.views import technique_pictures, techniques
from lab.views.techniques import Family, Measured, TechniqueEntry


def show_catalogue(opened: str | None) -> None:
    """Every registered technique; `opened` (the ?technique= of the link) opens its family's tab and expander."""
    families = techniques.catalogue()
    if opened and not any(e.name == opened for f in families for e in f.techniques):
        st.warning(f"No technique is named {escaped(opened)}: every registered technique is listed below.")
        opened = None
    measured, hints = techniques.measurements(), techniques.unmeasured_hints()
    default = next((f.title for f in families if any(e.name == opened for e in f.techniques)), None)
    for tab, family in zip(st.tabs([f.title for f in families], default=default), families):
        with tab:
            show_family(family, opened, measured, hints)


def show_family(family: Family, opened: str | None, measured: dict[str, Measured], hints: dict[str, str]) -> None:
    if family.about:
        st.write(family.about)
    for entry in family.techniques:
        with st.expander(f"{entry.title} · {entry.name}", expanded=entry.name == opened):
            show_technique(entry)
            show_measured(measured.get(entry.name), hints.get(entry.name, "Not measured here yet."))


def show_technique(entry: TechniqueEntry) -> None:
    text, picture = st.columns(2)
    text.markdown(f"**The idea.** {escaped(entry.idea, code=True)}")
    text.markdown(f"**In this lab.** {escaped(entry.summary, code=True)}")
    text.markdown(f"**Paper.** {escaped(entry.paper, code=True)}")
    text.markdown(f"**Its claim.** {escaped(entry.paper_claim, code=True)}")
    if entry.picture in technique_pictures.PICTURES:
        caption = technique_pictures.caption(entry.picture)
        picture.altair_chart(technique_pictures.picture(entry.picture), width="content", key=f"picture_{entry.name}",
                             alt=caption)
        picture.caption(caption)
    else:  # a user's technique may name a kind this lab draws no picture for
        picture.caption(f"No picture of the kind {escaped(entry.picture or '(none)')}.")
    if entry.knobs:
        st.markdown("**Knobs**")
        st.table(pd.DataFrame(entry.knobs), hide_index=True)
    else:
        st.caption("No knobs: it runs as declared.")


def show_measured(measured: Measured | None, hint: str) -> None:
    """This machine's measurement, or one recorded elsewhere under a label that says so (with what to run to
    measure it here), or what to run."""
    if measured is None:
        st.info(hint)
        return
    numbers = "; ".join(f"{label}: {value}" for label, value in measured.metrics.items())
    where = f"{escaped(measured.experiment_name)} (experiment {measured.experiment_id})"
    run = f"[{where}, variant {escaped(measured.variant)}]({measured.link}) on the {measured.page}"
    said = f"{stack_text(measured)}: {escaped(numbers) or 'no speedup or quality metric stored'}."
    if measured.here:
        st.markdown(f"**Measured here.** {run}, {said}")
    else:
        st.markdown(f"**Recorded, not measured here.** {run}, {escaped(measured.where)}; {said}")
    if measured.busy:
        st.warning(f"Measured on a busy machine: {escaped(measured.busy)}. Timings and speedups may be wrong.")
    if not measured.here:
        st.info(hint)


def stack_text(measured: Measured) -> str:
    """What the numbers belong to: the technique alone, or the whole stack it was part of."""
    engine = f" on the {escaped(measured.engine)} engine" if measured.engine != "lab" else ""
    if measured.alone:
        return f"{escaped(measured.stack[0])} alone{engine}"
    return f"as part of {escaped(' + '.join(measured.stack))}{engine} (the numbers are the whole stack's)"


def escaped(text: str, code: bool = False) -> str:
    """Text shown as typed in Markdown: a name or a declaration may hold *, _, $ (LaTeX) or brackets. `code`:
    keep backticks, which a declaration uses to mark a knob's name."""
    special = r"\\*_\[\]<>$#|~" + ("" if code else "`")
    return re.sub(f"([{special}])", r"\\\1", str(text))
