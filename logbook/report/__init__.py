"""Reports: answers about one run, read from the store and worked out by analysis.

Each function takes the store and a run id, reads through `logbook.store.queries` (never SQL of
its own) and hands plain frames to `logbook.analysis`. The CLI, the exporters and the dashboard
all ask here, so they say the same thing: `summary` (what `summary --json` prints), `incidents`,
`energy` (metered / estimated / nameplate figures and CO2eq), `wasted` (abandoned branches),
`timeline` (events, interventions, annotations and segment starts in one table) and `progress`.

Rule: imports `logbook.store` and `logbook.analysis`; never `logbook.present`, plotly or streamlit.
"""
