//! [`verify_dataset`] (every digest, size and row count against the manifest) and
//! [`merge_datasets`] (joining the parts of one `--shard-index/--num-shards` run).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::ListArray;

use super::atomic::AtomicFile;
use super::batch::Columns;
use super::error::{format_err, io_err, ShardError};
use super::reader::{Dataset, ShardFile};
use super::schema::schema_of;
use crate::manifest::{sha256_file, Counts, FileEntry, FileKind, Manifest, MANIFEST_FILE};
use crate::rejects::{RejectLog, REJECTS_FILE};
use crate::staging::is_dataset_file_name;
use crate::staging::Staged;

/// What [`verify_dataset`] found: one line per problem, each naming the file.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub digest: String,
    pub files_checked: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Recompute every digest, size and row count of a dataset folder against its manifest, check the
/// counts and that no other dataset files lie in the folder. An unreadable or non-canonical
/// manifest is an error; everything else is collected as problems.
pub fn verify_dataset(dir: &Path) -> Result<VerifyReport, ShardError> {
    let manifest = Manifest::read(dir)?;
    let mut report = VerifyReport {
        digest: manifest.digest(),
        ..Default::default()
    };
    let mut counted = Counts::default();
    let mut listed = HashSet::new();
    for entry in &manifest.files {
        listed.insert(entry.path.clone());
        report.files_checked += 1;
        let problem = |report: &mut VerifyReport, what: String| {
            report.problems.push(format!("{}: {what}", entry.path))
        };
        let path = match dataset_file(dir, &entry.path) {
            Ok(path) => path,
            Err(e) => {
                problem(&mut report, e);
                continue;
            }
        };
        match sha256_file(&path) {
            Err(e) => {
                problem(&mut report, format!("cannot read: {e}"));
                continue;
            }
            Ok((sha, bytes)) => {
                if bytes != entry.bytes {
                    problem(
                        &mut report,
                        format!("{bytes} bytes, the manifest says {}", entry.bytes),
                    );
                }
                if sha != entry.sha256 {
                    problem(
                        &mut report,
                        format!("sha256 is {sha}, the manifest says {}", entry.sha256),
                    );
                    continue;
                }
            }
        }
        let rows = match entry.kind {
            FileKind::Rejects => std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| RejectLog::from_jsonl(&b))
                .map(|log| log.len() as u64),
            kind => count_rows(&path, kind, &mut counted.views).map_err(|e| e.to_string()),
        };
        match rows {
            Ok(rows) if rows != entry.rows => problem(
                &mut report,
                format!("{rows} rows, the manifest says {}", entry.rows),
            ),
            Ok(rows) => match entry.kind {
                FileKind::Scenes => counted.scenes += rows,
                FileKind::Samples => counted.samples += rows,
                FileKind::Rejects => counted.rejects += rows,
            },
            Err(e) => problem(&mut report, e),
        }
    }
    if report.problems.is_empty() && counted != manifest.counts {
        report.problems.push(format!(
            "{MANIFEST_FILE}: counts {:?}, the files hold {counted:?}",
            manifest.counts
        ));
    }
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let name = entry
            .map_err(io_err(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if is_dataset_file_name(&name) && name != MANIFEST_FILE && !listed.contains(&name) {
            unlisted.push(name);
        }
    }
    unlisted.sort();
    report.problems.extend(
        unlisted
            .into_iter()
            .map(|name| format!("{name}: not listed in the manifest")),
    );
    Ok(report)
}

/// The path of a file the manifest lists, which must be a regular file directly inside the dataset
/// folder: not a symbolic link (it could point anywhere). Names are checked by [`Manifest::read`].
pub(super) fn dataset_file(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "is a symbolic link{}; a dataset's files must lie in its folder",
            std::fs::read_link(&path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default()
        )),
        _ => Ok(path),
    }
}

