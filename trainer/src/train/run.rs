//! The training run, top to bottom: read the experiment, verify its pins, set up the run
//! directory, build the model, then for each optimizer step draw `grad_accum` micro-batches,
//! accumulate gradients, clip, step AdamW on the warmup + cosine schedule, log, evaluate and
//! checkpoint at their cadences.
//!
//! Run directory (default `data/runs/<experiment>-<UTC time>`):
//! `experiment.yaml` (resolved, after `--set`), `pins.json`, `run.json` (command, git commit and
//! dirtiness, Cargo.lock's sha256, host, start time, overrides, hash-cache use), `resumes.jsonl`,
//! `metrics.jsonl`, `checkpoints/step-N/`, later `predictions/` and `scores/`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::model::chat::IGNORE_INDEX;
use crate::train::checkpoint::{self, TrainState};
use crate::train::data::{derive_seed, Corpus, Loader, STREAM_LORA_DROPOUT};
use crate::train::dist::threads;
use crate::train::dist::{all_reduce_sum_many, broadcast_vars, Collective, CollectiveError, ReduceOp, Single};
use crate::train::evaluate::{answer_metrics, predict_rows, validation_loss};
use crate::train::experiment::{self, Experiment, OptimSpec};
use crate::train::metrics::{self, EvalLine, MetricsLog, StepLine};
use crate::train::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamGroup, WarmupCosine};
use crate::train::pins::{self, HashCache};
use crate::train::setup::{assemble, Assembled};
use crate::train::{NonFinite, PinsFailed};

/// What `train EXPERIMENT` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// A name in `experiments/` or a path to a YAML file.
    pub experiment: String,
    pub run_dir: Option<PathBuf>,
    pub resume: bool,
    /// Stop after this optimizer step (the schedule still spans the experiment's length).
    pub max_steps: Option<u64>,
    pub overrides: Vec<String>,
    /// Threads decoding views.
    pub loader_threads: usize,
    /// Skip the hash cache (hash every model file).
    pub no_hash_cache: bool,
    pub progress: bool,
    pub command_line: Vec<String>,
    /// Data-parallel ranks run as threads of this process (CPU collectives); 0 or 1: one rank.
    pub nproc: usize,
    /// How long a rank waits for the others (default [`DEFAULT_DIST_TIMEOUT`]).
    pub dist_timeout: Option<Duration>,
}

/// The Cargo.lock this binary was built from.
const CARGO_LOCK: &[u8] = include_bytes!("../../../Cargo.lock");

/// Parameter groups: LoRA (decayed), projector matrices (decayed), projector vectors (no decay).
pub fn param_groups(vars: &[(String, Var)], o: &OptimSpec) -> Vec<ParamGroup> {
    let config = |lr: f64, weight_decay: f64| AdamWConfig {
        lr,
        beta1: o.betas[0],
        beta2: o.betas[1],
        eps: o.eps,
        weight_decay,
    };
    let (lora, projector): (Vec<_>, Vec<_>) =
        vars.iter().cloned().partition(|(n, _)| n.contains(".lora_"));
    let (matrices, vectors): (Vec<_>, Vec<_>) = projector.into_iter().partition(|(_, v)| v.rank() >= 2);
    [
        ("lora", config(o.lr_lora, o.weight_decay), lora),
        ("projector", config(o.lr_projector, o.weight_decay), matrices),
        ("projector_no_decay", config(o.lr_projector, 0.0), vectors),
    ]
    .into_iter()
    .filter(|(_, _, v)| !v.is_empty())
    .map(|(name, config, vars)| ParamGroup {
        name: name.into(),
        config,
        vars,
    })
    .collect()
}

/// CUDA GPUs this process can use: 0 without the `cuda` feature (candle's `cuda_is_available`
/// only says how it was built, so ask the driver).
pub fn gpu_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda::cudarc::driver::CudaContext;
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// The device runs use: the first CUDA GPU when built with `cuda` and one is present, else the CPU.
pub fn device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if gpu_count() > 0 {
            return Ok(Device::new_cuda(0)?);
        }
    }
    Ok(Device::Cpu)
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    roomplan_prep::shard::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads the experiment a run directory recorded.
pub fn recorded_experiment(run_dir: &Path) -> Result<Experiment> {
    let path = run_dir.join("experiment.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: not a run directory (no experiment.yaml)", run_dir.display()))?;
    experiment::parse(&text, &path.display().to_string())
}

