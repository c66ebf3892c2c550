#!/usr/bin/env python3
"""The Python peer of `prep-scanqa` for speed comparisons (tools/bench/prep_speed.sh).

A straightforward Python implementation of the same work per scan, one process, one thread:
- sha256 of every raw input (each `.sens` read end to end in 1 MiB chunks through hashlib, the
  ScanQA JSON files, the scan `.txt`), then the `.sens` frame index (header + per-frame headers,
  seeking over payloads);
- views chosen uniformly over the frames with a finite pose (the same rule as ours:
  round(i·(n−1)/(k−1)));
- colour: Pillow decode of the JPEG payload, bicubic resize to VGGT's size rule (width W, height
  round(h·W/w/14)·14, centre-cropped to at most --image-height rows), JPEG re-encode (quality 90);
  with --draft, Pillow's draft mode first (libjpeg's DCT-scaled decode to the smallest scale
  that stays at least the target size), as a tuned Python user would;
- depth: zlib inflate, numpy histogram of the valid (non-zero) depths over 16 bins of 0–10 m and
  the valid fraction;
- one Arrow IPC file of scene rows (views as list<struct>) and one of question rows (pyarrow).

It does not validate poses beyond finiteness, nor write rejects or a manifest: it is the peer of
the costly part, so the comparison flatters it slightly.

usage: prep_scanqa_py.py --scannet DIR --scanqa DIR --out DIR [--num-views 8] [--image-width 518]
                          [--image-height H] [--draft]
"""

import argparse
import hashlib
import io
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import pyarrow as pa
from PIL import Image

JPEG_QUALITY = 90
DEPTH_BINS = 16
DEPTH_MAX_M = 10.0


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def read_sens_index(path):
    """Header fields we need and (pose, colour offset/size, depth offset/size) per frame."""
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        assert version == 4, f"{path}: .sens version {version}"
        (name_len,) = struct.unpack("<Q", f.read(8))
        f.seek(name_len, io.SEEK_CUR)
        f.seek(4 * 16 * 4, io.SEEK_CUR)  # intrinsics and extrinsics
        color_comp, depth_comp, cw, ch, dw, dh = struct.unpack("<iiIIII", f.read(24))
        (depth_shift,) = struct.unpack("<f", f.read(4))
        (num_frames,) = struct.unpack("<Q", f.read(8))
        frames = []
        for _ in range(num_frames):
            head = f.read(96)
            if len(head) < 96:
                break
            pose = np.frombuffer(head[:64], dtype="<f4").reshape(4, 4)
            cs, ds = struct.unpack("<QQ", head[80:96])
            offset = f.tell()
            frames.append((pose, offset, cs, offset + cs, ds))
            f.seek(cs + ds, io.SEEK_CUR)
    return dict(color=(cw, ch), depth=(dw, dh), depth_shift=depth_shift, comp=(color_comp, depth_comp)), frames


def select_uniform(n, k):
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return [int(round(i * (n - 1) / (k - 1))) for i in range(k)]


def target_size(w, h, width, max_height):
    new_h = max(int(round(h * (width / w) / 14)) * 14, 14)
    return width, new_h, max_height


def store_colour(jpeg_bytes, width, max_height, draft):
    im = Image.open(io.BytesIO(jpeg_bytes))
    w, h = im.size
    tw, th, mh = target_size(w, h, width, max_height)
    if draft:
        im.draft("RGB", (tw, th))
    im = im.convert("RGB")
    im = im.resize((tw, th), Image.BICUBIC)
    if th > mh:
        top = (th - mh) // 2
        im = im.crop((0, top, tw, top + mh))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), im.size


def depth_stats(depth_bytes, dw, dh, depth_shift):
    raw = zlib.decompress(depth_bytes)
    d = np.frombuffer(raw, dtype="<u2", count=dw * dh)
    valid = d[d != 0].astype(np.float64) / depth_shift
    bins = np.minimum((valid * (DEPTH_BINS / DEPTH_MAX_M)).astype(np.int64), DEPTH_BINS - 1)
    counts = np.bincount(bins, minlength=DEPTH_BINS)
    hist = (counts / max(len(valid), 1)).astype(np.float32) if len(valid) else np.zeros(DEPTH_BINS, np.float32)
    return hist.tolist(), float(len(valid)) / d.size


