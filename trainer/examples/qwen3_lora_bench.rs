//! Train-step benchmark of Qwen3 + LoRA (forward + backward + AdamW step) on a small random
//! configuration, with frozen projections through the sparing op (default) or candle's plain
//! matmul (`--plain`), which also computes every frozen weight's gradient; attention and RMSNorm
//! through the fused kernels (default) or the composite candle ops (`--composite`); with
//! `--checkpointing`, activation checkpointing per decoder layer. `--frozen-dtype bf16` holds the
//! frozen weights in bf16: on the CPU through the bf16-weight kernel, or with `--bf16-cast` through
//! candle's bf16 matmul with casts (the path before the kernel).
//!
//! Run by hand, one mode per process so that peak memory (VmHWM) is per mode:
//!   cargo run --release -p roomplan-trainer --example qwen3_lora_bench -- [--plain] [--composite] [--steps N]
//!
//! Other shapes (e.g. one Qwen3-4B-shaped layer, for activation memory per layer):
//!   `--config FILE.json --batch B --seq T --rank R --warmup N` (defaults: the architecture below,
//!   4 × 256, r 8, 2 warm-up steps).
//! tools/bench/bench_qwen3_lora.py runs the same architecture in PyTorch (transformers + peft).
//!
//! Threads: `RAYON_NUM_THREADS` (gemm and the fused kernels); candle's own element-wise pool is
//! left out (`CANDLE_NUM_THREADS=1` unless set, see `roomplan_trainer::keep_candle_elementwise_on_caller`).
//!
//! On a GPU (ci/gpu.sh): `--device cuda --frozen-dtype bf16 --config
//! tools/bench/qwen3_4b_instruct_2507.json --batch B --seq 512 --peak-tflops P --json` times the
//! real Qwen3-4B-Instruct-2507 shape (random weights drawn on the device, frozen weights in bf16,
//! LoRA and AdamW in f32) and prints one JSON line with tokens/s and model FLOPs utilisation, next
//! to tools/bench/bench_qwen3_lora_gpu.py (PyTorch + PEFT, the same shape and formula).
//!
//! Model FLOPs of one step (both sides use this formula, so their MFU ratio is their speed ratio):
//! per token 4·N (the forward 2·N and the backward's activation gradients 2·N: frozen weights get
//! no gradient; N = the parameters of every projection and the LM head) plus 12·L·H·d·T for
//! attention (QKᵀ and AV, forward and backward, full T×T as in PaLM's MFU); LoRA's own are omitted.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder};
use common::{random_qwen3_weights, Spread};
use rand::{Rng, SeedableRng};
use roomplan_trainer::model::lora::{Lora, LoraConfig};
use roomplan_trainer::model::qwen3::{
    Config, Input, Qwen3, ATTENTION_PROJECTIONS, MLP_PROJECTIONS,
};

/// The benchmark architecture (also written in tools/bench/bench_qwen3_lora.py).
const CONFIG: &str = r#"{"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768,
  "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
  "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
  "tie_word_embeddings": true, "hidden_act": "silu"}"#;
const BATCH: usize = 4;
const SEQ: usize = 256;

/// The value after flag `name`, parsed, or `default`.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()?),
        None => Ok(default),
    }
}

/// Random weights on the CPU, each matrix converted to `dtype` as soon as it is drawn (so bf16
/// runs hold no f32 copy of the model, which would also count in the peak RSS).
fn random_weights(
    cfg: &Config,
    dtype: DType,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<HashMap<String, Tensor>> {
    let normal = |shape: (usize, usize), spread: Spread| -> Result<Tensor> {
        let std = match spread {
            Spread::Embedding => 0.02,
            Spread::FanIn(i) => 1.0 / (i as f32).sqrt(),
        };
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.732)
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
    };
    random_qwen3_weights(
        cfg,
        normal,
        |n| Tensor::ones(n, DType::F32, &Device::Cpu),
        false,
    )
}

/// Random frozen weights drawn on `device` (uniform with the same spreads as [`random_weights`]),
/// so a 4B-parameter model needs no host copy.
fn random_weights_on(cfg: &Config, device: &Device) -> Result<HashMap<String, Tensor>> {
    let uniform = |shape: (usize, usize), spread: Spread| -> Result<Tensor> {
        let std = match spread {
            Spread::Embedding => 0.02,
            Spread::FanIn(i) => 1.0 / (i as f64).sqrt(),
        };
        let a = std * 1.732;
        Ok(Tensor::rand(-a as f32, a as f32, shape, device)?)
    };
    random_qwen3_weights(cfg, uniform, |n| Tensor::ones(n, DType::F32, device), false)
}

/// Model FLOPs of one LoRA train step (the module doc's formula).
fn step_flops(cfg: &Config, batch: usize, seq: usize) -> Result<f64> {
    let mut n = (cfg.vocab_size * cfg.hidden_size) as f64;
    for m in ATTENTION_PROJECTIONS.iter().chain(MLP_PROJECTIONS.iter()) {
        let (i, o) = cfg.projection_shape(m)?;
        n += (cfg.num_hidden_layers * i * o) as f64;
    }
    let attention =
        12.0 * (cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim() * seq) as f64;
    Ok((batch * seq) as f64 * (4.0 * n + attention))
}

