//! Train-step benchmark of Qwen3 + LoRA (forward + backward + AdamW step) on a small random
//! configuration, with frozen projections through the sparing op (default) or candle's plain
//! matmul (`--plain`), which also computes every frozen weight's gradient.
//!
//! Run by hand, one mode per process so that peak memory (VmHWM) is per mode:
//!   cargo run --release -p roomplan-trainer --example qwen3_lora_bench -- [--plain] [--steps N]
//! tools/bench/bench_qwen3_lora.py runs the same architecture in PyTorch (transformers + peft).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder};
use rand::{Rng, SeedableRng};
use roomplan_trainer::model::lora::{Lora, LoraConfig};
use roomplan_trainer::model::qwen3::{
    projection_path, Config, Input, Qwen3, ATTENTION_PROJECTIONS, MLP_PROJECTIONS,
};

/// The benchmark architecture (also written in tools/bench/bench_qwen3_lora.py).
const CONFIG: &str = r#"{"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768,
  "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
  "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
  "tie_word_embeddings": true, "hidden_act": "silu"}"#;
const BATCH: usize = 4;
const SEQ: usize = 256;

fn random_weights(
    cfg: &Config,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<HashMap<String, Tensor>> {
    let mut normal = |shape: (usize, usize), std: f32| -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.732)
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    };
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".into(),
        normal((cfg.vocab_size, cfg.hidden_size), 0.02)?,
    );
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu);
    for l in 0..cfg.num_hidden_layers {
        for m in ATTENTION_PROJECTIONS.iter().chain(MLP_PROJECTIONS.iter()) {
            let (i, o) = cfg.projection_shape(m)?;
            w.insert(
                format!("{}.weight", projection_path(l, m)),
                normal((o, i), 1.0 / (i as f32).sqrt())?,
            );
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                format!("model.layers.{l}.{n}.weight"),
                ones(cfg.hidden_size)?,
            );
        }
        for n in ["q_norm", "k_norm"] {
            w.insert(
                format!("model.layers.{l}.self_attn.{n}.weight"),
                ones(cfg.head_dim())?,
            );
        }
    }
    w.insert("model.norm.weight".into(), ones(cfg.hidden_size)?);
    Ok(w)
}

/// Peak resident memory of this process (Linux VmHWM), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    let steps: usize = match args.iter().position(|a| a == "--steps") {
        Some(i) => args.get(i + 1).context("--steps needs a number")?.parse()?,
        None => 10,
    };
    let cfg: Config = serde_json::from_str(CONFIG)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let weights = random_weights(&cfg, &mut rng)?;
    let mut model = Qwen3::new(
        &cfg,
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
    )?;
    model.set_sparing_grads(!plain);
    let lora = Lora::init(
        LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            ..LoraConfig::default()
        },
        &cfg,
        &Device::Cpu,
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

    let ids: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| rng.random_range(0..cfg.vocab_size as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (BATCH, SEQ), &Device::Cpu)?;
    // Loss on the second half of every row, like answer tokens after a prompt.
    let labels: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| {
            if i % SEQ < SEQ / 2 {
                -100
            } else {
                ((i * 7) % cfg.vocab_size) as i64
            }
        })
        .collect();
    let labels = Tensor::from_vec(labels, (BATCH, SEQ), &Device::Cpu)?;

    let mut times = Vec::new();
    let mut backward_times = Vec::new();
    for step in 0..steps + 2 {
        let t0 = Instant::now();
        let loss = model.loss(Input::Ids(&ids), None, &labels, true)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let backward = t1.elapsed().as_secs_f64();
        opt.step(&grads)?;
        let dt = t0.elapsed().as_secs_f64();
        if step >= 2 {
            // the first two steps warm allocators and caches
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
    println!(
        "mode {}: batch {BATCH}x{SEQ}, median step {:.3} s over {steps} steps (min {:.3}, max {:.3}; backward median {:.3}, min {:.3}), peak RSS {:.0} MiB, threads {}",
        if plain { "plain-matmul" } else { "sparing" },
        median,
        times[0],
        times[times.len() - 1],
        backward_times[backward_times.len() / 2],
        backward_times[0],
        peak_rss_mib().unwrap_or(f64::NAN),
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
