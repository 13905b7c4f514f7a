#!/usr/bin/env bash
# Source on the GPU machine: library paths for a spar binary built on a CPU machine (libtorch, NCCL, CUDA libs).
TL=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
NL=$(python3 -c 'import nvidia.nccl,os;print(list(nvidia.nccl.__path__)[0]+"/lib")' 2>/dev/null || true)
CU=$(python3 -c 'import nvidia,os;print(list(nvidia.__path__)[0])' 2>/dev/null)/cu13/lib
mkdir -p /tmp/ncl
[ -n "$NL" ] && ln -sf "$NL/libnccl.so.2" /tmp/ncl/libnccl.so   # cudarc dlopens libnccl.so
export LD_LIBRARY_PATH="$TL:/tmp/ncl:$CU${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0
