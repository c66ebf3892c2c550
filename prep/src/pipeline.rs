//! The shared driver of the prep binaries (`prep-scanqa`, `prep-sqa3d`, `prep-arkit`).
//!
//! A binary parses its own raw-root arguments plus [`CommonArgs`], reads its small inputs (question
//! files) into a [`Prelude`] and a list of [`SceneJob`]s, and hands both to [`run_scenes`] with a
//! per-scene function. That function turns one scene into a [`SceneOutput`] (scene row, sample rows,
//! rejects, raw inputs read) and is run as many scenes at a time as there are threads; a scene's own
//! parallel work (hashing its raw stream, decoding its views) goes to a rayon pool of as many
//! workers, so a core that has no scene of its own helps another and the last scenes do not leave
//! one idle. Results are written in scene-id order through a bounded
//! reorder window, so memory stays bounded by (2 × threads) scenes whatever the dataset size, and
//! the output does not depend on the thread count. `--shard-index/--num-shards` keeps the scenes whose id hashes to this part.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::hash_cache::HashCache;
use crate::geometry::{CoverageParams, DepthBins, SizeRule, ViewSelection, JPEG_QUALITY};
use crate::manifest::{relative_path, Manifest, Part, RawInput, ToolInfo};
use crate::rejects::Reject;
use crate::shard::{DatasetWriter, SampleRecord, SceneRecord, WriterOptions};

/// Most views a scene may keep.
pub const MAX_VIEWS: u32 = 32;

/// A dataset split of SQA3D (ScanQA has its own, with two test sets: [`crate::scanqa::Split`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// How views are chosen (`--view-selection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ViewSelectionArg {
    /// Evenly spaced over the frames with a valid pose, first and last included.
    Uniform,
    /// Greedy maximum coverage of the voxels seen in the back-projected depth of candidate frames.
    Coverage,
}

/// Options every prep binary shares.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// Views kept per scene (at most 32).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=MAX_VIEWS as i64))]
    pub num_views: u32,

    /// How the views are chosen among the frames with a valid pose.
    #[arg(long, value_enum, default_value = "uniform")]
    pub view_selection: ViewSelectionArg,

    /// Width of stored images; heights are rounded to a multiple of 14 (VGGT's patch size).
    #[arg(long, default_value_t = 518, value_parser = clap::value_parser!(u32).range(14..=4096))]
    pub image_width: u32,

    /// Taller stored images are centre-cropped to this many rows [default: the width, VGGT's rule].
    #[arg(long, value_parser = clap::value_parser!(u32).range(14..=4096))]
    pub image_height: Option<u32>,

    /// JPEG quality of stored images.
    #[arg(long, default_value_t = JPEG_QUALITY, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,

    /// Bins of the per-view depth histogram (equal bins over 0 to --depth-max metres).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub depth_bins: u32,

    /// Upper edge of the last depth bin, in metres; farther depths count in the last bin.
    #[arg(long, default_value_t = 10.0)]
    pub depth_max: f64,

    /// Exit non-zero (3) when any record was rejected (the dataset is still written).
    #[arg(long)]
    pub strict: bool,

    /// This job's part of the scenes, 0-based (with --num-shards); merge the parts with
    /// `tools shard merge`.
    #[arg(long, default_value_t = 0)]
    pub shard_index: u32,

    /// Number of parts the scenes are split into (by a hash of the scene id).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_shards: u32,

    /// Worker threads [default: available cores]; the output does not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Close an Arrow file once it holds this many MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_size_mb: u64,

    /// Output folder [default: data/shards/<dataset>].
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Replace a dataset already in the output folder.
    #[arg(long)]
    pub overwrite: bool,

    /// Hash every raw input again instead of reusing the digests remembered (by path, size, mtime
    /// and inode) in $ROOMPLAN_CACHE_DIR/sha256.json (default ~/.cache/roomplan/); the output is
    /// the same either way.
    #[arg(long)]
    pub no_hash_cache: bool,
}

