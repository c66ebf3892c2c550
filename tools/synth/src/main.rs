//! `synth`: writes procedural rooms in the raw formats of ScanNet, ScanQA, SQA3D, ARKitScenes
//! and RoomPlan, and prints the digest of the tree it wrote.

use anyhow::Result;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use roomplan_synth::{generate_with_progress, ScannetFormat, SynthConfig};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Sens,
    Export,
    Both,
}

/// Generate synthetic indoor rooms written in the real raw on-disk formats of ScanNet (.sens v4,
/// SensReader exports, scan .txt, _vh_clean_2.ply), ScanQA, SQA3D (+ bird's-eye PNGs),
/// ARKitScenes 3DOD and RoomPlan CapturedRoom JSON, with ground truth in OUT/synth.json.
///
/// The same arguments give byte-identical output on any machine and thread count; the last
/// line printed is the sha256 digest of the output tree.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: synth --out data/synth --scenes 4 --frames 60 --faults"
)]
struct Args {
    /// Output folder (must be new or empty).
    #[arg(long, short)]
    out: PathBuf,
    /// Random seed; every scene derives its own stream from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of rooms (each: one ScanNet scene, one ARKitScenes video, one RoomPlan JSON).
    #[arg(long, default_value_t = 4)]
    scenes: usize,
    /// Frames per ScanNet scene and per ARKitScenes video.
    #[arg(long, default_value_t = 60)]
    frames: usize,
    /// ScanNet colour size WxH (real ScanNet: 1296x968).
    #[arg(long, default_value = "324x242", value_parser = parse_size)]
    color_size: (u32, u32),
    /// ScanNet depth size WxH (real ScanNet: 640x480).
    #[arg(long, default_value = "160x120", value_parser = parse_size)]
    depth_size: (u32, u32),
    /// SQA3D bird's-eye PNG size WxH.
    #[arg(long, default_value = "320x180", value_parser = parse_size)]
    bird_size: (u32, u32),
    /// ScanQA questions per room.
    #[arg(long, default_value_t = 12)]
    questions: usize,
    /// SQA3D situations per room (each with several questions).
    #[arg(long, default_value_t = 4)]
    situations: usize,
    /// Which ScanNet representation to write: the raw .sens, the SensReader export folders, or both.
    #[arg(long, value_enum, default_value = "sens")]
    scannet_format: Format,
    /// Inject faults (truncated .sens, -inf poses, corrupt JPEG, missing depth, bad questions,
    /// malformed JSON, skipped annotation), listed in OUT/faults.json.
    #[arg(long)]
    faults: bool,
    /// Worker threads (default: all cores). Output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WxH, e.g. 324x242, got {s:?}"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{v:?} in {s:?}: {e}"))
    };
    Ok((parse(w)?, parse(h)?))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = SynthConfig {
        seed: args.seed,
        num_scenes: args.scenes,
        frames_per_scene: args.frames,
        scannet_color_size: args.color_size,
        scannet_depth_size: args.depth_size,
        scannet_format: match args.scannet_format {
            Format::Sens => ScannetFormat::Sens,
            Format::Export => ScannetFormat::Export,
            Format::Both => ScannetFormat::Both,
        },
        bird_size: args.bird_size,
        scanqa_per_scene: args.questions,
        sqa3d_situations_per_scene: args.situations,
        faults: args.faults,
    };
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = args.threads {
        pool = pool.num_threads(n);
    }
    let pool = pool.build()?;
    let bar = ProgressBar::new(cfg.work_units());
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} frames+rooms ({eta})",
    )?);
    let summary = pool.install(|| generate_with_progress(&cfg, &args.out, &|n| bar.inc(n)))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} files ({} bytes) to {}: {} scenes, {} ScanNet + {} ARKitScenes frames, {} ScanQA + {} SQA3D questions, {} faults",
        summary.files,
        summary.bytes,
        args.out.display(),
        summary.scenes,
        summary.scannet_frames,
        summary.arkit_frames,
        summary.scanqa_questions,
        summary.sqa3d_questions,
        summary.faults
    );
    println!("{}", summary.tree_digest);
    Ok(())
}
