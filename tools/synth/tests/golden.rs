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

#[test]
fn binary_prints_the_tree_digest_of_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cli");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_synth"))
        .args([
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "11",
            "--scenes",
            "2",
            "--frames",
            "8",
        ])
        .args([
            "--color-size",
            "48x36",
            "--depth-size",
            "32x24",
            "--bird-size",
            "32x24",
        ])
        .args(["--scannet-format", "both", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    let (digest, _, _) = roomplan_synth::io::tree_digest(&out).unwrap();
    assert_eq!(stdout.trim(), digest);
    // Same arguments as `tiny(false)`, so the same tree as the library writes.
    let (_lib, summary) = generate_with_threads(&tiny(false), 1);
    assert_eq!(summary.tree_digest, digest);
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_synth"))
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
}

#[test]
fn scannet_format_selects_sens_or_export_files() {
    for (format, sens, export) in [
        (ScannetFormat::Sens, true, false),
        (ScannetFormat::Export, false, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        generate(
            &SynthConfig {
                scannet_format: format,
                ..tiny(false)
            },
            &out,
        )
        .unwrap();
        let scan = out.join("scannet/scans/scene0000_00");
        assert_eq!(scan.join("scene0000_00.sens").exists(), sens, "{format:?}");
        assert_eq!(scan.join("color/0.jpg").exists(), export, "{format:?}");
        assert_eq!(
            scan.join("intrinsic/intrinsic_color.txt").exists(),
            export,
            "{format:?}"
        );
        assert!(
            scan.join("scene0000_00.txt").exists()
                && scan.join("scene0000_00_vh_clean_2.ply").exists()
        );
    }
}
