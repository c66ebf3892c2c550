//! Rejected raw records: `rejects.jsonl`.
//!
//! A bad raw record never stops a run and is never dropped silently: it becomes one JSON line
//! `{"file": ..., "record": ..., "reason": ...}`. Lines are sorted (file, record, reason) so the
//! file is identical whatever order parallel workers found the rejects in; the manifest lists the
//! file with its digest and counts its lines. `--strict` turns any reject into a failing exit
//! ([`strict_exit`]).

use std::io;
use std::path::Path;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::manifest::{sha256_hex, FileEntry, FileKind};

/// File name of the rejects log inside a dataset folder.
pub const REJECTS_FILE: &str = "rejects.jsonl";

/// Exit code of a `--strict` run that had rejects (distinct from 2 = error).
pub const STRICT_REJECTS_EXIT: u8 = 3;

/// One rejected raw record. `file` is relative to a named input root (as in the manifest's raw
/// inputs, e.g. `scannet:scans/scene0000_00/pose/12.txt`); `record` names the record inside it
/// (frame index, question id, ...); `reason` says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    pub file: String,
    pub record: String,
    pub reason: String,
}

impl Reject {
    pub fn new(
        file: impl Into<String>,
        record: impl Into<String>,
        reason: impl ToString,
    ) -> Reject {
        Reject {
            file: file.into(),
            record: record.into(),
            reason: reason.to_string(),
        }
    }
}

/// The rejects of a run, collected in any order and written sorted.
#[derive(Clone, Debug, Default)]
pub struct RejectLog {
    rejects: Vec<Reject>,
}

impl RejectLog {
    pub fn new() -> RejectLog {
        RejectLog::default()
    }

    pub fn push(&mut self, reject: Reject) {
        self.rejects.push(reject);
    }

    pub fn extend(&mut self, rejects: impl IntoIterator<Item = Reject>) {
        self.rejects.extend(rejects);
    }

    pub fn len(&self) -> usize {
        self.rejects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rejects.is_empty()
    }

    /// The rejects in file order.
    pub fn sorted(&self) -> Vec<Reject> {
        let mut sorted = self.rejects.clone();
        sorted.sort();
        sorted
    }

    /// The bytes of `rejects.jsonl`: one compact JSON object per line, sorted.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for reject in self.sorted() {
            serde_json::to_writer(&mut out, &reject).expect("a reject always serialises");
            out.push(b'\n');
        }
        out
    }

    /// Parse `rejects.jsonl` bytes (to merge parts); the error names the line.
    pub fn from_jsonl(bytes: &[u8]) -> Result<RejectLog, String> {
        let mut log = RejectLog::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let reject: Reject =
                serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            log.push(reject);
        }
        Ok(log)
    }

    /// Write `<dir>/rejects.jsonl` atomically (also when empty) and return its manifest entry.
    pub fn write(&self, dir: &Path) -> io::Result<FileEntry> {
        let bytes = self.to_jsonl();
        crate::shard::write_atomic(&dir.join(REJECTS_FILE), &bytes)?;
        Ok(FileEntry {
            path: REJECTS_FILE.to_string(),
            kind: FileKind::Rejects,
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
            rows: self.len() as u64,
        })
    }
}

/// The message of a `--strict` run that had rejects, `None` when the run may succeed.
pub fn strict_violation(rejects: u64, strict: bool, rejects_path: &Path) -> Option<String> {
    (strict && rejects > 0).then(|| {
        format!(
            "{rejects} record(s) rejected (--strict); see {}",
            rejects_path.display()
        )
    })
}

/// The exit of a prep binary after a finished run: success, unless `strict` and there were rejects,
/// in which case it says so on stderr and exits with [`STRICT_REJECTS_EXIT`].
pub fn strict_exit(rejects: u64, strict: bool, rejects_path: &Path) -> ExitCode {
    match strict_violation(rejects, strict, rejects_path) {
        Some(message) => {
            eprintln!("error: {message}");
            ExitCode::from(STRICT_REJECTS_EXIT)
        }
        None => ExitCode::SUCCESS,
    }
}
