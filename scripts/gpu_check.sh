#!/usr/bin/env bash
# One command for the first GPU session (see scripts/gpu_check.py): every package's CUDA training paths, resume,
# one-process DDP (nccl), device-vs-CPU features and embeddings, paper-size steps in fp32 / TF32 / bf16, pinned
# copies. No download. `bash scripts/gpu_check.sh --cpu` runs the same steps on the CPU at tiny sizes.
# Exit status: 0 all PASS/SKIP, 1 a FAIL, 2 no CUDA without --cpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${PYTHON:-}" ]]; then
    exec "$PYTHON" scripts/gpu_check.py "$@"
elif [[ -x .venv/bin/python ]]; then
    exec .venv/bin/python scripts/gpu_check.py "$@"
elif command -v uv >/dev/null 2>&1; then
    exec uv run --frozen python scripts/gpu_check.py "$@"
else
    exec python3 scripts/gpu_check.py "$@"
fi
