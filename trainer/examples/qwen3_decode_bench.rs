//! KV-cache decoding benchmark of Qwen3 with frozen bf16 weights on the CPU: the time of the
//! prompt pass and of each generated token, and the process's memory (RSS after every token,
//! peak VmHWM), with the frozen projections through the bf16-weight kernel (default,
//! `trainer/src/model/bf16_linear.rs`) or candle's bf16 matmul with casts (`--cast`, the path
//! before it: both operands widened to f32 inside candle on every call).
//!
//!   cargo build --release -p roomplan-trainer --example qwen3_decode_bench
//!   target/release/examples/qwen3_decode_bench [--cast] [--config FILE] [--layers N] [--vocab V]
//!       [--prompt T] [--tokens N] [--frozen-dtype bf16|f32] [--seed S]
//!
//! Defaults: the Qwen3-4B-Instruct-2507 shape (`tools/bench/qwen3_4b_instruct_2507.json`, 36
//! layers, vocabulary 151,936, tied embeddings: 4.02 B parameters, 8 GB in bf16), a 16-token prompt
//! and 4 generated tokens. `--layers` / `--vocab` cut the model where memory is short (a token's
//! time is ≈ layers × one layer's + the LM head's: run two layer counts and take the difference).
//! Weights are random (drawn straight into bf16, no f32 copy of the model); the threads are rayon's
//! (`RAYON_NUM_THREADS`). Progress goes to stderr, one summary line to stdout.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use common::{random_qwen3_weights, Spread};
use half::bf16;
use rand::{Rng, SeedableRng};
use roomplan_trainer::model::qwen3::{Config, Input, Qwen3};

const HELP: &str = "qwen3_decode_bench: KV-cache decoding time per token and memory, frozen bf16 weights on the CPU

Options:
  --cast               frozen bf16 projections through candle's bf16 matmul (the path before the kernel)
  --config FILE        Qwen3 config.json (default tools/bench/qwen3_4b_instruct_2507.json)
  --layers N           override num_hidden_layers
  --vocab V            override vocab_size
  --prompt T           prompt tokens (default 16)
  --tokens N           generated tokens, each timed (default 4)
  --frozen-dtype D     bf16 (default) or f32
  --seed S             weights' and prompt's seed (default 0)
Threads: RAYON_NUM_THREADS.";

/// The value after flag `name`, parsed, or `default`.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} {}", args[i + 1]))?),
        None => Ok(default),
    }
}

/// A memory line of /proc/self/status (VmHWM, VmRSS), MiB.
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(key))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// A uniform random matrix in `dtype`, drawn without an f32 copy when `dtype` is bf16.
fn uniform(
    shape: (usize, usize),
    bound: f32,
    dtype: DType,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Tensor> {
    let n = shape.0 * shape.1;
    let mut draw = || (rng.random::<f32>() * 2.0 - 1.0) * bound;
    Ok(match dtype {
        DType::BF16 => {
            let v: Vec<bf16> = (0..n).map(|_| bf16::from_f32(draw())).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        }
        DType::F32 => Tensor::from_vec(
            (0..n).map(|_| draw()).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )?,
        other => bail!("--frozen-dtype {other:?}: expected bf16 or f32"),
    })
}

/// Random weights in `dtype` on the CPU (uniform, std 0.02 for the embeddings, 1/√fan_in else).
fn random_weights(
    cfg: &Config,
    dtype: DType,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<HashMap<String, Tensor>> {
    let matrix = |shape: (usize, usize), spread: Spread| {
        let bound = match spread {
            Spread::Embedding => 0.02 * 1.732,
            Spread::FanIn(i) => 1.732 / (i as f32).sqrt(),
        };
        uniform(shape, bound, dtype, rng)
    };
    random_qwen3_weights(cfg, matrix, |n| Tensor::ones(n, dtype, &Device::Cpu), true)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    let cast = args.iter().any(|a| a == "--cast");
    let config: String = flag(
        &args,
        "--config",
        "tools/bench/qwen3_4b_instruct_2507.json".to_string(),
    )?;
    let mut cfg = Config::from_file(std::path::Path::new(&config))?;
    cfg.num_hidden_layers = flag(&args, "--layers", cfg.num_hidden_layers)?;
    cfg.vocab_size = flag(&args, "--vocab", cfg.vocab_size)?;
    let prompt: usize = flag(&args, "--prompt", 16)?;
    let tokens: usize = flag(&args, "--tokens", 4)?;
    let seed: u64 = flag(&args, "--seed", 0)?;
    let dtype = match flag(&args, "--frozen-dtype", "bf16".to_string())?.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => bail!("--frozen-dtype {other}: expected bf16 or f32"),
    };
    if prompt == 0 {
        bail!("--prompt must be at least 1");
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    let weights = random_weights(&cfg, dtype, &mut rng)?;
    let mut model = Qwen3::new(&cfg, VarBuilder::from_tensors(weights, dtype, &Device::Cpu))?;
    model.set_bf16_kernel(!cast);
    let rss_loaded = status_mib("VmRSS:");
    eprintln!(
        "model: {} layers, vocab {}, {dtype:?}, built in {:.1} s, RSS {rss_loaded:.0} MiB",
        cfg.num_hidden_layers,
        cfg.vocab_size,
        t0.elapsed().as_secs_f64()
    );

    let ids: Vec<u32> = (0..prompt)
        .map(|_| rng.random_range(0..cfg.vocab_size as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (1, prompt), &Device::Cpu)?;
    let mut cache = model.new_cache(1);
    let t = Instant::now();
    let mut logits = model.forward_cached(Input::Ids(&ids), None, &mut cache)?;
    let prompt_s = t.elapsed().as_secs_f64();
    eprintln!(
        "prompt ({prompt} tokens): {prompt_s:.3} s, RSS {:.0} MiB",
        status_mib("VmRSS:")
    );
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for step in 0..tokens {
        let last = logits.i((0, logits.dim(1)? - 1))?;
        let next = last.argmax(0)?.to_scalar::<u32>()?;
        let ids = Tensor::new(&[[next]], &Device::Cpu)?;
        let t = Instant::now();
        logits = model.forward_cached(Input::Ids(&ids), None, &mut cache)?;
        let dt = t.elapsed().as_secs_f64();
        let now = status_mib("VmRSS:");
        eprintln!("token {}/{tokens}: {dt:.3} s, RSS {now:.0} MiB", step + 1);
        times.push(dt);
        rss.push(now);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, min, max) = if sorted.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        (
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1],
        )
    };
    println!(
        "mode {}: {} layers, vocab {}, {dtype:?}, prompt {prompt} tokens {prompt_s:.3} s, decode median {median:.3} s/token over {tokens} (min {min:.3}, max {max:.3}), RSS loaded {rss_loaded:.0} MiB, after each token {:?} MiB, peak {:.0} MiB, threads {}",
        if cast { "cast (candle bf16 matmul)" } else { "bf16 kernel" },
        cfg.num_hidden_layers,
        cfg.vocab_size,
        rss.iter().map(|r| r.round() as i64).collect::<Vec<_>>(),
        status_mib("VmHWM:"),
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
