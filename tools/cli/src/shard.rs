//! `tools shard inspect | verify | digest | merge`: thin wiring over `roomplan_prep::shard`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use roomplan_prep::manifest::Manifest;
use roomplan_prep::shard::{
    describe_sample, describe_scene, merge_datasets, samples_schema, scenes_schema, verify_dataset,
    Dataset,
};

#[derive(clap::Subcommand)]
pub enum ShardCommand {
    /// Print the manifest summary, both schemas, the counts and the first rows of each table.
    Inspect {
        /// A prepared dataset folder (Arrow shards + manifest.json).
        dir: PathBuf,
        /// How many rows of each table to print.
        #[arg(long, default_value_t = 3)]
        rows: usize,
    },
    /// Recompute every file's sha256, size and row count against manifest.json; exits 1 naming each
    /// file that differs.
    Verify {
        /// A prepared dataset folder.
        dir: PathBuf,
    },
    /// Print the dataset digest (sha256 of the manifest's canonical bytes), as experiments pin it.
    Digest {
        /// A prepared dataset folder.
        dir: PathBuf,
    },
    /// Join the folders of a `--shard-index/--num-shards` run into one dataset (files copied, one manifest).
    Merge {
        /// The new dataset folder (must be empty or absent).
        out: PathBuf,
        /// The part folders, every index of the run exactly once, in any order.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
    },
    /// Export both tables for other tools: Parquet laid out as a Hugging Face dataset
    /// (OUT/data/<table>-<split>-NNNNN-of-NNNNN.parquet and OUT/README.md with the dataset card).
    Export(crate::export::ExportArgs),
    /// Draw a sample's views side by side with its geometry on them (the other views' camera
    /// centres, stage-3 target boxes, the SQA3D agent) and its question/answers or action as caption.
    Show(crate::show::ShowArgs),
}

pub fn run(cmd: ShardCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ShardCommand::Inspect { dir, rows } => inspect(&dir, rows),
        ShardCommand::Verify { dir } => {
            let report =
                verify_dataset(&dir).with_context(|| format!("cannot verify {}", dir.display()))?;
            for problem in &report.problems {
                eprintln!("MISMATCH {problem}");
            }
            if report.ok() {
                println!(
                    "ok: {} files verified; dataset digest {}",
                    report.files_checked, report.digest
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{}: {} problem(s) in {} files",
                    dir.display(),
                    report.problems.len(),
                    report.files_checked
                );
                Ok(ExitCode::FAILURE)
            }
        }
        ShardCommand::Digest { dir } => {
            let manifest = Manifest::read(&dir)
                .with_context(|| format!("cannot read the manifest of {}", dir.display()))?;
            println!("{}", manifest.digest());
            Ok(ExitCode::SUCCESS)
        }
        ShardCommand::Export(args) => crate::export::run(&args),
        ShardCommand::Show(args) => crate::show::run(&args),
        ShardCommand::Merge { out, parts } => {
            let (manifest, digest) = merge_datasets(&out, &parts)
                .with_context(|| format!("cannot merge into {}", out.display()))?;
            println!(
                "merged {} parts into {}: {} scenes, {} samples, {} views, {} rejects; dataset digest {digest}",
                manifest.merged_from.len(),
                out.display(),
                manifest.counts.scenes,
                manifest.counts.samples,
                manifest.counts.views,
                manifest.counts.rejects
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(dir: &std::path::Path, rows: usize) -> anyhow::Result<ExitCode> {
    let dataset = Dataset::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let m = dataset.manifest();
    println!("dataset {}", dir.display());
    println!("digest {}", dataset.digest());
    println!(
        "schema version {}; written by {} {} with {}",
        m.schema_version, m.tool.name, m.tool.version, m.tool.arguments
    );
    if let Some(part) = m.part {
        println!("part {} of {}", part.index, part.count);
    }
    if !m.merged_from.is_empty() {
        println!("merged from {} parts", m.merged_from.len());
    }
    println!(
        "counts: {} scenes, {} samples, {} views, {} rejects",
        m.counts.scenes, m.counts.samples, m.counts.views, m.counts.rejects
    );
    println!("files:");
    for f in &m.files {
        println!(
            "  {:<36} {:>8} rows {:>12} bytes  sha256 {}",
            f.path, f.rows, f.bytes, f.sha256
        );
    }
    println!("raw inputs: {}", m.raw_inputs.len());
    for (name, schema) in [("scenes", scenes_schema()), ("samples", samples_schema())] {
        println!("{name} schema:");
        for field in schema.fields() {
            let null = if field.is_nullable() {
                " (nullable)"
            } else {
                ""
            };
            println!("  {}: {}{null}", field.name(), field.data_type());
        }
    }
    for i in 0..rows.min(dataset.num_scenes()) {
        print!("{}", describe_scene(&dataset.scene(i)?));
    }
    for i in 0..rows.min(dataset.num_samples()) {
        print!("{}", describe_sample(&dataset.sample(i)?));
    }
    Ok(ExitCode::SUCCESS)
}
