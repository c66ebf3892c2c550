//! config.json parsing (both transformers layouts) and the tied / untied output projection.

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use roomplan_trainer::parity::{max_abs_diff, shared_dir};
use roomplan_trainer::model::qwen3::{Config, ForwardOptions, Input, Qwen3};

fn base() -> PathBuf {
    shared_dir().join("parity").join("qwen3").join("base")
}

fn config_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(base().join("config.json")).unwrap()).unwrap()
}

fn parse(v: &serde_json::Value) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, v.to_string()).unwrap();
    Config::from_file(&p)
}

#[test]
fn reads_the_legacy_and_the_transformers5_layouts() {
    let cfg = Config::from_file(&base().join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.head_dim(),
            cfg.rope_theta().unwrap()
        ),
        (64, 2, 32, 1e6)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.projection_shape("q_proj").unwrap(), (64, 128));
    assert_eq!(cfg.projection_shape("o_proj").unwrap(), (128, 64));
    // transformers 5 moves rope_theta into rope_parameters.
    let mut v = config_json();
    v.as_object_mut().unwrap().remove("rope_theta");
    v["rope_parameters"] = serde_json::json!({"rope_theta": 5e6, "rope_type": "default"});
    assert_eq!(parse(&v).unwrap().rope_theta().unwrap(), 5e6);
}

#[test]
fn refuses_what_it_would_compute_wrongly() {
    let cases = [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "only plain RoPE",
        ),
        ("hidden_act", serde_json::json!("gelu"), "only silu"),
        (
            "attention_bias",
            serde_json::json!(true),
            "no attention biases",
        ),
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "not a multiple of num_key_value_heads 3",
        ),
    ];
    for (key, value, message) in cases {
        let mut v = config_json();
        v[key] = value;
        let err = format!("{:#}", parse(&v).unwrap_err());
        assert!(
            err.contains("unsupported Qwen3 config") && err.contains(message),
            "{key}: {err}"
        );
    }
}

#[test]
fn untied_checkpoint_uses_its_lm_head() {
    let mut tensors =
        candle_core::safetensors::load(base().join("model.safetensors"), &Device::Cpu).unwrap();
    let lm_head = Tensor::randn(0f32, 0.1, (256, 64), &Device::Cpu).unwrap();
    tensors.insert("lm_head.weight".into(), lm_head.clone());
    let mut cfg = Config::from_file(&base().join("config.json")).unwrap();
    let ids = Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu).unwrap();
    let opts = ForwardOptions {
        output_hidden_states: true,
        train: false,
    };

    cfg.tie_word_embeddings = false;
    let untied = Qwen3::new(
        &cfg,
        VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let out = untied.forward_with(Input::Ids(&ids), None, opts).unwrap();
    let last = out.hidden_states.last().unwrap();
    let expected = last
        .i(0)
        .unwrap()
        .matmul(&lm_head.t().unwrap())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert!(max_abs_diff(&out.logits, &expected).unwrap() < 1e-5);

    // Tied (the real Qwen3-4B): the embedding is the output projection even if lm_head exists.
    cfg.tie_word_embeddings = true;
    let tied = Qwen3::new(
        &cfg,
        VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let out = tied.forward_with(Input::Ids(&ids), None, opts).unwrap();
    let embed = &tensors["model.embed_tokens.weight"];
    let expected = out
        .hidden_states
        .last()
        .unwrap()
        .i(0)
        .unwrap()
        .matmul(&embed.t().unwrap())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert!(max_abs_diff(&out.logits, &expected).unwrap() < 1e-5);
}
