"""Compare: pick runs from any experiments (filtered; the selection in the URL); a table with a diff-only toggle,
the speed-vs-quality Pareto front, and a report of the selection."""
import streamlit as st

from lab.views import compare, experiments
from ui.charts_view import show_pareto
from ui.export_view import show_downloads
from ui.navigation import route_through_app

route_through_app()

st.set_page_config(page_title="Compare · Efficiency Lab", layout="wide")
st.title("Compare runs")
st.write("Pick runs from any experiments. Rows are settings, environment and metrics; columns are runs.")

choices = compare.run_choices()
if not choices:
    st.info("No runs yet. Run the quick start on the LLM Lab page first.")
    st.stop()
labels = {c["id"]: c["label"] for c in choices}
from_url, unknown = experiments.runs_from_param(st.query_params.get("runs"), set(labels))
if unknown:
    st.warning(f"The link names runs this store does not hold: {', '.join(unknown)}.")

options_by_filter = experiments.filter_options()
columns = st.columns(len(experiments.FILTERS))
filters = {name: col.selectbox(f"Filter by {name}", [""] + options_by_filter[name],
                               format_func=lambda v: v or "any", key=f"filter_{name}")
           for col, name in zip(columns, experiments.FILTERS)}
shown_experiments = experiments.matching_experiment_ids(filters)
offered = [c for c in choices if c["experiment_id"] in shown_experiments]
# what the link (or the last pick) names and the filters let through, else the newest experiment offered
default = [i for i in from_url if i in {c["id"] for c in offered}] or compare.default_selection(offered)
offered = [c["id"] for c in offered]
picked = st.multiselect("Runs", offered, default=default, format_func=lambda i: labels[i])
st.query_params["runs"] = experiments.runs_param(picked)  # the selection is in the URL: the link opens this view
if not picked:
    st.info("Pick at least one run.")
    st.stop()
for line in compare.environment_differences(picked):
    st.warning(f"The picked runs differ in environment, {line}: read their numbers across with care.")

table = compare.comparison_table(picked)
diff_only = st.toggle("Show only rows that differ", value=False)
if diff_only:
    table = compare.only_differences(table)
st.table(table)

names = {name for name in compare.scatter_points(picked).columns if name != "run"}
show_pareto(picked, names, key="compare_pareto")
st.caption("Each point is a run's median. Runs from different experiments may differ in environment: check the "
           "environment rows above before reading across experiments.")
show_downloads(run_ids=picked, key="compare_report")
