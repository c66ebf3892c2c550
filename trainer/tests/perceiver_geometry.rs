//! Perceiver resampler and geometry head: shapes, masking, feature layout, and that every
//! trainable variable receives a gradient (candle's fused ops would silently give none).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use roomplan_trainer::model::geometry_head::{GeometryHead, GeometryHeadConfig, ViewGeometry};
use roomplan_trainer::parity::max_abs_diff;
use roomplan_trainer::model::perceiver::{Perceiver, PerceiverConfig};

fn tiny_perceiver_config() -> PerceiverConfig {
    PerceiverConfig {
        input_dim: 12,
        latent_dim: 16,
        num_latents: 5,
        num_heads: 4,
        num_layers: 2,
        ffn_dim: 24,
        output_dim: 20,
        layer_norm_eps: 1e-5,
    }
}

fn tokens(b: usize, n: usize, d: usize, seed: usize) -> Tensor {
    let v: Vec<f32> = (0..b * n * d)
        .map(|i| (((i + seed) * 2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (b, n, d), &Device::Cpu).unwrap()
}

/// Asserts that every variable of `varmap` got a gradient with a non-zero entry.
fn assert_all_vars_get_gradients(varmap: &VarMap, loss: &Tensor) -> usize {
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        common::assert_nonzero_gradient(&grads, name, var);
    }
    data.len()
}

#[test]
fn perceiver_maps_any_token_count_to_fixed_latents() {
    let varmap = VarMap::new();
    let cfg = tiny_perceiver_config();
    let model = Perceiver::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for n in [1, 7, 30] {
        let out = model.forward(&tokens(3, n, 12, n), None).unwrap();
        assert_eq!(out.dims(), [3, 5, 20]);
    }
    let err = model
        .forward(&tokens(1, 4, 11, 0), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vision tokens are 11 wide, the config says 12"),
        "{err}"
    );
    // latents + input_proj (2) + per layer (4 norms × 2 + 2 attentions × 8 + mlp 4) + out norm/proj (4).
    assert_eq!(varmap.all_vars().len(), 1 + 2 + 2 * (8 + 16 + 4) + 4);
}

#[test]
fn padded_tokens_are_ignored_under_the_mask() {
    let varmap = VarMap::new();
    let model = Perceiver::new(
        &tiny_perceiver_config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let real = tokens(1, 6, 12, 1);
    let alone = model.forward(&real, None).unwrap();
    // Same sample padded with 4 garbage tokens, batched with a full second sample.
    let garbage = (tokens(1, 4, 12, 99) * 50.0).unwrap();
    let padded = Tensor::cat(&[&real, &garbage], 1).unwrap();
    let other = tokens(1, 10, 12, 7);
    let batch = Tensor::cat(&[&padded, &other], 0).unwrap();
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 1., 1., 0., 0., 0., 0.], [1.; 10]],
        &Device::Cpu,
    )
    .unwrap();
    let out = model.forward(&batch, Some(&mask)).unwrap();
    assert!(max_abs_diff(&out.narrow(0, 0, 1).unwrap(), &alone).unwrap() < 1e-5);
    let other_alone = model.forward(&other, None).unwrap();
    assert!(max_abs_diff(&out.narrow(0, 1, 1).unwrap(), &other_alone).unwrap() < 1e-5);
    // Without the mask the garbage does change the first sample.
    let unmasked = model.forward(&padded, None).unwrap();
    assert!(max_abs_diff(&unmasked, &alone).unwrap() > 1e-3);
    let bad_mask = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .forward(&batch, Some(&bad_mask))
        .unwrap_err()
        .to_string()
        .contains("mask must be [2, 10]"));
}

#[test]
fn every_perceiver_variable_receives_a_gradient() {
    let varmap = VarMap::new();
    let model = Perceiver::new(
        &tiny_perceiver_config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 0.], [1.; 4]], &Device::Cpu).unwrap();
    let out = model.forward(&tokens(2, 4, 12, 3), Some(&mask)).unwrap();
    let loss = out.sqr().unwrap().mean_all().unwrap();
    assert_eq!(assert_all_vars_get_gradients(&varmap, &loss), 63);
}

