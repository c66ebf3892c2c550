//! Pins: the digests an experiment names, checked before the first step, and filled in by
//! `tools pin`.
//!
//! - A dataset pin is its manifest digest; verifying it also re-hashes every file the manifest
//!   lists (what `tools shard verify` checks).
//! - A model pin is the sha256 of one file. Re-hashing gigabytes of weights at every start would
//!   dominate, so digests go through a [`HashCache`] keyed by (path, size, mtime, inode), as DVC
//!   keeps one; a run directory records which digests came from it.
//!
//! [`pin_text`] rewrites the digests in an experiment file's text, leaving everything else
//! (comments, order, layout) as it was.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::hub::{Fetcher, ModelSource};
use crate::train::experiment::{Experiment, FilesSpec};
use roomplan_prep::shard::verify_dataset;

/// One verified input of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// What the digest pins, e.g. `dataset scanqa` or `model.llm config.json`.
    pub what: String,
    /// The experiment field holding the digest.
    pub field: String,
    pub path: PathBuf,
    pub sha256: String,
    /// True when the digest came from the hash cache rather than from reading the file.
    pub from_cache: bool,
}

/// Why a pin does not hold.
#[derive(Debug, Clone, PartialEq)]
pub enum PinProblem {
    /// The field is null: `tools pin` fills it in.
    Unpinned { field: String, path: PathBuf },
    Mismatch {
        field: String,
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The file or folder cannot be found or read, or a dataset fails verification.
    Unusable { field: String, detail: String },
}

impl std::fmt::Display for PinProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinProblem::Unpinned { field, path } => {
                write!(f, "{field} is not pinned ({})", path.display())
            }
            PinProblem::Mismatch {
                field,
                path,
                expected,
                found,
            } => write!(
                f,
                "{}: sha256 mismatch for {field}: the experiment pins {expected}, the file has {found}",
                path.display()
            ),
            PinProblem::Unusable { field, detail } => write!(f, "{field}: {detail}"),
        }
    }
}

/// A model file or dataset that an experiment names, with the field that pins it.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub what: String,
    /// YAML key path of the digest, e.g. `model.llm.files.config.json` is written
    /// `["model", "llm", "files", "config.json"]`.
    pub key_path: Vec<String>,
    pub path: PathBuf,
    pub expected: Option<String>,
    pub kind: PinnedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedKind {
    File,
    Dataset,
    /// A feature folder (`tools cache-features`): its manifest's digest, after checking the
    /// table's sha256.
    Features,
}

impl Pinned {
    pub fn field(&self) -> String {
        self.key_path.join(".")
    }
}

/// Resolves a [`FilesSpec`] file name to a path (a folder's file, or the hub cache's copy).
pub fn resolve_file(spec: &FilesSpec, file: &str) -> Result<PathBuf> {
    let source = ModelSource::parse(&spec.source)?;
    let source = match (source, &spec.revision) {
        (ModelSource::Hub { repo_id, .. }, Some(rev)) => ModelSource::Hub {
            repo_id,
            revision: rev.clone(),
        },
        (s, _) => s,
    };
    Fetcher::new(source)?.require(file)
}

/// Every digest the experiment names, in a fixed order: datasets (each followed by its cached
/// features, if any), then the LLM's files, then VGGT's.
pub fn pinned_inputs(exp: &Experiment) -> Vec<Result<Pinned>> {
    let mut out = Vec::new();
    for (i, ds) in exp.data.datasets.iter().enumerate() {
        out.push(Ok(Pinned {
            what: format!("dataset {}", ds.name),
            key_path: vec![
                "data".into(),
                "datasets".into(),
                i.to_string(),
                "manifest_digest".into(),
            ],
            path: ds.path.clone(),
            expected: ds.manifest_digest.clone(),
            kind: PinnedKind::Dataset,
        }));
        if let Some(f) = &ds.features {
            out.push(Ok(Pinned {
                what: format!("features of dataset {}", ds.name),
                key_path: vec![
                    "data".into(),
                    "datasets".into(),
                    i.to_string(),
                    "features".into(),
                    "digest".into(),
                ],
                path: f.path.clone(),
                expected: f.digest.clone(),
                kind: PinnedKind::Features,
            }));
        }
    }
    for (model, spec) in [("llm", &exp.model.llm), ("vggt", &exp.model.vggt.weights)] {
        for (file, digest) in &spec.files {
            let mut key_path = vec!["model".to_string(), model.to_string()];
            if model == "vggt" {
                key_path.push("weights".into());
            }
            key_path.extend(["files".to_string(), file.clone()]);
            out.push(resolve_file(spec, file).map(|path| Pinned {
                what: format!("model.{model} {file}"),
                key_path,
                path,
                expected: digest.clone(),
                kind: PinnedKind::File,
            }));
        }
    }
    out
}

