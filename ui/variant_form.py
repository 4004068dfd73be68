"""The variants editor both lab pages share: techniques picked per variant, knobs drawn from declarations."""
from __future__ import annotations

import streamlit as st

from lab import forms


def variant_editor(techniques: dict, preset_variants: list[dict], max_variants: int = 6) -> list[dict]:
    """Widgets for the variants besides the baseline; returns [{'name', 'techniques'}, ...] with the baseline."""
    n_variants = st.number_input("Variants besides the baseline", 0, max_variants,
                                 value=max(1, min(max_variants, len(preset_variants))))
    variants = [{"name": "baseline", "techniques": []}]
    for i in range(int(n_variants)):
        pv = preset_variants[i] if i < len(preset_variants) else {}
        box = st.container(border=True)
        vname = box.text_input("Variant name", value=pv.get("name", f"variant-{i + 1}"), key=f"v{i}_name")
        chosen = box.multiselect("Techniques", list(techniques), key=f"v{i}_tech",
                                 default=[t["name"] for t in pv.get("techniques", []) if t["name"] in techniques],
                                 format_func=lambda n: f"{techniques[n].title} ({techniques[n].slot})")
        entries = []
        for tname in chosen:
            cls = techniques[tname]
            box.caption(f"{cls.title}: {cls.summary} Paper: {cls.paper}")
            preset_knobs = next((t for t in pv.get("techniques", []) if t["name"] == tname), {})
            entries.append({"name": tname, **_knob_widgets(box, cls, preset_knobs, f"v{i}_{tname}")})
        variants.append({"name": vname, "techniques": entries})
    return variants


def _knob_widgets(box, cls, preset_knobs: dict, prefix: str) -> dict:
    values = {}
    for k in cls.knobs():
        w, key, value = forms.widget_for(k), f"{prefix}_{k.name}", preset_knobs.get(k.name, k.default)
        label, help_ = forms.knob_label(k), f"{k.help} Allowed: {k.allowed()}."
        if w["widget"] == "select":
            values[k.name] = box.selectbox(label, w["options"], index=w["options"].index(value), key=key, help=help_)
        elif w["widget"] == "checkbox":
            values[k.name] = box.checkbox(label, value=bool(value), key=key, help=help_)
        elif w["widget"] == "number":
            values[k.name] = box.number_input(label, value=k.type(value), step=k.type(w["step"]), key=key, help=help_)
        else:
            values[k.name] = box.text_input(label, value=str(value), key=key, help=help_)
    return values