/// How a scene's views become stored images and geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewOptions {
    pub num_views: usize,
    pub selection: ViewSelection,
    pub size_rule: SizeRule,
    pub depth_bins: DepthBins,
    pub jpeg_quality: u8,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions {
            num_views: 8,
            selection: ViewSelection::Uniform,
            size_rule: SizeRule::default(),
            depth_bins: DepthBins::default(),
            jpeg_quality: JPEG_QUALITY,
        }
    }
}

impl CommonArgs {
    /// Checks what clap cannot: an error here stops the run before any work.
    pub fn validate(&self) -> Result<()> {
        if self.shard_index >= self.num_shards {
            bail!(
                "--shard-index {} must be below --num-shards {}",
                self.shard_index,
                self.num_shards
            );
        }
        if !(self.depth_max.is_finite() && self.depth_max > 0.0) {
            bail!(
                "--depth-max must be a positive number of metres, got {}",
                self.depth_max
            );
        }
        Ok(())
    }

    pub fn view_options(&self) -> ViewOptions {
        ViewOptions {
            num_views: self.num_views as usize,
            selection: match self.view_selection {
                ViewSelectionArg::Uniform => ViewSelection::Uniform,
                ViewSelectionArg::Coverage => ViewSelection::Coverage(CoverageParams::default()),
            },
            size_rule: SizeRule {
                width: self.image_width,
                max_height: self.image_height.unwrap_or(self.image_width),
                ..SizeRule::default()
            },
            depth_bins: DepthBins {
                count: self.depth_bins as usize,
                min_m: 0.0,
                max_m: self.depth_max,
            },
            jpeg_quality: self.jpeg_quality,
        }
    }

    /// The effective options that shape the output, for the manifest (no paths, threads or part).
    pub fn arguments_json(&self) -> serde_json::Value {
        let v = self.view_options();
        serde_json::json!({
            "num_views": v.num_views,
            "view_selection": v.selection,
            "image_size_rule": v.size_rule,
            "jpeg_quality": v.jpeg_quality,
            "depth_bins": v.depth_bins,
            "shard_size_mb": self.shard_size_mb,
        })
    }

    pub fn part(&self) -> Option<Part> {
        (self.num_shards > 1).then_some(Part {
            index: self.shard_index,
            count: self.num_shards,
        })
    }

    /// Whether this job's part holds `scene_id`.
    pub fn owns_scene(&self, scene_id: &str) -> bool {
        part_of_scene(scene_id, self.num_shards) == self.shard_index
    }

    pub fn threads(&self) -> usize {
        self.threads.map(|t| t as usize).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// The sha256 cache of raw inputs this run uses (disabled with `--no-hash-cache`).
    pub fn hash_cache(&self) -> Arc<HashCache> {
        Arc::new(HashCache::open_default(self.no_hash_cache))
    }

    pub fn out_dir(&self, dataset: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("data/shards").join(dataset))
    }
}

/// The part (of `count`) that a scene belongs to: a hash of its id, so every job agrees without
/// seeing the others' scenes.
pub fn part_of_scene(scene_id: &str, count: u32) -> u32 {
    let digest = Sha256::digest(scene_id.as_bytes());
    let head = u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
    (head % count.max(1) as u64) as u32
}

/// A named raw input folder (`scannet`, `scanqa`, ...). Files under it are named
/// `<name>:<relative path>` in rejects and in the manifest.
#[derive(Clone, Debug)]
pub struct InputRoot {
    pub name: &'static str,
    pub dir: PathBuf,
    /// Digests of large raw inputs (`.sens`) already computed by an earlier run.
    pub hash_cache: Arc<HashCache>,
}

impl InputRoot {
    /// The root, which must be an existing folder.
    pub fn new(name: &'static str, dir: &Path) -> Result<InputRoot> {
        if !dir.is_dir() {
            bail!("--{name} {}: no such folder", dir.display());
        }
        Ok(InputRoot {
            name,
            dir: dir.to_path_buf(),
            hash_cache: Arc::new(HashCache::disabled()),
        })
    }

