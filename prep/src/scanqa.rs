//! ScanQA v1.0 question files (FORMATS.md §2) → `samples` rows.
//!
//! Each split file is one JSON array. Train/val records carry `answers` (≥1) and optionally
//! `object_ids`/`object_names`; test records carry only `question`, `question_id` and `scene_id`
//! and are kept with an empty answers list; the two test sets (`test_w_obj`, `test_wo_obj`) are
//! two splits. A record that does not fit becomes a reject naming its question id (or its position
//! when it has none); the other records are unaffected.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::rejects::Reject;
use crate::shard::SampleRecord;

/// The task name of ScanQA samples.
pub const TASK: &str = "scanqa";

/// A ScanQA split. The release has two test sets with different questions, both without answers:
/// `test_w_obj` and `test_wo_obj` (FORMATS.md §2.1); each is kept under its own split name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    #[value(name = "test_w_obj")]
    #[serde(rename = "test_w_obj")]
    TestWObj,
    #[value(name = "test_wo_obj")]
    #[serde(rename = "test_wo_obj")]
    TestWoObj,
}

impl Split {
    /// Every split, in file order.
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::TestWObj, Split::TestWoObj];

    /// The split's name in `samples.split` and in question ids (`<split>-sceneNNNN-<n>`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::TestWObj => "test_w_obj",
            Split::TestWoObj => "test_wo_obj",
        }
    }
}

/// The file of a split: `ScanQA_v1.0_{train,val,test_w_obj,test_wo_obj}.json` (the test files
/// have questions only; answers are on the evaluation server).
pub fn file_name(split: Split) -> &'static str {
    match split {
        Split::Train => "ScanQA_v1.0_train.json",
        Split::Val => "ScanQA_v1.0_val.json",
        Split::TestWObj => "ScanQA_v1.0_test_w_obj.json",
        Split::TestWoObj => "ScanQA_v1.0_test_wo_obj.json",
    }
}

/// Whether a split's records must carry answers.
pub fn has_answers(split: Split) -> bool {
    matches!(split, Split::Train | Split::Val)
}

/// One ScanQA question as read.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanQaQuestion {
    pub split: Split,
    pub question_id: String,
    pub scene_id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub object_ids: Option<Vec<i64>>,
    pub object_names: Option<Vec<String>>,
}

/// Unknown keys are ignored: other releases may carry more.
#[derive(Deserialize)]
struct RawRecord {
    question_id: String,
    scene_id: String,
    question: String,
    #[serde(default)]
    answers: Option<Vec<String>>,
    #[serde(default)]
    object_ids: Option<Vec<i64>>,
    #[serde(default)]
    object_names: Option<Vec<String>>,
}

/// Whether `id` is a ScanNet scan id `sceneNNNN_NN` (it becomes part of a path, so nothing else
/// is accepted).
pub fn is_scene_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 12
        && id.starts_with("scene")
        && b[5..9].iter().all(u8::is_ascii_digit)
        && b[9] == b'_'
        && b[10..12].iter().all(u8::is_ascii_digit)
}

/// How a JSON record is named in a reject: its question id when it has a usable one.
pub(crate) fn record_name(value: &serde_json::Value, index: usize) -> String {
    match value.get("question_id") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => format!("record {index}"),
    }
}

/// Parses one ScanQA split file. `file` names it in rejects (e.g. `scanqa:ScanQA_v1.0_val.json`).
/// Never fails: records are read one by one ([`crate::json_records`]), so a record that is not
/// valid JSON (e.g. a lone `\ud800` escape) is one reject and the others are kept; a file that is
/// not a JSON array is one reject (record `whole file`).
pub fn parse_split(bytes: &[u8], split: Split, file: &str) -> (Vec<ScanQaQuestion>, Vec<Reject>) {
    let mut rejects = Vec::new();
    let values = match crate::json_records::array_records(bytes, None) {
        Ok(read) => crate::json_records::split_rejects(
            read,
            file,
            |salvaged, index| {
                salvaged.map_or_else(|| format!("record {index}"), |v| record_name(v, index))
            },
            &mut rejects,
        ),
        Err(reason) => {
            rejects.push(Reject::new(file, "whole file", reason));
            return (vec![], rejects);
        }
    };
    let mut questions = Vec::with_capacity(values.len());
    let mut positions: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, value) in values {
        let record = record_name(&value, index);
        match parse_record(value, split) {
            Ok(q) => {
                positions
                    .entry(q.question_id.clone())
                    .or_default()
                    .push(questions.len());
                questions.push((index, q));
            }
            Err(reason) => rejects.push(Reject::new(file, record, reason)),
        }
    }
    // A question id seen twice cannot say which record is right: both are rejected.
    let mut keep = vec![true; questions.len()];
    for (qid, at) in positions.iter().filter(|(_, at)| at.len() > 1) {
        let indices: Vec<String> = at.iter().map(|&i| questions[i].0.to_string()).collect();
        for &i in at {
            keep[i] = false;
            rejects.push(Reject::new(
                file,
                qid.clone(),
                format!(
                    "question_id is duplicated (records {}); record {} rejected with the others",
                    indices.join(", "),
                    questions[i].0
                ),
            ));
        }
    }
    let questions = questions
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|((_, q), _)| q)
        .collect();
    (questions, rejects)
}

pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_record(value: serde_json::Value, split: Split) -> Result<ScanQaQuestion, String> {
    if !value.is_object() {
        return Err(format!(
            "expected a question object, found {}",
            json_kind(&value)
        ));
    }
    let raw: RawRecord =
        serde_json::from_value(value).map_err(|e| format!("bad question record: {e}"))?;
    if raw.question_id.is_empty() {
        return Err("question_id is empty".into());
    }
    if !is_scene_id(&raw.scene_id) {
        return Err(format!(
            "scene_id {:?} is not a ScanNet scan id (sceneNNNN_NN)",
            raw.scene_id
        ));
    }
    if raw.question.trim().is_empty() {
        return Err("question is empty".into());
    }
    let answers = raw.answers.unwrap_or_default();
    if has_answers(split) && answers.is_empty() {
        return Err(format!(
            "the {} split needs at least one answer, found none",
            split.name()
        ));
    }
    if let (Some(ids), Some(names)) = (&raw.object_ids, &raw.object_names) {
        if ids.len() != names.len() {
            return Err(format!(
                "object_ids has {} entries but object_names has {}; they must be parallel",
                ids.len(),
                names.len()
            ));
        }
    }
    Ok(ScanQaQuestion {
        split,
        question_id: raw.question_id,
        scene_id: raw.scene_id,
        question: raw.question,
        answers,
        object_ids: raw.object_ids,
        object_names: raw.object_names,
    })
}

