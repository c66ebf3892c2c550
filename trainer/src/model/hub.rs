//! Finding a checkpoint's files: a local folder, or a Hugging Face repo id + revision in the standard
//! cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`), downloading only when allowed
//! (`HF_HUB_OFFLINE` unset or 0).
//!
//! Weights are one `model.safetensors` or the shards listed by `model.safetensors.index.json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder holding config.json, the safetensors and (optionally) tokenizer.json.
    Local(PathBuf),
    /// A hub repository, e.g. `Qwen/Qwen3-4B-Instruct-2507` at `main` or a commit hash.
    Hub { repo_id: String, revision: String },
}

impl ModelSource {
    /// An existing local folder, else a hub repo id (`owner/name`, optionally `@revision`).
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let (repo_id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        ensure!(
            repo_id.split('/').count() == 2
                && !repo_id.starts_with('/')
                && !repo_id.ends_with('/')
                && !revision.is_empty(),
            "{spec:?} is neither an existing folder nor a hub repo id like owner/name[@revision]"
        );
        Ok(Self::Hub {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// The resolved local paths of a model's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub config: PathBuf,
    /// One file, or every shard in index order.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json` when the source has one.
    pub tokenizer: Option<PathBuf>,
}

/// `true` when `HF_HUB_OFFLINE` asks for no network (any value but empty/0/false).
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (as huggingface_hub).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join("hub"));
    }
    let home = std::env::var_os("HOME")
        .context("neither HF_HOME nor HOME is set: cannot find the Hugging Face cache")?;
    Ok(PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub"))
}

/// Reads files of one source, from a folder or from the hub cache.
pub struct Fetcher {
    source: ModelSource,
    cache: PathBuf,
    offline: bool,
}

impl Fetcher {
    /// Uses the standard cache location for hub sources and `HF_HUB_OFFLINE`.
    pub fn new(source: ModelSource) -> Result<Self> {
        let cache = match &source {
            ModelSource::Local(dir) => dir.clone(),
            ModelSource::Hub { .. } => cache_dir()?,
        };
        Ok(Self {
            source,
            cache,
            offline: hub_offline(),
        })
    }

    /// Uses `cache` (a `.../hub` folder) instead of the environment's.
    pub fn with_cache(mut self, cache: PathBuf) -> Self {
        self.cache = cache;
        self
    }

    /// Overrides `HF_HUB_OFFLINE`: when offline, files missing from the cache are not downloaded.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Local path of `file`, or `None` if the source does not have it. Downloads into the cache
    /// when the file is not cached and the hub is not offline.
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        match &self.source {
            ModelSource::Local(dir) => {
                let p = dir.join(file);
                Ok(p.is_file().then_some(p))
            }
            ModelSource::Hub { repo_id, revision } => {
                if let Some(p) = cached_file(&self.cache, repo_id, revision, file) {
                    return Ok(Some(p));
                }
                if self.offline {
                    return Ok(None);
                }
                download(&self.cache, repo_id, revision, file)
            }
        }
    }

    /// Like `get`, but a missing file is an error naming where it was looked for.
    pub fn require(&self, file: &str) -> Result<PathBuf> {
        self.get(file)?.with_context(|| match &self.source {
            ModelSource::Local(dir) => format!("{} has no {file}", dir.display()),
            ModelSource::Hub { repo_id, revision } => format!(
                "{file} of {repo_id}@{revision} is not in the cache {}{}",
                self.cache.display(),
                if self.offline {
                    " and HF_HUB_OFFLINE is set"
                } else {
                    ""
                }
            ),
        })
    }

    /// config.json, the weights (single file or every shard of the index) and tokenizer.json.
    pub fn model_files(&self) -> Result<ModelFiles> {
        let config = self.require(CONFIG)?;
        let weights = if let Some(index) = self.get(WEIGHTS_INDEX)? {
            shard_names(&index)?
                .iter()
                .map(|f| self.require(f))
                .collect::<Result<Vec<_>>>()?
        } else if let Some(single) = self.get(SINGLE_WEIGHTS)? {
            vec![single]
        } else {
            bail!(
                "{:?} has neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX}",
                self.source
            );
        };
        Ok(ModelFiles {
            config,
            weights,
            tokenizer: self.get(TOKENIZER)?,
        })
    }
}

