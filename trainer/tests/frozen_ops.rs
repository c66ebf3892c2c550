//! The sparing ops: same forward as candle's, gradients only for operands that track them.

use candle_core::{DType, Device, Tensor, Var};
use roomplan_trainer::model::frozen;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic values without touching candle's global RNG.
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    roomplan_trainer::parity::max_abs_diff(a, b).unwrap() as f32
}

#[test]
fn linear_matches_candle_and_skips_the_frozen_weight() {
    let w = randn(&[5, 3], 1); // frozen [out, in]
    let x = Var::from_tensor(&randn(&[2, 4, 3], 2)).unwrap();
    let ours = frozen::linear(x.as_tensor(), &w).unwrap();
    let plain = frozen::linear_plain(x.as_tensor(), &w).unwrap();
    assert_eq!(ours.dims(), &[2, 4, 5]);
    assert_eq!(max_diff(&ours, &plain), 0.0);

    let g_ours = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g_plain = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        max_diff(
            g_ours.get(x.as_tensor()).unwrap(),
            g_plain.get(x.as_tensor()).unwrap()
        ) < 1e-6
    );
    // The only stored gradient is the variable's: nothing for the weight or its transpose.
    assert_eq!(
        g_ours.get_ids().collect::<Vec<_>>(),
        vec![&x.as_tensor().id()]
    );
    assert!(g_ours.get(&w).is_none());
    // candle's plain matmul stores a gradient for the frozen weight's transpose as well.
    assert!(
        g_plain.get_ids().count() > 1,
        "plain matmul computes the weight gradient too"
    );
}

#[test]
fn matmul_grads_where_tracked_match_candle() {
    let a = Var::from_tensor(&randn(&[2, 3, 4], 3)).unwrap();
    let b = Var::from_tensor(&randn(&[2, 4, 5], 4)).unwrap();
    let ours = frozen::matmul(a.as_tensor(), b.as_tensor()).unwrap();
    let plain = a.as_tensor().matmul(b.as_tensor()).unwrap();
    assert_eq!(max_diff(&ours, &plain), 0.0);
    let weight = randn(&[2, 3, 5], 5);
    let go = (&ours * &weight)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gp = (&plain * &weight)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in [&a, &b] {
        assert!(
            max_diff(
                go.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap()
            ) < 1e-6
        );
    }
    // Transposed (strided) right operand, as attention's q·kᵀ.
    let k = randn(&[2, 5, 4], 6);
    let ours = frozen::matmul(a.as_tensor(), &k.t().unwrap()).unwrap();
    assert_eq!(
        max_diff(&ours, &a.as_tensor().matmul(&k.t().unwrap()).unwrap()),
        0.0
    );
    let g = ours.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get_ids().count(), 1);
}

#[test]
fn broadcast_mul_and_add_match_candle() {
    let x = Var::from_tensor(&randn(&[2, 3, 4], 7)).unwrap();
    let c = randn(&[1, 4], 8); // a constant table, broadcast
    for (ours, plain) in [
        (
            frozen::broadcast_mul(x.as_tensor(), &c).unwrap(),
            x.as_tensor().broadcast_mul(&c).unwrap(),
        ),
        (
            frozen::broadcast_add(x.as_tensor(), &c).unwrap(),
            x.as_tensor().broadcast_add(&c).unwrap(),
        ),
    ] {
        assert_eq!(max_diff(&ours, &plain), 0.0);
        let go = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gp = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            max_diff(
                go.get(x.as_tensor()).unwrap(),
                gp.get(x.as_tensor()).unwrap()
            ) < 1e-6
        );
        assert_eq!(go.get_ids().collect::<Vec<_>>(), vec![&x.as_tensor().id()]);
    }
    // Both tracked: each gets the product rule's gradient.
    let y = Var::from_tensor(&randn(&[2, 3, 4], 9)).unwrap();
    let g = frozen::broadcast_mul(x.as_tensor(), y.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(max_diff(g.get(x.as_tensor()).unwrap(), y.as_tensor()), 0.0);
    assert_eq!(max_diff(g.get(y.as_tensor()).unwrap(), x.as_tensor()), 0.0);
}

#[test]
fn bf16_weight_with_f32_input_computes_in_f32_on_the_cpu() {
    let w32 = randn(&[6, 4], 10);
    let w16 = w32.to_dtype(DType::BF16).unwrap();
    let x = Var::from_tensor(&randn(&[3, 4], 11)).unwrap();
    let y = frozen::linear(x.as_tensor(), &w16).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    // f32 activations times the bf16 weight's exact values, in f32 (the bf16-weight kernel) ...
    let exact = x
        .as_tensor()
        .matmul(&w16.to_dtype(DType::F32).unwrap().t().unwrap())
        .unwrap();
    assert!(max_diff(&y, &exact) < 1e-6, "{}", max_diff(&y, &exact));
    // ... where candle's bf16 matmul rounds the activations to bf16 first.
    let cast = frozen::linear_cast(x.as_tensor(), &w16).unwrap();
    assert_eq!(cast.dtype(), DType::F32);
    assert!(
        max_diff(&cast, &exact) > 1e-4,
        "{}",
        max_diff(&cast, &exact)
    );
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap();
    assert_eq!(gx.dtype(), DType::F32);
    // d/dx sum(x Wᵀ) = column sums of W, here of the bf16 values exactly.
    let expected = w16
        .to_dtype(DType::F32)
        .unwrap()
        .sum(0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((3, 4))
        .unwrap();
    assert!(max_diff(gx, &expected) < 1e-6);
    assert_eq!(g.get_ids().count(), 1);
}

#[test]
fn a_trained_bf16_weight_keeps_candle_matmul_and_its_gradient() {
    let w = Var::from_tensor(&randn(&[6, 4], 12).to_dtype(DType::BF16).unwrap()).unwrap();
    let x = randn(&[3, 4], 13);
    let y = frozen::linear(&x, w.as_tensor()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let gw = g
        .get(w.as_tensor())
        .expect("a variable weight gets its gradient");
    assert_eq!(gw.dims(), &[6, 4]);
}

#[test]
fn shape_errors_are_reported() {
    let err = frozen::linear(&randn(&[2, 3], 1), &randn(&[4, 5], 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("input has 3 features"), "{err}");
    let err = frozen::matmul(&randn(&[2, 3], 1), &randn(&[4, 5], 2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("incompatible shapes"), "{err}");
}
