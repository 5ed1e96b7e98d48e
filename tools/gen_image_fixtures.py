#!/usr/bin/env python3
"""Writes data/tests/fixtures/images/: small images in every form et-data decodes, each with
the RGB pixels that torchvision's pil_loader (`Image.open(f).convert('RGB')`) gives for it.
data/tests/pil_formats.rs decodes every file with et_data::decode::decode_rgb and compares.

    /opt/torchenv/bin/python tools/gen_image_fixtures.py      # Pillow and numpy

For each fixture `NAME.EXT` it writes `NAME.EXT.rgb` (the expected pixels, raw RGB8, rows
top to bottom) and a line `NAME.EXT WIDTH HEIGHT RULE` in `manifest.txt`:

  pil        the expected pixels are PIL's convert('RGB'), byte for byte;
  pil-near   PIL's convert('RGB'), which et-data gives within 1 level: the image crate
             converts these to RGB itself (CMYK TIFF, JPEG-compressed TIFF, PGM with a
             maxval other than 255 or 65535), rounding differently from PIL;
  high-byte  16-bit grey: et-data keeps each sample's high byte (v >> 8), computed here with
             numpy from the 16-bit samples written; PIL's convert('RGB') clips the samples to
             255 instead (it whitens the image), and that is stored as `NAME.EXT.pil.rgb`.

Pillow cannot write a YCCK JPEG (it writes CMYK ones), so ycck.jpg comes from the small
baseline JPEG encoder below (Adobe APP14 marker with transform 2); the reference pixels are
still PIL's decode of that file. The output is deterministic: rerunning rewrites the same
bytes with the same Pillow (its encoders' output may change between versions; the pixels
stored are always those of the files stored).
"""

import io
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import PIL
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "tests", "fixtures", "images")

# Odd sizes: partial MCUs / rows and edge upsampling in JPEGs, odd row strides elsewhere.
W, H = 23, 13
JW, JH = 45, 27


def rgb_pattern(w, h):
    """Deterministic content: gradients, a checker edge and saturated corners."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // (w - 1) + 0 * y) % 256
    g = (y * 255 // (h - 1) + ((x // 4 + y // 3) % 2) * 60) % 256
    b = ((x * 37 + y * 91) ^ (x * y)) % 256
    img = np.stack([r, g, b], axis=-1).astype(np.uint8)
    img[0, 0] = (255, 255, 255)
    img[-1, -1] = (0, 0, 0)
    img[0, -1] = (255, 0, 0)
    return img


def grey_pattern(w, h):
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 11 + y * 17 + (x * y) % 7) % 256).astype(np.uint8)


def u16_pattern(w, h, ch):
    """16-bit samples over the whole range with low bytes unrelated to the high bytes."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [((x * 2897 + y * 5011 + c * 12345) * 7 + (x * y * 131)) % 65536 for c in range(ch)]
    return np.stack(planes, axis=-1).astype(np.uint16)


# ---------------------------------------------------------------------------------------
# Minimal writers for what Pillow cannot write.


