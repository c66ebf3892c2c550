//! From prepared datasets to model inputs: the per-epoch global order, the mixture, view dropout,
//! image decoding on background threads, ChatML prompts with the `<image>` slot and answer-only
//! labels.
//!
//! Everything random is a function of (seed, epoch, position in the epoch), never of thread
//! count or timing, so a resumed run sees the same batches as an uninterrupted one:
//! - the order of an epoch ([`Corpus::epoch_order`]): each dataset's training rows shuffled by
//!   a stream of (seed, epoch); each slot of the epoch drawn from dataset d with probability
//!   weight_d / Σ weights, taking that dataset's next row (reshuffled when it runs out); the
//!   epoch has Σ n_d slots;
//! - view dropout of the sample at a position: a stream of (seed, epoch, position).
//!
//! The prompt of a sample is `<image>\n[situation\n]question` (stage 3: the instruction), the
//! target its first answer (stage 3: the canonical action JSON). Over-long samples lose prompt text
//! from the front of the question, never image slots or the answer; they are counted.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::chat::{ChatTokenizer, Message, TrainingExample};
use crate::model::geometry_head::ViewGeometry;
use crate::model::vggt_input::{decode_stored_image, stack_images};
use crate::train::experiment::{DatasetSpec, Experiment};
use roomplan_prep::shard::{Dataset, SampleRecord};

/// Where the data stream stands: the next micro-batch starts at `position` of `epoch`'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub position: usize,
}

/// One opened dataset with the rows of its training and evaluation splits.
pub struct Source {
    pub name: String,
    pub weight: f64,
    pub dataset: Dataset,
    pub train_rows: Vec<usize>,
    pub eval_rows: Vec<usize>,
    pub eval_split: String,
    /// Cached VGGT features of the dataset's scenes, when the experiment names them.
    pub features: Option<roomplan_prep::shard::features::FeatureStore>,
}

/// A sample ready for the model (images still on the host, not yet through VGGT).
#[derive(Debug, Clone)]
pub struct Example {
    pub sample_id: String,
    pub source: usize,
    /// `[S, 3, H, W]` in [0, 1]; empty (`[0, 3, 0, 0]`) when `vision` comes from cached features.
    pub images: Tensor,
    /// The kept views' cached VGGT features, `[S·P, C]` f32 (what `encode_views` gives for them,
    /// computed with all of the scene's first `views_per_sample` views), or `None`: VGGT runs live.
    pub vision: Option<Tensor>,
    pub geometry: Option<Vec<ViewGeometry>>,
    pub text: TrainingExample,
    /// Prompt tokens cut to fit `max_seq_len`.
    pub truncated: usize,
    pub record: SampleRecord,
}

/// A micro-batch, the epoch it belongs to, the cursor after it, and how long the loader took to
/// prepare it (reading, decoding, tokenizing).
pub struct Batch {
    pub examples: Vec<Example>,
    pub epoch: u64,
    pub next: Cursor,
    pub prepare_seconds: f64,
}

/// The experiment's datasets, tokenizer and prompt settings, shared with the loader thread.
pub struct Corpus {
    pub sources: Vec<Source>,
    tokenizer: ChatTokenizer,
    stage: u8,
    seed: u64,
    views_per_sample: usize,
    view_dropout: f64,
    max_seq_len: usize,
    system_prompt: Option<String>,
    blank_views: bool,
    depth_bins: usize,
    /// Image slots: geometry tokens per view with geometry, and the Perceiver's latents.
    tokens_per_view: usize,
    num_latents: usize,
}

/// Mixes the seed with a purpose and numbers into one stream seed (splitmix64 steps).
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut x = seed;
    for &p in parts {
        x ^= p
            .wrapping_add(0x9e3779b97f4a7c15)
            .wrapping_add(x << 6)
            .wrapping_add(x >> 2);
        x = x.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        x = z ^ (z >> 31);
    }
    x
}

/// Purposes of derived streams.
pub const STREAM_ORDER: u64 = 1;
pub const STREAM_VIEWS: u64 = 2;
pub const STREAM_LORA_DROPOUT: u64 = 3;
pub const STREAM_INIT: u64 = 4;

