"""Small pictures of what a technique does, one per picture kind a technique declares (`picture`), each drawn from
a tiny hand-made illustration (never from a run). The colours are the Okabe-Ito palette, which colour-blind
readers can tell apart, and every category also carries a glyph or a label, so no picture relies on colour alone.
No Streamlit, no torch."""
from __future__ import annotations

from typing import Callable, NamedTuple

import altair as alt
import pandas as pd

# Okabe-Ito (plus a neutral grey for "nothing happens here")
BLUE, ORANGE, SKY, GREEN, YELLOW, VERMILLION, PURPLE, GREY = ("#0072B2", "#E69F00", "#56B4E9", "#009E73", "#F0E442",
                                                              "#D55E00", "#CC79A7", "#DDDDDD")
CELL = 22  # pixels per cell of a grid picture


class Picture(NamedTuple):
    build: Callable[[], alt.TopLevelMixin]
    caption: str


def _cells(rows: list[dict], legend: dict[str, str], x_title: str, y_title: str | None = None,
           ink: dict[str, str] | None = None) -> alt.LayerChart:
    """A grid of labelled cells: rows of {x, y, category, glyph}; `legend` maps category -> colour in legend order;
    `ink` the glyph's colour on a dark cell (black elsewhere)."""
    data = pd.DataFrame(rows)
    data["ink"] = [(ink or {}).get(c, "black") for c in data["category"]]
    x_order, y_order = list(dict.fromkeys(data["x"])), list(dict.fromkeys(data["y"]))
    base = alt.Chart(data).encode(x=alt.X("x:N", sort=x_order, title=x_title, axis=alt.Axis(labelAngle=0)),
                                  y=alt.Y("y:N", sort=y_order, title=y_title))
    scale = alt.Scale(domain=list(legend), range=list(legend.values()))
    boxes = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("category:N", scale=scale, title=None, legend=alt.Legend(orient="bottom", columns=2)),
        tooltip=["x:N", "y:N", "category:N"])
    glyphs = base.mark_text(fontSize=11).encode(text="glyph:N", color=alt.Color("ink:N", scale=None))
    return (boxes + glyphs).properties(width=CELL * len(x_order), height=CELL * len(y_order))


def kv_eviction() -> alt.LayerChart:
    kept = {**{pos: ("attention sink (kept)", "S") for pos in (0, 1)},
            **{pos: ("kept by its score", "K") for pos in (4, 7, 8, 12, 15)},
            **{pos: ("recent window (kept)", "W") for pos in range(19, 24)}}
    legend = {"attention sink (kept)": PURPLE, "kept by its score": SKY, "recent window (kept)": GREEN,
              "evicted": GREY}
    rows = [{"x": pos, "y": "cache", "category": category, "glyph": glyph}
            for pos in range(24) for category, glyph in [kept.get(pos, ("evicted", "×"))]]
    return _cells(rows, legend, "token position in the prompt")


def kv_quantization() -> alt.LayerChart:
    full = {0, 1, 6, 11, 20, 21, 22, 23}  # important tokens and the newest, not yet a full block
    data = pd.DataFrame([{"token": pos, "bits": 16 if pos in full else 4,
                          "stored as": "full precision (important or newest)" if pos in full else "4-bit (rounded)"}
                         for pos in range(24)])
    legend = {"full precision (important or newest)": BLUE, "4-bit (rounded)": ORANGE}
    base = alt.Chart(data).encode(x=alt.X("token:O", title="token position in the cache", axis=alt.Axis(labelAngle=0)),
                                  y=alt.Y("bits:Q", title="bits per stored value", scale=alt.Scale(domain=[0, 18])))
    bars = base.mark_bar().encode(color=alt.Color("stored as:N", scale=alt.Scale(domain=list(legend),
                                                                                   range=list(legend.values())),
                                                  title=None, legend=alt.Legend(orient="bottom")),
                                  tooltip=["token:O", "bits:Q", "stored as:N"])
    labels = base.mark_text(dy=-6, fontSize=10).encode(text="bits:Q")
    return (bars + labels).properties(width=CELL * 24, height=120)


