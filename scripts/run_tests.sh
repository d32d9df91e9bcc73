#!/usr/bin/env bash
# The test command: creates (or reuses) .venv/, installs the project, runs pytest.
# Extra arguments go to pytest: `bash scripts/run_tests.sh -m slow` runs the
# slow end-to-end checks, `-m gpu` the GPU-only ones (see pytest.ini).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
ensure_venv
exec .venv/bin/python -m pytest "$@"
