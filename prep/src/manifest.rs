//! `manifest.json`: what a prepared dataset contains and where it came from.
//!
//! The manifest lists every file of the dataset (Arrow shards and `rejects.jsonl`) with its sha256,
//! byte size and row count; the schema version; the prep tool's name, version and effective
//! arguments; the sha256 of every raw input read; and counts. Its **canonical bytes** (fixed key
//! order, sorted argument keys, 2-space pretty JSON, final newline, no timestamps, only relative
//! paths) are what `manifest.json` holds, so the **dataset digest** — sha256 of those bytes — is the
//! same on any machine for the same raw input and arguments. Experiments pin that digest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::shard::SCHEMA_VERSION;

/// File name of the manifest inside a dataset folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a file of the dataset holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Arrow IPC file of the `scenes` table.
    Scenes,
    /// Arrow IPC file of the `samples` table.
    Samples,
    /// `rejects.jsonl`; rows = lines.
    Rejects,
}

impl FileKind {
    pub fn name(&self) -> &'static str {
        match self {
            FileKind::Scenes => "scenes",
            FileKind::Samples => "samples",
            FileKind::Rejects => "rejects",
        }
    }
}

/// One file of the dataset, path relative to the dataset folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub kind: FileKind,
    pub sha256: String,
    pub bytes: u64,
    pub rows: u64,
}

/// The prep tool that wrote the dataset. `arguments` holds the effective value of every option
/// that affects the output (defaults included), with input paths recorded relative to their
/// named roots, never as absolute paths, and without `--shard-index/--num-shards` (see [`Part`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    pub arguments: serde_json::Value,
}

impl ToolInfo {
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        arguments: serde_json::Value,
    ) -> ToolInfo {
        ToolInfo {
            name: name.into(),
            version: version.into(),
            arguments: canonical_json(arguments),
        }
    }
}

/// A raw input read by the tool: a file (sha256 of its bytes) or a folder (sha256 of its listing, see
/// [`RawInput::listing`]). `path` is `<root name>:<path relative to that root>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub path: String,
    pub kind: RawInputKind,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawInputKind {
    File,
    Listing,
}

/// Which slice of a dataset a `--shard-index/--num-shards` run wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub scenes: u64,
    pub samples: u64,
    pub views: u64,
    pub rejects: u64,
}

