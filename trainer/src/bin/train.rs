//! `train`: runs an experiment (`experiments/NAME.yaml`), predicts with a trained run, and writes
//! the tiny experiment's generated models.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use roomplan_trainer::train::dist::tcp::TcpGroup;
use roomplan_trainer::train::dist::{launch, spawn};
use roomplan_trainer::train::predict::{predict, PredictOptions};
use roomplan_trainer::train::run::{run_dir_of, train, train_as_rank, TrainOptions};
use roomplan_trainer::train::{pins, tiny, NonFinite, PinsFailed, EXIT_NON_FINITE, EXIT_PINS};

/// Train the VGGT → Perceiver → Qwen3 + LoRA model on prepared shards.
///
/// `train EXPERIMENT` verifies every pin of the experiment (dataset manifests, model files), then
/// trains, writing metrics, checkpoints and the resolved experiment into a run directory.
/// Exit codes: 0 done, 1 error, 2 usage, 3 a pin does not hold, 4 non-finite loss or gradients,
/// 5 a collective timed out (NCCL); with `--launcher processes`, the first failed rank's code.
#[derive(Parser, Debug)]
#[command(
    name = "train",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  train tiny\n  train tiny --run-dir data/runs/t1 --max-steps 20 --set train.micro_batch=2\n  train tiny --run-dir data/runs/t1 --resume\n  train tiny --nproc 2 --run-dir data/runs/t2   # 2 data-parallel ranks\n  train tiny --nproc 2 --launcher processes     # one process per rank (per GPU with CUDA)\n  train predict --run-dir data/runs/t1 --dataset data/shards/scanqa --split val --out preds.jsonl\n  train make-tiny --out data/models/tiny --dataset data/shards/scanqa --dataset data/shards/sqa3d"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A name in experiments/ (tiny, stage2, stage3) or the path of a YAML file.
    #[arg(required = true)]
    experiment: Option<String>,
    /// Run directory (default: data/runs/<experiment>-<UTC time>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the newest complete checkpoint of --run-dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this optimizer step (the learning-rate schedule keeps the experiment's length).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Override a field before validation, e.g. --set train.micro_batch=2 (recorded in the run).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    #[command(flatten)]
    common: Common,
    /// Threads decoding views in the background (per rank).
    #[arg(long, default_value_t = 2)]
    loader_threads: usize,
    /// Data-parallel ranks on this machine; each takes a disjoint slice of every global
    /// micro-batch (train.micro_batch samples per rank), so the global batch grows with N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    nproc: usize,
    /// How --nproc starts its ranks: `threads` of this process (CPU collectives in memory), or
    /// `processes`: this binary re-executed once per rank with torchrun's variables (RANK,
    /// LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each on GPU LOCAL_RANK with NCCL in a
    /// CUDA build on a GPU machine, else with CPU collectives over TCP; the first rank that fails
    /// is named and its exit code becomes this one's. `auto`: processes when this build has CUDA
    /// and a GPU is present, else threads.
    #[arg(long, value_enum, default_value_t = Launcher::Auto)]
    launcher: Launcher,
    /// Seconds a rank waits for the others at a collective before failing with the missing
    /// rank's number (must cover rank 0's evaluation and checkpoint writing).
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    dist_timeout: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Launcher {
    Auto,
    Threads,
    Processes,
}

/// Whether this build can run NCCL on a GPU here.
fn gpu_present() -> bool {
    roomplan_trainer::train::run::gpu_count() > 0
}

