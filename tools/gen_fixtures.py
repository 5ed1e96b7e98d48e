"""Reference fixtures for the models' parity tests, generated with PyTorch + timm (PyPI).

Each fixture is one safetensors file holding a timm model's weights under timm's names,
plus `__input__` (NCHW float32) and `__logits__` (timm's eval-mode output for it).
The models are small instances of the real timm classes (custom depths/widths), so the
files stay tiny while every code path of the architecture is exercised.

    python -m venv .venv-ref && .venv-ref/bin/pip install torch timm safetensors
    .venv-ref/bin/python tools/gen_fixtures.py            # writes models/tests/fixtures/
"""
import os

import torch
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt

OUT = os.path.join(os.path.dirname(__file__), "..", "models", "tests", "fixtures")


def randomize(model, seed):
    # timm's init leaves LayerNorms at (1, 0) and layer scales at 1e-6; random values make
    # every parameter matter in the comparison.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def fixture(name, model, sizes, seed=0):
    randomize(model, seed)
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    for i, (h, w) in enumerate(sizes):
        x = torch.randn(2, 3, h, w, generator=g)
        with torch.no_grad():
            y = model(x)
        tensors[f"__input{i}__"] = x
        tensors[f"__logits{i}__"] = y
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path)
    print(f"{path}: {sum(t.numel() for t in tensors.values())} values, logits {tuple(y.shape)}")


def main():
    os.makedirs(OUT, exist_ok=True)
    # conv_mlp=True is timm's atto..nano layout; False is tiny..base (Linear MLP weights).
    fixture("convnext_convmlp", ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), conv_mlp=True, num_classes=7), [(64, 64), (48, 80)])
    fixture("convnext_linear", ConvNeXt(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False, num_classes=5), [(64, 64), (40, 40)])
    # Our small-image stem (stem_stride 2): timm's patch-4 model with a 2x2/s2 stem conv.
    # (timm's own patch_size=2 adds a stride-2 downsample to stage 0 instead.)
    small = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=True, num_classes=10)
    small.stem[0] = torch.nn.Conv2d(3, 8, kernel_size=2, stride=2)
    fixture("convnext_stem2", small, [(32, 32), (24, 24)])


if __name__ == "__main__":
    main()
