"""Training-step speed at every resolution of each family's ET++ plan, ours against PyTorch.

For each configuration the resolutions come from et-train's own plan (`et-train --dry-run
--json --schedule et-pp`, base 224 px, or 32 px for the small-stem CIFAR model); every
(configuration, resolution) runs `et-bench train-step`, then `bench/torch_train_step.py`,
back to back, once per round, rounds interleaved, so that each pair shares the machine's
state of the moment. Prints per round, then a table of medians: img/s of each, their ratio,
and each resolution's speed-up over the base beside the ideal (base / r)^2. Both sides run the
same model: Swin, like et-train, keeps the windows laid out for the base size and pads smaller
maps (`--swin-at-size` has PyTorch build it for each size instead, with windows that shrink
to small maps: less work at 96 px).

    cargo build --release -p et-bench -p et-train
    /path/to/python-with-torch-and-timm bench/etpp_resolutions.py [--rounds 3] [--threads 2] [--only convnext,resnet]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (model, batch, extra et-bench / torch arguments, base resolution): the batch sizes of
# docs/performance.md's train-step table; batch 64 for the bundled run's small-stem model.
CONFIGS = [
    ("convnext_atto", 64, ["--classes", "10", "--stem-stride", "2"], 32),
    ("convnext_atto", 16, [], 224),
    ("convnext_tiny", 8, [], 224),
    ("resnet50", 8, [], 224),
    ("deit_tiny_patch16_224", 16, [], 224),
    ("swin_tiny_patch4_window7_224", 8, [], 224),
    ("CSWin_64_12211_tiny_224", 8, [], 224),
    ("pvt_v2_b0", 16, [], 224),
    ("caformer_s18", 8, [], 224),
]


def plan_resolutions(model, base, extra):
    """The distinct stage resolutions of et-train's ET++ plan for `model` at `base` px."""
    stem = ["--stem-stride", extra[extra.index("--stem-stride") + 1]] if "--stem-stride" in extra else []
    out = subprocess.run(
        [os.path.join(ROOT, "target/release/et-train"), "--dry-run", "--json", "--model", model, "--schedule", "et-pp",
         "--data", os.path.join(ROOT, "assets/cifar10-mini"), "--base-resolution", str(base), *stem],
        capture_output=True, text=True, check=True).stdout
    return sorted({s["resolution"] for s in json.loads(out)["stages"]})


def rate(text):
    m = re.findall(r"^img/s: ([0-9.]+)", text, re.M)
    return float(m[-1]) if m else None


def run_pair(model, batch, extra, size, threads, steps, python, base, swin_base_layout):
    steps = steps or (9 if size <= 64 else 5)
    args = ["--model", model, "--size", str(size), "--batch", str(batch), "--threads", str(threads),
            "--steps", str(steps), "--warmup", "1" if size > 64 else "2", *extra]
    ours = subprocess.run([os.path.join(ROOT, "target/release/et-bench"), "train-step", *args], capture_output=True, text=True)
    # Swin as et-train runs it below the base: windows laid out for the base, maps padded.
    same = ["--built-for", str(base)] if model.startswith("swin") and swin_base_layout else []
    theirs = subprocess.run([python, os.path.join(ROOT, "bench/torch_train_step.py"), *args, *same], capture_output=True, text=True)
    for name, p in (("et-bench", ours), ("torch", theirs)):
        if rate(p.stdout) is None:
            sys.exit(f"{name} failed for {model} at {size} px:\n{p.stdout[-800:]}{p.stderr[-800:]}")
    return rate(ours.stdout), rate(theirs.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="timed steps per run (default 5, 9 under 64 px)")
    p.add_argument("--swin-at-size", action="store_true",
                   help="PyTorch builds Swin for each step's size (windows shrink to small maps) instead of the same padded model et-train runs")
    p.add_argument("--only", default="", help="run the configurations whose model name contains one of these (comma-separated)")
    a = p.parse_args()
    configs = [c for c in CONFIGS if any(o in c[0] for o in a.only.split(","))]
    plans = [(m, b, e, base, plan_resolutions(m, base, e)) for m, b, e, base in configs]
    results = {}
    for rnd in range(1, a.rounds + 1):
        for m, b, e, base, sizes in plans:
            for s in sizes:
                o, t = run_pair(m, b, e, s, a.threads, a.steps, sys.executable, base, not a.swin_at_size)
                results.setdefault((m, b, base, s), []).append((o, t))
                print(f"round {rnd} | {m} b{b} {s}px | ours {o:.2f} | pytorch {t:.2f} | ratio {o / t:.2f}", flush=True)
    print(f"\nmedians over {a.rounds} rounds, {a.threads} threads; speed-up = img/s at r over img/s at the base")
    print("| model | batch | px | ours img/s | PyTorch img/s | ours / PyTorch | ours speed-up | PyTorch speed-up | ideal (base/r)^2 | ours / ideal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, b, e, base, sizes in plans:
        med = {s: tuple(statistics.median(x[i] for x in results[(m, b, base, s)]) for i in (0, 1)) for s in sizes}
        ob, tb = med[base]
        for s in sizes:
            o, t = med[s]
            ideal = (base / s) ** 2
            print(f"| {m} | {b} | {s} | {o:.2f} | {t:.2f} | {o / t:.2f} | {o / ob:.2f} | {t / tb:.2f} | {ideal:.2f} | {o / ob / ideal:.2f} |")


if __name__ == "__main__":
    main()
