//! After `backward()` the gradient store holds entries for the trainable variables only, and every
//! trainable variable has one: frozen weights, RoPE tables, masks and text embeddings cost nothing.

use std::collections::HashSet;
use std::path::PathBuf;

use candle_core::{backprop::GradStore, DType, Device, Tensor, TensorId, Var};
use roomplan_trainer::model::lora::{Lora, LoraConfig};
use roomplan_trainer::model::qwen3::{Input, Qwen3};
use roomplan_trainer::parity::shared_dir;

fn fixture() -> PathBuf {
    shared_dir().join("parity").join("qwen3")
}

fn model(dtype: DType) -> Qwen3 {
    let base = fixture().join("base");
    Qwen3::load(
        &base.join("config.json"),
        &[base.join("model.safetensors")],
        dtype,
        &Device::Cpu,
    )
    .unwrap()
}

fn inputs() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("inputs.safetensors"), &Device::Cpu).unwrap()
}

/// The fixture's training loss (`train.input_ids`, `train.labels`).
fn fixture_loss(m: &Qwen3) -> Tensor {
    let inp = inputs();
    m.loss(
        Input::Ids(&inp["train.input_ids"]),
        None,
        &inp["train.labels"],
        true,
    )
    .unwrap()
}

fn assert_only(grads: &GradStore, vars: &[Var]) {
    let stored: HashSet<TensorId> = grads.get_ids().copied().collect();
    let wanted: HashSet<TensorId> = vars.iter().map(|v| v.as_tensor().id()).collect();
    assert_eq!(
        stored.len(),
        wanted.len(),
        "gradient store holds {} entries for {} trainable vars",
        stored.len(),
        wanted.len()
    );
    assert_eq!(stored, wanted);
    for v in vars {
        let g = grads.get(v.as_tensor()).unwrap();
        assert_eq!(g.shape(), v.shape());
        assert_eq!(g.dtype(), DType::F32);
    }
}

#[test]
fn peft_adapter_on_qkvo_gets_the_only_gradients() {
    for dtype in [DType::F32, DType::BF16] {
        let mut m = model(dtype);
        let lora = Lora::load(&fixture().join("lora"), m.config(), &Device::Cpu).unwrap();
        lora.attach(&mut m).unwrap();
        let loss = fixture_loss(&m);
        let grads = loss.backward().unwrap();
        let vars: Vec<Var> = lora.vars().into_iter().map(|(_, v)| v).collect();
        assert_eq!(vars.len(), 16);
        assert_only(&grads, &vars);
        // Non-zero everywhere: B was trained, so every A and B receives signal.
        for v in &vars {
            let g = grads.get(v.as_tensor()).unwrap();
            let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(n > 0.0, "{dtype:?}: zero gradient");
        }
    }
}

