//! The bf16-weight linear kernel (f32 activations × frozen bf16 weight on the CPU) against the
//! composite `x · W.to_dtype(f32)ᵀ`: values on shapes that hit both paths and partial tiles, the
//! input's gradient, no gradient for the weight, and refusals.

use candle_core::{DType, Device, Tensor, Var};
use roomplan_trainer::model::bf16_linear::{self, FEW_ROWS, TILE_IN, TILE_OUT};
use roomplan_trainer::model::frozen;

/// Deterministic values in [-1, 1) without candle's global RNG.
fn values(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    roomplan_trainer::parity::max_abs_diff(a, b).unwrap() as f32
}

/// A bf16 weight `[out, in]` and its exact values in f32.
fn weight(out: usize, inp: usize, seed: u64) -> (Tensor, Tensor) {
    let w16 = values(&[out, inp], seed).to_dtype(DType::BF16).unwrap();
    let w32 = w16.to_dtype(DType::F32).unwrap();
    (w16, w32)
}

/// (rows, in, out): one and a few rows (the dot-product path), more rows (the tiled path);
/// in/out below, at and past the tile sizes, and not multiples of them.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut s = Vec::new();
    for rows in [1, 3, FEW_ROWS, FEW_ROWS + 1, 37] {
        for (inp, out) in [
            (5, 7),
            (33, 1),
            (TILE_IN + 13, TILE_OUT - 1),
            (2 * TILE_IN + 6, 2 * TILE_OUT + 3),
        ] {
            s.push((rows, inp, out));
        }
    }
    s
}

#[test]
fn values_match_the_f32_composite_on_odd_shapes() {
    for (i, (rows, inp, out)) in shapes().into_iter().enumerate() {
        let (w16, w32) = weight(out, inp, 100 + i as u64);
        let x = values(&[rows, inp], 200 + i as u64);
        let ours = bf16_linear::linear(&x, &w16).unwrap();
        let reference = x.matmul(&w32.t().unwrap()).unwrap();
        assert_eq!(ours.dtype(), DType::F32);
        // f32 sums of `inp` products in another order: relative to the terms' size √inp.
        let tol = 2e-6 * (inp as f32).sqrt().max(1.0) * max_abs(&reference).max(1.0);
        let d = max_diff(&ours, &reference);
        assert!(d <= tol, "rows {rows}, in {inp}, out {out}: {d} > {tol}");
        // frozen::linear takes this path for a frozen bf16 weight on the CPU.
        let via_frozen = frozen::linear(&x, &w16).unwrap();
        assert_eq!(max_diff(&via_frozen, &ours), 0.0);
    }
}

#[test]
fn leading_dims_are_kept() {
    let (w16, w32) = weight(9, 6, 1);
    let x = values(&[2, 5, 6], 2);
    let ours = bf16_linear::linear(&x, &w16).unwrap();
    assert_eq!(ours.dims(), &[2, 5, 9]);
    let reference = x.broadcast_matmul(&w32.t().unwrap()).unwrap();
    assert!(max_diff(&ours, &reference) < 1e-5);
    // A non-contiguous input (a transposed view) gives the same values as its copy.
    let xt = values(&[6, 4], 3).t().unwrap();
    let a = bf16_linear::linear(&xt, &w16).unwrap();
    let b = bf16_linear::linear(&xt.contiguous().unwrap(), &w16).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn the_input_gradient_matches_the_composite_and_the_weight_gets_none() {
    for (i, (rows, inp, out)) in shapes().into_iter().enumerate() {
        let (w16, w32) = weight(out, inp, 300 + i as u64);
        let x0 = values(&[rows, inp], 400 + i as u64);
        let upstream = values(&[rows, out], 500 + i as u64);

        let x = Var::from_tensor(&x0).unwrap();
        let y = bf16_linear::linear(x.as_tensor(), &w16).unwrap();
        // The sparing product: candle's `*` would also store a gradient for the constant.
        let grads = frozen::broadcast_mul(&y, &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        // The only stored gradient is the input's: nothing for the bf16 weight.
        assert_eq!(
            grads.get_ids().collect::<Vec<_>>(),
            vec![&x.as_tensor().id()]
        );
        assert!(grads.get(&w16).is_none());

        let xr = Var::from_tensor(&x0).unwrap();
        let yr = xr.as_tensor().matmul(&w32.t().unwrap()).unwrap();
        let gr = (yr * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let expected = gr.get(xr.as_tensor()).unwrap();
        assert_eq!(gx.dims(), &[rows, inp]);
        let tol = 2e-6 * (out as f32).sqrt().max(1.0) * max_abs(expected).max(1.0);
        let d = max_diff(gx, expected);
        assert!(d <= tol, "rows {rows}, in {inp}, out {out}: {d} > {tol}");
    }
}

#[test]
fn repeated_calls_give_identical_results() {
    let (w16, _) = weight(TILE_OUT + 5, TILE_IN + 7, 11);
    for rows in [1, 9] {
        let x = values(&[rows, TILE_IN + 7], 12);
        let first = bf16_linear::linear(&x, &w16).unwrap();
        for _ in 0..3 {
            assert_eq!(
                max_diff(&bf16_linear::linear(&x, &w16).unwrap(), &first),
                0.0
            );
        }
    }
}

#[test]
fn wrong_dtypes_and_shapes_are_refused_with_what_was_expected() {
    let (w16, w32) = weight(4, 3, 1);
    let x = values(&[2, 3], 2);
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();

    let e = err(bf16_linear::linear(&x.to_dtype(DType::BF16).unwrap(), &w16));
    assert!(e.contains("the input must be f32, got BF16"), "{e}");
    let e = err(bf16_linear::linear(&x, &w32));
    assert!(e.contains("the weight must be bf16, got F32"), "{e}");
    let e = err(bf16_linear::linear(&x, &w16.reshape((2, 2, 3)).unwrap()));
    assert!(
        e.contains("the weight must be [out, in], got [2, 2, 3]"),
        "{e}"
    );
    let e = err(bf16_linear::linear(&values(&[2, 5], 3), &w16));
    assert!(
        e.contains("input [2, 5] does not end in the weight's 3 input features (weight [4, 3])"),
        "{e}"
    );
    // frozen::linear reports its own shape error for the same mistake.
    let e = err(frozen::linear(&values(&[2, 5], 3), &w16));
    assert!(e.contains("input has 5 features"), "{e}");
}
