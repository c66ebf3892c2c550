//! Feature shards: the frozen VGGT aggregator's outputs computed once per scene
//! (`tools cache-features`), which `train` reads instead of running VGGT on every sample of every
//! epoch. Part of the shard contract (DESIGN.md "Scale").
//!
//! A feature folder holds `features.arrow` (Arrow IPC, one record batch per scene) and
//! `features.json`, the manifest: the pins the features were computed under — the scenes' dataset
//! manifest digest, the VGGT weights' sha256, the image size, the output layers, the dtype the
//! aggregator ran in and how many views of each scene it saw — plus the sha256, size and row count
//! of `features.arrow`. The folder's digest is the sha256 of the manifest's canonical bytes, which an
//! experiment pins; `train` also checks every pin against the experiment before the first step.
//!
//! Table `vggt_features`: `scene_id` (utf8), `frame_ids` (list of utf8: the views, in the order the
//! aggregator saw them), `features` (large binary: f32 little-endian values `[views,
//! tokens_per_view, channels]`, the requested layers concatenated on the channel axis as
//! `encode_views` gives them; bf16 runs are widened exactly).

use std::collections::HashMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use arrow::array::{Array, LargeBinaryArray, ListArray, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::manifest::{canonical_json, sha256_file, sha256_hex};
use crate::shard::{write_atomic, AtomicFile, ShardFile, SCHEMA_VERSION_KEY, TABLE_KEY};

/// Version of the feature table and manifest.
pub const FEATURES_SCHEMA_VERSION: u32 = 1;
pub const FEATURES_TABLE: &str = "vggt_features";
pub const FEATURES_FILE: &str = "features.arrow";
pub const FEATURES_MANIFEST: &str = "features.json";

/// What the features were computed from; each must equal the experiment's for `train` to use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturePins {
    /// Manifest digest of the prepared dataset whose scenes were encoded.
    pub scenes_manifest_digest: String,
    /// sha256 of the VGGT checkpoint file.
    pub vggt_weights_sha256: String,
    /// Width and height of every view fed to the aggregator.
    pub image_size: [u32; 2],
    /// Aggregator layers, concatenated on the channel axis in this order.
    pub layers: Vec<usize>,
    /// The dtype the aggregator ran in (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// The first this-many views of each scene (the experiment's `data.views_per_sample`).
    pub views_per_scene: usize,
}

/// `features.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureManifest {
    pub schema_version: u32,
    pub pins: FeaturePins,
    pub tokens_per_view: usize,
    pub channels: usize,
    pub scenes: usize,
    /// sha256 of `features.arrow`.
    pub file_sha256: String,
    pub file_bytes: u64,
}

impl FeatureManifest {
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let value = canonical_json(serde_json::to_value(self).expect("serialisable"));
        serde_json::to_vec(&value).expect("serialisable")
    }

    /// The digest an experiment pins.
    pub fn digest(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(FEATURES_MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: not a feature folder", path.display()))?;
        let m: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a feature manifest", path.display()))?;
        ensure!(
            m.schema_version == FEATURES_SCHEMA_VERSION,
            "{}: feature schema version {}, this build reads {FEATURES_SCHEMA_VERSION}",
            path.display(),
            m.schema_version
        );
        Ok(m)
    }
}

/// One scene's features.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneFeatures {
    pub scene_id: String,
    pub frame_ids: Vec<String>,
    /// `[frame_ids.len(), tokens_per_view, channels]`, row-major.
    pub values: Vec<f32>,
}

pub fn features_schema() -> SchemaRef {
    let metadata = HashMap::from([
        (
            SCHEMA_VERSION_KEY.to_string(),
            FEATURES_SCHEMA_VERSION.to_string(),
        ),
        (TABLE_KEY.to_string(), FEATURES_TABLE.to_string()),
    ]);
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new("scene_id", DataType::Utf8, false),
            Field::new(
                "frame_ids",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
            Field::new("features", DataType::LargeBinary, false),
        ],
        metadata,
    ))
}

/// Writes a feature folder from `scenes` (each checked against the sizes), replacing one that is
/// there; files appear only complete. Returns the manifest (its digest is what experiments pin).
pub fn write_features(
    dir: &Path,
    pins: FeaturePins,
    tokens_per_view: usize,
    channels: usize,
    scenes: impl IntoIterator<Item = Result<SceneFeatures>>,
) -> Result<FeatureManifest> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(FEATURES_FILE);
    let schema = features_schema();
    let (atomic, file) =
        AtomicFile::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = FileWriter::try_new(BufWriter::new(file), &schema)?;
    let mut count = 0;
    for scene in scenes {
        let scene = scene?;
        let per_view = tokens_per_view * channels;
        ensure!(
            !scene.frame_ids.is_empty() && scene.values.len() == scene.frame_ids.len() * per_view,
            "scene {}: {} values for {} views of {tokens_per_view} × {channels}",
            scene.scene_id,
            scene.values.len(),
            scene.frame_ids.len()
        );
        let mut frames = ListBuilder::new(StringBuilder::new());
        for f in &scene.frame_ids {
            frames.values().append_value(f);
        }
        frames.append(true);
        let bytes: Vec<u8> = scene.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![scene.scene_id.as_str()])),
                Arc::new(frames.finish()),
                Arc::new(LargeBinaryArray::from_vec(vec![bytes.as_slice()])),
            ],
        )?;
        writer.write(&batch)?;
        count += 1;
    }
    writer.finish()?;
    let file = writer
        .into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()?;
    atomic.commit(file)?;
    let (file_sha256, file_bytes) = sha256_file(&path)?;
    let manifest = FeatureManifest {
        schema_version: FEATURES_SCHEMA_VERSION,
        pins,
        tokens_per_view,
        channels,
        scenes: count,
        file_sha256,
        file_bytes,
    };
    let mut text = serde_json::to_vec_pretty(&manifest)?;
    text.push(b'\n');
    write_atomic(&dir.join(FEATURES_MANIFEST), &text)?;
    Ok(manifest)
}

