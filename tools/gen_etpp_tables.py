"""Reference ET++ stage tables (`train/tests/fixtures/etpp_official.json`).

Runs the official launch scripts of EfficientTrain++ (`_ET_pp_main_<model>.py` of
LeapLabTHU/EfficientTrain) with `os.system` captured instead of executed, reads each
stage's command line (`--input_size`, `--aa rand-m{i}-...`, `--epochs`, `--end_epoch`,
`--warmup_epochs`, `--drop_path`, `--batch_size`, `--update_freq`), and adds where each stage
starts: the official `auto_load_model` (utils_buffer.py) resumes the previous stage's
checkpoint at epoch `round((last + 1) * r_prev² / r²)` of the new stage's epoch count.
A stage therefore trains `end_epoch - start_epoch` epochs at its resolution.

    git clone https://github.com/LeapLabTHU/EfficientTrain ../EfficientTrain
    python3 tools/gen_etpp_tables.py --official ../EfficientTrain [--epoch 300]
"""
import argparse
import json
import os
import re
import shlex
import sys
from unittest import mock

SCRIPTS = {
    "convnext_tiny": "_ET_pp_main_convnextT.py",
    "deit_small_patch16_224": "_ET_pp_main_deitS.py",
    "swin_tiny_patch4_window7_224": "_ET_pp_main_swinT.py",
    "resnet50": "_ET_pp_main_res50.py",
}
OUT = os.path.join(os.path.dirname(__file__), "..", "train", "tests", "fixtures", "etpp_official.json")


def commands(script, epoch):
    captured = []
    argv = [script, "--epoch", str(epoch), "--tag", "t", "--seed", "0"]
    with mock.patch.object(sys, "argv", argv), mock.patch("os.system", captured.append), mock.patch("builtins.print"):
        code = compile(open(script).read(), script, "exec")
        exec(code, {"__name__": "__main__"})
    return captured


def flag(tokens, name):
    return tokens[tokens.index(name) + 1]


def table(script, epoch):
    stages = []
    last_epoch, last_res = None, None
    for cmd in commands(script, epoch):
        t = shlex.split(cmd)
        res = int(flag(t, "--input_size"))
        end = int(flag(t, "--end_epoch"))
        start = 0 if last_epoch is None else round(last_epoch * last_res**2 / res**2)
        stages.append({
            "resolution": res,
            "magnitude": int(re.match(r"rand-m(\d+)-", flag(t, "--aa")).group(1)),
            "epochs_at_resolution": int(flag(t, "--epochs")),
            "start_epoch": start,
            "end_epoch": end,
            "epochs": end - start,
            "warmup_epochs": int(flag(t, "--warmup_epochs")),
            "drop_path": float(flag(t, "--drop_path")),
            "batch_per_gpu": int(flag(t, "--batch_size")),
            "update_freq": int(flag(t, "--update_freq")),
            "gpus": int(re.search(r"--nproc_per_node=(\d+)", cmd).group(1)),
        })
        last_epoch, last_res = end, res
    return stages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="a checkout of LeapLabTHU/EfficientTrain")
    ap.add_argument("--epoch", type=int, default=300)
    args = ap.parse_args()
    fixture = {"epoch": args.epoch, "source": "LeapLabTHU/EfficientTrain _ET_pp_main_*.py + utils_buffer.auto_load_model", "models": {}}
    for model, script in SCRIPTS.items():
        fixture["models"][model] = table(os.path.join(args.official, script), args.epoch)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    for model, stages in fixture["models"].items():
        print(model, [(s["resolution"], s["magnitude"], s["epochs"]) for s in stages])


if __name__ == "__main__":
    main()