impl ScanQaQuestion {
    /// The `samples` row of this question.
    pub fn to_sample(&self) -> SampleRecord {
        let mut s = SampleRecord::new(
            &self.question_id,
            TASK,
            self.split.name(),
            &self.scene_id,
            &self.question,
        );
        s.answers = self.answers.clone();
        s.object_ids = self.object_ids.clone();
        s.object_names = self.object_names.clone();
        s.source_json = serde_json::json!({ "question_id": self.question_id }).to_string();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "scanqa:ScanQA_v1.0_val.json";

    #[test]
    fn parses_records_and_keeps_test_questions_without_answers() {
        let val = br#"[{"answers": ["dark brown", "brown"], "object_ids": [4, 5], "object_names": ["chair", "chair"],
            "question": "What color is the chair in the kitchen?", "question_id": "val-scene0011-0", "scene_id": "scene0011_00"}]"#;
        let (qs, rejects) = parse_split(val, Split::Val, F);
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(qs[0].answers, vec!["dark brown", "brown"]);
        assert_eq!(qs[0].object_ids, Some(vec![4, 5]));
        let s = qs[0].to_sample();
        assert_eq!(
            (s.sample_id.as_str(), s.task.as_str(), s.split.as_str()),
            ("val-scene0011-0", "scanqa", "val")
        );
        for (split, name) in [
            (Split::TestWObj, "test_w_obj"),
            (Split::TestWoObj, "test_wo_obj"),
        ] {
            let test = br#"[{"question": "Where is the sink?", "question_id": "test-scene0707-0", "scene_id": "scene0707_00"}]"#;
            let (qs, rejects) = parse_split(test, split, "t");
            assert!(rejects.is_empty());
            assert_eq!(qs[0].answers, Vec::<String>::new());
            assert_eq!(qs[0].object_ids, None);
            assert_eq!(qs[0].to_sample().split, name);
        }
        // Outside the test sets a question without answers is a reject.
        let (qs, rejects) = parse_split(
            br#"[{"question": "Q?", "question_id": "q", "scene_id": "scene0707_00"}]"#,
            Split::Train,
            "t",
        );
        assert!(qs.is_empty());
        assert_eq!(
            rejects[0].reason,
            "the train split needs at least one answer, found none"
        );
    }

    #[test]
    fn bad_records_are_rejected_by_question_id() {
        let bytes = br#"[
            {"question": "Q?", "question_id": "val-scene0001-0", "scene_id": "scene0001_00"},
            {"answers": ["a"], "question": "Q?", "question_id": "val-scene0001-1", "scene_id": "../../etc"},
            {"answers": ["a"], "question": 7, "question_id": "val-scene0001-2", "scene_id": "scene0001_00"},
            {"answers": ["a"], "question": "Q?", "question_id": "val-scene0001-3", "scene_id": "scene0001_00"},
            {"answers": ["b"], "question": "Q?", "question_id": "val-scene0001-3", "scene_id": "scene0001_00"},
            5,
            {"answers": ["a"], "question": "fine?", "question_id": "val-scene0001-4", "scene_id": "scene0001_00"}
        ]"#;
        let (qs, rejects) = parse_split(bytes, Split::Val, F);
        assert_eq!(qs.len(), 1);
        assert_eq!(qs[0].question_id, "val-scene0001-4");
        let got: Vec<(String, String)> = rejects
            .iter()
            .map(|r| (r.record.clone(), r.reason.clone()))
            .collect();
        assert_eq!(
            got[0],
            (
                "val-scene0001-0".into(),
                "the val split needs at least one answer, found none".into()
            )
        );
        assert_eq!(
            got[1],
            (
                "val-scene0001-1".into(),
                "scene_id \"../../etc\" is not a ScanNet scan id (sceneNNNN_NN)".into()
            )
        );
        assert_eq!(got[2].0, "val-scene0001-2");
        assert!(
            got[2]
                .1
                .starts_with("bad question record: invalid type: integer `7`"),
            "{}",
            got[2].1
        );
        assert_eq!(
            got[3],
            (
                "record 5".into(),
                "expected a question object, found a number".into()
            )
        );
        assert_eq!(got[4].0, "val-scene0001-3");
        assert_eq!(
            got[4].1,
            "question_id is duplicated (records 3, 4); record 3 rejected with the others"
        );
        assert_eq!(
            got[5].1,
            "question_id is duplicated (records 3, 4); record 4 rejected with the others"
        );
        assert!(rejects.iter().all(|r| r.file == F));
    }

    #[test]
    fn a_broken_record_costs_only_itself() {
        // A lone surrogate escape (Python's json reads it; a Rust string cannot hold it) in one
        // question: that question is rejected by its id, the others are kept.
        let bytes = br#"[
            {"answers": ["a"], "question": "fine?", "question_id": "val-scene0001-0", "scene_id": "scene0001_00"},
            {"answers": ["a"], "question": "bad \ud800?", "question_id": "val-scene0001-1", "scene_id": "scene0001_00"},
            {"answers": ["b"], "question": "also fine?", "question_id": "val-scene0001-2", "scene_id": "scene0001_00"}
        ]"#;
        let (qs, rejects) = parse_split(bytes, Split::Val, F);
        let ids: Vec<&str> = qs.iter().map(|q| q.question_id.as_str()).collect();
        assert_eq!(ids, ["val-scene0001-0", "val-scene0001-2"]);
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].record, "val-scene0001-1");
        assert!(
            rejects[0].reason.starts_with(
                "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), which UTF-8 text cannot hold; not valid JSON: "
            ) && rejects[0].reason.ends_with("(the record at byte 129)"),
            "{}",
            rejects[0].reason
        );
        // A file cut short: the records before the cut are kept, the rest is one reject.
        let cut = &bytes[..200];
        let (qs, rejects) = parse_split(cut, Split::Val, F);
        assert_eq!(qs.len(), 1);
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].record, "record 1 and after");
        assert_eq!(
            rejects[0].reason,
            "the file ends inside the string that starts at byte 190; nothing from byte 129 on is read (1 records before it are)"
        );
    }

    #[test]
    fn a_file_that_is_not_an_array_is_one_reject() {
        let (qs, rejects) = parse_split(b"[{\"question\"", Split::Train, F);
        assert!(qs.is_empty());
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].record, "record 0 and after");
        let (_, rejects) = parse_split(b"{}", Split::Train, F);
        assert_eq!(rejects[0].record, "whole file");
        assert_eq!(
            rejects[0].reason,
            "expected a JSON array of records, found an object"
        );
    }

    #[test]
    fn scene_ids() {
        assert!(is_scene_id("scene0011_00"));
        for bad in [
            "scene011_00",
            "scene0011-00",
            "Scene0011_00",
            "scene0011_0a",
            "scene0011_000",
            "",
        ] {
            assert!(!is_scene_id(bad), "{bad}");
        }
    }
}
