//! The `train` binary end to end on a small world (real shards, generated tiny models, a pinned
//! experiment): the first losses, exact resume after kill -9, pin refusals, the non-finite guard,
//! and prediction files that `tools eval` reads.

mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

use world::shared as shared_world;

fn train_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(TRAIN);
    cmd.args(args)
        .arg("--threads")
        .arg("1")
        .arg("--no-progress")
        .env("ROOMPLAN_CACHE_DIR", shared_world().root.join("cache"));
    cmd
}

fn run(args: &[&str]) -> Output {
    train_cmd(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn metrics(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The fields of a train line that must repeat exactly: step, epoch, loss, lr, grad norm.
fn exact_fields(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l["kind"].as_str() {
            Some("train") => format!(
                "train {} {} {} {} {}",
                l["step"], l["epoch"], l["loss"], l["lr"], l["grad_norm"]
            ),
            _ => format!("eval {} {} {}", l["step"], l["val_loss"], l["metrics"]),
        })
        .collect()
}

fn fresh_run_dir(name: &str) -> PathBuf {
    let dir = shared_world().root.join("runs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn first_losses_snapshot() {
    let w = shared_world();
    let run_dir = fresh_run_dir("snapshot");
    let out = run(&[arg(&w.experiment), "--run-dir", arg(&run_dir), "--max-steps", "4"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = metrics(&run_dir);
    let rounded: Vec<String> = lines
        .iter()
        .filter(|l| l["kind"] == "train")
        .map(|l| {
            format!(
                "step {} epoch {} loss {:.3} grad_norm {:.3} lr {:?}",
                l["step"],
                l["epoch"],
                l["loss"].as_f64().unwrap(),
                l["grad_norm"].as_f64().unwrap(),
                l["lr"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| format!("{k}={:.3e}", v.as_f64().unwrap()))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    insta::assert_snapshot!(rounded.join("\n"));
    // The step-4 evaluation line and its metrics.
    let eval: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "eval").collect();
    assert_eq!(eval.len(), 1, "{lines:?}");
    assert_eq!(eval[0]["step"], 4);
    assert!(eval[0]["val_loss"]["fixture"].as_f64().unwrap().is_finite());
    assert!(eval[0]["metrics"]["fixture/em1"].is_number());
    // What the run directory records.
    for f in ["experiment.yaml", "pins.json", "run.json"] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    let pins: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("pins.json")).unwrap()).unwrap();
    assert_eq!(pins["pins"].as_array().unwrap().len(), 1 + 3 + 2);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["cargo_lock_sha256"].as_str().unwrap().len(), 64);
    // Checkpoints: the newest three of four, each with a PEFT adapter naming its base model.
    let ckpts: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(ckpts, ["step-000002", "step-000003", "step-000004"]);
    let adapter: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("checkpoints/step-000004/adapter/adapter_config.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        adapter["base_model_name_or_path"].as_str().unwrap(),
        w.root.join("models/qwen3").display().to_string()
    );
    assert_eq!(adapter["r"], 4);

    // Predictions of the trained run, in the layout tools eval reads.
    let preds = run_dir.join("predictions/fixture-val.jsonl");
    let out = run(&[
        "predict",
        "--run-dir",
        arg(&run_dir),
        "--dataset",
        arg(&w.dataset),
        "--split",
        "val",
        "--out",
        arg(&preds),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["samples"], 3);
    assert_eq!(summary["checkpoint"], "step-000004");
    let lines: Vec<Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["sample_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["val-scene0004_00-0", "val-scene0004_00-1", "val-scene0004_00-2"]);
    assert!(lines.iter().all(|l| l["prediction"].is_string()));
}

#[test]
fn kill_9_then_resume_repeats_every_later_step_exactly() {
    let w = shared_world();
    let straight = fresh_run_dir("straight");
    let out = run(&[arg(&w.experiment), "--run-dir", arg(&straight), "--max-steps", "7"]);
    assert!(out.status.success(), "{}", text(&out));

    let killed = fresh_run_dir("killed");
    let mut child = train_cmd(&[arg(&w.experiment), "--run-dir", arg(&killed), "--max-steps", "7"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as the third checkpoint exists: mid-run, between steps or inside one.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !killed.join("checkpoints/step-000003/state.json").exists() {
        assert!(Instant::now() < deadline, "no third checkpoint in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let out = run(&[arg(&w.experiment), "--run-dir", arg(&killed), "--resume", "--max-steps", "7"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"));
    assert_eq!(exact_fields(&metrics(&killed)), exact_fields(&metrics(&straight)));
    assert_eq!(metrics(&killed).iter().filter(|l| l["kind"] == "train").count(), 7);
    // Weights and optimizer moments end bit for bit equal (compared as tensors: safetensors
    // writes its metadata map in no fixed order).
    for file in ["trainable.safetensors", "optimizer.safetensors"] {
        let load = |dir: &Path| {
            candle_core::safetensors::load(dir.join("checkpoints/step-000007").join(file), &candle_core::Device::Cpu)
                .unwrap()
        };
        let (a, b) = (load(&straight), load(&killed));
        assert_eq!(a.len(), b.len());
        for (name, ta) in &a {
            let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
            let vb: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{file}: {name} differs after resume"
            );
        }
    }
    assert!(killed.join("resumes.jsonl").is_file());
}

#[test]
fn a_changed_pin_is_refused_naming_file_and_digests() {
    let w = shared_world();
    let text_in = std::fs::read_to_string(&w.experiment).unwrap();
    let exp: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&text_in).unwrap(),
    )
    .unwrap();
    let pinned = exp["model"]["llm"]["files"]["tokenizer.json"].as_str().unwrap().to_string();
    let wrong = "0".repeat(64);
    let bad = w.root.join("bad-pin.yaml");
    std::fs::write(&bad, text_in.replace(&pinned, &wrong)).unwrap();
    let run_dir = fresh_run_dir("bad-pin");
    let out = run(&[arg(&bad), "--run-dir", arg(&run_dir)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokenizer.json: sha256 mismatch for model.llm.files.tokenizer.json"), "{stderr}");
    assert!(stderr.contains(&format!("the experiment pins {wrong}, the file has {pinned}")), "{stderr}");
    assert!(!run_dir.exists(), "a refused run must not create its directory");

    // An unpinned field names the command that pins it.
    let unpinned = w.root.join("unpinned.yaml");
    std::fs::write(&unpinned, text_in.replace(&pinned, "null")).unwrap();
    let out = run(&[arg(&unpinned), "--run-dir", arg(&run_dir)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.llm.files.tokenizer.json is not pinned"), "{stderr}");
    assert!(stderr.contains(&format!("tools pin {}", unpinned.display())), "{stderr}");
}

#[test]
fn a_non_finite_step_stops_with_its_samples_and_keeps_the_last_checkpoint() {
    let w = shared_world();
    let run_dir = fresh_run_dir("non-finite");
    let out = run(&[
        arg(&w.experiment),
        "--run-dir",
        arg(&run_dir),
        "--set",
        "optim.lr_lora=1e38",
        "--set",
        "optim.lr_projector=1e38",
        "--set",
        "schedule.warmup_fraction=0",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step 2: non-finite"), "{stderr}");
    assert!(stderr.contains("on samples [train-scene"), "{stderr}");
    assert!(stderr.contains("the last good checkpoint is step-000001"), "{stderr}");
    let state = run_dir.join("checkpoints/step-000001/state.json");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(state).unwrap()).unwrap();
    assert_eq!(state["step"], 1);
    assert!(!run_dir.join("checkpoints/step-000002").exists());
    // The overrides are recorded.
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["overrides"][0], "optim.lr_lora=1e38");
}

#[test]
fn bad_experiment_files_name_the_file_the_line_and_the_field() {
    let w = shared_world();
    let good = std::fs::read_to_string(&w.experiment).unwrap();
    let cases = [
        ("  views_per_sample: 3\n", "  views_per_sample: 3\n  view_shuffle: true\n", "unknown field `view_shuffle`"),
        ("  micro_batch: 3\n", "  micro_batch: three\n", "field `train.micro_batch`"),
    ];
    for (i, (from, to, expect)) in cases.iter().enumerate() {
        let path = w.root.join(format!("broken-{i}.yaml"));
        let broken = good.replace(from, to);
        assert_ne!(broken, good);
        std::fs::write(&path, &broken).unwrap();
        let out = run(&[arg(&path), "--run-dir", arg(&fresh_run_dir("broken"))]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = broken.lines().position(|l| l == to.lines().last().unwrap().trim_end()).unwrap() + 1;
        assert!(stderr.contains(&format!("{}, line {line}", path.display())), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
    }
    let out = run(&[arg(&w.experiment), "--set", "train.no_such=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `no_such`"), "{}", text(&out));
}
