//! Loading the released VGGT checkpoint as shipped: PyTorch `model.pt` (zip state dict) or
//! `model.safetensors`, keys `aggregator.*` used, heads (`camera_head.*`, …) ignored.
//!
//! candle's pickle reader silently yields nothing for a state dict nested in another dict and
//! fails obscurely on the legacy (pre-1.6) format; [`VggtCheckpoint::open`] turns both, and every
//! missing, unexpected or mis-shaped aggregator key, into an error naming the file and the keys.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::model::vggt::{expected_parameters, Aggregator, Config};

/// Key prefix of the aggregator's tensors inside the full VGGT state dict.
pub const AGGREGATOR_PREFIX: &str = "aggregator.";

/// How many names an error message lists before summarising.
const NAMES_SHOWN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum VggtLoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: legacy (non-zip, pre-PyTorch-1.6) checkpoint; re-save it with a current \
         `torch.save(state_dict, path)` or convert it to safetensors"
    )]
    LegacyPickle { path: PathBuf },
    #[error("{path}: not a PyTorch zip checkpoint nor a safetensors file (first bytes {magic})")]
    UnknownFormat { path: PathBuf, magic: String },
    #[error(
        "{path}: no tensors at the top level: the state dict is nested in a dict under {nested:?} \
         (top-level keys {keys:?}); open it with that key as `state_key`"
    )]
    NestedStateDict {
        path: PathBuf,
        keys: Vec<String>,
        nested: Vec<String>,
    },
    #[error("{path}: state-dict key {key:?} not found (top-level keys {keys:?})")]
    StateKeyNotFound {
        path: PathBuf,
        key: String,
        keys: Vec<String>,
    },
    #[error("{path}: no tensors found in the checkpoint")]
    Empty { path: PathBuf },
    #[error(
        "{path}: no tensor name starts with {AGGREGATOR_PREFIX:?} ({count} tensors, e.g. {examples:?})"
    )]
    NoAggregator {
        path: PathBuf,
        count: usize,
        examples: Vec<String>,
    },
    #[error("{path}: checkpoint does not match the aggregator config: {}", describe_mismatch(.missing, .unexpected, .wrong_shape))]
    KeyMismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// (name, expected shape, checkpoint shape)
        wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
    },
    #[error("{path}: tensor {name:?}: {source}")]
    Tensor {
        path: PathBuf,
        name: String,
        source: candle_core::Error,
    },
    #[error("{path}: {source}")]
    Candle {
        path: PathBuf,
        source: candle_core::Error,
    },
}

