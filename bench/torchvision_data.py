"""PyTorch counterpart of `et-bench data`: timm's training transform
(`create_transform(S, is_training=True, auto_augment=POLICY, interpolation='bicubic')`:
RandomResizedCrop, flip, RandAugment, ToTensor, Normalize; PIL) over a torchvision
ImageFolder with a DataLoader of T worker processes. Prints per-epoch times, then
`img/s: X` (median over epochs) as the last line.

    pip install torch torchvision timm
    python bench/torchvision_data.py --data DIR --size 224 --aa rand-m9-mstd0.5-inc1 --threads 2
"""
import argparse
import os
import statistics
import time

import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torchvision.datasets import ImageFolder

# timm's PosterizeIncreasing can ask for 0 bits once magnitude noise (mstd) pushes m past 9;
# Pillow >= 10 raises on that. Keep the older Pillow / TF meaning (a black image), which is
# what et-data does, instead of crashing the worker. Module level, so spawned workers get it.
_posterize = ImageOps.posterize


def _posterize_0_is_black(image, bits):
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return _posterize(image, bits)


ImageOps.posterize = _posterize_0_is_black


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    p.add_argument("--threads", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    root = os.path.join(a.data, "train") if os.path.isdir(os.path.join(a.data, "train")) else a.data
    tf = create_transform(a.size, is_training=True, auto_augment=a.aa, interpolation="bicubic")
    ds = ImageFolder(root, transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=a.batch, shuffle=True, num_workers=a.threads, persistent_workers=a.threads > 0, drop_last=False
    )
    print(f"{len(ds)} images from {a.data}, size {a.size}, {a.aa}, {a.threads} DataLoader workers, batch {a.batch}")
    print(tf)
    rates = []
    for epoch in range(max(1, a.epochs)):
        t = time.perf_counter()
        n = 0
        checksum = 0.0
        for x, _ in loader:
            n += x.shape[0]
            checksum += float(x.flatten()[::997].sum())
        secs = time.perf_counter() - t
        rates.append(n / secs)
        print(f"epoch {epoch}: {n} images in {secs:.2f} s, {n / secs:.1f} img/s (checksum {checksum:.1f})")
    print(f"img/s: {statistics.median(rates):.1f}")


if __name__ == "__main__":
    main()
