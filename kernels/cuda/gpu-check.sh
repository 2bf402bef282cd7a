#!/usr/bin/env bash
# One command on a GPU machine: build kernels/cuda/moe_check.cu with nvcc for the local GPU and run it
# (correctness against a host reference, then the MoE vs cuBLAS-dense timing table). Exit status: moe_check's
# (non-zero when a correctness check failed). Takes about 1-3 minutes (build ~30-60 s, checks, benchmark).
#
#   bash kernels/cuda/gpu-check.sh            # full run
#   bash kernels/cuda/gpu-check.sh --quick    # B <= 16 and 3 timing iterations
#   bash kernels/cuda/gpu-check.sh --no-bench # correctness only
#
# Env: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc), MOEFY_CUDA_ARCH (default: the local GPU's
# compute capability from nvidia-smi, else sm_90), MOEFY_CUBLAS (path of libcublas.so.N if the loader cannot find it),
# OUT (build folder, default a temp dir).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "gpu-check: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
cudaroot="$(cd "$(dirname "$NVCC")/.." && pwd)"
OUT="${OUT:-$(mktemp -d -t moefy-gpu-check.XXXXXX)}"
mkdir -p "$OUT"

if [[ -z "${MOEFY_CUDA_ARCH:-}" ]]; then
  # the local GPU's compute capability (e.g. 9.0 -> sm_90); sm_90 (H100/H200) when it cannot be read
  cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)"
  if [[ "$cc" =~ ^[0-9]+$ ]]; then MOEFY_CUDA_ARCH="sm_$cc"; else MOEFY_CUDA_ARCH=sm_90; fi
fi
archflags=(-arch="$MOEFY_CUDA_ARCH")
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "gpu-check: $("$NVCC" --version | tail -1); ${archflags[*]}; build in $OUT"

time "$NVCC" -O3 -std=c++17 "${archflags[@]}" -lineinfo \
  "$here/moe_check.cu" "$here/dynamic_moe_cuda.cu" -ldl -o "$OUT/moe_check"

# cuBLAS for the dense baseline is dlopen'ed: make the toolkit's and pip's copies findable.
extra="$cudaroot/lib64:$cudaroot/lib:$cudaroot/targets/x86_64-linux/lib"
for d in /usr/local/lib/python3*/dist-packages/nvidia/cu*/lib /usr/local/lib/python3*/site-packages/nvidia/cu*/lib \
         /usr/local/lib/python3*/dist-packages/nvidia/cublas/lib /usr/local/lib/python3*/site-packages/nvidia/cublas/lib; do
  [[ -d "$d" ]] && extra="$extra:$d"
done
export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$OUT/moe_check" "$@"