fn shown(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| format!("{AGGREGATOR_PREFIX}{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        s.push_str(&format!(", … ({} more)", names.len() - NAMES_SHOWN));
    }
    s
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    wrong_shape: &[(String, Vec<usize>, Vec<usize>)],
) -> String {
    let mut parts = vec![];
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing key(s): {}",
            missing.len(),
            shown(missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected key(s): {}",
            unexpected.len(),
            shown(unexpected)
        ));
    }
    if !wrong_shape.is_empty() {
        let list = wrong_shape
            .iter()
            .take(NAMES_SHOWN)
            .map(|(n, e, g)| format!("{AGGREGATOR_PREFIX}{n} expected {e:?} got {g:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!("{} wrong shape(s): {list}", wrong_shape.len()));
    }
    parts.join("; ")
}

/// Compares the checkpoint's aggregator tensors (prefix stripped) with the model's parameters.
pub fn check_keys(
    path: &Path,
    expected: &BTreeMap<String, Vec<usize>>,
    found: &BTreeMap<String, Vec<usize>>,
) -> Result<(), VggtLoadError> {
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !found.contains_key(*k))
        .cloned()
        .collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    let wrong_shape: Vec<_> = expected
        .iter()
        .filter_map(|(k, e)| match found.get(k) {
            Some(g) if g != e => Some((k.clone(), e.clone(), g.clone())),
            _ => None,
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && wrong_shape.is_empty() {
        Ok(())
    } else {
        Err(VggtLoadError::KeyMismatch {
            path: path.to_path_buf(),
            missing,
            unexpected,
            wrong_shape,
        })
    }
}

enum Source {
    Pth(PthTensors),
    Safetensors(MmapedSafetensors),
}

/// The on-disk format, recognised from the file's first bytes (not its extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    PyTorchZip,
    Safetensors,
}

/// An opened VGGT checkpoint: every tensor's name and shape, tensors read lazily.
#[derive(Clone)]
pub struct VggtCheckpoint {
    path: PathBuf,
    format: CheckpointFormat,
    source: Arc<Source>,
    shapes: BTreeMap<String, Vec<usize>>,
}

fn sniff(path: &Path) -> Result<CheckpointFormat, VggtLoadError> {
    let io = |source| VggtLoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .map_err(io)?
        .take(16)
        .read_to_end(&mut head)
        .map_err(io)?;
    if head.starts_with(b"PK\x03\x04") {
        Ok(CheckpointFormat::PyTorchZip)
    } else if head.len() > 9 && head[8] == b'{' {
        // safetensors: u64 little-endian header length, then the JSON header.
        Ok(CheckpointFormat::Safetensors)
    } else if head.first() == Some(&0x80) {
        // A bare pickle stream (protocol ≥ 2): the legacy torch.save format.
        Err(VggtLoadError::LegacyPickle {
            path: path.to_path_buf(),
        })
    } else {
        Err(VggtLoadError::UnknownFormat {
            path: path.to_path_buf(),
            magic: head.iter().take(8).map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// Top-level keys of the pickled object in a zip checkpoint, and which of them hold dicts.
fn top_level_keys(path: &Path) -> Result<(Vec<String>, Vec<String>), VggtLoadError> {
    let wrap = |e: &dyn std::fmt::Display| VggtLoadError::Candle {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(e.to_string()),
    };
    let file = std::fs::File::open(path).map_err(|source| VggtLoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| wrap(&e))?;
    let name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| wrap(&"no data.pkl in the zip"))?;
    let entry = zip.by_name(&name).map_err(|e| wrap(&e))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut std::io::BufReader::new(entry))
        .map_err(|e| wrap(&e))?;
    let object = stack.finalize().map_err(|e| wrap(&e))?;
    let mut keys = vec![];
    let mut nested = vec![];
    if let Object::Dict(entries) = object {
        for (key, value) in entries {
            let key = match key {
                Object::Unicode(s) => s,
                other => format!("{other:?}"),
            };
            if matches!(&value, Object::Dict(v) if !v.is_empty()) {
                nested.push(key.clone());
            }
            keys.push(key);
        }
    }
    Ok((keys, nested))
}

impl VggtCheckpoint {
    /// Opens `model.pt` or `model.safetensors` (format recognised from the content).
    /// `state_key` selects a state dict nested in a dict (PyTorch only; `None` for the release).
    pub fn open(path: impl AsRef<Path>, state_key: Option<&str>) -> Result<Self, VggtLoadError> {
        let path = path.as_ref();
        let candle_err = |source| VggtLoadError::Candle {
            path: path.to_path_buf(),
            source,
        };
        let format = sniff(path)?;
        let (source, shapes) = match format {
            CheckpointFormat::PyTorchZip => {
                let pth = PthTensors::new(path, state_key).map_err(|e| {
                    match (state_key, top_level_keys(path)) {
                        (Some(key), Ok((keys, _))) if !keys.iter().any(|k| k == key) => {
                            VggtLoadError::StateKeyNotFound {
                                path: path.to_path_buf(),
                                key: key.to_string(),
                                keys,
                            }
                        }
                        _ => candle_err(e),
                    }
                })?;
                let shapes: BTreeMap<_, _> = pth
                    .tensor_infos()
                    .iter()
                    .map(|(name, info)| (name.clone(), info.layout.dims().to_vec()))
                    .collect();
                if shapes.is_empty() {
                    let (keys, nested) = top_level_keys(path)?;
                    return Err(if nested.is_empty() {
                        VggtLoadError::Empty {
                            path: path.to_path_buf(),
                        }
                    } else {
                        VggtLoadError::NestedStateDict {
                            path: path.to_path_buf(),
                            keys,
                            nested,
                        }
                    });
                }
                (Source::Pth(pth), shapes)
            }
            CheckpointFormat::Safetensors => {
                // SAFETY: the file is memory-mapped read-only; like every mmap user we rely on it
                // not being truncated while open.
                let st = unsafe { MmapedSafetensors::new(path) }.map_err(candle_err)?;
                let shapes: BTreeMap<_, _> = st
                    .tensors()
                    .into_iter()
                    .map(|(name, view)| (name, view.shape().to_vec()))
                    .collect();
                if shapes.is_empty() {
                    return Err(VggtLoadError::Empty {
                        path: path.to_path_buf(),
                    });
                }
                (Source::Safetensors(st), shapes)
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            source: Arc::new(source),
            shapes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// Name → shape of every tensor in the file (heads included).
    pub fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// Name (without `aggregator.`) → shape of the aggregator's tensors; errors when there are none.
    pub fn aggregator_shapes(&self) -> Result<BTreeMap<String, Vec<usize>>, VggtLoadError> {
        let found: BTreeMap<_, _> = self
            .shapes
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(AGGREGATOR_PREFIX)?.to_string(), v.clone())))
            .collect();
        if found.is_empty() {
            return Err(VggtLoadError::NoAggregator {
                path: self.path.clone(),
                count: self.shapes.len(),
                examples: self.shapes.keys().take(5).cloned().collect(),
            });
        }
        Ok(found)
    }

    /// Checks the aggregator keys and shapes against what `cfg` needs.
    pub fn check_aggregator(&self, cfg: &Config) -> Result<(), VggtLoadError> {
        let expected = expected_parameters(cfg).map_err(|source| VggtLoadError::Candle {
            path: self.path.clone(),
            source,
        })?;
        check_keys(&self.path, &expected, &self.aggregator_shapes()?)
    }

    /// Reads one tensor by its full name, as stored (dtype unchanged), on the CPU.
    pub fn tensor(&self, name: &str) -> Result<Tensor, VggtLoadError> {
        let err = |source| VggtLoadError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            source,
        };
        match self.source.as_ref() {
            Source::Pth(pth) => pth
                .get(name)
                .map_err(err)?
                .ok_or_else(|| err(candle_core::Error::Msg("not in the checkpoint".into()))),
            Source::Safetensors(st) => st.load(name, &Device::Cpu).map_err(err),
        }
    }

    /// Every aggregator tensor (name without prefix), as stored.
    pub fn aggregator_tensors(&self) -> Result<BTreeMap<String, Tensor>, VggtLoadError> {
        self.aggregator_shapes()?
            .into_keys()
            .map(|name| {
                let t = self.tensor(&format!("{AGGREGATOR_PREFIX}{name}"))?;
                Ok((name, t))
            })
            .collect()
    }

    /// Builds the aggregator after checking every key and shape; tensors are converted to `dtype`.
    pub fn load_aggregator(
        &self,
        cfg: &Config,
        dtype: DType,
        device: &Device,
    ) -> Result<Aggregator, VggtLoadError> {
        self.check_aggregator(cfg)?;
        let vb = VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone());
        Aggregator::new(cfg, vb.pp(AGGREGATOR_PREFIX.trim_end_matches('.'))).map_err(|source| {
            VggtLoadError::Candle {
                path: self.path.clone(),
                source,
            }
        })
    }
}

impl SimpleBackend for VggtCheckpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, dev)?;
        if tensor.shape() != &s {
            candle_core::bail!(
                "{}: {name}: expected shape {s:?}, got {:?}",
                self.path.display(),
                tensor.shape()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .to_device(dev)?
            .to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// Opens `path` and loads the aggregator for `cfg` (the usual entry point).
pub fn load_aggregator(
    path: impl AsRef<Path>,
    cfg: &Config,
    dtype: DType,
    device: &Device,
) -> Result<Aggregator, VggtLoadError> {
    VggtCheckpoint::open(path, None)?.load_aggregator(cfg, dtype, device)
}
