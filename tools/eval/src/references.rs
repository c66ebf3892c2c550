//! The official annotation files as references, without a prepared dataset (FORMATS.md §2, §3):
//!
//! - ScanQA: `ScanQA_v1.0_{train,val}.json`, a JSON array of records with `question_id` (string),
//!   `scene_id`, `question` and `answers`. The test files carry no answers and are refused.
//! - SQA3D: the balanced files `v1_balanced_sqa_annotations_<split>_scannetv2.json` (object with
//!   `annotations`: `question_id` (number), `scene_id`, `answers: [{answer, ...}]`) and
//!   `v1_balanced_questions_<split>_scannetv2.json` (object with `questions`: `question_id`,
//!   `question`, `situation`); both are needed (the question types come from the question text) and
//!   are joined on `question_id`.
//!
//! Each file is recognised by its shape; any number of files can be given together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

/// One question with its reference answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// `scanqa` or `sqa3d`.
    pub task: &'static str,
    /// The question id as text (SQA3D's numbers printed in decimal).
    pub id: String,
    pub scene_id: String,
    pub question: String,
    /// Best first (SQA3D's official metric uses only the first).
    pub answers: Vec<String>,
}

#[derive(Debug, Error)]
pub enum ReferenceError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not JSON: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("{path}: {at}: {problem}")]
    Record {
        path: PathBuf,
        at: String,
        problem: String,
    },
    #[error("{0}")]
    Other(String),
}

fn record_err(path: &Path, at: impl Into<String>, problem: impl Into<String>) -> ReferenceError {
    ReferenceError::Record {
        path: path.to_path_buf(),
        at: at.into(),
        problem: problem.into(),
    }
}

fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn string<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record.get(key)?.as_str()
}

/// The SQA3D question part of a record, keyed by id.
struct SqaQuestion {
    question: String,
    scene_id: String,
}

