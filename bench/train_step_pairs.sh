#!/usr/bin/env bash
# Training-step throughput, ours against PyTorch, as docs/performance.md reports it: every
# configuration runs `et-bench train-step` and then `bench/torch_train_step.py` back to back,
# for ROUNDS rounds, so each pair shares the host's state of the moment (this VM's speed
# drifts by ±10 % over minutes). Prints one line per pair; the ratio is ours / PyTorch.
#
#   cargo build --release -p et-bench
#   PYTHON=/path/to/python-with-torch-and-timm bench/train_step_pairs.sh [ROUNDS] [THREADS]
#
# Each run reports the median of 5 or more timed steps after a warm-up step (fewer steps are noise on this kind of machine).
# ONLY=resnet50 runs only the configurations whose arguments contain that text.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
THREADS=${2:-2}
PYTHON=${PYTHON:-python3}
CONFIGS=(
  "--model convnext_atto --size 32 --batch 64 --classes 10 --stem-stride 2 --steps 9"
  "--model convnext_atto --size 224 --batch 16 --steps 5 --warmup 1"
  "--model deit_tiny_patch16_224 --size 224 --batch 16 --steps 5 --warmup 1"
  "--model resnet50 --size 224 --batch 8 --steps 5 --warmup 1"
  "--model swin_tiny_patch4_window7_224 --size 224 --batch 8 --steps 5 --warmup 1"
  "--model pvt_v2_b0 --size 224 --batch 16 --steps 5 --warmup 1"
  "--model caformer_s18 --size 224 --batch 8 --steps 5 --warmup 1"
)
rate() { sed -n 's/^img\/s: //p' | tail -1; }
rss() { sed -n 's/^peak RSS: \([0-9]*\).*/\1/p' | tail -1; }
for round in $(seq "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    [[ -n "${ONLY:-}" && "$c" != *"$ONLY"* ]] && continue
    # shellcheck disable=SC2086
    ours=$(target/release/et-bench train-step --threads "$THREADS" $c 2>&1)
    # shellcheck disable=SC2086
    theirs=$("$PYTHON" bench/torch_train_step.py --threads "$THREADS" $c 2>&1)
    o=$(rate <<<"$ours"); t=$(rate <<<"$theirs")
    printf 'round %s | %s | ours %s img/s, %s MiB | pytorch %s img/s, %s MiB | ratio %s\n' \
      "$round" "$c" "$o" "$(rss <<<"$ours")" "$t" "$(rss <<<"$theirs")" "$(python3 -c "print(f'{$o / $t:.2f}')")"
  done
done
