#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source scripts/browser.sh
ruff check logbook trainer app tests benchmarks examples midflight setup.py
ruff format --check --quiet logbook trainer app tests benchmarks examples midflight setup.py
python -m pytest -q "$@"
