#!/usr/bin/env python3
"""Pillow's JPEG decoding (full and draft-mode, DCT-scaled) and encoding, the reference for prep's
libjpeg-turbo path (prep/src/imaging.rs).

Writes into prep/tests/fixtures/pillow_jpeg/:
  <name>.jpg                      Pillow's `save(quality=90)` (4:2:0, baseline) of a deterministic
                                  picture that both sides generate (`picture` below, mirrored by
                                  `picture` in prep/src/imaging.rs's tests): the encode
                                  reference and the input of the decode references;
  <name>_full.rgb                 `Image.open(jpg).convert('RGB')`, raw RGB bytes, row-major;
  <name>_draft_<w>x<h>.rgb        `im.draft('RGB', (w, h))` then `convert('RGB')`: libjpeg's
                                  DCT-scaled decode at the scale Pillow picks for that request.
The picture has gradients, hard edges and noise (every DCT coefficient and chroma sample matters)
and odd sizes (partial MCUs at the right and bottom edges).

usage: /work/venv-bench/bin/python tools/parity/pillow_jpeg.py
       (needs Pillow built with libjpeg-turbo; records the versions in README)
"""

import io
import os

import PIL
from PIL import Image, features

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "prep", "tests", "fixtures", "pillow_jpeg")

# (name, picture size, draft requests): the draft requests pick scales 1/2, 1/4 and 1/8
# (Pillow: min(W // w, H // h) rounded down to 8, 4, 2 or 1).
CASES = [
    ("picture_203x151", (203, 151), [(101, 75), (50, 37), (25, 18)]),
    ("picture_97x61", (97, 61), [(48, 30)]),
]


def picture(width, height):
    """A smooth picture with edges and noise (xorshift32), as in imaging.rs's tests."""
    state = 0x9E3779B9
    out = bytearray(width * height * 3)
    i = 0
    for y in range(height):
        for x in range(width):
            state ^= (state << 13) & 0xFFFFFFFF
            state ^= state >> 17
            state ^= (state << 5) & 0xFFFFFFFF
            noise = state % 32
            edge = 180 if (x // 17 + y // 11) % 2 == 0 else 20
            out[i] = ((x * 255 // width) // 2 + noise) & 0xFF
            out[i + 1] = (edge + noise // 2) & 0xFF
            out[i + 2] = ((x + 2 * y) % 256) & 0xFF
            i += 3
    return bytes(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (w, h), drafts in CASES:
        src = Image.frombytes("RGB", (w, h), picture(w, h))
        buf = io.BytesIO()
        src.save(buf, format="JPEG", quality=90)
        jpg = buf.getvalue()
        with open(os.path.join(OUT, f"{name}.jpg"), "wb") as f:
            f.write(jpg)
        full = Image.open(io.BytesIO(jpg)).convert("RGB")
        with open(os.path.join(OUT, f"{name}_full.rgb"), "wb") as f:
            f.write(full.tobytes())
        for tw, th in drafts:
            im = Image.open(io.BytesIO(jpg))
            im.draft("RGB", (tw, th))
            im = im.convert("RGB")
            path = os.path.join(OUT, f"{name}_draft_{tw}x{th}.rgb")
            with open(path, "wb") as f:
                f.write(im.tobytes())
            print(f"{path}: {im.size[0]}x{im.size[1]}")
    with open(os.path.join(OUT, "README"), "w") as f:
        f.write(
            f"Written by tools/parity/pillow_jpeg.py with Pillow {PIL.__version__} "
            f"(libjpeg-turbo {features.version('libjpeg_turbo')}).\n"
        )


if __name__ == "__main__":
    main()
