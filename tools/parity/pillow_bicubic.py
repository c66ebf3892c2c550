#!/usr/bin/env python3
"""Pillow's BICUBIC resize of deterministic noise, the reference for prep's resampler.

Writes prep/tests/fixtures/pillow_bicubic/<W>x<H>_to_<w>x<h>.rgb (raw RGB bytes, row-major) for
the cases below. The source image is not stored: both sides generate it with the same xorshift32
stream (`noise_rgb`, mirrored by `noise_rgb` in prep/src/imaging.rs's tests), so the fixture holds
Pillow's output only. Noise is the hard case for a resampler (every tap matters); VGGT's
preprocessing is Pillow's BICUBIC, so this is what "matches VGGT's preprocessing" means.

usage: python3 tools/parity/pillow_bicubic.py   (needs Pillow; records its version in README)
"""

import os

import PIL
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "prep", "tests", "fixtures", "pillow_bicubic")

# (source size, target size): VGGT's crop rule on 640×480 (→ 518×392) scaled down 1/5 so the
# fixture stays small, a 1296×968 → 518×388-like downscale, an upscale, and odd sizes.
CASES = [((128, 96), (104, 78)), ((259, 194), (104, 78)), ((40, 30), (104, 78)), ((97, 61), (33, 47))]


def noise_rgb(width, height):
    state = 0x9E3779B9
    out = bytearray(width * height * 3)
    for i in range(len(out)):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        out[i] = state >> 24
    return bytes(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    for (sw, sh), (tw, th) in CASES:
        src = Image.frombytes("RGB", (sw, sh), noise_rgb(sw, sh))
        dst = src.resize((tw, th), Image.Resampling.BICUBIC)
        path = os.path.join(OUT, f"{sw}x{sh}_to_{tw}x{th}.rgb")
        with open(path, "wb") as f:
            f.write(dst.tobytes())
        print(path)
    with open(os.path.join(OUT, "README"), "w") as f:
        f.write(f"Written by tools/parity/pillow_bicubic.py with Pillow {PIL.__version__}.\n")


if __name__ == "__main__":
    main()
