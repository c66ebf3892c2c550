//! [`ShardError`]: every failure of writing, reading, verifying or merging shards, naming the file.

use std::io;
use std::path::{Path, PathBuf};

use arrow::error::ArrowError;
use thiserror::Error;

use crate::manifest::ManifestError;

#[derive(Debug, Error)]
pub enum ShardError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: {cause}")]
    Arrow { path: PathBuf, cause: ArrowError },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("invalid record: {0}")]
    Record(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Dataset(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShardError + '_ {
    move |cause| ShardError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

pub(super) fn arrow_err(path: &Path) -> impl FnOnce(ArrowError) -> ShardError + '_ {
    move |cause| ShardError::Arrow {
        path: path.to_path_buf(),
        cause,
    }
}

pub(super) fn format_err(path: &Path, detail: impl Into<String>) -> ShardError {
    ShardError::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}
