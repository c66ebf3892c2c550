//! Geometry head (trainable): an MLP applied to each view's geometry vector
//! `[R (9, row-major), t (3), fx/W, fy/H, cx/W, cy/H, depth histogram (bins), valid fraction]`,
//! giving `tokens_per_view` LLM-width tokens per view. A sample without geometry gets no tokens.
//!
//! R, t map camera to the sample's reference frame (p_ref = R·p_cam + t, metres) and K is for the
//! stored image size, as in the shard contract (`shared/DESIGN.md`). Differentiable ops only.

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeometryHeadConfig {
    /// Bins of the per-view depth histogram (the prep default is 16).
    pub depth_bins: usize,
    pub hidden_dim: usize,
    /// Geometry tokens produced per view.
    pub tokens_per_view: usize,
    /// Width of each token (the LLM's hidden size).
    pub output_dim: usize,
}

impl Default for GeometryHeadConfig {
    fn default() -> Self {
        Self {
            depth_bins: 16,
            hidden_dim: 1024,
            tokens_per_view: 1,
            output_dim: 2560,
        }
    }
}

impl GeometryHeadConfig {
    /// Length of one view's feature vector.
    pub fn input_dim(&self) -> usize {
        9 + 3 + 4 + self.depth_bins + 1
    }
}

/// One view's geometry as the shards store it.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewGeometry {
    /// Camera-to-reference rotation, row-major.
    pub rotation: [f32; 9],
    /// Camera-to-reference translation (metres).
    pub translation: [f32; 3],
    /// Intrinsics for the stored image, row-major 3×3.
    pub intrinsics: [f32; 9],
    pub width: u32,
    pub height: u32,
    /// Fraction of valid depth pixels per bin (sums to 1, or all zeros without valid depth).
    pub depth_hist: Vec<f32>,
    pub valid_fraction: f32,
}

impl ViewGeometry {
    /// The feature vector fed to the MLP; K is normalised by the image size so that it does not
    /// depend on the resolution the view was stored at.
    pub fn features(&self) -> Result<Vec<f32>> {
        if self.width == 0 || self.height == 0 {
            bail!(
                "view geometry: image size {}x{} is empty",
                self.width,
                self.height
            );
        }
        let (w, h) = (self.width as f32, self.height as f32);
        let k = &self.intrinsics;
        let mut f = Vec::with_capacity(16 + self.depth_hist.len() + 1);
        f.extend_from_slice(&self.rotation);
        f.extend_from_slice(&self.translation);
        f.extend_from_slice(&[k[0] / w, k[4] / h, k[2] / w, k[5] / h]);
        f.extend_from_slice(&self.depth_hist);
        f.push(self.valid_fraction);
        if let Some(bad) = f.iter().find(|x| !x.is_finite()) {
            bail!("view geometry: non-finite value {bad} in {f:?}");
        }
        Ok(f)
    }
}

/// `fc1 → GELU → fc2`, reshaped to `tokens_per_view` tokens per view.
#[derive(Debug, Clone)]
pub struct GeometryHead {
    cfg: GeometryHeadConfig,
    fc1: Linear,
    fc2: Linear,
}

impl GeometryHead {
    pub fn new(cfg: &GeometryHeadConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.hidden_dim == 0 || cfg.tokens_per_view == 0 || cfg.output_dim == 0 {
            bail!("geometry head config: sizes must be positive, got {cfg:?}");
        }
        Ok(Self {
            fc1: candle_nn::linear(cfg.input_dim(), cfg.hidden_dim, vb.pp("fc1"))?,
            fc2: candle_nn::linear(
                cfg.hidden_dim,
                cfg.tokens_per_view * cfg.output_dim,
                vb.pp("fc2"),
            )?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &GeometryHeadConfig {
        &self.cfg
    }

    /// Number of tokens for a sample with `views` views of geometry.
    pub fn num_tokens(&self, views: usize) -> usize {
        views * self.cfg.tokens_per_view
    }

    /// `[views·tokens_per_view, output_dim]` (f32) for one sample, or `None` without geometry.
    pub fn forward(&self, views: &[ViewGeometry], device: &Device) -> Result<Option<Tensor>> {
        if views.is_empty() {
            return Ok(None);
        }
        let mut flat = Vec::with_capacity(views.len() * self.cfg.input_dim());
        for (i, view) in views.iter().enumerate() {
            if view.depth_hist.len() != self.cfg.depth_bins {
                bail!(
                    "view {i}: depth histogram has {} bins, the geometry head expects {}",
                    view.depth_hist.len(),
                    self.cfg.depth_bins
                );
            }
            flat.extend(view.features()?);
        }
        let x = Tensor::from_vec(flat, (views.len(), self.cfg.input_dim()), device)?
            .to_dtype(DType::F32)?;
        let tokens = self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)?;
        Ok(Some(tokens.reshape((
            self.num_tokens(views.len()),
            self.cfg.output_dim,
        ))?))
    }
}
