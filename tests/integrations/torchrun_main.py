"""`python -m torch.distributed.run --standalone --nproc-per-node 2 torchrun_main.py LIBRARY RUN_DIR`.

Runs one of runs.py's trainings as a real 2-process gloo/CPU job, so a test can check that the integration
finishes (no rank waits for another that never calls midflight) and records one segment.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for `tests.integrations.runs`

from tests.integrations import runs  # noqa: E402

which, run_dir = sys.argv[1], sys.argv[2]
if which == "transformers":
    runs.hf_run(run_dir, steps=20, spike_at=None, ddp_backend="gloo")
elif which == "lightning":
    runs.lightning_run(run_dir, steps=20, spike_at=None, devices=2, strategy="ddp")
elif which == "accelerate":
    runs.accelerate_run(run_dir, steps=20, spike_at=None)
else:
    raise SystemExit(f"unknown library {which!r}")
