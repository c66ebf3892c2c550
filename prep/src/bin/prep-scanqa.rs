//! `prep-scanqa`: ScanNet scans + ScanQA questions → a prepared dataset (scenes and samples Arrow
//! shards, manifest.json, rejects.jsonl). See `--help`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::pipeline::{
    check_out_dir, exit_with, merge_arguments, save_hash_cache, reject_ids_across_files, run_scenes, CommonArgs,
    InputRoot, Prelude, SceneJob, SceneOutput,
};
use roomplan_prep::rejects::Reject;
use roomplan_prep::scannet::{missing_scan_reason, prepare_scene, scan_exists};
use roomplan_prep::scanqa::{file_name, parse_split, ScanQaQuestion, Split};

const TOOL: &str = "prep-scanqa";

/// Prepare ScanQA (questions about ScanNet scans) as Arrow shards: one `scenes` row per scan with
/// its selected views and their geometry, one `samples` row per question.
///
/// Each scan is read from `scans/<scene>/<scene>.sens` when present (streamed: only the selected
/// frames are decoded), else from the SensReader export folders `color/ depth/ pose/ intrinsic/`.
/// Bad records (invalid poses, undecodable frames, questions about missing scans, malformed JSON
/// records) go to rejects.jsonl and the run goes on; --strict makes them fail the run.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, verbatim_doc_comment)]
struct Args {
    /// ScanNet root: the folder that holds `scans/<scene>/`.
    #[arg(long, value_name = "DIR")]
    scannet: PathBuf,

    /// SensReader exports in a tree of their own: `<DIR>/<scene>/{color,depth,pose,intrinsic}/`
    /// (reader.py's output); a scene found there is read from there [default: the `.sens` or the
    /// export folders in `scans/<scene>/`].
    #[arg(long, value_name = "DIR")]
    scannet_exports: Option<PathBuf>,

    /// ScanQA folder holding ScanQA_v1.0_train.json, ScanQA_v1.0_val.json,
    /// ScanQA_v1.0_test_w_obj.json and ScanQA_v1.0_test_wo_obj.json (only those of the chosen
    /// --splits are needed).
    #[arg(long, value_name = "DIR")]
    scanqa: PathBuf,

    /// Splits to prepare (comma-separated). The two test sets (test_w_obj, test_wo_obj) have
    /// different questions and no answers; they are kept as such, each under its own split name.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Split::ALL)]
    splits: Vec<Split>,

    #[command(flatten)]
    common: CommonArgs,
}

/// A question and the file label it came from.
type Question = (String, ScanQaQuestion);

fn run(args: Args) -> Result<ExitCode> {
    args.common.validate()?;
    let hash_cache = args.common.hash_cache();
    let scannet = InputRoot::new("scannet", &args.scannet)?.with_hash_cache(hash_cache.clone());
    scannet.require("scans")?;
    let exports = args
        .scannet_exports
        .as_deref()
        .map(|dir| InputRoot::new("scannet-exports", dir))
        .transpose()?;
    let scanqa = InputRoot::new("scanqa", &args.scanqa)?;
    let mut roots = vec![&scannet, &scanqa];
    roots.extend(exports.as_ref());
    check_out_dir(&args.common.out_dir("scanqa"), &roots)?;
    let mut splits = args.splits.clone();
    splits.sort();
    splits.dedup();
    let files: Vec<(Split, PathBuf)> = splits
        .iter()
        .map(|&s| Ok((s, scanqa.require(file_name(s))?)))
        .collect::<Result<_>>()?;

    let mut prelude = Prelude::default();
    let mut questions: Vec<Question> = Vec::new();
    for (split, path) in &files {
        let (bytes, input) = scanqa.read(path)?;
        prelude.raw_inputs.push(input);
        let label = scanqa.label(path);
        let (parsed, rejects) = parse_split(&bytes, *split, &label);
        prelude.rejects.extend(rejects);
        questions.extend(parsed.into_iter().map(|q| (label.clone(), q)));
    }
    let (questions, rejects) = reject_ids_across_files(questions, |q| q.question_id.clone());
    prelude.rejects.extend(rejects);

    let mut by_scene: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    for (file, q) in questions {
        if scan_exists(&scannet, exports.as_ref(), &q.scene_id) {
            by_scene
                .entry(q.scene_id.clone())
                .or_default()
                .push((file, q));
        } else {
            let reason = missing_scan_reason(&scannet, &q.scene_id);
            prelude
                .scene_rejects
                .push((q.scene_id.clone(), Reject::new(file, q.question_id, reason)));
        }
    }
    let jobs: Vec<SceneJob<Vec<Question>>> = by_scene
        .into_iter()
        .map(|(scene_id, data)| SceneJob { scene_id, data })
        .collect();

    let own = serde_json::json!({ "splits": splits });
    let tool = ToolInfo::new(
        TOOL,
        env!("CARGO_PKG_VERSION"),
        merge_arguments(&args.common, own),
    );
    let view_options = args.common.view_options();
    let out = args.common.out_dir("scanqa");
    let summary = run_scenes(
        &args.common,
        &out,
        tool,
        prelude,
        jobs,
        |job| match prepare_scene(&scannet, exports.as_ref(), &job.scene_id, &view_options) {
            Ok(prepared) => SceneOutput {
                scene: Some(prepared.record),
                samples: job.data.iter().map(|(_, q)| q.to_sample()).collect(),
                sample_files: job.data.iter().map(|(file, _)| file.clone()).collect(),
                rejects: prepared.rejects,
                raw_inputs: prepared.raw_inputs,
            },
            Err(failure) => failure.into_output(
                job.data
                    .iter()
                    .map(|(file, q)| (file.clone(), q.question_id.clone())),
            ),
        },
    )
    .with_context(|| format!("writing {}", out.display()))?;
    save_hash_cache(&hash_cache);
    Ok(summary.report(args.common.strict))
}

fn main() -> ExitCode {
    roomplan_prep::allocator::keep_freed_memory_for_reuse();
    exit_with(TOOL, run(Args::parse()))
}
