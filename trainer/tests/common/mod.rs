//! Helpers shared by the trainer's integration tests.

use candle_core::backprop::GradStore;
use candle_core::Var;

/// Asserts that `var` has an entry in `grads` and that it is not all zeros; names `name` otherwise.
pub fn assert_nonzero_gradient(grads: &GradStore, name: &str, var: &Var) {
    let grad = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("{name}: no gradient"));
    let size = grad
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(size > 0.0, "{name}: zero gradient");
}
