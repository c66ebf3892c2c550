//! `tools shard export --format parquet DIR OUT`: a prepared dataset as Parquet files laid out as a
//! Hugging Face dataset repository:
//!
//! ```text
//! OUT/README.md                                  dataset card: YAML header with the configs and splits
//! OUT/data/samples-<split>-00000-of-00001.parquet one group of files per split of the samples table
//! OUT/data/scenes-full-00000-of-00001.parquet     the scenes table (no split of its own: split `full`)
//! ```
//!
//! Values and row order are those of the Arrow shards, and so are the types (the Arrow schema
//! travels in the Parquet metadata, so Arrow readers get `large_binary` and `uint32` back) with one
//! exception: fixed-size lists (R, t, K, poses, agent vectors) are written as plain lists, each
//! field marked with `roomplan.fixed_size` = its length. pyarrow (26) cannot read a fixed-size list
//! under a null struct back from Parquet (`agent` of ScanQA samples, `geometry` of BEV views: "Expected
//! all lists to be of size=3"), not even from a file it wrote itself; plain lists read everywhere.
//! Samples are grouped by split, keeping their order within a split. Row groups are cut by encoded
//! size (`--row-group-mb`) rather than by row count, because one scene row holds all its views'
//! images; image bytes are stored uncompressed and without statistics or dictionary (JPEG/PNG do
//! not compress further), every other column with Snappy. The same dataset gives byte-identical
//! files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::ArrayRef;
use arrow::array::{Array, BooleanArray, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use roomplan_prep::shard::{samples_schema, scenes_schema, Dataset};

/// The split name given to the scenes table, which belongs to every split of the samples.
pub const SCENES_SPLIT: &str = "full";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Apache Parquet, laid out as a Hugging Face dataset (data/*.parquet + README.md).
    Parquet,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Parquet)]
    pub format: ExportFormat,
    /// A prepared dataset folder (Arrow shards + manifest.json).
    pub dir: PathBuf,
    /// The output folder (must be empty or absent).
    pub out: PathBuf,
    /// Target encoded size of one row group, MiB (a row group is written once it reaches this).
    #[arg(long, default_value_t = 64.0)]
    pub row_group_mb: f64,
    /// Target size of one Parquet file, MiB (a new file is started once one reaches this).
    #[arg(long, default_value_t = 512)]
    pub file_mb: u64,
    /// Dataset name for the card's title (default: the input folder's name).
    #[arg(long)]
    pub name: Option<String>,
}

/// One written Parquet file.
#[derive(Debug, Clone)]
pub struct ExportedFile {
    pub path: String,
    pub rows: usize,
    pub row_groups: usize,
    pub bytes: u64,
}

/// Metadata key on a list field that was a fixed-size list in the shards: its length.
pub const FIXED_SIZE_KEY: &str = "roomplan.fixed_size";

fn parquet_field(field: &Field) -> Field {
    let (data_type, size) = parquet_type(field.data_type());
    let mut f = Field::new(field.name(), data_type, field.is_nullable())
        .with_metadata(field.metadata().clone());
    if let Some(n) = size {
        f.metadata_mut().insert(FIXED_SIZE_KEY, n.to_string());
    }
    f
}

/// The type written to Parquet: fixed-size lists become lists (returns the size), recursively.
fn parquet_type(data_type: &DataType) -> (DataType, Option<i32>) {
    let item = |f: &FieldRef| -> FieldRef { Arc::new(parquet_field(f)) };
    match data_type {
        DataType::FixedSizeList(f, n) => (DataType::List(item(f)), Some(*n)),
        DataType::List(f) => (DataType::List(item(f)), None),
        DataType::LargeList(f) => (DataType::LargeList(item(f)), None),
        DataType::Struct(fields) => (
            DataType::Struct(Fields::from(
                fields.iter().map(|f| parquet_field(f)).collect::<Vec<_>>(),
            )),
            None,
        ),
        other => (other.clone(), None),
    }
}

/// The schema written to Parquet (see the module documentation).
pub fn parquet_schema(schema: &Schema) -> SchemaRef {
    Arc::new(
        Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| parquet_field(f))
                .collect::<Vec<_>>(),
        )
        .with_metadata(schema.metadata().clone()),
    )
}

/// A shard batch in the Parquet schema (same values).
fn to_parquet_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Writer properties: Snappy everywhere except the image bytes, which are stored plain.
fn properties(schema: &SchemaRef, row_group_bytes: usize) -> Result<WriterProperties> {
    let descriptor = ArrowSchemaConverter::new()
        .convert(schema)
        .context("the Arrow schema has no Parquet equivalent")?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("roomplan tools {}", env!("CARGO_PKG_VERSION")))
        // Row groups are cut by encoded size, not by row count.
        .set_max_row_group_row_count(None)
        .set_max_row_group_bytes(Some(row_group_bytes));
    for column in descriptor.columns() {
        let path = column.path();
        if path.parts().last().map(String::as_str) == Some("image") {
            builder = builder
                .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
        }
    }
    Ok(builder.build())
}

/// Writes one table's batches (already filtered to one split) into `data/<table>-<split>-*.parquet`.
struct SplitWriter<'a> {
    data_dir: &'a Path,
    table: &'static str,
    split: String,
    schema: SchemaRef,
    props: WriterProperties,
    file_bytes: u64,
    current: Option<(ArrowWriter<File>, PathBuf, usize)>,
    done: Vec<(PathBuf, usize, usize)>,
}

impl<'a> SplitWriter<'a> {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        // Rows one at a time for the scenes (each row holds a scene's images), in chunks otherwise.
        let chunk = if self.table == "scenes" { 1 } else { 256 };
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = chunk.min(batch.num_rows() - offset);
            let part = batch.slice(offset, len);
            offset += len;
            if self.current.is_none() {
                let temp = self.data_dir.join(format!(
                    ".{}-{}-{:05}.parquet.tmp",
                    self.table,
                    self.split,
                    self.done.len()
                ));
                let file = File::create(&temp)
                    .with_context(|| format!("cannot create {}", temp.display()))?;
                let writer =
                    ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))?;
                self.current = Some((writer, temp, 0));
            }
            let (writer, temp, rows) = self.current.as_mut().expect("just set");
            writer
                .write(&part)
                .with_context(|| format!("cannot write {}", temp.display()))?;
            *rows += len;
            if writer.bytes_written() as u64 + writer.in_progress_size() as u64 >= self.file_bytes {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((writer, temp, rows)) = self.current.take() {
            let meta = writer
                .close()
                .with_context(|| format!("cannot finish {}", temp.display()))?;
            self.done.push((temp, rows, meta.num_row_groups()));
        }
        Ok(())
    }

    /// Closes the last file and gives every file its final `-NNNNN-of-NNNNN` name.
    fn finish(mut self) -> Result<Vec<ExportedFile>> {
        self.close()?;
        let total = self.done.len();
        let mut out = Vec::new();
        for (i, (temp, rows, row_groups)) in self.done.into_iter().enumerate() {
            let name = format!("{}-{}-{i:05}-of-{total:05}.parquet", self.table, self.split);
            let path = self.data_dir.join(&name);
            let f = File::open(&temp)?;
            f.sync_all()?;
            std::fs::rename(&temp, &path).with_context(|| {
                format!("cannot rename {} to {}", temp.display(), path.display())
            })?;
            out.push(ExportedFile {
                path: format!("data/{name}"),
                rows,
                row_groups,
                bytes: std::fs::metadata(&path)?.len(),
            });
        }
        Ok(out)
    }
}

/// A split name Hugging Face accepts (`\w+`), checked so that the card's globs stay exact.
fn check_split(split: &str, dir: &Path) -> Result<()> {
    if split.is_empty() || !split.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!(
            "{}: split {split:?} cannot name a Hugging Face split (expected letters, digits and _)",
            dir.display()
        );
    }
    Ok(())
}

fn split_mask(batch: &RecordBatch, split: &str) -> Result<BooleanArray> {
    let column = batch
        .column_by_name("split")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .context("samples batch without a string `split` column")?;
    Ok(column.iter().map(|s| Some(s == Some(split))).collect())
}

/// Exports `dir` into `out`; returns the files written (in card order).
pub fn export_parquet(args: &ExportArgs) -> Result<Vec<ExportedFile>> {
    let dataset =
        Dataset::open(&args.dir).with_context(|| format!("cannot open {}", args.dir.display()))?;
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .with_context(|| format!("cannot read {}", args.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{}: the output folder is not empty; give a new or empty folder",
            args.out.display()
        );
    }
    let data_dir = args.out.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mib = |m: f64| ((m * 1048576.0) as u64).max(1);

    // Splits of the samples, sorted, each written in table order.
    let mut splits = BTreeMap::new();
    for row in 0..dataset.num_samples() {
        let sample = dataset.sample(row)?;
        *splits.entry(sample.split).or_insert(0usize) += 1;
    }
    let mut files = Vec::new();
    let tables: Vec<(&'static str, SchemaRef, Vec<String>)> = vec![
        (
            "samples",
            samples_schema(),
            splits.keys().cloned().collect(),
        ),
        ("scenes", scenes_schema(), vec![SCENES_SPLIT.to_string()]),
    ];
    for (table, shard_schema, table_splits) in tables {
        let schema = parquet_schema(&shard_schema);
        let props = properties(&schema, mib(args.row_group_mb) as usize)?;
        for split in table_splits {
            check_split(&split, &args.dir)?;
            let mut writer = SplitWriter {
                data_dir: &data_dir,
                table,
                split: split.clone(),
                schema: schema.clone(),
                props: props.clone(),
                file_bytes: mib(args.file_mb as f64),
                current: None,
                done: Vec::new(),
            };
            let batches: Box<dyn Iterator<Item = _>> = if table == "samples" {
                Box::new(dataset.samples().batches())
            } else {
                Box::new(dataset.scenes().batches())
            };
            for item in batches {
                let (batch, path) = item?;
                // The file's schema carries the contract's metadata; keep it on every batch.
                let batch = to_parquet_batch(&batch, &schema).with_context(|| {
                    format!("{}: batch does not fit the contract", path.display())
                })?;
                let batch = if table == "samples" {
                    filter_record_batch(&batch, &split_mask(&batch, &split)?)?
                } else {
                    batch
                };
                if batch.num_rows() > 0 {
                    writer.write(&batch)?;
                }
            }
            files.extend(writer.finish()?);
        }
    }
    let name = args.name.clone().unwrap_or_else(|| {
        args.dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "roomplan dataset".into())
    });
    let card = dataset_card(&name, &dataset, &splits, &files);
    roomplan_prep::shard::write_atomic(&args.out.join("README.md"), card.as_bytes())
        .with_context(|| format!("cannot write {}/README.md", args.out.display()))?;
    Ok(files)
}

/// README.md: the dataset-card YAML header (configs, splits) and a description of both tables.
pub fn dataset_card(
    name: &str,
    dataset: &Dataset,
    splits: &BTreeMap<String, usize>,
    files: &[ExportedFile],
) -> String {
    let m = dataset.manifest();
    let mut yaml =
        String::from("---\nconfigs:\n- config_name: samples\n  default: true\n  data_files:\n");
    for split in splits.keys() {
        yaml += &format!("  - split: {split}\n    path: data/samples-{split}-*.parquet\n");
    }
    yaml += &format!(
        "- config_name: scenes\n  data_files:\n  - split: {SCENES_SPLIT}\n    path: data/scenes-{SCENES_SPLIT}-*.parquet\n"
    );
    yaml += "tags:\n- 3d\n- scene-understanding\n- question-answering\n- roomplan\n---\n";
    let datasets: std::collections::BTreeSet<String> = (0..dataset.num_scenes())
        .filter_map(|i| dataset.scene(i).ok().map(|s| s.dataset))
        .collect();
    let mut body = format!(
        "\n# {name}\n\n\
         Exported by `tools shard export --format parquet` from the roomplan prepared dataset with digest \
         `{digest}` (schema version {version}, written by {tool} {tool_version}; source datasets: {sources}).\n\
         The values are those of the Arrow shards, unchanged; the licence is that of the source datasets.\n\n\
         {scenes} scenes, {samples} samples, {views} views.\n\n\
         ## Configs\n\n\
         - `samples` (default): one row per question or instruction, one split per `split` value \
         ({split_list}). `scene_id` names a row of `scenes`.\n\
         - `scenes`: one row per scene with all its views (encoded image bytes, width, height, camera \
         geometry: `R`, `t` camera→reference, `K` row-major 3×3, depth histogram); split `{SCENES_SPLIT}`, \
         shared by every split of `samples`.\n\n\
         ```python\nfrom datasets import load_dataset\n\
         samples = load_dataset(\"<repo>\", \"samples\", split=\"{first_split}\")\n\
         scenes = load_dataset(\"<repo>\", \"scenes\", split=\"{SCENES_SPLIT}\")\n```\n\n\
         Row groups are sized by bytes (scene rows carry images); image bytes are stored uncompressed, \
         other columns with Snappy. Fixed-size vectors and matrices (`R`, `t`, `K` row-major, poses, agent \
         vectors) are stored as lists of their fixed length (field metadata `roomplan.fixed_size`), as \
         Parquet readers do not read fixed-size lists under a null struct back.\n\n## Files\n\n| file | rows | row groups | bytes |\n|---|---:|---:|---:|\n",
        digest = dataset.digest(),
        version = m.schema_version,
        tool = m.tool.name,
        tool_version = m.tool.version,
        sources = datasets.into_iter().collect::<Vec<_>>().join(", "),
        scenes = m.counts.scenes,
        samples = m.counts.samples,
        views = m.counts.views,
        split_list = splits
            .iter()
            .map(|(s, n)| format!("`{s}`: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        first_split = splits.keys().next().map(String::as_str).unwrap_or("train"),
    );
    for f in files {
        body += &format!(
            "| `{}` | {} | {} | {} |\n",
            f.path, f.rows, f.row_groups, f.bytes
        );
    }
    yaml + &body
}

pub fn run(args: &ExportArgs) -> Result<std::process::ExitCode> {
    let files = export_parquet(args).with_context(|| {
        format!(
            "cannot export {} to {}",
            args.dir.display(),
            args.out.display()
        )
    })?;
    for f in &files {
        println!(
            "{}/{}: {} rows in {} row groups, {} bytes",
            args.out.display(),
            f.path,
            f.rows,
            f.row_groups,
            f.bytes
        );
    }
    println!("{}/README.md: dataset card", args.out.display());
    Ok(std::process::ExitCode::SUCCESS)
}
