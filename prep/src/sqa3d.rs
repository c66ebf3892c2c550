//! SQA3D (FORMATS.md §3): questions joined to annotations by `question_id` → `samples` rows
//! with the agent's situation.
//!
//! The situation's position is in the raw ScanNet mesh frame translated so that the bounding-box
//! centre of `<scene>_vh_clean_2.ply` is the origin (§3.5): the raw world position is
//! `position + centre`; it is then mapped into the sample's reference frame like the poses. The
//! rotation is a yaw quaternion (x, y, z, w) about the mesh's +Z; the agent faces R(q)·(−1, 0, 0)
//! (derived from SQA3D's visualiser, the only source that shows it — UNCONFIRMED as a dataset
//! definition, FORMATS.md §3.5).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::geometry::{mat3_vec, quaternion_xyzw_to_matrix, ReferenceFrame, Vec3};
use crate::rejects::Reject;
use crate::scanqa::{is_scene_id, json_kind, record_name};
use crate::shard::{AgentPose, SampleRecord};

/// The task name of SQA3D samples.
pub const TASK: &str = "sqa3d";

pub use crate::pipeline::Split;

/// `balanced/v1_balanced_questions_<split>_scannetv2.json`, relative to the SQA3D root.
pub fn questions_file(split: Split) -> String {
    format!(
        "balanced/v1_balanced_questions_{}_scannetv2.json",
        split.name()
    )
}

/// `balanced/v1_balanced_sqa_annotations_<split>_scannetv2.json`, relative to the SQA3D root.
pub fn annotations_file(split: Split) -> String {
    format!(
        "balanced/v1_balanced_sqa_annotations_{}_scannetv2.json",
        split.name()
    )
}

/// `<scene>_bird.png`: a scene's bird's-eye render, in `bird/` of the SQA3D root or in the folder
/// given by `--bev-dir`.
pub fn bird_file(scene_id: &str) -> String {
    format!("{scene_id}_bird.png")
}

/// One SQA3D question joined with its annotation.
#[derive(Clone, Debug, PartialEq)]
pub struct Sqa3dQuestion {
    pub split: Split,
    pub question_id: i64,
    pub scene_id: String,
    pub situation: String,
    pub alternative_situation: Vec<String>,
    pub question: String,
    pub answers: Vec<String>,
    pub question_type: Option<String>,
    pub answer_type: Option<String>,
    /// As given: metres in the bbox-centred mesh frame.
    pub position: Vec3,
    /// As given, (x, y, z, w).
    pub rotation_xyzw: [f64; 4],
}

#[derive(Deserialize)]
struct RawQuestion {
    scene_id: String,
    situation: String,
    #[serde(default)]
    alternative_situation: Vec<String>,
    question: String,
    question_id: i64,
}

#[derive(Deserialize)]
struct RawAnswer {
    answer: String,
}

/// Numbers may be JSON integers (e.g. `"z": 0`); serde's f64 accepts both.
#[derive(Deserialize)]
struct RawPosition {
    x: f64,
    y: f64,
    z: f64,
}

/// Parsed by name: key order differs between files (FORMATS.md §3.3).
#[derive(Deserialize)]
struct RawRotation {
    _x: f64,
    _y: f64,
    _z: f64,
    _w: f64,
}

#[derive(Deserialize)]
struct RawAnnotation {
    scene_id: String,
    question_id: i64,
    #[serde(default)]
    question_type: Option<String>,
    #[serde(default)]
    answer_type: Option<String>,
    answers: Vec<RawAnswer>,
    position: RawPosition,
    rotation: RawRotation,
}

/// Reads the array under `key` of a top-level object record by record ([`crate::json_records`]):
/// a record that is not valid JSON is one reject; a file without the array is one reject.
fn records(
    bytes: &[u8],
    key: &str,
    file: &str,
    rejects: &mut Vec<Reject>,
) -> Vec<(usize, serde_json::Value)> {
    match crate::json_records::array_records(bytes, Some(key)) {
        Ok(read) => crate::json_records::split_rejects(
            read,
            file,
            |salvaged, index| {
                salvaged.map_or_else(|| format!("record {index}"), |v| record_name(v, index))
            },
            rejects,
        ),
        Err(reason) => {
            rejects.push(Reject::new(file, "whole file", reason));
            vec![]
        }
    }
}

