//! Data-parallel training on the fixture world with the in-process (thread) collectives: 2 ranks
//! × micro-batch B take the same steps as 1 rank × 2B and as 1 rank × B with accumulation 2, over
//! several steps and across resumes, with the same or another world size.
//!
//! LoRA dropout is off here: its masks are drawn per rank and cannot match across layouts. View
//! dropout stays on: it is seeded by the global position, whichever rank draws the sample.

mod world;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use roomplan_trainer::train::run::{train, TrainOptions};
use serde_json::Value;

use world::shared as shared_world;

/// Trains the fixture (8-step schedule, no evaluation, no LoRA dropout) up to `max_steps`.
fn run(
    name: &str,
    nproc: usize,
    micro_batch: usize,
    grad_accum: usize,
    max_steps: u64,
    resume: bool,
) -> anyhow::Result<PathBuf> {
    let w = shared_world();
    let run_dir = w.root.join("runs").join(name);
    if !resume {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    train(&TrainOptions {
        experiment: w.experiment.display().to_string(),
        run_dir: Some(run_dir.clone()),
        resume,
        max_steps: Some(max_steps),
        overrides: vec![
            "model.lora.dropout=0".into(),
            "eval.every=0".into(),
            format!("train.micro_batch={micro_batch}"),
            format!("train.grad_accum={grad_accum}"),
        ],
        loader_threads: 1,
        no_hash_cache: true,
        nproc,
        ..Default::default()
    })
}

/// (step, epoch, samples, tokens, loss, grad norm) of every train line.
fn steps(run_dir: &Path) -> Vec<(u64, u64, u64, u64, f64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "train")
        .map(|l| {
            let u = |k: &str| l[k].as_u64().unwrap();
            (
                u("step"),
                u("epoch"),
                u("samples"),
                u("tokens"),
                l["loss"].as_f64().unwrap(),
                l["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn weights(run_dir: &Path, step: u64) -> HashMap<String, Tensor> {
    let path = run_dir.join(format!("checkpoints/step-{step:06}/trainable.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Largest |a − b| over all variables, relative to the largest |a|.
fn weight_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut scale) = (0f64, 0f64);
    for (name, ta) in a {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        for (x, y) in va.iter().zip(&vb) {
            diff = diff.max((x - y).abs() as f64);
            scale = scale.max(x.abs() as f64);
        }
    }
    diff / scale
}

fn assert_same_steps(a: &Path, b: &Path, tolerance: f64) {
    let (sa, sb) = (steps(a), steps(b));
    assert_eq!(sa.len(), sb.len(), "{sa:?}\n{sb:?}");
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(
            (x.0, x.1, x.2, x.3),
            (y.0, y.1, y.2, y.3),
            "step layout: {x:?} vs {y:?}"
        );
        for (what, p, q) in [("loss", x.4, y.4), ("grad norm", x.5, y.5)] {
            let rel = (p - q).abs() / p.abs().max(1e-12);
            assert!(rel < tolerance, "step {}: {what} {p} vs {q}", x.0);
        }
    }
}

/// 2 ranks × 3 samples, 4 steps: the reference every other layout is compared with.
fn two_ranks() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| run("two-ranks", 2, 3, 1, 4, false).unwrap())
}

/// Float tolerance between layouts: padding and reduction order differ, nothing else.
const TOLERANCE: f64 = 1e-4;

#[test]
fn two_ranks_equal_one_rank_with_twice_the_batch_and_with_accumulation() {
    let two = two_ranks();
    let wide = run("one-rank-wide", 1, 6, 1, 4, false).unwrap();
    let accum = run("one-rank-accum", 1, 3, 2, 4, false).unwrap();
    let s = steps(two);
    assert_eq!(s.len(), 4);
    // 12 training samples, 6 per step: two steps per epoch, every sample once per epoch.
    assert_eq!(
        s.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        [(0, 6), (0, 6), (1, 6), (1, 6)]
    );
    assert!(s[3].4 < s[0].4, "the loss does not fall: {s:?}");
    for other in [&wide, &accum] {
        assert_same_steps(two, other, TOLERANCE);
        let d = weight_difference(&weights(two, 4), &weights(other, 4));
        eprintln!("{}: relative weight difference {d:.2e}", other.display());
        assert!(
            d < TOLERANCE,
            "{}: weights differ by {d:e}",
            other.display()
        );
    }
    // The layouts really trained (the weights moved from their initialisation).
    let first = run("one-rank-one-step", 1, 6, 1, 1, false).unwrap();
    assert!(weight_difference(&weights(&first, 1), &weights(&wide, 4)) > 1e-3);
    // Rank 0 alone wrote the run: one metrics line per step, checkpoints with the global cursor.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(two.join("checkpoints/step-000004/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["cursor"],
        serde_json::json!({"epoch": 2, "position": 0})
    );
    assert_eq!(state["global_batch"], 6);
    assert_eq!(state["samples_seen"], 24);
}

#[test]
fn resuming_with_the_same_or_another_world_size_continues_the_same_run() {
    let two = two_ranks();
    // The same world size: every later step repeats exactly (sums run in rank order).
    let same = run("resume-two", 2, 3, 1, 2, false).unwrap();
    run("resume-two", 2, 3, 1, 4, true).unwrap();
    let (a, b) = (steps(two), steps(&same));
    assert_eq!(
        a.iter()
            .map(|x| (x.0, x.4.to_bits(), x.5.to_bits()))
            .collect::<Vec<_>>(),
        b.iter()
            .map(|x| (x.0, x.4.to_bits(), x.5.to_bits()))
            .collect::<Vec<_>>()
    );
    assert_eq!(weight_difference(&weights(two, 4), &weights(&same, 4)), 0.0);

    // One rank with accumulation 2 continues the 2-rank run at its global cursor.
    let other = run("resume-one", 2, 3, 1, 2, false).unwrap();
    run("resume-one", 1, 3, 2, 4, true).unwrap();
    assert_same_steps(two, &other, TOLERANCE);
    let d = weight_difference(&weights(two, 4), &weights(&other, 4));
    assert!(d < TOLERANCE, "weights differ by {d:e}");

    // A world size that changes the global batch is refused, naming the fix.
    let e = run("resume-one", 1, 3, 1, 6, true).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("trained with 6 samples per step, this run would take 3"),
        "{text}"
    );
}

