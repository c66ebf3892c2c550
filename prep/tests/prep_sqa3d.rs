//! `prep-sqa3d` end to end on synthetic ScanNet + SQA3D data in the real formats.

mod scannet_common;

use std::collections::BTreeSet;
use std::path::Path;

use roomplan_prep::geometry::{validate_pose, ReferenceFrame};
use roomplan_prep::scannet::read_ply_bounds_hashed;
use roomplan_prep::shard::{Dataset, ENCODING_PNG};
use roomplan_synth::ScannetFormat;
use scannet_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_prep-sqa3d");

fn prep(raw: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (scannet, sqa3d) = (raw.join("scannet"), raw.join("sqa3d"));
    let mut args = vec![
        "--scannet",
        path_arg(&scannet),
        "--sqa3d",
        path_arg(&sqa3d),
        "--out",
        path_arg(out),
    ];
    args.extend_from_slice(extra);
    run(BIN, &args)
}

#[test]
fn snapshot_with_bev_and_situations_against_the_truth() {
    let tmp = synth(&small_config(ScannetFormat::Sens, false));
    let raw = raw(&tmp);
    let out = tmp.path().join("out");
    let res = prep(
        &raw,
        &out,
        &["--bev", "--threads", "2", "--num-views", "4", "--image-width", "126"],
    );
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let dataset = Dataset::open(&out).unwrap();
    let counts = dataset.manifest().counts;
    assert_eq!((counts.scenes, counts.views, counts.rejects), (3, 3 * (4 + 1), 0));
    insta::assert_snapshot!(
        "sqa3d_manifest",
        std::fs::read_to_string(out.join("manifest.json")).unwrap()
    );
    insta::assert_snapshot!("sqa3d_dump", dump(&out));

    let truth = truth(&raw);
    for scene_truth in truth["scenes"].as_array().unwrap() {
        let id = scene_truth["scene_id"].as_str().unwrap();
        let scene = dataset.scene_by_id(id).unwrap().unwrap();
        // The bird's-eye view comes last, as given, without geometry.
        let bird = scene.views.last().unwrap();
        assert_eq!(
            (bird.frame_id.as_str(), bird.encoding.as_str(), bird.width, bird.height),
            ("bird", ENCODING_PNG, 64, 36)
        );
        assert!(bird.geometry.is_none());
        assert_eq!(
            bird.image,
            std::fs::read(raw.join(format!("sqa3d/bird/{id}_bird.png"))).unwrap()
        );
        // The mesh centre read from the PLY is the one synth placed the situations around.
        let ply = raw.join(format!("scannet/scans/{id}/{id}_vh_clean_2.ply"));
        let (bounds, _) = read_ply_bounds_hashed(&ply).unwrap();
        let centre: Vec<f64> = scene_truth["scannet"]["mesh_centre"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for k in 0..3 {
            assert!(
                (bounds.center()[k] - centre[k]).abs() < 1e-9,
                "{id} mesh centre {:?} vs {centre:?}",
                bounds.center()
            );
        }
        // Positions: raw = as given; in the reference frame = (given + centre) seen from the
        // gravity-aligned frame of the first view.
        let first = &scene_truth["scannet"]["frames"][scene.views[0].frame_id.parse::<usize>().unwrap()];
        let reference = ReferenceFrame::from_camera(&validate_pose(&mat4(&first["c2w"])).unwrap());
        let mut n = 0;
        for i in 0..dataset.num_samples() {
            let s = dataset.sample(i).unwrap();
            if s.scene_id != id {
                continue;
            }
            n += 1;
            assert_eq!(s.task, "sqa3d");
            assert!(s.situation.as_deref().is_some_and(|t| !t.is_empty()));
            assert_eq!(s.answers.len(), 1);
            let agent = s.agent.unwrap();
            assert_eq!(agent.position_raw[2], 0.0, "SQA3D agents stand at z = 0");
            let world = [0, 1, 2].map(|k| agent.position_raw[k] + centre[k]);
            let expect = reference.point_to_reference(&world);
            for k in 0..3 {
                assert!((agent.position_ref[k] - expect[k]).abs() < 1e-4, "{id} {}", s.sample_id);
            }
            // Heading is horizontal (a yaw) and a unit vector.
            let h = agent.heading_ref;
            assert!(
                h[1].abs() < 1e-9 && ((h[0] * h[0] + h[2] * h[2]).sqrt() - 1.0).abs() < 1e-9,
                "{h:?}"
            );
        }
        assert!(n > 0, "{id} has samples");
    }
}

#[test]
fn faults_and_duplicates_are_rejected_exactly() {
    let tmp = synth(&small_config(ScannetFormat::Sens, true));
    let raw = raw(&tmp);
    // Add a duplicate of the first val question (same id, other text) to the questions file.
    let q_path = raw.join("sqa3d/balanced/v1_balanced_questions_val_scannetv2.json");
    let mut questions: serde_json::Value = serde_json::from_slice(&std::fs::read(&q_path).unwrap()).unwrap();
    let list = questions["questions"].as_array_mut().unwrap();
    let mut copy = list[0].clone();
    let dup_id = copy["question_id"].as_i64().unwrap();
    copy["question"] = "Is this a duplicate?".into();
    list.push(copy);
    std::fs::write(&q_path, serde_json::to_vec_pretty(&questions).unwrap()).unwrap();

    let out = tmp.path().join("out");
    let res = prep(&raw, &out, &["--threads", "2", "--image-width", "56"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let mut expected = faults(&raw, &["scannet", "sqa3d"]);
    expected.insert((
        "sqa3d/balanced/v1_balanced_questions_val_scannetv2.json".into(),
        dup_id.to_string(),
    ));
    expected.insert((
        "sqa3d/balanced/v1_balanced_sqa_annotations_val_scannetv2.json".into(),
        dup_id.to_string(),
    ));
    let all = rejects(&out);
    let got: BTreeSet<(String, String)> = all.iter().map(|(f, r, _)| (f.clone(), r.clone())).collect();
    assert_eq!(got, expected);
    // Both copies of the duplicated question are named; the annotation says why it is lost.
    let dup: Vec<&String> = all
        .iter()
        .filter(|(_, r, _)| *r == dup_id.to_string())
        .map(|(_, _, reason)| reason)
        .collect();
    assert_eq!(dup.len(), 3, "{dup:?}");
    assert!(
        dup.iter()
            .any(|r| r.contains("its question_id is duplicated in sqa3d:balanced/v1_balanced_questions_val")),
        "{dup:?}"
    );

    let dataset = Dataset::open(&out).unwrap();
    let total_questions: usize = ["train", "val", "test"]
        .iter()
        .map(|s| {
            let p = raw.join(format!("sqa3d/balanced/v1_balanced_questions_{s}_scannetv2.json"));
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["questions"].as_array().unwrap().len()
        })
        .sum();
    // Lost: the ghost-scene question and both copies of the duplicate.
    assert_eq!(dataset.manifest().counts.samples as usize, total_questions - 3);
    assert!((0..dataset.num_samples()).all(|i| dataset.sample(i).unwrap().sample_id != dup_id.to_string()));
}

/// SQA3D's real layout: the bird's-eye renders (bird.zip) beside `sqa_task/`, not in it. With
/// `--bev-dir` they are found there and give the same scenes as the default layout; only the raw
/// input labels differ.
#[test]
fn bird_views_from_a_folder_of_their_own() {
    let tmp = synth(&small_config(ScannetFormat::Sens, false));
    let raw = raw(&tmp);
    let args = ["--threads", "2", "--num-views", "2", "--image-width", "56"];
    let default_out = tmp.path().join("default");
    let res = prep(&raw, &default_out, &[&["--bev"][..], &args].concat());
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let bird = tmp.path().join("bird");
    std::fs::rename(raw.join("sqa3d/bird"), &bird).unwrap();
    // The default layout is gone: --bev alone names the missing folder.
    let res = prep(&raw, &tmp.path().join("missing"), &[&["--bev"][..], &args].concat());
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("bird"), "{}", String::from_utf8_lossy(&res.stderr));
    let out = tmp.path().join("bev_dir");
    let res = prep(&raw, &out, &[&["--bev-dir", path_arg(&bird)][..], &args].concat());
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let (a, b) = (Dataset::open(&default_out).unwrap(), Dataset::open(&out).unwrap());
    assert_eq!(b.manifest().counts.rejects, 0);
    assert_eq!(a.num_scenes(), b.num_scenes());
    for i in 0..a.num_scenes() {
        let (sa, sb) = (a.scene(i).unwrap(), b.scene(i).unwrap());
        assert_eq!(sb.views.last().unwrap().frame_id, "bird");
        assert_eq!(sa, sb);
    }
    let labels: Vec<String> = b.manifest().raw_inputs.iter().map(|r| r.path.clone()).collect();
    assert!(labels.iter().any(|l| l.starts_with("bev-dir:scene") && l.ends_with("_bird.png")), "{labels:?}");
}

#[test]
fn deterministic_with_one_or_two_threads() {
    let tmp = synth(&small_config(ScannetFormat::Export, true));
    let raw = raw(&tmp);
    let mut outputs = Vec::new();
    for (name, threads) in [("a", "1"), ("b", "2"), ("c", "2")] {
        let out = tmp.path().join(name);
        let res = prep(&raw, &out, &["--bev", "--threads", threads, "--image-width", "112"]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        outputs.push(files(&out));
    }
    assert_eq!(outputs[0], outputs[1], "1 vs 2 threads");
    assert_eq!(outputs[1], outputs[2], "run twice");
}

#[test]
fn a_missing_mesh_rejects_the_scene_and_its_samples() {
    let tmp = synth(&small_config(ScannetFormat::Sens, false));
    let raw = raw(&tmp);
    std::fs::remove_file(raw.join("scannet/scans/scene0000_00/scene0000_00_vh_clean_2.ply")).unwrap();
    let out = tmp.path().join("out");
    let res = prep(&raw, &out, &["--image-width", "56"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.manifest().counts.scenes, 2);
    assert!(dataset.scene_by_id("scene0000_00").unwrap().is_none());
    let all = rejects(&out);
    assert_eq!(all[0].0, "scannet/scans/scene0000_00/scene0000_00_vh_clean_2.ply");
    // Each lost sample names both of its records with the reason.
    assert!(
        all[1..]
            .iter()
            .all(|(_, _, reason)| reason.starts_with("scene scene0000_00 has no usable mesh centre")),
        "{all:?}"
    );
    let lost: usize = ["train", "val", "test"]
        .iter()
        .map(|s| {
            let p = raw.join(format!("sqa3d/balanced/v1_balanced_questions_{s}_scannetv2.json"));
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["questions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|q| q["scene_id"] == "scene0000_00")
                .count()
        })
        .sum();
    assert!(lost > 0);
    assert_eq!(
        all.len() - 1,
        2 * lost,
        "two records (question, annotation) per lost sample"
    );
}
