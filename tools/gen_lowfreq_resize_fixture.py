#!/usr/bin/env python3
"""Writes data/tests/fixtures/lowfreq_resize/: the reference for `--low-freq resize`, the
low-resolution fast path that crops a training image straight to a stage's B x B from a
JPEG decoded at a reduced DCT scale. data/tests/lowfreq_resize.rs compares
et_data::stage_crop::decode_resized with it.

    /opt/torchenv/bin/python tools/gen_lowfreq_resize_fixture.py      # Pillow and numpy

The reference, for an image of W x H, a crop box (top, left, height, width) in its
full-resolution pixels and an output size B, is written with Pillow alone:

1. the DCT scale: the largest d of 8, 4, 2 with width >= d*B and height >= d*B, else 1
   (libjpeg's scale 1/d, i.e. M/8 with M = 8/d: the smallest of 1/8, 2/8, 4/8, 8/8 that
   keeps the crop at least B pixels on both sides); 1 for anything but a JPEG;
2. `Image.draft('RGB', (W // d, H // d))`, which makes libjpeg decode at exactly 1/d
   (Pillow picks the largest d with min(W // w, H // h) >= d), giving ceil(W/d) x ceil(H/d);
3. the box in the scaled image is (left/d, top/d, (left+width)/d, (top+height)/d),
   fractional: scaled pixel i covers full-resolution pixels [i*d, (i+1)*d). No rounding:
   the image is cropped to the whole scaled pixels that cover the box, x0 = floor(left/d),
   y0 = floor(top/d), x1 = ceil((left+width)/d), y1 = ceil((top+height)/d), and that window
   is resized to B x B (bicubic, RandomResizedCrop's filter) with Pillow's fractional
   `box=` argument giving the box inside the window. With d = 1 this is exactly
   torchvision's crop-then-resize.

Each case is a line of manifest.txt: `FILE TOP LEFT HEIGHT WIDTH B D EXPECTED` (EXPECTED:
raw RGB8 of B x B, rows top to bottom). Images: three JPEGs written here (4:2:0 at odd
sizes, progressive 4:4:4, grey), a CIFAR image from assets/, and a PNG (no DCT scaling).
The output is deterministic for a given Pillow (its JPEG encoder's bytes may change between
versions; the pixels stored are always those of the files stored).
"""

import io
import math
import os
import shutil

import numpy as np
import PIL
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "data", "tests", "fixtures", "lowfreq_resize")


def picture(w, h, seed):
    """Gradients, sinusoids of several frequencies, hard edges and a noisy patch: content at
    every frequency, so that a wrong scale, box or filter shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / 3.1 + y / 17.0)
    g = 127 + 90 * np.cos(y / 2.3) * np.sin(x / 11.0)
    b = (x * 255 / w + 60 * ((x // 9 + y // 7) % 2)) % 256
    img = np.stack([r, g, b], axis=-1)
    patch = (slice(h // 2, h // 2 + h // 4), slice(w // 3, w // 3 + w // 4))
    img[patch] = rng.integers(0, 256, img[patch].shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def jpeg(arr, mode, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", **kw)
    return buf.getvalue()


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def scale_for(fmt, width, height, b):
    if fmt != "JPEG":
        return 1
    return next((d for d in (8, 4, 2) if width >= d * b and height >= d * b), 1)


def reference(path, box, b):
    top, left, height, width = box
    im = Image.open(path)
    fmt, (w, h) = im.format, im.size
    d = scale_for(fmt, width, height, b)
    if fmt == "JPEG":
        im.draft("RGB", (w // d, h // d))
        assert im.size == (math.ceil(w / d), math.ceil(h / d)), (path, d, im.size)
    im = im.convert("RGB")
    f = (left / d, top / d, (left + width) / d, (top + height) / d)
    win = (math.floor(f[0]), math.floor(f[1]), min(math.ceil(f[2]), im.size[0]), min(math.ceil(f[3]), im.size[1]))
    region = (f[0] - win[0], f[1] - win[1], f[2] - win[0], f[3] - win[1])
    out = im.crop(win).resize((b, b), Image.BICUBIC, box=region)
    return d, out.tobytes()


# (file, [(top, left, height, width, B)]); the comment is the DCT scale the rule picks.
CASES = [
    ("rgb420.jpg", [
        (5, 7, 150, 190, 18),      # 1/8: odd offsets, fractional box on every side
        (5, 7, 150, 190, 24),      # 1/4
        (30, 41, 101, 77, 36),     # 1/2
        (30, 41, 101, 77, 50),     # 1/1: torchvision's crop and resize
        (64, 82, 93, 121, 11),     # 1/8, box touching the right and bottom edges
        (0, 0, 157, 203, 40),      # 1/2, the whole image
        (13, 3, 60, 61, 29),       # 1/2, just at the threshold (60 >= 2 * 29 + 2)
        (13, 3, 57, 61, 29),       # 1/1, just under it (57 < 58)
        (100, 150, 20, 30, 24),    # 1/1, an up-sampling crop
    ]),
    ("rgb444_progressive.jpg", [
        (3, 9, 111, 147, 27),      # 1/4
        (10, 20, 100, 120, 13),    # 1/4 (just under 1/8: 100 < 104)
        (7, 5, 97, 99, 12),        # 1/8
        (1, 2, 90, 95, 44),        # 1/2
    ]),
    ("grey.jpg", [
        (2, 3, 96, 130, 12),       # 1/8
        (11, 17, 70, 83, 33),      # 1/2
        (11, 17, 70, 83, 40),      # 1/1
    ]),
    ("cifar_airplane.jpg", [
        (0, 0, 32, 32, 4),         # 1/8: 4 x 4 pixels
        (1, 3, 29, 27, 8),         # 1/2
        (0, 0, 32, 32, 8),         # 1/4
        (4, 2, 25, 26, 24),        # 1/1
    ]),
    ("rgb.png", [
        (5, 6, 60, 80, 10),        # no DCT scaling for a PNG
        (0, 0, 70, 90, 24),
    ]),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    files = {
        "rgb420.jpg": jpeg(picture(203, 157, 1), "RGB", quality=90, subsampling=2),
        "rgb444_progressive.jpg": jpeg(picture(160, 120, 2), "RGB", quality=95, subsampling=0, progressive=True),
        "grey.jpg": jpeg(picture(137, 99, 3), "L", quality=85),
        "rgb.png": png(picture(90, 70, 4)),
    }
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as fh:
            fh.write(data)
    shutil.copyfile(os.path.join(ROOT, "assets", "cifar10-mini", "train", "airplane", "0000.jpg"), os.path.join(OUT, "cifar_airplane.jpg"))
    lines = [
        f"# written by tools/gen_lowfreq_resize_fixture.py with Pillow {PIL.__version__}",
        "# FILE TOP LEFT HEIGHT WIDTH B D EXPECTED (raw RGB8, B x B)",
    ]
    seen = set()
    for name, boxes in CASES:
        for k, (top, left, height, width, b) in enumerate(boxes):
            d, pixels = reference(os.path.join(OUT, name), (top, left, height, width), b)
            expected = f"{name}.{k}.rgb"
            with open(os.path.join(OUT, expected), "wb") as fh:
                fh.write(pixels)
            seen.add(d if name.endswith(".jpg") else 0)
            lines.append(f"{name} {top} {left} {height} {width} {b} {d} {expected}")
    assert {1, 2, 4, 8} <= seen, seen
    with open(os.path.join(OUT, "manifest.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines) - 2} cases to {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