/// `manifest.json`. Field order here is the canonical key order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub tool: ToolInfo,
    /// `Some` for the output of one `--shard-index/--num-shards` job, `None` for a whole dataset.
    pub part: Option<Part>,
    /// For a merged dataset: the digests of its parts' manifests, in part order.
    pub merged_from: Vec<String>,
    pub counts: Counts,
    /// Arrow files in table order (scenes, samples), each table's files in sequence, then rejects.
    pub files: Vec<FileEntry>,
    /// Sorted by path.
    pub raw_inputs: Vec<RawInput>,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: not a valid manifest: {cause}")]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path}: schema version {found}, this build reads version {expected}")]
    SchemaVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: the bytes are not the canonical form of the manifest (edited by hand?); its digest would not be reproducible")]
    NotCanonical { path: PathBuf },
    #[error("cannot merge: {0}")]
    Merge(String),
    #[error("{path}: {reason}")]
    BadPath { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ManifestError + '_ {
    move |cause| ManifestError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

impl Manifest {
    /// Canonical bytes: pretty JSON in field order with sorted argument keys and a final newline.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut canonical = self.clone();
        canonical.tool.arguments = canonical_json(canonical.tool.arguments);
        canonical.raw_inputs.sort();
        let mut bytes =
            serde_json::to_vec_pretty(&canonical).expect("a manifest always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// The dataset digest: hex sha256 of the canonical bytes.
    pub fn digest(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }

    /// Read `<dir>/manifest.json`, checking the schema version and that the bytes are canonical.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|cause| ManifestError::Parse {
                path: path.clone(),
                cause,
            })?;
        if manifest.schema_version != SCHEMA_VERSION {
            return Err(ManifestError::SchemaVersion {
                path,
                found: manifest.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        if manifest.canonical_bytes() != bytes {
            return Err(ManifestError::NotCanonical { path });
        }
        for (i, entry) in manifest.files.iter().enumerate() {
            if !is_plain_file_name(&entry.path) {
                return Err(ManifestError::BadPath {
                    path,
                    reason: format!(
                        "files[{i}] ({}) has path {:?}, which is not a file name inside the dataset folder (absolute paths, `..` and sub-folders are refused)",
                        entry.kind.name(),
                        entry.path
                    ),
                });
            }
        }
        Ok(manifest)
    }

    /// Write `<dir>/manifest.json` atomically; returns the dataset digest.
    pub fn write(&self, dir: &Path) -> io::Result<String> {
        let bytes = self.canonical_bytes();
        crate::shard::write_atomic(&dir.join(MANIFEST_FILE), &bytes)?;
        Ok(sha256_hex(&bytes))
    }

    pub fn files_of(&self, kind: FileKind) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(move |f| f.kind == kind)
    }

    /// Merge the manifests of the parts of one run (`--shard-index i --num-shards n`, i = 0..n)
    /// into the manifest of the whole dataset. The parts may be given in any order; they must come
    /// from the same tool, version, arguments and schema, and cover every index exactly once. Files are
    /// listed part by part (scenes, then samples, of each part), with one `rejects_file` replacing
    /// the parts' rejects; raw inputs are unioned (one path must have one digest).
    pub fn merge(parts: &[Manifest], rejects_file: FileEntry) -> Result<Manifest, ManifestError> {
        let merge_err = |msg: String| ManifestError::Merge(msg);
        let first = parts
            .first()
            .ok_or_else(|| merge_err("no parts given".into()))?;
        let mut by_index: BTreeMap<u32, &Manifest> = BTreeMap::new();
        let count = first
            .part
            .ok_or_else(|| {
                merge_err("the first part's manifest has no `part` (it is a whole dataset)".into())
            })?
            .count;
        for m in parts {
            let part = m.part.ok_or_else(|| {
                merge_err("a manifest without `part` is a whole dataset, not a part".into())
            })?;
            if part.count != count {
                return Err(merge_err(format!(
                    "part {} says there are {} parts, another says {}",
                    part.index, part.count, count
                )));
            }
            if m.schema_version != first.schema_version {
                return Err(merge_err(format!(
                    "part {} has schema version {}, part {} has {}",
                    part.index,
                    m.schema_version,
                    first.part.map_or(0, |p| p.index),
                    first.schema_version
                )));
            }
            if m.tool != first.tool {
                return Err(merge_err(format!(
                    "part {} was written by {} {} with arguments {}, part {} by {} {} with arguments {}",
                    part.index, m.tool.name, m.tool.version, m.tool.arguments, first.part.map_or(0, |p| p.index), first.tool.name, first.tool.version, first.tool.arguments
                )));
            }
            if by_index.insert(part.index, m).is_some() {
                return Err(merge_err(format!("part {} is given twice", part.index)));
            }
        }
        let missing: Vec<u32> = (0..count).filter(|i| !by_index.contains_key(i)).collect();
        if !missing.is_empty() {
            return Err(merge_err(format!(
                "parts {missing:?} of {count} are missing"
            )));
        }
        if let Some(extra) = by_index.keys().find(|&&i| i >= count) {
            return Err(merge_err(format!(
                "part index {extra} is out of range for {count} parts"
            )));
        }
        let mut counts = Counts::default();
        let mut files = Vec::new();
        let mut raw: BTreeMap<String, RawInput> = BTreeMap::new();
        for m in by_index.values() {
            counts.scenes += m.counts.scenes;
            counts.samples += m.counts.samples;
            counts.views += m.counts.views;
            counts.rejects += m.counts.rejects;
            files.extend(
                m.files
                    .iter()
                    .filter(|f| f.kind != FileKind::Rejects)
                    .cloned(),
            );
            for input in &m.raw_inputs {
                match raw.get(&input.path) {
                    Some(seen) if seen != input => {
                        return Err(merge_err(format!(
                            "raw input {} differs between parts (sha256 {} vs {})",
                            input.path, seen.sha256, input.sha256
                        )))
                    }
                    _ => {
                        raw.insert(input.path.clone(), input.clone());
                    }
                }
            }
        }
        if rejects_file.rows != counts.rejects {
            return Err(merge_err(format!(
                "the merged rejects file has {} lines, the parts count {}",
                rejects_file.rows, counts.rejects
            )));
        }
        files.push(rejects_file);
        Ok(Manifest {
            schema_version: first.schema_version,
            tool: first.tool.clone(),
            part: None,
            merged_from: by_index.values().map(|m| m.digest()).collect(),
            counts,
            files,
            raw_inputs: raw.into_values().collect(),
        })
    }
}

/// Whether a manifest `path` names a file directly inside the dataset folder: one plain
/// component, no separator (`/` or `\`), not `.` or `..`, no NUL, not empty.
pub fn is_plain_file_name(path: &str) -> bool {
    !path.is_empty()
        && path != "."
        && path != ".."
        && !path.contains(['/', '\\', '\0'])
        && Path::new(path).components().count() == 1
        && matches!(
            Path::new(path).components().next(),
            Some(Component::Normal(_))
        )
}

/// Recursively sort object keys so that equal JSON values have equal bytes.
pub fn canonical_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> = map
                .into_iter()
                .map(|(k, v)| (k, canonical_json(v)))
                .collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_json).collect()),
        other => other,
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Files at least this large are hashed through read-only memory maps of [`HASH_MAP_WINDOW`]
/// bytes at a time instead of `read` into a buffer: the sha256 then reads the page cache
/// directly, without the kernel's copy: 5–13 % less CPU for the hash of synthetic `.sens` files
/// of 300 and 3 000 frames (`examples/hash_paths.rs`; BENCHMARKS.md, "Hashing through memory
/// maps, ..."). Below it the mapping's setup costs more than the copy.
pub const HASH_THROUGH_MAP_BYTES: u64 = 4 << 20;

