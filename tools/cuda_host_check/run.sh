#!/usr/bin/env bash
# Host check of the CUDA kernels (see check.cpp); needs only g++ with C++20. Exits non-zero
# when any kernel differs from its reference (or the check does not build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp -d)/et_cuda_host_check
trap 'rm -rf "$(dirname "$bin")"' EXIT
g++ -O1 -std=c++20 -pthread -Wall -Wno-unused-function -x c++ "$here/check.cpp" -o "$bin"
"$bin"