def draft_verify() -> alt.LayerChart:
    legend = {"accepted": GREEN, "rejected": VERMILLION, "discarded (after a rejection)": GREY,
              "target's own token": BLUE}
    draft = [("the", "accepted"), ("mat", "accepted"), ("and", "rejected"), ("slept", "discarded (after a rejection)")]
    target = [("the", "accepted"), ("mat", "accepted"), (".", "target's own token")]
    rows = [{"x": f"+{i + 1}", "y": "draft proposes", "glyph": w, "category": c} for i, (w, c) in enumerate(draft)]
    rows += [{"x": f"+{i + 1}", "y": "target keeps", "glyph": w, "category": c} for i, (w, c) in enumerate(target)]
    chart = _cells(rows, legend, "tokens after the prompt 'The cat sat on'", ink={"target's own token": "white"})
    return chart.properties(width=CELL * 12)


def block_reuse() -> alt.LayerChart:
    legend = {"computed": BLUE, "reused from the cache": YELLOW}
    rows = [{"x": step, "y": f"block {block}", "category": "computed" if step % 2 == 1 else "reused from the cache",
             "glyph": "C" if step % 2 == 1 else "R"} for block in range(1, 5) for step in range(1, 7)]
    return _cells(rows, legend, "denoising step", ink={"computed": "white"}).properties(width=CELL * 12)


def step_reduction() -> alt.LayerChart:
    plans = {"baseline: 12 steps": 12, "fewer steps: 4": 4}
    data = pd.DataFrame([{"plan": plan, "noise": 1000 - 1000 * i / steps, "pass": i + 1}
                         for plan, steps in plans.items() for i in range(steps)])
    legend = alt.Scale(domain=list(plans), range=[BLUE, ORANGE])
    base = alt.Chart(data).encode(x=alt.X("noise:Q", title="noise level (1000 = pure noise, 0 = image)",
                                          scale=alt.Scale(domain=[1000, 0])),
                                  y=alt.Y("plan:N", sort=list(plans), title=None))
    line = base.mark_line(color=GREY).encode(detail="plan:N")
    points = base.mark_point(filled=True, size=90).encode(
        color=alt.Color("plan:N", scale=legend, title=None, legend=None),
        shape=alt.Shape("plan:N", scale=alt.Scale(domain=list(plans), range=["circle", "square"]), legend=None),
        tooltip=["plan:N", "pass:Q", "noise:Q"])
    return (line + points).properties(width=420, height=90, title="each mark is one pass through the network")


def weight_grid() -> alt.LayerChart:
    weights = [0.42, -0.13, 0.05, -0.61, 0.27, 0.88, -0.34, 0.12, -0.02, 0.55, -0.77, 0.19, 0.31, -0.48, 0.07, -0.25]
    low, step = min(weights), (max(weights) - min(weights)) / 15  # 4 bits: 16 levels from min to max
    levels = [low + i * step for i in range(16)]
    rows = []
    for i, w in enumerate(weights):
        snapped = low + round((w - low) / step) * step
        rows += [{"weight": i + 1, "value": w, "shown": "original weight", "pair": i},
                 {"weight": i + 1, "value": snapped, "shown": "stored 4-bit value", "pair": i}]
    data = pd.DataFrame(rows)
    kinds = ["original weight", "stored 4-bit value"]
    grid = alt.Chart(pd.DataFrame({"level": levels})).mark_rule(color=GREY).encode(
        y=alt.Y("level:Q", title="weight value (grey lines: the 16 values 4 bits can store)"))
    moves = alt.Chart(data).mark_line(color="#777777").encode(x="weight:O", y="value:Q", detail="pair:N")
    points = alt.Chart(data).mark_point(filled=True, size=70).encode(
        x=alt.X("weight:O", title="weight in one row", axis=alt.Axis(labelAngle=0)), y="value:Q",
        color=alt.Color("shown:N", scale=alt.Scale(domain=kinds, range=[BLUE, VERMILLION]), title=None,
                        legend=alt.Legend(orient="bottom")),
        shape=alt.Shape("shown:N", scale=alt.Scale(domain=kinds, range=["circle", "square"]), title=None),
        tooltip=["weight:O", "shown:N", alt.Tooltip("value:Q", format=".3f")])
    return (grid + moves + points).properties(width=420, height=220)


def pruning() -> alt.LayerChart:
    legend = {"kept": SKY, "pruned to 0": GREY}
    rows = []
    for r in range(8):
        values = [round(((r * 7 + c * 5) % 11 - 5) / 5, 1) for c in range(8)]
        for group in (0, 4):  # 2:4: the two largest |w| of every four neighbours survive
            block = range(group, group + 4)
            keep = sorted(block, key=lambda c: (-abs(values[c]), c))[:2]
            rows += [{"x": c + 1, "y": f"row {r + 1}", "category": "kept" if c in keep else "pruned to 0",
                      "glyph": f"{values[c]:g}" if c in keep else "0"} for c in block]
    return _cells(rows, legend, "input column (2:4: two of every four kept)").properties(width=CELL * 12)


