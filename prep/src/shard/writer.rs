//! [`DatasetWriter`]: writes records into size-capped shard files, hashing them as they are written,
//! with the rejects and the manifest, staged beside any previous dataset and swapped in when complete.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::writer::FileWriter;
use sha2::{Digest, Sha256};

use super::atomic::AtomicFile;
use super::batch::TableRecord;
use super::error::{arrow_err, io_err, ShardError};
use super::records::{SampleRecord, SceneRecord};
use super::SCHEMA_VERSION;
use crate::manifest::{
    Counts, FileEntry, FileKind, Manifest, Part, RawInput, ToolInfo, MANIFEST_FILE,
};
use crate::rejects::{Reject, RejectLog, REJECTS_FILE};
use crate::staging::CommitStep;
use crate::staging::Staged;

/// Counts and hashes what passes through, so a shard's digest needs no second read.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How the writer cuts batches and files.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterOptions {
    /// A file is closed once it holds at least this many bytes (files end at a batch boundary, so a
    /// file exceeds this by less than one batch).
    pub target_file_bytes: u64,
    /// A record batch is written once it holds this many rows ...
    pub batch_rows: usize,
    /// ... or about this many bytes.
    pub batch_bytes: usize,
    /// The slice written by a `--shard-index/--num-shards` job; `None` for a whole dataset.
    pub part: Option<Part>,
    /// Remove an existing dataset (manifest, shards, rejects) in the folder instead of refusing.
    pub replace_existing: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            target_file_bytes: 512 << 20,
            batch_rows: 1024,
            batch_bytes: 16 << 20,
            part: None,
            replace_existing: false,
        }
    }
}

/// The file name of shard `seq` of a table.
pub fn shard_file_name(kind: FileKind, part: Option<Part>, seq: usize) -> String {
    match part {
        Some(p) if p.count > 1 => format!("{}-part{:05}-{seq:05}.arrow", kind.name(), p.index),
        _ => format!("{}-{seq:05}.arrow", kind.name()),
    }
}

struct OpenShard {
    guard: AtomicFile,
    writer: FileWriter<HashingWriter<BufWriter<File>>>,
    name: String,
    rows: u64,
}

struct TableWriter<R: TableRecord> {
    dir: PathBuf,
    part: Option<Part>,
    target_file_bytes: u64,
    batch_rows: usize,
    batch_bytes: usize,
    pending: Vec<R>,
    pending_bytes: usize,
    current: Option<OpenShard>,
    files: Vec<FileEntry>,
    rows: u64,
}

impl<R: TableRecord> TableWriter<R> {
    fn new(dir: &Path, options: &WriterOptions) -> Self {
        TableWriter {
            dir: dir.to_path_buf(),
            part: options.part,
            target_file_bytes: options.target_file_bytes,
            batch_rows: options.batch_rows.max(1),
            batch_bytes: options.batch_bytes.max(1),
            pending: Vec::new(),
            pending_bytes: 0,
            current: None,
            files: Vec::new(),
            rows: 0,
        }
    }

