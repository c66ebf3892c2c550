//! AdamW with parameter groups: the same numbers as `torch.optim.AdamW` (golden values written by
//! `tests/golden/adamw_torch.py`), and a saved state that resumes to bit-identical weights.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use roomplan_trainer::train::optim::{
    clip_grad_norm, decay_groups, AdamW, AdamWConfig, ParamGroup, STATE_FORMAT,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    w0: Vec<f32>,
    b0: Vec<f32>,
    groups: Vec<GoldenGroup>,
    betas: (f64, f64),
    eps: f64,
    steps: Vec<GoldenStep>,
    clip_grad_norm: Vec<GoldenClip>,
    final_step_counts: FinalSteps,
}

#[derive(Deserialize)]
struct GoldenGroup {
    name: String,
    lr: f64,
    weight_decay: f64,
}

#[derive(Deserialize)]
struct GoldenStep {
    grad_w: Vec<f32>,
    grad_b: Option<Vec<f32>>,
    lr_factor: f64,
    w: Vec<f32>,
    b: Vec<f32>,
}

#[derive(Deserialize)]
struct GoldenClip {
    max_norm: f64,
    grad_w: Vec<f32>,
    grad_b: Vec<f32>,
    total_norm: f64,
    clipped_w: Vec<f32>,
    clipped_b: Vec<f32>,
}

#[derive(Deserialize)]
struct FinalSteps {
    w: u64,
    b: u64,
}