def prepare_scene(scan_dir, scene, args, raw_inputs):
    sens = os.path.join(scan_dir, f"{scene}.sens")
    raw_inputs.append((sens, sha256_file(sens), os.path.getsize(sens)))
    meta = os.path.join(scan_dir, f"{scene}.txt")
    if os.path.isfile(meta):
        raw_inputs.append((meta, sha256_file(meta), os.path.getsize(meta)))
    header, frames = read_sens_index(sens)
    pool = [fr for fr in frames if np.isfinite(fr[0]).all()]
    picks = [pool[i] for i in select_uniform(len(pool), args.num_views)]
    views = []
    with open(sens, "rb") as f:
        for pose, co, cs, do, ds in picks:
            f.seek(co)
            colour = f.read(cs)
            f.seek(do)
            depth = f.read(ds)
            jpeg, (w, h) = store_colour(colour, args.image_width, args.image_height or args.image_width, args.draft)
            hist, valid = depth_stats(depth, *header["depth"], header["depth_shift"])
            views.append(
                {
                    "image": jpeg,
                    "width": w,
                    "height": h,
                    "c2w": pose.astype(np.float64).ravel().tolist(),
                    "depth_histogram": hist,
                    "depth_valid_fraction": valid,
                }
            )
    return {"scene_id": scene, "views": views}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scannet", required=True)
    p.add_argument("--scanqa", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-views", type=int, default=8)
    p.add_argument("--image-width", type=int, default=518)
    p.add_argument("--image-height", type=int, default=None)
    p.add_argument("--draft", action="store_true", help="Pillow draft mode (DCT-scaled JPEG decode)")
    args = p.parse_args()

    raw_inputs = []
    questions = []
    for split in ("train", "val", "test_w_obj"):
        path = os.path.join(args.scanqa, f"ScanQA_v1.0_{split}.json")
        with open(path, "rb") as f:
            data = f.read()
        raw_inputs.append((path, hashlib.sha256(data).hexdigest(), len(data)))
        for q in json.loads(data):
            questions.append(
                {
                    "question_id": str(q["question_id"]),
                    "scene_id": q["scene_id"],
                    "question": q["question"],
                    "answers": [str(a) for a in q.get("answers", [])],
                    "split": split,
                }
            )
    scenes_dir = os.path.join(args.scannet, "scans")
    wanted = sorted({q["scene_id"] for q in questions})
    os.makedirs(args.out, exist_ok=True)
    view_type = pa.struct(
        [
            ("image", pa.binary()),
            ("width", pa.uint32()),
            ("height", pa.uint32()),
            ("c2w", pa.list_(pa.float64())),
            ("depth_histogram", pa.list_(pa.float32())),
            ("depth_valid_fraction", pa.float32()),
        ]
    )
    schema = pa.schema([("scene_id", pa.string()), ("views", pa.list_(view_type))])
    n_views = 0
    with pa.OSFile(os.path.join(args.out, "scenes.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, schema) as writer:
            for i, scene in enumerate(wanted):
                scan_dir = os.path.join(scenes_dir, scene)
                if not os.path.isdir(scan_dir):
                    continue
                row = prepare_scene(scan_dir, scene, args, raw_inputs)
                n_views += len(row["views"])
                writer.write_batch(pa.RecordBatch.from_pylist([row], schema=schema))
                print(f"[{i + 1}/{len(wanted)}] {scene}: {len(row['views'])} views", file=sys.stderr)
    table = pa.Table.from_pylist(questions)
    with pa.OSFile(os.path.join(args.out, "samples.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    with open(os.path.join(args.out, "raw_inputs.json"), "w") as f:
        json.dump([{"path": p, "sha256": s, "bytes": b} for p, s, b in raw_inputs], f, indent=1)
    print(json.dumps({"scenes": len(wanted), "views": n_views, "questions": len(questions)}))


if __name__ == "__main__":
    main()
