#!/usr/bin/env bash
# Builds, on a CPU machine with no GPU and no CUDA toolkit, everything scripts/device-check.sh
# runs on the GPU machine (which has no Rust): et-train and et-bench with candle's CUDA +
# cuDNN backends, and the GPU test executable; stripped and packed into
# device-bundle/bins.tar.xz (~22 MB; a device run carries 64 MB with the repository).
#
#   scripts/device-bundle.sh            # CUDA build (PyPI nvcc wheels, see docs/gpu.md)
#   CPU_ONLY=1 scripts/device-bundle.sh # the same bundle without CUDA, for a dry run here
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${BUNDLE:-$root/device-bundle}
if [ "${CPU_ONLY:-0}" = 1 ]; then
  feats=""; models_feats=""
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
else
  eval "$(scripts/cuda/env.sh "${CUDA_TOOLCHAIN:-$root/.cuda-toolchain}")"
  feats="--features et-train/cudnn,et-bench/cudnn"; models_feats="--features et-kernels/cudnn"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
fi
# shellcheck disable=SC2086
cargo build --release -p et-train -p et-bench $feats
# shellcheck disable=SC2086
test_exe=$(cargo test --release -p et-models $models_feats --test device_ops --no-run --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device_ops":
        print(m["executable"])')
# candle embeds its CUDA kernels as PTX text in every binary (~47 MB each): xz packs the three
# into ~22 MB.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
for f in "$CARGO_TARGET_DIR/release/et-train" "$CARGO_TARGET_DIR/release/et-bench" "$test_exe"; do
  strip -o "$stage/bin/$(basename "$f" | sed 's/-[0-9a-f]\{16\}$//')" "$f"
done
git rev-parse HEAD > "$stage/bin/COMMIT"
rm -rf "$out" && mkdir -p "$out"
tar -C "$stage" -cf - bin | xz -T0 -9 > "$out/bins.tar.xz"
du -sh "$out"
size=$(du -sm "$out" | cut -f1)
[ "$size" -lt 60 ] || { echo "bundle is ${size} MB: a device run carries 64 MB with the repository" >&2; exit 1; }
