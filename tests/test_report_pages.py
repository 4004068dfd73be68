"""The report's download bytes (one file per format, Markdown zipped with its PNGs, the same bytes twice) and the
new controls on the pages: charts on the experiment view, the Pareto front and a report on Compare."""
import io
import zipfile

import pytest

from lab.report import download
from tests.test_pages import page
from tests.test_report import two_experiments  # noqa: F401 (a fixture)


def test_markdown_downloads_as_a_zip_of_the_file_and_its_charts(two_experiments):  # noqa: F811
    data = download.report_bytes("md", experiment_ids=two_experiments[:1])
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    md = f"experiment-{two_experiments[0]}.md"
    assert md in names and any(n.endswith(".png") for n in names)
    text = zipfile.ZipFile(io.BytesIO(data)).read(md).decode()
    pngs = [n for n in names if n.endswith(".png")]
    assert all(n in text for n in pngs)  # every PNG in the zip is linked from the Markdown by its relative path


@pytest.mark.parametrize("fmt", list(download.MIME))
def test_every_format_gives_the_same_bytes_twice(two_experiments, fmt):  # noqa: F811
    first = download.report_bytes(fmt, run_ids=[1, 2])
    assert first and first == download.report_bytes(fmt, run_ids=[1, 2])
    assert download.file_name(fmt, run_ids=[2, 1]).startswith("runs-1-2.")


def test_an_unknown_format_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="html, md, csv, json"):
        download.report_bytes("pdf", experiment_ids=[1])


def test_the_experiment_view_draws_speedup_quality_and_pareto_charts_and_offers_reports(two_experiments):  # noqa
    at = page("pages/1_LLM_Lab.py", experiment=str(two_experiments[0]))
    assert not at.exception and not at.error
    assert len(at.get("vega_lite_chart")) >= 3  # speedup, quality, the Pareto front (and the KV views' own)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == [download.LABELS[f] for f in download.MIME]
    front = next(c.value for c in at.caption if c.value.startswith("Pareto front"))
    assert "snapkv | 50%" in front  # 1.6x at 92% similarity: nothing beats it on both


def test_compare_draws_the_pareto_front_of_the_selection_and_offers_its_report(two_experiments):  # noqa: F811
    at = page("pages/3_Compare.py", runs="1,2,3")
    assert not at.exception
    assert len(at.get("vega_lite_chart")) == 1
    assert [b.proto.label for b in at.get("download_button")] == [download.LABELS[f] for f in download.MIME]
