"""The wheel as a new user gets it: built from this checkout, installed into a fresh venv next to PyPI's
`Logbook` (import name `logbook`) and Coqui's `trainer`, then the Recorder, the CLI and the dashboard run
from there, far from the repository.

What it guards: the distribution installs only the `midflight` namespace (no top-level `logbook`,
`trainer` or `app` to collide with), declares its dependencies in layers (the Recorder needs orjson
only; a command whose extra is missing says which one), and carries the sample runs and the
dashboard's safe server defaults. The venv is made with uv (seconds, where pip takes a minute); the
packages come from the registry like any user's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
CHROMIUM = Path(os.environ.get("MIDFLIGHT_CHROMIUM", "/usr/bin/chromium"))
SKIP_COPY = {".git", ".venv", "build", "runs", ".midflight", "__pycache__", ".pytest_cache", "midflight.egg-info"}

pytestmark = [pytest.mark.slow, pytest.mark.skipif(UV is None, reason="needs uv (requirements.txt installs it)")]


def sh(cmd: list, *, env: dict | None = None, cwd: Path, check: bool = True, timeout: float = 600):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (a build leaves build/ and *.egg-info behind)."""
    src = tmp_path_factory.mktemp("src") / "midflight"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in SKIP_COPY], symlinks=True)
    dist = src.parent / "dist"
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=src)
    (whl,) = dist.glob("midflight-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    """A fresh venv (no PYTHONPATH, run from a folder far from the checkout) with Logbook, Coqui's trainer
    (its own dependencies left out: only its import name matters here) and then the bare midflight wheel."""
    home = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "VIRTUAL_ENV": str(home / "venv")}
    sh([UV, "venv", "-q", "--python", sys.executable, home / "venv"], env=env, cwd=home)
    sh([UV, "pip", "install", "-q", "Logbook"], env=env, cwd=home)
    sh([UV, "pip", "install", "-q", "--no-deps", "trainer"], env=env, cwd=home)
    sh([UV, "pip", "install", "-q", wheel], env=env, cwd=home)
    env["PATH"] = f"{home / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return home, env


def test_the_wheel_holds_one_namespace_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"midflight", "midflight-0.2.0.dist-info"}
    for needed in (
        "midflight/app/streamlit_config.toml",
        "midflight/app/chart_frontend/chart.js",
        "midflight/app/app_pages/live.py",  # Streamlit's pages: files next to the app, not a package
        "midflight/logbook/analysis/grid_intensity.csv",
        "midflight/sample_runs/opt175b-timeline/opt175b_timeline.csv",
        "midflight/trainer/__main__.py",
    ):
        assert needed in names, needed
    samples = {
        f"midflight/sample_runs/{f.relative_to(ROOT / 'sample_runs')}"
        for f in (ROOT / "sample_runs").rglob("*")
        if f.is_file() and ".midflight" not in f.parts
    }
    assert len(samples) > 100 and samples <= set(names)  # every sample run file travels with the package
    assert not [n for n in names if "/.midflight/" in n or "__pycache__" in n]  # no derived stores or bytecode
    meta = zipfile.ZipFile(wheel).read("midflight-0.2.0.dist-info/METADATA").decode()
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["Requires-Dist: orjson>=3.10"]  # the Recorder's only
    entry = zipfile.ZipFile(wheel).read("midflight-0.2.0.dist-info/entry_points.txt").decode()
    assert "midflight = midflight.__main__:main" in entry


RECORD = """
import importlib.util, sys, logbook, midflight
assert hasattr(logbook, "Logger") and "site-packages/logbook" in logbook.__file__, logbook.__file__  # PyPI's
coqui = importlib.util.find_spec("trainer").origin  # Coqui's (importing it needs torch: only located here)
assert "site-packages/trainer" in coqui and open(coqui).read().startswith("import os"), coqui
run = midflight.init(sys.argv[1], name="bare", config={"lr": 1e-3})
for step in range(1, 31):
    run.log({"loss": 3.0 / step, "lr": 1e-3}, step=step)
run.update_config({"batch": 8})
run.finish()
heavy = sorted(m for m in ("duckdb", "pandas", "numpy", "torch", "streamlit", "plotly", "pyarrow") if m in sys.modules)
print("heavy:", heavy)
"""


def test_the_recorder_runs_beside_logbook_and_coqui_trainer_with_orjson_only(venv):
    home, env = venv
    out = sh(["python", "-c", RECORD, home / "runs" / "bare"], env=env, cwd=home).stdout
    assert "heavy: []" in out
    # the reading commands need the store extra, and say so in one line
    missing = sh(["midflight", "summary", home / "runs" / "bare"], env=env, cwd=home, check=False)
    assert missing.returncode == 2 and "pip install 'midflight[store]'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_cli_and_the_dashboard_run_from_the_installed_extras(venv, wheel):
    home, env = venv
    sh([UV, "pip", "install", "-q", f"{wheel}[dashboard]"], env=env, cwd=home, timeout=900)
    listed = sh([UV, "pip", "list"], env=env, cwd=home).stdout
    assert "duckdb" in listed and "streamlit" in listed and "torch" not in listed  # the trainer extra is apart
    if not (home / "runs" / "bare").exists():
        sh(["python", "-c", RECORD, home / "runs" / "bare"], env=env, cwd=home)
    summary = sh(["midflight", "summary", home / "runs" / "bare"], env=env, cwd=home).stdout
    assert "last loss 0.1" in summary and "energy: no energy data" in summary

    port = _free_port()
    server = subprocess.Popen(["midflight", "dashboard", "--port", str(port)], cwd=home, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_healthy(port, server)
        copied = home / "data" / "midflight" / "sample_runs-0.2.0"
        assert (copied / "opt-tiny-faults" / "segments").is_dir()  # opened from the user's data folder ...
        assert (copied / ".midflight" / "store.duckdb").exists()  # ... where its store goes
        site = Path(sh(["python", "-c", "import midflight; print(midflight.__file__)"], env=env, cwd=home).stdout)
        assert not list(site.parent.rglob(".midflight"))  # never inside site-packages
        _assert_localhost_only(port)
        if CHROMIUM.exists():
            _assert_runs_page_lists(port, "opt-tiny-faults")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, server.stdout.read()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the installed dashboard never became healthy")


def _assert_localhost_only(port: int) -> None:
    """The packaged safe default: bound to 127.0.0.1, so another address of this machine is refused."""
    try:
        others = {ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:  # a host name that does not resolve: only loopback to try, nothing to check
        others = set()
    others = {a for a in others if not a.startswith("127.")}
    for addr in others:
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((addr, port))


def _assert_runs_page_lists(port: int, run: str) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("h1", timeout=60000)
            page.wait_for_function(
                f"() => document.body.innerText.includes({run!r})", timeout=60000
            )  # the run picker names the packaged sample run
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60000)  # the Runs table is drawn
            assert "encountered an error" not in page.inner_text("body")
        finally:
            browser.close()
