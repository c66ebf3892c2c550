//! A tiny fused model end to end: the tiny VGGT aggregator (conv parity weights) encodes views,
//! a Perceiver and a geometry head fill the `<image>` slots of ChatML prompts encoded by a real
//! byte-level BPE tokenizer, and the tiny Qwen3 (parity weights, vocabulary grown to the
//! tokenizer's) with LoRA computes the answer-only loss. A few AdamW steps on a fixed batch lower
//! the loss; gradients reach exactly the Perceiver, the geometry head and the LoRA weights.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use roomplan_trainer::model::chat::{tiny_tokenizer_json, ChatTokenizer, Message, IGNORE_INDEX};
use roomplan_trainer::model::fused::{encode_views, FusedConfig, FusedExample, FusedModel};
use roomplan_trainer::model::geometry_head::{GeometryHeadConfig, ViewGeometry};
use roomplan_trainer::model::lora::{Lora, LoraConfig};
use roomplan_trainer::train::optim::{AdamW, AdamWConfig};
use roomplan_trainer::parity::shared_dir;
use roomplan_trainer::parity::vggt::folder_config;
use roomplan_trainer::model::perceiver::PerceiverConfig;
use roomplan_trainer::model::qwen3::{self, Qwen3};
use roomplan_trainer::model::vggt_load::load_aggregator;

const HIDDEN: usize = 64;

