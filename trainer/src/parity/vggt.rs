//! Parity of the VGGT aggregator against golden tensors of the official implementation, for a
//! folder laid out like `shared/parity/vggt/<variant>`: `config.json` (constructor arguments,
//! cases), `weights.safetensors` + `weights.pt`, and one `case_<name>.safetensors` per case with
//! `images`, `output.{i}` and `debug.*` (see that folder's README).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::model::vggt::{Config, Dinov2Config};
use crate::model::vggt_load::VggtCheckpoint;
use crate::parity::{ParityReport, RunOptions};

/// Gate on every output layer (the README's suggestion: reference noise is ≤ 6e-6).
pub const OUTPUT_TOLERANCE: f64 = 2e-5;
/// The normalised input is two float32 operations away from the reference.
pub const NORMALIZED_TOLERANCE: f64 = 1e-6;

#[derive(Debug, Deserialize)]
struct CaseSpec {
    name: String,
    file: String,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Deserialize)]
struct FolderConfig {
    patch_embed: String,
    aggregator_kwargs: serde_json::Value,
    dinov2: Option<Dinov2Config>,
    #[serde(default = "default_weights_file")]
    weights_file: String,
    cases: Vec<CaseSpec>,
}

fn default_weights_file() -> String {
    "weights.safetensors".to_string()
}

/// Whether `folder` looks like a VGGT fixture: a `config.json` with `aggregator_kwargs`.
pub fn is_fixture(folder: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(folder.join("config.json")) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| {
        v.get("aggregator_kwargs")
            .is_some_and(serde_json::Value::is_object)
    })
}

/// The aggregator config of a parity folder: its `aggregator_kwargs`, with `patch_embed` and the
/// DINOv2 sizes taken from the top level (the kwargs hold a placeholder for the tiny DINOv2).
pub fn folder_config(folder: &Path) -> Result<Config> {
    Ok(read_folder_config(folder)?.0)
}

fn read_folder_config(folder: &Path) -> Result<(Config, FolderConfig)> {
    let path = folder.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: FolderConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut cfg: Config = serde_json::from_value(spec.aggregator_kwargs.clone())
        .with_context(|| format!("{}: aggregator_kwargs", path.display()))?;
    cfg.patch_embed = spec.patch_embed.clone();
    cfg.dinov2 = spec.dinov2.clone();
    cfg.validate()
        .with_context(|| format!("{}: aggregator config", path.display()))?;
    Ok((cfg, spec))
}

/// Runs every case of `folder` in float32 on the CPU and returns one check per compared tensor,
/// plus the `weights.pt` ≡ `weights.safetensors` check.
pub fn run(folder: &Path) -> Result<ParityReport> {
    run_with(folder, &RunOptions::default())
}

/// [`run`] on `opts.device` (the golden tensors are loaded there).
pub fn run_with(folder: &Path, opts: &RunOptions) -> Result<ParityReport> {
    let (cfg, spec) = read_folder_config(folder)?;
    let device = opts.device.clone();
    let mut report = ParityReport::new("vggt", folder);

    let st = VggtCheckpoint::open(folder.join(&spec.weights_file), None)?;
    let aggregator = st.load_aggregator(&cfg, DType::F32, &device)?;
    let pt_path = folder.join("weights.pt");
    if pt_path.exists() {
        let pt = VggtCheckpoint::open(&pt_path, None)?;
        pt.check_aggregator(&cfg)?;
        report.push(
            "weights.pt vs weights.safetensors",
            checkpoint_diff(&pt, &st)?,
            0.0,
        );
    }

    for case in &spec.cases {
        let path = folder.join(&case.file);
        if !path.exists() && case.optional {
            continue;
        }
        let golden = candle_core::safetensors::load(&path, &device)
            .with_context(|| format!("reading case {}", path.display()))?;
        let get = |key: &str| {
            golden
                .get(key)
                .with_context(|| format!("{}: no tensor {key:?}", path.display()))
        };
        let layers: Vec<usize> = (0..cfg.depth).collect();
        let (outputs, trace) = aggregator
            .forward_traced(get("images")?, &layers)
            .with_context(|| format!("forward of case {}", case.name))?;
        let name = &case.name;
        for (i, out) in outputs.iter().enumerate() {
            report.compare(
                format!("{name}/output.{i}"),
                out,
                get(&format!("output.{i}"))?,
                OUTPUT_TOLERANCE,
            )?;
        }
        let extra_outputs = (cfg.depth..)
            .take_while(|i| golden.contains_key(&format!("output.{i}")))
            .count();
        ensure!(
            extra_outputs == 0,
            "{}: {} more output layers than the config's depth {}",
            path.display(),
            extra_outputs,
            cfg.depth
        );
        if let Some(t) = &trace.images_normalized {
            report.compare(
                format!("{name}/debug.images_normalized"),
                t,
                get("debug.images_normalized")?,
                NORMALIZED_TOLERANCE,
            )?;
        }
        for (key, ours) in [
            ("debug.patch_tokens", &trace.patch_tokens),
            ("debug.tokens_in", &trace.tokens_in),
            ("debug.pos_embed_used", &trace.pos_embed_used),
        ] {
            match (ours, golden.get(key)) {
                (Some(t), Some(reference)) => {
                    report.compare(format!("{name}/{key}"), t, reference, OUTPUT_TOLERANCE)?
                }
                (None, Some(_)) => {
                    bail!("{}: has {key} but our model computed none", path.display())
                }
                _ => {}
            }
        }
        if let Some(reference) = golden.get("debug.pos") {
            let frames = reference.dim(0)?;
            let flat: Vec<i64> = trace
                .positions
                .iter()
                .flat_map(|p| p.map(i64::from))
                .collect();
            let ours = Tensor::from_vec(flat, (1, trace.positions.len(), 2), &device)?
                .repeat((frames, 1, 1))?;
            report.compare(format!("{name}/debug.pos"), &ours, reference, 0.0)?;
        }
        if let Some(idx) = golden.get("patch_start_idx") {
            let idx = idx.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            let ours = [cfg.patch_start_idx() as i64];
            report.push(
                format!("{name}/patch_start_idx"),
                if idx == ours { 0.0 } else { f64::INFINITY },
                0.0,
            );
        }
    }
    Ok(report)
}

/// Largest difference between the aggregator tensors of two checkpoints, which must hold the
/// same names, shapes and dtypes.
pub fn checkpoint_diff(a: &VggtCheckpoint, b: &VggtCheckpoint) -> Result<f64> {
    let ta: BTreeMap<String, Tensor> = a.aggregator_tensors()?;
    let tb: BTreeMap<String, Tensor> = b.aggregator_tensors()?;
    let names_a: Vec<_> = ta.keys().collect();
    let names_b: Vec<_> = tb.keys().collect();
    ensure!(
        names_a == names_b,
        "{} and {} hold different aggregator keys",
        a.path().display(),
        b.path().display()
    );
    let mut worst = 0.0f64;
    for (name, x) in &ta {
        let y = &tb[name];
        ensure!(
            x.dtype() == y.dtype(),
            "{name}: dtype {:?} in {} vs {:?} in {}",
            x.dtype(),
            a.path().display(),
            y.dtype(),
            b.path().display()
        );
        let diff = crate::parity::max_abs_diff(x, y).with_context(|| format!("tensor {name}"))?;
        worst = if diff.is_nan() || worst.is_nan() {
            f64::NAN
        } else {
            worst.max(diff)
        };
    }
    Ok(worst)
}
