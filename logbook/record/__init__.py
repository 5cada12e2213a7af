"""The write side: what a training process imports to record a run.

The Recorder (`recorder`), the event-log record format (`records`), the run directory's
layout (`layout`), rank discovery (`dist`), segment headers (`segments`), and the two
append-only audit files people write to while a run is live: `annotations` and
`interventions` (whose action table is the whole intervention vocabulary).

Rule: this package imports only the standard library, orjson and itself, so a trainer that
records a run never loads DuckDB, pandas, plotly, torch or streamlit through midflight.
"""