    fn push(&mut self, record: R) -> Result<(), ShardError> {
        self.pending_bytes += record.approx_bytes();
        self.pending.push(record);
        self.rows += 1;
        if self.pending.len() >= self.batch_rows || self.pending_bytes >= self.batch_bytes {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<OpenShard, ShardError> {
        let name = shard_file_name(R::KIND, self.part, self.files.len());
        let path = self.dir.join(&name);
        let (guard, file) = AtomicFile::create(&path).map_err(io_err(&path))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer =
            FileWriter::try_new(sink, &R::schema()).map_err(arrow_err(guard.temp_path()))?;
        Ok(OpenShard {
            guard,
            writer,
            name,
            rows: 0,
        })
    }

    fn flush_batch(&mut self) -> Result<(), ShardError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut shard = match self.current.take() {
            Some(shard) => shard,
            None => self.open_shard()?,
        };
        let batch = R::to_batch(&self.pending).map_err(arrow_err(shard.guard.temp_path()))?;
        shard
            .writer
            .write(&batch)
            .map_err(arrow_err(shard.guard.temp_path()))?;
        shard.rows += batch.num_rows() as u64;
        self.pending.clear();
        self.pending_bytes = 0;
        if shard.writer.get_ref().bytes >= self.target_file_bytes {
            self.close_shard(shard)?;
        } else {
            self.current = Some(shard);
        }
        Ok(())
    }

    fn close_shard(&mut self, mut shard: OpenShard) -> Result<(), ShardError> {
        let tmp = shard.guard.temp_path().to_path_buf();
        shard.writer.finish().map_err(arrow_err(&tmp))?;
        let mut sink = shard.writer.into_inner().map_err(arrow_err(&tmp))?;
        sink.flush().map_err(io_err(&tmp))?;
        let file = sink.inner.into_inner().map_err(|e| ShardError::Io {
            path: tmp.clone(),
            cause: e.into_error(),
        })?;
        shard.guard.commit(file).map_err(io_err(&tmp))?;
        self.files.push(FileEntry {
            path: shard.name,
            kind: R::KIND,
            sha256: hex::encode(sink.hasher.finalize()),
            bytes: sink.bytes,
            rows: shard.rows,
        });
        Ok(())
    }

    /// Flush, close, and return the table's files (one empty file if no row was written, so that
    /// every dataset carries both schemas).
    fn finish(mut self) -> Result<Vec<FileEntry>, ShardError> {
        self.flush_batch()?;
        if let Some(shard) = self.current.take() {
            self.close_shard(shard)?;
        }
        if self.files.is_empty() {
            let shard = self.open_shard()?;
            self.close_shard(shard)?;
        }
        Ok(self.files)
    }
}

/// Writes one dataset folder: scenes, samples, rejects and, on [`finish`](DatasetWriter::finish),
/// the manifest. Feed records in a deterministic order (e.g. sorted by scene) for byte-identical output.
pub struct DatasetWriter {
    /// Where files are written until finish: the staging folder.
    dir: PathBuf,
    staged: Staged,
    part: Option<Part>,
    scenes: TableWriter<SceneRecord>,
    samples: TableWriter<SampleRecord>,
    rejects: RejectLog,
    scene_ids: HashSet<String>,
    sample_ids: HashSet<String>,
    sample_scenes: BTreeSet<String>,
    views: u64,
    depth_bins: Option<usize>,
}

impl DatasetWriter {
    /// Start writing the dataset folder `dir`. The files are written beside it and take their final
    /// place only in [`finish`](Self::finish) ([`crate::staging`]): a folder that already holds a
    /// dataset is refused unless `options.replace_existing`, and even then keeps the old dataset
    /// until the new one is complete.
    pub fn create(dir: &Path, options: WriterOptions) -> Result<DatasetWriter, ShardError> {
        if let Some(part) = options.part {
            if part.count == 0 || part.index >= part.count {
                return Err(ShardError::Dataset(format!(
                    "shard index {} is out of range for {} shards",
                    part.index, part.count
                )));
            }
        }
        let staged = Staged::begin(dir, options.replace_existing)?;
        let work = staged.path().to_path_buf();
        Ok(DatasetWriter {
            dir: work.clone(),
            staged,
            part: options.part.filter(|p| p.count > 1),
            scenes: TableWriter::new(&work, &options),
            samples: TableWriter::new(&work, &options),
            rejects: RejectLog::new(),
            scene_ids: HashSet::new(),
            sample_ids: HashSet::new(),
            sample_scenes: BTreeSet::new(),
            views: 0,
            depth_bins: None,
        })
    }

    /// The dataset folder (where the dataset appears on [`finish`](Self::finish)).
    pub fn dir(&self) -> &Path {
        self.staged.final_dir()
    }

    /// Append a scene. Scene ids are unique; every geometry's `depth_hist` has one length.
    pub fn write_scene(&mut self, scene: SceneRecord) -> Result<(), ShardError> {
        if scene.scene_id.is_empty() {
            return Err(ShardError::Record(format!(
                "a scene of dataset {} has an empty scene_id",
                scene.dataset
            )));
        }
        if self.scene_ids.contains(&scene.scene_id) {
            return Err(ShardError::Record(format!(
                "scene {} is written twice",
                scene.scene_id
            )));
        }
        // A rejected scene must leave no trace: check everything before recording anything.
        scene
            .check()
            .map_err(|e| ShardError::Record(format!("scene {}: {e}", scene.scene_id)))?;
        let mut bins = self.depth_bins;
        for (i, view) in scene.views.iter().enumerate() {
            if let Some(g) = &view.geometry {
                let expected = *bins.get_or_insert(g.depth_hist.len());
                if g.depth_hist.len() != expected {
                    return Err(ShardError::Record(format!(
                        "scene {} view {i} (frame {}): depth_hist has {} bins, earlier views have {expected}",
                        scene.scene_id,
                        view.frame_id,
                        g.depth_hist.len()
                    )));
                }
            }
        }
        self.depth_bins = bins;
        self.scene_ids.insert(scene.scene_id.clone());
        self.views += scene.views.len() as u64;
        self.scenes.push(scene)
    }

