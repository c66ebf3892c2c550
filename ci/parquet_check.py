#!/usr/bin/env python3
"""Interop check of `tools shard export --format parquet`: independent readers (pyarrow and duckdb)
read the exported Hugging Face layout and every value is compared with the Arrow shards.

Usage: python3 ci/parquet_check.py ARROW_DATASET_DIR PARQUET_EXPORT_DIR [...pairs]

For each pair it checks, without any roomplan code:
  - README.md starts with a dataset-card YAML header whose configs/splits name exactly the files in data/;
  - pyarrow.parquet reads every file with the contract's Arrow types, except that fixed-size lists are
    lists marked with their size (field metadata roomplan.fixed_size; pyarrow cannot read fixed-size
    lists under a null struct from Parquet), and the rows of each (table, split), in file order, equal
    the shards' rows of that split in shard order (Table.equals: every value, null and type);
  - duckdb reads the same files (read_parquet) and every value of every row equals pyarrow's reading of
    the Arrow shards (python values: lists, structs, bytes, floats compared exactly).
"""

import glob
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml


class CheckError(Exception):
    pass


def fail(msg):
    raise CheckError(msg)


def arrow_table(dataset, kind):
    tables = []
    for path in sorted(glob.glob(os.path.join(dataset, f"{kind}-*.arrow"))):
        with pa.memory_map(path) as source:
            tables.append(pa.ipc.open_file(source).read_all())
    if not tables:
        fail(f"{dataset}: no {kind} shards")
    return pa.concat_tables(tables)


def as_exported(t):
    """The type the exporter writes for shard type t: fixed-size lists as lists, recursively."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(exported_field(t.value_field))
    if pa.types.is_list(t):
        return pa.list_(exported_field(t.value_field))
    if pa.types.is_struct(t):
        return pa.struct([exported_field(t.field(i)) for i in range(t.num_fields)])
    return t


def exported_field(f):
    meta = dict(f.metadata or {})
    if pa.types.is_fixed_size_list(f.type):
        meta[b"roomplan.fixed_size"] = str(f.type.list_size).encode()
    return pa.field(f.name, as_exported(f.type), nullable=f.nullable, metadata=meta or None)


def exported_schema(schema):
    return pa.schema([exported_field(f) for f in schema], metadata=schema.metadata)


def card(export):
    path = os.path.join(export, "README.md")
    text = open(path, encoding="utf-8").read()
    if not text.startswith("---\n"):
        fail(f"{path}: no YAML header")
    header = yaml.safe_load(text.split("---\n")[1])
    files = {}
    for config in header["configs"]:
        for entry in config["data_files"]:
            matched = sorted(glob.glob(os.path.join(export, entry["path"])))
            if not matched:
                fail(f"{path}: config {config['config_name']} split {entry['split']}: {entry['path']} matches no file")
            files[(config["config_name"], entry["split"])] = matched
    listed = sorted(f for fs in files.values() for f in fs)
    present = sorted(glob.glob(os.path.join(export, "data", "*.parquet")))
    if listed != present:
        fail(f"{path}: the configs name {listed}, data/ holds {present}")
    return files


def normalise(value):
    """duckdb and pyarrow python values in one comparable form."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def check_pair(dataset, export):
    files = card(export)
    expected = {"samples": arrow_table(dataset, "samples"), "scenes": arrow_table(dataset, "scenes")}
    con = duckdb.connect()
    checked_rows = 0
    seen_splits = set()
    for (config, split), paths in sorted(files.items()):
        table = expected[config]
        if config == "samples":
            seen_splits.add(split)
            mask = pc.equal(table["split"], split)
            table = table.filter(mask)
        schema = exported_schema(table.schema)
        table = table.cast(schema)
        parts = [pq.read_table(p) for p in paths]
        for p, part in zip(paths, parts):
            if not part.schema.equals(schema, check_metadata=True):
                fail(f"{p}: schema differs from the shards':\n{part.schema}\nexpected\n{schema}")
        got = pa.concat_tables(parts)
        if not got.equals(table):
            fail(f"{export}: {config}/{split}: pyarrow reads values different from the shards' ({got.num_rows} vs {table.num_rows} rows)")
        want_rows = [normalise(list(r.values())) for r in table.to_pylist()]
        duck_rows = []
        for p in paths:
            duck_rows.extend(normalise(list(r)) for r in con.execute("SELECT * FROM read_parquet(?)", [p]).fetchall())
        if len(duck_rows) != len(want_rows):
            fail(f"{export}: {config}/{split}: duckdb reads {len(duck_rows)} rows, the shards hold {len(want_rows)}")
        names = table.schema.names
        for i, (d, w) in enumerate(zip(duck_rows, want_rows)):
            if d != w:
                bad = [n for n, a, b in zip(names, d, w) if a != b]
                fail(f"{export}: {config}/{split} row {i}: duckdb differs from the shards in {bad}")
        checked_rows += len(want_rows)
    all_splits = set(expected["samples"]["split"].to_pylist())
    if seen_splits != all_splits:
        fail(f"{export}: the card has sample splits {sorted(seen_splits)}, the shards {sorted(all_splits)}")
    print(f"ok {export}: {checked_rows} rows in {sum(len(v) for v in files.values())} files equal the shards "
          f"(pyarrow {pa.__version__}, duckdb {duckdb.__version__})")


def main(argv):
    if len(argv) < 3 or len(argv) % 2 != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        for i in range(1, len(argv), 2):
            check_pair(argv[i], argv[i + 1])
    except (CheckError, OSError, KeyError, ValueError, pa.ArrowException, duckdb.Error) as e:
        print(f"parquet_check: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
