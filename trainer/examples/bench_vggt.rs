//! Times the VGGT aggregator forward pass on CPU for a folder laid out like
//! `shared/parity/vggt/<variant>` (config.json, weights.safetensors, case_*.safetensors), so the
//! very weights and input the official PyTorch implementation was timed on
//! (`tools/bench/bench_vggt_aggregator.py` writes such a folder and runs this).
//!
//! `cargo run --release -p roomplan-trainer --example bench_vggt -- <folder> [--runs N]`
//! Prints one JSON line: median / min milliseconds per forward and per view, and the max abs
//! difference of the last layer against the folder's reference output.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use roomplan_trainer::parity::max_abs_diff;
use roomplan_trainer::parity::vggt::folder_config;
use roomplan_trainer::model::vggt_load::load_aggregator;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(
        args.next()
            .context("usage: bench_vggt <folder> [--runs N]")?,
    );
    let mut runs = 5usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().context("--runs needs a number")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let cfg = folder_config(&folder)?;
    let model = load_aggregator(
        folder.join("weights.safetensors"),
        &cfg,
        DType::F32,
        &Device::Cpu,
    )?;
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json"))?)?;
    let case = spec["cases"][0]["file"]
        .as_str()
        .context("config.json has no case")?;
    let golden = candle_core::safetensors::load(folder.join(case), &Device::Cpu)?;
    let images = golden.get("images").context("case has no images")?;
    let views = images.dim(1)?;
    let layers: Vec<usize> = (0..cfg.depth).collect();

    // One warm-up run (allocations, thread pool), then `runs` timed runs of the full forward
    // (every layer returned, as the official aggregator does).
    let outputs = model.forward_layers(images, &layers)?;
    let last = format!("output.{}", cfg.depth - 1);
    let diff = match golden.get(&last) {
        Some(reference) => max_abs_diff(&outputs[cfg.depth - 1], reference)?,
        None => f64::NAN,
    };
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = model.forward_layers(images, &layers)?;
        drop(out);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle",
            "threads": candle_core::utils::get_num_threads(),
            "views": views,
            "runs": runs,
            "median_ms": median,
            "min_ms": times[0],
            "median_ms_per_view": median / views as f64,
            "last_layer_max_abs_diff": diff,
        })
    );
    Ok(())
}
