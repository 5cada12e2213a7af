#!/usr/bin/env bash
# The main job, for now (the dashboard is issue 6): a live 2-rank OPT-recipe training run under torchrun
# that meets fp16 overflows, a loss spike, a rank crash with automatic restart, a straggler and an
# audited mid-flight rewind, recorded into runs/demo; then what the logbook makes of it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python examples/record_sample_run.py runs/demo
