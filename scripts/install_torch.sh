#!/usr/bin/env bash
# Install torch 2.13.0 into the given Python's environment, the CPU build where there is no GPU
# (or always, with `cpu`: the MemOS test environment, which runs nothing on a GPU).
# A plain `pip install torch` on Linux pulls several GB of CUDA packages; this avoids that.
set -euo pipefail
py=${1:?usage: install_torch.sh PYTHON [cpu]}
only_cpu=${2:-}
if "$py" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  exit 0
fi
if [ "$only_cpu" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$py" -m pip install torch==2.13.0
fi
# A local CPU wheel (pip's find-links) first, then PyTorch's CPU index. Dependencies come later
# with the project's own install, from the normal index.
"$py" -m pip install --no-deps --no-index torch==2.13.0 2>/dev/null \
  || "$py" -m pip install --no-deps torch==2.13.0 --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