/// Peak resident memory of this process (Linux VmHWM), MiB.
fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// A memory line of /proc/self/status (VmHWM, VmRSS), MiB.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    roomplan_trainer::keep_candle_elementwise_on_caller();
    roomplan_trainer::keep_freed_memory_for_reuse();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    let composite = args.iter().any(|a| a == "--composite");
    let steps: usize = flag(&args, "--steps", 10)?;
    let warmup: usize = flag(&args, "--warmup", 2)?;
    let (batch, seq): (usize, usize) = (flag(&args, "--batch", BATCH)?, flag(&args, "--seq", SEQ)?);
    let rank: usize = flag(&args, "--rank", 8)?;
    let cfg: Config = match args.iter().position(|a| a == "--config") {
        Some(i) => Config::from_file(std::path::Path::new(
            args.get(i + 1).context("--config needs a file")?,
        ))?,
        None => serde_json::from_str(CONFIG)?,
    };
    let device =
        roomplan_trainer::parity::parse_device(&flag(&args, "--device", "cpu".to_string())?)?;
    let frozen_dtype = match flag(&args, "--frozen-dtype", "f32".to_string())?.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => bail!("--frozen-dtype {other}: expected f32 or bf16"),
    };
    let peak_tflops: Option<f64> = match args.iter().position(|a| a == "--peak-tflops") {
        Some(i) => Some(
            args.get(i + 1)
                .context("--peak-tflops needs a value")?
                .parse()?,
        ),
        None => None,
    };
    let json = args.iter().any(|a| a == "--json");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let weights = if device.is_cpu() {
        random_weights(&cfg, frozen_dtype, &mut rng)?
    } else {
        random_weights_on(&cfg, &device)?
    };
    let mut model = Qwen3::new(
        &cfg,
        VarBuilder::from_tensors(weights, frozen_dtype, &device),
    )?;
    model.set_sparing_grads(!plain);
    model.set_fused_kernels(!composite);
    let bf16_cast = args.iter().any(|a| a == "--bf16-cast");
    model.set_bf16_kernel(!bf16_cast);
    let checkpointing = args.iter().any(|a| a == "--checkpointing");
    model.set_gradient_checkpointing(checkpointing);
    let lora = Lora::init(
        LoraConfig {
            r: rank,
            lora_alpha: 2.0 * rank as f64,
            ..LoraConfig::default()
        },
        &cfg,
        &device,
        1,
    )?;
    lora.attach(&mut model)?;
    let vars: Vec<_> = lora.vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;

    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..cfg.vocab_size as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq), &device)?;
    // Loss on the second half of every row, like answer tokens after a prompt.
    let labels: Vec<i64> = (0..batch * seq)
        .map(|i| {
            if i % seq < seq / 2 {
                -100
            } else {
                ((i * 7) % cfg.vocab_size) as i64
            }
        })
        .collect();
    let labels = Tensor::from_vec(labels, (batch, seq), &device)?;

    // Weights, adapters and inputs are in place: the step's own memory is what comes above this.
    let rss_before = status_mib("VmRSS:").unwrap_or(f64::NAN);
    let mut times = Vec::new();
    let mut backward_times = Vec::new();
    for step in 0..steps + warmup {
        let t0 = Instant::now();
        let loss = model.loss(Input::Ids(&ids), None, &labels, true)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let backward = t1.elapsed().as_secs_f64();
        opt.step(&grads)?;
        device.synchronize()?;
        let dt = t0.elapsed().as_secs_f64();
        if step >= warmup {
            // the first steps warm allocators and caches
            times.push(dt);
            backward_times.push(backward);
        }
        eprintln!(
            "step {step}: loss {:.4}, {:.3} s, {} gradients",
            loss.to_scalar::<f32>()?,
            dt,
            grads.get_ids().count()
        );
    }
    times.sort_by(f64::total_cmp);
    backward_times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if json {
        let flops = step_flops(&cfg, batch, seq)?;
        let achieved = flops / median / 1e12;
        println!(
            "{}",
            serde_json::json!({
                "impl": "roomplan (candle)",
                "device": format!("{device:?}"),
                "frozen_dtype": format!("{frozen_dtype:?}"),
                "layers": cfg.num_hidden_layers,
                "batch": batch,
                "seq": seq,
                "lora_r": rank,
                "steps": steps,
                "median_step_s": median,
                "tokens_per_s": (batch * seq) as f64 / median,
                "model_tflop_per_step": flops / 1e12,
                "achieved_tflops": achieved,
                "peak_tflops": peak_tflops,
                "mfu": peak_tflops.map(|p| achieved / p),
            })
        );
        return Ok(());
    }
    println!(
        "mode {}{}{}{}: {} layers, batch {batch}x{seq}, median step {:.3} s over {steps} steps (min {:.3}, max {:.3}; backward median {:.3}, min {:.3}), peak RSS {:.0} MiB ({:.0} before the first step), threads {}",
        if plain { "plain-matmul" } else { "sparing" },
        if composite { ", composite" } else { ", fused" },
        if checkpointing { ", checkpointing" } else { "" },
        match (frozen_dtype, bf16_cast) {
            (DType::BF16, false) => ", bf16 frozen weights (bf16-weight kernel)",
            (DType::BF16, true) => ", bf16 frozen weights (candle bf16 matmul, casts)",
            _ => "",
        },
        cfg.num_hidden_layers,
        median,
        times[0],
        times[times.len() - 1],
        backward_times[backward_times.len() / 2],
        backward_times[0],
        peak_rss_mib().unwrap_or(f64::NAN),
        rss_before,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