/// Checks every pin of `exp`: all problems are collected, then reported together.
pub fn verify(exp: &Experiment, cache: &HashCache) -> Result<Vec<Pin>, Vec<PinProblem>> {
    let mut pins = Vec::new();
    let mut problems = Vec::new();
    for item in pinned_inputs(exp) {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                problems.push(PinProblem::Unusable {
                    field: "model".into(),
                    detail: format!("{e:#}"),
                });
                continue;
            }
        };
        let field = item.field();
        let found = match digest_of(&item, cache) {
            Ok(found) => found,
            Err(e) => {
                problems.push(PinProblem::Unusable {
                    field,
                    detail: format!("{e:#}"),
                });
                continue;
            }
        };
        match &item.expected {
            None => problems.push(PinProblem::Unpinned {
                field,
                path: item.path.clone(),
            }),
            Some(expected) if *expected != found.0 => problems.push(PinProblem::Mismatch {
                field,
                path: item.path.clone(),
                expected: expected.clone(),
                found: found.0,
            }),
            Some(_) => pins.push(Pin {
                what: item.what.clone(),
                field,
                path: item.path.clone(),
                sha256: found.0,
                from_cache: found.1,
            }),
        }
    }
    problems.extend(feature_pin_problems(exp));
    if problems.is_empty() {
        Ok(pins)
    } else {
        Err(problems)
    }
}

/// What the experiment's cached features were computed under against what the experiment says:
/// the dataset's manifest digest, the VGGT checkpoint's sha256, the output layers, the dtype and
/// the views per scene. Feature folders that cannot be read are reported by their digest pin.
pub fn feature_pin_problems(exp: &Experiment) -> Vec<PinProblem> {
    let mut problems = Vec::new();
    let vggt = &exp.model.vggt;
    let checkpoint_pin = vggt.weights.files.get(&vggt.checkpoint).cloned().flatten();
    for (i, ds) in exp.data.datasets.iter().enumerate() {
        let Some(spec) = &ds.features else { continue };
        let Ok(manifest) = roomplan_prep::shard::features::FeatureManifest::read(&spec.path) else {
            continue;
        };
        let p = &manifest.pins;
        let field = |what: &str| format!("data.datasets.{i}.features ({what})");
        let mut differ = |what: &str, experiment: String, features: String| {
            if experiment != features {
                problems.push(PinProblem::Unusable {
                    field: field(what),
                    detail: format!(
                        "{}: computed with {what} {features}, the experiment has {experiment} \
                         (rerun tools cache-features)",
                        spec.path.display()
                    ),
                });
            }
        };
        differ(
            "dataset manifest digest",
            ds.manifest_digest.clone().unwrap_or_else(|| "null".into()),
            p.scenes_manifest_digest.clone(),
        );
        differ(
            &format!("VGGT weights sha256 ({})", vggt.checkpoint),
            checkpoint_pin.clone().unwrap_or_else(|| "null".into()),
            p.vggt_weights_sha256.clone(),
        );
        differ(
            "layers",
            format!("{:?}", vggt.layers),
            format!("{:?}", p.layers),
        );
        differ(
            "dtype",
            exp.model.frozen_dtype.name().into(),
            p.dtype.clone(),
        );
        differ(
            "views per scene",
            exp.data.views_per_sample.to_string(),
            p.views_per_scene.to_string(),
        );
    }
    problems
}

