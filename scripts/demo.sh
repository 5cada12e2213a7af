#!/usr/bin/env bash
# The main job: the dashboard (http://localhost:8501) on the sample runs, with a live CPU demo run
# training next to it that meets fp16 overflows, a loss spike, a crash with automatic restart and a straggler.
#   bash scripts/demo.sh                 # dashboard on sample_runs/ + the live demo run in runs/live-demo
#   bash scripts/demo.sh --no-live       # the dashboard on the sample runs only
#   bash scripts/demo.sh --record        # no dashboard: record a faulty run into runs/demo, print its logbook
#   bash scripts/demo.sh --autopilot     # a divergence rescued by the autopilot (3 runs, ~3 min), then the dashboard
# Other arguments go to `midflight dashboard` (--port N, --address HOST, more run folders).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
case "${1:-}" in
  --no-live) shift; exec midflight dashboard sample_runs "$@" ;;
  --record) shift; exec python examples/record_sample_run.py runs/demo ;;
  --autopilot)
    shift; rm -rf runs/autopilot-demo
    python -m benchmarks.autopilot_rescue --keep runs/autopilot-demo --out runs/autopilot-demo.png
    exec midflight dashboard runs/autopilot-demo "$@" ;;
  *) exec midflight dashboard sample_runs --demo "$@" ;;
esac
