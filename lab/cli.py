"""python -m lab {run, list, show, report, import, techniques, models, prepare, worker, cancel} (and _run-job,
internal)"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lab import jobs
from lab.bench.loader import list_models
from lab.errors import SpecError, named
from lab.jobs import cancel
from lab.jobs.leases import DEVICES_ALLOWED
from lab.jobs.worker import worker_loop
from lab.llm.models import BUILTIN_MODELS, prepare_builtin
from lab.report import gallery
from lab.report.collect import NotInStore, SelectionError
from lab.report.export import FORMATS, format_of, write_report
from lab.report.importer import ReportFormatError, import_experiments
from lab.report.rerun import run_specs
from lab.techniques import all_techniques
from lab.techniques.registry import plugin_errors
from lab.views import results
from lab.views.diffusion import equal_compute_rows
from lab.views.results import busy_runs, text_table


def _cmd_run(args) -> int:
    specs = run_specs(args.spec)  # a TOML spec, or a .json report (its embedded specs) or spec
    if args.only:
        specs = _only(specs, args.only)
    if args.ray:
        return _run_on_ray(specs, args.ray)
    queued = []
    for spec in specs:
        exp_id, job_id = jobs.submit(spec)
        queued.append((exp_id, job_id))
        print(f"queued experiment {exp_id} ({spec.name}) as job {job_id}")
    for kind in sorted({spec.device for spec in specs}):
        if jobs.autostart_enabled():
            jobs.ensure_worker(idle_exit=60.0 if args.wait else 600.0, kind=kind)
        elif not jobs.worker_alive(kind):
            print(jobs.no_worker_hint(kind), file=sys.stderr, flush=True)
    if not args.wait:
        return 0
    status = 0
    try:
        for exp_id, job_id in queued:
            status = max(status, _wait(job_id, exp_id))
    except KeyboardInterrupt:  # stop waiting, not the jobs: they stay queued (or running) in the store
        ids = ", ".join(str(job_id) for _, job_id in queued)
        print(f"\nstopped waiting; job(s) {ids} stay in the queue. See them with `python -m lab list`, "
              f"stop one with `python -m lab cancel <job>`.", file=sys.stderr)
        return 130
    return status


def _run_on_ray(specs, address: str) -> int:
    """Each unit (the baseline and one variant) as a Ray task; waits for all (the tasks end with the driver)."""
    # lazy: Ray is imported only for --ray
    from lab.jobs.ray_units import submit_units, wait_units

    submitted = submit_units(specs, address)
    for exp_id, job_id, _ in submitted:
        print(f"queued experiment {exp_id} as job {job_id} on the Ray cluster at {address}")
    statuses = wait_units(submitted, say=lambda line: print(line, file=sys.stderr, flush=True))
    for exp_id, _, _ in submitted:
        _show(exp_id)
        print()
    return 0 if all(status == "done" for status in statuses.values()) else 1


def _wait(job_id: int, exp_id: int) -> int:
    last, hinted = "", False
    while True:
        job = jobs.get_job(job_id)
        line = f"[{job.progress * 100:5.1f}%] {job.message}"
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line
        if job.status in ("done", "failed", "cancelled"):
            break
        if job.status == "queued" and not jobs.worker_alive(job.device_kind):
            if jobs.autostart_enabled():
                jobs.ensure_worker(idle_exit=60.0, kind=job.device_kind)
            if not hinted and not jobs.worker_alive(job.device_kind):  # once per wait; then wait for the user's
                print(jobs.no_worker_hint(job.device_kind) + " Waiting; Ctrl-C stops waiting and leaves the job "
                      "queued.", file=sys.stderr, flush=True)
                hinted = True
        elif job.status == "running":
            hinted = False
        time.sleep(0.5)
    if job.status != "done":
        print(f"job {job_id} {job.status}: {job.error or job.message}", file=sys.stderr)
        return 1
    return _show(exp_id)


def _load_lines(exp) -> list[str]:
    """The machine's load during the run, and a warning when it was busy enough to distort the timings."""
    env = exp.runs[0].environment
    lines = []
    if env.get("other_cpu_share") is not None or env.get("load_avg_max") is not None:
        share = env.get("other_cpu_share")
        others = f"{share:.0%}" if share is not None else "unknown"
        lines.append(f"machine load: other processes used {others} of the CPU time of {env.get('cores')} cores; "
                     f"load average {env.get('load_avg_start')} at the start, up to {env.get('load_avg_max')}")
    reason = busy_runs(exp)  # the page's warning says the same
    if reason:
        lines.append(f"WARNING: measured on a busy machine: {reason}; timings may be wrong")
    return lines