/// An opened feature folder: the manifest, and scenes read on demand from the mapped file.
pub struct FeatureStore {
    dir: PathBuf,
    manifest: FeatureManifest,
    file: ShardFile,
    /// scene id → record batch (one scene per batch).
    index: HashMap<String, usize>,
}

impl FeatureStore {
    /// Opens `dir`, checking `features.arrow` against the manifest's sha256 and the schema.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = FeatureManifest::read(dir)?;
        let path = dir.join(FEATURES_FILE);
        let (sha, bytes) =
            sha256_file(&path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            sha == manifest.file_sha256 && bytes == manifest.file_bytes,
            "{}: sha256 {sha} ({bytes} bytes), the manifest lists {} ({} bytes): the features \
             changed after they were written (rerun tools cache-features)",
            path.display(),
            manifest.file_sha256,
            manifest.file_bytes
        );
        let file = ShardFile::open(&path, &features_schema())?;
        let mut index = HashMap::new();
        for i in 0..file.num_batches() {
            let batch = file.batch(i)?;
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .context("scene_id is not utf8")?;
            ensure!(
                ids.len() == 1,
                "{}: batch {i} holds {} scenes",
                path.display(),
                ids.len()
            );
            if index.insert(ids.value(0).to_string(), i).is_some() {
                bail!("{}: scene {} appears twice", path.display(), ids.value(0));
            }
        }
        ensure!(
            index.len() == manifest.scenes,
            "{}: {} scenes, the manifest says {}",
            path.display(),
            index.len(),
            manifest.scenes
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            file,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &FeatureManifest {
        &self.manifest
    }

    /// The features of `scene_id`, or an error naming the folder when it has none.
    pub fn scene(&self, scene_id: &str) -> Result<SceneFeatures> {
        let &i = self.index.get(scene_id).with_context(|| {
            format!(
                "{}: no features for scene {scene_id} (computed for other scenes?)",
                self.dir.display()
            )
        })?;
        let batch = self.file.batch(i)?;
        let frames = batch
            .column(1)
            .as_any()
            .downcast_ref::<ListArray>()
            .context("frame_ids is not a list")?
            .value(0);
        let frames = frames
            .as_any()
            .downcast_ref::<StringArray>()
            .context("frame_ids items are not utf8")?;
        let frame_ids: Vec<String> = (0..frames.len())
            .map(|j| frames.value(j).to_string())
            .collect();
        let bytes = batch
            .column(2)
            .as_any()
            .downcast_ref::<LargeBinaryArray>()
            .context("features is not large binary")?
            .value(0);
        let m = &self.manifest;
        let expected = frame_ids.len() * m.tokens_per_view * m.channels * 4;
        ensure!(
            bytes.len() == expected,
            "{}: scene {scene_id}: {} feature bytes, {} views of {} × {} f32 need {expected}",
            self.dir.display(),
            bytes.len(),
            frame_ids.len(),
            m.tokens_per_view,
            m.channels
        );
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(SceneFeatures {
            scene_id: scene_id.to_string(),
            frame_ids,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins() -> FeaturePins {
        FeaturePins {
            scenes_manifest_digest: "a".repeat(64),
            vggt_weights_sha256: "b".repeat(64),
            image_size: [112, 84],
            layers: vec![0, 1],
            dtype: "f32".into(),
            views_per_scene: 2,
        }
    }

    fn scene(id: &str, views: usize, base: f32) -> SceneFeatures {
        SceneFeatures {
            scene_id: id.into(),
            frame_ids: (0..views).map(|v| format!("{id}-f{v}")).collect(),
            values: (0..views * 3 * 4).map(|i| base + i as f32 * 0.25).collect(),
        }
    }

    #[test]
    fn features_round_trip_and_tampering_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("f");
        let scenes = vec![scene("s1", 2, 0.0), scene("s2", 1, -7.5)];
        let m = write_features(&dir, pins(), 3, 4, scenes.clone().into_iter().map(Ok)).unwrap();
        assert_eq!((m.scenes, m.tokens_per_view, m.channels), (2, 3, 4));
        let store = FeatureStore::open(&dir).unwrap();
        assert_eq!(store.manifest().digest(), m.digest());
        assert_eq!(store.scene("s2").unwrap(), scenes[1]);
        assert_eq!(store.scene("s1").unwrap(), scenes[0]);
        let e = store.scene("s3").unwrap_err().to_string();
        assert!(e.contains("no features for scene s3"), "{e}");
        // Another pin gives another digest.
        let other = write_features(
            &tmp.path().join("g"),
            FeaturePins {
                layers: vec![1],
                ..pins()
            },
            3,
            4,
            scenes.into_iter().map(Ok),
        )
        .unwrap();
        assert_ne!(other.digest(), m.digest());
        // A changed byte in the table is caught before any scene is read.
        let path = dir.join(FEATURES_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = FeatureStore::open(&dir).err().unwrap().to_string();
        assert!(
            e.contains("the features changed after they were written"),
            "{e}"
        );
    }

    #[test]
    fn a_scene_of_the_wrong_size_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bad = scene("s1", 2, 0.0);
        bad.values.pop();
        let e = write_features(tmp.path(), pins(), 3, 4, [Ok(bad)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scene s1: 23 values for 2 views of 3 × 4"),
            "{e}"
        );
    }
}
