//! ARKitScenes readers (metadata, frame names, .traj, .pincam, annotation) and the box → RoomPlan
//! object mapping.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use roomplan_prep::actions::check_rigid;
use roomplan_prep::arkit::*;
use roomplan_prep::geometry::{rodrigues, ReferenceFrame, Rigid};
use roomplan_prep::roomplan::ObjectCategory;

fn file() -> &'static Path {
    Path::new("v/x")
}

#[test]
fn metadata_columns_by_name_ids_as_strings() {
    let text = "video_id,visit_id,fold,sky_direction,is_in_upsampling\n\
                41048190.0,NA,Training,Left,False\n\
                47333462,420683,Validation,Up,True\n\
                47333462,1,Training,Down,True\n\
                123,1,Training\n";
    let (rows, errors) = parse_metadata_csv(text, file()).unwrap();
    assert_eq!(rows.len(), 2);
    let a = &rows["41048190"];
    assert_eq!(
        (a.visit_id.as_deref(), a.fold.as_deref(), a.sky_direction.as_str()),
        (None, Some("Training"), "Left")
    );
    assert_eq!(rows["47333462"].visit_id.as_deref(), Some("420683"));
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            "v/x: line 4: video 47333462 listed twice; the first row is used",
            "v/x: line 5: 3 fields, expected 5"
        ]
    );
    let e = parse_metadata_csv("video_id,fold\n1,Training\n", file()).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"v/x: header: no "sky_direction" column (columns: video_id,fold)"#
    );
}

#[test]
fn frame_names() {
    assert_eq!(
        parse_frame_name("47333462_57352.271.png", "47333462"),
        Some(("57352.271".into(), 57352.271))
    );
    assert_eq!(parse_frame_name("47333462_57352.271.png", "4733346"), None);
    assert_eq!(parse_frame_name("47333462_57352.271.jpg", "47333462"), None);
    assert_eq!(parse_frame_name("47333462_abc.png", "47333462"), None);
}

#[test]
fn traj_lines_are_world_to_camera_axis_angle() {
    // w2c: rotation 90° about z, translation (1, 2, 3).
    let text = "100.0004999 0 0 1.5707963267948966 1 2 3\n\
                \n\
                100.2 0 0 0 0 0\n\
                100.3 0 0 x 0 0 0\n\
                100.4 0 0 0 inf 0 0\n\
                100.0169 0 0 0 0 0 0\n";
    let (poses, errors) = parse_traj(text, file());
    assert_eq!(poses.len(), 2);
    assert_eq!(poses[0].key, "100.000");
    assert_eq!(poses[1].key, "100.017");
    let w2c = Rigid {
        r: rodrigues(&[0.0, 0.0, std::f64::consts::FRAC_PI_2]),
        t: [1.0, 2.0, 3.0],
    };
    // c2w maps the camera centre (origin) to the world position −Rᵀt.
    let centre = poses[0].c2w.apply_point(&[0.0; 3]);
    let back = w2c.apply_point(&centre);
    for k in 0..3 {
        assert!(back[k].abs() < 1e-12, "{back:?}");
    }
    assert!(
        (centre[0] - -2.0).abs() < 1e-12 && (centre[1] - 1.0).abs() < 1e-12 && (centre[2] - -3.0).abs() < 1e-12,
        "{centre:?}"
    );
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            "v/x: line 3: 6 numbers, expected 7 (ts rx ry rz tx ty tz)",
            "v/x: line 4: not a number: invalid float literal",
            "v/x: line 5: non-finite value inf",
        ]
    );
}