    /// The same root, looking digests up in (and adding them to) `cache`.
    pub fn with_hash_cache(mut self, cache: Arc<HashCache>) -> InputRoot {
        self.hash_cache = cache;
        self
    }

    /// `root/rel`, which must exist (a clear error before any work otherwise).
    pub fn require(&self, rel: &str) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        if !path.exists() {
            bail!(
                "{}: missing input {} (expected under --{} {})",
                self.label(&path),
                path.display(),
                self.name,
                self.dir.display()
            );
        }
        Ok(path)
    }

    /// `<name>:<path relative to the root>` (the path as given when it is not under the root).
    pub fn label(&self, path: &Path) -> String {
        match relative_path(&self.dir, path) {
            Ok(rel) => format!("{}:{rel}", self.name),
            Err(_) => path.display().to_string(),
        }
    }

    /// Reads a file and records it as a raw input.
    pub fn read(&self, path: &Path) -> Result<(Vec<u8>, RawInput)> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let input = raw_input_of_bytes(&self.label(path), &bytes);
        Ok((bytes, input))
    }
}

/// Saves the digests this run added to the hash cache; a cache that cannot be written costs only
/// time in a later run, so it is a warning.
pub fn save_hash_cache(cache: &HashCache) {
    if let Err(e) = cache.save() {
        eprintln!("warning: the sha256 cache was not saved: {e:#}");
    }
}

/// `path` made absolute with symbolic links resolved as far as it exists (the rest appended
/// lexically), so that two spellings of one place compare equal.
fn resolved(path: &Path) -> Result<PathBuf> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.into_iter().rev() {
        if name == ".." {
            out.pop();
        } else if name != "." {
            out.push(name);
        }
    }
    Ok(out)
}

/// Refuses an output folder inside (or equal to) a raw input folder: prep never writes into
/// what it reads.
pub fn check_out_dir(out: &Path, roots: &[&InputRoot]) -> Result<()> {
    let out_resolved = resolved(out)?;
    for root in roots {
        let root_resolved = resolved(&root.dir)?;
        if out_resolved.starts_with(&root_resolved) {
            bail!(
                "--out {} is inside the raw input folder --{} {}; write the dataset elsewhere",
                out.display(),
                root.name,
                root.dir.display()
            );
        }
    }
    Ok(())
}

/// A raw-input entry for bytes already read.
pub fn raw_input_of_bytes(label: &str, bytes: &[u8]) -> RawInput {
    RawInput {
        path: label.to_string(),
        kind: crate::manifest::RawInputKind::File,
        sha256: hex::encode(Sha256::digest(bytes)),
        bytes: bytes.len() as u64,
    }
}

/// What one scene contributes.
#[derive(Clone, Debug, Default)]
pub struct SceneOutput {
    /// `None` when the scene could not be prepared (then its samples are rejects too).
    pub scene: Option<SceneRecord>,
    pub samples: Vec<SampleRecord>,
    /// The raw file each sample's values were read from (its question or annotation file), parallel
    /// to `samples`, so that a sample the last gate rejects names it; empty when not given, and then
    /// such a reject names the scene's raw inputs.
    pub sample_files: Vec<String>,
    pub rejects: Vec<Reject>,
    pub raw_inputs: Vec<RawInput>,
}