/// Parses each record; groups the good ones by question id (keeping their record positions).
fn parse_all<T: serde::de::DeserializeOwned>(
    values: Vec<(usize, serde_json::Value)>,
    what: &str,
    file: &str,
    rejects: &mut Vec<Reject>,
    id: impl Fn(&T) -> i64,
) -> BTreeMap<i64, Vec<(usize, T)>> {
    let mut by_id: BTreeMap<i64, Vec<(usize, T)>> = BTreeMap::new();
    for (index, value) in values {
        let record = record_name(&value, index);
        if !value.is_object() {
            rejects.push(Reject::new(
                file,
                record,
                format!(
                    "expected a JSON object for the {what}, found {}",
                    json_kind(&value)
                ),
            ));
            continue;
        }
        match serde_json::from_value::<T>(value) {
            Ok(parsed) => by_id.entry(id(&parsed)).or_default().push((index, parsed)),
            Err(e) => rejects.push(Reject::new(
                file,
                record,
                format!("invalid {what} record: {e}"),
            )),
        }
    }
    by_id
}

/// Rejects every record of an id seen more than once (which one is right cannot be told).
fn drop_duplicates<T>(
    by_id: &mut BTreeMap<i64, Vec<(usize, T)>>,
    file: &str,
    rejects: &mut Vec<Reject>,
) -> Vec<i64> {
    let duplicated: Vec<i64> = by_id
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| *k)
        .collect();
    for qid in &duplicated {
        let at = by_id.remove(qid).unwrap_or_default();
        let indices: Vec<String> = at.iter().map(|(i, _)| i.to_string()).collect();
        for (i, _) in &at {
            rejects.push(Reject::new(
                file,
                qid.to_string(),
                format!(
                    "question_id is duplicated (records {}); record {i} rejected with the others",
                    indices.join(", ")
                ),
            ));
        }
    }
    duplicated
}

/// Joins a split's questions and annotations on `question_id`. `questions_file` and
/// `annotations_file` name the files in rejects. A question or annotation without its partner, a
/// duplicated id (in either file), a scene mismatch or a bad value rejects the record(s) concerned.
/// Questions come back in question-id order.
pub fn join_split(
    questions: &[u8],
    questions_file: &str,
    annotations: &[u8],
    annotations_file: &str,
    split: Split,
) -> (Vec<Sqa3dQuestion>, Vec<Reject>) {
    let mut rejects = Vec::new();
    let q_values = records(questions, "questions", questions_file, &mut rejects);
    let a_values = records(annotations, "annotations", annotations_file, &mut rejects);
    let mut qs =
        parse_all::<RawQuestion>(q_values, "question", questions_file, &mut rejects, |q| {
            q.question_id
        });
    let mut anns = parse_all::<RawAnnotation>(
        a_values,
        "annotation",
        annotations_file,
        &mut rejects,
        |a| a.question_id,
    );
    // An id duplicated on one side leaves its partner(s) on the other side without a usable match.
    let dup_q = drop_duplicates(&mut qs, questions_file, &mut rejects);
    let dup_a = drop_duplicates(&mut anns, annotations_file, &mut rejects);
    for qid in &dup_q {
        if anns.remove(qid).is_some() {
            rejects.push(Reject::new(
                annotations_file,
                qid.to_string(),
                format!("its question_id is duplicated in {questions_file}"),
            ));
        }
    }
    for qid in &dup_a {
        if qs.remove(qid).is_some() {
            rejects.push(Reject::new(
                questions_file,
                qid.to_string(),
                format!("its question_id is duplicated in {annotations_file}"),
            ));
        }
    }
    let mut joined = Vec::new();
    for (qid, mut q) in qs {
        let (_, q) = q.remove(0);
        let Some(mut a) = anns.remove(&qid) else {
            rejects.push(Reject::new(
                questions_file,
                qid.to_string(),
                format!("no annotation with this question_id in {annotations_file}"),
            ));
            continue;
        };
        let (_, a) = a.remove(0);
        match check(&q, &a) {
            Ok(()) => joined.push(Sqa3dQuestion {
                split,
                question_id: qid,
                scene_id: q.scene_id,
                situation: q.situation,
                alternative_situation: q.alternative_situation,
                question: q.question,
                answers: a.answers.into_iter().map(|x| x.answer).collect(),
                question_type: a.question_type,
                answer_type: a.answer_type,
                position: [a.position.x, a.position.y, a.position.z],
                rotation_xyzw: [a.rotation._x, a.rotation._y, a.rotation._z, a.rotation._w],
            }),
            Err(reason) => {
                rejects.push(Reject::new(questions_file, qid.to_string(), reason.clone()));
                rejects.push(Reject::new(annotations_file, qid.to_string(), reason));
            }
        }
    }
    for qid in anns.keys() {
        rejects.push(Reject::new(
            annotations_file,
            qid.to_string(),
            format!("no question with this question_id in {questions_file}"),
        ));
    }
    (joined, rejects)
}