#[test]
fn pose_lookup_uses_the_official_tolerances() {
    let pose = |s: f64| TrajPose {
        seconds: s,
        key: timestamp_key(s),
        c2w: Rigid {
            r: rodrigues(&[0.0, 0.0, s]),
            t: [s, 0.0, 0.0],
        },
    };
    let index = PoseIndex::new(vec![pose(10.0004), pose(10.0169), pose(10.0336), pose(10.1)]);
    let found = |ts: &str| index.lookup(ts, ts.parse().unwrap()).map(|(p, m)| (p.seconds, m));
    assert_eq!(found("10.000"), Some((10.0004, PoseMatch::Exact)));
    assert_eq!(found("10.017"), Some((10.0169, PoseMatch::Exact)));
    // 10.020 is 3.1 ms from 10.0169: near.
    assert_eq!(found("10.020"), Some((10.0169, PoseMatch::Near)));
    // 10.030 is 3.6 ms from 10.0336 and 13.1 ms from 10.0169: the nearest.
    assert_eq!(found("10.030"), Some((10.0336, PoseMatch::Near)));
    // 5.1 ms and more: no pose.
    assert_eq!(found("10.039"), None);
    assert_eq!(found("10.060"), None);
    assert_eq!(found("10.096"), Some((10.1, PoseMatch::Near)));
    assert_eq!(found("10.0951"), Some((10.1, PoseMatch::Near)));
    assert_eq!(found("10.200"), None);
}

#[test]
fn pincam_lookup_and_parsing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("7_10.001.pincam"), "256.0 192.0 212.5 213 127.5 95.5\n").unwrap();
    std::fs::write(dir.path().join("7_10.010.pincam"), "256 192 1 1 0 0").unwrap();
    let name = |ts: &str| {
        find_pincam(dir.path(), "7", ts, ts.parse().unwrap())
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
    };
    assert_eq!(name("10.001").as_deref(), Some("7_10.001.pincam"));
    assert_eq!(name("10.002").as_deref(), Some("7_10.001.pincam")); // ts − 0.001
    assert_eq!(name("10.000").as_deref(), Some("7_10.001.pincam")); // ts + 0.001
    assert_eq!(name("10.009").as_deref(), Some("7_10.010.pincam"));
    assert_eq!(name("10.005"), None);
    let p = parse_pincam("256.0 192.0 212.5 213 127.5 95.5\n", file()).unwrap();
    assert_eq!((p.width, p.height), (256, 192));
    assert_eq!(p.k, [[212.5, 0.0, 127.5], [0.0, 213.0, 95.5], [0.0, 0.0, 1.0]]);
    assert_eq!(
        parse_pincam("256 192 212", file()).unwrap_err().to_string(),
        "v/x: whole file: expected 6 finite numbers (width height fx fy cx cy), got [256.0, 192.0, 212.0]"
    );
    assert!(parse_pincam("256 192 -1 1 0 0", file())
        .unwrap_err()
        .to_string()
        .contains("implausible"));
}

fn obb_json(centroid: [f64; 3], lengths: [f64; 3], axes: [f64; 9]) -> serde_json::Value {
    serde_json::json!({"centroid": centroid, "axesLengths": lengths, "normalizedAxes": axes})
}

const IDENTITY_AXES: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

