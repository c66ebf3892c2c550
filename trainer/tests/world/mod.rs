//! A small prepared dataset for the training tests, written through the shard contract's own
//! writer (real Arrow shards, manifest and digests): rooms of one dominant colour seen in three
//! JPEG views with geometry, and questions whose answers depend on what the views show.

// Shared by several test binaries, each using a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::shard::{
    DatasetWriter, Geometry, SampleRecord, SceneRecord, ViewRecord, WriterOptions,
};
use roomplan_trainer::train::tiny::{corpus, write_tiny_models, TinySizes};

pub const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [200, 30, 30]),
    ("green", [30, 180, 40]),
    ("blue", [30, 40, 200]),
    ("yellow", [220, 210, 40]),
];

fn jpeg(colour: [u8; 3], shade: f32) -> Vec<u8> {
    let img = RgbImage::from_fn(56, 42, |x, y| {
        let stripe = if (x / 7 + y / 7) % 2 == 0 { 1.0 } else { 0.85 };
        Rgb(colour.map(|c| (c as f32 * shade * stripe).min(255.0) as u8))
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out
}

/// Writes the dataset: `scenes` rooms (see the split rule below), three questions each.
pub fn write_dataset(dir: &Path, scenes: usize) -> String {
    let mut w = DatasetWriter::create(dir, WriterOptions::default()).unwrap();
    for i in 0..scenes {
        let (name, rgb) = COLOURS[i % COLOURS.len()];
        let scene_id = format!("scene{i:04}_00");
        let views = (0..3)
            .map(|v| {
                let mut hist = vec![0f32; 16];
                hist[(i + v) % 16] = 0.75;
                hist[(i + v + 3) % 16] = 0.25;
                ViewRecord {
                    frame_id: format!("{v}"),
                    image: jpeg(rgb, 0.8 + 0.1 * v as f32),
                    encoding: "jpeg".into(),
                    width: 56,
                    height: 42,
                    geometry: Some(Geometry {
                        r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                        t: [0.4 * v as f32, 0.0, -0.1 * i as f32],
                        k: [50.0, 0.0, 27.5, 0.0, 50.0, 20.5, 0.0, 0.0, 1.0],
                        depth_hist: hist,
                        valid_depth_fraction: 0.9,
                    }),
                }
            })
            .collect();
        w.write_scene(SceneRecord {
            dataset: "fixture".into(),
            scene_id: scene_id.clone(),
            views,
            reference_world_pose: None,
            axis_alignment: [
                1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0,
            ],
            axis_alignment_from_metadata: false,
        })
        .unwrap();
        // The last room is `test`, the (scenes − 2) / 3 before it `val`, the rest `train`.
        let val = ((scenes - 2) / 3).max(1);
        let split = match scenes - i {
            1 => "test",
            k if k <= val + 1 => "val",
            _ => "train",
        };
        let questions = [
            ("What color is the room?", name.to_string()),
            (
                "Is the room red?",
                if name == "red" { "yes" } else { "no" }.to_string(),
            ),
            ("Which color are the walls?", name.to_string()),
        ];
        for (q, (question, answer)) in questions.into_iter().enumerate() {
            let mut s = SampleRecord::new(
                format!("{split}-{scene_id}-{q}"),
                "scanqa",
                split,
                scene_id.clone(),
                question,
            );
            s.answers = vec![answer];
            w.write_sample(s).unwrap();
        }
    }
    let (_, digest) = w
        .finish(ToolInfo::new("fixture", "0", serde_json::json!({})), vec![])
        .unwrap();
    digest
}

/// A dataset, tiny models and an experiment file pinned to them, under `root`.
pub struct World {
    pub root: PathBuf,
    pub experiment: PathBuf,
    pub dataset: PathBuf,
}

/// The experiment text for `root`'s dataset and models (digests left null).
pub fn experiment_text(root: &Path) -> String {
    let p = |rel: &str| root.join(rel).display().to_string();
    format!(
        r#"# Test experiment: the fixture world and tiny models.
name: fixture
stage: 2
seed: 5
model:
  frozen_dtype: f32
  llm:
    source: {llm}
    revision: null
    files:
      config.json: null  # pinned below
      model.safetensors: null
      tokenizer.json: null
  vggt:
    weights:
      source: {vggt}
      files:
        config.json: null
        model.safetensors: null
    checkpoint: model.safetensors
    layers: [0, 1]
  perceiver: {{latent_dim: 16, num_latents: 4, num_heads: 2, num_layers: 1, ffn_dim: 32}}
  geometry: {{depth_bins: 16, hidden_dim: 16, tokens_per_view: 1}}
  lora:
    r: 4
    alpha: 8
    dropout: 0.1
    target_modules: [q_proj, v_proj]
data:
  datasets:
    - name: fixture
      path: {data}
      manifest_digest: null
      weight: 1.0
      train_split: train
      eval_split: val
  views_per_sample: 3
  view_dropout: 0.3
  max_seq_len: 64
optim:
  lr_lora: 1.0e-3
  lr_projector: 1.0e-3
  weight_decay: 0.01
  betas: [0.9, 0.999]
  eps: 1.0e-8
  max_grad_norm: 1.0
schedule:
  warmup_fraction: 0.25
  min_lr_ratio: 0.1
train:
  micro_batch: 3
  grad_accum: 2
  max_steps: 8
  epochs: null
  checkpoint_every: 1
  keep_checkpoints: 3
eval:
  every: 4
  max_samples: 3
  max_new_tokens: 3
"#,
        llm = p("models/qwen3"),
        vggt = p("models/vggt"),
        data = p("data"),
    )
}

/// One world per test binary, in a temporary folder kept until the process ends (building it
/// trains a tokenizer and writes weights).
pub fn shared() -> &'static World {
    static WORLD: std::sync::OnceLock<(tempfile::TempDir, World)> = std::sync::OnceLock::new();
    &WORLD
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let w = build(dir.path());
            (dir, w)
        })
        .1
}

/// Builds the world (6 rooms) under `root` and pins the experiment with the library's
/// `pin_experiment`.
pub fn build(root: &Path) -> World {
    build_with(root, 6)
}

/// [`build`] with `scenes` rooms.
pub fn build_with(root: &Path, scenes: usize) -> World {
    let dataset = root.join("data");
    write_dataset(&dataset, scenes);
    let sizes = TinySizes {
        vocab_size: 300,
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 64,
        vggt_embed_dim: 16,
        vggt_depth: 2,
        vggt_heads: 1,
    };
    write_tiny_models(
        &root.join("models"),
        3,
        &sizes,
        &corpus(&[dataset.clone()]).unwrap(),
    )
    .unwrap();
    let experiment = root.join("fixture.yaml");
    std::fs::write(&experiment, experiment_text(root)).unwrap();
    let cache = roomplan_trainer::train::pins::HashCache::disabled();
    roomplan_trainer::train::pins::pin_experiment(&experiment, &cache).unwrap();
    World {
        root: root.to_path_buf(),
        experiment,
        dataset,
    }
}