fn golden() -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/adamw_torch.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn var(values: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_slice(values, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Gradients equal to `g` for each `(var, g)`: the gradient of Σ var·g.
fn grads_of(pairs: &[(&Var, &[f32])]) -> GradStore {
    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
    for (v, g) in pairs {
        let g = Tensor::from_slice(g, v.shape(), &Device::Cpu).unwrap();
        loss = (loss + (v.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn flat(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn golden_optimizer(g: &Golden, w: &Var, b: &Var) -> AdamW {
    let group = |i: usize, v: &Var, name: &str| ParamGroup {
        name: g.groups[i].name.clone(),
        config: AdamWConfig {
            lr: g.groups[i].lr,
            beta1: g.betas.0,
            beta2: g.betas.1,
            eps: g.eps,
            weight_decay: g.groups[i].weight_decay,
        },
        vars: vec![(name.to_string(), v.clone())],
    };
    AdamW::with_groups(vec![group(0, w, "w"), group(1, b, "b")]).unwrap()
}

fn golden_step(opt: &mut AdamW, step: &GoldenStep, w: &Var, b: &Var) {
    opt.set_lr_factor(step.lr_factor);
    let grads = match &step.grad_b {
        Some(gb) => grads_of(&[(w, &step.grad_w), (b, gb)]),
        None => grads_of(&[(w, &step.grad_w)]),
    };
    opt.step(&grads).unwrap();
}

#[test]
fn matches_torch_adamw_with_groups_missing_gradients_and_lr_factors() {
    let g = golden();
    let (w, b) = (var(&g.w0, &[2, 3]), var(&g.b0, &[3]));
    let mut opt = golden_optimizer(&g, &w, &b);
    for (i, step) in g.steps.iter().enumerate() {
        golden_step(&mut opt, step, &w, &b);
        let (dw, db) = (
            max_abs_diff(&flat(&w), &step.w),
            max_abs_diff(&flat(&b), &step.b),
        );
        assert!(dw <= 2e-7 && db <= 2e-7, "step {i}: w {dw:e}, b {db:e}");
    }
    // b had no gradient at one step: torch counts 4 steps for it, 5 for w; a saved state says so.
    assert_eq!((g.final_step_counts.w, g.final_step_counts.b), (5, 4));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    opt.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let groups: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["groups"]).unwrap();
    assert_eq!(groups[0]["vars"], serde_json::json!([["w", 5]]));
    assert_eq!(groups[1]["vars"], serde_json::json!([["b", 4]]));
}

#[test]
fn a_saved_state_resumes_to_identical_weights() {
    let g = golden();
    // Uninterrupted run.
    let (w, b) = (var(&g.w0, &[2, 3]), var(&g.b0, &[3]));
    let mut opt = golden_optimizer(&g, &w, &b);
    for step in &g.steps {
        golden_step(&mut opt, step, &w, &b);
    }
    // Interrupted after 3 steps (one of them without b's gradient): weights and state saved, a new
    // process builds a fresh optimizer and loads them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    let (w1, b1) = (var(&g.w0, &[2, 3]), var(&g.b0, &[3]));
    let mut first = golden_optimizer(&g, &w1, &b1);
    for step in &g.steps[..3] {
        golden_step(&mut first, step, &w1, &b1);
    }
    first.save(&path).unwrap();
    let (w2, b2) = (var(&flat(&w1), &[2, 3]), var(&flat(&b1), &[3]));
    let mut resumed = golden_optimizer(&g, &w2, &b2);
    resumed.load(&path).unwrap();
    assert_eq!(resumed.steps_taken(), 3);
    for step in &g.steps[3..] {
        golden_step(&mut resumed, step, &w2, &b2);
    }
    assert_eq!(flat(&w2), flat(&w));
    assert_eq!(flat(&b2), flat(&b));
    // Without the state the continuation differs (the test can tell).
    let (w3, b3) = (var(&flat(&w1), &[2, 3]), var(&flat(&b1), &[3]));
    let mut fresh = golden_optimizer(&g, &w3, &b3);
    for step in &g.steps[3..] {
        golden_step(&mut fresh, step, &w3, &b3);
    }
    assert_ne!(flat(&w3), flat(&w));
}

#[test]
fn loading_a_state_that_does_not_fit_names_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    let cfg = AdamWConfig::default();
    let vars = vec![
        ("proj.weight".to_string(), var(&[1.0; 4], &[2, 2])),
        ("proj.bias".to_string(), var(&[0.0; 2], &[2])),
    ];
    AdamW::with_groups(decay_groups(vars.clone(), cfg))
        .unwrap()
        .save(&path)
        .unwrap();
    let shown = path.display().to_string();
    let load_err = |mut opt: AdamW| format!("{:#}", opt.load(&path).unwrap_err());

    // One group instead of two.
    let err = load_err(AdamW::new(vars.clone(), cfg).unwrap());
    assert_eq!(
        err,
        format!(
            "{shown}: the saved optimizer does not fit this model: parameter groups \
             [\"decay\", \"no_decay\"], this optimizer has [\"all\"]"
        )
    );
    // A renamed variable.
    let renamed = vec![
        ("proj.weight".to_string(), var(&[1.0; 4], &[2, 2])),
        ("head.bias".to_string(), var(&[0.0; 2], &[2])),
    ];
    let err = load_err(AdamW::with_groups(decay_groups(renamed, cfg)).unwrap());
    assert_eq!(
        err,
        format!(
            "{shown}: the saved optimizer does not fit this model: group \"no_decay\": missing \
             variables [\"head.bias\"], unexpected variables [\"proj.bias\"]"
        )
    );
    // Same names, another shape.
    let reshaped = vec![
        ("proj.weight".to_string(), var(&[1.0; 6], &[2, 3])),
        ("proj.bias".to_string(), var(&[0.0; 2], &[2])),
    ];
    let err = load_err(AdamW::with_groups(decay_groups(reshaped, cfg)).unwrap());
    assert_eq!(
        err,
        format!("{shown}: tensor exp_avg.proj.weight is F32 [2, 2], expected F32 [2, 3]")
    );
    // Not an optimizer state.
    let other = dir.path().join("weights.safetensors");
    let t = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("x", t)]), &other).unwrap();
    let err = format!(
        "{:#}",
        AdamW::new(vars, cfg).unwrap().load(&other).unwrap_err()
    );
    assert_eq!(
        err,
        format!(
            "{}: optimizer state format \"(none)\", expected \"{STATE_FORMAT}\"",
            other.display()
        )
    );
}

#[test]
fn clip_grad_norm_matches_torch() {
    let g = golden();
    let (w, b) = (var(&g.w0, &[2, 3]), var(&g.b0, &[3]));
    let vars = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
    for case in &g.clip_grad_norm {
        let mut grads = grads_of(&[(&w, &case.grad_w), (&b, &case.grad_b)]);
        let norm = clip_grad_norm(&mut grads, &vars, case.max_norm).unwrap();
        assert!(
            (norm - case.total_norm).abs() < 1e-5,
            "{norm} vs {}",
            case.total_norm
        );
        let got = |v: &Var| -> Vec<f32> {
            let t = grads.get(v.as_tensor()).unwrap();
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        let (dw, db) = (
            max_abs_diff(&got(&w), &case.clipped_w),
            max_abs_diff(&got(&b), &case.clipped_b),
        );
        assert!(
            dw <= 1e-7 && db <= 1e-7,
            "max_norm {}: {dw:e} {db:e}",
            case.max_norm
        );
    }
    // The golden cases cover both sides of the threshold.
    let clipped: Vec<bool> = g
        .clip_grad_norm
        .iter()
        .map(|c| c.clipped_w != c.grad_w)
        .collect();
    assert_eq!(clipped, [true, false]);
}
