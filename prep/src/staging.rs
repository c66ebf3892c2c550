//! Output folders that take their final name only when complete (issue 10, class 1).
//!
//! A dataset is written into a staging folder beside its final place, `<parent>/.<name>.prep-<pid>.<n>`
//! (same filesystem, so renames are atomic). When it is complete it takes the final name:
//!
//! - no folder there yet: one rename;
//! - an existing folder (empty, or holding an old dataset when replacing is asked for): the user's own
//!   files in it (everything that is not the old dataset's) are hard-linked into the staging folder,
//!   the two folders are exchanged atomically (`renameat2(RENAME_EXCHANGE)` on Linux; two renames
//!   elsewhere), the user's sub-folders are moved across, and the old folder — now under the staging
//!   name — is removed: the files its manifest lists, files named like dataset files, and the links.
//!
//! So at every instant the final folder holds the complete old dataset or the complete new one, and
//! nothing of the user's is deleted: a kill -9 or a full disk during a run leaves the old dataset as
//! it was. A staging folder left by a killed run is cleaned up by the next run for the same folder
//! ([`clean_leftovers`]): dataset files and links are removed, anything else is moved back into the
//! folder (or kept, with a warning, when the name is taken).
//!
//! The old dataset's files are those its manifest lists plus `manifest.json`, `rejects.jsonl`, the
//! shard names the writer uses (`scenes-00000.arrow`, `samples-part00001-00000.arrow`) and their
//! `.tmp` files. A folder whose manifest cannot be read, or that holds a shard name its manifest does
//! not list, is refused rather than guessed at.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::rejects::REJECTS_FILE;
use crate::shard::ShardError;

/// Whether `name` is a file name the dataset writer uses: `manifest.json`, `rejects.jsonl`,
/// `scenes-NNNNN.arrow`, `samples-partNNNNN-NNNNN.arrow` (and the same for `samples`), or one of
/// these plus `.tmp` (a file being written). Other files (`my_features.arrow`, `notes.tmp`) are the
/// user's.
pub fn is_dataset_file_name(name: &str) -> bool {
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    is_final_dataset_file_name(name)
}