#[derive(Args, Debug)]
struct Common {
    /// Compute threads (default: all cores). Fix it for runs that must repeat bit for bit.
    #[arg(long)]
    threads: Option<usize>,
    /// Hash every model file instead of trusting the (path, size, mtime, inode) hash cache.
    #[arg(long)]
    no_hash_cache: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Greedy answers of a trained run on a dataset split, as JSON Lines for `tools eval`.
    Predict(PredictArgs),
    /// Write the tiny experiment's models: Qwen3 and VGGT weights from a seed, and a BPE tokenizer
    /// trained on the datasets' text. Prints each file's sha256.
    MakeTiny(TinyArgs),
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[arg(long)]
    run_dir: PathBuf,
    /// Checkpoint `step-N` (default: the newest).
    #[arg(long)]
    checkpoint: Option<String>,
    /// A prepared dataset folder.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value = "val")]
    split: String,
    /// Predictions file (JSON Lines).
    #[arg(long)]
    out: PathBuf,
    /// Only the first N samples of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens generated at most per answer (default: the experiment's eval.max_new_tokens).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct TinyArgs {
    #[arg(long, default_value = "data/models/tiny")]
    out: PathBuf,
    /// Prepared datasets whose text trains the tokenizer (repeat the option).
    #[arg(long = "dataset", required = true)]
    datasets: Vec<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        // candle's CPU kernels read RAYON_NUM_THREADS; rayon's global pool is built from it too.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => {
            let r = cli.run;
            set_threads(r.common.threads)?;
            let launched = launch::from_env(|k| std::env::var(k).ok())?;
            let options = TrainOptions {
                experiment: r.experiment.expect("required by clap"),
                run_dir: r.run_dir,
                resume: r.resume,
                max_steps: r.max_steps,
                overrides: r.overrides,
                loader_threads: r.loader_threads,
                no_hash_cache: r.common.no_hash_cache,
                progress: !r.common.no_progress,
                command_line: std::env::args().collect(),
                nproc: r.nproc,
                dist_timeout: Some(std::time::Duration::from_secs(r.dist_timeout)),
            };
            let timeout = std::time::Duration::from_secs(r.dist_timeout);
            if let Some(env) = launched.filter(|e| e.world_size > 1) {
                // One rank of a multi-process job (torchrun, srun, or --launcher processes).
                anyhow::ensure!(
                    r.nproc <= 1,
                    "--nproc starts ranks itself; {} started this process as rank {} of {}",
                    env.source,
                    env.rank,
                    env.world_size
                );
                #[cfg(feature = "cuda")]
                if gpu_present() {
                    let device = candle_core::Device::new_cuda(env.local_rank)?;
                    let comm = roomplan_trainer::train::dist::nccl::NcclGroup::join(
                        &env, &device, timeout,
                    )?;
                    roomplan_trainer::train::run::train_as_rank(&options, &comm, &device)?;
                    return Ok(());
                }
                if env.rank == 0 {
                    eprintln!(
                        "{} ranks as processes ({}), CPU collectives over TCP through rank 0 on port {}",
                        env.world_size, env.source, env.master_port
                    );
                }
                let comm = TcpGroup::join(&env, timeout)?;
                train_as_rank(&options, &comm, &candle_core::Device::Cpu)?;
                return Ok(());
            }
            let processes = match r.launcher {
                Launcher::Processes => true,
                Launcher::Threads => false,
                Launcher::Auto => gpu_present(),
            };
            if r.nproc > 1 && processes {
                let run_dir = run_dir_of(&options)?;
                let args: Vec<String> = std::env::args().skip(1).collect();
                let port = match std::env::var("MASTER_PORT") {
                    Ok(p) => p
                        .parse()
                        .map_err(|_| anyhow::anyhow!("MASTER_PORT={p:?} is not a port"))?,
                    Err(_) => spawn::free_port()?,
                };
                eprintln!(
                    "{} data-parallel ranks as processes (rank 0 on port {port})",
                    r.nproc
                );
                spawn::run_processes(
                    &std::env::current_exe()?,
                    &spawn::child_args(&args, &run_dir),
                    r.nproc,
                    "127.0.0.1",
                    port,
                    spawn::KILL_GRACE,
                )?;
                return Ok(());
            }
            train(&options)?;
        }
        Some(Command::Predict(p)) => {
            set_threads(p.common.threads)?;
            let summary = predict(&PredictOptions {
                run_dir: p.run_dir,
                checkpoint: p.checkpoint,
                dataset: p.dataset,
                split: p.split,
                out: p.out,
                limit: p.limit,
                max_new_tokens: p.max_new_tokens,
                no_hash_cache: p.common.no_hash_cache,
                progress: !p.common.no_progress,
            })?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Some(Command::MakeTiny(t)) => {
            let corpus = tiny::corpus(&t.datasets)?;
            let models =
                tiny::write_tiny_models(&t.out, t.seed, &tiny::TinySizes::default(), &corpus)?;
            for dir in [&models.qwen3, &models.vggt] {
                let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<std::io::Result<_>>()?;
                files.sort();
                for f in files {
                    println!("{}  {}", pins::sha256_file(&f)?, f.display());
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    roomplan_trainer::keep_candle_elementwise_on_caller();
    roomplan_trainer::keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = if let Some(failed) = e.downcast_ref::<spawn::RankFailed>() {
                failed.code
            } else if e.downcast_ref::<PinsFailed>().is_some() {
                EXIT_PINS
            } else if e.downcast_ref::<NonFinite>().is_some() {
                EXIT_NON_FINITE
            } else {
                1
            };
            ExitCode::from(code as u8)
        }
    }
}
