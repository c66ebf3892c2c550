//! `prep-sqa3d`: ScanNet scans + SQA3D situated questions → a prepared dataset (scenes and samples
//! Arrow shards, manifest.json, rejects.jsonl). See `--help`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::pipeline::{
    check_out_dir, exit_with, merge_arguments, save_hash_cache, raw_input_of_bytes, reject_ids_across_files,
    run_scenes, CommonArgs, InputRoot, Prelude, SceneJob, SceneOutput,
};
use roomplan_prep::rejects::Reject;
use roomplan_prep::scannet::{
    missing_scan_reason, prepare_scene, read_ply_bounds_hashed, scan_exists, SceneFailure,
};
use roomplan_prep::shard::{ViewRecord, ENCODING_PNG};
use roomplan_prep::sqa3d::{
    annotations_file, bird_file, join_split, questions_file, Split, Sqa3dQuestion,
};

const TOOL: &str = "prep-sqa3d";

/// Prepare SQA3D (situated questions about ScanNet scans) as Arrow shards: one `scenes` row per
/// scan with its selected views and their geometry, one `samples` row per question with its
/// situation text and the agent's position and heading, as given and in the sample's reference
/// frame (positions are relative to the bounding-box centre of `<scene>_vh_clean_2.ply`, which is
/// therefore read too).
///
/// Questions and annotations are joined on question_id; duplicated ids, orphans and other bad
/// records go to rejects.jsonl and the run goes on; --strict makes them fail the run.
#[derive(Debug, Parser)]
#[command(name = TOOL, version, verbatim_doc_comment)]
struct Args {
    /// ScanNet root: the folder that holds `scans/<scene>/` (with `<scene>_vh_clean_2.ply`).
    #[arg(long, value_name = "DIR")]
    scannet: PathBuf,

    /// SensReader exports in a tree of their own: `<DIR>/<scene>/{color,depth,pose,intrinsic}/`
    /// (reader.py's output); a scene found there is read from there [default: the `.sens` or the
    /// export folders in `scans/<scene>/`].
    #[arg(long, value_name = "DIR")]
    scannet_exports: Option<PathBuf>,

    /// SQA3D folder holding `balanced/v1_balanced_{questions,sqa_annotations}_<split>_scannetv2.json`
    /// (and `bird/<scene>_bird.png` for --bev, unless --bev-dir names another folder).
    #[arg(long, value_name = "DIR")]
    sqa3d: PathBuf,

    /// Splits to prepare (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Split::Train, Split::Val, Split::Test])]
    splits: Vec<Split>,

    /// Add each scene's bird's-eye render `<scene>_bird.png` as a last view, stored as given
    /// (PNG) and without geometry.
    #[arg(long)]
    bev: bool,

    /// Folder holding the bird's-eye renders `<scene>_bird.png` (SQA3D ships them in bird.zip,
    /// beside sqa_task/, not inside it) [default: `bird/` in --sqa3d]. Implies --bev.
    #[arg(long, value_name = "DIR")]
    bev_dir: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

/// A joined question and the labels of its two files.
struct Question {
    questions_file: String,
    annotations_file: String,
    q: Sqa3dQuestion,
}

impl Question {
    /// Both records of the question, as (file, record) for rejects.
    fn records(&self) -> [(String, String); 2] {
        let id = self.q.question_id.to_string();
        [
            (self.questions_file.clone(), id.clone()),
            (self.annotations_file.clone(), id),
        ]
    }
}

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
    let sqa3d = InputRoot::new("sqa3d", &args.sqa3d)?;
    // Where the bird's-eye renders are: a folder of their own, or `bird/` in the SQA3D folder.
    let bev = match (&args.bev_dir, args.bev) {
        (Some(dir), _) => Some(BirdViews {
            root: InputRoot::new("bev-dir", dir)?,
            sub: "",
        }),
        (None, true) => {
            sqa3d.require("bird")?;
            Some(BirdViews {
                root: sqa3d.clone(),
                sub: "bird",
            })
        }
        (None, false) => None,
    };
    let mut roots = vec![&scannet, &sqa3d];
    roots.extend(exports.as_ref());
    roots.extend(bev.as_ref().map(|b| &b.root));
    check_out_dir(&args.common.out_dir("sqa3d"), &roots)?;
    let mut splits = args.splits.clone();
    splits.sort();
    splits.dedup();
    let files: Vec<(Split, PathBuf, PathBuf)> = splits
        .iter()
        .map(|&s| {
            Ok((
                s,
                sqa3d.require(&questions_file(s))?,
                sqa3d.require(&annotations_file(s))?,
            ))
        })
        .collect::<Result<_>>()?;

    let mut prelude = Prelude::default();
    let mut joined: Vec<(String, Question)> = Vec::new();
    for (split, q_path, a_path) in &files {
        let (q_bytes, q_input) = sqa3d.read(q_path)?;
        let (a_bytes, a_input) = sqa3d.read(a_path)?;
        prelude.raw_inputs.extend([q_input, a_input]);
        let (q_label, a_label) = (sqa3d.label(q_path), sqa3d.label(a_path));
        let (questions, rejects) = join_split(&q_bytes, &q_label, &a_bytes, &a_label, *split);
        prelude.rejects.extend(rejects);
        joined.extend(questions.into_iter().map(|q| {
            (
                q_label.clone(),
                Question {
                    questions_file: q_label.clone(),
                    annotations_file: a_label.clone(),
                    q,
                },
            )
        }));
    }
    let (joined, rejects) = reject_ids_across_files(joined, |q| q.q.question_id.to_string());
    prelude.rejects.extend(rejects);