/// Resolves `source` (folder or hub cache) and loads the Qwen3 model with its frozen weights in
/// `dtype`, plus its ChatML tokenizer when the source has a `tokenizer.json`.
pub fn load_qwen3(
    source: ModelSource,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<(crate::model::qwen3::Qwen3, Option<crate::model::chat::ChatTokenizer>)> {
    let files = Fetcher::new(source)?.model_files()?;
    let model = crate::model::qwen3::Qwen3::load(&files.config, &files.weights, dtype, device)?;
    let tokenizer = files
        .tokenizer
        .as_deref()
        .map(crate::model::chat::ChatTokenizer::from_file)
        .transpose()?;
    Ok((model, tokenizer))
}

/// Shard file names of a `model.safetensors.index.json`, in first-appearance order, deduplicated.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", index.display()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no weight_map object", index.display()))?;
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().with_context(|| {
            format!(
                "{}: weight_map[{tensor:?}] is not a file name",
                index.display()
            )
        })?;
        ensure!(
            !file.contains('/') && !file.contains('\\') && file != ".." && !file.is_empty(),
            "{}: weight_map[{tensor:?}] = {file:?} is not a plain file name",
            index.display()
        );
        if seen.insert(file.to_string()) {
            names.push(file.to_string());
        }
    }
    ensure!(
        !names.is_empty(),
        "{}: weight_map is empty",
        index.display()
    );
    Ok(names)
}

/// `models--owner--name` as huggingface_hub names a model's cache folder.
fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// A file of the cache layout `<cache>/models--o--n/snapshots/<commit>/<file>`, where the commit
/// is `refs/<revision>` or the revision itself when it is a commit hash.
pub fn cached_file(cache: &Path, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let repo = cache.join(repo_folder(repo_id));
    let commit = match std::fs::read_to_string(repo.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) => {
            revision.to_string()
        }
        Err(_) => return None,
    };
    let p = repo.join("snapshots").join(commit).join(file);
    p.is_file().then_some(p)
}

fn download(cache: &Path, repo_id: &str, revision: &str, file: &str) -> Result<Option<PathBuf>> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(true)
        .build()
        .context("starting the Hugging Face hub client")?;
    let repo = hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    );
    match api.repo(repo).download(file) {
        Ok(p) => Ok(Some(p)),
        Err(hf_hub::api::sync::ApiError::RequestError(e)) if is_not_found(&e) => Ok(None),
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("downloading {file} of {repo_id}@{revision}")))
        }
    }
}