/// Rows of an Arrow file (schema checked); adds the scenes' views to `views`.
fn count_rows(path: &Path, kind: FileKind, views: &mut u64) -> Result<u64, ShardError> {
    let schema = schema_of(kind).expect("arrow kinds have schemas");
    let shard = ShardFile::open(path, &schema)?;
    if kind == FileKind::Scenes {
        for i in 0..shard.num_batches() {
            let batch = shard.batch(i)?;
            let list = Columns {
                batch: &batch,
                path,
            }
            .get::<ListArray>("views")?;
            let offsets = list.value_offsets();
            *views += (offsets[offsets.len() - 1] - offsets[0]) as u64;
        }
    }
    Ok(shard.num_rows() as u64)
}

/// Join the folders written by the jobs of one `--shard-index/--num-shards` run into one dataset at
/// `out` (a new or empty folder): every part is verified first, scene ids must be disjoint, files are
/// copied (names carry the part index), rejects are merged and the manifest is [`Manifest::merge`]d.
pub fn merge_datasets(out: &Path, parts: &[PathBuf]) -> Result<(Manifest, String), ShardError> {
    let mut manifests = Vec::new();
    let mut scene_owner: HashMap<String, PathBuf> = HashMap::new();
    let mut rejects = RejectLog::new();
    for dir in parts {
        let report = verify_dataset(dir)?;
        if !report.ok() {
            return Err(ShardError::Dataset(format!(
                "part {} does not verify:\n  {}",
                dir.display(),
                report.problems.join("\n  ")
            )));
        }
        let dataset = Dataset::open(dir)?;
        // Sorted, so that the error names the same scene on every run.
        let mut ids: Vec<&String> = dataset.scene_rows.keys().collect();
        ids.sort();
        for id in ids {
            if let Some(other) = scene_owner.insert(id.clone(), dir.clone()) {
                return Err(ShardError::Dataset(format!(
                    "scene {id} is in both {} and {}",
                    other.display(),
                    dir.display()
                )));
            }
        }
        let rejects_path = dir.join(REJECTS_FILE);
        let bytes = std::fs::read(&rejects_path).map_err(io_err(&rejects_path))?;
        rejects.extend(
            RejectLog::from_jsonl(&bytes)
                .map_err(|e| format_err(&rejects_path, e))?
                .sorted(),
        );
        manifests.push(dataset.manifest);
    }
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ShardError::Dataset(format!(
            "merge output folder {} is not empty",
            out.display()
        )));
    }
    // Written beside `out` and put in place complete.
    let staged = Staged::begin(out, false)?;
    let work = staged.path();
    let rejects_entry = FileEntry {
        path: REJECTS_FILE.into(),
        kind: FileKind::Rejects,
        sha256: crate::manifest::sha256_hex(&rejects.to_jsonl()),
        bytes: rejects.to_jsonl().len() as u64,
        rows: rejects.len() as u64,
    };
    let manifest = Manifest::merge(&manifests, rejects_entry)?;
    for (dir, m) in parts.iter().zip(&manifests) {
        for entry in m.files.iter().filter(|f| f.kind != FileKind::Rejects) {
            let target = work.join(&entry.path);
            if target.exists() {
                return Err(ShardError::Dataset(format!(
                    "two parts have a file named {}",
                    entry.path
                )));
            }
            let (guard, file) = AtomicFile::create(&target).map_err(io_err(&target))?;
            drop(file);
            std::fs::copy(dir.join(&entry.path), guard.temp_path())
                .map_err(io_err(&dir.join(&entry.path)))?;
            let file = File::options()
                .write(true)
                .open(guard.temp_path())
                .map_err(io_err(&target))?;
            guard.commit(file).map_err(io_err(&target))?;
        }
    }
    rejects
        .write(work)
        .map_err(io_err(&work.join(REJECTS_FILE)))?;
    let digest = manifest
        .write(work)
        .map_err(io_err(&work.join(MANIFEST_FILE)))?;
    staged.commit()?;
    Ok((manifest, digest))
}
