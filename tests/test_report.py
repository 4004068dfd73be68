"""Reports a colleague opens offline (HTML, Markdown, CSV, JSON) from a store holding an LLM-like and a
diffusion-like experiment, written here row by row (no model runs); the JSON import back into a store; and the
specs `python -m lab run report.json` queues."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime

import pytest
from sqlalchemy import func, select

from lab import store
from lab.cli import main
from lab.report.collect import EmptySelection, NotInStore, SelectionError, report_data
from lab.report.html import to_html
from lab.report.importer import ReportFormatError, import_experiments, import_report
from lab.report.markdown import md_text, to_markdown
from lab.report.rerun import raw_specs, run_specs
from lab.report.tabular import CSV_COLUMNS, to_csv, to_json

SCRIPT = "<script>alert(1)</script>"
LINK = "[x](http://evil)"
LLM_SPEC = {"name": "kv study", "model": "smollm2-135m-instruct", "workload": "chat", "prompts": 2,
            "max_new_tokens": 8, "repeats": 3, "warmup": 1, "variants": [
                {"name": "baseline", "engine": "lab", "techniques": []},
                {"name": "snapkv | 50%", "engine": "lab", "techniques": [{"name": "snapkv", "compression_ratio": 0.5}]},
                {"name": "streaming", "engine": "lab", "techniques": [{"name": "streaming_llm"}]}]}
DIGITS_SPEC = {"name": "cache study", "model": "digits-dit", "workload": "digits", "classes": [0, 1], "steps": 20,
               "variants": [{"name": "baseline", "engine": "lab", "techniques": []},
                            {"name": "block cache", "engine": "lab", "techniques": [{"name": "block_cache"}]},
                            {"name": "fewer steps", "engine": "lab",
                             "techniques": [{"name": "step_reduction", "steps": 10}]}]}
# metric -> (median, p10, p90, n) per variant
LLM_METRICS = [{"speedup": (1.0, 1.0, 1.0, 6), "tpot_ms": (20.0, 19.0, 22.0, 6), "agreement": (100.0, 100.0, 100.0, 2),
                "answer_similarity": (100.0, 100.0, 100.0, 2)},
               {"speedup": (1.6, 1.4, 1.8, 6), "tpot_ms": (12.5, 11.0, 14.0, 6), "agreement": (80.0, 70.0, 90.0, 2),
                "answer_similarity": (92.0, 90.0, 94.0, 2)},
               {"speedup": (1.2, 0.9, 1.5, 6), "tpot_ms": (16.7, 15.0, 18.0, 6), "agreement": (60.0, 50.0, 70.0, 2),
                "answer_similarity": (85.0, 80.0, 90.0, 2)}]
DIGITS_METRICS = [{"speedup": (1.0, 1.0, 1.0, 3), "psnr_db": (None, None, None, 2),
                   "blocks_computed": (100.0, 100.0, 100.0, 1)},
                  {"speedup": (1.8, 1.7, 1.9, 3), "psnr_db": (30.0, 28.0, 32.0, 2),
                   "blocks_computed": (50.0, 50.0, 50.0, 1)},
                  {"speedup": (2.0, 1.9, 2.1, 3), "psnr_db": (25.0, 24.0, 26.0, 2),
                   "blocks_computed": (50.0, 50.0, 50.0, 1)}]


def _metric(name: str, median, p10, p90, n) -> store.Metric:
    samples = [median] * n if median is not None else [None] * n
    return store.Metric(name=name, value=median, p10=p10, p90=p90, n=n, unit="x" if name == "speedup" else "",
                        samples=samples)


def _add_experiment(spec: dict, metrics: list[dict], outputs) -> int:
    with store.session() as s:
        exp = store.Experiment(name=spec["name"], spec=spec, spec_hash="abc", status="done",
                               created_at=datetime(2026, 1, 2, 3, 4, 5), finished_at=datetime(2026, 1, 2, 3, 9, 0))
        for i, (variant, values) in enumerate(zip(spec["variants"], metrics)):
            run = store.Run(position=i, variant=variant["name"], is_baseline=i == 0,
                            params={"techniques": variant["techniques"], "engine": "lab"},
                            environment={"device": "cpu", "threads": 2, "lab_commit": "abc123", "torch": "2.13.0"})
            run.metrics = [_metric(name, *v) for name, v in values.items()]
            run.outputs = [store.Output(**o) for o in outputs(i)]
            exp.runs.append(run)
        s.add(exp)
        s.flush()
        return exp.id


def _llm_outputs(i: int) -> list[dict]:
    return [{"item_index": j, "item_key": f"chat-{j}", "prompt": prompt, "text": f"answer {j} of variant {i}",
             "token_ids": [1, 2, 3 + i], "extra": {"stop": "eos"}} for j, prompt in enumerate([SCRIPT, LINK])]


def _digit_outputs(i: int) -> list[dict]:
    return [{"item_index": j, "item_key": f"digit-{j}", "prompt": str(j), "text": "", "token_ids": [],
             "extra": {"pixels": [(k * (j + 1) + 7 * i) % 256 for k in range(256)], "label": j, "predicted": j}}
            for j in range(2)]


@pytest.fixture
def two_experiments() -> list[int]:
    return [_add_experiment(LLM_SPEC, LLM_METRICS, _llm_outputs),
            _add_experiment(DIGITS_SPEC, DIGITS_METRICS, _digit_outputs)]


def test_html_is_one_offline_file_with_charts_tables_outputs_images_and_escaped_text(two_experiments):
    page = to_html(report_data(two_experiments))
    assert not re.search(r"<script\b", page)  # no script at all: the prompt's is escaped text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)  # nothing fetched from anywhere
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # per experiment: speedup, first quality metric, Pareto; plus the Pareto across the two experiments
    assert page.count("<svg") == 7
    assert page.count('src="data:image/png;base64,') == 2 * 3  # two variants x baseline, variant, difference
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "[x](http://evil)" in page
    assert "snapkv | 50%" in page and "1.60 (1.40–1.80) n=6" in page and "@media print" in page
    assert "python -m lab run report.json" in page and "&quot;compression_ratio&quot;: 0.5" in page
    assert page.index("chat-0") < page.index("answer 0 of variant 0") < page.index("answer 0 of variant 2")


def test_markdown_escapes_user_text_and_links_its_png_charts_relatively(two_experiments, tmp_path):
    text = to_markdown(report_data(two_experiments), tmp_path / "report_files")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and SCRIPT not in text
    assert r"\[x\](http://evil)" in text and LINK not in text
    assert r"snapkv \| 50%" in text  # a pipe in a name does not split the table's cell
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 7 + 2 * 3 and all(link.startswith("report_files/") for link in links)
    for link in links:
        assert (tmp_path / link).read_bytes().startswith(b"\x89PNG")


def test_md_text_renders_as_the_text_itself():
    assert md_text("a|b `c` *d* _e_ [f] <g> & h\ni") == r"a\|b \`c\` \*d\* \_e\_ \[f\] &lt;g&gt; &amp; h<br>i"


def test_csv_has_one_row_per_run_and_metric(two_experiments):
    rows = list(csv.DictReader(io.StringIO(to_csv(report_data(two_experiments)))))
    assert len(rows) == 3 * 4 + 3 * 3
    first = rows[4]
    assert first == {"experiment": str(two_experiments[0]), "run": first["run"], "variant": "snapkv | 50%",
                     "metric": "speedup", "median": "1.6", "p10": "1.4", "p90": "1.8", "n": "6", "unit": "x",
                     "origin": "local", "busy": "", "noise": ""}
    baseline_psnr = next(r for r in rows if r["metric"] == "psnr_db")
    assert baseline_psnr["median"] == "" and baseline_psnr["n"] == "2"


def test_every_csv_row_carries_its_origin_busy_and_noise_flags(two_experiments):
    llm, digits = two_experiments
    with store.session() as s:  # the digits study: a colleague's, measured while other work ran
        exp = s.get(store.Experiment, digits)
        exp.origin = store.ORIGIN_IMPORTED
        for run in exp.runs:
            run.environment = {**run.environment, "cores": 2, "other_cpu_share": 0.6}
    rows = list(csv.DictReader(io.StringIO(to_csv(report_data(two_experiments)))))
    assert list(rows[0]) == CSV_COLUMNS and all(None not in r for r in rows)
    of = {(r["experiment"], r["variant"], r["metric"]): r for r in rows}
    assert {r["origin"] for r in rows if r["experiment"] == str(llm)} == {"local"}
    assert {r["origin"] for r in rows if r["experiment"] == str(digits)} == {"imported"}
    assert {r["busy"] for r in rows if r["experiment"] == str(llm)} == {""}
    assert all(r["busy"].startswith("other processes used 60% of the CPU time") for r in rows
               if r["experiment"] == str(digits))
    # the results table's note beside a ratio: streaming's speedup spans 1 (0.9-1.5); snapkv's does not
    assert of[(str(llm), "streaming", "speedup")]["noise"] == "within noise"
    assert of[(str(llm), "snapkv | 50%", "speedup")]["noise"] == ""
    assert of[(str(llm), "baseline", "speedup")]["noise"] == ""  # 1 by construction
    assert of[(str(llm), "streaming", "tpot_ms")]["noise"] == ""  # not a ratio to the baseline
    assert of[(str(digits), "block cache", "speedup")]["noise"] == ""  # 3 pairs, 1.7-1.9: told from noise


def test_json_holds_everything_and_names_the_rerun_command(two_experiments):
    data = json.loads(to_json(report_data(two_experiments)))
    llm, digits = data["experiments"]
    assert data["format"] == "efficiency-lab-report" and data["version"] == 1
    assert data["rerun"] == "python -m lab run report.json" and llm["spec"] == LLM_SPEC
    assert llm["created_at"] == "2026-01-02T03:04:05" and llm["runs"][0]["environment"]["lab_commit"] == "abc123"
    speedup = llm["runs"][1]["metrics"][0]
    assert speedup == {"name": "speedup", "median": 1.6, "p10": 1.4, "p90": 1.8, "n": 6, "unit": "x",
                       "samples": [1.6] * 6}
    assert llm["runs"][0]["outputs"][0]["prompt"] == SCRIPT
    assert digits["runs"][1]["outputs"][0]["image_png"]  # the digits' pixels as a PNG, beside the pixels
    assert data["metrics"]["agreement"]["kind"] == "quality"


def test_exporting_twice_gives_the_same_bytes(two_experiments, tmp_path):
    assert to_html(report_data(two_experiments)) == to_html(report_data(two_experiments))
    assert to_json(report_data(two_experiments)) == to_json(report_data(two_experiments))
    assert to_csv(report_data(two_experiments)) == to_csv(report_data(two_experiments))
    first = to_markdown(report_data(two_experiments), tmp_path / "a_files")
    second = to_markdown(report_data(two_experiments), tmp_path / "b_files")
    assert first.replace("a_files/", "") == second.replace("b_files/", "")
    assert [p.read_bytes() for p in sorted((tmp_path / "a_files").iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "b_files").iterdir())]


def test_a_run_selection_reports_only_those_runs_grouped_by_experiment(two_experiments):
    full = report_data(two_experiments)
    chosen = [full["experiments"][1]["runs"][2]["id"], full["experiments"][0]["runs"][1]["id"]]
    data = report_data(run_ids=chosen)
    assert [[r["variant"] for r in e["runs"]] for e in data["experiments"]] == [["snapkv | 50%"], ["fewer steps"]]
    assert data["selection"] == {"runs": sorted(chosen)}


def test_unknown_ids_and_empty_selections_are_refused_by_name(two_experiments):
    with pytest.raises(NotInStore, match="no experiment with id 99") as e:
        report_data([two_experiments[0], 99])
    assert isinstance(e.value, LookupError) and e.value.ids == [99]
    with pytest.raises(NotInStore, match="no runs with ids 500, 501"):
        report_data(run_ids=[500, 501])
    with pytest.raises(EmptySelection, match="nothing to report"):
        report_data([])
    with pytest.raises(SelectionError, match="not both"):
        report_data([two_experiments[0]], run_ids=[1])


def test_an_experiment_without_runs_still_reports_its_spec(tmp_path):
    with store.session() as s:
        exp = store.Experiment(name="queued <b>", spec=LLM_SPEC, spec_hash="h", status="failed")
        s.add(exp)
        s.flush()
        exp_id = exp.id
    data = report_data([exp_id])
    page = to_html(data)
    assert "queued &lt;b&gt;" in page and "<svg" not in page and "&quot;kv study&quot;" in page
    assert to_csv(data) == ",".join(CSV_COLUMNS) + "\n"
    assert "kv study" in to_markdown(data, tmp_path / "charts")


def _experiment_count() -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(store.Experiment))


def _comparable(exp: dict) -> list:
    return [(r["variant"], r["is_baseline"], r["params"], r["environment"], r["metrics"],
             [{k: v for k, v in o.items()} for o in r["outputs"]]) for r in exp["runs"]]


def test_json_import_round_trip_keeps_every_metric_and_says_where_it_came_from(two_experiments, tmp_path):
    original = report_data(two_experiments)
    path = tmp_path / "from-alice.json"
    path.write_text(to_json(original), encoding="utf-8")
    new_ids = import_experiments(path)
    assert len(new_ids) == 2 and not set(new_ids) & set(two_experiments)
    imported = report_data(new_ids)
    for before, after in zip(original["experiments"], imported["experiments"]):
        assert _comparable(after) == _comparable(before)
        assert after["spec"] == before["spec"] and after["status"] == "done"
        assert after["created_at"] == before["created_at"] and after["finished_at"] == before["finished_at"]
        assert after["origin"] == "imported"
        assert after["imported_from"] == {"file": "from-alice.json", "original_id": before["id"],
                                          "exported_at_commit": "abc123"}


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON (line 1, column 2"),
    ('{"format": "something else"}', "not an Efficiency Lab report"),
    ('{"format": "efficiency-lab-report", "version": 2, "experiments": []}', "version 2 is not supported"),
    ('{"format": "efficiency-lab-report", "version": 1, "experiments": []}', "non-empty list"),
    ('{"format": "efficiency-lab-report", "version": NaN}', "NaN is not a JSON value"),
    ('{"format": "efficiency-lab-report", "version": 1, "experiments": [{"id": 1, "name": "x", "spec": {}, '
     '"runs": {}}]}', "experiments[0].runs has the wrong type (dict)"),
])
def test_a_malformed_report_is_refused_and_writes_nothing(two_experiments, tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    before = _experiment_count()
    with pytest.raises(ReportFormatError, match=re.escape(problem)):
        import_experiments(path)
    assert _experiment_count() == before


def test_a_report_broken_in_its_last_experiment_imports_none_of_them(two_experiments, tmp_path):
    data = report_data(two_experiments)
    del data["experiments"][1]["runs"][2]["metrics"][0]["n"]
    path = tmp_path / "half.json"
    path.write_text(to_json(data))
    before = _experiment_count()
    with pytest.raises(ReportFormatError, match=r"experiments\[1\].runs\[2\].metrics\[0\] has no 'n'"):
        import_experiments(path)
    assert _experiment_count() == before


def test_import_report_takes_one_experiment_and_refuses_several(two_experiments, tmp_path):
    both, one = tmp_path / "both.json", tmp_path / "one.json"
    both.write_text(to_json(report_data(two_experiments)))
    one.write_text(to_json(report_data([two_experiments[1]])))
    with pytest.raises(ReportFormatError, match="several experiments"):
        import_report(both)
    assert _experiment_count() == 2
    new_id = import_report(one)
    assert new_id == 3 and report_data([new_id])["experiments"][0]["name"] == "cache study"


def test_the_cli_exports_imports_and_rerun_reads_the_embedded_specs(two_experiments, tmp_path, capsys):
    out = tmp_path / "out" / "report.json"
    assert main(["report", *map(str, two_experiments), "-o", str(out)]) == 0  # format from the suffix
    assert json.loads(out.read_text())["rerun"] == "python -m lab run report.json"
    assert main(["report", str(two_experiments[0]), "--format", "md", "-o", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r_files").is_dir() and "r_files/" in (tmp_path / "r.md").read_text()
    assert main(["report", "99", "-o", str(tmp_path / "x.html")]) == 2 and not (tmp_path / "x.html").exists()
    assert "no experiment with id 99" in capsys.readouterr().err
    single = tmp_path / "one.json"
    assert main(["report", "--runs", "1,2", "-o", str(single)]) == 0
    assert main(["import", str(single)]) == 0 and "imported experiment 3" in capsys.readouterr().out
    assert raw_specs(out) == [LLM_SPEC, DIGITS_SPEC]
    specs = run_specs(out, check_model_exists=False)
    assert [(s.name, s.workload, [v.name for v in s.variants]) for s in specs] == [
        ("kv study", "chat", ["baseline", "snapkv | 50%", "streaming"]),
        ("cache study", "digits", ["baseline", "block cache", "fewer steps"])]


def test_rerun_reads_a_plain_json_spec_and_refuses_a_report_without_one(tmp_path):
    from lab.errors import SpecError
    plain = tmp_path / "spec.json"
    plain.write_text(json.dumps(DIGITS_SPEC))
    assert raw_specs(plain) == [DIGITS_SPEC]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "efficiency-lab-report", "version": 1, "experiments": [{"name": "x"}]}))
    with pytest.raises(SpecError, match=r"experiments\[0\] has no spec"):
        raw_specs(broken)
