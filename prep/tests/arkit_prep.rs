//! `prep-arkit` end to end on synthetic ARKitScenes videos in the real 3DOD layout.

#[path = "scannet_common/mod.rs"]
mod scannet_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use roomplan_prep::actions::validate_text;
use roomplan_prep::geometry::{
    mat3_mul, mat3_transpose, mat4_from_row_major, validate_pose, Mat3, ReferenceFrame, Rigid,
};
use roomplan_prep::shard::{Dataset, SceneRecord};
use roomplan_synth::{ScannetFormat, SynthConfig};
use scannet_common::{dump, faults, files, path_arg, rejects, run, synth, truth};

const BIN: &str = env!("CARGO_BIN_EXE_prep-arkit");

/// Four rooms (sky directions Up, Left, Right, Up) with 16 frames each; small ScanNet side.
fn config(faults: bool) -> SynthConfig {
    SynthConfig {
        seed: 5,
        num_scenes: 4,
        frames_per_scene: 16,
        scannet_color_size: (40, 30),
        scannet_depth_size: (40, 30),
        scannet_format: ScannetFormat::Export,
        bird_size: (16, 16),
        scanqa_per_scene: 1,
        sqa3d_situations_per_scene: 1,
        faults,
    }
}

fn prep(arkitscenes: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--arkitscenes",
        path_arg(arkitscenes),
        "--out",
        path_arg(out),
        "--image-width",
        "112",
    ];
    args.extend_from_slice(extra);
    run(BIN, &args)
}