/// How the last gate's rejects name a scene's raw inputs: the one file, or every file its values
/// may have come from joined by ` + ` (the check says which value; the scene's files together
/// hold it), or the scene id when none was recorded.
pub fn raw_input_set(raw_inputs: &[RawInput], scene_id: &str) -> String {
    match raw_inputs {
        [] => scene_id.to_string(),
        inputs => inputs
            .iter()
            .map(|i| i.path.as_str())
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// What a binary read before the scenes: inputs and rejects not produced by a scene job.
#[derive(Clone, Debug, Default)]
pub struct Prelude {
    pub raw_inputs: Vec<RawInput>,
    /// Rejects of records that name no usable scene (kept by part 0 only, so a merge counts each once).
    pub rejects: Vec<Reject>,
    /// Rejects of records about a scene (kept by the part that owns the scene).
    pub scene_rejects: Vec<(String, Reject)>,
}

/// One scene to prepare, with whatever the binary needs for it (e.g. its questions).
#[derive(Clone, Debug)]
pub struct SceneJob<T> {
    pub scene_id: String,
    pub data: T,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub digest: String,
}

impl RunSummary {
    /// What a prep binary ends with: the dataset digest as the only line on stdout (so that
    /// `digest=$(prep-scanqa ...)` works; logs and progress are on stderr), and the exit code.
    pub fn report(&self, strict: bool) -> std::process::ExitCode {
        println!("{}", self.digest);
        self.exit_code(strict)
    }

    /// The binary's exit code: success, or 3 under `--strict` when anything was rejected.
    pub fn exit_code(&self, strict: bool) -> std::process::ExitCode {
        let rejects_path = self.dir.join(crate::rejects::REJECTS_FILE);
        crate::rejects::strict_exit(self.manifest.counts.rejects, strict, &rejects_path)
    }
}

/// Runs `process` over the scenes of this part in parallel and writes the dataset to `out_dir`.
/// Jobs are sorted by scene id; `process` must be deterministic for byte-identical output.
pub fn run_scenes<T: Sync>(
    args: &CommonArgs,
    out_dir: &Path,
    tool: ToolInfo,
    prelude: Prelude,
    mut jobs: Vec<SceneJob<T>>,
    process: impl Fn(&SceneJob<T>) -> SceneOutput + Sync,
) -> Result<RunSummary> {
    args.validate()?;
    jobs.retain(|j| args.owns_scene(&j.scene_id));
    jobs.sort_by(|a, b| a.scene_id.cmp(&b.scene_id));
    if let Some(w) = jobs.windows(2).find(|w| w[0].scene_id == w[1].scene_id) {
        bail!("internal error: scene {} was queued twice", w[0].scene_id);
    }
    let options = WriterOptions {
        target_file_bytes: args.shard_size_mb << 20,
        part: args.part(),
        replace_existing: args.overwrite,
        ..WriterOptions::default()
    };
    let mut writer = DatasetWriter::create(out_dir, options)?;
    let mut raw_inputs = prelude.raw_inputs;
    if args.shard_index == 0 {
        writer.rejects().extend(prelude.rejects);
    }
    writer.rejects().extend(
        prelude
            .scene_rejects
            .into_iter()
            .filter(|(scene, _)| args.owns_scene(scene))
            .map(|(_, r)| r),
    );

    let progress = indicatif::ProgressBar::new(jobs.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} scenes {msg}",
        )
        .expect("the template is valid"),
    );
    progress.set_prefix(tool.name.clone());
    start_worker_pool(args.threads());
    run_ordered(&jobs, args.threads(), &process, |i, out: SceneOutput| {
        writer.rejects().extend(out.rejects);
        // The readers check what they read; this is the last gate before the shards: a scene or
        // sample with a non-finite or implausible number is rejected, never written.
        // A scene's values come from several raw files (frames, poses, metadata): its reject names
        // them all. A sample's come from its own question or annotation file when the binary says.
        let scene_source = raw_input_set(&out.raw_inputs, &jobs[i].scene_id);
        if !out.sample_files.is_empty() && out.sample_files.len() != out.samples.len() {
            bail!(
                "internal error: scene {} has {} samples but {} sample files",
                jobs[i].scene_id,
                out.samples.len(),
                out.sample_files.len()
            );
        }
        let sample_source = |k: usize| out.sample_files.get(k).unwrap_or(&scene_source).clone();
        if let Some(scene) = out.scene {
            if let Err(e) = scene.check() {
                let reason = format!("scene {} rejected: {e}", scene.scene_id);
                writer.reject(Reject::new(&scene_source, &scene.scene_id, &reason));
                for (k, sample) in out.samples.into_iter().enumerate() {
                    writer.reject(Reject::new(sample_source(k), &sample.sample_id, &reason));
                }
            } else {
                writer.write_scene(scene)?;
                for (k, sample) in out.samples.into_iter().enumerate() {
                    match sample.check() {
                        Ok(()) => writer.write_sample(sample)?,
                        Err(e) => {
                            writer.reject(Reject::new(sample_source(k), &sample.sample_id, e))
                        }
                    }
                }
            }
        } else if !out.samples.is_empty() {
            bail!(
                "internal error: scene {} has samples but no scene row",
                jobs[i].scene_id
            );
        }
        raw_inputs.extend(out.raw_inputs);
        progress.set_message(jobs[i].scene_id.clone());
        progress.inc(1);
        Ok(())
    })?;
    progress.finish_and_clear();
    let (manifest, digest) = writer.finish(tool, raw_inputs)?;
    let c = &manifest.counts;
    eprintln!(
        "wrote {} scenes, {} samples, {} views, {} rejects to {}\ndataset digest {digest}",
        c.scenes,
        c.samples,
        c.views,
        c.rejects,
        out_dir.display()
    );
    Ok(RunSummary {
        dir: out_dir.to_path_buf(),
        manifest,
        digest,
    })
}