#[test]
fn annotation_boxes_and_their_rejects() {
    let good = obb_json([1.0, 2.0, 0.5], [0.4, 0.5, 1.0], IDENTITY_AXES);
    let doc = serde_json::json!({
        "skipped": false,
        "stats": {},
        "data": [
            {"uid": "a", "label": "tv monitor", "segments": {"obbAligned": good, "obb": good}},
            {"uid": "b", "label": "cabinet", "segments": {"obbAligned": good}},
            {"uid": "c", "label": "lamp", "segments": {"obbAligned": good}},
            {"uid": "d", "label": "chair", "segments": {"obb": good}},
            {"uid": "e", "label": "chair", "segments": {"obbAligned": obb_json([0.0; 3], [1.0, 0.0, 1.0], IDENTITY_AXES)}},
            {"uid": "f", "label": "chair", "segments": {"obbAligned": obb_json([0.0; 3], [1.0; 3], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 1.0])}},
            {"label": "chair", "segments": {"obbAligned": good}},
            {"uid": "h", "label": "stool", "segments": {"obbAligned": {"centroid": [0, 0]}}},
        ]
    });
    let (ann, errors) = parse_annotation(&serde_json::to_vec(&doc).unwrap(), file()).unwrap();
    assert!(!ann.skipped);
    let kinds: Vec<(&str, &str, ObjectCategory, usize)> = ann
        .boxes
        .iter()
        .map(|b| (b.uid.as_str(), b.label.as_str(), b.category, b.attributes.len()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("a", "tv_monitor", ObjectCategory::Television, 0),
            ("b", "cabinet", ObjectCategory::Storage, 1)
        ]
    );
    assert_eq!(ann.boxes[1].attributes["StorageType"], "cabinet");
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages[..5],
        [
            r#"v/x: c: label "lamp" is not one of the 17 ARKitScenes classes"#,
            "v/x: d: box has no segments.obbAligned",
            "v/x: e: axesLengths [1.0, 0.0, 1.0] must be positive and at most 50 m",
            "v/x: f: normalizedAxes rows are not orthonormal: row 1 · row 2 = 0.5000",
            "v/x: data[6]: box has no uid",
        ]
    );
    assert!(
        messages[5].starts_with("v/x: data[7]: not an annotated box: invalid length 2, expected an array of length 3"),
        "{}",
        messages[5]
    );
    assert_eq!(messages.len(), 6);

    let skipped = parse_annotation(br#"{"skipped": true, "data": []}"#, file()).unwrap().0;
    assert!(skipped.skipped && skipped.boxes.is_empty());
    let e = parse_annotation(br#"{"data": [{"uid": "#, file()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("v/x: whole file: not an ARKitScenes annotation: EOF"),
        "{e}"
    );
}

#[test]
fn category_map_of_the_17_classes() {
    let expect = [
        ("cabinet", "storage", Some("StorageType=cabinet")),
        ("refrigerator", "refrigerator", None),
        ("shelf", "storage", Some("StorageType=shelf")),
        ("stove", "stove", None),
        ("bed", "bed", None),
        ("sink", "sink", None),
        ("washer", "washerDryer", None),
        ("toilet", "toilet", None),
        ("bathtub", "bathtub", None),
        ("oven", "oven", None),
        ("dishwasher", "dishwasher", None),
        ("fireplace", "fireplace", None),
        ("stool", "chair", Some("ChairType=stool")),
        ("chair", "chair", None),
        ("table", "table", None),
        ("tv_monitor", "television", None),
        ("sofa", "sofa", None),
    ];
    for (label, category, attribute) in expect {
        let (c, a) = roomplan_kind(label).unwrap();
        assert_eq!(c.as_str(), category, "{label}");
        assert_eq!(a.map(|(k, v)| format!("{k}={v}")).as_deref(), attribute, "{label}");
    }
    assert_eq!(roomplan_kind("lamp"), None);
    assert_eq!(normalize_label("tv monitor"), "tv_monitor");
    assert_eq!(normalize_label("tv-monitor/x"), "tv_monitor_x");
}

fn annotated(obb: Obb) -> AnnotatedBox {
    AnnotatedBox {
        uid: "u".into(),
        label: "table".into(),
        category: ObjectCategory::Table,
        attributes: BTreeMap::new(),
        obb,
    }
}

/// A box turned by `yaw` about world Z, with extents (l0, l1, l2) along its rows.
fn yaw_box(yaw: f64, lengths: [f64; 3], centroid: [f64; 3]) -> Obb {
    let r = rodrigues(&[0.0, 0.0, yaw]); // box → world; rows of normalizedAxes = columns of r
    let mut axes = [0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            axes[3 * i + j] = r[j][i];
        }
    }
    Obb {
        centroid,
        axes_lengths: lengths,
        normalized_axes: axes,
    }
}

