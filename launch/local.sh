#!/usr/bin/env bash
# Run a job on this one box: set up the environment (idempotent), start a local Ray with its
# dashboard on 127.0.0.1:8265 (unless one is already running), run the job, stop what we started.
#
#   bash launch/local.sh [--config launch/configs/smollm2-gsm8k.yaml] [key=value ...]
#   bash launch/local.sh --resume runs/smollm2-gsm8k
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash launch/setup.sh
RAY="$ROOT/.venv/bin/ray"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

started=0
# The dashboard's Metrics tab reads Prometheus here once `python -m launch.monitor` runs.
export RAY_PROMETHEUS_HOST="${RAY_PROMETHEUS_HOST:-http://127.0.0.1:9090}"
if ! "$RAY" status >/dev/null 2>&1; then
  "$RAY" start --head --dashboard-host=127.0.0.1 --dashboard-port=8265 --num-cpus="$(nproc)" --disable-usage-stats >/dev/null
  started=1
  echo "local Ray started; dashboard: http://127.0.0.1:8265 (token: ~/.ray/auth_token, see README)"
fi
cleanup() { [ "$started" = 1 ] && "$RAY" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
.venv/bin/python -m launch.train "$@"
