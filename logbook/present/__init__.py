"""What people see, shared by the dashboard (app/) and the exported logbooks (logbook/exporters/).

`palette` (colours), `text` (escaping user text for HTML and Markdown, numbers, times, energy and
mass for people), `markers` (the typed markers drawn on every chart), `tree` (the restart tree's
lanes) and `figures` (the Plotly figures). One definition each, so a page and an export agree.

Rule: imports `logbook.analysis` (its types) and plotly; never duckdb, `logbook.store`,
`logbook.report` or streamlit: it turns data it is given into something to look at.
"""
