//! Cached VGGT features (`tools cache-features`, `train::features`): one aggregator forward per
//! scene; a sample's cached vision tokens equal the live aggregator's (no view dropout); training
//! on them takes the same steps as training with VGGT live; their pins are verified like the
//! others.

mod world;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor};
use roomplan_trainer::model::fused::encode_views;
use roomplan_trainer::train::data::Corpus;
use roomplan_trainer::train::experiment::{self, Experiment};
use roomplan_trainer::train::features::cache_features;
use roomplan_trainer::train::pins::{self, HashCache};
use roomplan_trainer::train::run::{train, TrainOptions};
use roomplan_trainer::train::setup::{assemble, load_aggregator};
use serde_json::Value;

/// The fixture experiment with `features: {path: <root>/features, digest: null}` on its dataset,
/// written beside it; cached and pinned once per test binary.
fn cached_experiment() -> &'static PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let w = world::shared();
        let text = std::fs::read_to_string(&w.experiment).unwrap();
        let features = w.root.join("features");
        let anchor = "      eval_split: val\n";
        assert!(text.contains(anchor));
        let text = text.replacen(
            anchor,
            &format!(
                "{anchor}      features:\n        path: {}\n        digest: null\n",
                features.display()
            ),
            1,
        );
        let path = w.root.join("fixture-cached.yaml");
        std::fs::write(&path, text).unwrap();
        let exp = load(&path, &[]);
        let cached = cache_features(&exp, &Device::Cpu, false).unwrap();
        assert_eq!(cached.len(), 1);
        // One aggregator forward per scene: the fixture world has 6 rooms.
        assert_eq!((cached[0].scenes, cached[0].forwards), (6, 6));
        let updates = pins::pin_experiment(&path, &mut HashCache::disabled()).unwrap();
        let changed: Vec<_> = updates
            .iter()
            .filter(|u| u.old.as_ref() != Some(&u.new))
            .map(|u| (u.field.as_str(), u.new.as_str()))
            .collect();
        assert_eq!(
            changed,
            [("data.datasets.0.features.digest", cached[0].digest.as_str())],
            "only the features digest was unpinned"
        );
        path
    })
}

fn load(path: &Path, overrides: &[&str]) -> Experiment {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    experiment::load(path, &overrides).unwrap().experiment
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale
}

#[test]
fn cached_features_equal_the_live_aggregator_without_view_dropout() {
    let exp = load(cached_experiment(), &["data.view_dropout=0"]);
    let asm = assemble(&exp, &Device::Cpu).unwrap();
    let cached = Corpus::new(&exp, asm.tokenizer.clone(), &exp.data.datasets).unwrap();
    let mut live_datasets = exp.data.datasets.clone();
    live_datasets[0].features = None;
    let live = Corpus::new(&exp, asm.tokenizer.clone(), &live_datasets).unwrap();
    let (aggregator, _) = load_aggregator(&exp, &Device::Cpu).unwrap();
    let mut worst = 0f64;
    for &row in cached.sources[0].train_rows.iter().take(6) {
        let c = cached.example(0, row, Some(7), true).unwrap();
        let l = live.example(0, row, Some(7), true).unwrap();
        assert_eq!(c.text.ids, l.text.ids);
        assert_eq!(c.images.dims(), &[0, 3, 0, 0]);
        let vision = c.vision.expect("cached vision");
        let reference = encode_views(&aggregator, &l.images, &exp.model.vggt.layers).unwrap();
        assert_eq!(vision.dims(), reference.dims());
        worst = worst.max(max_rel(&vision, &reference));
    }
    eprintln!("cached vs live VGGT tokens: largest relative difference {worst:.2e}");
    assert!(worst <= 1e-6, "{worst:e}");

    // The model takes cached examples without running the aggregator, and counts both kinds.
    let examples: Vec<_> = cached.sources[0].train_rows[..3]
        .iter()
        .map(|&r| cached.example(0, r, None, true).unwrap())
        .collect();
    asm.fused_examples(&examples).unwrap();
    assert_eq!(asm.vggt_forwards.load(Ordering::Relaxed), 0);
    assert_eq!(asm.cached_examples.load(Ordering::Relaxed), 3);
}

