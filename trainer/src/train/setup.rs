//! Builds what an experiment names: the tokenizer, the frozen Qwen3 and VGGT aggregator from their
//! files, fresh LoRA adapters and a fresh Perceiver + geometry head drawn from the experiment's seed.

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};

use crate::model::chat::ChatTokenizer;
use crate::model::fused::{encode_views, FusedConfig, FusedExample, FusedModel};
use crate::model::geometry_head::GeometryHeadConfig;
use crate::model::hub::{shard_names, WEIGHTS_INDEX};
use crate::model::lora::Lora;
use crate::model::perceiver::PerceiverConfig;
use crate::model::qwen3::Qwen3;
use crate::model::vggt::{self, Aggregator};
use crate::model::vggt_load::VggtCheckpoint;
use crate::train::data::{derive_seed, Example, STREAM_INIT};
use crate::train::experiment::Experiment;
use crate::train::pins::resolve_file;

/// The experiment's model, ready to train or predict.
pub struct Assembled {
    pub model: FusedModel,
    pub aggregator: Aggregator,
    pub tokenizer: ChatTokenizer,
    pub vggt_layers: Vec<usize>,
    /// Aggregator forwards run so far (one per example not served from cached features).
    pub vggt_forwards: std::sync::atomic::AtomicU64,
    /// Examples served from cached features so far.
    pub cached_examples: std::sync::atomic::AtomicU64,
}

/// Weight files of the LLM: the `.safetensors` entries of `model.llm.files`, in name order.
fn llm_weight_files(exp: &Experiment) -> Vec<&str> {
    exp.model
        .llm
        .files
        .keys()
        .filter(|f| f.ends_with(".safetensors"))
        .map(String::as_str)
        .collect()
}

/// Loads the frozen models and creates the trainable parts (deterministic from the seed).
pub fn assemble(exp: &Experiment, device: &Device) -> Result<Assembled> {
    let dtype = exp.model.frozen_dtype.dtype();
    let llm_spec = &exp.model.llm;
    let weights = llm_weight_files(exp);
    ensure!(
        !weights.is_empty(),
        "model.llm.files lists no .safetensors weight file"
    );
    if llm_spec.files.contains_key(WEIGHTS_INDEX) {
        let index = resolve_file(llm_spec, WEIGHTS_INDEX).context("model.llm")?;
        let mut named = shard_names(&index)?;
        named.sort();
        ensure!(
            named.iter().map(String::as_str).eq(weights.iter().copied()),
            "{} names the weight files {named:?}, model.llm.files lists {weights:?}",
            index.display()
        );
    }
    let config = resolve_file(llm_spec, "config.json").context("model.llm")?;
    let weights = weights
        .iter()
        .map(|f| resolve_file(llm_spec, f))
        .collect::<Result<Vec<_>>>()
        .context("model.llm")?;
    let mut llm = Qwen3::load(&config, &weights, dtype, device)?;
    llm.set_gradient_checkpointing(exp.train.gradient_checkpointing);
    let tokenizer_path = resolve_file(llm_spec, "tokenizer.json").context("model.llm")?;
    let tokenizer = ChatTokenizer::from_file(&tokenizer_path)?;
    let vocab = tokenizer.tokenizer().get_vocab_size(true);
    ensure!(
        vocab <= llm.config().vocab_size,
        "{}: {vocab} tokens, more than the model's vocab_size {}",
        tokenizer_path.display(),
        llm.config().vocab_size
    );

    let vspec = &exp.model.vggt;
    let (aggregator, vcfg) = load_aggregator(exp, device)?;

    let hidden = llm.config().hidden_size;
    let mut lora_cfg = exp.model.lora.config();
    lora_cfg.extra.insert(
        "base_model_name_or_path".into(),
        serde_json::Value::String(llm_spec.source.clone()),
    );
    if let Some(rev) = &llm_spec.revision {
        lora_cfg
            .extra
            .insert("revision".into(), serde_json::Value::String(rev.clone()));
    }
    let init_seed = derive_seed(exp.seed, &[STREAM_INIT]);
    let lora = Lora::init(lora_cfg, llm.config(), device, init_seed)?;
    let p = &exp.model.perceiver;
    let g = &exp.model.geometry;
    let cfg = FusedConfig {
        perceiver: PerceiverConfig {
            input_dim: vcfg.output_dim() * vspec.layers.len(),
            latent_dim: p.latent_dim,
            num_latents: p.num_latents,
            num_heads: p.num_heads,
            num_layers: p.num_layers,
            ffn_dim: p.ffn_dim,
            output_dim: hidden,
            layer_norm_eps: 1e-5,
        },
        geometry: GeometryHeadConfig {
            depth_bins: g.depth_bins,
            hidden_dim: g.hidden_dim,
            tokens_per_view: g.tokens_per_view,
            output_dim: hidden,
        },
    };
    let model = FusedModel::new(&cfg, llm, lora)?;
    model.reinit_from_seed(init_seed)?;
    Ok(Assembled {
        model,
        aggregator,
        tokenizer,
        vggt_layers: vspec.layers.clone(),
        vggt_forwards: Default::default(),
        cached_examples: Default::default(),
    })
}

/// The experiment's frozen VGGT aggregator (in `model.frozen_dtype`) and its config, with the
/// requested output layers checked against its depth.
pub fn load_aggregator(exp: &Experiment, device: &Device) -> Result<(Aggregator, vggt::Config)> {
    let dtype = exp.model.frozen_dtype.dtype();
    let vspec = &exp.model.vggt;
    let vcfg: vggt::Config = match vspec.weights.files.contains_key("config.json") {
        true => {
            let path = resolve_file(&vspec.weights, "config.json").context("model.vggt")?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a VGGT aggregator config", path.display()))?
        }
        false => vggt::Config::vggt_1b(),
    };
    for &l in &vspec.layers {
        ensure!(
            l < vcfg.depth,
            "model.vggt.layers: layer {l} does not exist (the aggregator has {})",
            vcfg.depth
        );
    }
    let ckpt = resolve_file(&vspec.weights, &vspec.checkpoint).context("model.vggt")?;
    let aggregator = VggtCheckpoint::open(&ckpt, None)?.load_aggregator(&vcfg, dtype, device)?;
    Ok((aggregator, vcfg))
}

impl Assembled {
    /// Runs the frozen aggregator on each example's views (or takes its cached features) and
    /// gives the fused model's inputs.
    pub fn fused_examples(&self, examples: &[Example]) -> Result<Vec<FusedExample>> {
        use std::sync::atomic::Ordering;
        let device = self.model.device();
        examples
            .iter()
            .map(|ex| {
                let vision = match &ex.vision {
                    Some(cached) => {
                        self.cached_examples.fetch_add(1, Ordering::Relaxed);
                        // The dtype the live path gives (the aggregator's).
                        cached.to_device(device)?.to_dtype(self.aggregator.dtype())?
                    }
                    None => {
                        self.vggt_forwards.fetch_add(1, Ordering::Relaxed);
                        let images: Tensor =
                            ex.images.to_device(device)?.to_dtype(self.aggregator.dtype())?;
                        encode_views(&self.aggregator, &images, &self.vggt_layers)
                            .with_context(|| format!("VGGT on sample {}", ex.sample_id))?
                            .detach()
                    }
                };
                Ok(FusedExample {
                    text: ex.text.clone(),
                    vision,
                    geometry: ex.geometry.clone(),
                })
            })
            .collect()
    }
}
