"""Screenshots of every dashboard page for the docs: docs/screenshots/<page>.png.

    python examples/screenshots.py            # the sample runs (a copy, so the store stays out of the repo)

Starts the real server (`midflight dashboard`) on a copy of sample_runs/, opens each page on
opt-tiny-faults in headless Chromium (Debian's /usr/bin/chromium) and saves a PNG.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"runs": "", "live": "live", "lineage": "lineage", "incidents": "incidents", "energy": "energy",
         "compare": "compare"}  # fmt: skip
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--run", default="opt-tiny-faults")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="midflight-shots-"))
    shutil.copytree(ROOT / "sample_runs", work / "runs", ignore=shutil.ignore_patterns(".midflight"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "midflight.app", str(work / "runs"), "--port", str(port)], cwd=ROOT
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    print("the dashboard did not start", file=sys.stderr)
                    return 1
                time.sleep(0.3)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            for i, (name, path) in enumerate(PAGES.items(), 1):
                page.goto(f"http://127.0.0.1:{port}/{path}?run={args.run}")
                page.wait_for_selector("h1", timeout=60000)
                page.wait_for_function(
                    "() => document.querySelector('[data-testid=stApp]')"
                    ".getAttribute('data-test-script-state') === 'notRunning'",
                    timeout=60000,
                )
                time.sleep(3)  # the incident scan and the charts' drawing
                page.reload()
                page.wait_for_selector("h1", timeout=60000)
                time.sleep(4)
                out = args.out / f"{name}.png"
                page.screenshot(path=str(out), full_page=True)
                print(f"[{i}/{len(PAGES)}] {out.relative_to(ROOT)}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