impl Corpus {
    /// Opens `datasets` (the experiment's, already verified by its pins, or one given to
    /// `train predict`) with the experiment's prompt settings.
    pub fn new(
        exp: &Experiment,
        tokenizer: ChatTokenizer,
        datasets: &[DatasetSpec],
    ) -> Result<Self> {
        let mut sources = Vec::new();
        for spec in datasets {
            let dataset = Dataset::open(&spec.path)
                .with_context(|| format!("dataset {} ({})", spec.name, spec.path.display()))?;
            let mut train_rows = Vec::new();
            let mut eval_rows = Vec::new();
            for row in 0..dataset.num_samples() {
                let s = dataset.sample(row)?;
                if s.split == spec.train_split {
                    train_rows.push(row);
                }
                if s.split == spec.eval_split {
                    eval_rows.push(row);
                }
            }
            let features = match &spec.features {
                Some(f) => {
                    ensure!(
                        !exp.data.blank_views,
                        "dataset {}: cached features are of the real images; data.blank_views \
                         needs VGGT live (remove data.datasets[].features)",
                        spec.name
                    );
                    Some(
                        roomplan_prep::shard::features::FeatureStore::open(&f.path)
                            .with_context(|| format!("features of dataset {}", spec.name))?,
                    )
                }
                None => None,
            };
            sources.push(Source {
                name: spec.name.clone(),
                weight: spec.weight,
                dataset,
                train_rows,
                eval_rows,
                eval_split: spec.eval_split.clone(),
                features,
            });
        }
        Ok(Self {
            sources,
            tokenizer,
            stage: exp.stage,
            seed: exp.seed,
            views_per_sample: exp.data.views_per_sample,
            view_dropout: exp.data.view_dropout,
            max_seq_len: exp.data.max_seq_len,
            system_prompt: exp.data.system_prompt.clone(),
            blank_views: exp.data.blank_views,
            depth_bins: exp.model.geometry.depth_bins,
            tokens_per_view: exp.model.geometry.tokens_per_view,
            num_latents: exp.model.perceiver.num_latents,
        })
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// Slots in an epoch: every training row of every dataset once, on average.
    pub fn epoch_len(&self) -> usize {
        self.sources.iter().map(|s| s.train_rows.len()).sum()
    }

    /// The epoch's global order of (source, row); see the module docs.
    pub fn epoch_order(&self, epoch: u64) -> Vec<(usize, usize)> {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, &[STREAM_ORDER, epoch]));
        let mut decks: Vec<Vec<usize>> = Vec::new();
        let mut next = vec![0usize; self.sources.len()];
        for s in &self.sources {
            let mut rows = s.train_rows.clone();
            rows.shuffle(&mut rng);
            decks.push(rows);
        }
        let total: f64 = self.sources.iter().map(|s| s.weight).sum();
        let mut order = Vec::with_capacity(self.epoch_len());
        for _ in 0..self.epoch_len() {
            let mut pick: f64 = rng.random::<f64>() * total;
            let mut d = self.sources.len() - 1;
            for (i, s) in self.sources.iter().enumerate() {
                if pick < s.weight {
                    d = i;
                    break;
                }
                pick -= s.weight;
            }
            if next[d] == decks[d].len() {
                decks[d].shuffle(&mut rng);
                next[d] = 0;
            }
            order.push((d, decks[d][next[d]]));
            next[d] += 1;
        }
        order
    }

    /// Image slots a sample with `geometry_views` views of geometry needs.
    pub fn image_slots(&self, geometry_views: usize) -> usize {
        self.tokens_per_view * geometry_views + self.num_latents
    }

    /// The conversation of a sample, without the answer.
    pub fn prompt_messages(&self, sample: &SampleRecord) -> Vec<Message> {
        let mut text = String::from("<image>\n");
        if let Some(s) = sample.situation.as_deref().filter(|s| !s.is_empty()) {
            text.push_str(s);
            text.push('\n');
        }
        text.push_str(&sample.question);
        let mut messages = Vec::new();
        if let Some(system) = &self.system_prompt {
            messages.push(Message::system(system.clone()));
        }
        messages.push(Message::user(text));
        messages
    }

    /// What the model should answer: the first answer (stage 2) or the action JSON (stage 3).
    pub fn target(&self, source: &str, sample: &SampleRecord) -> Result<String> {
        let target = match self.stage {
            3 => sample.action_json.clone(),
            _ => sample.answers.first().cloned(),
        };
        target.with_context(|| {
            format!(
                "dataset {source}, sample {}: no {} to train on",
                sample.sample_id,
                if self.stage == 3 {
                    "action_json"
                } else {
                    "answer"
                }
            )
        })
    }

    /// Prepares the sample at `row` of `source`: with its target (training, validation loss) or
    /// as a prompt only (prediction). `dropout_stream` (training only) seeds view dropout.
    pub fn example(
        &self,
        source: usize,
        row: usize,
        dropout_stream: Option<u64>,
        with_target: bool,
    ) -> Result<Example> {
        let src = &self.sources[source];
        let record = src.dataset.sample(row)?;
        let what = format!("dataset {}, sample {}", src.name, record.sample_id);
        let scene = src
            .dataset
            .scene_by_id(&record.scene_id)?
            .with_context(|| format!("{what}: scene {} is not in the dataset", record.scene_id))?;
        let all_views: Vec<_> = scene.views.iter().take(self.views_per_sample).collect();
        ensure!(
            !all_views.is_empty(),
            "{what}: scene {} has no views",
            scene.scene_id
        );
        // Indices into `all_views` of the views this sample keeps.
        let mut kept: Vec<usize> = (0..all_views.len()).collect();
        if let (Some(stream), true) = (dropout_stream, self.view_dropout > 0.0) {
            let mut rng = ChaCha8Rng::seed_from_u64(stream);
            let keep: Vec<bool> = all_views
                .iter()
                .map(|_| rng.random::<f64>() >= self.view_dropout)
                .collect();
            if keep.iter().any(|&k| k) {
                kept = (0..all_views.len()).filter(|&i| keep[i]).collect();
            } else {
                kept = vec![rng.random_range(0..all_views.len())];
            }
        }
        let views: Vec<_> = kept.iter().map(|&i| all_views[i]).collect();
        let (images, vision) =
            match &src.features {
                Some(store) => {
                    let cached = store.scene(&scene.scene_id).with_context(|| what.clone())?;
                    let m = store.manifest();
                    let frames: Vec<&str> = all_views.iter().map(|v| v.frame_id.as_str()).collect();
                    ensure!(
                    cached.frame_ids.iter().map(String::as_str).eq(frames.iter().copied()),
                    "{what}: the cached features of scene {} are of views {:?}, the sample's are \
                     {frames:?} (rerun tools cache-features)",
                    scene.scene_id,
                    cached.frame_ids
                );
                    for v in &views {
                        ensure!(
                            [v.width, v.height] == m.pins.image_size,
                            "{what}, view {}: {}×{} pixels, the features were computed at {:?}",
                            v.frame_id,
                            v.width,
                            v.height,
                            m.pins.image_size
                        );
                    }
                    let per_view = m.tokens_per_view * m.channels;
                    let values: Vec<f32> = kept
                        .iter()
                        .flat_map(|&i| {
                            cached.values[i * per_view..(i + 1) * per_view]
                                .iter()
                                .copied()
                        })
                        .collect();
                    let vision = Tensor::from_vec(
                        values,
                        (kept.len() * m.tokens_per_view, m.channels),
                        &Device::Cpu,
                    )?;
                    let empty = Tensor::zeros((0, 3, 0, 0), candle_core::DType::F32, &Device::Cpu)?;
                    (empty, Some(vision))
                }
                None => {
                    let images = views
                        .iter()
                        .map(|v| {
                            decode_stored_image(&v.image, &format!("{what}, view {}", v.frame_id))
                                .map_err(anyhow::Error::from)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let mut images = stack_images(&images, &Device::Cpu)?;
                    if self.blank_views {
                        images = (images.zeros_like()? + 0.5)?;
                    }
                    (images, None)
                }
            };
        let mut geometry = Vec::new();
        for v in &views {
            if let Some(g) = &v.geometry {
                ensure!(
                    g.depth_hist.len() == self.depth_bins,
                    "{what}, view {}: depth histogram of {} bins, the experiment's \
                     model.geometry.depth_bins is {}",
                    v.frame_id,
                    g.depth_hist.len(),
                    self.depth_bins
                );
                geometry.push(ViewGeometry {
                    rotation: g.r,
                    translation: g.t,
                    intrinsics: g.k,
                    width: v.width,
                    height: v.height,
                    depth_hist: g.depth_hist.clone(),
                    valid_fraction: g.valid_depth_fraction,
                });
            }
        }
        let slots = self.image_slots(geometry.len());
        let mut messages = self.prompt_messages(&record);
        let text = if with_target {
            messages.push(Message::assistant(self.target(&src.name, &record)?));
            self.tokenizer.encode_training(&messages, slots)
        } else {
            let p = self.tokenizer.encode_prompt(&messages, slots)?;
            Ok(TrainingExample {
                labels: vec![crate::model::chat::IGNORE_INDEX; p.ids.len()],
                ids: p.ids,
                image_positions: p.image_positions,
            })
        }
        .with_context(|| what.clone())?;
        let (text, truncated) = truncate_prompt(text, self.max_seq_len, self.tokenizer.im_end_id())
            .with_context(|| what.clone())?;
        Ok(Example {
            sample_id: record.sample_id.clone(),
            source,
            images,
            vision,
            geometry: (!geometry.is_empty()).then_some(geometry),
            text,
            truncated,
            record,
        })
    }

    /// The fixed evaluation subset of a source: its first `max` eval-split rows.
    pub fn eval_rows(&self, source: usize, max: usize) -> &[usize] {
        let rows = &self.sources[source].eval_rows;
        &rows[..rows.len().min(max)]
    }
}

/// Cuts prompt tokens right after the image slots (the start of the question text, up to the
/// user turn's `<|im_end|>`) until the example fits `max_len`. Returns the example and how many
/// tokens were cut; an example that cannot fit without cutting slots or answer is an error.
pub fn truncate_prompt(
    mut ex: TrainingExample,
    max_len: usize,
    im_end: u32,
) -> Result<(TrainingExample, usize)> {
    let excess = ex.ids.len().saturating_sub(max_len);
    if excess == 0 {
        return Ok((ex, 0));
    }
    let start = ex.image_positions.last().map_or(0, |p| p + 1);
    let text_end = ex.ids[start..]
        .iter()
        .position(|&id| id == im_end)
        .map_or(start, |p| start + p);
    let cuttable = text_end - start;
    if cuttable < excess {
        bail!(
            "{} tokens do not fit max_seq_len {max_len} even without the question text \
             ({} image slots, {} answer tokens): raise data.max_seq_len",
            ex.ids.len(),
            ex.image_positions.len(),
            ex.labels
                .iter()
                .filter(|&&l| l != crate::model::chat::IGNORE_INDEX)
                .count()
        );
    }
    ex.ids.drain(start..start + excess);
    ex.labels.drain(start..start + excess);
    Ok((ex, excess))
}

/// Micro-batches prepared ahead on background threads through a bounded queue.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing micro-batches of `micro_batch` samples from `cursor` on, decoding with
    /// `threads` threads, at most `prefetch` batches ahead. An epoch's remainder smaller than a
    /// micro-batch is skipped.
    pub fn start(
        corpus: Arc<Corpus>,
        cursor: Cursor,
        micro_batch: usize,
        threads: usize,
        prefetch: usize,
    ) -> Result<Self> {
        Self::start_sharded(corpus, cursor, micro_batch, 0, 1, threads, prefetch)
    }

    /// [`Loader::start`] for rank `rank` of `world` data-parallel ranks: the global micro-batch
    /// is the next `world × micro_batch` slots of the epoch's order, and this rank takes its
    /// `rank`-th slice of `micro_batch` slots. The cursor counts global positions, so it means
    /// the same for any world size; an epoch's remainder smaller than a global micro-batch is
    /// skipped. View dropout is seeded by the global position, whichever rank draws it.
    pub fn start_sharded(
        corpus: Arc<Corpus>,
        cursor: Cursor,
        micro_batch: usize,
        rank: usize,
        world: usize,
        threads: usize,
        prefetch: usize,
    ) -> Result<Self> {
        ensure!(rank < world, "rank {rank} of a world of {world}");
        let global = micro_batch * world;
        for s in &corpus.sources {
            ensure!(
                !s.train_rows.is_empty(),
                "dataset {} ({}) has no sample in its training split",
                s.name,
                s.dataset.dir().display()
            );
        }
        ensure!(
            corpus.epoch_len() >= global,
            "the training mixture has {} samples, fewer than one micro-batch of {micro_batch} \
             on each of {world} rank(s)",
            corpus.epoch_len()
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("loader-{i}"))
            .build()?;
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let mut cursor = cursor;
                let mut order = corpus.epoch_order(cursor.epoch);
                loop {
                    if cursor.position + global > order.len() {
                        // Only a cursor from elsewhere (another world size, another micro-batch)
                        // can point past the last whole batch.
                        cursor = Cursor {
                            epoch: cursor.epoch + 1,
                            position: 0,
                        };
                    }
                    if cursor.position == 0 {
                        order = corpus.epoch_order(cursor.epoch);
                    }
                    let first = cursor.position + rank * micro_batch;
                    let slots: Vec<(usize, (usize, usize))> = (first..first + micro_batch)
                        .map(|p| (p, order[p]))
                        .collect();
                    let epoch = cursor.epoch;
                    let seed = corpus.seed;
                    let started = std::time::Instant::now();
                    let examples: Result<Vec<Example>> = pool.install(|| {
                        slots
                            .par_iter()
                            .map(|&(p, (d, row))| {
                                let stream = derive_seed(seed, &[STREAM_VIEWS, epoch, p as u64]);
                                corpus.example(d, row, Some(stream), true)
                            })
                            .collect()
                    });
                    cursor.position += global;
                    if cursor.position + global > order.len() {
                        cursor = Cursor {
                            epoch: cursor.epoch + 1,
                            position: 0,
                        };
                    }
                    let failed = examples.is_err();
                    let prepare_seconds = started.elapsed().as_secs_f64();
                    let item = examples.map(|examples| Batch {
                        examples,
                        epoch,
                        next: cursor,
                        prepare_seconds,
                    });
                    if tx.send(item).is_err() || failed {
                        return;
                    }
                }
            })?;
        Ok(Self {
            rx,
            handle: Some(handle),
        })
    }

    /// The next micro-batch (blocks until it is ready).
    pub fn next_batch(&mut self) -> Result<Batch> {
        match self.rx.recv() {
            Ok(item) => item,
            Err(_) => bail!("the data loader stopped"),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the queue ends the producer at its next send.
        let (_, dead) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
