"""Analysis: pure functions over frames and arrays, with no database and no I/O but package data.

`divergence` (incident detection, online and batch), `energy` (counter arithmetic, grid
intensity, CO2eq, projection), `accounting` (what an abandoned branch cost), `incidents`
(which incidents are still open, and how to annotate one), `progress` (planned steps and ETA).

Rule: imports numpy, pandas and the standard library; never duckdb, never `logbook.store`,
`logbook.report` or `logbook.present`. What they read is handed to them by `logbook.report`.
"""
