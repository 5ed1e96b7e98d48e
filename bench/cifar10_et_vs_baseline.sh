#!/usr/bin/env bash
# Evidence for the EfficientTrain++ claim on CIFAR-10: trains the same model with the
# `baseline` schedule and with `et-pp` at the same budget, plus `et-pp` at budget / 1.5
# (the claim: ET++ reaches the baseline's accuracy in <= 1/1.5 of its wall time), then
# evaluates each on the full test set and prints wall-clock time and test top-1.
#
#   bench/cifar10_et_vs_baseline.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR holds CIFAR-10 as ImageFolder: DATA_DIR/{train,test}/<class>/*.jpg.
# Settings (environment): MODEL (convnext_atto), BUDGET (base-resolution epochs, 4.5),
# PER_CLASS (training images per class, 1000; 5000 = all), VAL_PER_CLASS (test images per
# class used for the per-stage validation curve, 100), BATCH (64), LR (2e-3), SEED (0),
# EXTRA (more et-train arguments, e.g. "--device cuda --precision bf16").
# Wall time is the et-train process; "train s" leaves out the per-stage validation passes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bench/cifar10_et_vs_baseline.sh DATA_DIR [OUT_DIR]}
OUT=${2:-runs/cifar10-bench}
MODEL=${MODEL:-convnext_atto}
BUDGET=${BUDGET:-4.5}
PER_CLASS=${PER_CLASS:-1000}
VAL_PER_CLASS=${VAL_PER_CLASS:-100}
BATCH=${BATCH:-64}
LR=${LR:-2e-3}
SEED=${SEED:-0}
TRAIN_BIN=${ET_TRAIN:-target/release/et-train}
EVAL_BIN=${ET_EVAL:-target/release/et-eval}
PLOT_BIN=${ET_PLOT:-target/release/et-plot}
for d in "$DATA/train" "$DATA/test"; do
  [ -d "$d" ] || { echo "error: $d is missing (expected CIFAR-10 as DATA_DIR/{train,test}/<class>/)" >&2; exit 2; }
done
[ -x "$TRAIN_BIN" ] && [ -x "$EVAL_BIN" ] || cargo build --release -p et-train -p et-eval

# A class-balanced subset (symlinks), with a small slice of the test set as the val curve.
SUB="$OUT/data"
rm -rf "$SUB"
for cls in $(ls "$DATA/train"); do
  mkdir -p "$SUB/train/$cls" "$SUB/val/$cls"
  src=$(realpath "$DATA")
  ls "$src/train/$cls" | sort | sed -n "1,${PER_CLASS}p" | sed "s|^|$src/train/$cls/|" | xargs -d '\n' ln -s -t "$SUB/train/$cls"
  ls "$src/test/$cls" | sort | sed -n "1,${VAL_PER_CLASS}p" | sed "s|^|$src/test/$cls/|" | xargs -d '\n' ln -s -t "$SUB/val/$cls"
done
SMALL=$(python3 -c "print(round($BUDGET / 1.5, 4))")

declare -a ROWS
run() {  # name schedule budget
  local name=$1 schedule=$2 budget=$3 dir="$OUT/$1"
  rm -rf "$dir"
  local t0 t1
  t0=$(date +%s.%N)
  "$TRAIN_BIN" --data "$SUB" --model "$MODEL" --schedule "$schedule" --epochs "$budget" --batch-size "$BATCH" \
    --lr "$LR" --seed "$SEED" --out "$dir" --log-every 50 ${EXTRA:-} > "$dir.log" 2>&1 || { echo "et-train failed, see $dir.log" >&2; tail -3 "$dir.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  "$EVAL_BIN" --run "$dir" --data "$DATA/test" --resolutions 32 --json "$dir/test.json" > "$dir/test.log" 2>&1 || { echo "et-eval failed, see $dir/test.log" >&2; exit 1; }
  python3 - "$dir" "$name" "$schedule" "$budget" "$t0" "$t1" <<'PY' >> "$OUT/table.tsv"
import json, sys
d, name, sched, budget, t0, t1 = sys.argv[1:]
wall = float(t1) - float(t0)
val = sum(json.loads(l).get("val_seconds", 0) for l in open(f"{d}/metrics.jsonl") if '"stage_end"' in l)
steps = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if '"done"' in l][0]["steps"]
top1 = json.load(open(f"{d}/test.json"))["results"][0]["top1"]
print(f"{name}\t{sched}\t{budget}\t{steps}\t{wall:.0f}\t{wall - val:.0f}\t{100 * top1:.2f}")
PY
  echo "done: $name ($(tail -n 1 "$OUT/table.tsv" | cut -f5) s)"
}
mkdir -p "$OUT"
printf "run\tschedule\tbudget\tsteps\twall s\ttrain s\ttest top-1 %%\n" > "$OUT/table.tsv"
echo "$MODEL on $PER_CLASS train images/class of $DATA, budget $BUDGET base epochs (et-pp also at $SMALL), batch $BATCH, lr $LR"
run baseline baseline "$BUDGET"
run et-pp et-pp "$BUDGET"
run et-pp-1.5x et-pp "$SMALL"
echo
column -t -s $'\t' "$OUT/table.tsv"
python3 - "$OUT/table.tsv" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
r = {row[0]: (float(row[4]), float(row[5]), float(row[6])) for row in rows}
b, s = r["baseline"], r["et-pp-1.5x"]
verdict = "holds" if s[2] >= b[2] and s[0] <= b[0] / 1.5 else "does not hold"
print(f"\nET++ at budget/1.5 vs baseline: wall {s[0]:.0f} s vs {b[0]:.0f} s ({b[0] / s[0]:.2f}x faster), "
      f"test top-1 {s[2]:.2f} % vs {b[2]:.2f} %: the claim (same accuracy in <= 1/1.5 of the time) {verdict} here")
PY
if [ -x "$PLOT_BIN" ]; then
  "$PLOT_BIN" --out "$OUT/curves.png" "$OUT/baseline" "$OUT/et-pp" "$OUT/et-pp-1.5x" && echo "plot: $OUT/curves.png"
fi
