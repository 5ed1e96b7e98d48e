#!/usr/bin/env bash
# A CUDA 13.0 *build* environment from PyPI wheels, for machines with no GPU and no CUDA
# toolkit (ours): nvcc compiles candle's kernels to PTX and link-time stub libraries stand in
# for the driver, cuBLAS, cuRAND, NVRTC and cuDNN (the real ones are loaded on the GPU
# machine). Usage: eval "$(scripts/cuda/env.sh [DIR])"   (DIR defaults to .cuda-toolchain)
# then: cargo build --release --features cudnn
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DIR=${1:-$root/.cuda-toolchain}
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
[ -x "$DIR/venv/bin/pip" ] || python3 -m venv "$DIR/venv" >&2
# Every wheel pinned: nvcc's own dependencies are unpinned and would pull 13.5 parts, whose
# PTX (ISA 9.5) the GPU machine's 580 driver (CUDA 13.0) rejects; cccl (cuda_fp16.h needs
# nv/target) is not a dependency of nvcc and must be named.
"$DIR/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
SP=$("$DIR/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
C="$SP/nvidia/cu13"
if [ -z "${CUDARC_SRC:-}" ]; then
  (cd "$root" && cargo fetch -q >&2)
  CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)
fi
[ -n "$CUDARC_SRC" ] || { echo "cudarc sources not found: run 'cargo fetch' first" >&2; exit 1; }
CUDARC_SRC=$CUDARC_SRC "$here/make_stubs.sh" "$DIR/stubs/lib" >&2
ln -sf "$C/lib/libcudart.so.13" "$DIR/stubs/lib/libcudart.so"
# sm_90a PTX: H100/H200 (the device check's machine).
echo "export PATH=\"$C/bin:\$PATH\" CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} CUDA_ROOT=\"$DIR/stubs\" CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}"