/// Verifies every pin of `exp`, reporting all problems at once.
pub fn verify_pins(
    exp: &Experiment,
    experiment_file: &Path,
    no_cache: bool,
) -> Result<(Vec<pins::Pin>, Option<PathBuf>)> {
    let cache = HashCache::open_default(no_cache);
    let verified = pins::verify(exp, &cache);
    if let Err(e) = cache.save() {
        eprintln!("warning: the hash cache was not saved: {e:#}");
    }
    match verified {
        Ok(p) => Ok((p, cache.path().map(Path::to_path_buf))),
        Err(problems) => Err(PinsFailed {
            experiment: experiment_file.to_path_buf(),
            problems,
        }
        .into()),
    }
}

/// How long a rank waits for the others at a collective operation unless told otherwise
/// (`--dist-timeout`): it must cover rank 0's evaluation and checkpoint writing.
pub const DEFAULT_DIST_TIMEOUT: Duration = Duration::from_secs(1800);

/// Runs (or resumes) training; returns the run directory. With `nproc` > 1, that many
/// data-parallel ranks run as threads of this process ([`threads::ThreadGroup`]).
pub fn train(opts: &TrainOptions) -> Result<PathBuf> {
    let world = opts.nproc.max(1);
    let (exp, run_dir) = prepare(opts, true, world)?;
    let device = device()?;
    if world == 1 {
        train_rank(opts, &exp, &run_dir, &Single, &device)?;
    } else {
        eprintln!("{world} data-parallel ranks as threads of this process (CPU collectives)");
        let timeout = opts.dist_timeout.unwrap_or(DEFAULT_DIST_TIMEOUT);
        let results = threads::run_ranks(world, timeout, |group| {
            train_rank(opts, &exp, &run_dir, &group, &device)
        })?;
        if let Some(e) = first_cause(results.into_iter().filter_map(Result::err).collect()) {
            return Err(e);
        }
    }
    Ok(run_dir)
}

/// Runs this process as one rank of a multi-process job (one process per GPU, `comm` joined
/// already, `device` this rank's GPU): every rank verifies the pins, rank 0 alone records the run.
pub fn train_as_rank(opts: &TrainOptions, comm: &dyn Collective, device: &Device) -> Result<PathBuf> {
    let (exp, run_dir) = prepare(opts, comm.rank() == 0, comm.world_size())?;
    train_rank(opts, &exp, &run_dir, comm, device)?;
    Ok(run_dir)
}

/// The error that explains a failed group: a rank's own failure before a rank's report that
/// another rank's loss was not finite, before the collective errors other ranks saw; the lowest
/// rank among equals.
fn first_cause(errors: Vec<anyhow::Error>) -> Option<anyhow::Error> {
    let rank_of = |e: &anyhow::Error| {
        if e.downcast_ref::<CollectiveError>().is_some() {
            2
        } else if e.downcast_ref::<NonFinite>().is_some_and(|n| n.sample_ids.is_empty()) {
            1
        } else {
            0
        }
    };
    let best = errors.iter().map(rank_of).enumerate().min_by_key(|&(i, k)| (k, i))?.0;
    errors.into_iter().nth(best)
}

/// The run directory `opts` names, or a new one: `data/runs/<experiment>-<UTC time>`.
pub fn resolve_run_dir(opts: &TrainOptions, exp: &Experiment) -> Result<PathBuf> {
    Ok(match (&opts.run_dir, opts.resume) {
        (Some(d), _) => d.clone(),
        (None, true) => bail!("--resume needs --run-dir (the run to continue)"),
        (None, false) => PathBuf::from("data/runs").join(format!(
            "{}-{}",
            exp.name,
            metrics::utc_now().replace(':', "")
        )),
    })
}

/// [`resolve_run_dir`] after reading the experiment `opts` names (a launcher picks the one run
/// directory of all its ranks).
pub fn run_dir_of(opts: &TrainOptions) -> Result<PathBuf> {
    let path = experiment::locate(&opts.experiment)?;
    let exp = experiment::load(&path, &opts.overrides)?.experiment;
    resolve_run_dir(opts, &exp)
}