#[test]
fn config_defaults_are_perceiver_small_and_unknown_fields_are_rejected() {
    let cfg: PerceiverConfig =
        serde_json::from_str(r#"{"latent_dim": 512, "ffn_dim": 2048}"#).unwrap();
    assert_eq!(
        (cfg.num_latents, cfg.num_heads, cfg.num_layers),
        (128, 8, 6)
    );
    assert_eq!(
        (cfg.latent_dim, cfg.ffn_dim, cfg.input_dim, cfg.output_dim),
        (512, 2048, 2048, 2560)
    );
    let err = serde_json::from_str::<PerceiverConfig>(r#"{"latents": 64}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `latents`"), "{err}");
    let bad = PerceiverConfig {
        latent_dim: 30,
        ..tiny_perceiver_config()
    };
    let err = Perceiver::new(&bad, VarBuilder::zeros(DType::F32, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latent_dim 30 is not divisible by num_heads 4"),
        "{err}"
    );
}

fn view(i: usize) -> ViewGeometry {
    let f = i as f32;
    ViewGeometry {
        rotation: [1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0],
        translation: [0.5 * f, 1.5, -2.0],
        intrinsics: [400.0, 0.0, 259.0, 0.0, 410.0, 195.5, 0.0, 0.0, 1.0],
        width: 518,
        height: 392,
        depth_hist: vec![0.25, 0.5, 0.25, 0.0],
        valid_fraction: 0.75,
    }
}

fn geometry_config() -> GeometryHeadConfig {
    GeometryHeadConfig {
        depth_bins: 4,
        hidden_dim: 16,
        tokens_per_view: 2,
        output_dim: 8,
    }
}

#[test]
fn geometry_features_are_laid_out_as_documented() {
    let f = view(2).features().unwrap();
    let expected = [
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        -1.0,
        0.0,
        1.0,
        0.0, // R
        1.0,
        1.5,
        -2.0, // t
        400.0 / 518.0,
        410.0 / 392.0,
        259.0 / 518.0,
        195.5 / 392.0, // fx/W fy/H cx/W cy/H
        0.25,
        0.5,
        0.25,
        0.0,  // depth histogram
        0.75, // valid fraction
    ];
    assert_eq!(f, expected);
    assert_eq!(geometry_config().input_dim(), expected.len());
    let mut bad = view(0);
    bad.translation[1] = f32::NAN;
    assert!(bad
        .features()
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
    bad = view(0);
    bad.width = 0;
    assert!(bad
        .features()
        .unwrap_err()
        .to_string()
        .contains("0x392 is empty"));
}

#[test]
fn geometry_head_gives_tokens_per_view_and_none_without_geometry() {
    let varmap = VarMap::new();
    let head = GeometryHead::new(
        &geometry_config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert!(head.forward(&[], &Device::Cpu).unwrap().is_none());
    let views = [view(0), view(1), view(2)];
    let tokens = head.forward(&views, &Device::Cpu).unwrap().unwrap();
    assert_eq!(tokens.dims(), [6, 8]);
    // Each view's tokens depend on that view only.
    let single = head.forward(&views[1..2], &Device::Cpu).unwrap().unwrap();
    assert!(max_abs_diff(&tokens.narrow(0, 2, 2).unwrap(), &single).unwrap() < 1e-6);
    let mut wrong = view(0);
    wrong.depth_hist.push(0.0);
    let err = head
        .forward(&[view(0), wrong], &Device::Cpu)
        .unwrap_err()
        .to_string();
    // candle errors carry a backtrace after the message when RUST_BACKTRACE is set.
    assert_eq!(
        err.lines().next().unwrap(),
        "view 1: depth histogram has 5 bins, the geometry head expects 4"
    );
    let loss = tokens.sqr().unwrap().sum_all().unwrap();
    assert_eq!(assert_all_vars_get_gradients(&varmap, &loss), 4);
}