/// Reads and joins reference files; the order is ScanQA records in file order, then SQA3D
/// annotations in file order.
pub fn read_references(paths: &[PathBuf]) -> Result<Vec<Reference>, ReferenceError> {
    let mut scanqa = Vec::new();
    // (file, index, id, scene, answers)
    let mut annotations: Vec<(PathBuf, usize, String, String, Vec<String>)> = Vec::new();
    let mut questions: BTreeMap<String, SqaQuestion> = BTreeMap::new();
    let mut questions_files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|cause| ReferenceError::Io {
            path: path.clone(),
            cause,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|cause| ReferenceError::Json {
            path: path.clone(),
            cause,
        })?;
        match &value {
            Value::Array(records) => {
                for (i, r) in records.iter().enumerate() {
                    let at = format!("record {i}");
                    let id = id_text(r.get("question_id")).ok_or_else(|| {
                        record_err(
                            path,
                            &at,
                            "expected a ScanQA record with a string `question_id`",
                        )
                    })?;
                    let at = format!("record {i} (question {id})");
                    let answers = match r.get("answers") {
                        None => {
                            return Err(record_err(
                                path,
                                &at,
                                "no `answers` (a ScanQA test file? its answers are only on the EvalAI server)",
                            ))
                        }
                        Some(Value::Array(a)) if !a.is_empty() => a
                            .iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| record_err(path, &at, "`answers` must be a list of strings"))?,
                        Some(_) => return Err(record_err(path, &at, "`answers` must be a non-empty list of strings")),
                    };
                    scanqa.push(Reference {
                        task: "scanqa",
                        id,
                        scene_id: string(r, "scene_id").unwrap_or_default().to_string(),
                        question: string(r, "question")
                            .ok_or_else(|| record_err(path, &at, "no string `question`"))?
                            .to_string(),
                        answers,
                    });
                }
            }
            Value::Object(top) if top.contains_key("annotations") => {
                let records = top["annotations"].as_array().ok_or_else(|| {
                    record_err(
                        path,
                        "annotations",
                        "expected an array of SQA3D annotations",
                    )
                })?;
                for (i, r) in records.iter().enumerate() {
                    let id = id_text(r.get("question_id")).ok_or_else(|| {
                        record_err(path, format!("annotation {i}"), "no numeric `question_id`")
                    })?;
                    let at = format!("annotation {i} (question {id})");
                    let answers = r
                        .get("answers")
                        .and_then(Value::as_array)
                        .filter(|a| !a.is_empty())
                        .and_then(|a| {
                            a.iter()
                                .map(|x| {
                                    x.get("answer").and_then(Value::as_str).map(str::to_string)
                                })
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| {
                            record_err(
                                path,
                                &at,
                                "expected `answers`: a non-empty list of {\"answer\": \"...\"}",
                            )
                        })?;
                    let scene = string(r, "scene_id").unwrap_or_default().to_string();
                    annotations.push((path.clone(), i, id, scene, answers));
                }
            }
            Value::Object(top) if top.contains_key("questions") => {
                let records = top["questions"].as_array().ok_or_else(|| {
                    record_err(path, "questions", "expected an array of SQA3D questions")
                })?;
                for (i, r) in records.iter().enumerate() {
                    let id = id_text(r.get("question_id")).ok_or_else(|| {
                        record_err(path, format!("question {i}"), "no numeric `question_id`")
                    })?;
                    let at = format!("question {i} (id {id})");
                    let question = string(r, "question")
                        .ok_or_else(|| record_err(path, &at, "no string `question`"))?
                        .to_string();
                    let scene_id = string(r, "scene_id").unwrap_or_default().to_string();
                    if questions
                        .insert(id.clone(), SqaQuestion { question, scene_id })
                        .is_some()
                    {
                        return Err(record_err(path, &at, "a second question with this id"));
                    }
                }
                questions_files.push(path.clone());
            }
            _ => {
                return Err(ReferenceError::Other(format!(
                    "{}: not a reference file: expected a ScanQA array of questions, or an SQA3D \
                     object with `annotations` or `questions`",
                    path.display()
                )))
            }
        }
    }
    let mut out = scanqa;
    if !annotations.is_empty() && questions_files.is_empty() {
        return Err(ReferenceError::Other(format!(
            "{}: SQA3D annotations need their questions file too (v1_balanced_questions_<split>_scannetv2.json): \
             the question types come from the question text",
            annotations[0].0.display()
        )));
    }
    for (path, i, id, scene_id, answers) in annotations {
        let q = questions.remove(&id).ok_or_else(|| {
            record_err(
                &path,
                format!("annotation {i}"),
                format!("question {id} is in none of the questions files given"),
            )
        })?;
        out.push(Reference {
            task: "sqa3d",
            id,
            scene_id: if scene_id.is_empty() {
                q.scene_id
            } else {
                scene_id
            },
            question: q.question,
            answers,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for r in &out {
        if !seen.insert(r.id.clone()) {
            return Err(ReferenceError::Other(format!(
                "question {} appears twice in the reference files",
                r.id
            )));
        }
    }
    if out.is_empty() {
        return Err(ReferenceError::Other(
            "the reference files hold no question with answers".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_scanqa_and_joins_sqa3d() {
        let dir = std::env::temp_dir().join(format!("roomplan-refs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let scanqa = write(
            &dir,
            "ScanQA_v1.0_val.json",
            r#"[{"answers":["dark brown","brown"],"object_ids":[4],"object_names":["chair"],"question":"What color is the chair?","question_id":"val-scene0011-0","scene_id":"scene0011_00"}]"#,
        );
        let ann = write(
            &dir,
            "ann.json",
            r#"{"info":{},"annotations":[{"scene_id":"scene0050_00","question_id":220602000002,"question_type":"N/A","answer_type":"other","answers":[{"answer":"left","answer_confidence":"yes","answer_id":1}],"position":{"x":0.1,"y":0.2,"z":0},"rotation":{"_x":0,"_y":0,"_z":0.5,"_w":0.8}}]}"#,
        );
        let qs = write(
            &dir,
            "qs.json",
            r#"{"info":{},"questions":[{"scene_id":"scene0050_00","situation":"I sit.","alternative_situation":[],"question":"Which way is the door?","question_id":220602000002}]}"#,
        );
        let refs = read_references(&[ann.clone(), scanqa.clone(), qs.clone()]).unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].id, "val-scene0011-0");
        assert_eq!(refs[0].answers, ["dark brown", "brown"]);
        assert_eq!(refs[1].task, "sqa3d");
        assert_eq!(refs[1].id, "220602000002");
        assert_eq!(refs[1].question, "Which way is the door?");
        assert_eq!(refs[1].answers, ["left"]);

        let err = read_references(&[ann.clone()]).unwrap_err().to_string();
        assert!(
            err.contains("SQA3D annotations need their questions file too"),
            "{err}"
        );
        let test = write(
            &dir,
            "test.json",
            r#"[{"question":"q","question_id":"test-scene0707-0","scene_id":"scene0707_00"}]"#,
        );
        let err = read_references(&[test]).unwrap_err().to_string();
        assert!(err.ends_with("test.json: record 0 (question test-scene0707-0): no `answers` (a ScanQA test file? its answers are only on the EvalAI server)"), "{err}");
        let err = read_references(&[scanqa.clone(), scanqa])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "question val-scene0011-0 appears twice in the reference files"
        );
        let other = write(&dir, "other.json", r#"{"foo": 1}"#);
        let err = read_references(&[other]).unwrap_err().to_string();
        assert!(err.contains("other.json: not a reference file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