/// Reads the experiment, checks the run directory, verifies the pins and (`lead`: rank 0)
/// records the run of `world` ranks.
fn prepare(opts: &TrainOptions, lead: bool, world: usize) -> Result<(Experiment, PathBuf)> {
    let path = experiment::locate(&opts.experiment)?;
    let loaded = experiment::load(&path, &opts.overrides)?;
    let exp = loaded.experiment;
    let run_dir = resolve_run_dir(opts, &exp)?;
    if opts.resume {
        // The batch layout may change (another world size keeping the global batch, checked
        // against the checkpoint); everything else must be as the run started.
        let mut recorded = recorded_experiment(&run_dir)?;
        recorded.train.micro_batch = exp.train.micro_batch;
        recorded.train.grad_accum = exp.train.grad_accum;
        ensure!(
            recorded == exp,
            "{}: the experiment differs from the one this run started with \
             (compare {} with {}); resume with the same file and --set overrides",
            run_dir.display(),
            path.display(),
            run_dir.join("experiment.yaml").display()
        );
    } else if lead && run_dir.exists() {
        let non_empty = std::fs::read_dir(&run_dir)?.next().is_some();
        ensure!(
            !non_empty,
            "{} already holds a run: use --resume to continue it, or another --run-dir",
            run_dir.display()
        );
    }
    let (pins, cache_path) = verify_pins(&exp, &path, opts.no_hash_cache)?;
    if !lead {
        return Ok((exp, run_dir));
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating {}", run_dir.display()))?;
    let started = metrics::utc_now();
    let record = json!({
        "started_utc": started,
        "command": opts.command_line,
        "experiment_file": path,
        "overrides": loaded.overrides,
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        "cargo_lock_sha256": roomplan_prep::manifest::sha256_hex(CARGO_LOCK),
        "host": host(),
        "threads": rayon::current_num_threads(),
        "world_size": world,
        "hash_cache": cache_path,
        "pins_from_hash_cache": pins.iter().filter(|p| p.from_cache).map(|p| p.field.clone()).collect::<Vec<_>>(),
    });
    if opts.resume {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join("resumes.jsonl"))?;
        use std::io::Write;
        writeln!(log, "{}", serde_json::to_string(&record)?)?;
    } else {
        roomplan_prep::shard::write_atomic(&run_dir.join("experiment.yaml"), exp.to_yaml()?.as_bytes())?;
        write_json(&run_dir.join("pins.json"), &json!({ "pins": pins }))?;
        write_json(&run_dir.join("run.json"), &record)?;
    }
    Ok((exp, run_dir))
}

/// The LoRA dropout stream of a step on a rank: rank 0 keeps the single-process stream, so a
/// world of one repeats earlier runs; the other ranks draw their own.
pub fn lora_dropout_seed(seed: u64, step: u64, rank: usize) -> u64 {
    match rank {
        0 => derive_seed(seed, &[STREAM_LORA_DROPOUT, step]),
        r => derive_seed(seed, &[STREAM_LORA_DROPOUT, step, r as u64]),
    }
}

/// Answer tokens the loss of an example averages over (its labels after the one-token shift).
fn answer_tokens(labels: &[i64]) -> usize {
    labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()
}

