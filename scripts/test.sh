#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need into the
# repository (idempotent, no sudo, only PyPI) and runs the whole suite, optimised.
#   - ONNX Runtime's shared library from the PyPI wheel (no download at build time): .ort/
#   - the `onnx` package for onnx.checker validity checks: .ort/checker/
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

# The end-to-end tests run the release binaries: build them first.
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
