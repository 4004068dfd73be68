"""Keeping order among experiments: rename, tag, annotate and delete one, and filter them all (the Compare page's
run-list filters). No Streamlit, no torch.

Each operation is one transaction (store.session): it changes exactly what it says, or, on any error, nothing.
An id that names no experiment raises UnknownExperiment; bad input (an empty name, a tag with a comma) raises
SpecError naming what is wrong."""
from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from lab import store
from lab.errors import SpecError, UnknownExperiment, named, shown
from lab.store import NAME_LIMIT, Experiment, Job, Metric, Output, Run

TAG_LIMIT = 40  # characters per tag: a tag is a short label on a chip, not a sentence
BUSY_STATUSES = ("queued", "running")  # a job in these still reads (or will read) the experiment's rows


class ExperimentBusy(RuntimeError):
    """The experiment's job is queued or running: deleting it would pull its rows from under the worker."""


# --- changing one experiment ---------------------------------------------------------------------------
def rename_experiment(experiment_id: int, name: str) -> str:
    """Give the experiment a new name (stripped); returns the name stored. The stored spec keeps the name it
    ran under, so its spec hash still says what was run."""
    clean = checked_name(name)
    with store.session() as s:
        _editable(s, experiment_id).name = clean
    return clean


def set_tags(experiment_id: int, tags: Iterable[str]) -> list[str]:
    """Replace the experiment's tags with `tags`, normalised (see normalised_tags); returns the tags stored."""
    clean = normalised_tags(tags)
    with store.session() as s:
        _editable(s, experiment_id).tags = clean
    return clean


def set_note(experiment_id: int, text: str) -> str:
    """Replace the experiment's note (free text, surrounding whitespace stripped; "" clears it)."""
    if not isinstance(text, str):
        raise SpecError(f"note: expected text, got {shown(text)}")
    clean = text.strip()
    with store.session() as s:
        _editable(s, experiment_id).note = clean
    return clean


def delete_experiment(experiment_id: int) -> dict[str, int]:
    """Delete the experiment with its runs, metrics, outputs and jobs, and nothing else; returns how many rows of
    each went. Refused (ExperimentBusy) while one of its jobs is queued or running."""
    with store.session() as s:
        exp_id = _editable(s, experiment_id).id  # a plain int from here on (the caller's may be numpy's)
        _refuse_if_busy(s, exp_id)
        _require_cascade(s)
        removed = _owned_row_counts(s, exp_id)
        # The busy test is repeated inside the DELETE itself: a worker claiming a job between the check above and
        # this statement cannot have the experiment vanish under it.
        not_busy = ~exists().where(Job.experiment_id == exp_id, Job.status.in_(BUSY_STATUSES))
        deleted = s.execute(delete(Experiment).where(Experiment.id == exp_id, not_busy),
                            execution_options={"synchronize_session": False}).rowcount
        if deleted != 1:
            raise ExperimentBusy(_busy_message(exp_id))
    return removed


# --- reading them all ----------------------------------------------------------------------------------
def catalog_entry(experiment_id: int) -> dict:
    """What the catalog knows of one experiment (the fields of filter_experiments' rows)."""
    with store.session() as s:
        return _entry(_experiment(s, experiment_id))


def all_tags() -> list[str]:
    """Every tag any experiment carries, sorted."""
    with store.session() as s:
        tag_lists = s.scalars(select(Experiment.tags)).all()
    return sorted({tag for tags in tag_lists for tag in tags or []})


def filter_options() -> dict[str, list[str]]:
    """The values each filter of filter_experiments can take, from the stored experiments (for select boxes)."""
    entries = filter_experiments()
    return {"model": sorted({e["model"] for e in entries if e["model"]}),
            "workload": sorted({e["workload"] for e in entries if e["workload"]}),
            "technique": sorted({t for e in entries for t in e["techniques"]}),
            "tag": sorted({t for e in entries for t in e["tags"]})}


def filter_experiments(model: str | None = None, workload: str | None = None, technique: str | None = None,
                       tag: str | None = None) -> list[dict]:
    """The experiments matching every filter given (None or "" leaves a filter out), newest first.

    model and workload match the spec's fields exactly; technique matches when any variant uses a technique of
    that name; tag when the experiment carries it. Each row: id, name, model, workload, techniques (sorted
    names), tags, note, origin, imported_from, status, created_at."""
    wanted = {"model": model, "workload": workload}
    with store.session() as s:
        entries = [_entry(e) for e in s.scalars(select(Experiment).order_by(Experiment.id.desc()))]
    return [e for e in entries
            if all(not value or e[field] == value for field, value in wanted.items())
            and (not technique or technique in e["techniques"])
            and (not tag or tag in e["tags"])]


