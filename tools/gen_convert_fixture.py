"""A tiny training checkpoint in the layout of the official ConvNeXt / EfficientTrain
repositories (torch.save of {'model', 'model_ema', 'optimizer', 'epoch', 'args'}), for the
`et-export convert` tests: it checks that a real PyTorch pickle with argparse and optimizer
state is read, that `model` / `model_ema` are told apart, and that a checkpoint of another
size is refused with the names that do not fit. Shapes are a 1-block-per-stage ConvNeXt with
widths 4/8/16/32 (not a registered model, on purpose: it must not load).

    /opt/torchenv/bin/python tools/gen_convert_fixture.py   # writes tests/fixtures/official_convnext_tiny.pth
"""
import argparse
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "official_convnext_tiny.pth")


def state_dict(seed):
    g = torch.Generator().manual_seed(seed)
    dims = [4, 8, 16, 32]
    sd = {}
    r = lambda *s: torch.randn(*s, generator=g)
    sd["downsample_layers.0.0.weight"] = r(dims[0], 3, 4, 4)
    sd["downsample_layers.0.0.bias"] = r(dims[0])
    sd["downsample_layers.0.1.weight"] = r(dims[0])
    sd["downsample_layers.0.1.bias"] = r(dims[0])
    for i in range(1, 4):
        sd[f"downsample_layers.{i}.0.weight"] = r(dims[i - 1])
        sd[f"downsample_layers.{i}.0.bias"] = r(dims[i - 1])
        sd[f"downsample_layers.{i}.1.weight"] = r(dims[i], dims[i - 1], 2, 2)
        sd[f"downsample_layers.{i}.1.bias"] = r(dims[i])
    for i, d in enumerate(dims):
        p = f"stages.{i}.0."
        sd[p + "gamma"] = r(d)
        sd[p + "dwconv.weight"] = r(d, 1, 7, 7)
        sd[p + "dwconv.bias"] = r(d)
        sd[p + "norm.weight"] = r(d)
        sd[p + "norm.bias"] = r(d)
        sd[p + "pwconv1.weight"] = r(4 * d, d)
        sd[p + "pwconv1.bias"] = r(4 * d)
        sd[p + "pwconv2.weight"] = r(d, 4 * d)
        sd[p + "pwconv2.bias"] = r(d)
    sd["norm.weight"] = r(dims[-1])
    sd["norm.bias"] = r(dims[-1])
    sd["head.weight"] = r(10, dims[-1])
    sd["head.bias"] = r(10)
    return sd


def main():
    model = state_dict(0)
    ema = state_dict(1)
    params = [torch.nn.Parameter(v.clone()) for v in model.values()]
    opt = torch.optim.AdamW(params[:2], lr=1e-3)
    params[0].sum().backward()
    opt.step()
    args = argparse.Namespace(model="convnext_tiny", epochs=300, lr=4e-3, drop_path=0.1, data_path="/imagenet", model_ema=True)
    ckpt = {"model": model, "model_ema": ema, "optimizer": opt.state_dict(), "epoch": 299, "args": args}
    torch.save(ckpt, OUT)
    print(f"{OUT}: {os.path.getsize(OUT)} bytes, {len(model)} tensors per state dict")


if __name__ == "__main__":
    main()
