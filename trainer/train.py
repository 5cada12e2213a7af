"""Entry point: parse -> join the process group -> train segment after segment -> tear down.

    python -m midflight.trainer --model tiny --steps 300 --run-dir runs/demo --inject spike@120
    torchrun --nproc-per-node 2 --max-restarts 3 -m midflight.trainer --model tiny --run-dir runs/demo \
        --inject crash@150

A crash propagates (the logbook records it) and torchrun's --max-restarts brings the job
back from the latest checkpoint. A rewind intervention ends the segment cleanly and the
next one starts here, in the same processes.
"""

from __future__ import annotations

import signal
import sys
import warnings

import torch.distributed as dist

from . import build, cli


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # torchrun stops workers with SIGTERM: record "crashed", not silence


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # midflight's warnings are written for people, not as source locations


def main(argv=None) -> int:
    warnings.formatwarning = _one_line
    try:
        launch = cli.parse(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if launch is None:  # --presets
        print(build.preset_table())
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    try:
        info = build.init_distributed(launch.cfg.device)
        start = build.first_start(launch.cfg, launch.resume, launch.changes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        while start is not None:
            start = build.run_segment(launch.cfg, info, start)
    except ValueError as exc:  # bad input found while building (a data file, a sequence length): no traceback wall
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
