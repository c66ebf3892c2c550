//! With `faults: true`, every entry of faults.json describes a defect that is really in the
//! named file, and the rest of the tree stays valid.

use roomplan_synth::{generate, ScannetFormat, SynthConfig};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn read_json(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Walks the `.sens` frame table; returns the poses of complete frames and whether the file
/// ended cleanly (IMU count present, nothing left over).
fn sens_frames(path: &Path) -> (Vec<[f32; 16]>, Vec<Vec<u8>>, bool) {
    let b = std::fs::read(path).unwrap();
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
    };
    let name_len = u64_at(4).unwrap() as usize;
    let mut o = 12 + name_len + 4 * 64 + 8 + 16 + 4;
    let n = u64_at(o).unwrap();
    o += 8;
    let (mut poses, mut jpegs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let Some(head) = b.get(o..o + 64 + 32) else {
            return (poses, jpegs, false);
        };
        let pose: [f32; 16] =
            std::array::from_fn(|i| f32::from_le_bytes(head[i * 4..i * 4 + 4].try_into().unwrap()));
        let cs = u64::from_le_bytes(head[80..88].try_into().unwrap()) as usize;
        let ds = u64::from_le_bytes(head[88..96].try_into().unwrap()) as usize;
        let start = o + 96;
        let Some(color) = b.get(start..start + cs) else {
            return (poses, jpegs, false);
        };
        if b.len() < start + cs + ds {
            return (poses, jpegs, false);
        }
        poses.push(pose);
        jpegs.push(color.to_vec());
        o = start + cs + ds;
    }
    (poses, jpegs, u64_at(o) == Some(0) && b.len() == o + 8)
}

#[test]
fn every_listed_fault_is_present_and_nothing_else_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let cfg = SynthConfig {
        seed: 3,
        num_scenes: 3,
        frames_per_scene: 8,
        scannet_color_size: (48, 36),
        scannet_depth_size: (32, 24),
        scannet_format: ScannetFormat::Both,
        bird_size: (32, 32),
        faults: true,
        ..SynthConfig::default()
    };
    let summary = generate(&cfg, &out).unwrap();
    let faults = read_json(&out.join("faults.json")).unwrap();
    let faults = faults.as_array().unwrap();
    assert_eq!(summary.faults, faults.len());
    let kinds: BTreeSet<&str> = faults.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "corrupt_jpeg",
            "inf_pose",
            "malformed_json",
            "missing_depth",
            "skipped_annotation",
            "truncated_sens",
            "unknown_scene"
        ]
    );
    let truth = read_json(&out.join("synth.json")).unwrap();
    let scene_ids: BTreeSet<&str> = truth["scenes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scene_id"].as_str().unwrap())
        .collect();
    let mut faulty_files = BTreeSet::new();
    for f in faults {
        assert_eq!(f["expect"], "reject");
        let file = out.join(f["file"].as_str().unwrap());
        let record = f["record"].as_str().unwrap();
        faulty_files.insert(f["file"].as_str().unwrap().to_string());
        let frame = || {
            record
                .strip_prefix("frame ")
                .unwrap()
                .parse::<usize>()
                .unwrap()
        };
        match (f["kind"].as_str().unwrap(), f["dataset"].as_str().unwrap()) {
            ("truncated_sens", "scannet") => {
                let (poses, _, clean) = sens_frames(&file);
                assert!(!clean, "{record}: file is complete");
                assert_eq!(poses.len(), frame(), "frames before the cut are complete");
            }
            ("inf_pose", "scannet") if file.extension().unwrap() == "sens" => {
                let (poses, _, _) = sens_frames(&file);
                assert!(poses[frame()].iter().all(|v| *v == f32::NEG_INFINITY));
                assert!(poses[0].iter().all(|v| v.is_finite()));
            }
            ("inf_pose", "scannet") => {
                let text = std::fs::read_to_string(&file).unwrap();
                assert_eq!(
                    text.split_whitespace().filter(|t| *t == "-inf").count(),
                    16,
                    "{text}"
                );
            }
            ("corrupt_jpeg", "scannet") => {
                let jpeg = if file.extension().unwrap() == "sens" {
                    sens_frames(&file).1[frame()].clone()
                } else {
                    std::fs::read(&file).unwrap()
                };
                assert_eq!(&jpeg[..2], [0xFF, 0xD8]);
                assert!(
                    image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).is_err()
                );
            }
            ("missing_depth", _) => {
                assert!(!file.exists(), "{} exists", file.display());
                let siblings = std::fs::read_dir(file.parent().unwrap()).unwrap().count();
                assert_eq!(siblings, 7, "the other frames' depth is there");
            }
            ("malformed_json", "arkitscenes") => {
                let err = read_json(&file).unwrap_err();
                assert!(err.contains("EOF"), "{err}");
            }
            ("skipped_annotation", "arkitscenes") => {
                let ann = read_json(&file).unwrap();
                assert_eq!(ann["skipped"], true);
                assert_eq!(ann["data"], serde_json::json!([]));
            }
            ("unknown_scene", "scanqa") => {
                let records = read_json(&file).unwrap();
                let r = records
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["question_id"] == record)
                    .unwrap();
                assert!(!scene_ids.contains(r["scene_id"].as_str().unwrap()));
            }
            ("unknown_scene", "sqa3d") => {
                let doc = read_json(&file).unwrap();
                let list = doc.get("questions").or(doc.get("annotations")).unwrap();
                let r = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["question_id"].as_u64() == record.parse().ok())
                    .unwrap();
                assert!(!scene_ids.contains(r["scene_id"].as_str().unwrap()));
            }
            other => panic!("unexpected fault {other:?}"),
        }
    }
    // Every other JSON file parses, every other .sens is complete.
    for scene in truth["scenes"].as_array().unwrap() {
        let id = scene["scene_id"].as_str().unwrap();
        let sens = format!("scannet/scans/{id}/{id}.sens");
        if !faulty_files.contains(&sens)
            || !faults
                .iter()
                .any(|f| f["kind"] == "truncated_sens" && f["file"] == sens.as_str())
        {
            let (poses, _, clean) = sens_frames(&out.join(&sens));
            assert!(clean && poses.len() == 8, "{sens}");
        }
        let v = scene["video_id"].as_str().unwrap();
        let ann = format!(
            "arkitscenes/3dod/{}/{v}/{v}_3dod_annotation.json",
            scene["splits"]["arkit"].as_str().unwrap()
        );
        if !faulty_files.contains(&ann) {
            let a = read_json(&out.join(&ann)).unwrap();
            assert_eq!(a["skipped"], false);
            assert!(!a["data"].as_array().unwrap().is_empty());
        }
    }
}
