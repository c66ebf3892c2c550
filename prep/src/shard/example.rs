//! A small deterministic example dataset ([`example_records`]) for tests, interop checks and other
//! crates' loader tests.

use super::records::{AgentPose, Geometry, SampleRecord, SceneRecord, ViewRecord};
use super::ENCODING_JPEG;
use crate::geometry::Rigid;
use crate::rejects::Reject;

/// Deterministic example records built through the real geometry path: three scenes (ScanNet-like
/// views with geometry; one scene without axis alignment and with an extra bird's-eye view without
/// geometry), five samples (ScanQA with object ids, a ScanQA test question without answers, SQA3D
/// with an agent, a RoomPlan action) and two rejects.
pub fn example_records() -> (Vec<SceneRecord>, Vec<SampleRecord>, Vec<Reject>) {
    use crate::geometry::{
        depth_histogram, encode_jpeg, intrinsics, CameraImage, DepthBins, DepthMap, ReferenceFrame,
        SizeRule, IDENTITY4,
    };
    let rule = SizeRule {
        width: 56,
        multiple: 14,
        max_height: 56,
    };
    let k_raw = intrinsics(60.0, 60.0, 31.5, 23.5);
    let scene = |index: usize, aligned: bool, bev: bool| -> SceneRecord {
        let mut views = Vec::new();
        let mut frame = None;
        let mut first_pose = None;
        for f in 0..2usize {
            // Cameras 1.5 m above the floor on a circle, looking at the room centre.
            let angle = (index * 2 + f) as f64 * 0.7;
            let centre = [2.0 * angle.cos(), 2.0 * angle.sin(), 1.5];
            let forward = [-angle.cos(), -angle.sin(), 0.0];
            let right = crate::geometry::cross(&forward, &[0.0, 0.0, 1.0]);
            let down = crate::geometry::cross(&forward, &right);
            let r = [
                [right[0], down[0], forward[0]],
                [right[1], down[1], forward[1]],
                [right[2], down[2], forward[2]],
            ];
            let c2w = Rigid { r, t: centre };
            let raw = image::RgbImage::from_fn(64, 48, |u, v| {
                image::Rgb([(u * 4) as u8, (v * 5) as u8, (40 * (index + f)) as u8])
            });
            let stored = CameraImage::new(raw, k_raw)
                .apply_all(&rule.plan(64, 48))
                .expect("example ops fit");
            let reference = *frame
                .get_or_insert_with(|| ReferenceFrame::from_camera(&stored.adjust_pose(&c2w)));
            first_pose.get_or_insert(stored.adjust_pose(&c2w).to_row_major());
            let depth_mm: Vec<u16> = (0..48 * 64)
                .map(|i| {
                    if i % 7 == 0 {
                        0
                    } else {
                        800 + (i as u16 % 97) * 37
                    }
                })
                .collect();
            let depth = DepthMap::new(64, 48, &depth_mm, 0.001).expect("sizes match");
            views.push(ViewRecord {
                frame_id: format!("{}", f * 10),
                image: encode_jpeg(&stored.image, 90).expect("encodes"),
                encoding: ENCODING_JPEG.into(),
                width: stored.image.width(),
                height: stored.image.height(),
                geometry: Some(Geometry::new(
                    &reference.camera_to_reference(&stored.adjust_pose(&c2w)),
                    &stored.k,
                    depth_histogram(
                        &depth,
                        &DepthBins {
                            count: 4,
                            min_m: 0.0,
                            max_m: 4.0,
                        },
                    ),
                )),
            });
        }
        if bev {
            let top = image::RgbImage::from_fn(16, 16, |u, v| {
                image::Rgb([200, (u * 10) as u8, (v * 10) as u8])
            });
            views.push(ViewRecord {
                frame_id: "bev".into(),
                image: encode_jpeg(&top, 90).expect("encodes"),
                encoding: ENCODING_JPEG.into(),
                width: 16,
                height: 16,
                geometry: None,
            });
        }
        let mut alignment = crate::geometry::mat4_to_row_major(&IDENTITY4);
        if aligned {
            alignment[3] = -1.25;
            alignment[7] = 0.5;
        }
        SceneRecord {
            dataset: "scannet".into(),
            scene_id: format!("scene{index:04}_00"),
            views,
            reference_world_pose: first_pose,
            axis_alignment: alignment,
            axis_alignment_from_metadata: aligned,
        }
    };
    let scenes = vec![
        scene(0, true, false),
        scene(1, true, false),
        scene(2, false, true),
    ];

    let mut scanqa = SampleRecord::new(
        "train-scene0000-0",
        "scanqa",
        "train",
        "scene0000_00",
        "What color is the chair?",
    );
    scanqa.answers = vec!["red".into(), "dark red".into()];
    scanqa.object_ids = Some(vec![3, 7]);
    scanqa.object_names = Some(vec!["chair".into(), "chair".into()]);
    scanqa.source_json = r#"{"question_id":"train-scene0000-0"}"#.into();
    let mut test = SampleRecord::new(
        "test-scene0002-0",
        "scanqa",
        "test",
        "scene0002_00",
        "How many tables are there?",
    );
    test.object_ids = Some(vec![]);
    test.object_names = Some(vec![]);
    let mut sqa = SampleRecord::new(
        "sqa3d-220602000002",
        "sqa3d",
        "val",
        "scene0001_00",
        "What is on my left?",
    );
    sqa.situation = Some("I am standing by the sofa facing the window.".into());
    sqa.answers = vec!["table".into()];
    sqa.agent = Some(AgentPose {
        position_raw: [0.5, -0.25, 0.0],
        rotation_raw_xyzw: [0.0, 0.0, 0.3826834323650898, 0.9238795325112867],
        position_ref: [1.0, -1.5, -2.0],
        heading_ref: [
            -std::f64::consts::FRAC_1_SQRT_2,
            0.0,
            -std::f64::consts::FRAC_1_SQRT_2,
        ],
    });
    sqa.source_json = r#"{"question_id":220602000002,"answer_type":"other"}"#.into();
    let mut action = SampleRecord::new(
        "roomplan-scene0001-0",
        "roomplan_action",
        "train",
        "scene0001_00",
        "Add a chair next to the table.",
    );
    action.action_json = Some(r#"{"action":"add_object","category":"chair"}"#.into());
    let mut sqa_test = SampleRecord::new(
        "sqa3d-220602000003",
        "sqa3d",
        "test",
        "scene0000_00",
        "Can I see the door?",
    );
    sqa_test.situation = Some("I just sat down on the bed.".into());
    sqa_test.answers = vec!["no".into()];
    let samples = vec![scanqa, sqa, action, sqa_test, test];

    let rejects = vec![
        Reject::new(
            "scannet:scans/scene0001_00/pose/5.txt",
            "frame 5",
            "pose has a non-finite entry at row 0, column 0 (-inf)",
        ),
        Reject::new(
            "scanqa:ScanQA_v1.0_val.json",
            "question val-scene0099-0",
            "scene scene0099_00 does not exist",
        ),
    ];
    (scenes, samples, rejects)
}