/// Keeps the first file's records of every id and rejects the id's records in later files (the
/// same id in two split files cannot be told apart in the samples table). `items` are
/// `(file label, record)` in reading order.
pub fn reject_ids_across_files<T>(
    items: Vec<(String, T)>,
    id: impl Fn(&T) -> String,
) -> (Vec<(String, T)>, Vec<Reject>) {
    let mut first_file: BTreeMap<String, String> = BTreeMap::new();
    let mut kept = Vec::with_capacity(items.len());
    let mut rejects = Vec::new();
    for (file, item) in items {
        let key = id(&item);
        match first_file.get(&key) {
            Some(first) if *first != file => {
                rejects.push(Reject::new(
                    &file,
                    key,
                    format!("question_id is already used in {first}"),
                ));
            }
            Some(_) => kept.push((file, item)),
            None => {
                first_file.insert(key, file.clone());
                kept.push((file, item));
            }
        }
    }
    (kept, rejects)
}

/// The exit of a prep binary: the run's own code, or 2 with the error (and its causes) on stderr.
pub fn exit_with(tool: &str, result: Result<std::process::ExitCode>) -> std::process::ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The manifest's `arguments`: the common options plus the binary's own.
pub fn merge_arguments(common: &CommonArgs, own: serde_json::Value) -> serde_json::Value {
    let mut args = common.arguments_json();
    if let (Some(map), serde_json::Value::Object(own)) = (args.as_object_mut(), own) {
        map.extend(own);
    }
    args
}

/// Sizes rayon's global pool, which runs the scenes' parallel work ([`run_ordered`]), to `threads`
/// workers named `prep-worker-N`. The pool can be started once per process: if it already runs
/// (an earlier run in the same process, or rayon used before), it is kept as it is, which changes
/// the speed but never the output.
pub fn start_worker_pool(threads: usize) {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("prep-worker-{i}"))
        .build_global();
}

struct OrderState<R> {
    next_claim: usize,
    next_write: usize,
    ready: BTreeMap<usize, R>,
    failure: Option<String>,
    stop: bool,
}