/// One rank of the run. Every rank builds the model, takes its slice of each global
/// micro-batch and computes gradients of its summed token losses; one all-reduce gives every
/// rank the step's gradient of (Σ token losses) / (answer tokens of the whole step on all
/// ranks), so the step does not depend on how its samples were split into ranks and
/// micro-batches. Rank 0 alone logs, evaluates and writes checkpoints (with the global cursor).
fn train_rank(
    opts: &TrainOptions,
    exp: &Experiment,
    run_dir: &Path,
    comm: &dyn Collective,
    device: &Device,
) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let lead = rank == 0;
    // 2. Model, data, optimizer, schedule.
    let asm = assemble(exp, device)?;
    let corpus = Arc::new(Corpus::new(exp, asm.tokenizer.clone(), &exp.data.datasets)?);
    let t = &exp.train;
    let per_step = t.micro_batch * t.grad_accum * world;
    let steps_per_epoch = (corpus.epoch_len() / per_step) as u64;
    let total_steps = match (t.max_steps, t.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * steps_per_epoch,
        (None, None) => unreachable!("validated: one of max_steps and epochs"),
    };
    ensure!(
        total_steps > 0,
        "the run has no step: {} training samples, {per_step} per step",
        corpus.epoch_len()
    );
    let schedule = WarmupCosine {
        warmup_steps: (total_steps as f64 * exp.schedule.warmup_fraction).round() as u64,
        total_steps,
        min_ratio: exp.schedule.min_lr_ratio,
    };
    let vars = asm.model.trainable_vars();
    let mut optimizer = AdamW::with_groups(param_groups(&vars, &exp.optim))?;
    let mut state = TrainState {
        step: 0,
        cursor: Default::default(),
        total_steps,
        warmup_steps: schedule.warmup_steps,
        samples_seen: 0,
        tokens_seen: 0,
        seed: exp.seed,
        global_batch: Some(per_step as u64),
    };
    if opts.resume {
        // Rank 0 reads the checkpoint; the others receive its state and optimizer moments.
        let (state_bytes, optimizer_bytes, source) = if lead {
            let (step, dir) = checkpoint::find(run_dir, None)?;
            checkpoint::load_vars(&vars, &dir.join(checkpoint::TRAINABLE_FILE))?;
            let loaded = checkpoint::load_state(&dir)?;
            ensure!(loaded.step == step, "{}: state.json says step {}", dir.display(), loaded.step);
            let file = dir.join(checkpoint::OPTIMIZER_FILE);
            let bytes = std::fs::read(&file)
                .with_context(|| format!("{}: reading the optimizer state", file.display()))?;
            metrics::truncate_to_step(run_dir, step)?;
            eprintln!("resuming {} from {}", run_dir.display(), dir.display());
            (serde_json::to_vec(&loaded)?, bytes, file.display().to_string())
        } else {
            (Vec::new(), Vec::new(), "rank 0's checkpoint".to_string())
        };
        let state_bytes = comm.broadcast_bytes(state_bytes, 0)?;
        let optimizer_bytes = comm.broadcast_bytes(optimizer_bytes, 0)?;
        state = serde_json::from_slice(&state_bytes).context("the resumed train state")?;
        let recorded = recorded_experiment(run_dir)?.train;
        let before = state
            .global_batch
            .unwrap_or((recorded.micro_batch * recorded.grad_accum) as u64);
        ensure!(
            before == per_step as u64,
            "the checkpoint was trained with {before} samples per step, this run would take \
             {per_step} ({world} rank(s) × train.micro_batch {} × train.grad_accum {}): keep the \
             global batch when changing the world size (e.g. --set train.grad_accum=...)",
            t.micro_batch,
            t.grad_accum
        );
        state.global_batch = Some(per_step as u64);
        optimizer.load_bytes(&optimizer_bytes, &source)?;
        if lead && state.total_steps != total_steps {
            eprintln!(
                "warning: the checkpoint's schedule spans {} steps, this run's {total_steps} \
                 (another world size or batch): the schedule follows this run",
                state.total_steps
            );
        }
    }
    // Every rank starts from rank 0's weights (the seeded initialisation, or the checkpoint's).
    broadcast_vars(comm, &vars)?;
    let stop_at = opts.max_steps.map_or(total_steps, |m| m.min(total_steps));

    // 3. The loop.
    let mut loader = Loader::start_sharded(
        corpus.clone(),
        state.cursor,
        t.micro_batch,
        rank,
        world,
        opts.loader_threads,
        2 * t.grad_accum,
    )?;
    let mut log = if lead { Some(MetricsLog::open(run_dir)?) } else { None };
    let progress = lead.then(|| Progress::new(opts.progress, state.step, stop_at));
    let mut last_checkpoint = checkpoint::list(run_dir)?.last().map(|c| c.0);
    while state.step < stop_at {
        let step = state.step + 1;
        let started = Instant::now();
        asm.model
            .lora()
            .set_dropout_seed(lora_dropout_seed(exp.seed, step, rank));
        let mut grads = GradStore::default();
        // This rank's share: Σ over micro-batches of (mean loss × answer tokens), samples, answer
        // tokens, input tokens, truncated tokens.
        let (mut loss_sum, mut samples, mut tokens, mut truncated) = (0f64, 0usize, 0usize, 0usize);
        let mut input_tokens = 0usize;
        let mut sample_ids = Vec::new();
        let mut own_non_finite = None;
        let mut waited = 0f64;
        let mut preparing = 0f64;
        let mut cursor = state.cursor;
        let mut epoch = cursor.epoch;
        for _ in 0..t.grad_accum {
            let wait = Instant::now();
            let batch = loader.next_batch()?;
            waited += wait.elapsed().as_secs_f64();
            preparing += batch.prepare_seconds;
            sample_ids.extend(batch.examples.iter().map(|e| e.sample_id.clone()));
            samples += batch.examples.len();
            let answer: usize = batch.examples.iter().map(|e| answer_tokens(&e.text.labels)).sum();
            tokens += answer;
            truncated += batch.examples.iter().map(|e| e.truncated).sum::<usize>();
            input_tokens += batch.examples.iter().map(|e| e.text.ids.len()).sum::<usize>();
            cursor = batch.next;
            epoch = batch.epoch;
            if own_non_finite.is_some() {
                continue;
            }
            let fused = asm.fused_examples(&batch.examples)?;
            let loss = asm.model.loss(&fused)?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                own_non_finite = Some(value);
                continue;
            }
            loss_sum += value as f64 * answer as f64;
            // The gradient of the micro-batch's summed token losses; divided by the step's
            // token count once every rank's share is known.
            let micro = (loss * answer as f64)?.backward()?;
            for (_, var) in &vars {
                if let Some(g) = micro.get(var.as_tensor()) {
                    let sum = match grads.get(var.as_tensor()) {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    };
                    grads.insert(var.as_tensor(), sum.detach());
                }
            }
        }
        // The step's statistics over all ranks, then (if every loss was finite) its gradient.
        let mut stats = vec![loss_sum, samples as f64, tokens as f64, input_tokens as f64, truncated as f64];
        stats.extend((0..world).map(|r| (r == rank && own_non_finite.is_some()) as u8 as f64));
        stats.extend(vars.iter().map(|(_, v)| grads.get(v.as_tensor()).is_some() as u8 as f64));
        let stats: Vec<f64> = comm
            .all_reduce(&Tensor::new(stats, &Device::Cpu)?, ReduceOp::Sum)?
            .to_vec1()?;
        let (loss_sum, samples, tokens, input_tokens, truncated) = (
            stats[0],
            stats[1] as usize,
            stats[2] as usize,
            stats[3] as usize,
            stats[4] as usize,
        );
        let bad: Vec<usize> = (0..world).filter(|&r| stats[5 + r] > 0.0).collect();
        if !bad.is_empty() {
            let (what, sample_ids) = match own_non_finite {
                Some(v) if world == 1 => (format!("loss {v}"), sample_ids),
                Some(v) => (format!("loss {v} on rank {rank}"), sample_ids),
                None => (format!("loss on rank(s) {bad:?}"), Vec::new()),
            };
            return Err(NonFinite {
                step,
                what,
                sample_ids,
                last_checkpoint,
            }
            .into());
        }
        let present: Vec<bool> = stats[5 + world..].iter().map(|&p| p > 0.0).collect();
        let local: Vec<Tensor> = vars
            .iter()
            .zip(&present)
            .filter(|(_, &p)| p)
            .map(|((_, v), _)| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let summed = all_reduce_sum_many(comm, &local)?;
        let mut grads = GradStore::default();
        let present_vars = vars.iter().zip(&present).filter(|(_, &p)| p).map(|(v, _)| v);
        for ((_, var), g) in present_vars.zip(summed) {
            grads.insert(var.as_tensor(), (g / tokens as f64)?);
        }
        let max_norm = exp.optim.max_grad_norm.unwrap_or(f64::INFINITY);
        let grad_norm = clip_grad_norm(&mut grads, &vars, max_norm)?;
        if !grad_norm.is_finite() {
            return Err(NonFinite {
                step,
                what: format!("gradient norm {grad_norm}"),
                sample_ids,
                last_checkpoint,
            }
            .into());
        }
        optimizer.set_lr_factor(schedule.factor(step));
        optimizer.step(&grads)?;
        drop(grads);
        state.step = step;
        state.cursor = cursor;
        state.samples_seen += samples as u64;
        state.tokens_seen += tokens as u64;
        let (Some(log), Some(progress)) = (log.as_mut(), progress.as_ref()) else {
            continue;
        };
        let seconds = started.elapsed().as_secs_f64();
        let line = StepLine {
            kind: "train".into(),
            step,
            epoch,
            loss: loss_sum / tokens as f64,
            lr: optimizer.learning_rates().into_iter().collect(),
            grad_norm,
            samples,
            tokens,
            input_tokens,
            truncated_tokens: truncated,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
            input_tokens_per_s: input_tokens as f64 / seconds,
            samples_per_s: samples as f64 / seconds,
            loader_wait_s: waited,
            loader_batches_per_s: t.grad_accum as f64 / preparing.max(1e-9),
            peak_rss_mib: metrics::peak_rss_mib(),
        };
        log.write(&line)?;
        progress.step(step, line.loss, schedule.factor(step) * exp.optim.lr_projector);

        let last = step == stop_at;
        if exp.eval.every > 0 && (step.is_multiple_of(exp.eval.every) || last) {
            let eval = evaluate(&asm, &corpus, exp, step, epoch)?;
            progress.println(format!(
                "step {step}: eval {}",
                serde_json::to_string(&(&eval.val_loss, &eval.metrics))?
            ));
            log.write(&eval)?;
        }
        if step.is_multiple_of(t.checkpoint_every) || last {
            checkpoint::save(run_dir, &state, t.keep_checkpoints, |dir| {
                checkpoint::save_vars(&vars, &dir.join(checkpoint::TRAINABLE_FILE))?;
                optimizer.save(&dir.join(checkpoint::OPTIMIZER_FILE))?;
                asm.model.lora().save(&dir.join(checkpoint::ADAPTER_DIR))
            })?;
            last_checkpoint = Some(step);
        }
    }
    if let Some(progress) = &progress {
        progress.finish();
        eprintln!(
            "{}: {} steps, {} samples; checkpoints in {}",
            run_dir.display(),
            state.step,
            state.samples_seen,
            run_dir.join(checkpoint::CHECKPOINTS_DIR).display()
        );
        use std::sync::atomic::Ordering;
        // Rank 0's own examples (training, evaluation): the other ranks' are the same in kind.
        eprintln!(
            "VGGT aggregator forwards on rank 0: {}; examples from cached features: {}",
            asm.vggt_forwards.load(Ordering::Relaxed),
            asm.cached_examples.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// Progress of the loop: an indicatif bar (loss, lr, it/s, ETA) on a terminal; plain lines about
/// every 5 % of the run when stderr is a file or a pipe (CI logs, nohup), so progress always shows.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    every: u64,
    started: Instant,
    first: u64,
}

impl Progress {
    fn new(show: bool, done: u64, total: u64) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps {msg} {per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            bar.set_position(done);
            bar
        });
        Self {
            bar,
            total,
            every: (total / 20).max(1),
            started: Instant::now(),
            first: done,
        }
    }

    fn step(&self, step: u64, loss: f64, lr: f64) {
        let msg = format!("loss {loss:.4} lr {lr:.2e}");
        match &self.bar {
            Some(bar) => {
                bar.set_message(msg);
                bar.set_position(step);
            }
            None if step.is_multiple_of(self.every) || step == self.total => {
                let rate = (step - self.first) as f64 / self.started.elapsed().as_secs_f64();
                let eta = (self.total - step) as f64 / rate.max(1e-9);
                eprintln!(
                    "step {step}/{} {msg} {rate:.2} it/s ETA {eta:.0}s",
                    self.total
                );
            }
            None => {}
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Validation loss and answer metrics on each dataset's fixed evaluation subset.
fn evaluate(asm: &Assembled, corpus: &Corpus, exp: &Experiment, step: u64, epoch: u64) -> Result<EvalLine> {
    let started = Instant::now();
    let mut val_loss = BTreeMap::new();
    let mut metrics = BTreeMap::new();
    for (i, src) in corpus.sources.iter().enumerate() {
        let rows = corpus.eval_rows(i, exp.eval.max_samples);
        if rows.is_empty() {
            continue;
        }
        if let Some(l) = validation_loss(asm, corpus, i, rows, exp.train.micro_batch)? {
            val_loss.insert(src.name.clone(), l);
        }
        let items = predict_rows(asm, corpus, i, rows, exp.eval.max_new_tokens, |_| {})?;
        for (k, v) in answer_metrics(exp.stage, &items) {
            metrics.insert(format!("{}/{k}", src.name), v);
        }
    }
    Ok(EvalLine {
        kind: "eval".into(),
        step,
        epoch,
        val_loss,
        metrics,
        seconds: started.elapsed().as_secs_f64(),
    })
}