/// The Qwen3 parity model with its embedding grown to `vocab` rows (new rows small and fixed),
/// written as a real model folder so it loads through `Qwen3::load`.
fn tiny_qwen(dir: &Path, vocab: usize) -> Qwen3 {
    let base = shared_dir().join("parity/qwen3/base");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    let old_vocab = config["vocab_size"].as_u64().unwrap() as usize;
    config["vocab_size"] = vocab.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    let embed = tensors.remove("model.embed_tokens.weight").unwrap();
    let extra: Vec<f32> = (0..(vocab - old_vocab) * HIDDEN)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
        .collect();
    let extra = Tensor::from_vec(extra, (vocab - old_vocab, HIDDEN), &Device::Cpu).unwrap();
    tensors.insert(
        "model.embed_tokens.weight".into(),
        Tensor::cat(&[embed, extra], 0).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    Qwen3::load(
        &dir.join("config.json"),
        &[dir.join("model.safetensors")],
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn view(i: usize) -> ViewGeometry {
    let f = i as f32;
    ViewGeometry {
        rotation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        translation: [0.3 * f, 0.0, -0.2 * f],
        intrinsics: [50.0, 0.0, 28.0, 0.0, 50.0, 21.0, 0.0, 0.0, 1.0],
        width: 56,
        height: 42,
        depth_hist: vec![0.1, 0.6, 0.3, 0.0],
        valid_fraction: 0.9,
    }
}

fn images(s: usize, seed: usize) -> Tensor {
    let n = s * 3 * 42 * 56;
    let v: Vec<f32> = (0..n)
        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 999.0)
        .collect();
    Tensor::from_vec(v, (s, 3, 42, 56), &Device::Cpu).unwrap()
}

struct Setup {
    model: FusedModel,
    batch: Vec<FusedExample>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_json = tiny_tokenizer_json(&[("Ġ", "t"), ("h", "e")]).unwrap();
    let tokenizer = ChatTokenizer::new(tokenizer_json.parse().unwrap()).unwrap();
    let vocab = tokenizer.tokenizer().get_vocab_size(true);
    let llm = tiny_qwen(dir.path(), vocab);
    let lora_cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..LoraConfig::default()
    };
    let lora = Lora::init(lora_cfg, llm.config(), &Device::Cpu, 7).unwrap();

    let vggt_dir = shared_dir().join("parity/vggt/conv");
    let vggt_cfg = folder_config(&vggt_dir).unwrap();
    let vggt = load_aggregator(
        vggt_dir.join("weights.safetensors"),
        &vggt_cfg,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();

    let cfg = FusedConfig {
        perceiver: PerceiverConfig {
            input_dim: vggt_cfg.output_dim(),
            latent_dim: 32,
            num_latents: 4,
            num_heads: 4,
            num_layers: 2,
            ffn_dim: 64,
            output_dim: HIDDEN,
            layer_norm_eps: 1e-5,
        },
        geometry: GeometryHeadConfig {
            depth_bins: 4,
            hidden_dim: 32,
            tokens_per_view: 1,
            output_dim: HIDDEN,
        },
    };
    let model = FusedModel::new(&cfg, llm, lora).unwrap();

    let last = vggt_cfg.depth - 1;
    let mut batch = vec![];
    // Two views with geometry, and one view without: different slot and token counts.
    for (views, geometry, question, answer) in [
        (
            2,
            Some(vec![view(0), view(1)]),
            "<image>\nWhere is the chair?",
            "the chair is by the window",
        ),
        (1, None, "What is this room?\n<image>", "a kitchen"),
    ] {
        let slots = model.image_slots(geometry.as_ref().map_or(0, Vec::len));
        let messages = [Message::user(question), Message::assistant(answer)];
        let text = tokenizer.encode_training(&messages, slots).unwrap();
        let vision = encode_views(&vggt, &images(views, views), &[last]).unwrap();
        assert_eq!(vision.dims(), [views * 17, 128]);
        batch.push(FusedExample {
            text,
            vision,
            geometry,
        });
    }
    Setup {
        model,
        batch,
        _dir: dir,
    }
}

#[test]
fn slots_hold_geometry_then_latents_and_only_answers_are_labelled() {
    let Setup { model, batch, .. } = setup();
    assert_eq!(model.image_slots(2), 2 + 4);
    let (embeds, mask, labels) = model.build_inputs(&batch).unwrap();
    let longest = batch.iter().map(|e| e.text.ids.len()).max().unwrap();
    assert_eq!(embeds.dims(), [2, longest, HIDDEN]);
    let labels: Vec<Vec<i64>> = labels.to_vec2().unwrap();
    let mask: Vec<Vec<u8>> = mask.to_vec2().unwrap();
    for (row, ex) in batch.iter().enumerate() {
        let n = ex.text.ids.len();
        assert_eq!(&labels[row][..n], ex.text.labels.as_slice());
        assert!(labels[row][n..].iter().all(|&l| l == IGNORE_INDEX));
        assert_eq!(mask[row].iter().filter(|&&m| m == 1).count(), n);
        // Text positions keep the token embeddings; slots do not.
        let ids = Tensor::new(ex.text.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let text = model.llm().embed(&ids).unwrap().squeeze(0).unwrap();
        let ours = embeds.get(row).unwrap().narrow(0, 0, n).unwrap();
        let same: Vec<f32> = (ours - &text)
            .unwrap()
            .abs()
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (pos, diff) in same.iter().enumerate() {
            let is_slot = ex.text.image_positions.contains(&pos);
            assert_eq!(*diff == 0.0, !is_slot, "row {row} position {pos}");
        }
    }
    // The first row's first two slots are the geometry tokens of its two views.
    let first_slot = batch[0].text.image_positions[0];
    assert_eq!(batch[0].text.image_positions.len(), 6);
    assert_eq!(batch[1].text.image_positions.len(), 4);
    let _ = first_slot;
    // Answer tokens exist in both rows and are all labelled.
    for ex in &batch {
        assert!(ex.text.labels.iter().any(|&l| l != IGNORE_INDEX));
    }
}

#[test]
fn a_few_adamw_steps_lower_the_loss_and_only_trainables_get_gradients() {
    let Setup { model, batch, .. } = setup();
    let vars = model.trainable_vars();
    let mut optimizer = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let mut losses = vec![];
    for step in 0..8 {
        let loss = model.loss(&batch).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        if step == 1 {
            // After one update LoRA B is non-zero, so every trainable variable has a non-zero
            // gradient (at step 0, A's gradient is exactly zero because B starts at zero).
            for (name, var) in &vars {
                common::assert_nonzero_gradient(&grads, name, var);
            }
            let perceiver = vars
                .iter()
                .filter(|(n, _)| n.starts_with("perceiver."))
                .count();
            let geometry = vars
                .iter()
                .filter(|(n, _)| n.starts_with("geometry_head."))
                .count();
            let lora = vars.iter().filter(|(n, _)| n.contains(".lora_")).count();
            assert_eq!(
                (perceiver, geometry, lora),
                (1 + 2 + 2 * 28 + 4, 4, 2 * 4 * 2)
            );
            assert_eq!(vars.len(), perceiver + geometry + lora);
            // Frozen: the Qwen3 projections and the (detached) VGGT tokens get nothing.
            for layer in 0..model.llm().config().num_hidden_layers {
                for module in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                    let path = qwen3::projection_path(layer, module);
                    let w = model.llm().projection_weight(&path).unwrap();
                    assert!(grads.get(w).is_none(), "{path} got a gradient");
                }
            }
            for ex in &batch {
                assert!(grads.get(&ex.vision).is_none());
            }
        }
        optimizer.step(&grads).unwrap();
    }
    println!("losses: {losses:?}");
    assert_eq!(optimizer.steps_taken(), 8);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[7] < 0.8 * losses[0], "loss did not fall: {losses:?}");
}