/// The current digest of a pinned input, and whether it came from the cache. A dataset must also
/// pass `tools shard verify`.
fn digest_of(item: &Pinned, cache: &HashCache) -> Result<(String, bool)> {
    match item.kind {
        PinnedKind::File => cache.sha256(&item.path),
        PinnedKind::Dataset => {
            let report = verify_dataset(&item.path)
                .with_context(|| format!("dataset {}", item.path.display()))?;
            if !report.ok() {
                bail!(
                    "{} fails verification (tools shard verify): {}",
                    item.path.display(),
                    report.problems.join("; ")
                );
            }
            Ok((report.digest, false))
        }
        PinnedKind::Features => {
            let store = roomplan_prep::shard::features::FeatureStore::open(&item.path)
                .with_context(|| format!("features {}", item.path.display()))?;
            Ok((store.manifest().digest(), false))
        }
    }
}

// The hash cache lives in the prep crate (one home, shared with the prep binaries).
pub use roomplan_prep::hash_cache::{sha256_file, HashCache};

// ---------------------------------------------------------------------------------------------
// Rewriting digests in an experiment file.

/// Replaces the scalar at each key path (`["data", "datasets", "0", "manifest_digest"]`) of a
/// block-style YAML text with the given value, keeping comments and layout. A path that cannot be
/// found as one `key: value` line is an error naming it.
pub fn pin_text(text: &str, updates: &[(Vec<String>, String)]) -> Result<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (path, value) in updates {
        let index = find_key_line(&lines, path).with_context(|| {
            format!(
                "cannot find `{}: …` as a line of its own in block style; set it by hand to {value}",
                path.join(".")
            )
        })?;
        lines[index] = replace_scalar(&lines[index], value);
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A line's indentation, and its key (after an optional `- `), if it is a `key:` line.
fn key_of(line: &str) -> Option<(usize, bool, String)> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.is_empty() {
        return None;
    }
    let indent = line.len() - trimmed.len();
    let (item, rest, indent) = match trimmed.strip_prefix("- ") {
        Some(rest) => (
            true,
            rest.trim_start(),
            indent + (trimmed.len() - rest.trim_start().len()),
        ),
        None => (false, trimmed, indent),
    };
    let colon = rest
        .find(": ")
        .or_else(|| rest.ends_with(':').then(|| rest.len() - 1))?;
    let key = rest[..colon].trim().trim_matches(|c| c == '"' || c == '\'');
    Some((indent, item, key.to_string()))
}

/// Line index of the key path: keys are matched by indentation; a numeric segment counts the
/// `- ` items of a sequence.
fn find_key_line(lines: &[String], path: &[String]) -> Option<usize> {
    let mut start = 0;
    let mut end = lines.len();
    let mut min_indent = 0;
    for (depth, seg) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        if let Ok(n) = seg.parse::<usize>() {
            // The n-th `- ` item directly inside (start, end).
            let items: Vec<(usize, usize)> = (start..end)
                .filter_map(|i| key_of(&lines[i]).filter(|k| k.1).map(|k| (i, k.0)))
                .collect();
            let item_indent = items.first()?.1;
            let items: Vec<usize> = items
                .into_iter()
                .filter(|(_, ind)| *ind == item_indent)
                .map(|(i, _)| i)
                .collect();
            let first = *items.get(n)?;
            let next = items.get(n + 1).copied().unwrap_or(end);
            if last {
                return None;
            }
            // The item's own first key sits on the `- ` line: search from there.
            start = first;
            end = next;
            min_indent = item_indent;
            continue;
        }
        let found = (start..end).find(|&i| {
            key_of(&lines[i]).is_some_and(|(ind, _, k)| ind >= min_indent && k == *seg)
        })?;
        let indent = key_of(&lines[found])?.0;
        if last {
            return Some(found);
        }
        let block_end = (found + 1..end)
            .find(|&i| {
                key_of(&lines[i])
                    .is_some_and(|(ind, item, _)| ind < indent || (ind == indent && !item))
            })
            .unwrap_or(end);
        start = found + 1;
        end = block_end;
        min_indent = indent + 1;
    }
    None
}