fn is_final_dataset_file_name(name: &str) -> bool {
    if name == MANIFEST_FILE || name == REJECTS_FILE {
        return true;
    }
    let Some(stem) = name.strip_suffix(".arrow") else {
        return false;
    };
    let Some(rest) = stem
        .strip_prefix("scenes-")
        .or_else(|| stem.strip_prefix("samples-"))
    else {
        return false;
    };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    match rest.strip_prefix("part") {
        Some(part) => part
            .split_once('-')
            .is_some_and(|(index, seq)| digits(index) && digits(seq)),
        None => digits(rest),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShardError + '_ {
    move |cause| ShardError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The final folder's parent (created if missing) and file name, with a symlinked folder resolved
/// to its target so that the target is replaced, not the link.
fn split_final(dir: &Path) -> Result<(PathBuf, String), ShardError> {
    let dir = if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::canonicalize(dir).map_err(io_err(dir))?
    } else {
        std::path::absolute(dir).map_err(io_err(dir))?
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .ok_or_else(|| {
            ShardError::Dataset(format!(
                "output folder {} has no name of its own; give its path, not `.` or `/`",
                dir.display()
            ))
        })?;
    let parent = dir
        .parent()
        .ok_or_else(|| ShardError::Dataset(format!("output folder {} has no parent", dir.display())))?
        .to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let parent = fs::canonicalize(&parent).map_err(io_err(&parent))?;
    Ok((parent, name))
}

fn staging_prefix(name: &str) -> String {
    format!(".{name}.prep-")
}

/// What an existing output folder holds of an old dataset: the names to replace.
fn old_dataset_names(dir: &Path, replace: bool) -> Result<BTreeSet<String>, ShardError> {
    let mut names = BTreeSet::new();
    let mut shard_names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let name = entry.map_err(io_err(dir))?.file_name().to_string_lossy().into_owned();
        if is_dataset_file_name(&name) {
            shard_names.push(name);
        }
    }
    shard_names.sort();
    let Some(first) = shard_names.first() else {
        return Ok(names);
    };
    if !replace {
        return Err(ShardError::Dataset(format!(
            "output folder {} already holds dataset files ({first}); choose another folder or replace it",
            dir.display()
        )));
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        let manifest = Manifest::read(dir).map_err(|e| {
            ShardError::Dataset(format!(
                "output folder {} holds a dataset whose manifest cannot be read ({e}); replacing removes only the files a manifest lists, so move the folder away or clear it yourself",
                dir.display()
            ))
        })?;
        names.extend(manifest.files.iter().map(|f| f.path.clone()));
        names.insert(MANIFEST_FILE.to_string());
        for name in &shard_names {
            let is_tmp = name.ends_with(".tmp");
            if !is_tmp && !names.contains(name) {
                return Err(ShardError::Dataset(format!(
                    "output folder {} holds {name}, which its manifest does not list; it is not replaced (move it away first)",
                    dir.display()
                )));
            }
        }
    }
    // Without a manifest the folder holds what an interrupted run of an older version left:
    // files named like dataset files, nothing else of ours.
    names.extend(shard_names);
    Ok(names)
}

/// A dataset folder being written: files go to [`path`](Staged::path); [`commit`](Staged::commit)
/// puts them in place; dropping it uncommitted removes what was written and leaves the final folder
/// as it was.
pub struct Staged {
    final_dir: PathBuf,
    staging: PathBuf,
    replace: bool,
    committed: bool,
}

impl Staged {
    /// Prepare to write the dataset folder `dir`. An existing folder with dataset files is refused
    /// unless `replace`; its old dataset stays in place until [`commit`](Staged::commit).
    pub fn begin(dir: &Path, replace: bool) -> Result<Staged, ShardError> {
        let (parent, name) = split_final(dir)?;
        let final_dir = parent.join(&name);
        clean_leftovers(&final_dir)?;
        match fs::metadata(&final_dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(ShardError::Dataset(format!(
                    "output {} exists and is not a folder",
                    final_dir.display()
                )))
            }
            Ok(_) => {
                old_dataset_names(&final_dir, replace)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&final_dir)(e)),
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = parent.join(format!("{}{}.{n}", staging_prefix(&name), std::process::id()));
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        Ok(Staged {
            final_dir,
            staging,
            replace,
            committed: false,
        })
    }

    /// Where the files are written until commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder the dataset will have once committed.
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }

    /// Put the complete dataset in place (see the module documentation).
    pub fn commit(self) -> Result<(), ShardError> {
        self.commit_until(None)
    }

    /// [`commit`](Self::commit) as if the process died just before `step` (no clean-up runs), so
    /// that tests can check what every crash point leaves. Not for use outside tests.
    #[doc(hidden)]
    pub fn commit_interrupted(self, step: CommitStep) -> Result<(), ShardError> {
        self.commit_until(Some(step))
    }

    fn commit_until(mut self, stop: Option<CommitStep>) -> Result<(), ShardError> {
        // A simulated death: stop here and run no destructor.
        macro_rules! die_before {
            ($step:expr) => {
                if stop == Some($step) {
                    std::mem::forget(self);
                    return Ok(());
                }
            };
        }
        let parent = self.final_dir.parent().expect("split_final gives a parent").to_path_buf();
        match fs::symlink_metadata(&self.final_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                die_before!(CommitStep::Swap);
                fs::rename(&self.staging, &self.final_dir).map_err(io_err(&self.final_dir))?;
                self.committed = true;
                return sync_dir(&parent);
            }
            Err(e) => return Err(io_err(&self.final_dir)(e)),
            Ok(_) => {}
        }
        // Checked again: the folder may have changed while the dataset was written.
        let old = old_dataset_names(&self.final_dir, self.replace)?;
        let mut folders = Vec::new();
        for entry in fs::read_dir(&self.final_dir).map_err(io_err(&self.final_dir))? {
            let entry = entry.map_err(io_err(&self.final_dir))?;
            let name = entry.file_name();
            if old.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            let file_type = entry.file_type().map_err(io_err(&entry.path()))?;
            if file_type.is_dir() {
                folders.push(name);
            } else {
                let link = self.staging.join(&name);
                if fs::hard_link(entry.path(), &link).is_err() {
                    fs::copy(entry.path(), &link).map_err(io_err(&entry.path()))?;
                }
            }
        }
        sync_dir(&self.staging)?;
        die_before!(CommitStep::Swap);
        exchange(&self.staging, &self.final_dir)?;
        self.committed = true;
        sync_dir(&parent)?;
        die_before!(CommitStep::MoveFolders);
        // The staging name now holds the old folder.
        for name in folders {
            let from = self.staging.join(&name);
            let to = self.final_dir.join(&name);
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
        sync_dir(&self.final_dir)?;
        die_before!(CommitStep::RemoveOld);
        remove_old(&self.staging, &self.final_dir, &old)?;
        sync_dir(&parent)
    }
}

