"""PyTorch counterpart of `et-bench train-step`: the same architecture from timm, the same
step (forward, soft-target cross-entropy with label smoothing 0.1, backward, AdamW) on
random data, with `torch.set_num_threads(T)`. Prints `img/s: X` (median) as the last line.
On a GPU (`--device cuda`), `--precision bf16` is PyTorch's standard mixed precision
(autocast to bf16, f32 weights, AdamW state and loss), as `et-train --precision bf16`;
`--compile` wraps the model in `torch.compile`.

    pip install torch timm
    python bench/torch_train_step.py --model convnext_atto --size 224 --batch 16 --threads 2
    python bench/torch_train_step.py --model convnext_tiny --batch 128 --device cuda --precision bf16 [--compile]
"""
import contextlib
import argparse
import resource
import statistics
import time

import timm
import torch


def create(name, classes, size, built_for=None):
    """The model as et-bench builds it at `size`: ViTs with their position embedding for that
    size; Swin with its windows laid out for that size, or, given `built_for`, for that base
    size and run at `size` with padded windows, which is what et-train and et-bench compute
    (timm's `strict_img_size=False`); CSWin, which timm lacks, from tools/cswin_ref.py."""
    if name.startswith("CSWin"):
        import os, sys
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
        import cswin_ref
        return cswin_ref.create(name, num_classes=classes)
    if built_for and name.startswith("swin"):
        return timm.create_model(name, num_classes=classes, img_size=built_for, strict_img_size=False)
    kwargs = {"img_size": size} if name.startswith(("deit", "vit", "swin")) else {}
    return timm.create_model(name, num_classes=classes, **kwargs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--stem-stride", type=int, default=None, help="ConvNeXt stem kernel=stride (et-train's small-image stem: 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--built-for", type=int, default=None, help="Swin: build for this base size and run at --size with padded windows, as et-train does")
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create(a.model, a.classes, a.size, a.built_for)
    if a.stem_stride is not None:
        c = model.stem[0].out_channels
        model.stem[0] = torch.nn.Conv2d(3, c, kernel_size=a.stem_stride, stride=a.stem_stride)
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.arange(a.batch, device=dev) % a.classes
    n_params = sum(q.numel() for q in model.parameters())
    step_model = torch.compile(model) if a.compile else model
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext
    mode = f"{dev} {a.precision}{' compiled' if a.compile else ''}"
    print(f"{a.model} @ {a.size}px, batch {a.batch}, {mode}, {torch.get_num_threads()} threads, {n_params / 1e6:.2f} M params")
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = step_model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        sync()
        dt = time.perf_counter() - t
        print(f"step {i}{' (warm-up)' if i < a.warmup else ''}: {dt:.3f} s, {a.batch / dt:.1f} img/s")
        if i >= a.warmup:
            times.append(dt)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"img/s: {a.batch / statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
