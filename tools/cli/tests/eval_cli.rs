//! `tools eval qa | actions` end to end: a small prepared dataset with ScanQA, SQA3D and
//! RoomPlan-action samples, predictions in the accepted layouts, exact scores, clear refusals.

use std::path::Path;
use std::process::{Command, Output};

use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::shard::{example_records, DatasetWriter, SampleRecord, WriterOptions};
use serde_json::Value;

const COUNT: &str = r#"{"action":"count","category":{"chair":{}},"attributes":{},"count":2}"#;
const ROTATE: &str = r#"{"action":"rotate_object","target":{"category":{"sink":{}},"center":[1.201,-1.005,0.143]},"yaw_degrees":45.000}"#;

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("tools runs")
}

fn sample(
    id: &str,
    task: &str,
    split: &str,
    scene: &str,
    question: &str,
    answers: &[&str],
) -> SampleRecord {
    let mut s = SampleRecord::new(id, task, split, scene, question);
    s.answers = answers.iter().map(|a| a.to_string()).collect();
    s
}

fn write_dataset(dir: &Path) {
    let (scenes, _, _) = example_records();
    let scene = scenes[0].scene_id.clone();
    let mut writer = DatasetWriter::create(dir, WriterOptions::default()).unwrap();
    let q = "What colour is the chair?";
    let samples = [
        sample("val-scene0000-0", "scanqa", "val", &scene, q, &["brown"]),
        sample(
            "val-scene0000-1",
            "scanqa",
            "val",
            &scene,
            "Where is the lamp?",
            &["on the left side of the table", "left"],
        ),
        sample(
            "test-scene0000-0",
            "scanqa",
            "test",
            &scene,
            "Where is the sink?",
            &[],
        ),
        sample(
            "1",
            "sqa3d",
            "val",
            &scene,
            "What is on my left?",
            &["table"],
        ),
        sample(
            "2",
            "sqa3d",
            "val",
            &scene,
            "How many chairs are in front of me?",
            &["two"],
        ),
    ];
    for s in samples {
        writer.write_sample(s).unwrap();
    }
    for (id, action) in [("a-0", COUNT), ("a-1", ROTATE)] {
        let mut s = sample(
            id,
            "roomplan_action",
            "train",
            &scene,
            "How many chairs are there?",
            &[],
        );
        s.action_json = Some(action.to_string());
        writer.write_sample(s).unwrap();
    }
    writer.write_scene(scenes[0].clone()).unwrap();
    writer
        .finish(
            ToolInfo::new("eval-test", "0", serde_json::json!({})),
            vec![],
        )
        .unwrap();
}