    let mut by_scene: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    for (_, question) in joined {
        let scene = question.q.scene_id.clone();
        if scan_exists(&scannet, exports.as_ref(), &scene) {
            by_scene.entry(scene).or_default().push(question);
        } else {
            let reason = missing_scan_reason(&scannet, &scene);
            for (file, record) in question.records() {
                prelude
                    .scene_rejects
                    .push((scene.clone(), Reject::new(file, record, &reason)));
            }
        }
    }
    let jobs: Vec<SceneJob<Vec<Question>>> = by_scene
        .into_iter()
        .map(|(scene_id, data)| SceneJob { scene_id, data })
        .collect();

    let own = serde_json::json!({ "splits": splits, "bev": args.bev });
    let tool = ToolInfo::new(
        TOOL,
        env!("CARGO_PKG_VERSION"),
        merge_arguments(&args.common, own),
    );
    let view_options = args.common.view_options();
    let out = args.common.out_dir("sqa3d");
    let summary = run_scenes(&args.common, &out, tool, prelude, jobs, |job| {
        let samples = || job.data.iter().flat_map(Question::records);
        // The situation frame is centred on the mesh's bounding box: without the mesh, no sample
        // can be placed. The mesh (tens of MB in ScanNet) is read and hashed beside the scene's
        // views, as one more stream for an idle worker.
        let ply = scannet
            .dir
            .join("scans")
            .join(&job.scene_id)
            .join(format!("{}_vh_clean_2.ply", job.scene_id));
        let (bounds, prepared) = rayon::join(
            || read_ply_bounds_hashed(&ply),
            || prepare_scene(&scannet, exports.as_ref(), &job.scene_id, &view_options),
        );
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(failure) => return failure.into_output(samples()),
        };
        let centre = match bounds {
            Ok((bounds, sha256)) => {
                prepared.raw_inputs.push(roomplan_prep::manifest::RawInput {
                    path: scannet.label(&ply),
                    kind: roomplan_prep::manifest::RawInputKind::File,
                    sha256: hex::encode(sha256),
                    bytes: std::fs::metadata(&ply).map(|m| m.len()).unwrap_or(0),
                });
                bounds.center()
            }
            Err(e) => {
                let mut rejects = prepared.rejects;
                let reason = format!(
                    "scene {} has no usable mesh centre: {}",
                    job.scene_id,
                    e.reason()
                );
                rejects.push(Reject::new(scannet.label(e.file()), e.record(), e.reason()));
                let failure = SceneFailure {
                    rejects,
                    raw_inputs: prepared.raw_inputs,
                    reason,
                };
                return failure.into_output(samples());
            }
        };
        if let Some(bev) = &bev {
            add_bird_view(
                bev,
                &job.scene_id,
                &mut prepared.record.views,
                &mut prepared.rejects,
                &mut prepared.raw_inputs,
            );
        }
        let samples = job
            .data
            .iter()
            .map(|q| q.q.to_sample(Some(q.q.agent(&centre, &prepared.reference))))
            .collect();
        // The agent pose of a sample comes from its annotations file.
        let sample_files = job
            .data
            .iter()
            .map(|q| q.annotations_file.clone())
            .collect();
        SceneOutput {
            scene: Some(prepared.record),
            samples,
            sample_files,
            rejects: prepared.rejects,
            raw_inputs: prepared.raw_inputs,
        }
    })
    .with_context(|| format!("writing {}", out.display()))?;
    save_hash_cache(&hash_cache);
    Ok(summary.report(args.common.strict))
}

/// Where the bird's-eye renders are: `<root>/<sub>/<scene>_bird.png`.
struct BirdViews {
    root: InputRoot,
    sub: &'static str,
}

/// Appends the scene's bird's-eye PNG as a view without geometry; a missing or unreadable image is
/// a reject and the scene goes on without it.
fn add_bird_view(
    bev: &BirdViews,
    scene_id: &str,
    views: &mut Vec<ViewRecord>,
    rejects: &mut Vec<Reject>,
    raw_inputs: &mut Vec<roomplan_prep::manifest::RawInput>,
) {
    let path = bev.root.dir.join(bev.sub).join(bird_file(scene_id));
    let label = bev.root.label(&path);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            rejects.push(Reject::new(
                label,
                "whole file",
                format!("bird's-eye view of {scene_id} not readable: {e}"),
            ));
            return;
        }
    };
    raw_inputs.push(raw_input_of_bytes(&label, &bytes));
    match image::load_from_memory_with_format(&bytes, image::ImageFormat::Png) {
        Ok(img) => views.push(ViewRecord {
            frame_id: "bird".to_string(),
            width: img.width(),
            height: img.height(),
            image: bytes,
            encoding: ENCODING_PNG.to_string(),
            geometry: None,
        }),
        Err(e) => rejects.push(Reject::new(
            label,
            "whole file",
            format!("not a decodable PNG: {e}"),
        )),
    }
}

fn main() -> ExitCode {
    roomplan_prep::allocator::keep_freed_memory_for_reuse();
    exit_with(TOOL, run(Args::parse()))
}