/// Maps `process` over `jobs`, `threads` jobs at a time, and hands the results to `write` in job
/// order. At most `2 × threads` jobs run ahead of the writer, which bounds memory. A panic in
/// `process` or an error from `write` stops the run and is returned.
///
/// The jobs run on `threads` plain threads of their own, never on a rayon pool; what `process`
/// does in parallel (`par_iter`, `join`) goes to rayon's global pool ([`start_worker_pool`]),
/// whose workers then only ever hold pieces of jobs. A pool worker waiting in a nested `join` runs
/// other queued work meanwhile: were whole jobs queued there, it could start the next scene while
/// the one below it on its stack waited for that scene to end — the writer then waits too, the
/// window fills and cores sit idle (`prep-arkit` at 2 threads: 0.05–0.86 core-s idle in
/// 1.4–2.5 s runs with the jobs on the pool, 0.08–0.16 with them off it; BENCHMARKS.md, issue 11),
/// and a worker that blocked on the full window there would never return.
pub fn run_ordered<J: Sync, R: Send>(
    jobs: &[J],
    threads: usize,
    process: &(impl Fn(&J) -> R + Sync),
    mut write: impl FnMut(usize, R) -> Result<()>,
) -> Result<()> {
    let threads = threads.max(1);
    let window = 2 * threads;
    let state = Mutex::new(OrderState {
        next_claim: 0,
        next_write: 0,
        ready: BTreeMap::new(),
        failure: None,
        stop: false,
    });
    let changed = Condvar::new();
    let lock = || state.lock().unwrap_or_else(|poison| poison.into_inner());
    let claim = || loop {
        let index = {
            let mut st = lock();
            loop {
                if st.stop || st.next_claim >= jobs.len() {
                    return;
                }
                if st.next_claim < st.next_write + window {
                    break;
                }
                st = changed
                    .wait(st)
                    .unwrap_or_else(|poison| poison.into_inner());
            }
            st.next_claim += 1;
            st.next_claim - 1
        };
        let result = catch_unwind(AssertUnwindSafe(|| process(&jobs[index])));
        let mut st = lock();
        match result {
            Ok(r) => {
                st.ready.insert(index, r);
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                st.failure
                    .get_or_insert(format!("job {index} panicked: {msg}"));
                st.stop = true;
            }
        }
        changed.notify_all();
    };
    std::thread::scope(|scope| {
        for i in 0..threads.min(jobs.len()) {
            let started = std::thread::Builder::new()
                .name(format!("prep-scene-{i}"))
                .spawn_scoped(scope, claim);
            if let Err(e) = started {
                // The threads already started stop at their next claim instead of waiting on a
                // window that no writer empties.
                lock().stop = true;
                changed.notify_all();
                return Err(anyhow::Error::new(e).context("starting the worker threads"));
            }
        }
        let mut result = Ok(());
        for index in 0..jobs.len() {
            let next = {
                let mut st = lock();
                loop {
                    if let Some(r) = st.ready.remove(&index) {
                        st.next_write = index + 1;
                        changed.notify_all();
                        break Ok(r);
                    }
                    if let Some(failure) = &st.failure {
                        break Err(anyhow!("{failure}"));
                    }
                    st = changed
                        .wait(st)
                        .unwrap_or_else(|poison| poison.into_inner());
                }
            };
            if let Err(e) = next.and_then(|r| write(index, r)) {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            lock().stop = true;
            changed.notify_all();
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ordered_results_whatever_the_thread_count() {
        let jobs: Vec<u64> = (0..40).collect();
        for threads in [1, 2, 4] {
            let mut seen = Vec::new();
            // Uneven work so that workers finish out of order.
            let work = |j: &u64| {
                std::thread::sleep(std::time::Duration::from_micros((j * 7919 % 13) * 100));
                j * j
            };
            run_ordered(&jobs, threads, &work, |i, r| {
                seen.push((i, r));
                Ok(())
            })
            .unwrap();
            assert_eq!(
                seen,
                jobs.iter()
                    .map(|&j| (j as usize, j * j))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn workers_stay_within_the_window() {
        let jobs: Vec<usize> = (0..30).collect();
        let started = AtomicUsize::new(0);
        let work = |_: &usize| started.fetch_add(1, Ordering::SeqCst);
        let mut max_ahead = 0;
        run_ordered(&jobs, 3, &work, |i, _| {
            // Slow writer: workers must wait instead of running away.
            std::thread::sleep(std::time::Duration::from_millis(2));
            max_ahead = max_ahead.max(started.load(Ordering::SeqCst) - i);
            Ok(())
        })
        .unwrap();
        assert!(max_ahead <= 2 * 3 + 1, "workers ran {max_ahead} jobs ahead");
    }

    /// Jobs that use rayon themselves, with a writer slow enough to keep the window full: the
    /// run ends (a pool worker that waited on the window while a nested job sat below it on its
    /// stack would hang here) and the results come in order.
    #[test]
    fn jobs_with_nested_parallelism_finish_in_order() {
        use rayon::prelude::*;
        let jobs: Vec<u64> = (0..60).collect();
        let work = |j: &u64| -> u64 {
            (0..8u64)
                .into_par_iter()
                .map(|k| {
                    std::thread::sleep(std::time::Duration::from_micros(
                        (j * 31 + k * 17) % 7 * 150,
                    ));
                    j * 8 + k
                })
                .sum()
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let result = run_ordered(&jobs, 2, &work, |i, r| {
                std::thread::sleep(std::time::Duration::from_micros(300));
                seen.push((i as u64, r));
                Ok(())
            });
            done.send((result.is_ok(), seen)).unwrap();
        });
        let (ok, seen) = finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("run_ordered with nested parallel jobs did not finish within 2 minutes");
        assert!(ok);
        let expected: Vec<(u64, u64)> = (0..60)
            .map(|j| (j, (0..8).map(|k| j * 8 + k).sum()))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A job's nested parallel work never runs another job below it on the same thread's stack
    /// (which would hold the first job until the second ends): jobs with uneven nested pieces, so
    /// that workers wait in joins and go looking for other work.
    #[test]
    fn no_job_runs_nested_inside_another() {
        use rayon::prelude::*;
        use std::cell::Cell;
        thread_local!(static IN_JOB: Cell<bool> = const { Cell::new(false) });
        start_worker_pool(2);
        let jobs: Vec<u64> = (0..40).collect();
        let nested = AtomicUsize::new(0);
        let work = |j: &u64| -> u64 {
            if IN_JOB.with(|f| f.replace(true)) {
                nested.fetch_add(1, Ordering::SeqCst);
            }
            let sum = (0..6u64)
                .into_par_iter()
                .map(|k| {
                    std::thread::sleep(std::time::Duration::from_micros((j * 13 + k * 29) % 11 * 200));
                    j + k
                })
                .sum();
            IN_JOB.with(|f| f.set(false));
            sum
        };
        run_ordered(&jobs, 2, &work, |_, _| Ok(())).unwrap();
        assert_eq!(nested.load(Ordering::SeqCst), 0, "jobs started inside other jobs");
    }

    #[test]
    fn panics_and_write_errors_stop_the_run() {
        let jobs: Vec<usize> = (0..20).collect();
        let work = |j: &usize| {
            if *j == 5 {
                panic!("bad job");
            }
            *j
        };
        let e = run_ordered(&jobs, 2, &work, |_, _| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "job 5 panicked: bad job");
        let mut written = 0;
        let e = run_ordered(&jobs, 2, &|j: &usize| *j, |i, _| {
            written += 1;
            if i == 3 {
                bail!("disk full");
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert_eq!(written, 4);
    }

    /// The last gate's rejects name where the bad value came from: a scene's raw input set (not
    /// just its first file), a sample's own question or annotation file when the binary gives it.
    #[test]
    fn last_gate_rejects_name_the_files_the_values_came_from() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonArgs,
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let cli = <Cli as clap::Parser>::try_parse_from([
            "test".as_ref(),
            "--threads".as_ref(),
            "1".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .unwrap();
        let (scenes, _, _) = crate::shard::example_records();
        let sample = |id: &str, scene: &SceneRecord| {
            SampleRecord::new(id, "scanqa", "val", &scene.scene_id, "Q?")
        };
        let inputs = |scene: &SceneRecord| {
            vec![
                raw_input_of_bytes(
                    &format!("scannet:scans/{0}/{0}.txt", scene.scene_id),
                    b"txt",
                ),
                raw_input_of_bytes(
                    &format!("scannet:scans/{0}/{0}.sens", scene.scene_id),
                    b"sens",
                ),
            ]
        };
        // Scene 0: a NaN focal length (it comes from the .sens, not the .txt listed first).
        let mut bad_scene = scenes[0].clone();
        bad_scene.views[0].geometry.as_mut().unwrap().k[0] = f32::NAN;
        let a = SceneOutput {
            samples: vec![sample("a-0", &bad_scene)],
            sample_files: vec!["scanqa:ScanQA_v1.0_val.json".into()],
            raw_inputs: inputs(&bad_scene),
            scene: Some(bad_scene),
            ..SceneOutput::default()
        };
        // Scenes 1 and 2: fine, each with a sample holding a non-unit heading; the binary names the
        // first one's file, not the second one's.
        let bad_sample = |id: &str, scene: &SceneRecord| {
            let mut s = sample(id, scene);
            s.agent = Some(crate::shard::AgentPose {
                position_raw: [0.0; 3],
                rotation_raw_xyzw: [0.0, 0.0, 0.0, 1.0],
                position_ref: [0.0; 3],
                heading_ref: [2.0, 0.0, 0.0],
            });
            s
        };
        let b = SceneOutput {
            samples: vec![bad_sample("b-0", &scenes[1])],
            sample_files: vec!["sqa3d:balanced/annotations.json".into()],
            raw_inputs: inputs(&scenes[1]),
            scene: Some(scenes[1].clone()),
            ..SceneOutput::default()
        };
        let c = SceneOutput {
            samples: vec![bad_sample("c-0", &scenes[2])],
            raw_inputs: inputs(&scenes[2]),
            scene: Some(scenes[2].clone()),
            ..SceneOutput::default()
        };
        let jobs: Vec<SceneJob<SceneOutput>> = [a, b, c]
            .into_iter()
            .map(|o| SceneJob {
                scene_id: o.scene.as_ref().unwrap().scene_id.clone(),
                data: o,
            })
            .collect();
        let tool = ToolInfo::new("test", "0", serde_json::json!({}));
        run_scenes(&cli.common, &out, tool, Prelude::default(), jobs, |job| {
            job.data.clone()
        })
        .unwrap();
        let text = std::fs::read_to_string(out.join(crate::rejects::REJECTS_FILE)).unwrap();
        let rejects: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["file"].as_str().unwrap().into(),
                    v["record"].as_str().unwrap().into(),
                )
            })
            .collect();
        let (s0, s2) = (&scenes[0].scene_id, &scenes[2].scene_id);
        let set = |s: &str| format!("scannet:scans/{s}/{s}.txt + scannet:scans/{s}/{s}.sens");
        let mut expected = vec![
            (set(s0), s0.clone()),
            ("scanqa:ScanQA_v1.0_val.json".to_string(), "a-0".to_string()),
            (
                "sqa3d:balanced/annotations.json".to_string(),
                "b-0".to_string(),
            ),
            (set(s2), "c-0".to_string()),
        ];
        expected.sort();
        assert_eq!(rejects, expected, "{text}");
        assert!(
            text.contains("NaN"),
            "the reason names the bad value: {text}"
        );
        // The good scenes are written, the bad one is not.
        let dataset = crate::shard::Dataset::open(&out).unwrap();
        assert_eq!((dataset.num_scenes(), dataset.num_samples()), (2, 0));
    }

    #[test]
    fn scene_parts_cover_every_scene_once() {
        let ids: Vec<String> = (0..200).map(|i| format!("scene{i:04}_00")).collect();
        let mut counts = [0; 3];
        for id in &ids {
            counts[part_of_scene(id, 3) as usize] += 1;
            assert_eq!(part_of_scene(id, 1), 0);
        }
        assert_eq!(counts.iter().sum::<usize>(), 200);
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
    }
}
