"""The Lineage page's export buttons, driven headless with AppTest on a copy of the sample runs.

The buttons pass a callable as `data`, so nothing is generated until a click. AppTest cannot click
through to a download, so the test records the callables the page registers with Streamlit's
media file manager (calling the real one too) and runs them, as Streamlit's server does on a click.
"""

import io
import zipfile
from pathlib import Path

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app" / "streamlit_app.py")
FAULTS = "opt-tiny-faults"
BUTTONS = {  # key -> (label, file name, first bytes)
    "lineage:export:markdown": ("Markdown (zip)", f"{FAULTS}_logbook_markdown.zip", b"PK\x03\x04"),
    "lineage:export:html": ("HTML", f"{FAULTS}_logbook.html", b"<!DOCTYPE html>"),
    "lineage:export:parquet": ("Parquet (zip)", f"{FAULTS}_parquet.zip", b"PK\x03\x04"),
    "lineage:export:csv": ("CSV (zip)", f"{FAULTS}_csv.zip", b"PK\x03\x04"),
}


pytestmark = pytest.mark.usefixtures("sources")


@pytest.fixture
def deferred(monkeypatch) -> dict:
    """file name -> the callable a download button registered (Streamlit still gets it too)."""
    seen: dict = {}
    real = MediaFileManager.add_deferred

    def recording(self, data_callable, mimetype, coordinates, file_name=None, **kw):
        seen[file_name] = (data_callable, mimetype)
        return real(self, data_callable, mimetype, coordinates, file_name, **kw)

    monkeypatch.setattr(MediaFileManager, "add_deferred", recording)
    return seen


def test_export_buttons_produce_every_format(runs, deferred):
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["run"] = FAULTS
    at.run()
    at.switch_page("app_pages/lineage.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Export this logbook" in [h.value for h in at.subheader]
    for key, (label, file_name, head) in BUTTONS.items():
        button = at.download_button(key=key)
        assert button.label == label
        assert button.proto.deferred_file_id, f"{key}: generated on click, not on every rerun"
        make, mime = deferred[file_name]
        data = make()
        assert isinstance(data, bytes) and len(data) > 1000 and data.startswith(head), key
        assert mime == ("text/html" if file_name.endswith(".html") else "application/zip")
    with zipfile.ZipFile(io.BytesIO(deferred[f"{FAULTS}_logbook_markdown.zip"][0]())) as zf:
        book = zf.read(f"{FAULTS}_logbook.md").decode()
        assert "## Chronicle" in book and "seg-20261125T121203-e5c0d4" in book
        assert zf.read(f"{FAULTS}_logbook_files/loss.png")[:4] == b"\x89PNG"
    with zipfile.ZipFile(io.BytesIO(deferred[f"{FAULTS}_csv.zip"][0]())) as zf:
        assert zf.read(f"{FAULTS}_csv/metrics.csv").startswith(b"run_id,segment_id,rank,step,name,value")
