//! What a parity run reports, shared by every model's checks (`qwen3`, `vggt`) and the
//! `tools parity` command.

pub mod qwen3;
pub mod vggt;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};

/// How a parity run is done.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the models run (`tools parity --device`); references are moved there to compare.
    pub device: Device,
    /// A folder made by `tools/parity/qwen3_bf16.py` (PyTorch's own bf16 outputs of the Qwen3
    /// fixture): the bf16 checks compare with it relative to the values' scale, instead of with
    /// the f32 reference under an absolute gate.
    pub bf16_reference: Option<PathBuf>,
}

/// `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::new_cuda(n)?),
            _ => anyhow::bail!("device {other:?}: expected cpu, cuda or cuda:N"),
        },
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            bf16_reference: None,
        }
    }
}

/// One compared output.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was compared, e.g. `base/logits` or `lora/grad.<adapter key>`.
    pub name: String,
    /// max |ours − reference| over all elements.
    pub max_abs_diff: f64,
    /// The largest diff that passes.
    pub tolerance: f64,
}

impl Check {
    /// Passes when the diff is within tolerance (a NaN diff never passes).
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.tolerance
    }
}

/// All checks of one fixture folder.
#[derive(Debug, Clone)]
pub struct ParityReport {
    /// Fixture kind (`qwen3`, `vggt`).
    pub kind: &'static str,
    pub folder: PathBuf,
    pub checks: Vec<Check>,
}

impl ParityReport {
    pub fn new(kind: &'static str, folder: &Path) -> Self {
        Self {
            kind,
            folder: folder.to_path_buf(),
            checks: Vec::new(),
        }
    }

    pub fn push(&mut self, name: impl Into<String>, max_abs_diff: f64, tolerance: f64) {
        self.checks.push(Check {
            name: name.into(),
            max_abs_diff,
            tolerance,
        });
    }

    /// Compares two tensors and records the result.
    pub fn compare(
        &mut self,
        name: impl Into<String>,
        ours: &Tensor,
        reference: &Tensor,
        tolerance: f64,
    ) -> Result<()> {
        let name = name.into();
        let diff = max_abs_diff(ours, reference).map_err(|e| e.context(format!("check {name}")))?;
        self.push(name, diff, tolerance);
        Ok(())
    }

    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed())
    }

    /// Compares two tensors with a tolerance of `relative` × max |reference| (at least
    /// `relative` × 1e-6, so an all-zero reference still compares).
    pub fn compare_relative(
        &mut self,
        name: impl Into<String>,
        ours: &Tensor,
        reference: &Tensor,
        relative: f64,
    ) -> Result<()> {
        let scale = reference
            .to_dtype(DType::F64)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?
            .max(1e-6);
        self.compare(name, ours, reference, relative * scale)
    }

    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for ParityReport {
    /// One line per check: name, max abs diff, tolerance, verdict; then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        writeln!(f, "{} parity: {}", self.kind, self.folder.display())?;
        for c in &self.checks {
            let verdict = if c.passed() { "ok" } else { "FAIL" };
            writeln!(
                f,
                "  {:<width$}  max abs diff {:>10.3e}  (tolerance {:.1e})  {verdict}",
                c.name, c.max_abs_diff, c.tolerance
            )?;
        }
        let failed = self.failures().count();
        write!(f, "{} checks, {} failed", self.checks.len(), failed)
    }
}

/// max |a − b| in f64 after checking that the shapes agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    ensure!(
        a.shape() == b.shape(),
        "shapes differ: ours {:?}, reference {:?}",
        a.shape(),
        b.shape()
    );
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?.to_device(a.device())?;
    let diff = (a - b)?.abs()?.flatten_all()?;
    if diff.elem_count() == 0 {
        return Ok(0.0);
    }
    let values = diff.to_vec1::<f64>()?;
    // A NaN anywhere must fail the check, so it is propagated rather than skipped by max.
    Ok(values.into_iter().fold(0.0, |m, v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    }))
}

/// The shared fixtures folder: `$ROOMPLAN_SHARED` if set, else `<workspace root>/../shared`
/// (CI checks `shared/` out beside the clone).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("ROOMPLAN_SHARED").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join("shared"),
    }
}