def _show(exp_id: int) -> int:
    exp = results.load_experiment(exp_id)
    if exp is None:
        print(f"no experiment with id {exp_id}", file=sys.stderr)
        return 2
    print(f"experiment {exp.id}: {exp.name} [{exp.status}]  model={exp.spec['model']}  "
          f"workload={exp.spec['workload']}")
    if exp.runs:
        env = exp.runs[0].environment
        print(f"device={env.get('device')} ({env.get('device_name')})  threads={env.get('threads')}  "
              f"torch={env.get('torch')}  transformers={env.get('transformers')}  commit={env.get('lab_commit')}  "
              f"spec={env.get('spec_hash')}")
        for line in _load_lines(exp):
            print(line)
        print()
        print(results.text_table(results.summary_rows(exp)))
        print("\nmedian (p10–p90) over n samples; speedup is paired against the baseline in the same process")
        if exp.spec.get("workload") == "digits" and (rows := equal_compute_rows(exp)):
            print("\nagainst fewer steps at equal compute (the step-reduction curve interpolated at each "
                  "variant's blocks computed):")
            print(results.text_table(rows))
    else:
        job = jobs.job_for_experiment(exp_id)
        if job is not None and job.error:
            print(f"no results: {job.error.splitlines()[0]}")
    return 0