#[test]
fn box_mapping_worked_example() {
    // Camera at (1, 2, 1.5) looking along world +Y: reference −Z = world +Y, +X = world +X, +Y = world +Z.
    let c2w = Rigid {
        r: [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]],
        t: [1.0, 2.0, 1.5],
    };
    let reference = ReferenceFrame::from_camera(&c2w);
    // A bed 2.0 long along world Y, 1.6 wide along world X, 0.5 tall, centred at (1, 5, 0.25).
    let bed = yaw_box(0.0, [1.6, 2.0, 0.5], [1.0, 5.0, 0.25]);
    let o = box_to_object(&annotated(bed), &reference);
    assert_eq!(o.dimensions, [2.0, 0.5, 1.6]);
    let near = |a: [f64; 3], b: [f64; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12);
    // Width axis = world Y = reference −Z, flipped to point to −Z (it has no X component).
    assert!(near(o.transform.column(0), [0.0, 0.0, -1.0]), "{:?}", o.transform);
    assert!(near(o.transform.column(1), [0.0, 1.0, 0.0]));
    assert!(near(o.transform.column(2), [1.0, 0.0, 0.0]));
    // Centre 3 m in front of the camera, 1.25 m below it.
    assert!(near(o.center(), [0.0, -1.25, -3.0]), "{:?}", o.center());
}

fn same_corner_sets(ours: [[f64; 3]; 8], theirs: [[f64; 3]; 8]) -> Result<(), String> {
    for p in &theirs {
        let best = ours
            .iter()
            .map(|q| (0..3).map(|k| (p[k] - q[k]).abs()).fold(0.0, f64::max))
            .fold(f64::INFINITY, f64::min);
        if best > 1e-5 {
            return Err(format!("corner {p:?} is {best} from every corner of ours {ours:?}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The 8 corners of our RoomPlan object are the 8 corners of the raw annotation
    /// (R_annotᵀ·local + centroid) mapped to the reference frame, for boxes of any orientation
    /// and any first camera; height lies along the box axis closest to up; the transform is rigid.
    #[test]
    fn corners_match_the_raw_annotation(
        box_rot in prop::array::uniform3(-3.2..3.2f64),
        lengths in prop::array::uniform3(0.05..3.0f64),
        centroid in prop::array::uniform3(-5.0..5.0f64),
        cam_rot in prop::array::uniform3(-3.2..3.2f64),
        cam_t in prop::array::uniform3(-5.0..5.0f64),
        gravity_aligned in any::<bool>(),
    ) {
        // Real boxes are gravity-aligned (yaw only); also test arbitrary rotations.
        let r = if gravity_aligned { rodrigues(&[0.0, 0.0, box_rot[2]]) } else { rodrigues(&box_rot) };
        let mut axes = [0.0; 9];
        for i in 0..3 { for j in 0..3 { axes[3 * i + j] = r[j][i]; } }
        let obb = Obb { centroid, axes_lengths: lengths, normalized_axes: axes };
        let c2w = Rigid { r: rodrigues(&cam_rot), t: cam_t };
        let reference = ReferenceFrame::from_camera(&c2w);
        let o = box_to_object(&annotated(obb.clone()), &reference);
        // The official construction, written out: R_annotᵀ·local + centroid.
        let r_annot = [obb.axis(0), obb.axis(1), obb.axis(2)];
        let theirs: [[f64; 3]; 8] = std::array::from_fn(|i| {
            let local = [0, 1, 2].map(|k| if (i >> k) & 1 == 1 { lengths[k] / 2.0 } else { -lengths[k] / 2.0 });
            let world: [f64; 3] = std::array::from_fn(|row| (0..3).map(|k| r_annot[k][row] * local[k]).sum::<f64>() + centroid[row]);
            reference.point_to_reference(&world)
        });
        same_corner_sets(obb.corners_world().map(|p| reference.point_to_reference(&p)), theirs).map_err(TestCaseError::fail)?;
        same_corner_sets(o.corners(), theirs).map_err(TestCaseError::fail)?;
        check_rigid(&o.transform).map_err(TestCaseError::fail)?;
        // Up column points up and is the most vertical box axis.
        let up = o.transform.column(1);
        prop_assert!(up[1] > 0.0);
        for i in 0..3 {
            let axis = reference.direction_to_reference(&obb.axis(i));
            prop_assert!(axis[1].abs() <= up[1] + 1e-12);
        }
        prop_assert!(o.dimensions[0] >= o.dimensions[2]);
        if gravity_aligned {
            prop_assert!((up[1] - 1.0).abs() < 1e-9);
            prop_assert!((o.dimensions[1] - lengths[2]).abs() < 1e-12);
        }
    }
}
