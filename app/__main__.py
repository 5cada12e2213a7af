"""Launch the dashboard: `midflight dashboard [PATH ...] [--demo] [--port N] [--address HOST]`.

PATH is a run directory or a folder of runs (default: sample_runs/). --demo also starts
a short live CPU training run with injected faults (2 ranks under torchrun) in
runs/live-demo, so the live page, incidents and interventions have something to do.
Streamlit gets the safe defaults of app/streamlit_config.toml (localhost only, no usage
statistics, XSRF on, no tracebacks) as command-line options, so they hold wherever it runs
from, an installed package included; `.streamlit/config.toml` links to the same file.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

from midflight.app import HOME, child_env, sample_runs

SERVER_CONFIG = HOME / "app" / "streamlit_config.toml"
DEMO_STEPS = 3000


def demo_command(run_dir: Path, steps: int = DEMO_STEPS) -> list[str]:
    """The live demo: the trainer's tiny OPT preset on 2 CPU ranks, fp16, meeting OPT-175B's troubles."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=2",
        "-m", "midflight.trainer", "--model", "tiny", "--steps", str(steps), "--run-dir", str(run_dir),
        "--name", "live-demo",
        "--precision", "fp16", "--fsdp", "fsdp2", "--data.seq_len=64", "--data.batch_size=8",
        "--checkpoint.every=50", "--log.print_every=50", "--telemetry.hz=2", "--precision.growth_interval=100",
        "--inject", "overflow@150-152", "--inject", "spike@300", "--inject", "crash@420",
        "--inject", "slow-rank@600-630", "--faults.slow_rank_s=0.15",
    ]  # fmt: skip


def server_options(path: Path) -> list[str]:
    """Every setting of a Streamlit config file as `--section.key=value` options (later options override them)."""
    with open(path, "rb") as f:
        config = tomllib.load(f)
    out = []
    for section, values in config.items():
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out.append(f"--{section}.{key}={text}")
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="midflight dashboard", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, help="run directories or folders of runs (default: sample_runs/)")
    ap.add_argument("--demo", action="store_true", help="also start a live CPU demo run with injected faults")
    ap.add_argument("--demo-dir", type=Path, default=Path("runs") / "live-demo", help="where the demo run writes")
    ap.add_argument("--demo-steps", type=int, default=DEMO_STEPS)
    ap.add_argument("--port", type=int, default=8501)
    ap.add_argument("--address", default="127.0.0.1", help="bind address (default: localhost only)")
    args = ap.parse_args(argv)
    paths = args.paths or [sample_runs()]
    for p in paths:
        if not p.is_dir():
            ap.error(f"{str(p)!r} does not exist or is not a folder (give a run directory or a folder of runs)")
    if not 0 < args.port < 65536:
        ap.error(f"--port {args.port}: use 1-65535")
    if args.demo_steps < 1:
        ap.error("--demo-steps must be >= 1")
    args.paths = [p.resolve() for p in paths]
    return args


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 3600.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a SIGTERM stops the children too (finally below)
    env = child_env()
    children: list[subprocess.Popen] = []
    roots = list(args.paths)
    if args.demo:
        demo = args.demo_dir.resolve()
        shutil.rmtree(demo, ignore_errors=True)  # the demo's own folder: a fresh run every time
        demo.mkdir(parents=True)
        roots.append(demo)
        log = open(demo.parent / "live-demo.log", "w")
        children.append(
            subprocess.Popen(
                demo_command(demo, args.demo_steps),
                env={**env, "OMP_NUM_THREADS": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        print(f"midflight: live demo run training in {demo} (its output: {log.name})", flush=True)
    cmd = [
        sys.executable, "-m", "midflight.app.serve", "run", str(HOME / "app" / "streamlit_app.py"),
        *server_options(SERVER_CONFIG), "--server.port", str(args.port), "--server.address", args.address, "--",
    ]  # fmt: skip
    for r in roots:
        cmd += ["--runs", str(r)]
    children.append(subprocess.Popen(cmd, env=env))
    try:
        if wait_healthy(args.port, children[-1]):  # after the first ingest, which app.serve does before starting
            shown = "localhost" if args.address in ("127.0.0.1", "localhost") else args.address
            print(f"midflight: dashboard at http://{shown}:{args.port} (Ctrl-C to stop)", flush=True)
        return children[-1].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGINT if c is children[-1] else signal.SIGTERM)
        for c in children:
            try:
                c.wait(timeout=15)
            except subprocess.TimeoutExpired:
                c.kill()


if __name__ == "__main__":
    sys.exit(main())
