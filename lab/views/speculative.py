"""Speculative decoding views, as data: which token came how, and the per-round timeline.

Built from a stored output's extra (spec_rounds, token_texts, rejected_texts), so the page needs no
tokenizer and no torch.
"""
from __future__ import annotations

import html

# how a token came: the target's prefill, an accepted draft, the target's correction after a rejection,
# the target's bonus token after a fully accepted round; rejected drafts are shown struck through. Tints of the
# Okabe-Ito palette (grey, sky blue, orange, reddish purple, vermillion), which colour-blind readers tell apart;
# the strike-through says "rejected" without colour at all.
KINDS = {
    "prefill": ("#e5e7eb", "first token (target's prefill)"),
    "accepted": ("#c6e6f7", "accepted draft"),
    "correction": ("#fcd9a4", "target's token after a rejection"),
    "bonus": ("#eec6dc", "target's bonus token (all drafts accepted)"),
    "rejected": ("#f5c4a8", "rejected draft (not in the output)"),
}


def runs_with_rounds(exp) -> list:
    return [r for r in exp.runs if r.outputs and "spec_rounds" in r.outputs[0].extra]


def token_spans(extra: dict, n_tokens: int) -> list[tuple[str, str]]:
    """(kind, text) in output order, rejected drafts inserted where they were proposed."""
    texts = extra["token_texts"]
    spans = [("prefill", texts[0])]
    position = 1
    for r, rejected in zip(extra["spec_rounds"], extra["rejected_texts"]):
        for _ in range(r["accepted"]):
            if position < n_tokens:
                spans.append(("accepted", texts[position]))
            position += 1
        if rejected:
            spans.append(("rejected", rejected))
        if position < n_tokens:
            kind = "bonus" if r["accepted"] == len(r["proposed"]) and r["proposed"] else "correction"
            spans.append((kind, texts[position]))
        position += 1
    return spans


def spans_html(spans: list[tuple[str, str]]) -> str:
    parts = []
    for kind, text in spans:
        colour, title = KINDS[kind]
        style = f"background:{colour};border-radius:3px;padding:0 1px"
        if kind == "rejected":
            style += ";text-decoration:line-through;color:#991b1b;font-size:0.85em"
        parts.append(f'<span title="{title}" style="{style}">{html.escape(text)}</span>')
    body = "".join(parts)
    return f'<div style="white-space:pre-wrap;line-height:1.9;font-family:monospace">{body}</div>'


def legend_html() -> str:
    items = [f'<span style="background:{c};padding:0 6px;border-radius:3px;margin-right:8px">{t}</span>'
             for c, t in KINDS.values()]
    return f'<div style="font-size:0.85em">{"".join(items)}</div>'


def timeline_rows(extra: dict) -> list[dict]:
    """One row per phase (prefill, each round's draft and verify) with start and end in seconds."""
    rows = [{"round": 0, "phase": "prefill", "start": 0.0, "end": extra["prefill_s"], "accepted": None,
             "proposed": None}]
    for i, r in enumerate(extra["spec_rounds"], start=1):
        verify_start = r["end_s"] - r["verify_s"]
        draft_start = verify_start - r["draft_s"]
        common = {"round": i, "accepted": r["accepted"], "proposed": len(r["proposed"])}
        rows.append({**common, "phase": "draft", "start": draft_start, "end": verify_start})
        rows.append({**common, "phase": "verify", "start": verify_start, "end": r["end_s"]})
    return rows


def round_summary(extra: dict) -> dict:
    rounds = extra["spec_rounds"]
    proposed = sum(len(r["proposed"]) for r in rounds)
    accepted = sum(r["accepted"] for r in rounds)
    return {"rounds": len(rounds), "proposed": proposed, "accepted": accepted,
            "acceptance": accepted / proposed if proposed else float("nan")}