/// Checks a joined pair; the reason applies to both records.
fn check(q: &RawQuestion, a: &RawAnnotation) -> Result<(), String> {
    if q.scene_id != a.scene_id {
        return Err(format!(
            "question is about {:?} but its annotation about {:?}",
            q.scene_id, a.scene_id
        ));
    }
    if !is_scene_id(&q.scene_id) {
        return Err(format!(
            "scene_id {:?} is not a ScanNet scan id (sceneNNNN_NN)",
            q.scene_id
        ));
    }
    if q.question.trim().is_empty() {
        return Err("question is empty".into());
    }
    if a.answers.is_empty() {
        return Err("annotation has no answers".into());
    }
    let p = [a.position.x, a.position.y, a.position.z];
    if p.iter()
        .any(|x| !x.is_finite() || x.abs() > crate::geometry::MAX_COORDINATE_M)
    {
        return Err(format!(
            "position {p:?} is not finite or beyond {} m of the scene centre: not a plausible place",
            crate::geometry::MAX_COORDINATE_M
        ));
    }
    let r = &a.rotation;
    let norm2 = r._x * r._x + r._y * r._y + r._z * r._z + r._w * r._w;
    if !(norm2.is_finite() && norm2 > 1e-12) {
        return Err(format!(
            "rotation ({}, {}, {}, {}) is not a usable quaternion",
            r._x, r._y, r._z, r._w
        ));
    }
    Ok(())
}

impl Sqa3dQuestion {
    /// The agent's facing direction in the raw world (mesh) frame: R(q)·(−1, 0, 0).
    pub fn heading_world(&self) -> Vec3 {
        mat3_vec(
            &quaternion_xyzw_to_matrix(&self.rotation_xyzw),
            &[-1.0, 0.0, 0.0],
        )
    }

    /// The situation as given and in the sample's reference frame; `mesh_centre` is the
    /// bounding-box centre of the scene's `_vh_clean_2.ply` vertices (raw world frame).
    pub fn agent(&self, mesh_centre: &Vec3, reference: &ReferenceFrame) -> AgentPose {
        let world = [0, 1, 2].map(|i| self.position[i] + mesh_centre[i]);
        AgentPose {
            position_raw: self.position,
            rotation_raw_xyzw: self.rotation_xyzw,
            position_ref: reference.point_to_reference(&world),
            heading_ref: reference.direction_to_reference(&self.heading_world()),
        }
    }