#[test]
fn with_view_dropout_a_sample_reads_its_kept_views_rows_of_the_full_scene() {
    let exp = load(cached_experiment(), &["data.view_dropout=0.5"]);
    let asm = assemble(&exp, &Device::Cpu).unwrap();
    let cached = Corpus::new(&exp, asm.tokenizer.clone(), &exp.data.datasets).unwrap();
    let mut live_datasets = exp.data.datasets.clone();
    live_datasets[0].features = None;
    let live = Corpus::new(&exp, asm.tokenizer.clone(), &live_datasets).unwrap();
    let store = cached.sources[0].features.as_ref().unwrap();
    let per_view = store.manifest().tokens_per_view;
    let mut dropped_some = false;
    for &row in cached.sources[0].train_rows.iter().take(8) {
        for stream in 0..4u64 {
            let c = cached.example(0, row, Some(stream), true).unwrap();
            let l = live.example(0, row, Some(stream), true).unwrap();
            // The same views are kept (same geometry), their rows taken from the full scene.
            let kept = l.images.dim(0).unwrap();
            assert_eq!(
                c.geometry.as_ref().map(Vec::len),
                l.geometry.as_ref().map(Vec::len)
            );
            let vision = c.vision.unwrap();
            assert_eq!(vision.dim(0).unwrap(), kept * per_view);
            dropped_some |= kept < exp.data.views_per_sample;
            let scene = store.scene(&c.record.scene_id).unwrap();
            let full = Tensor::from_vec(
                scene.values,
                (scene.frame_ids.len() * per_view, store.manifest().channels),
                &Device::Cpu,
            )
            .unwrap();
            if kept == scene.frame_ids.len() {
                assert_eq!(max_rel(&vision, &full), 0.0);
            }
        }
    }
    assert!(dropped_some, "view dropout 0.5 never dropped a view");
}

/// Trains 3 steps (no evaluation, no dropout of any kind) on `experiment`.
fn run(experiment: &Path, name: &str) -> PathBuf {
    let run_dir = world::shared().root.join("runs").join(name);
    let _ = std::fs::remove_dir_all(&run_dir);
    train(&TrainOptions {
        experiment: experiment.display().to_string(),
        run_dir: Some(run_dir.clone()),
        max_steps: Some(3),
        overrides: vec![
            "model.lora.dropout=0".into(),
            "data.view_dropout=0".into(),
            "eval.every=0".into(),
        ],
        loader_threads: 1,
        no_hash_cache: true,
        ..Default::default()
    })
    .unwrap()
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "train")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn training_on_cached_features_takes_the_same_steps_as_vggt_live() {
    let live = run(&world::shared().experiment, "features-live");
    let cached = run(cached_experiment(), "features-cached");
    let (a, b) = (losses(&live), losses(&cached));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{a:?} vs {b:?}");
    }
    let pins: Value =
        serde_json::from_str(&std::fs::read_to_string(cached.join("pins.json")).unwrap()).unwrap();
    assert!(
        pins["pins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["field"] == "data.datasets.0.features.digest"),
        "{pins}"
    );
}

/// What `pins::verify` reports against an experiment that must not pass it.
fn pin_problems(exp: &Experiment) -> Vec<String> {
    let problems = pins::verify(exp, &mut HashCache::disabled()).unwrap_err();
    problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn features_that_do_not_match_the_experiment_are_refused_naming_the_pin() {
    let path = cached_experiment();
    // Other output layers than the features were computed with.
    let exp = load(path, &["model.vggt.layers=[1]"]);
    let text = pin_problems(&exp);
    assert!(
        text.iter()
            .any(|t| t.contains("data.datasets.0.features (layers)")
                && t.contains("computed with layers [0, 1], the experiment has [1]")),
        "{text:?}"
    );
    // Another dtype.
    let exp = load(path, &["model.frozen_dtype=bf16"]);
    let text = pin_problems(&exp);
    assert!(
        text.iter()
            .any(|t| t.contains("computed with dtype f32, the experiment has bf16")),
        "{text:?}"
    );
    // A wrong digest is a mismatch like any other pin.
    let text = std::fs::read_to_string(path).unwrap();
    let digest = roomplan_prep::shard::features::FeatureManifest::read(
        &world::shared().root.join("features"),
    )
    .unwrap()
    .digest();
    let broken = world::shared().root.join("fixture-cached-broken.yaml");
    std::fs::write(&broken, text.replace(&digest, &"f".repeat(64))).unwrap();
    let exp = load(&broken, &[]);
    let text = pin_problems(&exp);
    assert!(
        text.iter()
            .any(|t| t.contains("sha256 mismatch for data.datasets.0.features.digest")),
        "{text:?}"
    );
}
