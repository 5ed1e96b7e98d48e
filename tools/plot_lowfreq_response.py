#!/usr/bin/env python3
"""Writes docs/img/lowfreq-response.svg: the 1-D magnitude response of the two ways
`--low-freq` brings a crop down to a stage's resolution B (docs/training.md,
"Low-resolution stages"), at B / base = 160/224 and 96/224.

    /opt/torchenv/bin/python tools/plot_lowfreq_response.py      # Pillow and numpy

The responses are measured, not derived: for every frequency k (cycles across the crop) a
cosine and a sine of k cycles are put through each operation, and the output's amplitude at
k (or, above B/2, at the frequency k aliases to on the B-pixel grid) is the gain (k = B/2
itself is left out: at the output's Nyquist frequency both modes keep a cosine and lose a
sine, whatever the filter; so is 112, the base's own Nyquist frequency):

- fft, crop of the base's size: the low-frequency crop of et-data (`lowfreq.rs`), here its
  numpy form: keep DFT bins -floor(B/2) .. ceil(B/2)-1, scale by B/N, inverse DFT;
- fft, crop twice the base: Pillow's bicubic resize of 2*224 samples to 224 (the
  RandomResizedCrop at the base resolution), then the same low-frequency crop;
- resize: Pillow's bicubic resize of the crop straight to B (mode "F", no rounding). Its
  kernel widens with the crop, so in cycles per crop its response is the same for any crop
  at least B wide.

No plotting library is needed: the SVG is written directly, deterministically.
"""

import os

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "docs", "img", "lowfreq-response.svg")
BASE = 224


def fft_crop(x, b):
    n = len(x)
    spec = np.fft.fft(x)
    keep = np.r_[0 : (b + 1) // 2, n - b // 2 : n]
    return np.real(np.fft.ifft(spec[keep])) * b / n


def pil_resize(x, n_out):
    im = Image.fromarray(x.astype(np.float32).reshape(1, -1), mode="F")
    return np.asarray(im.resize((n_out, 1), Image.BICUBIC), dtype=np.float64).ravel()


def gain(op, n_in, k, b):
    """Amplitude at k's (possibly aliased) frequency on the B grid, RMS over two phases (the
    cosine alone at 0, where the sine is all zeros)."""
    alias = abs(k - b * round(k / b))
    t = np.arange(n_in) / n_in
    amps = []
    for phase in (0.0,) if k == 0 else (0.0, np.pi / 2):
        y = op(np.cos(2 * np.pi * k * t + phase))
        spec = np.fft.fft(y) / len(y)
        amp = abs(spec[alias]) * (1 if alias == 0 or 2 * alias == b else 2)
        amps.append(amp)
    return float(np.sqrt(np.mean(np.square(amps))))


def responses(b):
    # Not B/2 itself: a frequency at the output's Nyquist keeps its cosine and loses its sine
    # in both modes, a sampling effect rather than a filter's; likewise the base's own Nyquist
    # frequency (BASE/2), where the input holds a cosine only.
    ks = np.array([k for k in range(BASE // 2) if 2 * k != b])
    curves = {
        "fft, crop of the base's size": [gain(lambda x: fft_crop(x, b), BASE, k, b) for k in ks],
        "fft, crop twice the base": [gain(lambda x: fft_crop(pil_resize(x, BASE), b), 2 * BASE, k, b) for k in ks],
        "resize (any crop of at least B)": [gain(lambda x: pil_resize(x, b), BASE, k, b) for k in ks],
    }
    return ks, curves


COLOURS = ["#1f5fa8", "#7aa6d6", "#c8511b"]
DASHES = ["", "6,4", ""]


def panel(x0, y0, w, h, b, ks, curves):
    out = []
    xmax, ymax = BASE // 2, 1.1
    sx = lambda k: x0 + w * k / xmax
    sy = lambda g: y0 + h * (1 - g / ymax)
    nyq = b / 2
    out.append(f'<rect x="{sx(nyq):.2f}" y="{y0}" width="{sx(xmax) - sx(nyq):.2f}" height="{h}" fill="#f3e3da"/>')
    out.append(f'<text x="{sx(nyq) + 6:.2f}" y="{y0 + 16}" font-size="11" fill="#8a4b2b">above B/2: aliased</text>')
    for g in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{x0}" y1="{sy(g):.2f}" x2="{x0 + w}" y2="{sy(g):.2f}" stroke="#dddddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{sy(g) + 4:.2f}" font-size="11" text-anchor="end">{g:g}</text>')
    for k in range(0, xmax + 1, 16):
        out.append(f'<line x1="{sx(k):.2f}" y1="{y0 + h}" x2="{sx(k):.2f}" y2="{y0 + h + 4}" stroke="#333333"/>')
        out.append(f'<text x="{sx(k):.2f}" y="{y0 + h + 17}" font-size="11" text-anchor="middle">{k}</text>')
    out.append(f'<line x1="{sx(nyq):.2f}" y1="{y0}" x2="{sx(nyq):.2f}" y2="{y0 + h}" stroke="#8a4b2b" stroke-dasharray="2,3"/>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333333"/>')
    for (name, g), colour, dash in zip(curves.items(), COLOURS, DASHES):
        pts = " ".join(f"{sx(k):.2f},{sy(v):.2f}" for k, v in zip(ks, g))
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.8"{extra}/>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 - 10}" font-size="13" text-anchor="middle">B = {b} of a {BASE}-px base (B/2 = {b // 2} cycles)</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" font-size="12" text-anchor="middle">frequency (cycles across the crop)</text>')
    return out


def main():
    w, h, left, top, gap = 400, 250, 60, 40, 70
    width, height = left + 2 * w + gap + 20, top + h + 110
    body = []
    for i, b in enumerate((160, 96)):
        ks, curves = responses(b)
        body += panel(left + i * (w + gap), top, w, h, b, ks, curves)
    body.append(f'<text x="18" y="{top + h / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 18 {top + h / 2})">gain</text>')
    ly = top + h + 58
    for j, (name, colour, dash) in enumerate(zip(curves, COLOURS, DASHES)):
        lx = left + j * 250
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        body.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour}" stroke-width="1.8"{extra}/>')
        body.append(f'<text x="{lx + 34}" y="{ly + 4}" font-size="12">{name}</text>')
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">',
        '<!-- written by tools/plot_lowfreq_response.py -->',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        *body,
        "</svg>",
    ]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write("\n".join(svg) + "\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    for b in (160, 96):
        ks, curves = responses(b)
        for name, g in curves.items():
            g = dict(zip(ks, g))
            above = max(v for k, v in g.items() if 2 * k > b)
            print(f"B={b} {name}: gain at B/4 {g[b // 4]:.3f}, at B/2-1 {g[b // 2 - 1]:.3f}, largest above B/2 {above:.3f}")


if __name__ == "__main__":
    main()
