//! `prep-arkit`: ARKitScenes videos with 3D boxes → a prepared stage-3 dataset (scenes and
//! samples Arrow shards, manifest.json, rejects.jsonl). See `--help`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};

use roomplan_prep::actions::synthesis::SynthesisConfig;
use roomplan_prep::arkit::{discover_videos, parse_metadata_csv, prepare_video, ArkitOptions, Video, VideoMeta};
use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::pipeline::{check_out_dir, exit_with, merge_arguments, run_scenes, CommonArgs, InputRoot, Prelude, SceneJob};
use roomplan_prep::rejects::Reject;

const TOOL: &str = "prep-arkit";

/// Which download of ARKitScenes to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum LayoutArg {
    /// `<dir>/3dod/<fold>/<video>/<video>_frames/…` (download_data.py 3dod).
    #[value(name = "3dod")]
    #[serde(rename = "3dod")]
    ThreeDod,
    /// `<dir>/raw/<fold>/<video>/…` (download_data.py raw with the lowres assets).
    Raw,
}

impl LayoutArg {
    fn folder(self) -> &'static str {
        match self {
            LayoutArg::ThreeDod => "3dod",
            LayoutArg::Raw => "raw",
        }
    }
}

/// Prepare ARKitScenes for stage 3 (RoomPlan actions): one `scenes` row per video with its
/// selected views (turned upright, geometry in the reference frame of the first view) and
/// synthesized instruction → action samples about its annotated boxes.
///
/// Frames are matched to `.traj` poses with the official tolerances (exact 3-decimal timestamp,
/// else within 0.005 s; intrinsics at ts, ts−0.001, ts+0.001). Videos whose annotation is
/// skipped or box-less, or that have no poses or no readable frame, and frames with missing or
/// unreadable files go to rejects.jsonl and the run goes on; --strict makes them fail the run.
/// Action targets are canonical JSON checked against prep/schema/roomplan_actions.schema.json.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, verbatim_doc_comment)]
struct Args {
    /// ARKitScenes download folder: the one holding `3dod/` (or `raw/`) with its metadata.csv.
    #[arg(long, value_name = "DIR")]
    arkitscenes: PathBuf,

    /// Which layout under --arkitscenes to read.
    #[arg(long, value_enum, default_value = "3dod")]
    layout: LayoutArg,

    /// Seed of the instruction templates (same seed, same instructions).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    #[command(flatten)]
    common: CommonArgs,
}

/// Stage-3 defaults differ from the QA binaries: more views, chosen for coverage of the room.
fn parse_args() -> Args {
    let command = Args::command()
        .mut_arg("num_views", |a| a.default_value("10"))
        .mut_arg("view_selection", |a| a.default_value("coverage"));
    let matches = command.get_matches();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn run(args: Args) -> Result<ExitCode> {
    args.common.validate()?;
    let root = InputRoot::new("arkitscenes", &args.arkitscenes)?;
    check_out_dir(&args.common.out_dir("arkitscenes"), &[&root])?;
    let dataset_dir = root.require(args.layout.folder())?;
    let metadata_path = root.require(&format!("{}/metadata.csv", args.layout.folder()))?;

    let mut prelude = Prelude::default();
    let (bytes, input) = root.read(&metadata_path)?;
    prelude.raw_inputs.push(input);
    let text = String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8", metadata_path.display()))?;
    let (metadata, errors) = parse_metadata_csv(&text, &metadata_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    prelude.rejects.extend(errors.iter().map(|e| e.to_reject(&root)));

    let videos = discover_videos(&dataset_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    // A video in both folds cannot be one scene: the first fold (Training) keeps it.
    let mut by_id: BTreeMap<String, (Video, Option<VideoMeta>)> = BTreeMap::new();
    for video in videos {
        if let Some((kept, _)) = by_id.get(&video.video_id) {
            let reason = format!("video {} is also in {}; that copy is used", video.video_id, kept.fold);
            prelude.scene_rejects.push((
                video.video_id.clone(),
                Reject::new(root.label(&video.dir), "whole folder", reason),
            ));
            continue;
        }
        let meta = metadata.get(&video.video_id).cloned();
        by_id.insert(video.video_id.clone(), (video, meta));
    }
    let jobs: Vec<SceneJob<(Video, Option<VideoMeta>)>> = by_id
        .into_iter()
        .map(|(scene_id, data)| SceneJob { scene_id, data })
        .collect();

    let options = ArkitOptions {
        views: args.common.view_options(),
        synthesis: SynthesisConfig {
            seed: args.seed,
            ..SynthesisConfig::default()
        },
    };
    let own = serde_json::json!({ "layout": args.layout, "synthesis": options.synthesis });
    let tool = ToolInfo::new(TOOL, env!("CARGO_PKG_VERSION"), merge_arguments(&args.common, own));
    let out = args.common.out_dir("arkitscenes");
    let summary = run_scenes(&args.common, &out, tool, prelude, jobs, |job| {
        let (video, meta) = &job.data;
        prepare_video(&root, video, meta.as_ref(), &options)
    })
    .with_context(|| format!("writing {}", out.display()))?;
    Ok(summary.report(args.common.strict))
}

fn main() -> ExitCode {
    roomplan_prep::allocator::keep_freed_memory_for_reuse();
    exit_with(TOOL, run(parse_args()))
}
