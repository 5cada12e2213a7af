#!/usr/bin/env bash
# The main job, for now: record a real tiny PyTorch run (a crash, a rollback with a
# lower LR and clip) into runs/demo, then print what the logbook makes of it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
rm -rf runs/demo
python examples/tiny_run.py runs/demo
python -m logbook summary runs/demo
