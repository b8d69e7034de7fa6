#!/usr/bin/env bash
# The GPU checks of issue 13 on one GPU machine, installing nothing from the network (well under 8 minutes on an
# H100/H200). The machine needs torch with CUDA; MemoScope's other requirements come from wheels in .whl/ when the
# image lacks them (`bash benchmarks/gpu_wheels.sh` fetches them here). Results: benchmarks/results/gpu.md.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, in the repository root
#   bash benchmarks/gpu_check.sh --device cpu --quick   # a dry run of the same script on a CPU-only machine
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${CUDA_VISIBLE_DEVICES+x}" ] && ! command -v nvidia-smi >/dev/null && PYTHON=.venv/bin/python
"$PYTHON" -c "import torch, monai, faiss; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 timeout 470 "$PYTHON" benchmarks/gpu.py "$@"
