//! Shared helpers of the prep-scanqa / prep-sqa3d integration tests: synthetic raw data in the
//! real formats (roomplan-synth), running the binaries, and reading their output.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use roomplan_prep::shard::{describe_sample, describe_scene, Dataset};
use roomplan_synth::{ScannetFormat, SynthConfig};

/// A small synthetic world: 3 rooms × 12 frames, small images (the last room is a ScanNet test
/// scan without axis alignment; room 0 gets the frame faults, room 1 the truncated `.sens`).
pub fn small_config(format: ScannetFormat, faults: bool) -> SynthConfig {
    SynthConfig {
        seed: 7,
        num_scenes: 3,
        frames_per_scene: 12,
        scannet_color_size: (160, 120),
        scannet_depth_size: (80, 60),
        scannet_format: format,
        bird_size: (64, 36),
        scanqa_per_scene: 3,
        sqa3d_situations_per_scene: 2,
        faults,
    }
}

/// Generates the raw data under `<tmp>/raw`.
pub fn synth(cfg: &SynthConfig) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    roomplan_synth::generate(cfg, &tmp.path().join("raw")).unwrap();
    tmp
}

pub fn raw(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("raw")
}

/// Runs a prep binary with arguments. Its sha256 cache is one under the system's temporary folder
/// (never the user's); tests that look at the cache set their own with [`run_with_cache`].
pub fn run(bin: &str, args: &[&str]) -> Output {
    run_with_cache(bin, args, &std::env::temp_dir().join("roomplan-prep-tests-cache"))
}

/// Runs a prep binary with its sha256 cache in `cache_dir`.
pub fn run_with_cache(bin: &str, args: &[&str], cache_dir: &Path) -> Output {
    let out = Command::new(bin)
        .args(args)
        .env("ROOMPLAN_CACHE_DIR", cache_dir)
        .output()
        .unwrap();
    if !out.status.success() && out.status.code() != Some(3) {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

pub fn path_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A readable dump of every row of a dataset and its rejects.
pub fn dump(dir: &Path) -> String {
    let dataset = Dataset::open(dir).unwrap();
    let mut s = String::new();
    for i in 0..dataset.num_scenes() {
        s.push_str(&describe_scene(&dataset.scene(i).unwrap()));
    }
    for i in 0..dataset.num_samples() {
        s.push_str(&describe_sample(&dataset.sample(i).unwrap()));
    }
    s.push_str("rejects.jsonl:\n");
    s.push_str(&std::fs::read_to_string(dir.join("rejects.jsonl")).unwrap());
    s
}

/// The injected faults of some datasets as (file relative to the synth root, record).
pub fn faults(raw: &Path, datasets: &[&str]) -> BTreeSet<(String, String)> {
    let faults: serde_json::Value = serde_json::from_slice(&std::fs::read(raw.join("faults.json")).unwrap()).unwrap();
    faults
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| datasets.contains(&f["dataset"].as_str().unwrap()))
        .map(|f| {
            assert_eq!(f["expect"], "reject");
            (
                f["file"].as_str().unwrap().to_string(),
                f["record"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The rejects of a dataset as (file, record), with `root:path` written as `root/path` (the synth
/// root holds the input roots as folders of the same names).
pub fn rejects(dir: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(dir.join("rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["file"].as_str().unwrap().replacen(':', "/", 1),
                v["record"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every file of a folder with its bytes, sorted by name.
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The truth that synth recorded.
pub fn truth(raw: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(raw.join("synth.json")).unwrap()).unwrap()
}

/// A row-major 4×4 from a JSON array of 16 numbers.
pub fn mat4(v: &serde_json::Value) -> [[f64; 4]; 4] {
    let a: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    std::array::from_fn(|r| std::array::from_fn(|c| a[r * 4 + c]))
}
