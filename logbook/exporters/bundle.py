"""One entry point per use: `export` writes files for the CLI; `export_bytes` returns one download.

A download is one file, so the formats that are several files (the Markdown logbook and its PNGs,
a directory of Parquet or CSV tables) come as a zip, and the HTML page (already one file) comes
as it is. The zip is built from the same writers in a temporary directory, so a download and a
CLI export are the same files.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from midflight.logbook.present.text import safe_filename
from midflight.logbook.store.database import Store

FORMATS = ("markdown", "html", "parquet", "csv")
MIME = {"zip": "application/zip", "html": "text/html"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def export(
    store: Store,
    run: str,
    fmt: str,
    out,
    *,
    region: str | None = None,
    intensity_g_per_kwh: float | None = None,
    pue: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write `run` as `fmt` to `out` (markdown: the .md file, html: the .html file, parquet / csv: a
    directory) and return every path written."""
    check_format(fmt)
    from midflight.logbook.store import queries

    if run not in queries.run_ids(store):
        known = ", ".join(queries.run_ids(store)) or "none"
        raise ValueError(f"no run named {run!r} in the store (runs: {known})")
    try:
        return _write(store, run, fmt, Path(out), region, intensity_g_per_kwh, pue, progress)
    except (FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # -o under a file, or a folder the user cannot write: one line for the CLI, not a traceback
        raise ValueError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from exc


def _write(store, run, fmt, out: Path, region, intensity_g_per_kwh, pue, progress) -> list[Path]:
    if fmt in ("parquet", "csv"):
        from midflight.logbook.exporters import tables

        return tables.write(store, run, fmt, out, progress=progress)
    if out.is_dir():
        raise ValueError(f"{str(out)!r} is a directory; for {fmt}, -o names the file to write")
    from midflight.logbook.exporters.content import gather

    book = gather(store, run, region=region, intensity_g_per_kwh=intensity_g_per_kwh, pue=pue, progress=progress)
    if fmt == "markdown":
        from midflight.logbook.exporters import markdown

        return markdown.write(book, out, progress=progress)
    from midflight.logbook.exporters import html_page

    return html_page.write(book, out, progress=progress)


def download_name(run: str, fmt: str) -> tuple[str, str]:
    """(file name, MIME type) of `run`'s download in `fmt`: known before anything is generated."""
    stem = safe_filename(run)
    check_format(fmt)
    if fmt == "html":
        return f"{stem}_logbook.html", MIME["html"]
    suffix = {"markdown": "logbook_markdown", "parquet": "parquet", "csv": "csv"}[fmt]
    return f"{stem}_{suffix}.zip", MIME["zip"]


def export_bytes(store: Store, run: str, fmt: str, **kwargs) -> tuple[str, str, bytes]:
    """(file name, MIME type, contents) of one download: a zip for markdown, parquet and csv; the page for html."""
    name, mime = download_name(run, fmt)
    stem = safe_filename(run)
    with tempfile.TemporaryDirectory(prefix="midflight-export-") as tmp:
        root = Path(tmp)
        if fmt == "html":
            (path,) = export(store, run, fmt, root / name, **kwargs)
            return name, mime, path.read_bytes()
        target = root / f"{stem}_logbook.md" if fmt == "markdown" else root / f"{stem}_{fmt}"
        paths = export(store, run, fmt, target, **kwargs)
        buf = io.BytesIO()
        # PNG and Parquet are compressed already; deflate still shrinks the text formats several-fold
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in paths:
                zf.write(path, path.relative_to(root).as_posix())
        return name, mime, buf.getvalue()
