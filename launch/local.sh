#!/usr/bin/env bash
# Run a job on this one box: set up the environment (idempotent), then run the job.
#
#   bash launch/local.sh [--config launch/configs/smollm2-gsm8k.yaml] [key=value ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup.sh
exec .venv/bin/python -m launch.train "$@"