/// `train` (the binary) on the fixture world, writing `run_dir`.
fn train_binary(run_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    train_binary_on(&shared_world().experiment, run_dir, extra, env)
}

fn train_binary_on(
    experiment: &Path,
    run_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_train"))
        .arg(experiment)
        .args([
            "--run-dir",
            run_dir.to_str().unwrap(),
            "--threads",
            "1",
            "--no-progress",
        ])
        .args(["--no-hash-cache", "--set", "eval.every=0"])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_binary_runs_ranks_as_threads_or_as_processes_with_the_same_bits() {
    let w = shared_world();
    let threads = w.root.join("runs").join("binary-threads");
    let processes = w.root.join("runs").join("binary-processes");
    for d in [&threads, &processes] {
        let _ = std::fs::remove_dir_all(d);
    }
    let out = train_binary(&threads, &["--nproc", "2", "--max-steps", "2"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 data-parallel ranks as threads"),
        "{stderr}"
    );
    // 2 ranks × micro-batch 3 × accumulation 2 = 12 samples per step; one line per step.
    assert_eq!(
        steps(&threads)
            .iter()
            .map(|s| (s.0, s.2))
            .collect::<Vec<_>>(),
        [(1, 12), (2, 12)]
    );

    // Two processes (this binary re-executed with torchrun's variables, CPU collectives over
    // TCP) sum in the same rank order: the same losses, gradient norms and weights, bit for bit.
    let out = train_binary(
        &processes,
        &[
            "--nproc",
            "2",
            "--launcher",
            "processes",
            "--max-steps",
            "2",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 data-parallel ranks as processes")
            && stderr.contains("2 ranks as processes (torchrun), CPU collectives over TCP"),
        "{stderr}"
    );
    let bits = |d: &Path| {
        steps(d)
            .iter()
            .map(|x| (x.0, x.2, x.3, x.4.to_bits(), x.5.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&threads), bits(&processes));
    assert_eq!(
        weight_difference(&weights(&threads, 2), &weights(&processes, 2)),
        0.0
    );
    for d in [&threads, &processes] {
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("run.json")).unwrap()).unwrap();
        assert_eq!(record["world_size"], 2, "{}", d.display());
    }
}

#[test]
fn a_failing_rank_process_is_named_and_its_exit_code_passed_on() {
    let w = shared_world();
    let run_dir = w.root.join("runs").join("binary-failing");
    let _ = std::fs::remove_dir_all(&run_dir);
    // A pin that does not hold (the first digest of the pinned experiment, zeroed): every rank
    // exits with the pins code (3), the parent names the first and passes its code on.
    let text = std::fs::read_to_string(&w.experiment).unwrap();
    let digest = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|t| t.len() == 64)
        .expect("a pinned digest");
    let broken = w.root.join("broken-pin.yaml");
    std::fs::write(&broken, text.replacen(digest, &"0".repeat(64), 1)).unwrap();
    let out = train_binary_on(
        &broken,
        &run_dir,
        &["--nproc", "2", "--launcher", "processes"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("exited with code 3: the first rank to fail"),
        "{stderr}"
    );
}

#[test]
fn a_rank_without_its_rank_0_fails_naming_the_address() {
    let w = shared_world();
    let run_dir = w.root.join("runs").join("binary-orphan");
    let _ = std::fs::remove_dir_all(&run_dir);
    // Started by Slurm as rank 1 of 4 with nobody listening where rank 0 should be.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = train_binary(
        &run_dir,
        &["--max-steps", "1", "--dist-timeout", "1"],
        &[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_JOB_NODELIST", "gpu[1-2]"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port.as_str()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rank 1: rank 0's rendezvous at 127.0.0.1:{port} did not answer"
        )),
        "{stderr}"
    );
}