def png_bytes(samples, color_type, depth=16):
    """A PNG (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA) of 16-bit samples, or of
    1-, 2- or 4-bit grey ones, with filter 0 rows."""
    h, w = samples.shape[:2]
    if depth == 16:
        rows = [samples[r].astype(">u2").tobytes() for r in range(h)]
    else:
        per = 8 // depth
        padded = np.zeros((h, -(-w // per) * per), np.uint8)
        padded[:, :w] = samples
        groups = padded.reshape(h, -1, per).astype(np.uint32)
        packed = sum(groups[..., i] << (8 - depth * (i + 1)) for i in range(per))
        rows = [packed[r].astype(np.uint8).tobytes() for r in range(h)]
    raw = b"".join(b"\x00" + row for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


ZIGZAG = sorted(range(64), key=lambda i: (i // 8 + i % 8, (i % 8) if (i // 8 + i % 8) % 2 == 0 else (i // 8)))


def jpeg_ycck_bytes(cmyk):
    """A baseline YCCK JPEG of PIL-convention CMYK pixels, as libjpeg's cmyk_ycck_convert
    would write it from Adobe (inverted) CMYK: Y/Cb/Cr of (c, m, y), and 255 - k. All four
    components 1x1, one quantisation table, and Huffman tables that give every DC symbol 4
    bits and every AC symbol 8 bits (valid, if not optimal)."""
    h, w = cmyk.shape[:2]
    c = cmyk.astype(np.float64)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    yy = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    planes = [np.clip(np.round(p), 0, 255) for p in (yy, cb, cr, 255 - c[..., 3])]
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    planes = [np.pad(p, ((0, ph - h), (0, pw - w)), mode="edge") - 128 for p in planes]

    u = np.arange(8)
    dct = np.cos((2 * u[None, :] + 1) * u[:, None] * np.pi / 16) * np.where(u[:, None] == 0, np.sqrt(1 / 8), np.sqrt(2 / 8))
    # Fine steps (near lossless); AC steps of at least 2 keep every AC value within 10 bits.
    quant = np.array([1] + [2 + (i // 8 + i % 8) // 3 for i in range(1, 64)])

    dc_syms = list(range(12))
    ac_syms = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]
    dc_code = {s: (i, 4) for i, s in enumerate(dc_syms)}
    ac_code = {s: (i, 8) for i, s in enumerate(ac_syms)}

    bits = []  # (value, length) pairs

    def put_value(v):
        size = int(abs(v)).bit_length()
        assert size <= 11
        if size:
            bits.append((v if v > 0 else v + (1 << size) - 1, size))
        return size

    pred = [0, 0, 0, 0]
    for by in range(0, ph, 8):
        for bx in range(0, pw, 8):
            for ci, p in enumerate(planes):
                coef = dct @ p[by : by + 8, bx : bx + 8] @ dct.T
                q = np.round(coef.reshape(64)[ZIGZAG] / quant[ZIGZAG]).astype(int)
                diff, pred[ci] = q[0] - pred[ci], q[0]
                size = int(abs(diff)).bit_length()
                bits.append(dc_code[size])
                put_value(diff)
                run = 0
                for k in range(1, 64):
                    if q[k] == 0:
                        run += 1
                        continue
                    while run > 15:
                        bits.append(ac_code[0xF0])
                        run -= 16
                    size = int(abs(q[k])).bit_length()
                    bits.append(ac_code[(run << 4) | size])
                    put_value(q[k])
                    run = 0
                if run:
                    bits.append(ac_code[0x00])

    acc, n, scan = 0, 0, bytearray()
    for v, length in bits + [(0x7F, 7)]:  # pad the last byte with ones
        acc, n = (acc << length) | v, n + length
        while n >= 8:
            n -= 8
            byte = (acc >> n) & 0xFF
            acc &= (1 << n) - 1
            scan.append(byte)
            if byte == 0xFF:
                scan.append(0)  # byte stuffing

    def seg(marker, data):
        return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data

    def dht(cls, syms, length):
        counts = [0] * 16
        counts[length - 1] = len(syms)
        return bytes([cls << 4]) + bytes(counts) + bytes(syms)

    out = b"\xFF\xD8"
    out += seg(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 2))
    out += seg(0xDB, bytes([0]) + bytes(int(quant[z]) for z in ZIGZAG))
    out += seg(0xC0, struct.pack(">BHHB", 8, h, w, 4) + b"".join(bytes([i + 1, 0x11, 0]) for i in range(4)))
    out += seg(0xC4, dht(0, dc_syms, 4) + dht(1, ac_syms, 8))
    out += seg(0xDA, bytes([4]) + b"".join(bytes([i + 1, 0x00]) for i in range(4)) + bytes([0, 63, 0]))
    return out + bytes(scan) + b"\xFF\xD9"


# ---------------------------------------------------------------------------------------


def pil_rgb(data):
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def saved(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def main():
    # PIL's convert('RGB') of a palette image with tRNS warns that it ignores the alpha.
    warnings.filterwarnings("ignore", message="Palette images with Transparency")
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    rgb = Image.fromarray(rgb_pattern(W, H))
    jrgb = Image.fromarray(rgb_pattern(JW, JH))
    grey = Image.fromarray(grey_pattern(W, H))
    jgrey = Image.fromarray(grey_pattern(JW, JH))
    alpha = Image.fromarray(((np.arange(W * H).reshape(H, W) * 29) % 256).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = Image.merge("LA", (grey, alpha))
    palette = rgb.quantize(colors=37, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    bilevel = grey.point(lambda v: 255 if v >= 128 else 0).convert("1", dither=Image.Dither.NONE)
    jcmyk = Image.fromarray(np.concatenate([rgb_pattern(JW, JH), grey_pattern(JW, JH)[..., None] // 2], axis=-1), "CMYK")

    g16 = u16_pattern(W, H, 1)[..., 0]
    g16_im = Image.fromarray(g16)
    assert g16_im.mode == "I;16", g16_im.mode

    files = []  # (name, bytes, rule, expected override)

    def add(name, data, rule="pil", expected=None):
        files.append((name, data, rule, expected))

    # JPEG: the YCbCr subsamplings, progressive, grey, CMYK (Adobe, inverted) and YCCK.
    add("rgb420.jpg", saved(jrgb, "JPEG", quality=90))
    add("rgb422.jpg", saved(jrgb, "JPEG", quality=85, subsampling=1))
    add("rgb444.jpg", saved(jrgb, "JPEG", quality=95, subsampling=0))
    add("progressive.jpeg", saved(jrgb, "JPEG", quality=80, progressive=True))
    add("grey.jpg", saved(jgrey, "JPEG", quality=90))
    add("cmyk.jpg", saved(jcmyk, "JPEG", quality=90))
    add("ycck.jpg", jpeg_ycck_bytes(np.asarray(jcmyk)))
    # PNG: every colour type and the bit depths PIL reads to 8 bits.
    add("rgb.png", saved(rgb, "PNG"))
    add("rgba.png", saved(rgba, "PNG"))
    add("grey.png", saved(grey, "PNG"))
    add("grey_alpha.png", saved(la, "PNG"))
    add("palette.png", saved(palette, "PNG"))
    add("palette_trns.png", saved(palette, "PNG", transparency=bytes(range(0, 256, 7))[:37]))
    add("bilevel.png", saved(bilevel, "PNG"))
    add("grey2.png", png_bytes(grey_pattern(W, H) >> 6, 0, depth=2))
    add("grey4.png", png_bytes(grey_pattern(W, H) >> 4, 0, depth=4))
    add("palette4.png", saved(rgb.quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE), "PNG", bits=4))
    add("rgb16.png", png_bytes(u16_pattern(W, H, 3), 2))
    add("rgba16.png", png_bytes(u16_pattern(W, H, 4), 6))
    add("grey_alpha16.png", png_bytes(u16_pattern(W, H, 2), 4))
    g16_high = np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, axis=-1)
    add("grey16.png", saved(g16_im, "PNG"), "high-byte", g16_high)
    # WebP: lossless, and lossy (VP8 YUV 4:2:0; image-webp decodes it as libwebp does).
    add("rgb_lossless.webp", saved(rgb, "WEBP", lossless=True, quality=100, method=4))
    add("rgba_lossless.webp", saved(rgba, "WEBP", lossless=True, quality=100, method=4, exact=True))
    add("rgb_lossy.webp", saved(rgb, "WEBP", quality=80, method=4))
    add("rgba_lossy.webp", saved(rgba, "WEBP", quality=60, method=4))
    # BMP: 24-bit, 32-bit with alpha, 8-bit palette, 1-bit.
    add("rgb.bmp", saved(rgb, "BMP"))
    add("rgba.bmp", saved(rgba, "BMP"))
    add("palette.bmp", saved(palette, "BMP"))
    add("bilevel.bmp", saved(bilevel, "BMP"))
    # TIFF: uncompressed, LZW, Deflate and PackBits; grey and RGBA.
    add("rgb.tif", saved(rgb, "TIFF"))
    add("rgb_lzw.tiff", saved(rgb, "TIFF", compression="tiff_lzw"))
    add("rgb_deflate.tiff", saved(rgb, "TIFF", compression="tiff_adobe_deflate"))
    add("rgb_packbits.tif", saved(rgb, "TIFF", compression="packbits"))
    add("grey.tif", saved(grey, "TIFF"))
    add("rgba.tif", saved(rgba, "TIFF"))
    add("grey16.tif", saved(g16_im, "TIFF"), "high-byte", g16_high)
    # The image crate converts these to RGB itself, rounding differently from PIL (CMYK:
    # PIL's (255 - k) - round(c (255 - k) / 255); JPEG-in-TIFF: another IDCT).
    cmyk = np.concatenate([rgb_pattern(W, H), grey_pattern(W, H)[..., None]], axis=-1)
    add("cmyk.tif", saved(Image.fromarray(cmyk, "CMYK"), "TIFF"), "pil-near")
    add("rgb_jpeg.tif", saved(rgb, "TIFF", compression="jpeg", quality=90), "pil-near")
    # PNM: binary PPM and PGM.
    add("rgb.ppm", saved(rgb, "PPM"))
    add("grey.pgm", saved(grey, "PPM"))
    add("grey16.pgm", saved(g16_im, "PPM"), "high-byte", g16_high)
    # Plain (ASCII) PNM, and a maxval other than 255 / 65535 (both scale it to 0..255, with
    # different rounding).
    add("ascii.ppm", b"P3\n%d %d\n255\n" % (W, H) + " ".join(map(str, rgb_pattern(W, H).ravel())).encode() + b"\n")
    add("ascii.pgm", b"P2\n%d %d\n255\n" % (W, H) + " ".join(map(str, grey_pattern(W, H).ravel())).encode() + b"\n")
    add("maxval100.pgm", b"P5\n%d %d\n100\n" % (W, H) + (grey_pattern(W, H) % 101).tobytes(), "pil-near")

    manifest = [
        "# Written by tools/gen_image_fixtures.py (Pillow %s, numpy %s); do not edit." % (PIL.__version__, np.__version__),
        "# FILE WIDTH HEIGHT RULE  (FILE.rgb: expected RGB8; RULE: pil | pil-near | high-byte, see the script)",
    ]
    for name, data, rule, expected in files:
        pil = pil_rgb(data)
        if rule in ("pil", "pil-near"):
            want = pil
        else:
            want = expected
            assert not np.array_equal(want, pil), name  # the deliberate difference is real
            with open(os.path.join(OUT, name + ".pil.rgb"), "wb") as f:
                f.write(pil.tobytes())
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        with open(os.path.join(OUT, name + ".rgb"), "wb") as f:
            f.write(want.tobytes())
        h, w = want.shape[:2]
        manifest.append(f"{name} {w} {h} {rule}")

    # What the fixtures stand for: the 16-bit colour PNGs read to 8 bits in PIL by keeping the
    # high byte, the same rule et-data applies to 16-bit grey; YCCK decodes close to its CMYK
    # source; the lossless formats give back the source pixels.
    for name, ch in (("rgb16.png", 3), ("rgba16.png", 4), ("grey_alpha16.png", 2)):
        hi = (u16_pattern(W, H, ch) >> 8).astype(np.uint8)
        hi = hi[..., :3] if ch >= 3 else np.repeat(hi[..., :1], 3, axis=-1)
        assert np.array_equal(pil_rgb(dict((n, d) for n, d, _, _ in files)[name]), hi), name
    decoded = {n: pil_rgb(d).astype(int) for n, d, _, _ in files}
    assert np.abs(decoded["ycck.jpg"] - decoded["cmyk.jpg"]).max() < 40
    for n, depth in (("grey2.png", 2), ("grey4.png", 4)):
        scale = 255 // ((1 << depth) - 1)
        assert np.array_equal(decoded[n][..., 0], (grey_pattern(W, H) >> (8 - depth)).astype(int) * scale), n
    with Image.open(io.BytesIO(dict((n, d) for n, d, _, _ in files)["palette4.png"])) as im:
        assert im.mode == "P" and len(im.getpalette()) // 3 <= 16
    for n in ("rgb.png", "rgb_lossless.webp", "rgb.bmp", "rgb.tif", "rgb_lzw.tiff", "rgb.ppm", "ascii.ppm"):
        assert np.array_equal(decoded[n], rgb_pattern(W, H)), n

    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(files)} fixtures, {total} bytes in {os.path.relpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
