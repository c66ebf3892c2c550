//! `prep-scanqa` end to end on synthetic ScanNet + ScanQA data in the real formats.

mod scannet_common;

use std::collections::BTreeSet;

use roomplan_prep::geometry::{validate_pose, ReferenceFrame};
use roomplan_prep::shard::{merge_datasets, Dataset};
use roomplan_synth::ScannetFormat;
use scannet_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_prep-scanqa");

fn prep(raw: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let (scannet, scanqa) = (raw.join("scannet"), raw.join("scanqa"));
    let mut args = vec![
        "--scannet",
        path_arg(&scannet),
        "--scanqa",
        path_arg(&scanqa),
        "--out",
        path_arg(out),
    ];
    args.extend_from_slice(extra);
    run(BIN, &args)
}

#[test]
fn snapshot_and_geometry_against_the_truth() {
    let tmp = synth(&small_config(ScannetFormat::Sens, false));
    let raw = raw(&tmp);
    let out = tmp.path().join("out");
    let res = prep(&raw, &out, &["--threads", "2"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    let dataset = Dataset::open(&out).unwrap();
    let digest = std::fs::read(out.join("manifest.json"))
        .map(|b| roomplan_prep::manifest::sha256_hex(&b))
        .unwrap();
    assert!(
        stderr.contains(&format!("dataset digest {digest}")),
        "{stderr}"
    );
    let counts = dataset.manifest().counts;
    assert_eq!(
        (counts.scenes, counts.samples, counts.views, counts.rejects),
        (3, 9, 24, 0)
    );
    insta::assert_snapshot!(
        "scanqa_manifest",
        std::fs::read_to_string(out.join("manifest.json")).unwrap()
    );
    insta::assert_snapshot!("scanqa_dump", dump(&out));

    let truth = truth(&raw);
    for scene_truth in truth["scenes"].as_array().unwrap() {
        let id = scene_truth["scene_id"].as_str().unwrap();
        let scene = dataset.scene_by_id(id).unwrap().unwrap();
        let sn = &scene_truth["scannet"];
        // Test scans have no axisAlignment: identity, flagged.
        if scene_truth["test_scene"].as_bool().unwrap() {
            assert!(!scene.axis_alignment_from_metadata);
            assert_eq!(scene.axis_alignment[0], 1.0);
        } else {
            assert!(scene.axis_alignment_from_metadata);
            let expect = mat4(&sn["axis_alignment"]);
            for i in 0..16 {
                assert!(
                    (scene.axis_alignment[i] - expect[i / 4][i % 4]).abs() < 1e-5,
                    "{id} axis alignment"
                );
            }
        }
        let c2w = |frame: &str| {
            let f = &sn["frames"][frame.parse::<usize>().unwrap()];
            validate_pose(&mat4(&f["c2w"])).unwrap()
        };
        // Views evenly spaced over 12 frames: round(i·11/7).
        let ids: Vec<&str> = scene.views.iter().map(|v| v.frame_id.as_str()).collect();
        assert_eq!(ids, ["0", "2", "3", "5", "6", "8", "9", "11"]);
        let reference = ReferenceFrame::from_camera(&c2w(&scene.views[0].frame_id));
        let k = &sn["color_intrinsics"];
        let (w, h) = (k["width"].as_f64().unwrap(), k["height"].as_f64().unwrap());
        for view in &scene.views {
            // VGGT's size rule: 518 wide, height round(120·518/160/14)·14 = 392, no crop.
            assert_eq!((view.width, view.height), (518, 392));
            let g = view.geometry.as_ref().unwrap();
            let expect = reference.camera_to_reference(&c2w(&view.frame_id));
            for r in 0..3 {
                assert!(
                    (g.t[r] as f64 - expect.t[r]).abs() < 1e-4,
                    "{id} frame {} t",
                    view.frame_id
                );
                for c in 0..3 {
                    assert!(
                        (g.r[r * 3 + c] as f64 - expect.r[r][c]).abs() < 1e-4,
                        "{id} frame {} R",
                        view.frame_id
                    );
                }
            }
            let (sx, sy) = (518.0 / w, 392.0 / h);
            let fx = k["fx"].as_f64().unwrap() * sx;
            let cy = (k["cy"].as_f64().unwrap() + 0.5) * sy - 0.5;
            assert!(
                (g.k[0] as f64 - fx).abs() < 1e-3 && (g.k[5] as f64 - cy).abs() < 1e-3,
                "{id} K {:?}",
                g.k
            );
            let sum: f32 = g.depth_hist.iter().sum();
            assert_eq!(g.depth_hist.len(), 16);
            assert!(
                (sum - 1.0).abs() < 1e-5 && g.valid_depth_fraction > 0.5,
                "{id} depth {:?}",
                g.depth_hist
            );
        }
        // The reference frame is gravity-aligned and anchored at the first view.
        let g0 = scene.views[0].geometry.as_ref().unwrap();
        assert_eq!(g0.t, [0.0; 3]);
        // Its −Z is the first camera's viewing direction made horizontal: the camera's +z axis
        // (column 2 of R) has no reference-X component and points to −Z.
        assert!(
            g0.r[2].abs() < 1e-6 && g0.r[8] < 0.0,
            "{id} first view R {:?}",
            g0.r
        );
    }
    let mut splits = BTreeSet::new();
    for i in 0..dataset.num_samples() {
        let s = dataset.sample(i).unwrap();
        assert_eq!(s.task, "scanqa");
        // Test questions are kept, without answers; the others have some.
        let test = s.split == "test_w_obj" || s.split == "test_wo_obj";
        assert_eq!(s.answers.is_empty(), test, "{}", s.sample_id);
        assert_eq!(s.object_ids.is_none(), test);
        assert!(
            ["train", "val", "test_w_obj", "test_wo_obj"].contains(&s.split.as_str()),
            "{}",
            s.split
        );
        splits.insert(s.split.clone());
    }
    // Both test sets are prepared, each under its own split.
    assert_eq!(
        splits,
        BTreeSet::from(["test_w_obj", "test_wo_obj", "train", "val"].map(String::from))
    );
}

fn check_faults(format: ScannetFormat) {
    let tmp = synth(&small_config(format, true));
    let raw = raw(&tmp);
    let out = tmp.path().join("out");
    let res = prep(&raw, &out, &["--threads", "2"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let expected = faults(&raw, &["scannet", "scanqa"]);
    let got: BTreeSet<(String, String)> =
        rejects(&out).into_iter().map(|(f, r, _)| (f, r)).collect();
    assert_eq!(got, expected, "rejects must be exactly the injected faults");

    let dataset = Dataset::open(&out).unwrap();
    let counts = dataset.manifest().counts;
    // Every scene survives (the truncated .sens keeps its complete frames); only the question
    // about the unknown scene is lost.
    assert_eq!(
        (counts.scenes, counts.samples, counts.rejects),
        (3, 9, expected.len() as u64)
    );
    let frames = |id: &str| -> Vec<String> {
        dataset
            .scene_by_id(id)
            .unwrap()
            .unwrap()
            .views
            .iter()
            .map(|v| v.frame_id.clone())
            .collect()
    };
    let bad = frames("scene0000_00");
    assert_eq!(bad.len(), 8);
    assert!(
        bad.iter().all(
            |f| !["1", "2", "3", "4"][..if format == ScannetFormat::Export {
                4
            } else {
                3
            }]
                .contains(&f.as_str())
        ),
        "{bad:?}"
    );
    if format == ScannetFormat::Sens {
        // Cut in frame 6: frames 0..6 remain, all used.
        assert_eq!(frames("scene0001_00"), ["0", "1", "2", "3", "4", "5"]);
    }
    // --strict: the same dataset, and exit code 3.
    let strict_out = tmp.path().join("strict");
    let res = prep(&raw, &strict_out, &["--threads", "1", "--strict"]);
    assert_eq!(res.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains(&format!("{} record(s) rejected (--strict)", expected.len())),
        "{stderr}"
    );
    assert_eq!(files(&out), files(&strict_out));
}

#[test]
fn faults_in_the_sens_are_rejected_exactly() {
    check_faults(ScannetFormat::Sens);
}

#[test]
fn faults_in_the_export_folders_are_rejected_exactly() {
    check_faults(ScannetFormat::Export);
}

#[test]
fn deterministic_with_one_or_two_threads() {
    let tmp = synth(&small_config(ScannetFormat::Sens, true));
    let raw = raw(&tmp);
    let mut outputs = Vec::new();
    for (name, threads) in [("a", "1"), ("b", "2"), ("c", "2")] {
        let out = tmp.path().join(name);
        let res = prep(
            &raw,
            &out,
            &[
                "--threads",
                threads,
                "--image-width",
                "112",
                "--view-selection",
                "coverage",
            ],
        );
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        outputs.push(files(&out));
    }
    assert!(outputs[0]
        .iter()
        .any(|(name, _)| name == "scenes-00000.arrow"));
    assert_eq!(outputs[0], outputs[1], "1 vs 2 threads");
    assert_eq!(outputs[1], outputs[2], "run twice");
}

#[test]
fn the_hash_cache_changes_nothing_in_the_output() {
    let tmp = synth(&small_config(ScannetFormat::Sens, true));
    let raw = raw(&tmp);
    let cache = tmp.path().join("cache");
    let (scannet, scanqa) = (raw.join("scannet"), raw.join("scanqa"));
    let run_to = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["--scannet", path_arg(&scannet), "--scanqa", path_arg(&scanqa), "--out", path_arg(&out)];
        args.extend_from_slice(extra);
        let res = run_with_cache(BIN, &args, &cache);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        files(&out)
    };
    // Without the cache; filling it; reading from it: the same bytes, manifest and digest included.
    let off = run_to("off", &["--no-hash-cache"]);
    assert!(!cache.exists(), "--no-hash-cache must not write a cache");
    let filling = run_to("filling", &[]);
    let entries: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("sha256.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("off/manifest.json")).unwrap()).unwrap();
    let sens_digests: BTreeSet<String> = manifest["raw_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["path"].as_str().unwrap().ends_with(".sens"))
        .map(|i| i["sha256"].as_str().unwrap().to_string())
        .collect();
    let cached: BTreeSet<String> = entries
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["sha256"].as_str().unwrap().to_string())
        .collect();
    assert!(!sens_digests.is_empty());
    assert_eq!(cached, sens_digests, "the cache holds the digest of every .sens, as hashed");
    let from_cache = run_to("from_cache", &[]);
    assert_eq!(off, filling);
    assert_eq!(off, from_cache);

    // The cache is really read: a wrong digest under an unchanged stamp shows in the manifest…
    let mut poisoned = entries.clone();
    let (key, _) = entries.as_object().unwrap().iter().next().unwrap();
    poisoned[key]["sha256"] = serde_json::json!("0".repeat(64));
    std::fs::write(cache.join("sha256.json"), serde_json::to_vec(&poisoned).unwrap()).unwrap();
    run_to("poisoned", &[]);
    let text = std::fs::read_to_string(tmp.path().join("poisoned/manifest.json")).unwrap();
    assert!(text.contains(&"0".repeat(64)), "a cached digest is used as is");
    // …and a file whose mtime changed is hashed again.
    let sens = std::fs::File::options().write(true).open(key).unwrap();
    sens.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(sens);
    assert_eq!(run_to("touched", &[]), off);
}

#[test]
fn parts_merge_into_the_whole() {
    let tmp = synth(&small_config(ScannetFormat::Sens, true));
    let raw = raw(&tmp);
    let whole = tmp.path().join("whole");
    assert!(prep(&raw, &whole, &["--image-width", "56"])
        .status
        .success());
    let parts: Vec<_> = (0..2)
        .map(|i| {
            let dir = tmp.path().join(format!("part{i}"));
            let res = prep(
                &raw,
                &dir,
                &[
                    "--image-width",
                    "56",
                    "--num-shards",
                    "2",
                    "--shard-index",
                    &i.to_string(),
                ],
            );
            assert!(
                res.status.success(),
                "{}",
                String::from_utf8_lossy(&res.stderr)
            );
            dir
        })
        .collect();
    let merged = tmp.path().join("merged");
    let (manifest, _) = merge_datasets(&merged, &parts).unwrap();
    let whole = Dataset::open(&whole).unwrap();
    assert_eq!(manifest.counts, whole.manifest().counts);
    assert_eq!(manifest.raw_inputs, whole.manifest().raw_inputs);
    let merged_rejects: BTreeSet<_> = rejects(&merged).into_iter().collect();
    let whole_rejects: BTreeSet<_> = rejects(whole.dir()).into_iter().collect();
    assert_eq!(merged_rejects, whole_rejects);
}

#[test]
fn missing_inputs_are_errors_before_any_work() {
    let tmp = synth(&small_config(ScannetFormat::Sens, false));
    let raw = raw(&tmp);
    let out = tmp.path().join("out");
    let res = run(
        BIN,
        &[
            "--scannet",
            path_arg(&raw.join("nope")),
            "--scanqa",
            path_arg(&raw.join("scanqa")),
            "--out",
            path_arg(&out),
        ],
    );
    assert_eq!(res.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("--scannet") && stderr.contains("nope: no such folder"),
        "{stderr}"
    );
    assert!(!out.exists());
    std::fs::remove_file(raw.join("scanqa/ScanQA_v1.0_val.json")).unwrap();
    let res = prep(&raw, &out, &[]);
    assert_eq!(res.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("scanqa:ScanQA_v1.0_val.json: missing input"),
        "{stderr}"
    );
    assert!(!out.exists());
    // Without the val split, the run works.
    let res = prep(&raw, &out, &["--splits", "train,test_w_obj,test_wo_obj"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let dataset = Dataset::open(&out).unwrap();
    assert!((0..dataset.num_samples()).all(|i| dataset.sample(i).unwrap().split != "val"));
}

/// SensReader exports in a tree of their own (`--scannet-exports DIR`, `DIR/<scene>/color/...`)
/// give the same scenes as exports inside `scans/<scene>/`; without the flag, such scans are
/// rejects naming what is missing.
#[test]
fn exports_from_a_tree_of_their_own() {
    let tmp = synth(&small_config(ScannetFormat::Export, false));
    let raw = raw(&tmp);
    let args = ["--threads", "2", "--num-views", "2", "--image-width", "56"];
    let default_out = tmp.path().join("default");
    let res = prep(&raw, &default_out, &args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let exports = tmp.path().join("exports");
    let scans = raw.join("scannet/scans");
    let mut scenes = Vec::new();
    for entry in std::fs::read_dir(&scans).unwrap() {
        let scene = entry.unwrap().file_name();
        std::fs::create_dir_all(exports.join(&scene)).unwrap();
        for sub in ["color", "depth", "pose", "intrinsic"] {
            std::fs::rename(scans.join(&scene).join(sub), exports.join(&scene).join(sub)).unwrap();
        }
        scenes.push(scene.into_string().unwrap());
    }
    assert_eq!(scenes.len(), 3);
    let res = prep(&raw, &tmp.path().join("without"), &args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let lost = rejects(&tmp.path().join("without"));
    assert!(
        lost.iter()
            .any(|(_, _, reason)| reason.contains("neither") && reason.contains("export folders")),
        "{lost:?}"
    );
    let out = tmp.path().join("exports_out");
    let res = prep(
        &raw,
        &out,
        &[&["--scannet-exports", path_arg(&exports)][..], &args].concat(),
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let (a, b) = (
        Dataset::open(&default_out).unwrap(),
        Dataset::open(&out).unwrap(),
    );
    assert_eq!(b.manifest().counts.rejects, 0);
    assert_eq!(
        (a.num_scenes(), a.num_samples()),
        (b.num_scenes(), b.num_samples())
    );
    for i in 0..a.num_scenes() {
        assert_eq!(a.scene(i).unwrap(), b.scene(i).unwrap());
    }
    let labels: Vec<String> = b
        .manifest()
        .raw_inputs
        .iter()
        .map(|r| r.path.clone())
        .collect();
    for scene in &scenes {
        let prefix = format!("scannet-exports:{scene}/");
        assert!(labels.iter().any(|l| l.starts_with(&prefix)), "{labels:?}");
    }
}

/// kill -9 at several moments of an `--overwrite` run: the folder always holds the previous
/// dataset or the new one, whole, with the user's own files; the next run cleans up what the
/// killed one left and gives the same bytes as an uninterrupted run.
#[test]
fn kill_9_during_overwrite_leaves_the_previous_dataset_intact() {
    use std::process::{Command, Stdio};
    let mut cfg = small_config(ScannetFormat::Sens, false);
    cfg.frames_per_scene = 24;
    let tmp = synth(&cfg);
    let raw = raw(&tmp);
    let out = tmp.path().join("out");
    let res = prep(&raw, &out, &["--threads", "1"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let old_digest = String::from_utf8(res.stdout).unwrap().trim().to_string();
    std::fs::write(out.join("my_features.arrow"), b"mine").unwrap();
    std::fs::write(out.join("notes.tmp"), b"notes").unwrap();
    // The replacement: other options, so another digest (computed in a folder of its own).
    let new_args = [
        "--threads",
        "1",
        "--num-views",
        "4",
        "--view-selection",
        "coverage",
    ];
    let reference = prep(&raw, &tmp.path().join("reference"), &new_args);
    assert!(reference.status.success());
    let new_digest = String::from_utf8(reference.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(old_digest, new_digest);

    let staging_prefix = ".out.prep-";
    let mut killed_mid_run = 0;
    for delay_ms in [0u64, 30, 80, 150, 250, 400, 700] {
        let mut args = vec![
            "--scannet".to_string(),
            path_arg(&raw.join("scannet")).into(),
            "--scanqa".into(),
            path_arg(&raw.join("scanqa")).into(),
            "--out".into(),
            path_arg(&out).into(),
            "--overwrite".into(),
        ];
        args.extend(new_args.iter().map(|s| s.to_string()));
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the run is writing (its staging folder exists), then a little more.
        let start = std::time::Instant::now();
        while !std::fs::read_dir(tmp.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(staging_prefix)
        }) {
            if child.try_wait().unwrap().is_some() || start.elapsed().as_secs() > 60 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL on unix
        child.wait().unwrap();
        let report = roomplan_prep::shard::verify_dataset(&out).unwrap();
        assert!(report.ok(), "after {delay_ms} ms: {:?}", report.problems);
        assert!(
            report.digest == old_digest || report.digest == new_digest,
            "after {delay_ms} ms: digest {}",
            report.digest
        );
        killed_mid_run += (report.digest == old_digest) as usize;
        assert_eq!(
            std::fs::read(out.join("my_features.arrow")).unwrap(),
            b"mine"
        );
        assert_eq!(std::fs::read(out.join("notes.tmp")).unwrap(), b"notes");
        // Back to the old dataset for the next kill, unless the killed run had finished.
        if report.digest == new_digest {
            let res = prep(&raw, &out, &["--threads", "1", "--overwrite"]);
            assert!(res.status.success());
            assert_eq!(String::from_utf8(res.stdout).unwrap().trim(), old_digest);
        }
    }
    // Most kills hit the run before its end (how many depends on the machine's speed).
    assert!(killed_mid_run >= 1, "no kill landed before the run's end");
    let res = prep(&raw, &out, &[&["--overwrite"][..], &new_args[..]].concat());
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(String::from_utf8(res.stdout).unwrap().trim(), new_digest);
    assert_eq!(
        files(&out)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".arrow") && n != "my_features.arrow")
            .collect::<Vec<_>>(),
        files(&tmp.path().join("reference"))
            .into_iter()
            .filter(|(n, _)| n.ends_with(".arrow"))
            .collect::<Vec<_>>()
    );
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(staging_prefix))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn out_inside_a_raw_input_folder_is_refused() {
    let tmp = synth(&small_config(ScannetFormat::Sens, false));
    let raw = raw(&tmp);
    for (out, root) in [
        (raw.join("scanqa/shards"), "--scanqa"),
        (raw.join("scannet"), "--scannet"),
        (raw.join("scanqa/../scannet/scans/new"), "--scannet"),
    ] {
        let res = prep(&raw, &out, &[]);
        assert_eq!(res.status.code(), Some(2), "{}", out.display());
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(
            stderr.contains(&format!(
                "--out {} is inside the raw input folder {root} ",
                out.display()
            )),
            "{stderr}"
        );
        assert!(
            stderr.trim_end().ends_with("; write the dataset elsewhere"),
            "{stderr}"
        );
    }
    assert!(!raw.join("scanqa/shards").exists() && !raw.join("scannet/scans/new").exists());
}
