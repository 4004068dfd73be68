"""Reports a colleague opens offline, and imports back: collect.report_data reads experiments (or chosen runs)
into plain data; tabular (JSON, CSV), markdown and html render it; importer reads a JSON report into a store;
rerun gives `python -m lab run` the specs a report embeds."""