    /// The `samples` row, with the agent when the scene has a reference frame.
    pub fn to_sample(&self, agent: Option<AgentPose>) -> SampleRecord {
        let mut s = SampleRecord::new(
            self.question_id.to_string(),
            TASK,
            self.split.name(),
            &self.scene_id,
            &self.question,
        );
        s.situation = Some(self.situation.clone());
        s.answers = self.answers.clone();
        s.agent = agent;
        s.source_json = serde_json::json!({
            "question_id": self.question_id,
            "alternative_situation": self.alternative_situation,
            "question_type": self.question_type,
            "answer_type": self.answer_type,
        })
        .to_string();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Rigid;

    const QF: &str = "sqa3d:q.json";
    const AF: &str = "sqa3d:a.json";

    fn q(id: i64, scene: &str) -> serde_json::Value {
        serde_json::json!({"scene_id": scene, "situation": "I am by the door.", "alternative_situation": ["x"],
            "question": "What is on my left?", "question_id": id})
    }
    fn a(id: i64, scene: &str) -> serde_json::Value {
        serde_json::json!({"scene_id": scene, "question_id": id, "question_type": "N/A", "answer_type": "other",
            "answers": [{"answer": "chair", "answer_confidence": "yes", "answer_id": 1}],
            "position": {"x": 0.5, "y": -0.25, "z": 0}, "rotation": {"_w": 1, "_x": 0, "_y": 0, "_z": 0}})
    }
    fn files(qs: Vec<serde_json::Value>, anns: Vec<serde_json::Value>) -> (Vec<u8>, Vec<u8>) {
        (
            serde_json::to_vec(&serde_json::json!({"info": {}, "questions": qs})).unwrap(),
            serde_json::to_vec(&serde_json::json!({"annotations": anns})).unwrap(),
        )
    }

    #[test]
    fn joins_by_question_id_with_integer_numbers() {
        let (qb, ab) = files(
            vec![q(2, "scene0001_00"), q(1, "scene0001_00")],
            vec![a(1, "scene0001_00"), a(2, "scene0001_00")],
        );
        let (joined, rejects) = join_split(&qb, QF, &ab, AF, Split::Test);
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(
            joined.iter().map(|j| j.question_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(joined[0].position, [0.5, -0.25, 0.0]);
        assert_eq!(joined[0].rotation_xyzw, [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(joined[0].answers, vec!["chair"]);
        let s = joined[0].to_sample(None);
        assert_eq!(s.situation.as_deref(), Some("I am by the door."));
        assert_eq!(s.sample_id, "1");
    }

    #[test]
    fn duplicates_orphans_and_mismatches_are_rejects() {
        let (qb, ab) = files(
            vec![
                q(1, "scene0001_00"),
                q(1, "scene0001_00"),
                q(2, "scene0001_00"),
                q(3, "scene0001_00"),
                q(5, "scene0001_00"),
            ],
            vec![
                a(1, "scene0001_00"),
                a(2, "scene0002_00"),
                a(4, "scene0001_00"),
                a(5, "scene0001_00"),
                a(5, "scene0001_00"),
            ],
        );
        let (joined, rejects) = join_split(&qb, QF, &ab, AF, Split::Train);
        assert!(joined.is_empty(), "{joined:?}");
        let mut got: Vec<String> = rejects
            .iter()
            .map(|r| format!("{} {} {}", r.file, r.record, r.reason))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                "sqa3d:a.json 1 its question_id is duplicated in sqa3d:q.json",
                "sqa3d:a.json 2 question is about \"scene0001_00\" but its annotation about \"scene0002_00\"",
                "sqa3d:a.json 4 no question with this question_id in sqa3d:q.json",
                "sqa3d:a.json 5 question_id is duplicated (records 3, 4); record 3 rejected with the others",
                "sqa3d:a.json 5 question_id is duplicated (records 3, 4); record 4 rejected with the others",
                "sqa3d:q.json 1 question_id is duplicated (records 0, 1); record 0 rejected with the others",
                "sqa3d:q.json 1 question_id is duplicated (records 0, 1); record 1 rejected with the others",
                "sqa3d:q.json 2 question is about \"scene0001_00\" but its annotation about \"scene0002_00\"",
                "sqa3d:q.json 3 no annotation with this question_id in sqa3d:a.json",
                "sqa3d:q.json 5 its question_id is duplicated in sqa3d:a.json",
            ]
        );
    }

    #[test]
    fn bad_files_and_records() {
        let (_, rejects) = join_split(b"[]", QF, b"{\"annotations\": 3}", AF, Split::Val);
        assert_eq!(rejects[0].reason, "expected a JSON object, found an array");
        assert_eq!(
            rejects[1].reason,
            "`annotations` is a number, expected an array"
        );
        let mut bad = a(1, "scene0001_00");
        bad["rotation"] = serde_json::json!({"_x": 0, "_y": 0, "_z": 0});
        let (qb, ab) = files(vec![q(1, "scene0001_00")], vec![bad]);
        let (_, rejects) = join_split(&qb, QF, &ab, AF, Split::Val);
        assert_eq!(rejects[0].record, "1");
        assert!(
            rejects[0]
                .reason
                .starts_with("invalid annotation record: missing field `_w`"),
            "{}",
            rejects[0].reason
        );
        assert_eq!(
            rejects[1].reason,
            "no annotation with this question_id in sqa3d:a.json"
        );
    }

    #[test]
    fn agent_in_the_reference_frame() {
        // A yaw of +90° about +Z: the agent faces R·(−1,0,0) = (0,−1,0) in the world.
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let mut question = Sqa3dQuestion {
            split: Split::Test,
            question_id: 1,
            scene_id: "scene0001_00".into(),
            situation: String::new(),
            alternative_situation: vec![],
            question: "q".into(),
            answers: vec!["a".into()],
            question_type: None,
            answer_type: None,
            position: [1.0, 2.0, 0.0],
            rotation_xyzw: [0.0, 0.0, h, h],
        };
        let heading = question.heading_world();
        assert!(
            (heading[0]).abs() < 1e-12 && (heading[1] + 1.0).abs() < 1e-12,
            "{heading:?}"
        );
        // Reference camera at (10, 0, 1.5) looking along world +X, level (OpenCV axes: x→−Y, y→−Z, z→+X).
        let c2w = Rigid {
            r: [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
            t: [10.0, 0.0, 1.5],
        };
        let reference = ReferenceFrame::from_camera(&c2w);
        let agent = question.agent(&[9.0, 1.0, 0.5], &reference);
        // World position (10, 3, 0.5): 3 m to the camera's left, 1 m below, at its depth.
        let expect = [-3.0, -1.0, 0.0];
        for i in 0..3 {
            assert!(
                (agent.position_ref[i] - expect[i]).abs() < 1e-12,
                "{:?}",
                agent.position_ref
            );
        }
        // Facing world −Y = the camera's right = reference +X.
        let expect = [1.0, 0.0, 0.0];
        for i in 0..3 {
            assert!(
                (agent.heading_ref[i] - expect[i]).abs() < 1e-12,
                "{:?}",
                agent.heading_ref
            );
        }
        assert_eq!(agent.position_raw, [1.0, 2.0, 0.0]);
        question.rotation_xyzw = [0.0, 0.0, 0.0, 2.0];
        let heading = question.heading_world();
        assert!(
            (heading[0] + 1.0).abs() < 1e-12,
            "quaternions are normalised: {heading:?}"
        );
    }
}