/// The fixture's prompt with 4 injected embeddings (a variable), twice: the second row with its
/// first two positions as padding. Returns (embeddings, injected, mask, labels).
fn padded_injected_batch(m: &Qwen3) -> (Tensor, Var, Tensor, Tensor) {
    let inp = inputs();
    let injected = Var::from_tensor(&inp["embeds.injected"]).unwrap();
    let ids = Tensor::cat(
        &[
            &inp["embeds.prefix_ids"],
            &Tensor::zeros((1, 4), DType::I64, &Device::Cpu).unwrap(),
            &inp["embeds.suffix_ids"],
        ],
        1,
    )
    .unwrap();
    let embeds = m
        .embed_with_slots(&ids, &[vec![3, 4, 5, 6]], injected.as_tensor())
        .unwrap();
    let embeds = Tensor::cat(&[&embeds, &embeds], 0).unwrap();
    let mask = Tensor::new(
        &[[1u8; 11], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::new(
        &[[-100i64, -100, -100, -100, -100, -100, -100, 5, 6, 7, 8]; 2],
        &Device::Cpu,
    )
    .unwrap();
    (embeds, injected, mask, labels)
}

#[test]
fn mlp_targets_injected_embeddings_padding_and_dropout() {
    let mut m = model(DType::F32);
    // gate_proj without up_proj: the product gate·up has one trainable factor only.
    let cfg = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        lora_dropout: 0.1,
        target_modules: vec!["v_proj".into(), "gate_proj".into(), "down_proj".into()],
        ..LoraConfig::default()
    };
    let lora = Lora::init(cfg, m.config(), &Device::Cpu, 7).unwrap();
    // PEFT's B starts at zero; give it values so every path carries gradient.
    for (_, v) in lora.vars() {
        if v.dims2().unwrap().1 == 2 {
            v.set(&(v.as_tensor().ones_like().unwrap() * 0.01).unwrap())
                .unwrap();
        }
    }
    lora.attach(&mut m).unwrap();
    let (embeds, injected, mask, labels) = padded_injected_batch(&m);
    let loss = m
        .loss(Input::Embeds(&embeds), Some(&mask), &labels, true)
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut vars: Vec<Var> = lora.vars().into_iter().map(|(_, v)| v).collect();
    assert_eq!(vars.len(), 2 * 3 * 2);
    vars.push(injected);
    assert_only(&grads, &vars);
}

#[test]
fn plain_matmul_mode_stores_frozen_weight_gradients() {
    // The benchmark's baseline: candle's matmul backward also produces a gradient per frozen weight.
    let mut m = model(DType::F32);
    m.set_sparing_grads(false);
    let lora = Lora::load(&fixture().join("lora"), m.config(), &Device::Cpu).unwrap();
    lora.attach(&mut m).unwrap();
    let loss = fixture_loss(&m);
    let grads = loss.backward().unwrap();
    // Frozen weights downstream of the first adapter now receive gradients: layer 0's o_proj and
    // MLP (the q/k/v inputs of layer 0 do not depend on any variable) and all 7 of layer 1.
    assert!(
        grads.get_ids().count() >= 16 + 11,
        "only {} entries",
        grads.get_ids().count()
    );
}

/// Loss and gradients (every adapter tensor and the injected embeddings) of a padded batch, with
/// or without gradient checkpointing, with the fused kernels or the composite ops.
fn padded_batch_grads(
    checkpointing: bool,
    fused: bool,
    dropout: f64,
) -> anyhow::Result<(f32, Vec<Tensor>)> {
    padded_batch_grads_on(
        &["q_proj", "v_proj", "gate_proj", "down_proj"],
        checkpointing,
        fused,
        dropout,
    )
}

/// [`padded_batch_grads`] with adapters on `targets` (four modules).
fn padded_batch_grads_on(
    targets: &[&str],
    checkpointing: bool,
    fused: bool,
    dropout: f64,
) -> anyhow::Result<(f32, Vec<Tensor>)> {
    let mut m = model(DType::F32);
    m.set_gradient_checkpointing(checkpointing);
    m.set_fused_kernels(fused);
    let cfg = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        lora_dropout: dropout,
        target_modules: targets.iter().map(|t| t.to_string()).collect(),
        ..LoraConfig::default()
    };
    let lora = Lora::init(cfg, m.config(), &Device::Cpu, 5).unwrap();
    // Distinct values in every B (PEFT's start at zero), so every path carries gradient.
    for (i, (_, v)) in lora.vars().into_iter().enumerate() {
        if v.dims2().unwrap().1 == 2 {
            let vals: Vec<f32> = (0..v.elem_count())
                .map(|k| ((k * 7 + i) % 11) as f32 * 0.003 - 0.015)
                .collect();
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    lora.attach(&mut m).unwrap();
    let (embeds, injected, mask, labels) = padded_injected_batch(&m);
    let loss = m.loss(Input::Embeds(&embeds), Some(&mask), &labels, true)?;
    let grads = loss.backward().unwrap();
    let mut vars: Vec<Var> = lora.vars().into_iter().map(|(_, v)| v).collect();
    vars.push(injected);
    assert_only(&grads, &vars);
    let g = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    Ok((loss.to_scalar::<f32>().unwrap(), g))
}

/// Largest max|a − b| / max|a| over paired gradients, after checking each is non-zero.
fn max_grad_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    assert_eq!(a.len(), 4 * 2 * 2 + 1);
    let mut worst = 0f32;
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        let scale: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(scale > 0.0, "gradient {i} is zero");
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        worst = worst.max(d / scale);
    }
    worst
}

#[test]
fn gradient_checkpointing_gives_the_same_loss_and_gradients() {
    for fused in [true, false] {
        let (loss, plain) = padded_batch_grads(false, fused, 0.0).unwrap();
        let (loss_ckpt, ckpt) = padded_batch_grads(true, fused, 0.0).unwrap();
        assert_eq!(loss, loss_ckpt);
        let d = max_grad_diff(&plain, &ckpt);
        assert!(
            d <= 1e-7,
            "fused {fused}: gradients differ by {d} (relative) with checkpointing"
        );
    }
}

#[test]
fn fused_kernels_give_the_loss_and_gradients_of_the_composite_ops() {
    let (loss_f, fused) = padded_batch_grads(false, true, 0.0).unwrap();
    let (loss_c, composite) = padded_batch_grads(false, false, 0.0).unwrap();
    assert!((loss_f - loss_c).abs() <= 1e-6, "loss {loss_f} vs {loss_c}");
    let d = max_grad_diff(&fused, &composite);
    println!("fused vs composite: largest relative gradient difference {d}");
    assert!(d <= 1e-5, "gradients differ by {d} (relative)");
}

/// Adapters on the attention projections only (the step bench's choice): the MLP's gate and up
/// projections and their gating run as one fused op, q and k through the fused norm + RoPE, V
/// straight into the attention.
#[test]
fn fused_kernels_match_the_composite_ops_with_adapters_on_attention_only() {
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj"];
    let (loss_f, fused) = padded_batch_grads_on(&targets, false, true, 0.0).unwrap();
    let (loss_c, composite) = padded_batch_grads_on(&targets, false, false, 0.0).unwrap();
    // A few ulps of the loss (≈ 8): the fused softmax's exp is not libm's.
    let tol = 4.0 * f32::EPSILON * loss_c.abs();
    assert!(
        (loss_f - loss_c).abs() <= tol,
        "loss {loss_f} vs {loss_c} (tolerance {tol})"
    );
    let d = max_grad_diff(&fused, &composite);
    println!("fused vs composite (attention adapters): largest relative gradient difference {d}");
    assert!(d <= 1e-5, "gradients differ by {d} (relative)");
    let (loss_ckpt, ckpt) = padded_batch_grads_on(&targets, true, true, 0.0).unwrap();
    assert_eq!(loss_f, loss_ckpt);
    let d = max_grad_diff(&fused, &ckpt);
    assert!(
        d <= 1e-7,
        "gradients differ by {d} (relative) with checkpointing"
    );
}

#[test]
fn gradient_checkpointing_refuses_lora_dropout() {
    let err = padded_batch_grads(true, true, 0.1).unwrap_err();
    assert!(format!("{err:#}").contains("dropout"), "{err:#}");
}
