//! What the Qwen3 bench examples share: the names and shapes of a random Qwen3 checkpoint.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::Tensor;
use roomplan_trainer::model::qwen3::{
    projection_path, Config, ATTENTION_PROJECTIONS, MLP_PROJECTIONS,
};

/// What a random matrix stands for, so each bench draws it with its own spread.
#[derive(Clone, Copy)]
pub enum Spread {
    /// The token embeddings (std 0.02).
    Embedding,
    /// A projection with this many input features (std 1/√fan_in).
    FanIn(usize),
}

/// Every tensor of a Qwen3 checkpoint under its Hugging Face key: matrices from `matrix(shape,
/// spread)` in a fixed order (embeddings, then each layer's projections), norms from `ones(n)`.
/// With `progress`, the layer being drawn is shown on stderr.
pub fn random_qwen3_weights(
    cfg: &Config,
    mut matrix: impl FnMut((usize, usize), Spread) -> Result<Tensor>,
    ones: impl Fn(usize) -> candle_core::Result<Tensor>,
    progress: bool,
) -> Result<HashMap<String, Tensor>> {
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".into(),
        matrix((cfg.vocab_size, cfg.hidden_size), Spread::Embedding)?,
    );
    for l in 0..cfg.num_hidden_layers {
        if progress {
            eprint!(
                "\rdrawing random weights: layer {}/{}",
                l + 1,
                cfg.num_hidden_layers
            );
        }
        for m in ATTENTION_PROJECTIONS.iter().chain(MLP_PROJECTIONS.iter()) {
            let (i, o) = cfg.projection_shape(m)?;
            w.insert(
                format!("{}.weight", projection_path(l, m)),
                matrix((o, i), Spread::FanIn(i))?,
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
    if progress {
        eprintln!();
    }
    w.insert("model.norm.weight".into(), ones(cfg.hidden_size)?);
    Ok(w)
}