fn is_not_found(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("404")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A cache laid out as huggingface_hub writes it: blobs, a snapshot of symlinks, refs/main.
    fn fake_cache(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--Org--Tiny");
        let snap = repo.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
        for (i, (name, content)) in files.iter().enumerate() {
            let blob = repo.join("blobs").join(format!("blob{i}"));
            std::fs::write(&blob, content).unwrap();
            std::os::unix::fs::symlink(&blob, snap.join(name)).unwrap();
        }
        tmp
    }

    fn hub(revision: &str) -> ModelSource {
        ModelSource::Hub {
            repo_id: "Org/Tiny".into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn parses_folders_and_repo_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        assert_eq!(
            ModelSource::parse(dir).unwrap(),
            ModelSource::Local(tmp.path().into())
        );
        assert_eq!(ModelSource::parse("Org/Tiny").unwrap(), hub("main"));
        assert_eq!(ModelSource::parse("Org/Tiny@v1.0").unwrap(), hub("v1.0"));
        let err = ModelSource::parse("no-such-folder")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither an existing folder nor a hub repo id"),
            "{err}"
        );
    }

    #[test]
    fn offline_cache_resolves_sharded_weights_by_ref_and_by_commit() {
        let index = r#"{"metadata": {"total_size": 8}, "weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
            "c": "model-00001-of-00002.safetensors"}}"#;
        let tmp = fake_cache(&[
            ("config.json", "{}"),
            (WEIGHTS_INDEX, index),
            ("model-00001-of-00002.safetensors", "1"),
            ("model-00002-of-00002.safetensors", "2"),
        ]);
        for rev in ["main", COMMIT] {
            let f = Fetcher::new(hub(rev))
                .unwrap()
                .with_cache(tmp.path().into())
                .with_offline(true);
            let files = f.model_files().unwrap();
            let names: Vec<_> = files
                .weights
                .iter()
                .map(|p| p.file_name().unwrap().to_str().unwrap())
                .collect();
            assert_eq!(
                names,
                [
                    "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors"
                ]
            );
            assert_eq!(std::fs::read_to_string(&files.weights[1]).unwrap(), "2");
            assert!(files
                .config
                .ends_with(format!("snapshots/{COMMIT}/config.json")));
            assert_eq!(files.tokenizer, None);
        }
    }

    #[test]
    fn offline_miss_names_the_repo_and_the_cache() {
        let tmp = fake_cache(&[("config.json", "{}")]);
        let f = Fetcher::new(hub("main"))
            .unwrap()
            .with_cache(tmp.path().into())
            .with_offline(true);
        let err = f.model_files().unwrap_err().to_string();
        assert!(
            err.contains("neither model.safetensors nor model.safetensors.index.json"),
            "{err}"
        );
        let err = f.require("tokenizer.json").unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json of Org/Tiny@main is not in the cache")
                && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        let other = Fetcher::new(hub("v2"))
            .unwrap()
            .with_cache(tmp.path().into())
            .with_offline(true);
        assert_eq!(
            other.get("config.json").unwrap(),
            None,
            "an unknown ref resolves nothing"
        );
    }

    #[test]
    fn local_folder_with_single_file() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["config.json", SINGLE_WEIGHTS, TOKENIZER] {
            std::fs::write(tmp.path().join(f), "x").unwrap();
        }
        let files = Fetcher::new(ModelSource::Local(tmp.path().into()))
            .unwrap()
            .model_files()
            .unwrap();
        assert_eq!(files.weights, vec![tmp.path().join(SINGLE_WEIGHTS)]);
        assert_eq!(files.tokenizer, Some(tmp.path().join(TOKENIZER)));
    }

    #[test]
    fn loads_the_parity_model_from_a_cache_snapshot_with_a_tokenizer() {
        let base = crate::parity::shared_dir()
            .join("parity")
            .join("qwen3")
            .join("base");
        let tokenizer = crate::model::chat::tiny_tokenizer_json(&[]).unwrap();
        let config = std::fs::read_to_string(base.join(CONFIG)).unwrap();
        let weights = std::fs::read(base.join(SINGLE_WEIGHTS)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--Org--Tiny");
        let snap = repo.join("snapshots").join(COMMIT);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
        std::fs::write(snap.join(CONFIG), config).unwrap();
        std::fs::write(snap.join(SINGLE_WEIGHTS), weights).unwrap();
        std::fs::write(snap.join(TOKENIZER), tokenizer).unwrap();
        let files = Fetcher::new(hub("main"))
            .unwrap()
            .with_cache(tmp.path().into())
            .with_offline(true);
        let files = files.model_files().unwrap();
        let model = crate::model::qwen3::Qwen3::load(
            &files.config,
            &files.weights,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(model.config().num_hidden_layers, 2);
        let tok = crate::model::chat::ChatTokenizer::from_file(files.tokenizer.as_ref().unwrap()).unwrap();
        assert_eq!(tok.im_end_id(), 258);
        // The shared folder itself has no tokenizer.json.
        let (m, t) = load_qwen3(
            ModelSource::Local(base),
            candle_core::DType::BF16,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.weight_dtype(), candle_core::DType::BF16);
        assert!(t.is_none());
    }

    #[test]
    fn index_with_a_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(WEIGHTS_INDEX);
        std::fs::write(&p, r#"{"weight_map": {"a": "../evil.safetensors"}}"#).unwrap();
        let err = shard_names(&p).unwrap_err().to_string();
        assert!(err.contains("is not a plain file name"), "{err}");
    }
}
