"""Exporters: a run's logbook as files people keep, and its data as tables other tools read.

`midflight export {markdown,html,parquet,csv} RUN_DIR -o OUT`, or from Python:

    export(store, run, "markdown", "midflight.logbook.md")          # -> [paths written]
    export_bytes(store, run, "html") -> (file name, MIME type, bytes)   # one download (zip or page)

Modules, one concept each: `content` gathers a run from the store into one plain structure;
`document` words it once, format-neutrally; `markdown` (+ `png`, matplotlib) and `html_page`
(+ `interactive`, Plotly) render it; `tables` writes Parquet / CSV; `text` escapes and formats;
`bundle` is the entry point; `cli` the subcommand. Heavy libraries (matplotlib, plotly) are
imported only by the writer that needs them.
"""

from midflight.logbook.exporters.bundle import FORMATS, download_name, export, export_bytes

__all__ = ["FORMATS", "download_name", "export", "export_bytes"]
