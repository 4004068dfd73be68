"""One self-contained HTML file a colleague opens offline: no script, no stylesheet, font or image fetched from
anywhere (charts are inline SVG, images data: URIs). Every text that came from a user or a model (names,
prompts, outputs, notes, the spec) goes through html.escape, so a prompt holding markup shows as text."""
from __future__ import annotations

from html import escape

from lab.report import digest
from lab.report.chartset import ReportChart, comparison_chart, experiment_charts, svg
from lab.report.images import image_grids
from lab.views.verdict import verdicts

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .3rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } td.text { white-space: pre-wrap; max-width: 28rem; word-break: break-word; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .1rem 1rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
dl.definitions dt { font-weight: 600; } .hint { color: #666; font-size: .85rem; }
.warning { background: #fff4e5; border-left: 4px solid #f0a000; padding: .4rem .8rem; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: .9rem; }
img.grid { image-rendering: pixelated; max-width: 100%; display: block; margin: .2rem 0; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: .6rem; overflow-x: auto; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; } nav { display: none; }
  section.experiment { break-before: page; } tr, figure, img, svg { break-inside: avoid; }
  pre, td.text { white-space: pre-wrap; word-break: break-word; } th { background: none; }
  a { color: inherit; text-decoration: none; }
}
"""
TEXT_CELL = '<td class="text">'


def _table(header: list[str], rows: list[list[str]], text_from: int | None = None) -> str:
    """A table; columns from `text_from` on hold free text (kept on their own lines, wrapped)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [(TEXT_CELL if text_from is not None and i >= text_from else "<td>") + f"{escape(c)}</td>"
                 for i, c in enumerate(row)]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _chart(chart: ReportChart) -> str:
    return f'<figure class="chart" id="{escape(chart.key)}">\n{svg(chart)}\n<figcaption>{escape(chart.title)}' \
           f'</figcaption>\n</figure>'


def _image(png: str, alt: str) -> str:
    return f'<img class="grid" alt="{escape(alt)}" src="data:image/png;base64,{png}">'


def _grids(experiment: dict) -> list[str]:
    parts = []
    for g in image_grids(experiment):
        rows = [("baseline", g["baseline_png"]), (g["variant"], g["variant_png"]),
                ("difference (white = identical)", g["difference_png"])]
        images = "\n".join(f"<p class=\"hint\">{escape(label)}</p>\n{_image(png, label)}"
                           for label, png in rows if png)
        parts.append(f"<figure>\n{images}\n<figcaption>{escape(g['variant'])}: "
                     f"{escape(', '.join(g['captions']))}</figcaption>\n</figure>")
    return parts


def _outputs(experiment: dict) -> list[str]:
    if digest.is_diffusion(experiment):
        grids = _grids(experiment)
        return ["<h3>Images</h3>", *grids] if grids else []
    header, rows, total = digest.outputs_table(experiment)
    if not rows:
        return []
    more = f" (the first {len(rows)} of {total}; the JSON export holds all)" if total > len(rows) else ""
    return ["<h3>Outputs</h3>", f'<p class="hint">Each prompt with every variant\'s output beside it{more}.</p>',
            _table(header, rows, text_from=1)]


def _experiment(data: dict, exp: dict) -> str:
    facts = "\n".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in digest.facts(exp))
    header, rows = digest.results_table(data, exp)
    defs = "\n".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in digest.definitions(data, exp))
    env_header, env_rows = digest.environment_table(exp)
    parts = [f'<section class="experiment" id="experiment-{exp["id"]}">',
             f"<h2>#{exp['id']} {escape(exp['name'])}</h2>", f'<dl class="facts">\n{facts}\n</dl>']
    if exp.get("busy_warning"):
        parts.append(f'<p class="warning">Measured on a busy machine: {escape(exp["busy_warning"])}; timings may be '
                     f"wrong.</p>")
    found = verdicts(exp)
    if found:
        items = "\n".join(f"<li><strong>{escape(v.variant)}</strong>: <strong>{escape(v.headline)}</strong>"
                           f"{escape(v.flag_note())}{''.join(' · ' + escape(p) for p in v.parts)}</li>" for v in found)
        parts += ["<h3>Verdict</h3>", f'<ul class="verdicts">\n{items}\n</ul>']
    parts += ["<h3>Results</h3>", _table(header, rows),
              '<p class="hint">median (p10–p90) over n samples; a speedup is paired against the baseline in the same '
              "process.</p>", f'<dl class="definitions">\n{defs}\n</dl>']
    charts = experiment_charts(exp)
    if charts:
        parts += ["<h3>Charts</h3>", *(_chart(c) for c in charts)]
    parts += _outputs(exp)
    parts += ["<h3>Environment</h3>", _table(env_header, env_rows, text_from=1),
              "<h3>Spec</h3>", f"<pre>{escape(digest.spec_json(exp))}</pre>",
              "<h3>Re-run</h3>", f"<pre><code>{escape(data['rerun'])}</code></pre>",
              '<p class="hint">with this report exported as JSON (<code>--format json</code>), or with the spec above '
              "saved as a .json file.</p>", "</section>"]
    return "\n".join(parts)


def to_html(data: dict) -> str:
    """The report as one HTML document (str); the same data always gives the same text."""
    names = ", ".join(f"#{e['id']} {e['name']}" for e in data["experiments"])
    nav = "\n".join(f'<li><a href="#experiment-{e["id"]}">#{e["id"]} {escape(e["name"])}</a></li>'
                    for e in data["experiments"])
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>Efficiency Lab report: {escape(names)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             "<header>", "<h1>Efficiency Lab report</h1>",
             f'<p class="hint">{len(data["experiments"])} experiment(s); report format {data["version"]}.</p>',
             f"<nav><ul>\n{nav}\n</ul></nav>", "</header>"]
    comparison = comparison_chart(data)
    if comparison is not None:
        parts += ['<section id="comparison">', "<h2>Across experiments</h2>", _chart(comparison), "</section>"]
    parts += [_experiment(data, exp) for exp in data["experiments"]]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
