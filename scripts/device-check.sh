#!/usr/bin/env bash
# The GPU check, in one command, for a GPU machine with the NVIDIA driver, PyTorch and timm
# but no Rust toolchain and no network (our H200: driver 580 / CUDA 13.0, torch cu130).
# The CUDA binaries come prebuilt from a CPU machine: `scripts/device-bundle.sh` packs them
# into device-bundle/ (carried with the repository). Run from the repository root:
#
#   scripts/device-check.sh [BUNDLE_DIR]
#
# 1. GPU op and model tests (ours on CUDA vs the CPU kernels, f32 and bf16, gradients);
# 2. `et-bench train-step` at 224 px, batch 128, bf16, beside the same timm models in PyTorch
#    on the same GPU (eager, and torch.compile unless COMPILE=0);
# 3. a short ET++ run (et-train --device cuda --precision bf16) on assets/cifar10-mini;
# then prints one table (also written to $OUT/device-check.md when OUT is set).
# Knobs (for a dry run on a CPU build: DEVICE=cpu PRECISION=f32 SIZE=64 BATCH=4 ...):
# DEVICE MODELS SIZE BATCH PRECISION STEPS WARMUP COMPILE ETPP_EPOCHS
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$root/device-bundle}
[ -f "$bundle/bins.tar.xz" ] || { echo "no $bundle/bins.tar.xz: run scripts/device-bundle.sh on a build machine first" >&2; exit 2; }
B=$(mktemp -d)
tar -C "$B" -xJf "$bundle/bins.tar.xz" || exit 2
echo "binaries of commit $(cat "$B/bin/COMMIT")"
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-convnext_tiny resnet50 deit_small_patch16_224}
SIZE=${SIZE:-224}
BATCH=${BATCH:-128}
PRECISION=${PRECISION:-bf16}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
COMPILE=${COMPILE:-1}
ETPP_EPOCHS=${ETPP_EPOCHS:-2}
PY=${PYTHON:-python3}
LOG=${OUT:-$root/device-check-out}
mkdir -p "$LOG"

# The CUDA libraries our binaries load (cuBLAS, cuRAND, cuDNN, NVRTC, cudart) come from
# PyTorch's nvidia-* wheels; the driver's libcuda.so.1 is on the system path.
SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
if [ -n "$SP" ] && [ -d "$SP/nvidia" ]; then
  libs=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

last_ips() { grep -oP '^img/s: \K[0-9.]+' "$1" | tail -1; }
status=0
echo "== 1. op and model tests on $DEVICE"
if [ "$DEVICE" = cpu ]; then req=0; else req=1; fi
if ET_REQUIRE_CUDA=$req timeout 600 "$B/bin/device_ops" --test-threads=1 >"$LOG/tests.log" 2>&1; then
  tests="passed"
else
  tests="FAILED (see tests.log)"; status=1
fi
grep -E '^test |panicked|differs|test result' "$LOG/tests.log"

echo "== 2. train-step: ours vs PyTorch, ${SIZE}px batch $BATCH $PRECISION"
rows=()
for m in $MODELS; do
  timeout 600 "$B/bin/et-bench" train-step --model "$m" --size "$SIZE" --batch "$BATCH" --device "$DEVICE" --precision "$PRECISION" --warmup "$WARMUP" --steps "$STEPS" >"$LOG/ours-$m.log" 2>&1
  ours=$(last_ips "$LOG/ours-$m.log"); [ -n "$ours" ] || { tail -3 "$LOG/ours-$m.log"; status=1; }
  timeout 600 "$PY" "$root/bench/torch_train_step.py" --model "$m" --size "$SIZE" --batch "$BATCH" --device "$DEVICE" --precision "$PRECISION" --warmup "$WARMUP" --steps "$STEPS" >"$LOG/torch-$m.log" 2>&1
  eager=$(last_ips "$LOG/torch-$m.log")
  comp=""
  if [ "$COMPILE" = 1 ]; then
    timeout 600 "$PY" "$root/bench/torch_train_step.py" --model "$m" --size "$SIZE" --batch "$BATCH" --device "$DEVICE" --precision "$PRECISION" --warmup "$WARMUP" --steps "$STEPS" --compile >"$LOG/compiled-$m.log" 2>&1
    comp=$(last_ips "$LOG/compiled-$m.log")
  fi
  ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }' || echo "-"; }
  rows+=("| $m | ${ours:--} | ${eager:--} | $(ratio "$ours" "$eager") | ${comp:--} | $(ratio "$ours" "$comp") |")
  echo "${rows[-1]}"
done

echo "== 3. short ET++ run on $DEVICE ($PRECISION)"
rm -rf "$LOG/etpp"
if timeout 600 "$B/bin/et-train" --data "$root/assets/cifar10-mini" --schedule et-pp --epochs "$ETPP_EPOCHS" --device "$DEVICE" --precision "$PRECISION" --out "$LOG/etpp" --threads 8 >"$LOG/etpp.log" 2>&1; then
  etpp=$(grep -E '^done in' "$LOG/etpp.log" | tail -1)
else
  etpp="FAILED: $(tail -1 "$LOG/etpp.log")"; status=1
fi
tail -4 "$LOG/etpp.log"

{
  echo "### Device check ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo "$DEVICE"), $(date -u +%F))"
  echo
  echo "GPU op and model tests: $tests"
  echo
  echo "train-step img/s, ${SIZE} px, batch $BATCH, $PRECISION (median of $STEPS steps after $WARMUP warm-up)"
  echo
  echo "| model | et-bench | PyTorch eager | ratio | PyTorch compiled | ratio |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "ET++ run ($ETPP_EPOCHS epochs, assets/cifar10-mini): $etpp"
} | tee "$LOG/device-check.md"
exit $status
