"""Keeping order among experiments, as the pages need it: the tag box's text, the Compare page's run-list
filters, and the URL that holds a Compare selection. The changes themselves live in lab/catalog.py."""
from __future__ import annotations

from lab import catalog

FILTERS = ("model", "workload", "technique", "tag")  # the Compare page's run-list filters, in display order


def parse_tags(text: str) -> list[str]:
    """The tag box's text ("fp8, long context") as the tags catalog.set_tags stores (it refuses bad ones)."""
    return catalog.normalised_tags(part for part in (text or "").split(","))


def tags_text(tags: list[str]) -> str:
    return ", ".join(tags or [])


def filter_options() -> dict[str, list[str]]:
    return catalog.filter_options()


def matching_experiment_ids(filters: dict[str, str | None]) -> set[int]:
    """The ids of the experiments every set filter matches (an empty dict matches all)."""
    wanted = {k: v for k, v in filters.items() if k in FILTERS and v}
    return {e["id"] for e in catalog.filter_experiments(**wanted)}


def runs_param(run_ids: list[int]) -> str:
    """A Compare selection as the URL's ?runs= value: sorted ids joined by commas (one link, one view)."""
    return ",".join(str(i) for i in sorted(set(run_ids)))


def runs_from_param(value: str | None, known: set[int]) -> tuple[list[int], list[str]]:
    """The run ids a ?runs= value names, and what in it was not a known run (to say so, not to fail)."""
    picked, unknown = [], []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        if part.isdigit() and int(part) in known:
            picked.append(int(part))
        else:
            unknown.append(part)
    return sorted(set(picked)), unknown
