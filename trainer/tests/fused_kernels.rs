//! The fused kernels (attention, RMSNorm, SwiGLU, RoPE, cross-entropy, LoRA projection) against
//! the composite candle ops they replace: values and gradients (inputs and weights), with causal, padding and KV-cache-offset masks, GQA, and
//! head sizes that are not multiples of the kernels' 8-lane loops. The whole Qwen3 + LoRA loss and
//! its gradients with the kernels on and off: `qwen3_grads.rs`.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use roomplan_trainer::model::kernels::{self, KeyMask};
use roomplan_trainer::parity::max_abs_diff;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&random(shape, seed)).unwrap()
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    max_abs_diff(a, b).unwrap()
}

fn abs_max(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// Masks of three rows: all real, left-padded by 4, right-padded by 3.
fn padded_rows(tk: usize) -> Vec<Vec<bool>> {
    vec![
        vec![true; tk],
        (0..tk).map(|j| j >= 4).collect(),
        (0..tk).map(|j| j + 3 < tk).collect(),
    ]
}

/// Runs fused and composite attention on the same variables, a weighted-sum loss on each, and
/// compares outputs and the gradients of q, k and v.
/// The gradients of the loss `sum(y · weights)`: weights drawn at random make every output element
/// count differently, so a wrong gradient anywhere shows.
fn weighted_backward(y: &Tensor, weights: &Tensor) -> GradStore {
    (y * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// The attention output and the gradients of q, k and v under the loss `sum(out · weights)`.
fn attention_grads(
    out: Tensor,
    weights: &Tensor,
    [q, k, v]: [&Var; 3],
) -> (Tensor, Tensor, Tensor, Tensor) {
    let grads = weighted_backward(&out, weights);
    let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
    (out, g(q), g(k), g(v))
}

/// The fused attention's output and q/k/v gradients against the composite's: output within 1e-6,
/// gradients within 2e-6 and not (nearly) zero.
fn assert_attention_close(ctx: &str, fused: [&Tensor; 4], composite: [&Tensor; 4]) {
    let d = diff(fused[0], composite[0]);
    assert!(d <= 1e-6, "{ctx}: output {d}");
    for (i, name) in ["q", "k", "v"].into_iter().enumerate() {
        let (f, c) = (fused[i + 1], composite[i + 1]);
        let dd = diff(f, c);
        assert!(dd <= 2e-6, "{ctx}: grad {name} differs by {dd}");
        assert!(abs_max(c) > 1e-2, "{ctx}: grad {name} is (nearly) zero");
    }
}

fn check_attention(hq: usize, hkv: usize, tq: usize, tk: usize, d: usize, seed: u64) {
    let b = 3;
    let mask = KeyMask::new(padded_rows(tk), tk - tq).unwrap();
    // Scores of a few units, so the softmax is far from uniform.
    let q = Var::from_tensor(&(random(&[b, hq, tq, d], seed) * 3.0).unwrap()).unwrap();
    let k = var(&[b, hkv, tk, d], seed + 1);
    let v = var(&[b, hkv, tk, d], seed + 2);
    let weights = random(&[b, tq, hq * d], seed + 3);
    let scale = (d as f64).powf(-0.5);
    let run = |fused: bool| {
        let out = if fused {
            kernels::attention_fused(&q, &k, &v, &mask, scale).unwrap()
        } else {
            let bias = mask.bias(&Device::Cpu).unwrap();
            kernels::attention_composite(&q, &k, &v, &bias, scale).unwrap()
        };
        attention_grads(out, &weights, [&q, &k, &v])
    };
    let (out_f, gq_f, gk_f, gv_f) = run(true);
    let (out_c, gq_c, gk_c, gv_c) = run(false);
    assert_eq!(out_f.dims(), [b, tq, hq * d]);
    let ctx = format!("hq {hq} hkv {hkv} tq {tq} tk {tk} d {d}");
    assert_attention_close(
        &ctx,
        [&out_f, &gq_f, &gk_f, &gv_f],
        [&out_c, &gq_c, &gk_c, &gv_c],
    );
}

#[test]
fn attention_matches_composite_with_causal_and_padding_masks() {
    // GQA 2:1, head size 32 (four 8-lane chunks).
    check_attention(4, 2, 17, 17, 32, 10);
    // No GQA; head size 20 (two chunks and a remainder of 4).
    check_attention(3, 3, 9, 9, 20, 20);
    // GQA 4:1, head size 5 (remainder only).
    check_attention(4, 1, 6, 6, 5, 30);
    // Several query blocks of the kernel (64 rows each) and a partial last one.
    check_attention(2, 1, 150, 150, 16, 35);
}

#[test]
fn attention_matches_composite_after_a_cache_offset() {
    // Three new queries after seven cached keys (some of them padding in rows 1 and 2), as
    // forward_cached runs them; and a single decoding step.
    check_attention(4, 2, 3, 10, 16, 40);
    check_attention(2, 1, 1, 9, 12, 50);
    // Seventy new queries (two blocks) after thirty cached keys.
    check_attention(2, 2, 70, 100, 8, 60);
}

#[test]
fn attention_padding_query_sees_only_itself() {
    // Row 1 is left-padded by 4: its padding query 2 attends to key 2 alone, so its output is v[2].
    let (hq, t, d) = (2, 8, 8);
    let mask = KeyMask::new(padded_rows(t), 0).unwrap();
    let q = random(&[3, hq, t, d], 1);
    let k = random(&[3, hq, t, d], 2);
    let v = random(&[3, hq, t, d], 3);
    let out = kernels::attention_fused(&q, &k, &v, &mask, 0.5).unwrap();
    let got = out
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let want = v
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(2, 2, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    assert_eq!(
        got.to_vec1::<f32>().unwrap(),
        want.to_vec1::<f32>().unwrap()
    );
}

#[test]
fn attention_spares_untracked_operands() {
    // k and v constant: the backward stores only q's gradient.
    let mask = KeyMask::new(padded_rows(6), 0).unwrap();
    let q = var(&[3, 2, 6, 8], 1);
    let k = random(&[3, 2, 6, 8], 2);
    let v = random(&[3, 2, 6, 8], 3);
    let out = kernels::attention_fused(&q, &k, &v, &mask, 0.3).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(q.as_tensor()).is_some());
    assert_eq!(grads.get_ids().count(), 1);
}

#[test]
fn attention_refuses_mismatched_masks_and_heads() {
    let q = random(&[3, 3, 6, 8], 1);
    let k = random(&[3, 2, 6, 8], 2);
    let mask = KeyMask::new(padded_rows(6), 0).unwrap();
    assert!(kernels::attention_fused(&q, &k, &k, &mask, 1.0).is_err());
    let q = random(&[3, 2, 6, 8], 1);
    let short = KeyMask::new(padded_rows(5), 0).unwrap();
    assert!(kernels::attention_fused(&q, &k, &k, &short, 1.0).is_err());
}

fn check_rms_norm(shape: &[usize], seed: u64) {
    let n = *shape.last().unwrap();
    // Rows of different scales, so 1/rms varies.
    let x = Var::from_tensor(
        &random(shape, seed)
            .broadcast_mul(&(random(&[shape[0], 1, 1], seed + 9).abs().unwrap() * 4.0).unwrap())
            .unwrap(),
    )
    .unwrap();
    let w = var(&[n], seed + 1);
    let weights = random(shape, seed + 2);
    let run = |fused: bool| {
        let y = if fused {
            kernels::rms_norm_fused(&x, &w, 1e-6).unwrap()
        } else {
            kernels::rms_norm_composite(&x, &w, 1e-6).unwrap()
        };
        let grads = weighted_backward(&y, &weights);
        let gx = grads.get(x.as_tensor()).unwrap().clone();
        let gw = grads.get(w.as_tensor()).unwrap().clone();
        (y, gx, gw)
    };
    let (y_f, gx_f, gw_f) = run(true);
    let (y_c, gx_c, gw_c) = run(false);
    assert!(
        diff(&y_f, &y_c) <= 1e-6,
        "{shape:?}: values {}",
        diff(&y_f, &y_c)
    );
    assert!(
        diff(&gx_f, &gx_c) <= 1e-5,
        "{shape:?}: grad x {}",
        diff(&gx_f, &gx_c)
    );
    assert!(
        diff(&gw_f, &gw_c) <= 1e-5,
        "{shape:?}: grad w {}",
        diff(&gw_f, &gw_c)
    );
    assert!(abs_max(&gx_c) > 1e-2 && abs_max(&gw_c) > 1e-2);
}

#[test]
fn rms_norm_matches_composite_values_and_grads() {
    check_rms_norm(&[3, 70, 32], 1); // more rows than one parallel chunk
    check_rms_norm(&[2, 5, 37], 2); // odd width: the 8-lane loop's remainder
}

#[test]
fn rms_norm_spares_a_frozen_weight() {
    let x = var(&[2, 3, 16], 1);
    let w = random(&[16], 2);
    let y = kernels::rms_norm_fused(&x, &w, 1e-6).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert_eq!(grads.get_ids().count(), 1);
}

#[test]
fn key_mask_is_causal_and_hides_padding_keys() {
    // Row 0 left-padded by one, row 1 right-padded by one; two queries after one cached key.
    let mask = KeyMask::new(vec![vec![false, true, true], vec![true, true, false]], 1).unwrap();
    assert_eq!(mask.bias(&Device::Cpu).unwrap().dims(), [2, 1, 2, 3]);
    let bias: Vec<Vec<Vec<f32>>> = mask
        .bias(&Device::Cpu)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_vec3()
        .unwrap();
    let (o, x) = (0f32, f32::NEG_INFINITY);
    // Query i sits at key 1 + i: it sees real keys up to itself, never a padding key other than
    // itself (row 1's padding query, key 2, sees the real keys before it and itself).
    assert_eq!(bias[0], vec![vec![x, o, x], vec![x, o, o]]);
    assert_eq!(bias[1], vec![vec![o, o, x], vec![o, o, o]]);
}

/// Fused and composite SwiGLU gating on the same variables: values and both gradients. Gates span
/// ±6 so SiLU's curved part and both tails are exercised.
fn check_swiglu(shape: &[usize], seed: u64) {
    let gate = Var::from_tensor(&(random(shape, seed) * 6.0).unwrap()).unwrap();
    let up = var(shape, seed + 1);
    let weights = random(shape, seed + 2);
    let run = |fused: bool| {
        let y = if fused {
            kernels::swiglu_fused(&gate, &up).unwrap()
        } else {
            kernels::swiglu_composite(&gate, &up).unwrap()
        };
        let grads = weighted_backward(&y, &weights);
        let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
        (y, g(&gate), g(&up))
    };
    let (y_f, gg_f, gu_f) = run(true);
    let (y_c, gg_c, gu_c) = run(false);
    assert!(
        diff(&y_f, &y_c) <= 1e-6,
        "{shape:?}: values {}",
        diff(&y_f, &y_c)
    );
    assert!(
        diff(&gg_f, &gg_c) <= 1e-6,
        "{shape:?}: grad gate {}",
        diff(&gg_f, &gg_c)
    );
    assert!(
        diff(&gu_f, &gu_c) <= 1e-6,
        "{shape:?}: grad up {}",
        diff(&gu_f, &gu_c)
    );
    assert!(abs_max(&gg_c) > 1e-2 && abs_max(&gu_c) > 1e-2);
}

#[test]
fn swiglu_matches_composite_values_and_grads() {
    check_swiglu(&[2, 7, 33], 1);
    // More elements than one parallel chunk (16384), with a partial last chunk.
    check_swiglu(&[3, 40, 150], 2);
}

#[test]
fn swiglu_spares_untracked_operands_and_refuses_other_shapes() {
    let gate = var(&[2, 3, 8], 1);
    let up = random(&[2, 3, 8], 2);
    let y = kernels::swiglu_fused(&gate, &up).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(gate.as_tensor()).is_some());
    assert_eq!(grads.get_ids().count(), 1);
    // Only up tracked: its gradient alone, silu(gate) · 1.
    let gate_c = random(&[2, 3, 8], 3);
    let up_v = var(&[2, 3, 8], 4);
    let y = kernels::swiglu_fused(&gate_c, &up_v).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get_ids().count(), 1);
    let want = gate_c.silu().unwrap();
    assert!(diff(grads.get(up_v.as_tensor()).unwrap(), &want) <= 1e-7);
    let err = kernels::swiglu_fused(&gate, &random(&[2, 3, 9], 5)).unwrap_err();
    assert!(err.to_string().contains("differ in shape"), "{err}");
}

/// cos/sin tables `[rows, 1, T, D]` of the Qwen3 kind (frequency i % (D/2)) for per-row positions.
fn rope_tables(positions: &[Vec<usize>], d: usize) -> (Tensor, Tensor) {
    let half = d / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for row in positions {
        for &p in row {
            for i in 0..d {
                let angle = p as f32 * 10000f32.powf(-((i % half) as f32) / half as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    let shape = (positions.len(), 1, positions[0].len(), d);
    (
        Tensor::from_vec(cos, shape, &Device::Cpu).unwrap(),
        Tensor::from_vec(sin, shape, &Device::Cpu).unwrap(),
    )
}

/// Fused and composite RoPE of `x` `[B, T, H, D]`: the same `[B, H, T, D]` values (bit for bit:
/// the same products and sums) and the same input gradient.
fn check_rope(b: usize, t: usize, h: usize, d: usize, per_row_tables: bool, seed: u64) {
    let positions: Vec<Vec<usize>> = (0..if per_row_tables { b } else { 1 })
        .map(|r| (0..t).map(|i| i + 3 * r).collect())
        .collect();
    let (cos, sin) = rope_tables(&positions, d);
    let x = var(&[b, t, h, d], seed);
    let weights = random(&[b, h, t, d], seed + 1);
    let run = |fused: bool| {
        let y = if fused {
            kernels::rope_fused(&x, &cos, &sin).unwrap()
        } else {
            kernels::rope_composite(&x, &cos, &sin).unwrap()
        };
        let grads = weighted_backward(&y, &weights);
        (y, grads.get(x.as_tensor()).unwrap().clone())
    };
    let (y_f, g_f) = run(true);
    let (y_c, g_c) = run(false);
    let ctx = format!("b {b} t {t} h {h} d {d} per-row {per_row_tables}");
    assert_eq!(y_f.dims(), [b, h, t, d], "{ctx}");
    assert_eq!(diff(&y_f, &y_c), 0.0, "{ctx}: values");
    assert!(diff(&g_f, &g_c) <= 1e-6, "{ctx}: grad {}", diff(&g_f, &g_c));
    assert!(abs_max(&g_c) > 1e-2);
}

#[test]
fn rope_matches_composite_values_and_grads() {
    check_rope(2, 9, 3, 8, false, 1);
    check_rope(3, 5, 2, 6, true, 2); // a table per row (padded batches)
    check_rope(1, 1, 4, 32, true, 3); // one decoding step
}

#[test]
fn rope_refuses_tables_of_another_shape() {
    let (cos, sin) = rope_tables(&[(0..5).collect()], 8);
    let x = random(&[2, 6, 3, 8], 1);
    let err = kernels::rope_fused(&x, &cos, &sin).unwrap_err();
    assert!(err.to_string().contains("rope: tables"), "{err}");
}

#[test]
fn cross_entropy_matches_composite_value_and_grad() {
    // More rows than one parallel chunk (16), logits of a few units.
    let (n, v) = (37, 50);
    let logits = Var::from_tensor(&(random(&[n, v], 1) * 4.0).unwrap()).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let run = |fused: bool| {
        let loss = if fused {
            kernels::cross_entropy_fused(&logits, &targets).unwrap()
        } else {
            kernels::cross_entropy_composite(&logits, &targets).unwrap()
        };
        // A non-unit upstream gradient, as when the loss is scaled.
        let grads = (&loss * 3.0).unwrap().backward().unwrap();
        (loss, grads.get(logits.as_tensor()).unwrap().clone())
    };
    let (loss_f, g_f) = run(true);
    let (loss_c, g_c) = run(false);
    assert_eq!(loss_f.dims(), loss_c.dims());
    let (lf, lc) = (
        loss_f.to_scalar::<f32>().unwrap(),
        loss_c.to_scalar::<f32>().unwrap(),
    );
    assert!((lf - lc).abs() <= 1e-5 * lc.abs(), "loss {lf} vs {lc}");
    assert!(diff(&g_f, &g_c) <= 1e-6, "grad {}", diff(&g_f, &g_c));
    assert!(abs_max(&g_c) > 1e-3);
}

#[test]
fn cross_entropy_refuses_bad_targets() {
    let logits = random(&[3, 5], 1);
    let err = kernels::cross_entropy_fused(&logits, &[0, 5, 1]).unwrap_err();
    assert!(
        err.to_string().contains("target 5 outside the 5 classes"),
        "{err}"
    );
    let err = kernels::cross_entropy_fused(&logits, &[0, 1]).unwrap_err();
    assert!(err.to_string().contains("2 targets for 3 rows"), "{err}");
}

/// Fused and composite LoRA projection (`x·Wᵀ + s·(x·Aᵀ)·Bᵀ`) on the same variables: values and
/// the gradients of x, A and B under a weighted-sum loss; W stays frozen.
fn check_lora_linear(lead: &[usize], (inp, out, r): (usize, usize, usize), seed: u64) {
    let x_shape: Vec<usize> = lead.iter().copied().chain([inp]).collect();
    let y_shape: Vec<usize> = lead.iter().copied().chain([out]).collect();
    let x = var(&x_shape, seed);
    let w = random(&[out, inp], seed + 1);
    let a = var(&[r, inp], seed + 2);
    // B non-zero (PEFT starts it at zero), so that A's gradient is not zero.
    let b = var(&[out, r], seed + 3);
    let weights = random(&y_shape, seed + 4);
    let scaling = 2.5;
    let run = |fused: bool| {
        let f = if fused {
            kernels::lora_linear_fused
        } else {
            kernels::lora_linear_composite
        };
        let y = f(&x, &w, &a, &b, scaling).unwrap();
        let grads = weighted_backward(&y, &weights);
        assert!(
            grads.get(&w).is_none(),
            "fused {fused}: the frozen weight got a gradient"
        );
        let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        (y, g(&x), g(&a), g(&b))
    };
    let (y_f, gx_f, ga_f, gb_f) = run(true);
    let (y_c, gx_c, ga_c, gb_c) = run(false);
    assert_eq!(y_f.dims(), y_shape.as_slice());
    let ctx = format!("{lead:?} in {inp} out {out} r {r}");
    for (name, f, c) in [
        ("values", &y_f, &y_c),
        ("grad x", &gx_f, &gx_c),
        ("grad A", &ga_f, &ga_c),
        ("grad B", &gb_f, &gb_c),
    ] {
        assert_eq!(f.shape(), c.shape(), "{ctx}: {name}");
        // Sums of up to a few hundred products of O(1) terms: equal up to f32 rounding order.
        let tol = 2e-6 * abs_max(c).max(1.0) as f64;
        assert!(diff(f, c) <= tol, "{ctx}: {name} {} > {tol}", diff(f, c));
        assert!(abs_max(c) > 1e-2, "{ctx}: {name} is all but zero");
    }
}

#[test]
fn linear_matches_frozen_linear_and_spares_the_weight() {
    for (lead, inp, out, seed) in [
        (vec![2usize, 7], 20usize, 12usize, 1u64),
        (vec![3, 67], 130, 97, 2),
    ] {
        let x_shape: Vec<usize> = lead.iter().copied().chain([inp]).collect();
        let x = var(&x_shape, seed);
        let w = random(&[out, inp], seed + 1);
        let weights = random(
            &lead.iter().copied().chain([out]).collect::<Vec<_>>(),
            seed + 2,
        );
        let run = |fused: bool| {
            let y = if fused {
                kernels::linear_fused(&x, &w).unwrap()
            } else {
                roomplan_trainer::model::frozen::linear(&x, &w).unwrap()
            };
            let grads = weighted_backward(&y, &weights);
            assert!(
                grads.get(&w).is_none(),
                "fused {fused}: the frozen weight got a gradient"
            );
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let ((y_f, gx_f), (y_c, gx_c)) = (run(true), run(false));
        assert_eq!(y_f.dims(), y_c.dims());
        assert!(
            diff(&y_f, &y_c) <= 1e-5,
            "{lead:?}: values {}",
            diff(&y_f, &y_c)
        );
        assert!(
            diff(&gx_f, &gx_c) <= 1e-5,
            "{lead:?}: grad x {}",
            diff(&gx_f, &gx_c)
        );
        assert!(abs_max(&gx_c) > 1e-2);
    }
    let err = kernels::linear_fused(&random(&[2, 5], 9), &random(&[3, 4], 10)).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

#[test]
fn lora_linear_matches_composite_values_and_grads() {
    check_lora_linear(&[2, 7], (20, 12, 4), 1);
    // Wide enough for gemm to split the projection across threads, odd sizes.
    check_lora_linear(&[3, 67], (130, 97, 8), 2);
}

#[test]
fn lora_linear_spares_untracked_operands_and_refuses_other_shapes() {
    // A frozen input (the first layer's embeddings): only A's and B's gradients.
    let x = random(&[2, 5, 16], 1);
    let w = random(&[6, 16], 2);
    let (a, b) = (var(&[3, 16], 3), var(&[6, 3], 4));
    let y = kernels::lora_linear_fused(&x, &w, &a, &b, 2.0).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get_ids().count(), 2);
    assert!(grads.get(a.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
    // Nothing tracked: no gradient at all.
    let (ac, bc) = (random(&[3, 16], 5), random(&[6, 3], 6));
    let y = kernels::lora_linear_fused(&x, &w, &ac, &bc, 2.0).unwrap();
    let want = kernels::lora_linear_composite(&x, &w, &ac, &bc, 2.0).unwrap();
    assert!(diff(&y, &want) <= 1e-5);
    let err = kernels::lora_linear_fused(&x, &w, &random(&[3, 15], 7), &b, 2.0).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

/// Attention with V as the value projection hands it out (`[B, T_k, H_kv·D]`) against the composite
/// attention on V reshaped and transposed: values and the gradients of q, k and V in its own layout.
fn check_attention_v_by_token(hq: usize, hkv: usize, tq: usize, tk: usize, d: usize, seed: u64) {
    let b = 3;
    let mask = KeyMask::new(padded_rows(tk), tk - tq).unwrap();
    let q = Var::from_tensor(&(random(&[b, hq, tq, d], seed) * 3.0).unwrap()).unwrap();
    let k = var(&[b, hkv, tk, d], seed + 1);
    let v = var(&[b, tk, hkv * d], seed + 2);
    let weights = random(&[b, tq, hq * d], seed + 3);
    let scale = (d as f64).powf(-0.5);
    let run = |fused: bool| {
        let out = if fused {
            kernels::attention_v_by_token_fused(&q, &k, &v, &mask, scale).unwrap()
        } else {
            let v_heads = v
                .reshape((b, tk, hkv, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let bias = mask.bias(&Device::Cpu).unwrap();
            kernels::attention_composite(&q, &k, &v_heads, &bias, scale).unwrap()
        };
        attention_grads(out, &weights, [&q, &k, &v])
    };
    let (out_f, gq_f, gk_f, gv_f) = run(true);
    let (out_c, gq_c, gk_c, gv_c) = run(false);
    let ctx = format!("hq {hq} hkv {hkv} tq {tq} tk {tk} d {d}");
    assert_eq!(out_f.dims(), [b, tq, hq * d]);
    assert_eq!(gv_f.dims(), [b, tk, hkv * d], "{ctx}");
    assert_attention_close(
        &ctx,
        [&out_f, &gq_f, &gk_f, &gv_f],
        [&out_c, &gq_c, &gk_c, &gv_c],
    );
    // The same bits as the heads-first kernel on the transposed copy.
    let v_heads = v
        .as_tensor()
        .reshape((b, tk, hkv, d))
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let heads_first = kernels::attention_fused(&q, &k, &v_heads, &mask, scale).unwrap();
    assert_eq!(diff(&out_f, &heads_first), 0.0, "{ctx}");
}

#[test]
fn attention_v_by_token_matches_composite_values_and_grads() {
    check_attention_v_by_token(4, 2, 17, 17, 32, 110);
    check_attention_v_by_token(3, 3, 9, 9, 20, 120);
    check_attention_v_by_token(2, 1, 150, 150, 16, 135);
    check_attention_v_by_token(4, 2, 3, 10, 16, 140); // after a cache offset
    let q = random(&[3, 2, 6, 8], 1);
    let k = random(&[3, 2, 6, 8], 2);
    let mask = KeyMask::new(padded_rows(6), 0).unwrap();
    let err = kernels::attention_v_by_token_fused(&q, &k, &random(&[3, 6, 8], 3), &mask, 1.0)
        .unwrap_err();
    assert!(err.to_string().contains("want [3, 6, 16]"), "{err}");
}

/// The fused norm + RoPE of a projection's output `[B, T, H·D]` against the composite RMSNorm and
/// RoPE on it viewed as `[B, T, H, D]` (values and input gradient), and the same bits as the two
/// fused kernels one after the other.
fn check_rms_norm_rope(b: usize, t: usize, h: usize, d: usize, per_row_tables: bool, seed: u64) {
    let positions: Vec<Vec<usize>> = (0..if per_row_tables { b } else { 1 })
        .map(|r| (0..t).map(|i| i + 2 * r).collect())
        .collect();
    let (cos, sin) = rope_tables(&positions, d);
    // Heads of different scales, so 1/rms varies.
    let x = Var::from_tensor(
        &random(&[b, t, h * d], seed)
            .broadcast_mul(&(random(&[b, t, 1], seed + 9).abs().unwrap() * 4.0).unwrap())
            .unwrap(),
    )
    .unwrap();
    let w = random(&[d], seed + 1);
    let weights = random(&[b, h, t, d], seed + 2);
    let x4 = || x.reshape((b, t, h, d)).unwrap();
    let run = |which: u8| {
        let y = match which {
            0 => kernels::rms_norm_rope_fused(&x, &w, 1e-6, &cos, &sin, h).unwrap(),
            1 => kernels::rope_composite(
                &kernels::rms_norm_composite(&x4(), &w, 1e-6).unwrap(),
                &cos,
                &sin,
            )
            .unwrap(),
            _ => kernels::rope_fused(
                &kernels::rms_norm_fused(&x4(), &w, 1e-6).unwrap(),
                &cos,
                &sin,
            )
            .unwrap(),
        };
        let grads = weighted_backward(&y, &weights);
        assert!(grads.get(&w).is_none());
        (y, grads.get(x.as_tensor()).unwrap().clone())
    };
    let ctx = format!("b {b} t {t} h {h} d {d} per-row {per_row_tables}");
    let ((y_f, g_f), (y_c, g_c), (y_s, g_s)) = (run(0), run(1), run(2));
    assert_eq!(y_f.dims(), [b, h, t, d], "{ctx}");
    assert_eq!(g_f.dims(), [b, t, h * d], "{ctx}");
    assert!(
        diff(&y_f, &y_c) <= 1e-5,
        "{ctx}: values {}",
        diff(&y_f, &y_c)
    );
    // Sums of D products at scales up to ~4: equal up to f32 rounding order.
    let tol = 1e-6 * abs_max(&g_c).max(1.0) as f64;
    assert!(
        diff(&g_f, &g_c) <= tol,
        "{ctx}: grad {} > {tol}",
        diff(&g_f, &g_c)
    );
    assert!(abs_max(&g_c) > 1e-2, "{ctx}");
    assert_eq!(
        diff(&y_f, &y_s),
        0.0,
        "{ctx}: values vs the two fused kernels"
    );
    assert!(
        diff(&g_f, &g_s) <= 1e-6,
        "{ctx}: grad vs the two fused kernels {}",
        diff(&g_f, &g_s)
    );
}

#[test]
fn rms_norm_rope_matches_composite_values_and_grads() {
    check_rms_norm_rope(2, 9, 3, 8, false, 1);
    check_rms_norm_rope(3, 5, 2, 6, true, 2);
    check_rms_norm_rope(2, 70, 4, 32, false, 3);
    let x = random(&[2, 5, 12], 4);
    let (cos, sin) = rope_tables(&[(0..5).collect()], 4);
    let err = kernels::rms_norm_rope_fused(&x, &random(&[4], 5), 1e-6, &cos, &sin, 5).unwrap_err();
    assert!(
        err.to_string()
            .contains("12 values per position for 5 heads"),
        "{err}"
    );
    let err = kernels::rms_norm_rope_fused(&x, &random(&[4], 5), 1e-6, &cos, &sin, 2).unwrap_err();
    assert!(
        err.to_string().contains("weight [4] for heads of 6"),
        "{err}"
    );
}

/// The fused gate/up projections and gating against two frozen projections and the composite
/// SwiGLU: values and the input gradient; the weights get none.
fn check_swiglu_mlp_input(lead: &[usize], (inp, inter): (usize, usize), seed: u64) {
    let x_shape: Vec<usize> = lead.iter().copied().chain([inp]).collect();
    let y_shape: Vec<usize> = lead.iter().copied().chain([inter]).collect();
    let x = Var::from_tensor(&(random(&x_shape, seed) * 2.0).unwrap()).unwrap();
    let (wg, wu) = (
        random(&[inter, inp], seed + 1),
        random(&[inter, inp], seed + 2),
    );
    let weights = random(&y_shape, seed + 3);
    let run = |fused: bool| {
        let y = if fused {
            kernels::swiglu_mlp_input_fused(&x, &wg, &wu).unwrap()
        } else {
            let frozen = roomplan_trainer::model::frozen::linear;
            kernels::swiglu_composite(&frozen(&x, &wg).unwrap(), &frozen(&x, &wu).unwrap()).unwrap()
        };
        let grads = weighted_backward(&y, &weights);
        assert!(grads.get(&wg).is_none() && grads.get(&wu).is_none());
        (y, grads.get(x.as_tensor()).unwrap().clone())
    };
    let ((y_f, g_f), (y_c, g_c)) = (run(true), run(false));
    let ctx = format!("{lead:?} in {inp} inter {inter}");
    assert_eq!(y_f.dims(), y_shape.as_slice(), "{ctx}");
    for (name, f, c) in [("values", &y_f, &y_c), ("grad x", &g_f, &g_c)] {
        let tol = 2e-6 * abs_max(c).max(1.0) as f64;
        assert!(diff(f, c) <= tol, "{ctx}: {name} {} > {tol}", diff(f, c));
        assert!(abs_max(c) > 1e-2, "{ctx}: {name} is all but zero");
    }
}

#[test]
fn swiglu_mlp_input_matches_composite_values_and_grads() {
    check_swiglu_mlp_input(&[2, 7], (20, 36), 1);
    check_swiglu_mlp_input(&[3, 67], (130, 200), 2);
    // Nothing tracked: the values alone, and no gradient.
    let x = random(&[2, 3, 8], 3);
    let (wg, wu) = (random(&[5, 8], 4), random(&[5, 8], 5));
    let y = kernels::swiglu_mlp_input_fused(&x, &wg, &wu).unwrap();
    // Only the untracked root's own entry.
    assert_eq!(
        y.sum_all().unwrap().backward().unwrap().get_ids().count(),
        1
    );
    let err = kernels::swiglu_mlp_input_fused(&x, &wg, &random(&[6, 8], 6)).unwrap_err();
    assert!(err.to_string().contains("differ"), "{err}");
}

/// The kernels changed for the 2-thread step give the same bits on 1 and 3 threads: each output
/// element is computed by one task in a fixed order whatever the pool's size.
#[test]
fn new_kernels_do_not_depend_on_the_thread_count() {
    let (b, t, hq, hkv, d) = (2, 70, 4, 2, 16);
    let mask = KeyMask::new(vec![vec![true; t]; b], 0).unwrap();
    let (cos, sin) = rope_tables(&[(0..t).collect()], d);
    let xq = var(&[b, t, hq * d], 1);
    let xk = var(&[b, t, hkv * d], 2);
    let v = var(&[b, t, hkv * d], 3);
    let w = random(&[d], 4);
    let h = var(&[b, t, 40], 5);
    let (wg, wu) = (random(&[300, 40], 6), random(&[300, 40], 7));
    let run = || {
        let q = kernels::rms_norm_rope_fused(&xq, &w, 1e-6, &cos, &sin, hq).unwrap();
        let k = kernels::rms_norm_rope_fused(&xk, &w, 1e-6, &cos, &sin, hkv).unwrap();
        let o = kernels::attention_v_by_token_fused(&q, &k, &v, &mask, 0.25).unwrap();
        let m = kernels::swiglu_mlp_input_fused(&h, &wg, &wu).unwrap();
        let loss =
            (o.sqr().unwrap().sum_all().unwrap() + m.sqr().unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let mut out = vec![loss.to_scalar::<f32>().unwrap()];
        for x in [&xq, &xk, &v, &h] {
            out.extend(
                grads
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
        }
        out
    };
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(run)
    };
    let (one, three) = (on(1), on(3));
    assert_eq!(one.len(), three.len());
    let differing = one
        .iter()
        .zip(&three)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} values differ between 1 and 3 threads",
        one.len()
    );
}