/// `  key: old  # comment` → `  key: new  # comment`.
fn replace_scalar(line: &str, value: &str) -> String {
    let colon = line.find(": ").map(|i| i + 1).unwrap_or(line.len());
    let (head, rest) = line.split_at(colon);
    let comment = rest
        .find(" #")
        .map(|i| &rest[rest[..=i].trim_end().len()..])
        .unwrap_or("");
    format!("{head} {value}{comment}")
}

/// One digest `tools pin` wrote (or found already right).
#[derive(Debug, Clone, PartialEq)]
pub struct PinUpdate {
    pub field: String,
    pub path: PathBuf,
    pub old: Option<String>,
    pub new: String,
}

/// Computes every digest the experiment file names and writes the changed ones into the file
/// (atomically, comments and layout kept). Inputs must exist and datasets must verify.
pub fn pin_experiment(path: &Path, cache: &HashCache) -> Result<Vec<PinUpdate>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let exp = crate::train::experiment::parse(&text, &path.display().to_string())?;
    let mut updates = Vec::new();
    for item in pinned_inputs(&exp) {
        let item = item.with_context(|| format!("{}", path.display()))?;
        let (digest, _) = digest_of(&item, cache).with_context(|| item.field())?;
        updates.push(PinUpdate {
            field: item.field(),
            path: item.path.clone(),
            old: item.expected.clone(),
            new: digest,
        });
    }
    let keyed: Vec<(Vec<String>, String)> = pinned_inputs(&exp)
        .into_iter()
        .filter_map(|i| i.ok())
        .zip(&updates)
        .filter(|(_, u)| u.old.as_deref() != Some(u.new.as_str()))
        .map(|(i, u)| (i.key_path, u.new.clone()))
        .collect();
    if !keyed.is_empty() {
        let new_text = pin_text(&text, &keyed).with_context(|| format!("{}", path.display()))?;
        // The rewritten file must read back with exactly the new digests.
        let check = crate::train::experiment::parse(&new_text, &path.display().to_string())?;
        let got: Vec<Option<String>> = pinned_inputs(&check)
            .into_iter()
            .map(|i| i.ok().and_then(|i| i.expected))
            .collect();
        let want: Vec<Option<String>> = updates.iter().map(|u| Some(u.new.clone())).collect();
        if got != want {
            bail!(
                "{}: rewriting the digests changed something else; edit by hand",
                path.display()
            );
        }
        roomplan_prep::shard::write_atomic(path, new_text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    cache.save()?;
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# header comment
model:
  llm:
    files:
      config.json: null   # pinned by tools pin
      model.safetensors: aaa
  vggt:
    weights:
      files:
        config.json: bbb
data:
  datasets:
    - name: one
      manifest_digest: null
    - name: two
      path: x
      manifest_digest: ccc
";

    fn path(p: &str) -> Vec<String> {
        p.split('/').map(str::to_string).collect()
    }

    #[test]
    fn pin_text_replaces_only_the_named_scalars_and_keeps_comments() {
        let out = pin_text(
            TEXT,
            &[
                (path("model/llm/files/config.json"), "111".into()),
                (path("model/vggt/weights/files/config.json"), "222".into()),
                (path("data/datasets/1/manifest_digest"), "333".into()),
                (path("data/datasets/0/manifest_digest"), "444".into()),
            ],
        )
        .unwrap();
        let expected = TEXT
            .replace(
                "config.json: null   # pinned",
                "config.json: 111   # pinned",
            )
            .replace("config.json: bbb", "config.json: 222")
            .replace("manifest_digest: ccc", "manifest_digest: 333")
            .replace("manifest_digest: null", "manifest_digest: 444");
        assert_eq!(out, expected);
    }

    #[test]
    fn pin_text_names_a_path_it_cannot_find() {
        let err = pin_text(
            TEXT,
            &[(path("data/datasets/2/manifest_digest"), "1".into())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("data.datasets.2.manifest_digest"),
            "{err}"
        );
        let err = pin_text(
            TEXT,
            &[(path("model/llm/files/tokenizer.json"), "1".into())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("model.llm.files.tokenizer.json"),
            "{err}"
        );
    }
}
