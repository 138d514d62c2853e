#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, layout and types (seconds), then the test suite.
#
#   bash launch/check.sh                 # everything
#   bash launch/check.sh tests/test_devices.py -x    # arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