/// The window mapped at a time: as fast as one map of the whole file, and what is mapped (and so
/// counted in the resident set) stays this size whatever the file's.
pub const HASH_MAP_WINDOW: u64 = 16 << 20;

/// sha256 of a file; returns (hex digest, byte count). Large files are hashed through memory maps
/// ([`HASH_THROUGH_MAP_BYTES`]), read in 1 MiB blocks when they are small or cannot be mapped
/// (pipes, some special files). The digest is the same either way.
///
/// A mapped file must not shrink while it is hashed: one that shrinks between windows is an
/// error (`InvalidData`, "changed while it was hashed"), but one truncated by another process
/// within a window ends this process with SIGBUS, as in ripgrep or b3sum. Raw datasets and model
/// files are not written while they are read.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len >= HASH_THROUGH_MAP_BYTES {
        if let Some(hashed) = sha256_mapped(&file, len)? {
            return Ok(hashed);
        }
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// [`sha256_file`] through memory maps; `None` when the file cannot be mapped.
fn sha256_mapped(file: &File, len: u64) -> io::Result<Option<(String, u64)>> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < len {
        let window = HASH_MAP_WINDOW.min(len - offset);
        if file.metadata()?.len() < offset + window {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("changed while it was hashed: shorter than the {len} bytes it had"),
            ));
        }
        // SAFETY: a read-only map of bytes the file has (checked just above), dropped before the
        // next; a concurrent truncation is the caveat in `sha256_file`'s doc.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(window as usize)
                .map(file)
        };
        let Ok(map) = map else {
            if offset == 0 {
                return Ok(None);
            }
            return Err(io::Error::other(format!(
                "cannot map bytes {offset}.. to hash them"
            )));
        };
        let _ = map.advise(memmap2::Advice::Sequential);
        hasher.update(&map[..]);
        offset += window;
    }
    Ok(Some((hex::encode(hasher.finalize()), len)))
}

