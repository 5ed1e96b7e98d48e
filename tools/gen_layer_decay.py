"""Reference layer-wise lr decay groups (`models/tests/fixtures/layer_decay.json`).

For one variant per family, every trainable parameter (our names = timm's, CSWin: the
official repository's) with the layer id and lr scale that the reference code gives it at
decay 0.75:

- ConvNeXt and CSWin: EfficientTrain's `optim_factory.py` (`get_num_layer_for_convnext`,
  `get_num_layer_for_cswin`, the scales of `main_buffer.py`), which name parameters as the
  official ConvNeXt / CSWin code does; ConvNeXt's official names are mapped to timm's with
  timm's own `checkpoint_filter_fn`.
- DeiT, Swin, ResNet, PVT v2, CAFormer: timm's `param_groups_layer_decay` (the models'
  `group_matcher`).

    python -m venv .venv-ref && .venv-ref/bin/pip install torch timm
    git clone https://github.com/LeapLabTHU/EfficientTrain ../EfficientTrain
    .venv-ref/bin/python tools/gen_layer_decay.py --official ../EfficientTrain
"""
import argparse
import ast
import importlib.util
import json
import os
import sys

import timm
import torch
from timm.optim._param_groups import param_groups_layer_decay

sys.path.insert(0, os.path.dirname(__file__))
import cswin_ref  # noqa: E402

DECAY = 0.75
OUT = os.path.join(os.path.dirname(__file__), "..", "models", "tests", "fixtures", "layer_decay.json")


def official_functions(repo):
    """The layer-id functions of the official optim_factory.py, without importing its
    optimiser dependencies."""
    path = os.path.join(repo, "optim_factory.py")
    tree = ast.parse(open(path).read())
    wanted = {"get_num_layer_for_convnext", "get_num_layer_for_cswin"}
    module = ast.Module(body=[n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[])
    scope = {}
    exec(compile(module, path, "exec"), scope)
    return scope["get_num_layer_for_convnext"], scope["get_num_layer_for_cswin"]


def official_scales(num_layers):
    # main_buffer.py: decay ** (num_layers + 1 - i) for i in range(num_layers + 2)
    return [DECAY ** (num_layers + 1 - i) for i in range(num_layers + 2)]


def timm_groups(name):
    model = timm.create_model(name, pretrained=False, num_classes=10)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=DECAY)
    # The group names are "layer_<id>_<decay>"; param_groups_layer_decay returns tensors,
    # so match them back to names by identity.
    by_id = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            out[by_id[id(p)]] = g["lr_scale"]
    return out


def convnext_groups(repo, layer_of):
    spec = importlib.util.spec_from_file_location("official_convnext", os.path.join(repo, "models", "convnext.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # timm's register_model looks the module up
    spec.loader.exec_module(mod)
    official = mod.ConvNeXt(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768], num_classes=10)
    # Not create_model: the official module re-registered the name.
    ours = timm.models.convnext.convnext_tiny(pretrained=False, num_classes=10)
    # Each official tensor is tagged with its index, mapped by timm's filter, and found again.
    state = {k: torch.full(v.shape, float(i)) for i, (k, v) in enumerate(official.state_dict().items())}
    names = list(official.state_dict().keys())
    mapped = timm.models.convnext.checkpoint_filter_fn(state, ours)
    scales = official_scales(12)
    trainable = {n for n, _ in ours.named_parameters()}
    out = {}
    for timm_name, v in mapped.items():
        if timm_name in trainable:
            out[timm_name] = scales[layer_of(names[int(v.flatten()[0].item())])]
    assert set(out) == trainable, sorted(trainable - set(out))
    return out


def cswin_groups(layer_of):
    model = cswin_ref.create("CSWin_64_12211_tiny_224", num_classes=10)
    scales = official_scales(20)
    return {n: scales[layer_of(n)] for n, _ in model.named_parameters()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="a checkout of LeapLabTHU/EfficientTrain")
    args = ap.parse_args()
    convnext_layer, cswin_layer = official_functions(args.official)
    fixture = {
        "decay": DECAY,
        "source": {
            "convnext_tiny": "EfficientTrain optim_factory.get_num_layer_for_convnext",
            "CSWin_64_12211_tiny_224": "EfficientTrain optim_factory.get_num_layer_for_cswin",
            "other": f"timm {timm.__version__} param_groups_layer_decay",
        },
        "models": {
            "convnext_tiny": convnext_groups(args.official, convnext_layer),
            "CSWin_64_12211_tiny_224": cswin_groups(cswin_layer),
        },
    }
    for name in ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "resnet50", "pvt_v2_b0", "caformer_s18"]:
        fixture["models"][name] = timm_groups(name)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1, sort_keys=True)
        f.write("\n")
    for name, m in fixture["models"].items():
        print(f"{name}: {len(m)} parameters, {len(set(m.values()))} distinct scales")


if __name__ == "__main__":
    main()
