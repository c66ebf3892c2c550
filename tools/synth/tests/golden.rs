//! Golden digests of generated trees, and independence from the thread count.

use roomplan_synth::{generate, io::list_tree, ScannetFormat, SynthConfig};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

fn tiny(faults: bool) -> SynthConfig {
    SynthConfig {
        seed: 11,
        num_scenes: 2,
        frames_per_scene: 8,
        scannet_color_size: (48, 36),
        scannet_depth_size: (32, 24),
        scannet_format: ScannetFormat::Both,
        bird_size: (32, 24),
        faults,
        ..SynthConfig::default()
    }
}

fn generate_with_threads(
    cfg: &SynthConfig,
    threads: usize,
) -> (tempfile::TempDir, roomplan_synth::Summary) {
    let dir = tempfile::tempdir().unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let summary = pool
        .install(|| generate(cfg, &dir.path().join("out")))
        .unwrap();
    (dir, summary)
}

/// sha256 of each top-level part of the tree (a failing snapshot then says which dataset moved).
fn part_digests(root: &Path) -> BTreeMap<String, String> {
    let mut parts: BTreeMap<String, Sha256> = BTreeMap::new();
    for rel in list_tree(root).unwrap() {
        let top = rel.split('/').next().unwrap().to_string();
        let bytes = std::fs::read(root.join(&rel)).unwrap();
        let h = parts.entry(top).or_default();
        h.update(rel.as_bytes());
        h.update(Sha256::digest(&bytes));
    }
    parts
        .into_iter()
        .map(|(k, h)| (k, hex::encode(h.finalize())))
        .collect()
}

#[test]
fn golden_tree_digests() {
    for faults in [false, true] {
        let (dir, summary) = generate_with_threads(&tiny(faults), 2);
        let name = if faults { "tiny_with_faults" } else { "tiny" };
        insta::assert_yaml_snapshot!(format!("{name}_summary"), summary);
        insta::assert_yaml_snapshot!(
            format!("{name}_parts"),
            part_digests(&dir.path().join("out"))
        );
    }
}

#[test]
fn output_does_not_depend_on_thread_count_and_does_depend_on_seed() {
    let cfg = tiny(true);
    let (_a, one) = generate_with_threads(&cfg, 1);
    let (_b, two) = generate_with_threads(&cfg, 2);
    assert_eq!(one, two);
    let (_c, other) = generate_with_threads(&SynthConfig { seed: 12, ..cfg }, 2);
    assert_ne!(one.tree_digest, other.tree_digest);
}

#[test]
fn refuses_a_non_empty_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "x").unwrap();
    let err = generate(&tiny(false), dir.path()).unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");
    assert!(dir.path().join("keep.txt").exists());
    let err = generate(
        &SynthConfig {
            frames_per_scene: 2,
            ..tiny(false)
        },
        &dir.path().join("new"),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("frames_per_scene must be at least 4"),
        "{err}"
    );
}