fn run_ok(args: &[&str]) -> Value {
    let out = tools(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run_err(args: &[&str]) -> String {
    let out = tools(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn close(v: &Value, expected: f64) -> bool {
    (v.as_f64().unwrap() - expected).abs() < 1e-9
}

#[test]
fn qa_scores_scanqa_and_sqa3d_from_jsonl_and_official_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    write_dataset(&ds);
    let preds = tmp.path().join("preds.jsonl");
    std::fs::write(
        &preds,
        [
            r#"{"question_id": "val-scene0000-0", "scene_id": "scene0000_00", "answer_top10": ["brown", "dark brown"], "bbox": []}"#,
            r#"{"sample_id": "val-scene0000-1", "prediction": "on the left"}"#,
            "",
            r#"{"sample_id": 1, "prediction": "table"}"#,
            r#"{"sample_id": "2", "prediction": "2"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let args = [
        "eval",
        "qa",
        "--dataset",
        ds.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
        "--split",
        "val",
        "--meteor",
        "off",
    ];
    let report = run_ok(&args);
    let (scanqa, sqa3d) = (&report[0], &report[1]);
    assert_eq!(scanqa["task"], "scanqa");
    assert_eq!(scanqa["n"], 2);
    // "on the left" is not an answer (EM@1 50) but is inside one without spaces (refined EM 100).
    for (key, expected) in [
        ("em1", 50.0),
        ("em10", 50.0),
        ("leo_em", 50.0),
        ("leo_refined_em", 100.0),
    ] {
        assert!(close(&scanqa[key], expected), "{key}: {}", scanqa[key]);
    }
    // pycocoevalcap 1.2 on the same two questions (PTBTokenizer, Bleu(4), Rouge, Cider), ×100.
    for (key, expected) in [
        ("bleu1", 99.99999997500002),
        ("bleu4", 3.162277658784884),
        ("rouge_l", 100.0),
        ("cider", 248.9352813947106),
    ] {
        assert!(close(&scanqa[key], expected), "{key}: {}", scanqa[key]);
    }
    // SQA3D: "2" is not the official answer "two", but LEO's normalisation makes it one.
    assert_eq!(sqa3d["task"], "sqa3d");
    assert_eq!(
        (
            sqa3d["n"].as_u64(),
            sqa3d["top1"].as_f64(),
            sqa3d["leo_em"].as_f64()
        ),
        (Some(2), Some(50.0), Some(100.0))
    );
    assert_eq!(sqa3d["by_type"]["what"]["top1"], 1);
    assert_eq!(sqa3d["by_type"]["how"]["total"], 1);
    assert_eq!(sqa3d["by_type"]["how"]["top1"], 0);
}

#[test]
fn actions_scores_and_tolerance_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    write_dataset(&ds);
    let preds = tmp.path().join("preds.json");
    let rotated = ROTATE.replace("45.000", "52.000");
    let body = serde_json::json!([
        {"sample_id": "a-0", "prediction": COUNT},
        {"sample_id": "a-1", "prediction": rotated},
    ]);
    std::fs::write(&preds, body.to_string()).unwrap();
    let base = [
        "eval",
        "actions",
        "--dataset",
        ds.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
    ];
    let report = run_ok(&base);
    let s = &report["summary"];
    assert_eq!(
        (
            s["n"].as_u64(),
            s["valid"].as_f64(),
            s["exact"].as_f64(),
            s["correct"].as_f64()
        ),
        (Some(2), Some(100.0), Some(50.0), Some(100.0))
    );
    // 7° off is outside a 5° tolerance.
    let strict = run_ok(&[&base[..], &["--angle-deg", "5"]].concat());
    assert_eq!(strict["summary"]["correct"].as_f64(), Some(50.0));
    assert_eq!(strict["tolerances"]["angle_deg"].as_f64(), Some(5.0));
}

#[test]
fn refusals_name_the_file_and_the_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    write_dataset(&ds);
    let ds_arg = ds.to_str().unwrap();
    let preds = tmp.path().join("p.jsonl");
    let p_arg = preds.to_str().unwrap();
    let qa = |extra: &[&str]| -> String {
        run_err(
            &[
                &["eval", "qa", "--dataset", ds_arg, "--predictions", p_arg][..],
                extra,
            ]
            .concat(),
        )
    };
    std::fs::write(
        &preds,
        r#"{"sample_id": "val-scene0000-0", "prediction": "brown"}"#,
    )
    .unwrap();
    let err = qa(&["--split", "val"]);
    assert!(
        err.contains(&format!(
            "{p_arg}: no prediction for 3 of the 4 samples (first: val-scene0000-1, 1, 2)"
        )),
        "{err}"
    );
    std::fs::write(&preds, "{\"sample_id\": \"x\", \"prediction\": \"a\"}\n{\"sample_id\": \"x\", \"prediction\": \"b\"}\n").unwrap();
    let err = qa(&[]);
    assert!(
        err.contains(&format!(
            "{p_arg}: line 2: a second prediction for sample x"
        )),
        "{err}"
    );
    std::fs::write(&preds, "{\"sample_id\": \"test-scene0000-0\", \"prediction\": \"a\"}\n{\"sample_id\": \"nope\", \"answers\": [\"a\"]}\n").unwrap();
    let err = qa(&["--split", "test"]);
    assert!(
        err.contains("1 predictions name no scanqa/sqa3d sample in split test"),
        "{err}"
    );
    assert!(err.contains("(first: nope)"), "{err}");
    std::fs::write(
        &preds,
        "{\"sample_id\": \"test-scene0000-0\", \"prediction\": \"a\"}\n",
    )
    .unwrap();
    let err = qa(&["--split", "test"]);
    assert!(
        err.contains("sample test-scene0000-0 (test split) has no reference answers"),
        "{err}"
    );
    std::fs::write(&preds, "{\"sample_id\": \"x\"}\n").unwrap();
    let err = qa(&[]);
    assert!(
        err.contains(&format!(
            "{p_arg}: line 1: sample x has neither `answer_top10`, `answers` nor `prediction`"
        )),
        "{err}"
    );
    // A record in ScanQA's annotation layout (`answers` = the references) plus a prediction: the
    // references must never be read as the predictions.
    std::fs::write(&preds, "{\"question_id\": \"val-scene0000-0\", \"scene_id\": \"scene0000_00\", \"question\": \"What colour?\", \"answers\": [\"brown\"], \"prediction\": \"white\"}\n").unwrap();
    let err = qa(&["--split", "val"]);
    assert!(
        err.contains(&format!(
            "{p_arg}: line 1: sample val-scene0000-0 has `answers` and `prediction`: ambiguous, which one is the prediction? (in ScanQA's annotation layout `answers` are the references); give exactly one of `answer_top10`, `answers`, `prediction`"
        )),
        "{err}"
    );
    std::fs::write(&preds, "[{\"question_id\": \"val-scene0000-0\", \"question\": \"What colour?\", \"answers\": [\"brown\"]}]").unwrap();
    let err = qa(&["--split", "val"]);
    assert!(
        err.contains(&format!(
            "{p_arg}: element 0: sample val-scene0000-0 has `answers` beside `question`: that is the dataset's annotation layout, where `answers` are the reference answers, not predictions; name the predictions `answer_top10` (a list) or `prediction` (one text)"
        )),
        "{err}"
    );
    std::fs::write(&preds, "{\"sample_id\": \"x\", \"question_id\": \"y\", \"prediction\": \"a\"}\n{\"sample_id\": 5, \"prediction\": [\"a\"]}\n").unwrap();
    let err = qa(&[]);
    assert!(err.contains(&format!("{p_arg}: line 1: sample x has both `sample_id` and `question_id`; give one")), "{err}");
    std::fs::write(&preds, "{\"sample_id\": 5, \"prediction\": [\"a\"]}\n").unwrap();
    let err = qa(&[]);
    assert!(err.contains(&format!("{p_arg}: line 1: sample 5 has a `prediction` that is not a string")), "{err}");
    std::fs::write(&preds, "not json\n").unwrap();
    assert!(qa(&[]).contains(&format!("{p_arg}: line 1: not JSON")));
}
