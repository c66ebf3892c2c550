#!/usr/bin/env python3
"""Interop check: an independent Arrow implementation (pyarrow) reads roomplan shards.

Usage: python3 ci/pyarrow_check.py DATASET_DIR [DATASET_DIR ...]

For each prepared dataset folder it checks, without any roomplan code:
  - manifest.json: schema version, every listed file's sha256 and byte size, no unlisted shard files;
  - every Arrow IPC file opens (memory-mapped) with the contract's schema (names, types, nullability,
    schema metadata) and holds the manifest's row count;
  - counts: scenes, samples, views, rejects;
  - values: R orthonormal, K's last row (0, 0, 1), depth histograms sum to 1 (or are all zero when no
    depth is valid), JPEG images decode to their stated width and height (SOF header), reference poses
    end in (0, 0, 0, 1), samples refer to scenes of the dataset, source_json is a JSON object, rejects
    lines have file/record/reason;
and prints the dataset digest (sha256 of manifest.json).  Exit status 1 on the first failure.
"""

import hashlib
import json
import math
import os
import sys

import pyarrow as pa

SCHEMA_VERSION = 1


def item(t):
    return pa.field("item", t, nullable=False)


def fixed(t, n):
    return pa.list_(item(t), n)


def lst(t):
    return pa.list_(item(t))


GEOMETRY = pa.struct([
    pa.field("R", fixed(pa.float32(), 9), nullable=False),
    pa.field("t", fixed(pa.float32(), 3), nullable=False),
    pa.field("K", fixed(pa.float32(), 9), nullable=False),
    pa.field("depth_hist", lst(pa.float32()), nullable=False),
    pa.field("valid_depth_fraction", pa.float32(), nullable=False),
])
VIEW = pa.struct([
    pa.field("frame_id", pa.string(), nullable=False),
    pa.field("image", pa.large_binary(), nullable=False),
    pa.field("encoding", pa.string(), nullable=False),
    pa.field("width", pa.uint32(), nullable=False),
    pa.field("height", pa.uint32(), nullable=False),
    pa.field("geometry", GEOMETRY, nullable=True),
])
SCENES = pa.schema([
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("scene_id", pa.string(), nullable=False),
    pa.field("views", lst(VIEW), nullable=False),
    pa.field("reference_world_pose", fixed(pa.float64(), 16), nullable=True),
    pa.field("axis_alignment", fixed(pa.float64(), 16), nullable=False),
    pa.field("axis_alignment_from_metadata", pa.bool_(), nullable=False),
])
AGENT = pa.struct([
    pa.field("position_raw", fixed(pa.float64(), 3), nullable=False),
    pa.field("rotation_raw_xyzw", fixed(pa.float64(), 4), nullable=False),
    pa.field("position_ref", fixed(pa.float64(), 3), nullable=False),
    pa.field("heading_ref", fixed(pa.float64(), 3), nullable=False),
])
SAMPLES = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("scene_id", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("situation", pa.string(), nullable=True),
    pa.field("answers", lst(pa.string()), nullable=False),
    pa.field("action_json", pa.string(), nullable=True),
    pa.field("object_ids", lst(pa.int64()), nullable=True),
    pa.field("object_names", lst(pa.string()), nullable=True),
    pa.field("agent", AGENT, nullable=True),
    pa.field("source_json", pa.string(), nullable=False),
])
SCHEMAS = {"scenes": SCENES, "samples": SAMPLES}


class CheckError(Exception):
    pass