    /// Append a sample. Sample ids are unique; `source_json` must be a JSON object (stored with
    /// sorted keys); its scene must be written to this dataset before [`finish`](Self::finish).
    pub fn write_sample(&mut self, mut sample: SampleRecord) -> Result<(), ShardError> {
        let source: serde_json::Value = serde_json::from_str(&sample.source_json).map_err(|e| {
            ShardError::Record(format!(
                "sample {}: source_json is not JSON: {e}",
                sample.sample_id
            ))
        })?;
        if !source.is_object() {
            return Err(ShardError::Record(format!(
                "sample {}: source_json is not a JSON object",
                sample.sample_id
            )));
        }
        sample
            .check()
            .map_err(|e| ShardError::Record(format!("sample {}: {e}", sample.sample_id)))?;
        sample.source_json = crate::manifest::canonical_json(source).to_string();
        if !self.sample_ids.insert(sample.sample_id.clone()) {
            return Err(ShardError::Record(format!(
                "sample {} is written twice",
                sample.sample_id
            )));
        }
        self.sample_scenes.insert(sample.scene_id.clone());
        self.samples.push(sample)
    }

    pub fn reject(&mut self, reject: Reject) {
        self.rejects.push(reject);
    }

    pub fn rejects(&mut self) -> &mut RejectLog {
        &mut self.rejects
    }

    /// Close every file, write `rejects.jsonl` and `manifest.json`; returns the manifest and the
    /// dataset digest.
    pub fn finish(
        self,
        tool: ToolInfo,
        raw_inputs: Vec<RawInput>,
    ) -> Result<(Manifest, String), ShardError> {
        self.finish_until(tool, raw_inputs, None)
    }

    /// [`finish`](Self::finish) as if the process died just before `step` of putting the dataset
    /// in place (see [`Staged::commit_interrupted`]). Not for use outside tests.
    #[doc(hidden)]
    pub fn finish_interrupted(
        self,
        tool: ToolInfo,
        raw_inputs: Vec<RawInput>,
        step: CommitStep,
    ) -> Result<(Manifest, String), ShardError> {
        self.finish_until(tool, raw_inputs, Some(step))
    }

    fn finish_until(
        self,
        tool: ToolInfo,
        raw_inputs: Vec<RawInput>,
        stop: Option<CommitStep>,
    ) -> Result<(Manifest, String), ShardError> {
        if let Some(missing) = self
            .sample_scenes
            .iter()
            .find(|s| !self.scene_ids.contains(*s))
        {
            return Err(ShardError::Dataset(format!(
                "samples refer to scene {missing}, which was not written (reject its samples along with the scene)"
            )));
        }
        let mut files = self.scenes.finish()?;
        files.extend(self.samples.finish()?);
        let rejects = self
            .rejects
            .write(&self.dir)
            .map_err(io_err(&self.dir.join(REJECTS_FILE)))?;
        files.push(rejects);
        let mut raw_inputs = raw_inputs;
        raw_inputs.sort();
        raw_inputs.dedup();
        let manifest = Manifest {
            schema_version: SCHEMA_VERSION,
            tool,
            part: self.part,
            merged_from: vec![],
            counts: Counts {
                scenes: self.scene_ids.len() as u64,
                samples: self.sample_ids.len() as u64,
                views: self.views,
                rejects: self.rejects.len() as u64,
            },
            files,
            raw_inputs,
        };
        let digest = manifest
            .write(&self.dir)
            .map_err(io_err(&self.dir.join(MANIFEST_FILE)))?;
        match stop {
            None => self.staged.commit()?,
            Some(step) => self.staged.commit_interrupted(step)?,
        }
        Ok((manifest, digest))
    }
}