def attention_mask() -> alt.LayerChart:
    legend = {"attended": BLUE, "skipped (sparse)": ORANGE, "future (never attended)": GREY}
    rows = []
    for q in range(16):
        for k in range(16):
            if k > q:
                category, glyph = "future (never attended)", ""
            elif k < 2 or q - k < 4:  # 2 sink tokens and a window of 4
                category, glyph = "attended", "●"
            else:
                category, glyph = "skipped (sparse)", "×"
            rows.append({"x": k, "y": q, "category": category, "glyph": glyph})
    return _cells(rows, legend, "key position", "query position", ink={"attended": "white"})


def compiled_step() -> alt.LayerChart:
    # one decoder layer's decode step on a time axis: eager launches every small op from Python with a gap before
    # each; compiled runs the same matmuls with the small ops fused into fewer kernels and no gaps
    eager = "M.o.M.o.o.M.o.M"
    compiled = "MfMfMfM"
    names = {"M": ("matmul (reads weights)", "M"), "o": ("small op (norm, rope, add)", "·"),
             "f": ("fused kernel (several small ops)", "F"), ".": ("Python and launch overhead", "")}
    legend = {"matmul (reads weights)": BLUE, "small op (norm, rope, add)": SKY,
              "fused kernel (several small ops)": GREEN, "Python and launch overhead": GREY}
    rows = [{"x": t, "y": label, "category": names[c][0], "glyph": names[c][1]}
            for label, plan in (("eager", eager), ("compiled", compiled)) for t, c in enumerate(plan)]
    return _cells(rows, legend, "time within one decode step")


NOT_MEASURED = "An illustration, not a measurement: "
PICTURES: dict[str, Picture] = {
    "kv_eviction": Picture(kv_eviction, NOT_MEASURED + "24 cached tokens after evicting half. S: attention sinks, K: "
                           "kept for their score, W: the recent window, ×: evicted (gone for good)."),
    "kv_quantization": Picture(kv_quantization, NOT_MEASURED + "every token stays in the cache, but most are stored "
                               "in 4 bits instead of 16; the important and newest ones keep full precision."),
    "draft_verify": Picture(draft_verify, NOT_MEASURED + "one round. The draft proposes 4 tokens, the target checks "
                            "all 4 in one pass, keeps the first 2, rejects the 3rd and writes its own token there."),
    "block_reuse": Picture(block_reuse, NOT_MEASURED + "6 denoising steps of a 4-block network. C: computed, R: the "
                           "block's last computed output (or residual) reused instead of computing it."),
    "step_reduction": Picture(step_reduction, NOT_MEASURED + "the same path from noise to image in 12 steps or in 4 "
                              "larger ones: a third of the passes, so about a third of the time."),
    "weight_grid": Picture(weight_grid, NOT_MEASURED + "16 weights of one row snapped to the nearest of the 16 values "
                           "4 bits can store; the vertical lines show each rounding error."),
    "pruning": Picture(pruning, NOT_MEASURED + "an 8 x 8 weight matrix pruned 2:4: in every group of four "
                       "neighbouring weights the two largest (by |w|) are kept and the others set to 0."),
    "compiled_step": Picture(compiled_step, NOT_MEASURED + "one layer of a decode step. Eager PyTorch launches each "
                             "small op from Python; the compiled step fuses them and leaves no gaps, so the same "
                             "matmuls finish sooner."),
    "attention_mask": Picture(attention_mask, NOT_MEASURED + "which query-key pairs a 16-token sparse pattern "
                              "computes: 2 sink tokens and a window of 4 recent tokens (●); × pairs are skipped."),
}


def picture(kind: str) -> alt.TopLevelMixin:
    """The chart of a picture kind (KeyError for a kind no builder draws)."""
    # pad: the chart's own width and height are its plot's; Streamlit's default ("fit") squeezed a picture whose
    # axis title is long into a few pixels of height, every point on one line
    return PICTURES[kind].build().properties(autosize=alt.AutoSizeParams(type="pad"))


def caption(kind: str) -> str:
    return PICTURES[kind].caption
