"""PyTorch counterpart of `cargo run --release -p et-models --example linear_shapes`: forward
and backward of `nn.Linear` on the token counts and widths of Swin-T's four stages at batch 8
(rows x in -> out), 2 threads, best of 5. Compares the GEMM strategy of our linear layer with
PyTorch's per layer shape.

    python bench/torch_linear_shapes.py [--deit]

`--deit` takes DeiT-tiny's four shapes at batch 16 instead (3152 tokens: qkv, proj, fc1, fc2).
"""
import sys
import time

import torch

# The list in models/examples/linear_shapes.rs.
SHAPES = [
    (25088, 96, 384), (25088, 384, 96), (25088, 96, 288),
    (6272, 192, 768), (6272, 768, 192),
    (1568, 384, 1536), (1568, 1536, 384), (1568, 384, 1152),
    (392, 768, 3072), (392, 3072, 768),
]
DEIT = [(3152, 192, 576), (3152, 192, 192), (3152, 192, 768), (3152, 768, 192)]
if "--deit" in sys.argv[1:]:
    SHAPES = DEIT

torch.set_num_threads(2)
for m, k, n in SHAPES:
    x = torch.randn(m, k, requires_grad=True)
    lin = torch.nn.Linear(k, n)
    best = [float("inf"), float("inf")]
    for _ in range(5):
        t = time.perf_counter()
        y = lin(x)
        tf = time.perf_counter() - t
        g = torch.ones_like(y)
        t = time.perf_counter()
        y.backward(g)
        tb = time.perf_counter() - t
        best = [min(best[0], tf), min(best[1], tb)]
        x.grad = lin.weight.grad = lin.bias.grad = None
    print(f"{m}x{k}->{n} fwd {best[0] * 1e3:7.2f} ms bwd {best[1] * 1e3:7.2f} ms")