def fail(msg):
    raise CheckError(msg)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jpeg_size(data):
    """(width, height) from the first SOF marker of a JPEG, parsed by hand."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + length
    return None


def read_table(path, kind):
    with pa.memory_map(path, "r") as source:
        reader = pa.ipc.open_file(source)
        schema = reader.schema
        table = reader.read_all()
    if not schema.remove_metadata().equals(SCHEMAS[kind], check_metadata=False):
        fail(f"{path}: schema differs from the contract:\n{schema}\nexpected\n{SCHEMAS[kind]}")
    meta = schema.metadata or {}
    if meta.get(b"roomplan.schema_version") != str(SCHEMA_VERSION).encode():
        fail(f"{path}: schema metadata version {meta.get(b'roomplan.schema_version')}, expected {SCHEMA_VERSION}")
    if meta.get(b"roomplan.table") != kind.encode():
        fail(f"{path}: schema metadata table {meta.get(b'roomplan.table')}, expected {kind}")
    return table


def check_scene_rows(path, rows):
    views = 0
    for scene in rows:
        pose = scene["reference_world_pose"]
        if pose is not None and [round(x, 9) for x in pose[12:]] != [0.0, 0.0, 0.0, 1.0]:
            fail(f"{path}: scene {scene['scene_id']}: reference_world_pose last row {pose[12:]}")
        if len(scene["axis_alignment"]) != 16:
            fail(f"{path}: scene {scene['scene_id']}: axis_alignment has {len(scene['axis_alignment'])} values")
        for v in scene["views"]:
            views += 1
            where = f"{path}: scene {scene['scene_id']} frame {v['frame_id']}"
            if v["encoding"] == "jpeg" and jpeg_size(v["image"]) != (v["width"], v["height"]):
                fail(f"{where}: JPEG size {jpeg_size(v['image'])}, row says {(v['width'], v['height'])}")
            g = v["geometry"]
            if g is None:
                continue
            r = g["R"]
            for i in range(3):
                for j in range(3):
                    dot = sum(r[i * 3 + k] * r[j * 3 + k] for k in range(3))
                    if abs(dot - (1.0 if i == j else 0.0)) > 1e-4:
                        fail(f"{where}: R is not orthonormal: {r}")
            if [round(x, 6) for x in g["K"][6:]] != [0.0, 0.0, 1.0]:
                fail(f"{where}: K last row {g['K'][6:]}")
            total = sum(g["depth_hist"])
            expected = 1.0 if g["valid_depth_fraction"] > 0 else 0.0
            if not math.isclose(total, expected, abs_tol=1e-4):
                fail(f"{where}: depth_hist sums to {total}, expected {expected}")
    return views


def check_dataset(directory):
    manifest_path = os.path.join(directory, "manifest.json")
    with open(manifest_path, "rb") as f:
        manifest_bytes = f.read()
    manifest = json.loads(manifest_bytes)
    if manifest["schema_version"] != SCHEMA_VERSION:
        fail(f"{manifest_path}: schema_version {manifest['schema_version']}, expected {SCHEMA_VERSION}")
    counted = {"scenes": 0, "samples": 0, "views": 0, "rejects": 0}
    scene_ids = set()
    sample_rows = []
    listed = {"manifest.json"}
    for entry in manifest["files"]:
        path = os.path.join(directory, entry["path"])
        listed.add(entry["path"])
        size = os.path.getsize(path)
        if size != entry["bytes"]:
            fail(f"{path}: {size} bytes, manifest says {entry['bytes']}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            fail(f"{path}: sha256 {digest}, manifest says {entry['sha256']}")
        kind = entry["kind"]
        if kind == "rejects":
            with open(path, encoding="utf-8") as f:
                lines = [json.loads(line) for line in f if line.strip()]
            for line in lines:
                if sorted(line) != ["file", "reason", "record"]:
                    fail(f"{path}: reject line with keys {sorted(line)}")
            rows = len(lines)
        else:
            table = read_table(path, kind)
            rows = table.num_rows
            pylist = table.to_pylist()
            if kind == "scenes":
                counted["views"] += check_scene_rows(path, pylist)
                scene_ids.update(r["scene_id"] for r in pylist)
            else:
                sample_rows.extend((path, r) for r in pylist)
        if rows != entry["rows"]:
            fail(f"{path}: {rows} rows, manifest says {entry['rows']}")
        counted[kind] += rows
    for path, sample in sample_rows:
        if sample["scene_id"] not in scene_ids:
            fail(f"{path}: sample {sample['sample_id']} refers to missing scene {sample['scene_id']}")
        if not isinstance(json.loads(sample["source_json"]), dict):
            fail(f"{path}: sample {sample['sample_id']}: source_json is not an object")
    if counted != manifest["counts"]:
        fail(f"{manifest_path}: counts {manifest['counts']}, files hold {counted}")
    stray = sorted(n for n in os.listdir(directory)
                   if (n.endswith(".arrow") or n.endswith(".tmp") or n == "rejects.jsonl") and n not in listed)
    if stray:
        fail(f"{directory}: files not listed in the manifest: {stray}")
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    print(f"ok {directory}: {counted['scenes']} scenes, {counted['samples']} samples, {counted['views']} views, "
          f"{counted['rejects']} rejects in {len(manifest['files'])} files (pyarrow {pa.__version__}); digest {digest}")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        for directory in argv[1:]:
            check_dataset(directory)
    except (CheckError, OSError, KeyError, ValueError, pa.ArrowException) as e:
        print(f"pyarrow_check: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
