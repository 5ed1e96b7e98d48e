#!/usr/bin/env bash
# The GPU check, in one command, for a GPU machine with the NVIDIA driver, PyTorch and timm
# but no Rust toolchain and no network (our H100/H200: driver 580 / CUDA 13.0, torch cu130).
# The CUDA binaries come prebuilt from a CPU machine: `scripts/device-bundle.sh` packs them
# into device-bundle/ (carried with the repository). Run from the repository root:
#
#   scripts/device-check.sh [BUNDLE_DIR]
#
# Within BUDGET_S seconds (default 480: GPU time is scarce), most important first, each part
# printing its result as it ends so that a run cut short still reports:
# 1. GPU op and model tests (ours on CUDA vs the CPU kernels, f32 and bf16, gradients);
# 2. `et-bench train-step` at 224 px, batch 128, bf16, beside the same timm models in PyTorch
#    on the same GPU, eager, then torch.compile (COMPILE=0: not) while time remains;
# 3. a short ET++ run (et-train --device cuda --precision bf16) on assets/cifar10-mini;
# 4. if at least PAIR_MIN_S remain and CIFAR10 names CIFAR-10 as {train,test}/<class>/: the
#    ET++ vs baseline pair of bench/cifar10_et_vs_baseline.sh (PAIR_BUDGET epochs).
# The table is also written to $OUT/device-check.md when OUT is set.
# Knobs (for a dry run on a CPU build: DEVICE=cpu PRECISION=f32 SIZE=64 BATCH=4 ...):
# DEVICE MODELS SIZE BATCH PRECISION STEPS WARMUP COMPILE ETPP_EPOCHS BUDGET_S CIFAR10
# PAIR_BUDGET PAIR_MIN_S
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
start=$SECONDS
BUDGET_S=${BUDGET_S:-480}
left() { echo $((BUDGET_S - (SECONDS - start))); }
# A part's time limit: what it may take, but never past the budget minus what the parts
# after it are promised (so the later parts still run).
limit() { local l; l=$(( $(left) - $2 )); [ "$l" -lt "$1" ] || l=$1; echo $((l > 0 ? l : 0)); }
stamp() { echo "   [$((SECONDS - start)) s of $BUDGET_S]"; }
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
PAIR_BUDGET=${PAIR_BUDGET:-15}
PAIR_MIN_S=${PAIR_MIN_S:-150}
PY=${PYTHON:-python3}
LOG=${OUT:-$root/device-check-out}
mkdir -p "$LOG"

# The CUDA libraries our binaries load (cuBLAS, cuRAND, cuDNN, NVRTC, cudart, NCCL) come from
# PyTorch's nvidia-* wheels; the driver's libcuda.so.1 is on the system path.
SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
if [ -n "$SP" ] && [ -d "$SP/nvidia" ]; then
  libs=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "${gpu:-no nvidia-smi}"

last_ips() { grep -oP '^img/s: \K[0-9.]+' "$1" 2>/dev/null | tail -1; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }' || echo "-"; }
status=0

echo "== 1. op and model tests on $DEVICE"
if [ "$DEVICE" = cpu ]; then req=0; else req=1; fi
if ET_REQUIRE_CUDA=$req timeout "$(limit 120 300)" "$B/bin/device_ops" --test-threads=1 >"$LOG/tests.log" 2>&1; then
  tests="passed"
else
  tests="FAILED or cut off (see tests.log)"; status=1
fi
grep -E '^test |panicked|differs|test result' "$LOG/tests.log"
echo "tests: $tests"; stamp

echo "== 2. train-step: ours vs PyTorch, ${SIZE}px batch $BATCH $PRECISION"
step_args=(--size "$SIZE" --batch "$BATCH" --device "$DEVICE" --precision "$PRECISION" --warmup "$WARMUP" --steps "$STEPS")
rows=()
for m in $MODELS; do
  timeout "$(limit 60 120)" "$B/bin/et-bench" train-step --model "$m" "${step_args[@]}" >"$LOG/ours-$m.log" 2>&1
  ours=$(last_ips "$LOG/ours-$m.log"); [ -n "$ours" ] || { tail -3 "$LOG/ours-$m.log"; status=1; }
  timeout "$(limit 60 120)" "$PY" "$root/bench/torch_train_step.py" --model "$m" "${step_args[@]}" >"$LOG/torch-$m.log" 2>&1
  eager=$(last_ips "$LOG/torch-$m.log")
  rows+=("| $m | ${ours:--} | ${eager:--} | $(ratio "$ours" "$eager") | | |")
  echo "${rows[-1]}"; stamp
done
# torch.compile takes a minute or more per model: only after every eager row, and only
# while the ET++ run keeps its time.
if [ "$COMPILE" = 1 ]; then
  i=0
  for m in $MODELS; do
    if [ "$(limit 150 90)" -ge 60 ]; then
      timeout "$(limit 150 90)" "$PY" "$root/bench/torch_train_step.py" --model "$m" "${step_args[@]}" --compile >"$LOG/compiled-$m.log" 2>&1
      comp=$(last_ips "$LOG/compiled-$m.log")
      ours=$(last_ips "$LOG/ours-$m.log")
      rows[i]="${rows[i]% | | |} | ${comp:--} | $(ratio "$ours" "$comp") |"
      echo "${rows[i]}"; stamp
    fi
    i=$((i + 1))
  done
fi

echo "== 3. short ET++ run on $DEVICE ($PRECISION)"
rm -rf "$LOG/etpp"
if timeout "$(limit 90 0)" "$B/bin/et-train" --data "$root/assets/cifar10-mini" --schedule et-pp --epochs "$ETPP_EPOCHS" --device "$DEVICE" --precision "$PRECISION" --out "$LOG/etpp" --threads 8 >"$LOG/etpp.log" 2>&1; then
  etpp=$(grep -E '^done in' "$LOG/etpp.log" | tail -1)
else
  etpp="FAILED or cut off: $(tail -1 "$LOG/etpp.log")"; status=1
fi
tail -4 "$LOG/etpp.log"; stamp

pair="not run"
if [ -n "${CIFAR10:-}" ] && [ "$(left)" -ge "$PAIR_MIN_S" ]; then
  echo "== 4. ET++ vs baseline on CIFAR-10 ($PAIR_BUDGET epochs, $DEVICE $PRECISION)"
  if ET_TRAIN="$B/bin/et-train" ET_EVAL="$B/bin/et-eval" ET_PLOT=true EXTRA="--device $DEVICE --precision $PRECISION --threads 8" \
      BUDGET=$PAIR_BUDGET PER_CLASS=${PER_CLASS:-5000} BATCH=${PAIR_BATCH:-256} \
      timeout "$(limit "$BUDGET_S" 0)" bash "$root/bench/cifar10_et_vs_baseline.sh" "$CIFAR10" "$LOG/pair" >"$LOG/pair.log" 2>&1; then
    pair=$(grep -E '^ET\+\+ at budget' "$LOG/pair.log" | tail -1)
  else
    pair="cut off or failed (pair.log)"
  fi
  tail -6 "$LOG/pair.log"; stamp
fi

{
  echo "### Device check (${gpu:-$DEVICE}, $(date -u +%F), $((SECONDS - start)) s)"
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
  echo
  echo "ET++ vs baseline on CIFAR-10: $pair"
} | tee "$LOG/device-check.md"
exit $status