/// `path` relative to `root` with `/` separators; an error if it is not inside `root`.
pub fn relative_path(root: &Path, path: &Path) -> Result<String, ManifestError> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| ManifestError::BadPath {
            path: path.to_path_buf(),
            reason: format!("is not inside the input root {}", root.display()),
        })?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => {
                return Err(ManifestError::BadPath {
                    path: path.to_path_buf(),
                    reason: "has `..` or a root after the input root".into(),
                })
            }
        }
    }
    Ok(parts.join("/"))
}

impl RawInput {
    /// A raw file under a named root (e.g. root name `scannet`, root `/data/scannet`): sha256 of its
    /// bytes, recorded as `scannet:scans/scene0000_00/scene0000_00.sens`.
    pub fn file(root_name: &str, root: &Path, path: &Path) -> Result<RawInput, ManifestError> {
        let rel = relative_path(root, path)?;
        let (sha256, bytes) = sha256_file(path).map_err(io_err(path))?;
        Ok(RawInput {
            path: format!("{root_name}:{rel}"),
            kind: RawInputKind::File,
            sha256,
            bytes,
        })
    }

    /// A raw folder, identified by its listing rather than its contents (for folders too large to
    /// hash, e.g. exported frames): sha256 of the lines `<relative path>\t<bytes>\n` of every file
    /// below it, sorted by path; `bytes` is the total size of those files.
    pub fn listing(root_name: &str, root: &Path, dir: &Path) -> Result<RawInput, ManifestError> {
        let rel = relative_path(root, dir)?;
        let mut entries = Vec::new();
        collect_files(dir, dir, &mut entries)?;
        entries.sort();
        let mut text = String::new();
        let mut total = 0u64;
        for (path, bytes) in &entries {
            text.push_str(&format!("{path}\t{bytes}\n"));
            total += bytes;
        }
        Ok(RawInput {
            path: format!("{root_name}:{rel}"),
            kind: RawInputKind::Listing,
            sha256: sha256_hex(text.as_bytes()),
            bytes: total,
        })
    }
}

fn collect_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, u64)>,
) -> Result<(), ManifestError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push((relative_path(root, &path)?, meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hash_the_same_mapped_or_read() {
        let dir = tempfile::tempdir().unwrap();
        let at = HASH_THROUGH_MAP_BYTES as usize;
        // Sizes on both sides of the switch to a memory map, with bytes that are not a pattern.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let window = HASH_MAP_WINDOW as usize;
        let bytes: Vec<u8> = (0..window + at + 12_345)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for len in [0, 1, at - 1, at, at + 12_345, window, window + at + 12_345] {
            let path = dir.path().join(format!("{len}.bin"));
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert_eq!(
                sha256_file(&path).unwrap(),
                (sha256_hex(&bytes[..len]), len as u64),
                "{len} bytes"
            );
        }
        let missing = sha256_file(&dir.path().join("missing.bin")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        // A file shorter than the length hashing started with (as after a truncation between
        // two windows) is an error, not a digest of what is left.
        let path = dir.path().join(format!("{at}.bin"));
        let file = File::open(&path).unwrap();
        let shrunk = sha256_mapped(&file, window as u64 + 1).unwrap_err();
        assert_eq!(shrunk.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            shrunk.to_string(),
            format!(
                "changed while it was hashed: shorter than the {} bytes it had",
                window + 1
            )
        );
    }

    /// Files whose size on disk says nothing of their content are read to their end.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_with_no_size_is_read_to_its_end() {
        let path = Path::new("/proc/version");
        let content = std::fs::read(path).unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
        assert!(!content.is_empty());
        assert_eq!(
            sha256_file(path).unwrap(),
            (sha256_hex(&content), content.len() as u64)
        );
    }
}
