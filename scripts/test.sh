#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need and runs the
# whole suite, optimised.
#   - ONNX Runtime's shared library from the PyPI wheel (no download at build time): .ort/
#   - the `onnx` package for onnx.checker validity checks: .ort/checker/
#   - Open MPI (Debian packages openmpi-bin, libopenmpi-dev) for the data-parallel tests,
#     and libjpeg-turbo's header (libjpeg-dev) so that JPEGs decode as in Pillow, when
#     missing and this runs as root with apt; otherwise it says what to install.
#   - CUDA 13.0's nvcc, headers and runtime from pinned PyPI wheels into .cuda-toolchain/
#     (scripts/cuda/env.sh; reused on a rerun), to compile the GPU code without a GPU.
# The data tests then run a second time through the pure-Rust JPEG decoder (the fallback
# of machines without libjpeg), in target/nolibjpeg. The GPU code (CUDA, cuDNN, NCCL
# features, and our .cu kernels through nvcc) is type-checked in target/cuda, and the CUDA
# kernels' arithmetic is checked on the host (tools/cuda_host_check).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ONNX_VERSION=1.23.2
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --no-cache-dir --upgrade "$@"
}
if [ ! -f ".ort/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" ]; then
  echo "installing onnxruntime==$ORT_VERSION into .ort/ (PyPI wheel, library only)"
  pip_install --no-deps --target .ort "onnxruntime==$ORT_VERSION"
fi
if [ ! -f .ort/checker/onnx/checker.py ]; then
  echo "installing onnx==$ONNX_VERSION into .ort/checker/ (for onnx.checker)"
  pip_install --target .ort/checker "onnx==$ONNX_VERSION"
fi
export ORT_DYLIB_PATH="$PWD/.ort/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"

# libjpeg-turbo's header: with it JPEGs decode as in Pillow (identical pixels); without it
# et-data builds its pure-Rust fallback (within a few levels of PIL).
if ! printf '#include <stdio.h>\n#include <jpeglib.h>\n' | cc -E -x c - >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing libjpeg-dev (Debian: libjpeg62-turbo-dev) so that JPEGs decode as in Pillow"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjpeg-dev >/dev/null
    cargo clean --release -p et-data   # its build script looks for the header only when it reruns
  else
    echo "the tests need libjpeg-turbo's header: run \`sudo apt-get install libjpeg-dev\` (Debian/Ubuntu), then retry" >&2
    exit 1
  fi
fi

if ! command -v mpicc >/dev/null || ! command -v mpirun >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Open MPI (Debian: openmpi-bin libopenmpi-dev) for the data-parallel tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
  else
    echo "the data-parallel tests need an MPI: run \`sudo apt-get install openmpi-bin libopenmpi-dev\` (Debian/Ubuntu) or load your MPI, then retry" >&2
    exit 1
  fi
fi
# mpirun in the tests: CI runs as root, on 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

# The default build (no MPI), as the README's first command runs it, must build too.
cargo build --release -p et-train
# The end-to-end tests run the release binaries, with data parallelism: build them first.
cargo build --release --workspace --bins --features et-train/distributed
cargo test --release --workspace --features et-train/distributed "$@"
# The data tests again through the pure-Rust JPEG decoder, in a target dir of its own so that
# the main build stays cached.
ET_NO_LIBJPEG=1 CARGO_TARGET_DIR=target/nolibjpeg cargo test --release -p et-data "$@"
# The GPU code: no GPU here, so type-check it (candle's and our .cu kernels do go through
# nvcc) and run our kernels' source on the host against references.
(
  eval "$(scripts/cuda/env.sh)"
  CARGO_TARGET_DIR=target/cuda cargo check --release --workspace --all-targets \
    --features et-train/cudnn,et-train/nccl,et-eval/cudnn,et-bench/cudnn,et-kernels/cudnn
)
tools/cuda_host_check/run.sh
