//! Deterministic parameter values from a seed: each tensor draws from its own ChaCha stream, chosen
//! by its name, so the values do not depend on creation order or on candle's (unseedable) CPU
//! generator.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A stable 64-bit stream id from a parameter name (FNV-1a).
pub fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(name_stream(name));
    rng
}

/// N(0, std²) samples (Box–Muller) for the parameter `name`.
pub fn normal(seed: u64, name: &str, shape: &[usize], std: f64) -> Result<Tensor> {
    let mut rng = stream(seed, name);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// U(−bound, bound) samples for the parameter `name`.
pub fn uniform(seed: u64, name: &str, shape: &[usize], bound: f64) -> Result<Tensor> {
    let mut rng = stream(seed, name);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}
