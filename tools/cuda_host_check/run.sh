#!/usr/bin/env bash
# Host check of the CUDA kernels' arithmetic (see check.cpp); needs only g++.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
g++ -O1 -std=c++17 -Wall -Wno-unused-function -x c++ "$here/check.cpp" -o /tmp/et_cuda_host_check
/tmp/et_cuda_host_check