/// The steps of [`Staged::commit`] after the new dataset is complete in the staging folder.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Putting the staging folder in place (user files are already linked into it).
    Swap,
    /// Moving the user's sub-folders from the old folder into the new one.
    MoveFolders,
    /// Removing the old dataset.
    RemoveOld,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_old(&self.staging, &self.final_dir, &BTreeSet::new());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), ShardError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Swap two folders' names: atomically where the system can.
fn exchange(a: &Path, b: &Path) -> Result<(), ShardError> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes()).map_err(|e| io_err(a)(io::Error::other(e)))?;
        let cb = CString::new(b.as_os_str().as_bytes()).map_err(|e| io_err(b)(io::Error::other(e)))?;
        // SAFETY: two NUL-terminated paths; renameat2 reads them and touches no other memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // Filesystems or kernels without RENAME_EXCHANGE: fall back to two renames.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(io_err(b)(err));
        }
    }
    // Two renames: between them the final name is absent, and the old folder waits under
    // `<staging>-old`, which `clean_leftovers` moves back if the run dies there.
    let mut old = a.as_os_str().to_os_string();
    old.push("-old");
    let old = PathBuf::from(old);
    fs::rename(b, &old).map_err(io_err(b))?;
    fs::rename(a, b).map_err(io_err(a))?;
    fs::rename(&old, a).map_err(io_err(&old))
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Empty and remove a staging folder (an incomplete new dataset, or an old one swapped out):
/// dataset files and `also` are removed, links to files of `final_dir` are removed, anything else
/// is moved into `final_dir` when the name is free there, else kept with a warning.
fn remove_old(staging: &Path, final_dir: &Path, also: &BTreeSet<String>) -> Result<(), ShardError> {
    let entries = match fs::read_dir(staging) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(staging)(e)),
    };
    let mut kept = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(staging))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ours = !meta.is_dir() && (is_dataset_file_name(&name_str) || also.contains(name_str.as_ref()));
        let in_final = fs::symlink_metadata(final_dir.join(&name));
        if ours || in_final.as_ref().is_ok_and(|m| !meta.is_dir() && same_file(m, &meta)) {
            fs::remove_file(&path).map_err(io_err(&path))?;
        } else if final_dir.is_dir() && in_final.is_err() {
            fs::rename(&path, final_dir.join(&name)).map_err(io_err(&path))?;
        } else {
            kept.push(name_str.into_owned());
        }
    }
    if kept.is_empty() {
        fs::remove_dir(staging).map_err(io_err(staging))?;
    } else {
        tracing::warn!(
            "{} kept: it holds {} (same names exist in {})",
            staging.display(),
            kept.join(", "),
            final_dir.display()
        );
    }
    Ok(())
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Clean what runs for `final_dir` that were killed left beside it: a staging folder whose process
/// is gone. An old dataset moved aside by the two-rename fallback is put back first when the final
/// folder is missing.
pub fn clean_leftovers(final_dir: &Path) -> Result<(), ShardError> {
    let (Some(parent), Some(name)) = (final_dir.parent(), final_dir.file_name()) else {
        return Ok(());
    };
    let prefix = staging_prefix(&name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    let mut leftovers: Vec<(PathBuf, bool)> = Vec::new();
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = entry_name.strip_prefix(&prefix) else {
            continue;
        };
        let (pid, moved_aside) = match rest.strip_suffix("-old") {
            Some(pid) => (pid, true),
            None => (rest, false),
        };
        let Some(Ok(pid)) = pid.split_once('.').map(|(pid, _)| pid.parse::<u32>()) else {
            continue;
        };
        // This process's own staging folders belong to writers still open (or dropped, which
        // cleans them); another process's are left over only when it is gone.
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        leftovers.push((entry.path(), moved_aside));
    }
    leftovers.sort_by_key(|(_, moved_aside)| !moved_aside);
    for (path, moved_aside) in leftovers {
        if moved_aside && !final_dir.exists() {
            fs::rename(&path, final_dir).map_err(io_err(&path))?;
            continue;
        }
        remove_old(&path, final_dir, &BTreeSet::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_file_names() {
        for name in [
            "manifest.json",
            "rejects.jsonl",
            "scenes-00000.arrow",
            "samples-00012.arrow",
            "scenes-part00001-00000.arrow",
            "samples-00000.arrow.tmp",
            "manifest.json.tmp",
        ] {
            assert!(is_dataset_file_name(name), "{name}");
        }
        for name in [
            "my_features.arrow",
            "notes.tmp",
            "scenes-0.arrow",
            "scenes-000000.arrow",
            "scenes-part1-00000.arrow",
            "views-00000.arrow",
            "manifest.json.bak",
        ] {
            assert!(!is_dataset_file_name(name), "{name}");
        }
    }
}
