//! Reading: [`ShardFile`] (one memory-mapped Arrow IPC file, random access by row),
//! [`TableReader`] (all files of a table) and [`Dataset`] (a prepared folder, checked against its
//! manifest, with lookup by scene id).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::StringArray;
use arrow::buffer::Buffer;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::{convert::try_fb_to_schema, root_as_footer, Block};
use arrow::record_batch::RecordBatch;

use super::batch::{Columns, TableRecord};
use super::error::{arrow_err, format_err, io_err, ShardError};
use super::records::{SampleRecord, SceneRecord};
use super::verify::dataset_file;
use super::{SCHEMA_VERSION_KEY, TABLE_KEY};
use crate::manifest::{FileEntry, FileKind, Manifest};

/// One Arrow IPC file, memory-mapped; batches decode without copying.
pub struct ShardFile {
    path: PathBuf,
    buffer: Buffer,
    decoder: FileDecoder,
    blocks: Vec<Block>,
    /// Row offset of each batch, plus the total at the end.
    batch_starts: Vec<usize>,
    schema: SchemaRef,
}

impl ShardFile {
    /// Map and index a file, checking its schema against `expected` (fields and schema version).
    pub fn open(path: &Path, expected: &Schema) -> Result<ShardFile, ShardError> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: shard files are immutable once renamed into place; nothing writes them while mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let buffer = Buffer::from(bytes::Bytes::from_owner(mmap));
        Self::from_buffer(path, buffer, expected)
    }

    fn from_buffer(
        path: &Path,
        buffer: Buffer,
        expected: &Schema,
    ) -> Result<ShardFile, ShardError> {
        if buffer.len() < 16 || &buffer[..6] != b"ARROW1" {
            return Err(format_err(path, "not an Arrow IPC file (no ARROW1 magic)"));
        }
        let trailer = buffer.len() - 10;
        let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
            .map_err(arrow_err(path))?;
        if footer_len > trailer {
            return Err(format_err(path, "footer length exceeds the file"));
        }
        let footer = root_as_footer(&buffer[trailer - footer_len..trailer])
            .map_err(|e| format_err(path, format!("unreadable footer: {e}")))?;
        let schema = Arc::new(
            try_fb_to_schema(
                footer
                    .schema()
                    .ok_or_else(|| format_err(path, "footer has no schema"))?,
            )
            .map_err(arrow_err(path))?,
        );
        check_schema(path, &schema, expected)?;
        let decoder = FileDecoder::new(schema.clone(), footer.version());
        if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
            return Err(format_err(
                path,
                "has dictionaries, which the schema never uses",
            ));
        }
        let blocks: Vec<Block> = footer
            .recordBatches()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        let mut shard = ShardFile {
            path: path.to_path_buf(),
            buffer,
            decoder,
            blocks,
            batch_starts: vec![0],
            schema,
        };
        for i in 0..shard.blocks.len() {
            let rows = shard.batch(i)?.num_rows();
            shard.batch_starts.push(shard.batch_starts[i] + rows);
        }
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn num_rows(&self) -> usize {
        *self.batch_starts.last().expect("never empty")
    }

    pub fn num_batches(&self) -> usize {
        self.blocks.len()
    }

    /// Decode batch `i` (zero copy: arrays point into the mapped file).
    pub fn batch(&self, i: usize) -> Result<RecordBatch, ShardError> {
        let block = self
            .blocks
            .get(i)
            .ok_or_else(|| format_err(&self.path, format!("no batch {i}")))?;
        let (offset, len) = (
            block.offset(),
            block.metaDataLength() as i64 + block.bodyLength(),
        );
        if offset < 0 || len < 0 || (offset + len) as usize > self.buffer.len() {
            return Err(format_err(
                &self.path,
                format!("batch {i} lies outside the file"),
            ));
        }
        let data = self.buffer.slice_with_length(offset as usize, len as usize);
        self.decoder
            .read_record_batch(block, &data)
            .map_err(arrow_err(&self.path))?
            .ok_or_else(|| format_err(&self.path, format!("batch {i} is empty")))
    }

    /// Row `row` as a one-row batch (zero copy).
    pub fn row(&self, row: usize) -> Result<RecordBatch, ShardError> {
        if row >= self.num_rows() {
            return Err(format_err(
                &self.path,
                format!("row {row} out of range ({} rows)", self.num_rows()),
            ));
        }
        let batch_index = self.batch_starts.partition_point(|&start| start <= row) - 1;
        Ok(self
            .batch(batch_index)?
            .slice(row - self.batch_starts[batch_index], 1))
    }
}

fn check_schema(path: &Path, found: &Schema, expected: &Schema) -> Result<(), ShardError> {
    let version = found
        .metadata()
        .get(SCHEMA_VERSION_KEY)
        .cloned()
        .unwrap_or_else(|| "none".into());
    let expected_version = expected
        .metadata()
        .get(SCHEMA_VERSION_KEY)
        .cloned()
        .unwrap_or_default();
    if version != expected_version {
        return Err(format_err(
            path,
            format!("schema version {version}, this build reads version {expected_version}"),
        ));
    }
    if found.fields() != expected.fields()
        || found.metadata().get(TABLE_KEY) != expected.metadata().get(TABLE_KEY)
    {
        return Err(format_err(
            path,
            format!("schema differs from the contract:\n found    {found}\n expected {expected}"),
        ));
    }
    Ok(())
}

