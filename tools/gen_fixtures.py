"""Reference fixtures for the models' parity tests, generated with PyTorch + timm (PyPI).

1. Small models (`<name>.safetensors`): a small instance of a timm class (custom
   depths/widths) with random weights under timm's names, inputs `__input{i}__` and timm's
   eval-mode logits `__logits{i}__`.
2. Registered models at full size (`zoo_logits.safetensors`): weights and inputs are not
   stored but computed by `fixture_values` below, which the Rust tests reproduce bit for bit
   (models/src/testing.rs); only timm's logits are stored, as `<model>@<size>`.

    python -m venv .venv-ref && .venv-ref/bin/pip install torch timm safetensors
    .venv-ref/bin/python tools/gen_fixtures.py            # writes models/tests/fixtures/
    .venv-ref/bin/python tools/gen_fixtures.py --large    # the other variants, local check only
"""
import os

import numpy as np
import timm
import torch

import cswin_ref
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


def fixture_values(name, shape):
    """Same integer arithmetic as `fixture_values` in models/src/testing.rs."""
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.uint64)
    u = ((i * np.uint64(2654435761) + np.uint64(h)) & np.uint64(0xFFFFFFFF)).astype(np.float64) / 4294967296.0
    fan_in = max(int(np.prod(shape[1:])), 1) if len(shape) > 1 else 1
    if name == "__input__":
        v = (u - 0.5) * 4.0
    elif name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("running_mean") or name.endswith("bias"):
        v = 0.2 * (u - 0.5)
    elif name.endswith("gamma"):
        v = 0.5 + 0.5 * u
    elif len(shape) == 1:
        v = 0.8 + 0.4 * u
    else:
        v = (u - 0.5) * np.sqrt(24.0 / fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def small_stem_resnet(name, stride):
    """Our ResNet small-image stem: one 3x3 conv (stride s), no max-pool; timm names."""
    m = timm.create_model(name)
    m.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=stride, padding=1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m


LARGE = [
    (name, (lambda n=name: cswin_ref.create(n) if n.startswith("CSWin") else timm.create_model(n)), [224])
    for name in ["convnext_femto", "convnext_pico", "convnext_nano", "convnext_small", "convnext_base", "resnet34",
                 "deit_small_patch16_224", "deit_base_patch16_224", "swin_small_patch4_window7_224",
                 "swin_base_patch4_window7_224", "pvt_v2_b1", "pvt_v2_b2",
                 "caformer_s36", "caformer_m36", "CSWin_64_24322_small_224", "CSWin_96_24322_base_224"]
]


def zoo(cases=None, filename="zoo_logits.safetensors"):
    cases = cases or [
        ("convnext_atto", lambda: timm.create_model("convnext_atto"), [224, 160]),
        ("convnext_tiny", lambda: timm.create_model("convnext_tiny"), [224]),
        ("resnet18", lambda: timm.create_model("resnet18"), [224, 160]),
        ("resnet50", lambda: timm.create_model("resnet50"), [224, 128]),
        ("resnet18_stem1", lambda: small_stem_resnet("resnet18", 1), [32]),
        # Other sizes resample the position embedding on the fly (timm's dynamic_img_size).
        ("deit_tiny_patch16_224", lambda: timm.create_model("deit_tiny_patch16_224", dynamic_img_size=True), [224, 160]),
        ("deit_tiny_p4", lambda: timm.create_model("deit_tiny_patch16_224", patch_size=4, img_size=32, dynamic_img_size=True), [32, 24]),
        # Windows and shifts fixed at 224; other sizes pad each block's map to the window
        # and build the shifted-window mask for it (timm's dynamic_img_size=True).
        ("swin_tiny_patch4_window7_224", lambda: timm.create_model("swin_tiny_patch4_window7_224", dynamic_img_size=True), [224, 160, 96]),
        # Resolution-free: 100 px gives odd maps (25, 13, 7, 4) at every stage.
        ("pvt_v2_b0", lambda: timm.create_model("pvt_v2_b0"), [224, 160, 100]),
        ("caformer_s18", lambda: timm.create_model("caformer_s18"), [224, 160, 100]),
        # Not in timm: our PyTorch rewrite of the official architecture (tools/cswin_ref.py),
        # stripe widths [1, 2, R/32, R/32] as EfficientTrain's copy.
        ("CSWin_64_12211_tiny_224", lambda: cswin_ref.create("CSWin_64_12211_tiny_224"), [224, 160, 96]),
    ]
    out = {}
    for key, ctor, sizes in cases:
        model = ctor().eval()
        with torch.no_grad():
            for name, t in model.state_dict().items():
                if not name.endswith("num_batches_tracked"):
                    t.copy_(fixture_values(name, tuple(t.shape)))
            for s in sizes:
                x = fixture_values("__input__", (2, 3, s, s))
                out[f"{key}@{s}"] = model(x).contiguous()
                print(f"{key}@{s}: logits {tuple(out[f'{key}@{s}'].shape)}, |max| {out[f'{key}@{s}'].abs().max():.3f}")
    save_file(out, os.path.join(OUT, filename))


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--large" in os.sys.argv:
        # Not committed (.gitignore): checked by `cargo test --release -p et-models --test timm_parity -- --ignored`.
        zoo(LARGE, "zoo_logits_large.safetensors")
        return
    # conv_mlp=True is timm's atto..nano layout; False is tiny..base (Linear MLP weights).
    fixture("convnext_convmlp", ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), conv_mlp=True, num_classes=7), [(64, 64), (48, 80)])
    fixture("convnext_linear", ConvNeXt(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False, num_classes=5), [(64, 64), (40, 40)])
    # Our small-image stem (stem_stride 2): timm's patch-4 model with a 2x2/s2 stem conv.
    # (timm's own patch_size=2 adds a stride-2 downsample to stage 0 instead.)
    small = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=True, num_classes=10)
    small.stem[0] = torch.nn.Conv2d(3, 8, kernel_size=2, stride=2)
    fixture("convnext_stem2", small, [(32, 32), (24, 24)])
    zoo()


if __name__ == "__main__":
    main()
