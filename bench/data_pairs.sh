#!/usr/bin/env bash
# Data-pipeline throughput, ours against torchvision, as docs/performance.md reports it:
# every row runs `et-bench data` and then `bench/torchvision_data.py` back to back, for
# ROUNDS rounds, so each pair shares the host's state of the moment (this VM's speed drifts
# by ±10 % over minutes). Prints one line per pair (ratio: ours / torchvision), then the
# median ratio of each row over the rounds.
#
#   cargo build --release -p et-bench
#   PYTHON=/path/to/python-with-torch-and-timm bench/data_pairs.sh [ROUNDS] [DATA] [EPOCHS]
#
# DATA is a folder of real ImageNet JPEG photos, one sub-folder per class
# (DATA/<wnid>/<wnid>_<name>.JPEG); the default is a 300-photo sample (one per class) kept
# beside the repository. Each run prints the median of EPOCHS epochs (default 3).
# ONLY="96 2" runs only the rows whose "size threads [flags]" text contains that text.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DATA=${2:-../shared/data/imagenet-sample-300}
EPOCHS=${3:-3}
PYTHON=${PYTHON:-python3}
AA=rand-m9-mstd0.5-inc1
ROWS=("224 1" "224 2" "96 1" "96 2" "96 1 --reduced-dct" "96 2 --reduced-dct")
rate() { sed -n 's/^img\/s: //p' | tail -1; }
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$ROUNDS"); do
  for row in "${ROWS[@]}"; do
    [[ -n "${ONLY:-}" && "$row" != *"$ONLY"* ]] && continue
    read -r size threads flags <<<"$row"
    # shellcheck disable=SC2086
    o=$(target/release/et-bench data --data "$DATA" --size "$size" --aa "$AA" --threads "$threads" --epochs "$EPOCHS" ${flags:-} 2>&1 | rate)
    t=$("$PYTHON" bench/torchvision_data.py --data "$DATA" --size "$size" --aa "$AA" --threads "$threads" --epochs "$EPOCHS" 2>&1 | rate)
    r=$(python3 -c "print(f'{$o / $t:.2f}')")
    printf 'round %s | S %s, %s thread(s) %s | ours %s img/s | torchvision %s img/s | ratio %s\n' \
      "$round" "$size" "$threads" "${flags:-}" "$o" "$t" "$r"
    printf '%s\t%s\n' "$row" "$r" >>"$results"
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, ratio = line.rstrip("\n").split("\t")
    rows.setdefault(row, []).append(float(ratio))
for row, r in rows.items():
    print(f"median ratio | {row} | {statistics.median(r):.2f}x over {len(r)} rounds ({', '.join(f'{x:.2f}' for x in r)})")
EOF
