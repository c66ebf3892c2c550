//! The `tiny` experiment's models, generated: a tiny Qwen3 and a tiny VGGT aggregator with weights
//! drawn deterministically from a seed, and a byte-level BPE tokenizer trained with the
//! `tokenizers` crate on the text of prepared datasets. They are written as real model folders
//! (`config.json`, `model.safetensors`, `tokenizer.json`), loaded by the same code as the released
//! models and pinned by sha256 like them: the same seed and datasets give the same bytes.
//!
//! Initialisation follows the official code's kinds: matrices N(0, 0.02), norm weights 1, biases 0,
//! VGGT's layer-scale gammas `init_values` (0.01), so the frozen random aggregator passes its
//! patch embedding (what a view looks like) through to the Perceiver nearly unchanged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::model::chat::{END_OF_TEXT, IMAGE_PAD, IM_END, IM_START};
use crate::model::init;
use crate::model::vggt::{self, AttentionKind};
use roomplan_prep::shard::Dataset;

/// Sizes of the generated models.
#[derive(Debug, Clone)]
pub struct TinySizes {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vggt_embed_dim: usize,
    pub vggt_depth: usize,
    pub vggt_heads: usize,
}

impl Default for TinySizes {
    fn default() -> Self {
        Self {
            vocab_size: 600,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            vggt_embed_dim: 32,
            vggt_depth: 2,
            vggt_heads: 2,
        }
    }
}

/// What [`write_tiny_models`] wrote: `out/qwen3/…` and `out/vggt/…`.
#[derive(Debug, Clone)]
pub struct TinyModels {
    pub qwen3: PathBuf,
    pub vggt: PathBuf,
    pub vocab_size: usize,
}

/// The text a tokenizer for these datasets must cover: questions, situations, answers, actions.
pub fn corpus(datasets: &[PathBuf]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for dir in datasets {
        let ds = Dataset::open(dir).with_context(|| format!("dataset {}", dir.display()))?;
        for row in 0..ds.num_samples() {
            let s = ds.sample(row)?;
            lines.push(s.question);
            lines.extend(s.situation);
            lines.extend(s.answers);
            lines.extend(s.action_json);
        }
    }
    Ok(lines)
}

/// Trains a byte-level BPE tokenizer (Qwen's pre-tokenizer family) with the ChatML special tokens
/// and returns its `tokenizer.json` text.
pub fn train_tokenizer(corpus: &[String], vocab_size: usize) -> Result<String> {
    let specials = [END_OF_TEXT, IM_START, IM_END, IMAGE_PAD];
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.iter().map(|t| AddedToken::from(*t, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect::<HashSet<char>>())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| anyhow::anyhow!("building the tokenizer: {e}"))?;
    tokenizer
        .train(&mut trainer, corpus.iter())
        .map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    // `train` also registers the trainer's special tokens as added tokens (split before BPE).
    let tokenizer: tokenizers::Tokenizer = tokenizer.into();
    tokenizer
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))
}

/// A parameter initialised by its kind (see the module docs).
fn init_tensor(seed: u64, name: &str, shape: &[usize], layer_scale: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.split('.').any(|part| part.contains("norm"));
    let constant = |v: f32| Tensor::from_vec(vec![v; n], shape, &Device::Cpu);
    Ok(if leaf == "gamma" {
        constant(layer_scale)?
    } else if is_norm && leaf == "weight" {
        constant(1.0)?
    } else if leaf == "bias" {
        constant(0.0)?
    } else if name == "model.embed_tokens.weight" {
        // Tied with the LM head: at N(0, 0.02) the logits of a 64-wide model span ±1, too flat
        // for any answer to become likely; N(0, 0.3²) gives a logit spread of a few units.
        init::normal(seed, name, shape, 0.3)?
    } else {
        init::normal(seed, name, shape, 0.02)?
    })
}

fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.clone().into_iter().collect();
    candle_core::safetensors::save(&map, path)
        .with_context(|| format!("writing {}", path.display()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The tiny aggregator's constructor arguments (conv patch embedding, 14-pixel patches).
pub fn tiny_vggt_config(sizes: &TinySizes) -> vggt::Config {
    vggt::Config {
        img_size: 518,
        patch_size: 14,
        embed_dim: sizes.vggt_embed_dim,
        depth: sizes.vggt_depth,
        num_heads: sizes.vggt_heads,
        mlp_ratio: 2.0,
        num_register_tokens: 4,
        aa_order: vec![AttentionKind::Frame, AttentionKind::Global],
        aa_block_size: 1,
        qk_norm: true,
        rope_freq: 100.0,
        patch_embed: "conv".into(),
        dinov2: None,
    }
}

/// Writes `out/qwen3/{config.json, model.safetensors, tokenizer.json}` and
/// `out/vggt/{config.json, model.safetensors}` (keys `aggregator.…` as released).
pub fn write_tiny_models(
    out: &Path,
    seed: u64,
    sizes: &TinySizes,
    corpus: &[String],
) -> Result<TinyModels> {
    let qwen_dir = out.join("qwen3");
    let vggt_dir = out.join("vggt");
    for d in [&qwen_dir, &vggt_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let tokenizer_json = train_tokenizer(corpus, sizes.vocab_size)?;
    let tokenizer: tokenizers::Tokenizer = tokenizer_json
        .parse()
        .map_err(|e| anyhow::anyhow!("re-reading the trained tokenizer: {e}"))?;
    let vocab = tokenizer.get_vocab_size(true);
    std::fs::write(qwen_dir.join("tokenizer.json"), &tokenizer_json)?;

    let head_dim = sizes.hidden / sizes.heads;
    let config = json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": sizes.hidden,
        "intermediate_size": sizes.intermediate,
        "num_hidden_layers": sizes.layers,
        "num_attention_heads": sizes.heads,
        "num_key_value_heads": sizes.kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 2048,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "attention_bias": false,
        "use_sliding_window": false,
        "torch_dtype": "float32",
    });
    write_json(&qwen_dir.join("config.json"), &config)?;
    let cfg: crate::model::qwen3::Config = serde_json::from_value(config)?;
    let mut tensors = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>| -> Result<()> {
        let t = init_tensor(seed, &name, &shape, 0.0)?;
        tensors.insert(name, t);
        Ok(())
    };
    let h = sizes.hidden;
    add("model.embed_tokens.weight".into(), vec![vocab, h])?;
    add("model.norm.weight".into(), vec![h])?;
    for l in 0..sizes.layers {
        let p = format!("model.layers.{l}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            add(format!("{p}.{norm}.weight"), vec![h])?;
        }
        for norm in ["q_norm", "k_norm"] {
            add(format!("{p}.self_attn.{norm}.weight"), vec![head_dim])?;
        }
        for module in crate::model::qwen3::ATTENTION_PROJECTIONS
            .iter()
            .chain(crate::model::qwen3::MLP_PROJECTIONS.iter())
        {
            let (i, o) = cfg.projection_shape(module)?;
            add(
                format!("{}.weight", crate::model::qwen3::projection_path(l, module)),
                vec![o, i],
            )?;
        }
    }
    save_tensors(&tensors, &qwen_dir.join("model.safetensors"))?;

    let vcfg = tiny_vggt_config(sizes);
    write_json(&vggt_dir.join("config.json"), &serde_json::to_value(&vcfg)?)?;
    let mut tensors = BTreeMap::new();
    for (name, shape) in vggt::expected_parameters(&vcfg)? {
        let full = format!("aggregator.{name}");
        let t = init_tensor(seed, &full, &shape, 0.01)?;
        tensors.insert(full, t);
    }
    save_tensors(&tensors, &vggt_dir.join("model.safetensors"))?;
    Ok(TinyModels {
        qwen3: qwen_dir,
        vggt: vggt_dir,
        vocab_size: vocab,
    })
}