def _cmd_report(args) -> int:
    fmt = args.format or format_of(args.output) or "html"
    output = Path(args.output or f"report{FORMATS[fmt]}")
    try:
        written = write_report(output, fmt, args.ids, args.runs)
    except (NotInStore, SelectionError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    print("wrote " + " and ".join(str(p) + ("/" if p.is_dir() else "") for p in written))
    return 0


def _cmd_import(args) -> int:
    try:
        ids = import_experiments(args.file)
    except ReportFormatError as e:
        print(f"error: {e} (nothing was imported)", file=sys.stderr)
        return 2
    for exp_id in ids:
        print(f"imported experiment {exp_id} from {args.file}; see it with `python -m lab show {exp_id}`")
    return 0


def _cmd_gallery(args) -> int:
    try:
        if args.action == "record":
            print(f"wrote {gallery.record(args.ids or None)}")
        else:
            print(f"gallery experiments in this store: {', '.join(map(str, gallery.load()))}")
    except (LookupError, ReportFormatError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected run ids separated by commas, got {text!r}") from None


def add_report_commands(sub) -> None:
    p = sub.add_parser("report", help="export experiments (or chosen runs) as one HTML, Markdown, CSV or JSON file",
                       description="Write a report a colleague can open offline: HTML (one self-contained file), "
                                   "Markdown (PNG charts in a folder beside it), CSV (one row per run and metric) or "
                                   "JSON (everything; `python -m lab import` reads it, `python -m lab run` "
                                   "re-runs its specs).")
    p.add_argument("ids", type=int, nargs="*", help="experiment ids (see `python -m lab list`)")
    p.add_argument("--runs", type=_id_list, default=None, metavar="RUN_IDS",
                   help="report these runs instead (comma-separated, from any experiments: a Compare selection)")
    p.add_argument("--format", choices=list(FORMATS), default=None,
                   help="default: from the output's suffix, else html")
    p.add_argument("-o", "--output", default=None, help="the file to write (default: report.<format> here)")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("import", help="import a JSON report into this store (marked as imported)")
    p.add_argument("file")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("gallery", help="record the shipped gallery (data/gallery/recorded.json) or load it",
                       description="record: write the gallery from these experiments (default: the newest finished "
                                   "run of each workshop preset; `make gallery` runs them first). load: put the "
                                   "gallery in this store, read-only (the home page does it on a click).")
    p.add_argument("action", choices=("record", "load"))
    p.add_argument("ids", type=int, nargs="*", help="experiment ids to record (default: the workshop's)")
    p.set_defaults(func=_cmd_gallery)


def _cmd_list(_args) -> int:
    print(results.text_table(results.recent_experiments(50)))
    return 0


def _cmd_techniques(_args) -> int:
    for name, cls in all_techniques().items():
        fits = f" / {' or '.join(cls.applies_to)} models" + (f" ({', '.join(cls.denoisers)})" if cls.denoisers else "")
        print(f"{name}  [{cls.family} / slot: {cls.slot}{fits}]  {cls.title}")
        print(f"    {cls.summary}")
        print(f"    paper: {cls.paper}")
        for denoiser, reason in cls.unsupported_denoisers.items():
            print(f"    not on {denoiser}: {reason}")
        for k in cls.knobs():
            unit = f" {k.unit}" if k.unit else ""
            print(f"    --{k.name}: {k.allowed()}{unit}, default {k.default!r}. {k.help}")
        for m in cls.metrics:
            print(f"    metric {m.name} [{m.unit}]: {m.definition}")
    for error in plugin_errors():  # a user's technique file that did not load: said, not swallowed
        print(f"warning: {error}", file=sys.stderr)
    return 0


def _cmd_models(_args) -> int:
    print(text_table(list_models()))
    print("\nAlso: any local model folder, or a hub id already in the local Hugging Face cache.")
    return 0


def _cmd_prepare(_args) -> int:
    for name in BUILTIN_MODELS:
        print(f"{name}: {prepare_builtin(name)}")
    return 0


def _cmd_worker(args) -> int:
    try:
        worker_loop(idle_exit=args.idle_exit, device=args.device)
    except ValueError as e:  # a device this machine does not have: said before anything is written
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _only(specs: list, names: list[str]) -> list:
    """The specs whose name is one of `names` (a [[runs]] table's name), in the file's order; SpecError naming
    the allowed names for one that is not there."""
    known = [spec.name for spec in specs]
    missing = [n for n in names if n not in known]
    if missing:
        raise SpecError(f"--only {named(missing[0])}: the file has no run of that name; allowed: "
                        f"{', '.join(named(k) for k in known)}")
    return [spec for spec in specs if spec.name in names]


def _cmd_run_job(args) -> int:
    # lazy: lab.jobs.process imports torch; pages import this module
    from lab.jobs.process import run_job_child
    return run_job_child(args.job)


def _cmd_cancel(args) -> int:
    print(f"job {args.job}: {cancel(args.job)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="Efficiency Lab command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="queue an experiment spec (TOML, or a JSON report) and start a worker if none "
                                   "is running",
                       description="Queue an experiment spec (TOML), or re-run what a JSON report (`python -m lab "
                                   "report ... --format json`) or a JSON spec holds. A worker is started when none "
                                   "is alive, unless LAB_WORKER_AUTOSTART=0: then the job waits in the queue until "
                                   "you start one (`python -m lab worker`). Jobs on one device run one at a time.")
    p.add_argument("spec")
    p.add_argument("--wait", action="store_true",
                   help="wait for it and print the results table. With LAB_WORKER_AUTOSTART=0 and no worker "
                        "running it says so and keeps waiting for one; Ctrl-C stops waiting and leaves the "
                        "job queued")
    p.add_argument("--only", action="append", metavar="RUN_NAME", default=None,
                   help="queue only the run of this name (a [[runs]] table's name; repeat for several)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="spread the units (the baseline and one variant each) over the Ray cluster at ADDRESS "
                        "(host:port of its head) and wait for them; every node must reach the store "
                        "(LAB_DATABASE_URL, PostgreSQL for several machines)")
    p.set_defaults(func=_cmd_run)
    sub.add_parser("list", help="recent experiments").set_defaults(func=_cmd_list)
    p = sub.add_parser("show", help="results of one experiment")
    p.add_argument("id", type=int)
    p.set_defaults(func=lambda a: _show(a.id))
    add_report_commands(sub)
    sub.add_parser("techniques", help="registered techniques and their knobs").set_defaults(func=_cmd_techniques)
    sub.add_parser("models", help="built-in models").set_defaults(func=_cmd_models)
    sub.add_parser("prepare", help="convert the built-in models once (done on first use otherwise)").set_defaults(
        func=_cmd_prepare)
    p = sub.add_parser("worker", help="run queued jobs")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--device", default="auto",
                   help=f"the device it measures on, and so the jobs it takes ({DEVICES_ALLOWED}; default auto: "
                        f"the first GPU if there is one, else cpu). One worker per device; a job asking for "
                        f"cuda waits for a cuda worker, one asking for auto goes to any")
    p.set_defaults(func=_cmd_worker)
    p = sub.add_parser("cancel", help="cancel a queued or running job (a running one stops within seconds)")
    p.add_argument("job", type=int)
    p.set_defaults(func=_cmd_cancel)
    p = sub.add_parser("_run-job")  # internal: the process a worker runs one job in (no help: not listed)
    p.add_argument("job", type=int)
    p.set_defaults(func=_cmd_run_job)
    sub.metavar = "{" + ",".join(c for c in sub.choices if not c.startswith("_")) + "}"
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
