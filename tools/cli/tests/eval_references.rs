//! `tools eval qa --references` against the official pipeline: the golden set written by
//! `tests/golden/qa_table.py` (120 ScanQA + 36 SQA3D questions in the official file layouts, scored by
//! ScanQA's score.py rules and pycocoevalcap 1.2 with its Java PTBTokenizer and METEOR 1.5 jar).
//!
//! METEOR is compared when Java and the jar are available; with `ROOMPLAN_REQUIRE_METEOR=1` (CI)
//! their absence fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/qa_table")
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_close(what: &str, ours: &Value, theirs: &Value, tol: f64) {
    let (a, b) = (ours.as_f64(), theirs.as_f64());
    assert!(
        matches!((a, b), (Some(a), Some(b)) if (a - b).abs() <= tol),
        "{what}: ours {ours}, official {theirs}"
    );
}

fn meteor_available() -> bool {
    let probe = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["eval", "qa", "--help"])
        .output()
        .unwrap();
    assert!(probe.status.success());
    let java = Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    let jar = roomplan_eval::meteor::locate_jar(None).is_ok();
    let required = std::env::var("ROOMPLAN_REQUIRE_METEOR").is_ok_and(|v| v == "1");
    if required {
        assert!(
            java && jar,
            "ROOMPLAN_REQUIRE_METEOR=1 but java ({java}) or the METEOR jar ({jar}) is missing"
        );
    }
    if !(java && jar) {
        eprintln!("METEOR not compared: java {java}, jar {jar}");
    }
    java && jar
}

#[test]
fn the_whole_table_equals_the_official_numbers() {
    let dir = golden_dir();
    let expected = read(&dir.join("expected.json"));
    let meteor = meteor_available();
    let tmp = tempfile::tempdir().unwrap();
    let per_item = tmp.path().join("items.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["eval", "qa", "--predictions"])
        .arg(dir.join("predictions.json"))
        .arg("--references")
        .arg(dir.join("ScanQA_v1.0_val.json"))
        .arg(dir.join("v1_balanced_sqa_annotations_val_scannetv2.json"))
        .arg(dir.join("v1_balanced_questions_val_scannetv2.json"))
        .args(["--meteor", if meteor { "on" } else { "off" }, "--per-item"])
        .arg(&per_item)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (scanqa, sqa3d) = (&reports[0], &reports[1]);
    assert_eq!(
        (scanqa["task"].as_str(), scanqa["n"].as_u64()),
        (Some("scanqa"), Some(120))
    );
    assert_eq!(
        (sqa3d["task"].as_str(), sqa3d["n"].as_u64()),
        (Some("sqa3d"), Some(36))
    );
    let mut keys = vec!["bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"];
    if meteor {
        keys.push("meteor");
    }
    for (ours, theirs, extra) in [
        (scanqa, &expected["scanqa"], ["em1", "em10"]),
        (sqa3d, &expected["sqa3d"], ["top1", "top1"]),
    ] {
        for key in keys.iter().chain(&extra) {
            assert_close(
                &format!("{} {key}", ours["task"]),
                &ours[*key],
                &theirs[*key],
                1e-9,
            );
        }
    }
    // Per question, in reference-file order.
    let items: Vec<Value> = std::fs::read_to_string(&per_item)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 156);
    assert_eq!(items[0]["question_id"], "val-scene0000-0");
    assert_eq!(items[120]["question_id"], "220602000000");
    let mut meteor_items = 0;
    for item in &items {
        let id = item["question_id"].as_str().unwrap();
        let theirs = &expected["per_item"][id];
        for key in ["bleu1", "bleu4", "rouge_l", "cider"] {
            assert_close(&format!("{id} {key}"), &item[key], &theirs[key], 1e-9);
        }
        if meteor {
            assert_close(
                &format!("{id} meteor"),
                &item["meteor"],
                &theirs["meteor"],
                1e-9,
            );
            meteor_items += 1;
        } else {
            assert_eq!(item["meteor"], Value::Null);
        }
    }
    assert!(!meteor || meteor_items == 156);
}

#[test]
fn table_format_and_refusals() {
    let dir = golden_dir();
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("p.jsonl");
    std::fs::write(
        &preds,
        "{\"question_id\": \"val-scene0000-0\", \"prediction\": \"brown\"}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tools"))
            .args(["eval", "qa", "--meteor", "off"])
            .args(args)
            .output()
            .unwrap()
    };
    let scanqa = dir.join("ScanQA_v1.0_val.json");
    let out = run(&[
        "--references",
        scanqa.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p.jsonl: no prediction for 119 of the 120 questions of the reference files (first: val-scene0001-1, "),
        "{err}"
    );
    let out = run(&["--predictions", preds.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--dataset <DATASET>|--references <REFERENCES>"));

    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args([
            "eval",
            "qa",
            "--meteor",
            "off",
            "--format",
            "table",
            "--predictions",
        ])
        .arg(dir.join("predictions.json"))
        .arg("--references")
        .arg(&scanqa)
        .arg(dir.join("v1_balanced_sqa_annotations_val_scannetv2.json"))
        .arg(dir.join("v1_balanced_questions_val_scannetv2.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("| metric | scanqa | sqa3d |\n|---|---:|---:|\n| questions | 120 | 36 |\n| EM@1 | 41.67 | "), "{table}");
    assert!(table.contains("| METEOR | n/a | n/a |"), "{table}");
    assert!(
        table.contains("Not computed: meteor: not requested (--meteor off)"),
        "{table}"
    );
}
