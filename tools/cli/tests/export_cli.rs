//! `tools shard export --format parquet`: the example dataset of the shard contract exported, read
//! back with the parquet crate's Arrow reader and compared value for value with the shards; the
//! dataset card; row groups cut by size; byte-identical re-export; refusals.
//! (ci/parquet_check.py does the same with pyarrow and duckdb on the end-to-end shards.)

use std::path::Path;
use std::process::{Command, Output};

use arrow::compute::{cast, concat_batches};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::shard::{example_records, Dataset, DatasetWriter, WriterOptions};

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("tools runs")
}

fn write_example(dir: &Path) {
    let (scenes, samples, _) = example_records();
    let mut writer = DatasetWriter::create(dir, WriterOptions::default()).unwrap();
    for s in samples {
        writer.write_sample(s).unwrap();
    }
    for s in scenes {
        writer.write_scene(s).unwrap();
    }
    writer
        .finish(
            ToolInfo::new("prep-example", "0.1.0", serde_json::json!({})),
            vec![],
        )
        .unwrap();
}

fn read_parquet(path: &Path) -> (RecordBatch, usize) {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let groups = builder.metadata().num_row_groups();
    let schema = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    (concat_batches(&schema, &batches).unwrap(), groups)
}

/// The shard rows of one table (optionally one split), cast to the exported schema.
fn expected(ds: &Dataset, table: &str, split: Option<&str>, like: &RecordBatch) -> RecordBatch {
    let batches: Vec<RecordBatch> = if table == "samples" {
        ds.samples().batches().map(|b| b.unwrap().0).collect()
    } else {
        ds.scenes().batches().map(|b| b.unwrap().0).collect()
    };
    let all = concat_batches(&batches[0].schema(), &batches).unwrap();
    let all = match split {
        Some(split) => {
            let col = all.column_by_name("split").unwrap();
            let col = col
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            let mask: arrow::array::BooleanArray =
                col.iter().map(|s| Some(s == Some(split))).collect();
            arrow::compute::filter_record_batch(&all, &mask).unwrap()
        }
        None => all,
    };
    let columns = all
        .columns()
        .iter()
        .zip(like.schema().fields())
        .map(|(c, f)| cast(c, f.data_type()).unwrap())
        .collect();
    RecordBatch::try_new(like.schema(), columns).unwrap()
}

#[test]
fn export_reads_back_equal_with_a_dataset_card() {
    let tmp = tempfile::tempdir().unwrap();
    let ds_dir = tmp.path().join("ds");
    write_example(&ds_dir);
    let out = tmp.path().join("hf");
    let o = tools(&[
        "shard",
        "export",
        "--format",
        "parquet",
        ds_dir.to_str().unwrap(),
        out.to_str().unwrap(),
        "--row-group-mb",
        "0.0001",
        "--name",
        "example",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "samples-test-00000-of-00001.parquet",
            "samples-train-00000-of-00001.parquet",
            "samples-val-00000-of-00001.parquet",
            "scenes-full-00000-of-00001.parquet",
        ]
    );
    let ds = Dataset::open(&ds_dir).unwrap();
    let mut rows = 0;
    for (file, table, split, n) in [
        (
            "samples-test-00000-of-00001.parquet",
            "samples",
            Some("test"),
            2,
        ),
        (
            "samples-train-00000-of-00001.parquet",
            "samples",
            Some("train"),
            2,
        ),
        (
            "samples-val-00000-of-00001.parquet",
            "samples",
            Some("val"),
            1,
        ),
        ("scenes-full-00000-of-00001.parquet", "scenes", None, 3),
    ] {
        let (got, groups) = read_parquet(&out.join("data").join(file));
        assert_eq!(got.num_rows(), n, "{file}");
        assert_eq!(
            got,
            expected(&ds, table, split, &got),
            "{file}: values differ from the shards"
        );
        // A row group holds at least one write (256 sample rows or one scene row) at this tiny limit.
        if table == "scenes" {
            assert_eq!(
                groups, 3,
                "{file}: one row group per scene row at a 100-byte limit"
            );
        }
        let meta = got.schema();
        assert_eq!(
            meta.metadata().get("roomplan.table").map(String::as_str),
            Some(table)
        );
        rows += n;
    }
    assert_eq!(rows, 8);
    // Fixed-size lists come back as lists marked with their size.
    let (scenes, _) = read_parquet(&out.join("data/scenes-full-00000-of-00001.parquet"));
    let pose = scenes
        .schema()
        .field_with_name("reference_world_pose")
        .unwrap()
        .clone();
    assert!(
        matches!(pose.data_type(), arrow::datatypes::DataType::List(_)),
        "{pose:?}"
    );
    assert_eq!(
        pose.metadata()
            .get("roomplan.fixed_size")
            .map(String::as_str),
        Some("16")
    );

    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.starts_with(
        "---\nconfigs:\n- config_name: samples\n  default: true\n  data_files:\n  - split: test\n    path: data/samples-test-*.parquet\n  - split: train\n    path: data/samples-train-*.parquet\n  - split: val\n    path: data/samples-val-*.parquet\n- config_name: scenes\n  data_files:\n  - split: full\n    path: data/scenes-full-*.parquet\n"
    ), "{card}");
    assert!(card.contains(&format!("\n# example\n\nExported by `tools shard export --format parquet` from the roomplan prepared dataset with digest `{}`", ds.digest())), "{card}");
    assert!(
        card.contains("| `data/scenes-full-00000-of-00001.parquet` | 3 | 3 |"),
        "{card}"
    );

    // Same dataset, same bytes.
    let again = tmp.path().join("hf2");
    let o = tools(&[
        "shard",
        "export",
        ds_dir.to_str().unwrap(),
        again.to_str().unwrap(),
        "--row-group-mb",
        "0.0001",
        "--name",
        "example",
    ]);
    assert!(o.status.success());
    for name in names
        .iter()
        .map(|n| format!("data/{n}"))
        .chain(["README.md".to_string()])
    {
        assert_eq!(
            std::fs::read(out.join(&name)).unwrap(),
            std::fs::read(again.join(&name)).unwrap(),
            "{name}"
        );
    }
    // A non-empty output folder is refused.
    let o = tools(&[
        "shard",
        "export",
        ds_dir.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the output folder is not empty; give a new or empty folder"),
        "{err}"
    );
}
