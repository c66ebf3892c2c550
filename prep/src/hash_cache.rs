//! A cache of files' sha256, keyed by (canonical path, size, mtime in ns, inode), as DVC keeps one.
//!
//! Preparing the same raw data again with other arguments (other view counts or sizes) should not
//! re-hash terabytes of `.sens`, and a training run should not re-hash gigabytes of weights at
//! every start. A file that changed in any of the four keys is hashed again. The cache only ever
//! replaces a computation whose result it stored, so what is written with it (a manifest, a run's
//! pins) is the same bytes as without it.
//!
//! One cache is shared by the prep binaries (`--no-hash-cache` turns it off), `train` and
//! `tools pin`; it is safe to use from several threads (lookups and insertions lock a mutex, the
//! hashing itself runs outside it). Saved as JSON in [`HashCache::default_path`]; concurrent
//! processes never see a torn file (temporary file, then rename) and the last writer's entries win.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

/// What identifies one version of a file: taken before it is read, compared again afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    /// The canonical path, as a string (the cache's key).
    key: String,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `file` as it is now.
    pub fn of(file: &Path) -> Result<FileStamp> {
        let canonical =
            fs::canonicalize(file).with_context(|| format!("{}: cannot read", file.display()))?;
        let meta =
            fs::metadata(&canonical).with_context(|| format!("{}: cannot read", file.display()))?;
        let (size, mtime_ns, inode) = file_stamp(&meta);
        Ok(FileStamp {
            key: canonical.to_string_lossy().into_owned(),
            size,
            mtime_ns,
            inode,
        })
    }

    /// The file's size in bytes when stamped.
    pub fn size(&self) -> u64 {
        self.size
    }
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, CacheEntry>,
    dirty: bool,
}

/// sha256 of files, remembered by (canonical path, size, mtime, inode).
#[derive(Debug, Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl HashCache {
    /// `$ROOMPLAN_CACHE_DIR/sha256.json`, else `$XDG_CACHE_HOME/roomplan/…`, else `~/.cache/roomplan/…`.
    pub fn default_path() -> Option<PathBuf> {
        let dir = std::env::var_os("ROOMPLAN_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("roomplan"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("roomplan"))
            })?;
        Some(dir.join("sha256.json"))
    }

    /// A cache that remembers nothing: every digest is computed.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens (or starts) the cache file at `path`; an unreadable cache is started afresh.
    pub fn open(path: PathBuf) -> Self {
        let entries = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path: Some(path),
            state: Mutex::new(State {
                entries,
                dirty: false,
            }),
        }
    }

    /// The cache at [`HashCache::default_path`], or a disabled one when `disabled` or when no
    /// cache folder can be named.
    pub fn open_default(disabled: bool) -> Self {
        match (disabled, Self::default_path()) {
            (false, Some(p)) => Self::open(p),
            _ => Self::disabled(),
        }
    }

    /// Where the cache is saved (none when disabled).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the map consistent (single inserts).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored digest of the file version `stamp` names, if any (never with a disabled cache).
    pub fn lookup(&self, stamp: &FileStamp) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let state = self.state();
        let e = state.entries.get(&stamp.key)?;
        ((e.size, e.mtime_ns, e.inode) == (stamp.size, stamp.mtime_ns, stamp.inode))
            .then(|| e.sha256.clone())
    }

    /// Remembers `sha256` for the version `stamp` names, unless the file changed since it was
    /// stamped (then the digest may be of neither version, and nothing is stored).
    pub fn record(&self, stamp: &FileStamp, sha256: &str) {
        if !self.enabled() {
            return;
        }
        let Ok(now) = FileStamp::of(Path::new(&stamp.key)) else {
            return;
        };
        if &now != stamp {
            return;
        }
        let mut state = self.state();
        state.entries.insert(
            stamp.key.clone(),
            CacheEntry {
                size: stamp.size,
                mtime_ns: stamp.mtime_ns,
                inode: stamp.inode,
                sha256: sha256.to_string(),
            },
        );
        state.dirty = true;
    }

    /// The file's sha256 and whether it came from the cache.
    pub fn sha256(&self, file: &Path) -> Result<(String, bool)> {
        let stamp = FileStamp::of(file)?;
        if let Some(sha) = self.lookup(&stamp) {
            return Ok((sha, true));
        }
        let sha = sha256_file(Path::new(&stamp.key))?;
        self.record(&stamp, &sha);
        Ok((sha, false))
    }

    /// Writes the cache back when it changed: a temporary file of this process, then a rename,
    /// so concurrent runs never see a torn cache (the last writer's entries win).
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut state = self.state();
        if !state.dirty {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&state.entries)?;
        fs::write(&tmp, &bytes)
            .and_then(|_| fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
        state.dirty = false;
        Ok(())
    }
}

#[cfg(unix)]
fn file_stamp(meta: &fs::Metadata) -> (u64, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    (meta.size(), mtime, meta.ino())
}

#[cfg(not(unix))]
fn file_stamp(meta: &fs::Metadata) -> (u64, i128, u64) {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    (meta.len(), mtime, 0)
}

/// sha256 of a file ([`crate::manifest::sha256_file`]), with the file named in errors.
pub fn sha256_file(path: &Path) -> Result<String> {
    let (sha256, _) = crate::manifest::sha256_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_cache_reuses_a_digest_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.bin");
        std::fs::write(&file, b"weights").unwrap();
        let expected = crate::manifest::sha256_hex(b"weights");
        let cache = HashCache::open(dir.path().join("cache/sha256.json"));
        assert_eq!(cache.sha256(&file).unwrap(), (expected.clone(), false));
        cache.save().unwrap();
        let again = HashCache::open(dir.path().join("cache/sha256.json"));
        assert_eq!(again.sha256(&file).unwrap(), (expected, true));
        // Another size (and mtime): hashed again.
        std::fs::write(&file, b"weights, changed").unwrap();
        let changed = crate::manifest::sha256_hex(b"weights, changed");
        assert_eq!(again.sha256(&file).unwrap(), (changed, false));
        // A disabled cache never claims a hit.
        let off = HashCache::disabled();
        assert!(!off.sha256(&file).unwrap().1);
        assert!(!off.sha256(&file).unwrap().1);
    }

    #[test]
    fn a_digest_is_not_recorded_for_a_file_that_changed_while_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        std::fs::write(&file, b"first").unwrap();
        let cache = HashCache::open(dir.path().join("sha256.json"));
        let stamp = FileStamp::of(&file).unwrap();
        std::fs::write(&file, b"second, longer").unwrap();
        cache.record(&stamp, "0000");
        assert_eq!(cache.lookup(&stamp), None);
        assert_eq!(cache.lookup(&FileStamp::of(&file).unwrap()), None);
    }
}