/// Camera (OpenCV) map of the rotation that turns a stored image upright, `p_new = C·p_old`.
fn upright_camera(sky: &str) -> Mat3 {
    match sky {
        "Left" => [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], // 90° clockwise
        "Right" => [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], // 90° counter-clockwise
        "Down" => [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
        _ => [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    }
}

fn close(a: f32, b: f64, tol: f64) -> bool {
    (a as f64 - b).abs() <= tol
}

#[test]
fn snapshot_geometry_and_actions_against_the_truth() {
    let tmp = synth(&config(false));
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("out");
    let res = prep(&raw.join("arkitscenes"), &out, &["--threads", "2"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    let dataset = Dataset::open(&out).unwrap();
    let counts = dataset.manifest().counts;
    assert_eq!((counts.scenes, counts.views, counts.rejects), (4, 40, 0), "{stderr}");
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    insta::assert_snapshot!("arkit_manifest", manifest);
    insta::assert_snapshot!("arkit_dump", dump(&out));

    let truth = truth(&raw);
    for scene_truth in truth["scenes"].as_array().unwrap() {
        let ark = &scene_truth["arkit"];
        let video = scene_truth["video_id"].as_str().unwrap();
        let sky = ark["sky_direction"].as_str().unwrap();
        let scene = dataset.scene_by_id(video).unwrap().unwrap();
        assert_eq!(scene.views.len(), 10, "default --num-views");
        let frame = |id: &str| {
            ark["frames"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["timestamp"] == id)
                .unwrap()
        };
        // The truth pose is the sensor camera's; the stored image is upright: c2w·Cᵀ.
        let upright = |id: &str| {
            let sensor = validate_pose(&mat4_from_row_major(
                &serde_json::from_value(frame(id)["c2w"].clone()).unwrap(),
            ))
            .unwrap();
            Rigid {
                r: mat3_mul(&sensor.r, &mat3_transpose(&upright_camera(sky))),
                t: sensor.t,
            }
        };
        let reference = ReferenceFrame::from_camera(&upright(&scene.views[0].frame_id));
        let ids: Vec<&str> = scene.views.iter().map(|v| v.frame_id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse().unwrap()));
        assert_eq!(ids, sorted, "{video}: views in capture order");
        for view in &scene.views {
            assert_ne!(
                frame(&view.frame_id)["traj"],
                "missing",
                "{video}: a frame without pose was used"
            );
            // Upright, VGGT size rule at width 112: landscape 256×192 → 112×84, portrait 192×256 →
            // 112×154 cropped to 112×112.
            let expect_size = if sky == "Up" { (112, 84) } else { (112, 112) };
            assert_eq!((view.width, view.height), expect_size, "{video} {sky}");
            let g = view.geometry.as_ref().unwrap();
            let expect = reference.camera_to_reference(&upright(&view.frame_id));
            for r in 0..3 {
                assert!(close(g.t[r], expect.t[r], 1e-5), "{video} {} t", view.frame_id);
                for c in 0..3 {
                    assert!(
                        close(g.r[r * 3 + c], expect.r[r][c], 1e-5),
                        "{video} {} R",
                        view.frame_id
                    );
                }
            }
            // Upright means the image's down (camera +y) points down in the gravity-aligned frame.
            assert!(
                g.r[3 + 1] < -0.7,
                "{video} {sky} frame {}: camera y in reference = {:?}",
                view.frame_id,
                [g.r[1], g.r[4], g.r[7]]
            );
            let sum: f32 = g.depth_hist.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{video} depth histogram sums to {sum}");
        }
        // The first view anchors the frame: identity rotation up to its pitch and roll, origin.
        let first = scene.views[0].geometry.as_ref().unwrap();
        assert!(first.t.iter().all(|x| x.abs() < 1e-6));
    }

    // Samples: canonical, valid actions; one list_objects per scene with every truth object.
    let mut per_scene_families: Vec<(String, BTreeSet<String>)> = Vec::new();
    for i in 0..dataset.num_samples() {
        let s = dataset.sample(i).unwrap();
        assert_eq!(s.task, "roomplan_action");
        let text = s.action_json.as_deref().unwrap();
        let action = validate_text(text).unwrap_or_else(|e| panic!("{}: {text}: {e}", s.sample_id));
        assert_eq!(action.canonical_json(), text, "{} is not canonical", s.sample_id);
        let source: serde_json::Value = serde_json::from_str(&s.source_json).unwrap();
        assert_eq!(source["action"], action.name());
        if let roomplan_prep::actions::Action::ListObjects { objects } = &action {
            let t = truth["scenes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["video_id"] == s.scene_id.as_str())
                .unwrap();
            assert_eq!(objects.len(), t["room"]["objects"].as_array().unwrap().len());
        }
        match per_scene_families.last_mut() {
            Some((scene, families)) if *scene == s.scene_id => {
                families.insert(action.name().to_string());
            }
            _ => per_scene_families.push((s.scene_id.clone(), BTreeSet::from([action.name().to_string()]))),
        }
    }
    assert_eq!(per_scene_families.len(), 4);
    for (scene, families) in &per_scene_families {
        for family in [
            "count",
            "list_objects",
            "locate",
            "move_object",
            "remove_object",
            "rotate_object",
        ] {
            assert!(families.contains(family), "{scene}: no {family} sample in {families:?}");
        }
    }

    // Same input and arguments → identical bytes, whatever the thread count.
    let again = tmp.path().join("again");
    let res = prep(&raw.join("arkitscenes"), &again, &["--threads", "1"]);
    assert!(res.status.success());
    assert_eq!(files(&out), files(&again));
}

#[test]
fn faults_become_rejects_and_strict_fails() {
    let tmp = synth(&config(true));
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("out");
    let res = prep(&raw.join("arkitscenes"), &out, &["--strict"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("record(s) rejected (--strict)"), "{stderr}");
    let found: BTreeSet<(String, String)> = rejects(&out).into_iter().map(|(f, r, _)| (f, r)).collect();
    assert_eq!(found, faults(&raw, &["arkitscenes"]));
    let reasons: Vec<String> = rejects(&out).into_iter().map(|(_, _, reason)| reason).collect();
    insta::assert_snapshot!("arkit_fault_reasons", reasons.join("\n"));
    // Videos with a skipped or malformed annotation have no scene row; the others do.
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.manifest().counts.scenes, 2);
    assert_eq!(dataset.manifest().counts.rejects, found.len() as u64);
}

/// Writes an upright twin of a portrait video under `twin/3dod`: images turned upright, their
/// intrinsics and the `.traj` poses changed to match, and `sky_direction` Up.
fn upright_twin(src_root: &Path, twin_root: &Path, video: &str, fold: &str, sky: &str) {
    let src = src_root.join("3dod").join(fold).join(video);
    let dst = twin_root.join("3dod").join(fold).join(video);
    let frames = format!("{video}_frames");
    for sub in ["lowres_wide", "lowres_depth", "lowres_wide_intrinsics"] {
        std::fs::create_dir_all(dst.join(&frames).join(sub)).unwrap();
    }
    std::fs::copy(
        src.join(format!("{video}_3dod_annotation.json")),
        dst.join(format!("{video}_3dod_annotation.json")),
    )
    .unwrap();
    let c = upright_camera(sky);
    let turn_rgb = |img: image::RgbImage| {
        if sky == "Left" {
            image::imageops::rotate90(&img)
        } else {
            image::imageops::rotate270(&img)
        }
    };
    let list = |sub: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(src.join(&frames).join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    for path in list("lowres_wide") {
        let img = image::open(&path).unwrap().into_rgb8();
        turn_rgb(img)
            .save(dst.join(&frames).join("lowres_wide").join(path.file_name().unwrap()))
            .unwrap();
    }
    for path in list("lowres_depth") {
        let img = image::open(&path).unwrap().into_luma16();
        let turned = if sky == "Left" {
            image::imageops::rotate90(&img)
        } else {
            image::imageops::rotate270(&img)
        };
        turned
            .save(dst.join(&frames).join("lowres_depth").join(path.file_name().unwrap()))
            .unwrap();
    }
    for path in list("lowres_wide_intrinsics") {
        let v: Vec<f64> = std::fs::read_to_string(&path)
            .unwrap()
            .split_whitespace()
            .map(|t| t.parse().unwrap())
            .collect();
        let (w, h, fx, fy, cx, cy) = (v[0], v[1], v[2], v[3], v[4], v[5]);
        // Clockwise: (u, v) → (H−1−v, u); counter-clockwise: (u, v) → (v, W−1−u).
        let turned = if sky == "Left" {
            [h, w, fy, fx, h - 1.0 - cy, cx]
        } else {
            [h, w, fy, fx, cy, w - 1.0 - cx]
        };
        let text = turned.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ");
        std::fs::write(
            dst.join(&frames)
                .join("lowres_wide_intrinsics")
                .join(path.file_name().unwrap()),
            text + "\n",
        )
        .unwrap();
    }
    // w2c of the upright camera = C · w2c of the sensor camera.
    let mut traj = String::new();
    for line in std::fs::read_to_string(src.join(&frames).join("lowres_wide.traj"))
        .unwrap()
        .lines()
    {
        let t: Vec<&str> = line.split_whitespace().collect();
        let n: Vec<f64> = t[1..].iter().map(|x| x.parse().unwrap()).collect();
        let r = roomplan_prep::geometry::rodrigues(&[n[0], n[1], n[2]]);
        let r_up = mat3_mul(&c, &r);
        let t_up = roomplan_prep::geometry::mat3_vec(&c, &[n[3], n[4], n[5]]);
        let aa = roomplan_synth::geom::rotation_to_axis_angle(&r_up);
        traj.push_str(&format!(
            "{} {:.12} {:.12} {:.12} {:.12} {:.12} {:.12}\n",
            t[0], aa[0], aa[1], aa[2], t_up[0], t_up[1], t_up[2]
        ));
    }
    std::fs::write(dst.join(&frames).join("lowres_wide.traj"), traj).unwrap();
}

fn scene_geometry(scene: &SceneRecord) -> Vec<(String, u32, u32, Vec<f32>, Vec<f32>)> {
    scene
        .views
        .iter()
        .map(|v| {
            let g = v.geometry.as_ref().unwrap();
            let mut rt = g.r.to_vec();
            rt.extend(g.t);
            (v.frame_id.clone(), v.width, v.height, rt, g.k.to_vec())
        })
        .collect()
}

#[test]
fn portrait_videos_match_their_upright_twins() {
    let tmp = synth(&config(false));
    let raw = tmp.path().join("raw");
    let src = raw.join("arkitscenes");
    let twin = tmp.path().join("twin");
    let truth = truth(&raw);
    let mut portrait = Vec::new();
    let mut metadata = String::from("video_id,visit_id,fold,sky_direction\n");
    for scene in truth["scenes"].as_array().unwrap() {
        let sky = scene["arkit"]["sky_direction"].as_str().unwrap();
        if sky == "Left" || sky == "Right" {
            let (video, fold) = (
                scene["video_id"].as_str().unwrap(),
                scene["arkit"]["fold"].as_str().unwrap(),
            );
            upright_twin(&src, &twin, video, fold, sky);
            metadata.push_str(&format!("{video},NA,{fold},Up\n"));
            portrait.push(video.to_string());
        }
    }
    assert_eq!(portrait.len(), 2, "the synthetic set has a Left and a Right capture");
    std::fs::write(twin.join("3dod/metadata.csv"), metadata).unwrap();
    let (out_a, out_b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Default coverage selection: the voxels are counted on the upright depth, so it picks the
    // same frames for both.
    assert!(prep(&src, &out_a, &[]).status.success());
    assert!(prep(&twin, &out_b, &[]).status.success());
    let (a, b) = (Dataset::open(&out_a).unwrap(), Dataset::open(&out_b).unwrap());
    for video in &portrait {
        let (sa, sb) = (
            a.scene_by_id(video).unwrap().unwrap(),
            b.scene_by_id(video).unwrap().unwrap(),
        );
        let (ga, gb) = (scene_geometry(&sa), scene_geometry(&sb));
        assert_eq!(ga.len(), 10);
        for (x, y) in ga.iter().zip(&gb) {
            assert_eq!(
                (&x.0, x.1, x.2),
                (&y.0, y.1, y.2),
                "{video}: same frames at the same size"
            );
            for (p, q) in x.3.iter().zip(&y.3) {
                assert!(
                    (p - q).abs() < 1e-5,
                    "{video} frame {}: R|t {:?} vs {:?}",
                    x.0,
                    x.3,
                    y.3
                );
            }
            for (p, q) in x.4.iter().zip(&y.4) {
                assert!((p - q).abs() < 1e-4, "{video} frame {}: K {:?} vs {:?}", x.0, x.4, y.4);
            }
        }
        // Same pixels: the stored JPEGs are identical.
        for (va, vb) in sa.views.iter().zip(&sb.views) {
            assert_eq!(va.image, vb.image, "{video} frame {}", va.frame_id);
        }
        let actions = |d: &Dataset| -> Vec<(String, String)> {
            (0..d.num_samples())
                .map(|i| d.sample(i).unwrap())
                .filter(|s| &s.scene_id == video)
                .map(|s| (s.question, s.action_json.unwrap()))
                .collect()
        };
        let (xa, xb) = (actions(&a), actions(&b));
        assert!(xa.len() >= 8);
        assert_eq!(
            xa, xb,
            "{video}: the same instructions and actions in the same reference frame"
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The raw download nests the same files one level less (`<video>/lowres_wide/` instead of
/// `<video>/<video>_frames/lowres_wide/`): the same scenes and samples come out.
#[test]
fn raw_layout_gives_the_same_dataset_rows() {
    let tmp = synth(&config(false));
    let src = tmp.path().join("raw/arkitscenes");
    let raw_root = tmp.path().join("download");
    std::fs::create_dir_all(raw_root.join("raw")).unwrap();
    std::fs::copy(src.join("3dod/metadata.csv"), raw_root.join("raw/metadata.csv")).unwrap();
    for fold in ["Training", "Validation"] {
        for video in std::fs::read_dir(src.join("3dod").join(fold)).unwrap() {
            let video = video.unwrap();
            let id = video.file_name().to_string_lossy().into_owned();
            let dst = raw_root.join("raw").join(fold).join(&id);
            copy_tree(&video.path().join(format!("{id}_frames")), &dst);
            let annotation = format!("{id}_3dod_annotation.json");
            std::fs::copy(video.path().join(&annotation), dst.join(&annotation)).unwrap();
        }
    }
    let (out_a, out_b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(prep(&src, &out_a, &["--view-selection", "uniform", "--num-views", "4"])
        .status
        .success());
    let res = prep(
        &raw_root,
        &out_b,
        &["--layout", "raw", "--view-selection", "uniform", "--num-views", "4"],
    );
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let (a, b) = (Dataset::open(&out_a).unwrap(), Dataset::open(&out_b).unwrap());
    assert_eq!((a.num_scenes(), a.num_samples()), (b.num_scenes(), b.num_samples()));
    assert_eq!(a.num_scenes(), 4);
    for i in 0..a.num_scenes() {
        assert_eq!(a.scene(i).unwrap(), b.scene(i).unwrap());
    }
    for i in 0..a.num_samples() {
        let (x, y) = (a.sample(i).unwrap(), b.sample(i).unwrap());
        assert_eq!(
            (&x.sample_id, &x.question, &x.action_json),
            (&y.sample_id, &y.question, &y.action_json)
        );
    }
    // The manifest names the raw files where they are.
    let manifest = std::fs::read_to_string(out_b.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"arkitscenes:raw/Training/41005000/lowres_wide.traj\""),
        "{manifest}"
    );
}

#[test]
fn help_and_bad_roots() {
    let help = run(BIN, &["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--num-views <NUM_VIEWS>") && text.contains("[default: 10]"),
        "{text}"
    );
    assert!(
        text.contains("[default: coverage]") && text.contains("--layout <LAYOUT>"),
        "{text}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("raw");
    std::fs::create_dir(&root).unwrap();
    let res = run(
        BIN,
        &[
            "--arkitscenes",
            path_arg(&root),
            "--out",
            path_arg(&tmp.path().join("o")),
        ],
    );
    assert_eq!(res.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("prep-arkit: error: arkitscenes:3dod: missing input"),
        "{stderr}"
    );
}

/// Damage that synth does not inject: an empty `.traj`, an undecodable colour PNG, a missing
/// `.pincam`, a video without a metadata row. Each is a reject naming the file and record; the
/// damaged frames are replaced by others.
#[test]
fn other_bad_records_are_rejects() {
    let tmp = synth(&config(false));
    let root = tmp.path().join("raw/arkitscenes");
    let truth = truth(&tmp.path().join("raw"));
    let scenes = truth["scenes"].as_array().unwrap();
    let frames_dir = |i: usize| {
        let (video, fold) = (
            scenes[i]["video_id"].as_str().unwrap(),
            scenes[i]["arkit"]["fold"].as_str().unwrap(),
        );
        root.join("3dod").join(fold).join(video).join(format!("{video}_frames"))
    };
    let stamp = |i: usize, f: usize| {
        scenes[i]["arkit"]["frames"][f]["timestamp"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let video = |i: usize| scenes[i]["video_id"].as_str().unwrap().to_string();
    // Video 0: no poses at all.
    std::fs::write(frames_dir(0).join("lowres_wide.traj"), "").unwrap();
    // Video 1: frame 0 colour is not a PNG, frame 1 has no intrinsics.
    std::fs::write(
        frames_dir(1).join(format!("lowres_wide/{}_{}.png", video(1), stamp(1, 0))),
        b"not a png",
    )
    .unwrap();
    std::fs::remove_file(frames_dir(1).join(format!("lowres_wide_intrinsics/{}_{}.pincam", video(1), stamp(1, 1))))
        .unwrap();
    // Video 2: no metadata row.
    let metadata = std::fs::read_to_string(root.join("3dod/metadata.csv")).unwrap();
    let kept: Vec<&str> = metadata.lines().filter(|l| !l.starts_with(&video(2))).collect();
    std::fs::write(root.join("3dod/metadata.csv"), kept.join("\n") + "\n").unwrap();

    let out = tmp.path().join("out");
    let res = prep(&root, &out, &["--view-selection", "uniform"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let rel = |p: PathBuf| {
        p.strip_prefix(tmp.path().join("raw"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let expected = vec![
        (
            rel(frames_dir(0).join("lowres_wide.traj")),
            "whole file".to_string(),
            format!("video {} not used: no poses", video(0)),
        ),
        (
            rel(frames_dir(1).join(format!("lowres_wide/{}_{}.png", video(1), stamp(1, 0)))),
            format!("frame {}", stamp(1, 0)),
            "cannot decode PNG colour: Format error decoding Png: Invalid PNG signature.".to_string(),
        ),
        (
            rel(frames_dir(1).join(format!("lowres_wide/{}_{}.png", video(1), stamp(1, 1)))),
            format!("frame {}", stamp(1, 1)),
            "no .pincam within ±0.001 s in lowres_wide_intrinsics".to_string(),
        ),
        (
            "arkitscenes/3dod/metadata.csv".to_string(),
            video(2),
            "no metadata.csv row for this video; images are kept as stored".to_string(),
        ),
    ];
    let mut found = rejects(&out);
    found.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(found, expected);
    let dataset = Dataset::open(&out).unwrap();
    assert_eq!(dataset.manifest().counts.scenes, 3);
    let damaged = dataset.scene_by_id(&video(1)).unwrap().unwrap();
    assert_eq!(damaged.views.len(), 10, "other frames replace the damaged ones");
    assert!(damaged
        .views
        .iter()
        .all(|v| v.frame_id != stamp(1, 0) && v.frame_id != stamp(1, 1)));
}