# --- checking input ------------------------------------------------------------------------------------
def checked_name(name: str) -> str:
    """An experiment's name as stored: stripped, not empty, one printable line within the column's length."""
    if not isinstance(name, str):
        raise SpecError(f"name: expected text, got {shown(name)}")
    clean = name.strip()
    if not clean:
        raise SpecError("name: an experiment needs a name; the new name is empty")
    if len(clean) > NAME_LIMIT:
        raise SpecError(f"name: {len(clean)} characters; at most {NAME_LIMIT} fit ({named(clean)})")
    if not clean.isprintable():
        raise SpecError(f"name: {shown(clean)} holds a line break or control character; a name is one line")
    return clean


def normalised_tags(tags: Iterable[str]) -> list[str]:
    """Tags as stored: each stripped (blank ones dropped), duplicates removed, sorted. A tag longer than
    TAG_LIMIT, holding a comma (the tag box splits on commas) or a line break is refused with SpecError."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise SpecError(f"tags: expected a list of tags, got {shown(tags)}")
    return sorted({tag for tag in map(_checked_tag, tags) if tag})


def _checked_tag(tag: str) -> str:
    if not isinstance(tag, str):
        raise SpecError(f"tag {shown(tag)}: expected text")
    clean = tag.strip()
    if "," in clean:
        raise SpecError(f"tag '{named(clean)}': a tag cannot hold a comma (commas separate tags)")
    if len(clean) > TAG_LIMIT:
        raise SpecError(f"tag '{named(clean)}': {len(clean)} characters; a tag has at most {TAG_LIMIT}")
    if not clean.isprintable():
        raise SpecError(f"tag {shown(clean)}: holds a line break or control character; a tag is one line")
    return clean


# --- inside a transaction ------------------------------------------------------------------------------
def _experiment(s: Session, experiment_id: int) -> Experiment:
    # Integral, not int: a page hands over ids read from a DataFrame (numpy integers); a bool is no id.
    is_id = isinstance(experiment_id, Integral) and not isinstance(experiment_id, bool)
    exp = s.get(Experiment, int(experiment_id)) if is_id else None
    if exp is None:
        raise UnknownExperiment(f"no experiment has id {shown(experiment_id)} (deleted, or never stored)")
    return exp


def _editable(s: Session, experiment_id: int) -> Experiment:
    """The experiment, unless it is one of the lab's recorded gallery results, which every class shares as shipped."""
    exp = _experiment(s, experiment_id)
    if exp.origin == store.ORIGIN_GALLERY:
        raise SpecError(f"experiment {exp.id} is a recorded gallery result (data/gallery): it is read-only; export "
                        f"it (report) or run its spec again to have one of your own")
    return exp


def _refuse_if_busy(s: Session, experiment_id: int) -> None:
    busy = s.scalar(select(func.count()).select_from(Job).where(Job.experiment_id == experiment_id,
                                                                  Job.status.in_(BUSY_STATUSES)))
    if busy:
        raise ExperimentBusy(_busy_message(experiment_id))


def _busy_message(experiment_id: int) -> str:
    return (f"experiment {experiment_id} has a queued or running job; cancel it (or wait for it to finish) "
            f"before deleting the experiment")


def _require_cascade(s: Session) -> None:
    """Runs, metrics, outputs and jobs go by the foreign keys' ON DELETE CASCADE; SQLite honours it only with
    PRAGMA foreign_keys on (the store turns it on for each connection). Without it they would stay as orphans."""
    if s.get_bind().dialect.name == "sqlite" and not _sqlite_foreign_keys_on(s):
        raise RuntimeError("SQLite foreign keys are off on this connection, so deleting an experiment would leave "
                           "its runs behind; open the store through lab.store, which turns them on")


def _sqlite_foreign_keys_on(s: Session) -> bool:
    return bool(s.connection().exec_driver_sql("PRAGMA foreign_keys").scalar())


def _owned_row_counts(s: Session, experiment_id: int) -> dict[str, int]:
    run_ids = select(Run.id).where(Run.experiment_id == experiment_id)

    def count(model, *where) -> int:
        return s.scalar(select(func.count()).select_from(model).where(*where))

    return {"runs": count(Run, Run.experiment_id == experiment_id),
            "metrics": count(Metric, Metric.run_id.in_(run_ids)),
            "outputs": count(Output, Output.run_id.in_(run_ids)),
            "jobs": count(Job, Job.experiment_id == experiment_id)}


def _entry(exp: Experiment) -> dict:
    spec = exp.spec or {}
    return {"id": exp.id, "name": exp.name, "model": spec.get("model", ""), "workload": spec.get("workload", ""),
            "techniques": _technique_names(spec), "tags": list(exp.tags or []), "note": exp.note or "",
            "origin": exp.origin, "imported_from": exp.imported_from, "status": exp.status,
            "created_at": exp.created_at}


def _technique_names(spec: dict) -> list[str]:
    return sorted({t["name"] for v in spec.get("variants", []) for t in v.get("techniques", [])
                   if isinstance(t, dict) and t.get("name")})
