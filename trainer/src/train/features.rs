//! `tools cache-features`: the frozen VGGT aggregator run once per scene into the feature folders
//! an experiment names (`data.datasets[].features.path`), so that training reads features instead
//! of running VGGT once per sample per epoch.
//!
//! What cached features mean: each scene's first `data.views_per_sample` views go through the
//! aggregator together, once. A sample reads the rows of the views it keeps. Without view dropout
//! that is exactly what the live path computes for the sample. With view dropout it is not: VGGT's
//! global attention mixes the views, so a kept view's cached tokens were computed with all of the
//! scene's views present, where the live path would run the aggregator on the kept views only.
//! View dropout with a cache therefore drops views' tokens, not their influence on the others.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::fused::encode_views;
use crate::model::vggt_input::{decode_stored_image, stack_images};
use crate::train::experiment::Experiment;
use crate::train::pins::{resolve_file, sha256_file};
use crate::train::setup::load_aggregator;
use roomplan_prep::shard::features::{write_features, FeaturePins, SceneFeatures};
use roomplan_prep::shard::Dataset;

/// One feature folder written.
#[derive(Debug, Clone)]
pub struct Cached {
    pub dataset: String,
    pub path: PathBuf,
    pub scenes: usize,
    /// Aggregator forwards run (one per scene).
    pub forwards: usize,
    /// The digest the experiment pins (`data.datasets[].features.digest`).
    pub digest: String,
}

/// Runs the aggregator once per scene of every dataset whose `features` the experiment names and
/// writes the feature folders (replacing what is there). The experiment's dataset and VGGT pins
/// should be verified first (`tools cache-features` does).
pub fn cache_features(exp: &Experiment, device: &Device, progress: bool) -> Result<Vec<Cached>> {
    let wanted: Vec<_> = exp
        .data
        .datasets
        .iter()
        .filter_map(|d| d.features.as_ref().map(|f| (d, f)))
        .collect();
    if wanted.is_empty() {
        bail!(
            "experiment {} names no features (add `features: {{path: DIR, digest: null}}` to a \
             dataset of data.datasets)",
            exp.name
        );
    }
    let (aggregator, _) = load_aggregator(exp, device)?;
    let vggt = &exp.model.vggt;
    let checkpoint = resolve_file(&vggt.weights, &vggt.checkpoint).context("model.vggt")?;
    let vggt_sha = sha256_file(&checkpoint)?;
    let views_per_scene = exp.data.views_per_sample;
    let mut out = Vec::new();
    for (ds, spec) in wanted {
        let dataset = Dataset::open(&ds.path)
            .with_context(|| format!("dataset {} ({})", ds.name, ds.path.display()))?;
        let n = dataset.num_scenes();
        let bar = if progress {
            ProgressBar::new(n as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {bar:30} {pos}/{len} scenes, {elapsed} (eta {eta})",
            )
            .expect("valid template"),
        );
        bar.set_message(format!("VGGT on {}", ds.name));
        let mut image_size: Option<[u32; 2]> = None;
        let mut shape: Option<(usize, usize)> = None;
        let mut scenes = Vec::with_capacity(n);
        for row in 0..n {
            let scene = dataset.scenes().get(row)?;
            let what = format!("dataset {}, scene {}", ds.name, scene.scene_id);
            let views: Vec<_> = scene.views.iter().take(views_per_scene).collect();
            ensure!(!views.is_empty(), "{what}: no views");
            for v in &views {
                let size = [v.width, v.height];
                let first = *image_size.get_or_insert(size);
                ensure!(
                    size == first,
                    "{what}, view {}: {}×{} pixels, earlier views are {}×{}: one feature folder \
                     holds one image size",
                    v.frame_id,
                    size[0],
                    size[1],
                    first[0],
                    first[1]
                );
            }
            let images = views
                .iter()
                .map(|v| {
                    decode_stored_image(&v.image, &format!("{what}, view {}", v.frame_id))
                        .map_err(anyhow::Error::from)
                })
                .collect::<Result<Vec<_>>>()?;
            let images = stack_images(&images, &Device::Cpu)?
                .to_device(device)?
                .to_dtype(aggregator.dtype())?;
            let tokens = encode_views(&aggregator, &images, &vggt.layers)
                .with_context(|| format!("VGGT on {what}"))?;
            let (rows, channels) = tokens.dims2()?;
            let per_view = rows / views.len();
            let expected = *shape.get_or_insert((per_view, channels));
            ensure!(
                (per_view, channels) == expected && per_view * views.len() == rows,
                "{what}: {rows} × {channels} tokens for {} views, other scenes give {} × {} per view",
                views.len(),
                expected.0,
                expected.1
            );
            scenes.push(Ok(SceneFeatures {
                scene_id: scene.scene_id.clone(),
                frame_ids: views.iter().map(|v| v.frame_id.clone()).collect(),
                values: tokens.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            }));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let (Some(image_size), Some((tokens_per_view, channels))) = (image_size, shape) else {
            bail!("dataset {}: no scenes", ds.name);
        };
        let pins = FeaturePins {
            scenes_manifest_digest: dataset.manifest().digest(),
            vggt_weights_sha256: vggt_sha.clone(),
            image_size,
            layers: vggt.layers.clone(),
            dtype: exp.model.frozen_dtype.name().into(),
            views_per_scene,
        };
        let manifest = write_features(&spec.path, pins, tokens_per_view, channels, scenes)
            .with_context(|| format!("writing {}", spec.path.display()))?;
        out.push(Cached {
            dataset: ds.name.clone(),
            path: spec.path.clone(),
            scenes: manifest.scenes,
            forwards: manifest.scenes,
            digest: manifest.digest(),
        });
    }
    Ok(out)
}