/// The files of one table in manifest order, addressed by a global row number.
pub struct TableReader<R: TableRecord> {
    files: Vec<ShardFile>,
    starts: Vec<usize>,
    _record: std::marker::PhantomData<R>,
}

impl<R: TableRecord> TableReader<R> {
    fn open(dir: &Path, entries: impl Iterator<Item = FileEntry>) -> Result<Self, ShardError> {
        let schema = R::schema();
        let mut files = Vec::new();
        let mut starts = vec![0];
        for entry in entries {
            let path = dataset_file(dir, &entry.path)
                .map_err(|e| format_err(&dir.join(&entry.path), e))?;
            let shard = ShardFile::open(&path, &schema)?;
            if shard.num_rows() as u64 != entry.rows {
                return Err(format_err(
                    shard.path(),
                    format!(
                        "{} rows, the manifest says {}",
                        shard.num_rows(),
                        entry.rows
                    ),
                ));
            }
            starts.push(starts.last().copied().unwrap_or(0) + shard.num_rows());
            files.push(shard);
        }
        Ok(TableReader {
            files,
            starts,
            _record: std::marker::PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        *self.starts.last().expect("never empty")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn files(&self) -> &[ShardFile] {
        &self.files
    }

    /// Row `row` of the table as a one-row batch (zero copy).
    pub fn row_batch(&self, row: usize) -> Result<RecordBatch, ShardError> {
        if row >= self.len() {
            return Err(ShardError::Dataset(format!(
                "{} row {row} out of range ({} rows)",
                R::KIND.name(),
                self.len()
            )));
        }
        let file = self.starts.partition_point(|&s| s <= row) - 1;
        self.files[file].row(row - self.starts[file])
    }

    /// Row `row` decoded into a record (copies the bytes).
    pub fn get(&self, row: usize) -> Result<R, ShardError> {
        let batch = self.row_batch(row)?;
        let file = self.starts.partition_point(|&s| s <= row) - 1;
        R::from_batch(&batch, self.files[file].path())?
            .pop()
            .ok_or_else(|| ShardError::Dataset("empty row".into()))
    }

    /// Every batch of every file, in order.
    pub fn batches(&self) -> impl Iterator<Item = Result<(RecordBatch, &Path), ShardError>> + '_ {
        self.files
            .iter()
            .flat_map(|f| (0..f.num_batches()).map(move |i| f.batch(i).map(|b| (b, f.path()))))
    }
}

/// A prepared dataset opened for reading: the manifest and both tables, memory-mapped.
/// Opening checks schemas and row counts against the manifest, not digests (see [`verify_dataset`]).
pub struct Dataset {
    dir: PathBuf,
    pub(super) manifest: Manifest,
    scenes: TableReader<SceneRecord>,
    samples: TableReader<SampleRecord>,
    pub(super) scene_rows: HashMap<String, usize>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset, ShardError> {
        let manifest = Manifest::read(dir)?;
        let scenes = TableReader::open(dir, manifest.files_of(FileKind::Scenes).cloned())?;
        let samples = TableReader::open(dir, manifest.files_of(FileKind::Samples).cloned())?;
        let mut scene_rows = HashMap::new();
        let mut row = 0;
        for batch in scenes.batches() {
            let (batch, path) = batch?;
            let ids = Columns {
                batch: &batch,
                path,
            }
            .get::<StringArray>("scene_id")?;
            for id in ids.iter() {
                let id = id.unwrap_or_default().to_string();
                if scene_rows.insert(id.clone(), row).is_some() {
                    return Err(format_err(
                        path,
                        format!("scene {id} appears twice in the dataset"),
                    ));
                }
                row += 1;
            }
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            manifest,
            scenes,
            samples,
            scene_rows,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn scenes(&self) -> &TableReader<SceneRecord> {
        &self.scenes
    }

    pub fn samples(&self) -> &TableReader<SampleRecord> {
        &self.samples
    }

    pub fn num_scenes(&self) -> usize {
        self.scenes.len()
    }

    pub fn num_samples(&self) -> usize {
        self.samples.len()
    }

    pub fn scene(&self, row: usize) -> Result<SceneRecord, ShardError> {
        self.scenes.get(row)
    }

    pub fn sample(&self, row: usize) -> Result<SampleRecord, ShardError> {
        self.samples.get(row)
    }

    /// The row of a scene id.
    pub fn scene_row(&self, scene_id: &str) -> Option<usize> {
        self.scene_rows.get(scene_id).copied()
    }

    pub fn scene_by_id(&self, scene_id: &str) -> Result<Option<SceneRecord>, ShardError> {
        self.scene_row(scene_id)
            .map(|row| self.scene(row))
            .transpose()
    }

    /// The dataset digest (sha256 of the manifest's canonical bytes).
    pub fn digest(&self) -> String {
        self.manifest.digest()
    }
}
