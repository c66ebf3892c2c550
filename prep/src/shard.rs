//! The shard contract (DESIGN.md): what prep writes and train reads, schema as code in this one place.
//!
//! A prepared dataset is a folder of Arrow IPC files plus `manifest.json` and `rejects.jsonl`:
//!
//! - `scenes-NNNNN.arrow` ([`scenes_schema`]): one row per scene — dataset, scene id, the views (frame
//!   id, encoded image bytes, encoding, width, height, geometry or null), the raw world pose of the
//!   first view (the sample reference frame's anchor) and the dataset's axis alignment.
//! - `samples-NNNNN.arrow` ([`samples_schema`]): one row per question or instruction.
//! - The output of one `--shard-index i --num-shards n` job names its files
//!   `scenes-partIIIII-NNNNN.arrow` so that parts can be merged into one folder.
//!
//! Files are written under a temporary name, fsynced and renamed ([`AtomicFile`]); a new file is
//! started once one reaches [`WriterOptions::target_file_bytes`]. The same records in the same order
//! give byte-identical files. [`Dataset`] reads them memory-mapped (zero copy) with random access by
//! row and by scene id.
//!
//! Geometry conventions (frames, pixels, depth bins) are documented in [`crate::geometry`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int64Array,
    LargeBinaryArray, ListArray, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::writer::FileWriter;
use arrow::ipc::{convert::try_fb_to_schema, root_as_footer, Block};
use arrow::record_batch::RecordBatch;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::geometry::{mat3_to_row_major_f32, DepthStats, Mat3, Rigid, MAX_COORDINATE_M};
use crate::manifest::{
    sha256_file, Counts, FileEntry, FileKind, Manifest, ManifestError, Part, RawInput, ToolInfo,
    MANIFEST_FILE,
};
use crate::rejects::{Reject, RejectLog, REJECTS_FILE};
pub use crate::staging::is_dataset_file_name;
pub use crate::staging::CommitStep;
use crate::staging::Staged;

/// Version of the schemas below; stored in each file's schema metadata and in the manifest. Bump it
/// on any change of a field name, type or meaning.
pub const SCHEMA_VERSION: u32 = 1;
/// Schema metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "roomplan.schema_version";
/// Schema metadata key holding the table name (`scenes` or `samples`).
pub const TABLE_KEY: &str = "roomplan.table";

/// `encoding` of JPEG view images (what the prep binaries store).
pub const ENCODING_JPEG: &str = "jpeg";
/// `encoding` of PNG view images (e.g. an SQA3D bird's-eye view kept as given).
pub const ENCODING_PNG: &str = "png";

// ---------------------------------------------------------------------------------------------
// Schema.

fn item(data_type: DataType) -> FieldRef {
    Arc::new(Field::new("item", data_type, false))
}

fn fixed_list(data_type: DataType, size: i32) -> DataType {
    DataType::FixedSizeList(item(data_type), size)
}

fn list(data_type: DataType) -> DataType {
    DataType::List(item(data_type))
}

fn with_metadata(fields: Vec<Field>, table: FileKind) -> SchemaRef {
    let metadata: HashMap<String, String> = [
        (SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string()),
        (TABLE_KEY.to_string(), table.name().to_string()),
    ]
    .into_iter()
    .collect();
    Arc::new(Schema::new(fields).with_metadata(metadata))
}

/// Fields of a view's `geometry` struct: camera→reference `R` (row-major 3×3) and `t`, `K` of the
/// stored image (row-major 3×3), the depth histogram (fractions per fixed metric bin) and the
/// fraction of valid depth pixels.
pub fn geometry_fields() -> Fields {
    Fields::from(vec![
        Field::new("R", fixed_list(DataType::Float32, 9), false),
        Field::new("t", fixed_list(DataType::Float32, 3), false),
        Field::new("K", fixed_list(DataType::Float32, 9), false),
        Field::new("depth_hist", list(DataType::Float32), false),
        Field::new("valid_depth_fraction", DataType::Float32, false),
    ])
}

/// Fields of one element of `views`.
pub fn view_fields() -> Fields {
    Fields::from(vec![
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("image", DataType::LargeBinary, false),
        Field::new("encoding", DataType::Utf8, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("geometry", DataType::Struct(geometry_fields()), true),
    ])
}

/// Schema of the `scenes` table. `reference_world_pose` is the raw world camera-to-world pose of
/// the first view (row-major 4×4), null when no view has geometry; `axis_alignment` is the dataset's
/// raw-world → aligned-world transform (row-major 4×4), identity with
/// `axis_alignment_from_metadata = false` where the metadata has none.
pub fn scenes_schema() -> SchemaRef {
    with_metadata(
        vec![
            Field::new("dataset", DataType::Utf8, false),
            Field::new("scene_id", DataType::Utf8, false),
            Field::new(
                "views",
                DataType::List(item(DataType::Struct(view_fields()))),
                false,
            ),
            Field::new(
                "reference_world_pose",
                fixed_list(DataType::Float64, 16),
                true,
            ),
            Field::new("axis_alignment", fixed_list(DataType::Float64, 16), false),
            Field::new("axis_alignment_from_metadata", DataType::Boolean, false),
        ],
        FileKind::Scenes,
    )
}

/// Fields of a sample's `agent` struct (SQA3D situation): position and rotation quaternion (x, y, z,
/// w) exactly as the dataset gives them, and the position and facing direction (unit vector) in the
/// sample's reference frame.
pub fn agent_fields() -> Fields {
    Fields::from(vec![
        Field::new("position_raw", fixed_list(DataType::Float64, 3), false),
        Field::new("rotation_raw_xyzw", fixed_list(DataType::Float64, 4), false),
        Field::new("position_ref", fixed_list(DataType::Float64, 3), false),
        Field::new("heading_ref", fixed_list(DataType::Float64, 3), false),
    ])
}

/// Schema of the `samples` table. `object_ids`/`object_names` are ScanQA's; `agent` is SQA3D's;
/// `source_json` is a JSON object with any other source metadata (question id, answer type, ...),
/// stored with sorted keys.
pub fn samples_schema() -> SchemaRef {
    with_metadata(
        vec![
            Field::new("sample_id", DataType::Utf8, false),
            Field::new("task", DataType::Utf8, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("scene_id", DataType::Utf8, false),
            Field::new("question", DataType::Utf8, false),
            Field::new("situation", DataType::Utf8, true),
            Field::new("answers", list(DataType::Utf8), false),
            Field::new("action_json", DataType::Utf8, true),
            Field::new("object_ids", list(DataType::Int64), true),
            Field::new("object_names", list(DataType::Utf8), true),
            Field::new("agent", DataType::Struct(agent_fields()), true),
            Field::new("source_json", DataType::Utf8, false),
        ],
        FileKind::Samples,
    )
}

/// The schema of a table.
pub fn schema_of(kind: FileKind) -> Option<SchemaRef> {
    match kind {
        FileKind::Scenes => Some(scenes_schema()),
        FileKind::Samples => Some(samples_schema()),
        FileKind::Rejects => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

/// A view's geometry; see [`geometry_fields`].
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Camera → reference rotation, row-major.
    pub r: [f32; 9],
    pub t: [f32; 3],
    /// Intrinsics of the stored image, row-major.
    pub k: [f32; 9],
    pub depth_hist: Vec<f32>,
    pub valid_depth_fraction: f32,
}

impl Geometry {
    /// From the camera→reference transform, the stored image's K and the view's depth statistics.
    pub fn new(cam_to_ref: &Rigid, k: &Mat3, depth: DepthStats) -> Geometry {
        Geometry {
            r: mat3_to_row_major_f32(&cam_to_ref.r),
            t: cam_to_ref.t.map(|x| x as f32),
            k: mat3_to_row_major_f32(k),
            depth_hist: depth.histogram,
            valid_depth_fraction: depth.valid_fraction,
        }
    }
}

impl Geometry {
    /// Every number finite and plausible: `R` a rotation (orthonormal, det +1, within f32
    /// storage), `t` within [`MAX_COORDINATE_M`], `K` a pinhole matrix for a `width`×`height`
    /// image ([`validate_intrinsics`]), the depth histogram fractions in [0, 1] summing to 1, or
    /// all 0 exactly when no depth pixel is valid.
    pub fn check(&self, width: u32, height: u32) -> Result<(), String> {
        let r = [
            [self.r[0] as f64, self.r[1] as f64, self.r[2] as f64],
            [self.r[3] as f64, self.r[4] as f64, self.r[5] as f64],
            [self.r[6] as f64, self.r[7] as f64, self.r[8] as f64],
        ];
        let t = self.t.map(|x| x as f64);
        let m = [
            [r[0][0], r[0][1], r[0][2], t[0]],
            [r[1][0], r[1][1], r[1][2], t[1]],
            [r[2][0], r[2][1], r[2][2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ];
        crate::geometry::validate_pose(&m).map_err(|e| format!("R, t: {e}"))?;
        let k = [
            [self.k[0] as f64, self.k[1] as f64, self.k[2] as f64],
            [self.k[3] as f64, self.k[4] as f64, self.k[5] as f64],
            [self.k[6] as f64, self.k[7] as f64, self.k[8] as f64],
        ];
        crate::geometry::validate_intrinsics(&k, width, height).map_err(|e| format!("K: {e}"))?;
        let fraction = self.valid_depth_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!("valid_depth_fraction is {fraction}, expected a fraction in [0, 1]"));
        }
        if let Some(bad) = self.depth_hist.iter().find(|x| !(0.0..=1.0).contains(*x)) {
            return Err(format!("depth_hist holds {bad}, expected fractions in [0, 1]"));
        }
        let sum: f32 = self.depth_hist.iter().sum();
        let expected = if fraction > 0.0 { 1.0 } else { 0.0 };
        if (sum - expected).abs() > 1e-3 {
            return Err(format!(
                "depth_hist sums to {sum}, expected {expected} (valid depth fraction {fraction})"
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ViewRecord {
    pub frame_id: String,
    /// Encoded image bytes ([`ENCODING_JPEG`] or [`ENCODING_PNG`]).
    pub image: Vec<u8>,
    pub encoding: String,
    pub width: u32,
    pub height: u32,
    pub geometry: Option<Geometry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SceneRecord {
    pub dataset: String,
    pub scene_id: String,
    /// In selection order; the first view with geometry anchors the reference frame.
    pub views: Vec<ViewRecord>,
    /// Raw world camera-to-world pose of the reference view, row-major 4×4.
    pub reference_world_pose: Option<[f64; 16]>,
    /// Raw world → axis-aligned world, row-major 4×4.
    pub axis_alignment: [f64; 16],
    pub axis_alignment_from_metadata: bool,
}

impl SceneRecord {
    /// Checks every number of the scene before it is written: each view's size and geometry
    /// ([`Geometry::check`]), the reference pose and the axis alignment rigid with plausible
    /// translations. The error names the view (index and frame id) and the field.
    pub fn check(&self) -> Result<(), String> {
        for (i, view) in self.views.iter().enumerate() {
            let at = |e: String| format!("view {i} (frame {}): {e}", view.frame_id);
            if view.width == 0 || view.height == 0 {
                return Err(at(format!("image size {}x{} is empty", view.width, view.height)));
            }
            if let Some(g) = &view.geometry {
                g.check(view.width, view.height).map_err(at)?;
            }
        }
        let rigid = |name: &str, v: &[f64; 16]| -> Result<(), String> {
            let m = crate::geometry::mat4_from_row_major(v);
            let pose = crate::geometry::validate_pose(&m).map_err(|e| format!("{name}: {e}"))?;
            crate::geometry::check_translation(&pose.t).map_err(|e| format!("{name}: {e}"))
        };
        if let Some(pose) = &self.reference_world_pose {
            rigid("reference_world_pose", pose)?;
        }
        rigid("axis_alignment", &self.axis_alignment)
    }
}

/// An SQA3D-style agent situation; see [`agent_fields`].
#[derive(Clone, Debug, PartialEq)]
pub struct AgentPose {
    pub position_raw: [f64; 3],
    pub rotation_raw_xyzw: [f64; 4],
    pub position_ref: [f64; 3],
    pub heading_ref: [f64; 3],
}

#[derive(Clone, Debug, PartialEq)]
pub struct SampleRecord {
    pub sample_id: String,
    /// `scanqa`, `sqa3d`, `roomplan_action`, ...
    pub task: String,
    pub split: String,
    pub scene_id: String,
    pub question: String,
    pub situation: Option<String>,
    /// Empty for test splits without answers.
    pub answers: Vec<String>,
    pub action_json: Option<String>,
    pub object_ids: Option<Vec<i64>>,
    pub object_names: Option<Vec<String>>,
    pub agent: Option<AgentPose>,
    /// A JSON object; rewritten with sorted keys on write.
    pub source_json: String,
}

impl SampleRecord {
    /// Checks the sample's numbers before it is written: the agent's position and rotation finite
    /// (positions within [`MAX_COORDINATE_M`]), its heading a unit vector, a target action that is
    /// JSON. (prep-arkit validates each action against the RoomPlan schema where it is made.)
    pub fn check(&self) -> Result<(), String> {
        if let Some(agent) = &self.agent {
            let finite = |name: &str, v: &[f64]| match v.iter().find(|x| !x.is_finite() || x.abs() > MAX_COORDINATE_M) {
                Some(x) => Err(format!("agent {name} holds {x}, expected finite numbers within {MAX_COORDINATE_M}")),
                None => Ok(()),
            };
            finite("position_raw", &agent.position_raw)?;
            finite("rotation_raw_xyzw", &agent.rotation_raw_xyzw)?;
            finite("position_ref", &agent.position_ref)?;
            finite("heading_ref", &agent.heading_ref)?;
            let length = crate::geometry::norm(&agent.heading_ref);
            if (length - 1.0).abs() > 1e-6 {
                return Err(format!("agent heading_ref has length {length}, expected a unit vector"));
            }
        }
        if let Some(action) = &self.action_json {
            serde_json::from_str::<serde_json::Value>(action)
                .map_err(|e| format!("action_json is not JSON: {e}"))?;
        }
        Ok(())
    }

    /// A sample with the required fields and every optional one empty.
    pub fn new(
        sample_id: impl Into<String>,
        task: impl Into<String>,
        split: impl Into<String>,
        scene_id: impl Into<String>,
        question: impl Into<String>,
    ) -> SampleRecord {
        SampleRecord {
            sample_id: sample_id.into(),
            task: task.into(),
            split: split.into(),
            scene_id: scene_id.into(),
            question: question.into(),
            situation: None,
            answers: vec![],
            action_json: None,
            object_ids: None,
            object_names: None,
            agent: None,
            source_json: "{}".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

#[derive(Debug, Error)]
pub enum ShardError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("{path}: {cause}")]
    Arrow { path: PathBuf, cause: ArrowError },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("invalid record: {0}")]
    Record(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Dataset(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShardError + '_ {
    move |cause| ShardError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn arrow_err(path: &Path) -> impl FnOnce(ArrowError) -> ShardError + '_ {
    move |cause| ShardError::Arrow {
        path: path.to_path_buf(),
        cause,
    }
}

fn format_err(path: &Path, detail: impl Into<String>) -> ShardError {
    ShardError::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Records ↔ RecordBatch.

fn nulls(valid: impl IntoIterator<Item = bool>) -> Option<NullBuffer> {
    let valid: Vec<bool> = valid.into_iter().collect();
    valid.iter().any(|v| !v).then(|| NullBuffer::from(valid))
}

fn fixed(values: ArrayRef, size: i32, valid: Option<NullBuffer>) -> Result<ArrayRef, ArrowError> {
    let data_type = values.data_type().clone();
    Ok(Arc::new(FixedSizeListArray::try_new(
        item(data_type),
        size,
        values,
        valid,
    )?))
}

fn fixed_f32(
    values: Vec<f32>,
    size: i32,
    valid: Option<NullBuffer>,
) -> Result<ArrayRef, ArrowError> {
    fixed(Arc::new(Float32Array::from(values)), size, valid)
}

fn fixed_f64(
    values: Vec<f64>,
    size: i32,
    valid: Option<NullBuffer>,
) -> Result<ArrayRef, ArrowError> {
    fixed(Arc::new(Float64Array::from(values)), size, valid)
}

fn list_of(
    values: ArrayRef,
    lengths: Vec<usize>,
    valid: Option<NullBuffer>,
) -> Result<ArrayRef, ArrowError> {
    let data_type = values.data_type().clone();
    Ok(Arc::new(ListArray::try_new(
        item(data_type),
        OffsetBuffer::from_lengths(lengths),
        values,
        valid,
    )?))
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn opt_strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

/// A record type of one table: its schema and conversions to and from record batches.
pub trait TableRecord: Sized {
    const KIND: FileKind;
    fn schema() -> SchemaRef;
    fn to_batch(records: &[Self]) -> Result<RecordBatch, ArrowError>;
    /// Decode every row of `batch` (from `path`, for error messages).
    fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<Self>, ShardError>;
    /// Approximate encoded size, to cut batches and files.
    fn approx_bytes(&self) -> usize;
}

impl TableRecord for SceneRecord {
    const KIND: FileKind = FileKind::Scenes;

    fn schema() -> SchemaRef {
        scenes_schema()
    }

    fn to_batch(scenes: &[SceneRecord]) -> Result<RecordBatch, ArrowError> {
        let views: Vec<&ViewRecord> = scenes.iter().flat_map(|s| &s.views).collect();
        let geometry: Vec<Option<&Geometry>> = views.iter().map(|v| v.geometry.as_ref()).collect();
        let geometry_valid = || nulls(geometry.iter().map(|g| g.is_some()));
        let flat = |f: &dyn Fn(&Geometry) -> Vec<f32>, n: usize| -> Vec<f32> {
            geometry
                .iter()
                .flat_map(|g| g.map(f).unwrap_or_else(|| vec![0.0; n]))
                .collect()
        };
        let hist_lengths: Vec<usize> = geometry
            .iter()
            .map(|g| g.map_or(0, |g| g.depth_hist.len()))
            .collect();
        let hist_values: Vec<f32> = geometry
            .iter()
            .flat_map(|g| g.map(|g| g.depth_hist.clone()).unwrap_or_default())
            .collect();
        let geometry_array = StructArray::try_new(
            geometry_fields(),
            vec![
                fixed_f32(flat(&|g| g.r.to_vec(), 9), 9, None)?,
                fixed_f32(flat(&|g| g.t.to_vec(), 3), 3, None)?,
                fixed_f32(flat(&|g| g.k.to_vec(), 9), 9, None)?,
                list_of(
                    Arc::new(Float32Array::from(hist_values)),
                    hist_lengths,
                    None,
                )?,
                Arc::new(Float32Array::from_iter_values(
                    geometry
                        .iter()
                        .map(|g| g.map_or(0.0, |g| g.valid_depth_fraction)),
                )),
            ],
            geometry_valid(),
        )?;
        let view_array = StructArray::try_new(
            view_fields(),
            vec![
                strings(views.iter().map(|v| v.frame_id.as_str())),
                Arc::new(LargeBinaryArray::from_iter_values(
                    views.iter().map(|v| v.image.as_slice()),
                )),
                strings(views.iter().map(|v| v.encoding.as_str())),
                Arc::new(UInt32Array::from_iter_values(views.iter().map(|v| v.width))),
                Arc::new(UInt32Array::from_iter_values(
                    views.iter().map(|v| v.height),
                )),
                Arc::new(geometry_array),
            ],
            None,
        )?;
        let pose_valid = nulls(scenes.iter().map(|s| s.reference_world_pose.is_some()));
        RecordBatch::try_new(
            scenes_schema(),
            vec![
                strings(scenes.iter().map(|s| s.dataset.as_str())),
                strings(scenes.iter().map(|s| s.scene_id.as_str())),
                list_of(
                    Arc::new(view_array),
                    scenes.iter().map(|s| s.views.len()).collect(),
                    None,
                )?,
                fixed_f64(
                    scenes
                        .iter()
                        .flat_map(|s| s.reference_world_pose.unwrap_or([0.0; 16]))
                        .collect(),
                    16,
                    pose_valid,
                )?,
                fixed_f64(
                    scenes.iter().flat_map(|s| s.axis_alignment).collect(),
                    16,
                    None,
                )?,
                Arc::new(BooleanArray::from_iter(
                    scenes.iter().map(|s| Some(s.axis_alignment_from_metadata)),
                )),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<SceneRecord>, ShardError> {
        let cols = Columns { batch, path };
        let dataset = cols.get::<StringArray>("dataset")?;
        let scene_id = cols.get::<StringArray>("scene_id")?;
        let views = cols.get::<ListArray>("views")?;
        let reference = cols.get::<FixedSizeListArray>("reference_world_pose")?;
        let alignment = cols.get::<FixedSizeListArray>("axis_alignment")?;
        let from_metadata = cols.get::<BooleanArray>("axis_alignment_from_metadata")?;
        let view_struct = downcast::<StructArray>(views.values().as_ref(), "views", path)?;
        let v = StructColumns {
            array: view_struct,
            name: "views",
            path,
        };
        let frame_id = v.get::<StringArray>("frame_id")?;
        let image = v.get::<LargeBinaryArray>("image")?;
        let encoding = v.get::<StringArray>("encoding")?;
        let width = v.get::<UInt32Array>("width")?;
        let height = v.get::<UInt32Array>("height")?;
        let geometry = v.get::<StructArray>("geometry")?;
        let g = StructColumns {
            array: geometry,
            name: "views.geometry",
            path,
        };
        let (r, t, k) = (
            g.get::<FixedSizeListArray>("R")?,
            g.get::<FixedSizeListArray>("t")?,
            g.get::<FixedSizeListArray>("K")?,
        );
        let hist = g.get::<ListArray>("depth_hist")?;
        let valid_fraction = g.get::<Float32Array>("valid_depth_fraction")?;
        let offsets = views.value_offsets();
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let mut view_records = Vec::new();
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                let geometry = if geometry.is_valid(i) {
                    Some(Geometry {
                        r: fixed_values(r, i, path)?,
                        t: fixed_values(t, i, path)?,
                        k: fixed_values(k, i, path)?,
                        depth_hist: list_values::<Float32Array, f32>(hist, i, path)?,
                        valid_depth_fraction: valid_fraction.value(i),
                    })
                } else {
                    None
                };
                view_records.push(ViewRecord {
                    frame_id: frame_id.value(i).to_string(),
                    image: image.value(i).to_vec(),
                    encoding: encoding.value(i).to_string(),
                    width: width.value(i),
                    height: height.value(i),
                    geometry,
                });
            }
            out.push(SceneRecord {
                dataset: dataset.value(row).to_string(),
                scene_id: scene_id.value(row).to_string(),
                views: view_records,
                reference_world_pose: if reference.is_valid(row) {
                    Some(fixed_values(reference, row, path)?)
                } else {
                    None
                },
                axis_alignment: fixed_values(alignment, row, path)?,
                axis_alignment_from_metadata: from_metadata.value(row),
            });
        }
        Ok(out)
    }

    fn approx_bytes(&self) -> usize {
        256 + self
            .views
            .iter()
            .map(|v| {
                v.image.len()
                    + v.frame_id.len()
                    + 128
                    + 4 * v.geometry.as_ref().map_or(0, |g| g.depth_hist.len())
            })
            .sum::<usize>()
    }
}

impl TableRecord for SampleRecord {
    const KIND: FileKind = FileKind::Samples;

    fn schema() -> SchemaRef {
        samples_schema()
    }

    fn to_batch(samples: &[SampleRecord]) -> Result<RecordBatch, ArrowError> {
        let answers: Vec<&str> = samples
            .iter()
            .flat_map(|s| s.answers.iter().map(String::as_str))
            .collect();
        let ids: Vec<i64> = samples
            .iter()
            .flat_map(|s| s.object_ids.iter().flatten().copied())
            .collect();
        let names: Vec<&str> = samples
            .iter()
            .flat_map(|s| s.object_names.iter().flatten().map(String::as_str))
            .collect();
        let agents: Vec<Option<&AgentPose>> = samples.iter().map(|s| s.agent.as_ref()).collect();
        let agent_values = |f: &dyn Fn(&AgentPose) -> Vec<f64>, n: usize| -> Vec<f64> {
            agents
                .iter()
                .flat_map(|a| a.map(f).unwrap_or_else(|| vec![0.0; n]))
                .collect()
        };
        let agent = StructArray::try_new(
            agent_fields(),
            vec![
                fixed_f64(agent_values(&|a| a.position_raw.to_vec(), 3), 3, None)?,
                fixed_f64(agent_values(&|a| a.rotation_raw_xyzw.to_vec(), 4), 4, None)?,
                fixed_f64(agent_values(&|a| a.position_ref.to_vec(), 3), 3, None)?,
                fixed_f64(agent_values(&|a| a.heading_ref.to_vec(), 3), 3, None)?,
            ],
            nulls(agents.iter().map(|a| a.is_some())),
        )?;
        RecordBatch::try_new(
            samples_schema(),
            vec![
                strings(samples.iter().map(|s| s.sample_id.as_str())),
                strings(samples.iter().map(|s| s.task.as_str())),
                strings(samples.iter().map(|s| s.split.as_str())),
                strings(samples.iter().map(|s| s.scene_id.as_str())),
                strings(samples.iter().map(|s| s.question.as_str())),
                opt_strings(samples.iter().map(|s| s.situation.as_deref())),
                list_of(
                    strings(answers),
                    samples.iter().map(|s| s.answers.len()).collect(),
                    None,
                )?,
                opt_strings(samples.iter().map(|s| s.action_json.as_deref())),
                list_of(
                    Arc::new(Int64Array::from(ids)),
                    samples
                        .iter()
                        .map(|s| s.object_ids.as_ref().map_or(0, Vec::len))
                        .collect(),
                    nulls(samples.iter().map(|s| s.object_ids.is_some())),
                )?,
                list_of(
                    strings(names),
                    samples
                        .iter()
                        .map(|s| s.object_names.as_ref().map_or(0, Vec::len))
                        .collect(),
                    nulls(samples.iter().map(|s| s.object_names.is_some())),
                )?,
                Arc::new(agent),
                strings(samples.iter().map(|s| s.source_json.as_str())),
            ],
        )
    }

    fn from_batch(batch: &RecordBatch, path: &Path) -> Result<Vec<SampleRecord>, ShardError> {
        let cols = Columns { batch, path };
        let text = |name: &str| cols.get::<StringArray>(name);
        let (sample_id, task, split, scene_id, question) = (
            text("sample_id")?,
            text("task")?,
            text("split")?,
            text("scene_id")?,
            text("question")?,
        );
        let (situation, action_json, source_json) = (
            text("situation")?,
            text("action_json")?,
            text("source_json")?,
        );
        let answers = cols.get::<ListArray>("answers")?;
        let object_ids = cols.get::<ListArray>("object_ids")?;
        let object_names = cols.get::<ListArray>("object_names")?;
        let agent = cols.get::<StructArray>("agent")?;
        let a = StructColumns {
            array: agent,
            name: "agent",
            path,
        };
        let (position_raw, rotation_raw, position_ref, heading_ref) = (
            a.get::<FixedSizeListArray>("position_raw")?,
            a.get::<FixedSizeListArray>("rotation_raw_xyzw")?,
            a.get::<FixedSizeListArray>("position_ref")?,
            a.get::<FixedSizeListArray>("heading_ref")?,
        );
        let opt_text = |array: &StringArray, row: usize| {
            array.is_valid(row).then(|| array.value(row).to_string())
        };
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            out.push(SampleRecord {
                sample_id: sample_id.value(row).to_string(),
                task: task.value(row).to_string(),
                split: split.value(row).to_string(),
                scene_id: scene_id.value(row).to_string(),
                question: question.value(row).to_string(),
                situation: opt_text(situation, row),
                answers: string_list(answers, row, path)?,
                action_json: opt_text(action_json, row),
                object_ids: if object_ids.is_valid(row) {
                    Some(list_values::<Int64Array, i64>(object_ids, row, path)?)
                } else {
                    None
                },
                object_names: if object_names.is_valid(row) {
                    Some(string_list(object_names, row, path)?)
                } else {
                    None
                },
                agent: if agent.is_valid(row) {
                    Some(AgentPose {
                        position_raw: fixed_values(position_raw, row, path)?,
                        rotation_raw_xyzw: fixed_values(rotation_raw, row, path)?,
                        position_ref: fixed_values(position_ref, row, path)?,
                        heading_ref: fixed_values(heading_ref, row, path)?,
                    })
                } else {
                    None
                },
                source_json: source_json.value(row).to_string(),
            });
        }
        Ok(out)
    }

    fn approx_bytes(&self) -> usize {
        128 + self.sample_id.len()
            + self.question.len()
            + self.situation.as_ref().map_or(0, String::len)
            + self.answers.iter().map(|a| a.len() + 4).sum::<usize>()
            + self.action_json.as_ref().map_or(0, String::len)
            + self.object_ids.as_ref().map_or(0, |v| 8 * v.len())
            + self
                .object_names
                .as_ref()
                .map_or(0, |v| v.iter().map(|n| n.len() + 4).sum())
            + self.source_json.len()
    }
}

fn downcast<'a, T: 'static>(
    array: &'a dyn Array,
    name: &str,
    path: &Path,
) -> Result<&'a T, ShardError> {
    array.as_any().downcast_ref::<T>().ok_or_else(|| {
        format_err(
            path,
            format!(
                "column `{name}` has type {}, not the schema's",
                array.data_type()
            ),
        )
    })
}

struct Columns<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

impl<'a> Columns<'a> {
    fn get<T: 'static>(&self, name: &str) -> Result<&'a T, ShardError> {
        let column = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| format_err(self.path, format!("no column `{name}`")))?;
        downcast(column.as_ref(), name, self.path)
    }
}

struct StructColumns<'a> {
    array: &'a StructArray,
    name: &'a str,
    path: &'a Path,
}

impl<'a> StructColumns<'a> {
    fn get<T: 'static>(&self, field: &str) -> Result<&'a T, ShardError> {
        let name = format!("{}.{field}", self.name);
        let column = self
            .array
            .column_by_name(field)
            .ok_or_else(|| format_err(self.path, format!("no column `{name}`")))?;
        downcast(column.as_ref(), &name, self.path)
    }
}

fn fixed_values<T: NativeOf, const N: usize>(
    array: &FixedSizeListArray,
    row: usize,
    path: &Path,
) -> Result<[T; N], ShardError> {
    let values = array.value(row);
    let prim = downcast::<<T as NativeOf>::Array>(values.as_ref(), "fixed-size list", path)?;
    let slice = T::slice(prim);
    slice.try_into().map_err(|_| {
        format_err(
            path,
            format!("fixed-size list of {} values, expected {N}", slice.len()),
        )
    })
}

fn list_values<A: 'static, T: NativeOf<Array = A>>(
    array: &ListArray,
    row: usize,
    path: &Path,
) -> Result<Vec<T>, ShardError> {
    let values = array.value(row);
    Ok(T::slice(downcast::<A>(values.as_ref(), "list", path)?).to_vec())
}

fn string_list(array: &ListArray, row: usize, path: &Path) -> Result<Vec<String>, ShardError> {
    let values = array.value(row);
    let strings = downcast::<StringArray>(values.as_ref(), "list", path)?;
    Ok(strings
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

/// Native value types of the primitive arrays the schema uses.
trait NativeOf: Copy + 'static {
    type Array: 'static;
    fn slice(array: &Self::Array) -> &[Self];
}

impl NativeOf for f32 {
    type Array = Float32Array;
    fn slice(array: &Float32Array) -> &[f32] {
        array.values()
    }
}

impl NativeOf for f64 {
    type Array = Float64Array;
    fn slice(array: &Float64Array) -> &[f64] {
        array.values()
    }
}

impl NativeOf for i64 {
    type Array = Int64Array;
    fn slice(array: &Int64Array) -> &[i64] {
        array.values()
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic files.

/// Guards a file written under a temporary name (`<name>.tmp` in the same folder): [`commit`]
/// fsyncs it, renames it into place and fsyncs the folder; dropping it uncommitted removes it, so a
/// failed or interrupted run never leaves a half file under the final name.
///
/// [`commit`]: AtomicFile::commit
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    pub fn create(path: &Path) -> io::Result<(AtomicFile, File)> {
        let mut name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?
            .to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp)?;
        Ok((
            AtomicFile {
                tmp,
                path: path.to_path_buf(),
                committed: false,
            },
            file,
        ))
    }

    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self, file: File) -> io::Result<()> {
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        sync_parent(&self.path)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Write `bytes` to `path` atomically (temporary name, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (guard, mut file) = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    guard.commit(file)
}

/// Counts and hashes what passes through, so a shard's digest needs no second read.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Writer.

/// How the writer cuts batches and files.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterOptions {
    /// A file is closed once it holds at least this many bytes (files end at a batch boundary, so a
    /// file exceeds this by less than one batch).
    pub target_file_bytes: u64,
    /// A record batch is written once it holds this many rows ...
    pub batch_rows: usize,
    /// ... or about this many bytes.
    pub batch_bytes: usize,
    /// The slice written by a `--shard-index/--num-shards` job; `None` for a whole dataset.
    pub part: Option<Part>,
    /// Remove an existing dataset (manifest, shards, rejects) in the folder instead of refusing.
    pub replace_existing: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            target_file_bytes: 512 << 20,
            batch_rows: 1024,
            batch_bytes: 16 << 20,
            part: None,
            replace_existing: false,
        }
    }
}

/// The file name of shard `seq` of a table.
pub fn shard_file_name(kind: FileKind, part: Option<Part>, seq: usize) -> String {
    match part {
        Some(p) if p.count > 1 => format!("{}-part{:05}-{seq:05}.arrow", kind.name(), p.index),
        _ => format!("{}-{seq:05}.arrow", kind.name()),
    }
}

struct OpenShard {
    guard: AtomicFile,
    writer: FileWriter<HashingWriter<BufWriter<File>>>,
    name: String,
    rows: u64,
}

struct TableWriter<R: TableRecord> {
    dir: PathBuf,
    part: Option<Part>,
    target_file_bytes: u64,
    batch_rows: usize,
    batch_bytes: usize,
    pending: Vec<R>,
    pending_bytes: usize,
    current: Option<OpenShard>,
    files: Vec<FileEntry>,
    rows: u64,
}

impl<R: TableRecord> TableWriter<R> {
    fn new(dir: &Path, options: &WriterOptions) -> Self {
        TableWriter {
            dir: dir.to_path_buf(),
            part: options.part,
            target_file_bytes: options.target_file_bytes,
            batch_rows: options.batch_rows.max(1),
            batch_bytes: options.batch_bytes.max(1),
            pending: Vec::new(),
            pending_bytes: 0,
            current: None,
            files: Vec::new(),
            rows: 0,
        }
    }

    fn push(&mut self, record: R) -> Result<(), ShardError> {
        self.pending_bytes += record.approx_bytes();
        self.pending.push(record);
        self.rows += 1;
        if self.pending.len() >= self.batch_rows || self.pending_bytes >= self.batch_bytes {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<OpenShard, ShardError> {
        let name = shard_file_name(R::KIND, self.part, self.files.len());
        let path = self.dir.join(&name);
        let (guard, file) = AtomicFile::create(&path).map_err(io_err(&path))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer =
            FileWriter::try_new(sink, &R::schema()).map_err(arrow_err(guard.temp_path()))?;
        Ok(OpenShard {
            guard,
            writer,
            name,
            rows: 0,
        })
    }

    fn flush_batch(&mut self) -> Result<(), ShardError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut shard = match self.current.take() {
            Some(shard) => shard,
            None => self.open_shard()?,
        };
        let batch = R::to_batch(&self.pending).map_err(arrow_err(shard.guard.temp_path()))?;
        shard
            .writer
            .write(&batch)
            .map_err(arrow_err(shard.guard.temp_path()))?;
        shard.rows += batch.num_rows() as u64;
        self.pending.clear();
        self.pending_bytes = 0;
        if shard.writer.get_ref().bytes >= self.target_file_bytes {
            self.close_shard(shard)?;
        } else {
            self.current = Some(shard);
        }
        Ok(())
    }

    fn close_shard(&mut self, mut shard: OpenShard) -> Result<(), ShardError> {
        let tmp = shard.guard.temp_path().to_path_buf();
        shard.writer.finish().map_err(arrow_err(&tmp))?;
        let mut sink = shard.writer.into_inner().map_err(arrow_err(&tmp))?;
        sink.flush().map_err(io_err(&tmp))?;
        let file = sink.inner.into_inner().map_err(|e| ShardError::Io {
            path: tmp.clone(),
            cause: e.into_error(),
        })?;
        shard.guard.commit(file).map_err(io_err(&tmp))?;
        self.files.push(FileEntry {
            path: shard.name,
            kind: R::KIND,
            sha256: hex::encode(sink.hasher.finalize()),
            bytes: sink.bytes,
            rows: shard.rows,
        });
        Ok(())
    }

    /// Flush, close, and return the table's files (one empty file if no row was written, so that
    /// every dataset carries both schemas).
    fn finish(mut self) -> Result<Vec<FileEntry>, ShardError> {
        self.flush_batch()?;
        if let Some(shard) = self.current.take() {
            self.close_shard(shard)?;
        }
        if self.files.is_empty() {
            let shard = self.open_shard()?;
            self.close_shard(shard)?;
        }
        Ok(self.files)
    }
}

/// Writes one dataset folder: scenes, samples, rejects and, on [`finish`](DatasetWriter::finish),
/// the manifest. Feed records in a deterministic order (e.g. sorted by scene) for byte-identical output.
pub struct DatasetWriter {
    /// Where files are written until finish: the staging folder.
    dir: PathBuf,
    staged: Staged,
    part: Option<Part>,
    scenes: TableWriter<SceneRecord>,
    samples: TableWriter<SampleRecord>,
    rejects: RejectLog,
    scene_ids: HashSet<String>,
    sample_ids: HashSet<String>,
    sample_scenes: BTreeSet<String>,
    views: u64,
    depth_bins: Option<usize>,
}

impl DatasetWriter {
    /// Start writing the dataset folder `dir`. The files are written beside it and take their final
    /// place only in [`finish`](Self::finish) ([`crate::staging`]): a folder that already holds a
    /// dataset is refused unless `options.replace_existing`, and even then keeps the old dataset
    /// until the new one is complete.
    pub fn create(dir: &Path, options: WriterOptions) -> Result<DatasetWriter, ShardError> {
        if let Some(part) = options.part {
            if part.count == 0 || part.index >= part.count {
                return Err(ShardError::Dataset(format!(
                    "shard index {} is out of range for {} shards",
                    part.index, part.count
                )));
            }
        }
        let staged = Staged::begin(dir, options.replace_existing)?;
        let work = staged.path().to_path_buf();
        Ok(DatasetWriter {
            dir: work.clone(),
            staged,
            part: options.part.filter(|p| p.count > 1),
            scenes: TableWriter::new(&work, &options),
            samples: TableWriter::new(&work, &options),
            rejects: RejectLog::new(),
            scene_ids: HashSet::new(),
            sample_ids: HashSet::new(),
            sample_scenes: BTreeSet::new(),
            views: 0,
            depth_bins: None,
        })
    }

    /// The dataset folder (where the dataset appears on [`finish`](Self::finish)).
    pub fn dir(&self) -> &Path {
        self.staged.final_dir()
    }

    /// Append a scene. Scene ids are unique; every geometry's `depth_hist` has one length.
    pub fn write_scene(&mut self, scene: SceneRecord) -> Result<(), ShardError> {
        if scene.scene_id.is_empty() {
            return Err(ShardError::Record(format!(
                "a scene of dataset {} has an empty scene_id",
                scene.dataset
            )));
        }
        if self.scene_ids.contains(&scene.scene_id) {
            return Err(ShardError::Record(format!(
                "scene {} is written twice",
                scene.scene_id
            )));
        }
        // A rejected scene must leave no trace: check everything before recording anything.
        scene
            .check()
            .map_err(|e| ShardError::Record(format!("scene {}: {e}", scene.scene_id)))?;
        let mut bins = self.depth_bins;
        for (i, view) in scene.views.iter().enumerate() {
            if let Some(g) = &view.geometry {
                let expected = *bins.get_or_insert(g.depth_hist.len());
                if g.depth_hist.len() != expected {
                    return Err(ShardError::Record(format!(
                        "scene {} view {i} (frame {}): depth_hist has {} bins, earlier views have {expected}",
                        scene.scene_id,
                        view.frame_id,
                        g.depth_hist.len()
                    )));
                }
            }
        }
        self.depth_bins = bins;
        self.scene_ids.insert(scene.scene_id.clone());
        self.views += scene.views.len() as u64;
        self.scenes.push(scene)
    }

    /// Append a sample. Sample ids are unique; `source_json` must be a JSON object (stored with
    /// sorted keys); its scene must be written to this dataset before [`finish`](Self::finish).
    pub fn write_sample(&mut self, mut sample: SampleRecord) -> Result<(), ShardError> {
        let source: serde_json::Value = serde_json::from_str(&sample.source_json).map_err(|e| {
            ShardError::Record(format!(
                "sample {}: source_json is not JSON: {e}",
                sample.sample_id
            ))
        })?;
        if !source.is_object() {
            return Err(ShardError::Record(format!(
                "sample {}: source_json is not a JSON object",
                sample.sample_id
            )));
        }
        sample
            .check()
            .map_err(|e| ShardError::Record(format!("sample {}: {e}", sample.sample_id)))?;
        sample.source_json = crate::manifest::canonical_json(source).to_string();
        if !self.sample_ids.insert(sample.sample_id.clone()) {
            return Err(ShardError::Record(format!(
                "sample {} is written twice",
                sample.sample_id
            )));
        }
        self.sample_scenes.insert(sample.scene_id.clone());
        self.samples.push(sample)
    }

    pub fn reject(&mut self, reject: Reject) {
        self.rejects.push(reject);
    }

    pub fn rejects(&mut self) -> &mut RejectLog {
        &mut self.rejects
    }

    /// Close every file, write `rejects.jsonl` and `manifest.json`; returns the manifest and the
    /// dataset digest.
    pub fn finish(
        self,
        tool: ToolInfo,
        raw_inputs: Vec<RawInput>,
    ) -> Result<(Manifest, String), ShardError> {
        self.finish_until(tool, raw_inputs, None)
    }

    /// [`finish`](Self::finish) as if the process died just before `step` of putting the dataset
    /// in place (see [`Staged::commit_interrupted`]). Not for use outside tests.
    #[doc(hidden)]
    pub fn finish_interrupted(
        self,
        tool: ToolInfo,
        raw_inputs: Vec<RawInput>,
        step: CommitStep,
    ) -> Result<(Manifest, String), ShardError> {
        self.finish_until(tool, raw_inputs, Some(step))
    }

    fn finish_until(
        self,
        tool: ToolInfo,
        raw_inputs: Vec<RawInput>,
        stop: Option<CommitStep>,
    ) -> Result<(Manifest, String), ShardError> {
        if let Some(missing) = self
            .sample_scenes
            .iter()
            .find(|s| !self.scene_ids.contains(*s))
        {
            return Err(ShardError::Dataset(format!(
                "samples refer to scene {missing}, which was not written (reject its samples along with the scene)"
            )));
        }
        let mut files = self.scenes.finish()?;
        files.extend(self.samples.finish()?);
        let rejects = self
            .rejects
            .write(&self.dir)
            .map_err(io_err(&self.dir.join(REJECTS_FILE)))?;
        files.push(rejects);
        let mut raw_inputs = raw_inputs;
        raw_inputs.sort();
        raw_inputs.dedup();
        let manifest = Manifest {
            schema_version: SCHEMA_VERSION,
            tool,
            part: self.part,
            merged_from: vec![],
            counts: Counts {
                scenes: self.scene_ids.len() as u64,
                samples: self.sample_ids.len() as u64,
                views: self.views,
                rejects: self.rejects.len() as u64,
            },
            files,
            raw_inputs,
        };
        let digest = manifest
            .write(&self.dir)
            .map_err(io_err(&self.dir.join(MANIFEST_FILE)))?;
        match stop {
            None => self.staged.commit()?,
            Some(step) => self.staged.commit_interrupted(step)?,
        }
        Ok((manifest, digest))
    }
}

// ---------------------------------------------------------------------------------------------
// Reader.

/// One Arrow IPC file, memory-mapped; batches decode without copying.
pub struct ShardFile {
    path: PathBuf,
    buffer: Buffer,
    decoder: FileDecoder,
    blocks: Vec<Block>,
    /// Row offset of each batch, plus the total at the end.
    batch_starts: Vec<usize>,
    schema: SchemaRef,
}

impl ShardFile {
    /// Map and index a file, checking its schema against `expected` (fields and schema version).
    pub fn open(path: &Path, expected: &Schema) -> Result<ShardFile, ShardError> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: shard files are immutable once renamed into place; nothing writes them while mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let buffer = Buffer::from(bytes::Bytes::from_owner(mmap));
        Self::from_buffer(path, buffer, expected)
    }

    fn from_buffer(
        path: &Path,
        buffer: Buffer,
        expected: &Schema,
    ) -> Result<ShardFile, ShardError> {
        if buffer.len() < 16 || &buffer[..6] != b"ARROW1" {
            return Err(format_err(path, "not an Arrow IPC file (no ARROW1 magic)"));
        }
        let trailer = buffer.len() - 10;
        let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
            .map_err(arrow_err(path))?;
        if footer_len > trailer {
            return Err(format_err(path, "footer length exceeds the file"));
        }
        let footer = root_as_footer(&buffer[trailer - footer_len..trailer])
            .map_err(|e| format_err(path, format!("unreadable footer: {e}")))?;
        let schema = Arc::new(
            try_fb_to_schema(
                footer
                    .schema()
                    .ok_or_else(|| format_err(path, "footer has no schema"))?,
            )
            .map_err(arrow_err(path))?,
        );
        check_schema(path, &schema, expected)?;
        let decoder = FileDecoder::new(schema.clone(), footer.version());
        if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
            return Err(format_err(
                path,
                "has dictionaries, which the schema never uses",
            ));
        }
        let blocks: Vec<Block> = footer
            .recordBatches()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        let mut shard = ShardFile {
            path: path.to_path_buf(),
            buffer,
            decoder,
            blocks,
            batch_starts: vec![0],
            schema,
        };
        for i in 0..shard.blocks.len() {
            let rows = shard.batch(i)?.num_rows();
            shard.batch_starts.push(shard.batch_starts[i] + rows);
        }
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn num_rows(&self) -> usize {
        *self.batch_starts.last().expect("never empty")
    }

    pub fn num_batches(&self) -> usize {
        self.blocks.len()
    }

    /// Decode batch `i` (zero copy: arrays point into the mapped file).
    pub fn batch(&self, i: usize) -> Result<RecordBatch, ShardError> {
        let block = self
            .blocks
            .get(i)
            .ok_or_else(|| format_err(&self.path, format!("no batch {i}")))?;
        let (offset, len) = (
            block.offset(),
            block.metaDataLength() as i64 + block.bodyLength(),
        );
        if offset < 0 || len < 0 || (offset + len) as usize > self.buffer.len() {
            return Err(format_err(
                &self.path,
                format!("batch {i} lies outside the file"),
            ));
        }
        let data = self.buffer.slice_with_length(offset as usize, len as usize);
        self.decoder
            .read_record_batch(block, &data)
            .map_err(arrow_err(&self.path))?
            .ok_or_else(|| format_err(&self.path, format!("batch {i} is empty")))
    }

    /// Row `row` as a one-row batch (zero copy).
    pub fn row(&self, row: usize) -> Result<RecordBatch, ShardError> {
        if row >= self.num_rows() {
            return Err(format_err(
                &self.path,
                format!("row {row} out of range ({} rows)", self.num_rows()),
            ));
        }
        let batch_index = self.batch_starts.partition_point(|&start| start <= row) - 1;
        Ok(self
            .batch(batch_index)?
            .slice(row - self.batch_starts[batch_index], 1))
    }
}

fn check_schema(path: &Path, found: &Schema, expected: &Schema) -> Result<(), ShardError> {
    let version = found
        .metadata()
        .get(SCHEMA_VERSION_KEY)
        .cloned()
        .unwrap_or_else(|| "none".into());
    let expected_version = expected
        .metadata()
        .get(SCHEMA_VERSION_KEY)
        .cloned()
        .unwrap_or_default();
    if version != expected_version {
        return Err(format_err(
            path,
            format!("schema version {version}, this build reads version {expected_version}"),
        ));
    }
    if found.fields() != expected.fields()
        || found.metadata().get(TABLE_KEY) != expected.metadata().get(TABLE_KEY)
    {
        return Err(format_err(
            path,
            format!("schema differs from the contract:\n found    {found}\n expected {expected}"),
        ));
    }
    Ok(())
}

/// The files of one table in manifest order, addressed by a global row number.
pub struct TableReader<R: TableRecord> {
    files: Vec<ShardFile>,
    starts: Vec<usize>,
    _record: std::marker::PhantomData<R>,
}

impl<R: TableRecord> TableReader<R> {
    fn open(dir: &Path, entries: impl Iterator<Item = FileEntry>) -> Result<Self, ShardError> {
        let schema = R::schema();
        let mut files = Vec::new();
        let mut starts = vec![0];
        for entry in entries {
            let path = dataset_file(dir, &entry.path).map_err(|e| format_err(&dir.join(&entry.path), e))?;
            let shard = ShardFile::open(&path, &schema)?;
            if shard.num_rows() as u64 != entry.rows {
                return Err(format_err(
                    shard.path(),
                    format!(
                        "{} rows, the manifest says {}",
                        shard.num_rows(),
                        entry.rows
                    ),
                ));
            }
            starts.push(starts.last().copied().unwrap_or(0) + shard.num_rows());
            files.push(shard);
        }
        Ok(TableReader {
            files,
            starts,
            _record: std::marker::PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        *self.starts.last().expect("never empty")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn files(&self) -> &[ShardFile] {
        &self.files
    }

    /// Row `row` of the table as a one-row batch (zero copy).
    pub fn row_batch(&self, row: usize) -> Result<RecordBatch, ShardError> {
        if row >= self.len() {
            return Err(ShardError::Dataset(format!(
                "{} row {row} out of range ({} rows)",
                R::KIND.name(),
                self.len()
            )));
        }
        let file = self.starts.partition_point(|&s| s <= row) - 1;
        self.files[file].row(row - self.starts[file])
    }

    /// Row `row` decoded into a record (copies the bytes).
    pub fn get(&self, row: usize) -> Result<R, ShardError> {
        let batch = self.row_batch(row)?;
        let file = self.starts.partition_point(|&s| s <= row) - 1;
        R::from_batch(&batch, self.files[file].path())?
            .pop()
            .ok_or_else(|| ShardError::Dataset("empty row".into()))
    }

    /// Every batch of every file, in order.
    pub fn batches(&self) -> impl Iterator<Item = Result<(RecordBatch, &Path), ShardError>> + '_ {
        self.files
            .iter()
            .flat_map(|f| (0..f.num_batches()).map(move |i| f.batch(i).map(|b| (b, f.path()))))
    }
}

/// A prepared dataset opened for reading: the manifest and both tables, memory-mapped.
/// Opening checks schemas and row counts against the manifest, not digests (see [`verify_dataset`]).
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    scenes: TableReader<SceneRecord>,
    samples: TableReader<SampleRecord>,
    scene_rows: HashMap<String, usize>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Dataset, ShardError> {
        let manifest = Manifest::read(dir)?;
        let scenes = TableReader::open(dir, manifest.files_of(FileKind::Scenes).cloned())?;
        let samples = TableReader::open(dir, manifest.files_of(FileKind::Samples).cloned())?;
        let mut scene_rows = HashMap::new();
        let mut row = 0;
        for batch in scenes.batches() {
            let (batch, path) = batch?;
            let ids = Columns {
                batch: &batch,
                path,
            }
            .get::<StringArray>("scene_id")?;
            for id in ids.iter() {
                let id = id.unwrap_or_default().to_string();
                if scene_rows.insert(id.clone(), row).is_some() {
                    return Err(format_err(
                        path,
                        format!("scene {id} appears twice in the dataset"),
                    ));
                }
                row += 1;
            }
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            manifest,
            scenes,
            samples,
            scene_rows,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn scenes(&self) -> &TableReader<SceneRecord> {
        &self.scenes
    }

    pub fn samples(&self) -> &TableReader<SampleRecord> {
        &self.samples
    }

    pub fn num_scenes(&self) -> usize {
        self.scenes.len()
    }

    pub fn num_samples(&self) -> usize {
        self.samples.len()
    }

    pub fn scene(&self, row: usize) -> Result<SceneRecord, ShardError> {
        self.scenes.get(row)
    }

    pub fn sample(&self, row: usize) -> Result<SampleRecord, ShardError> {
        self.samples.get(row)
    }

    /// The row of a scene id.
    pub fn scene_row(&self, scene_id: &str) -> Option<usize> {
        self.scene_rows.get(scene_id).copied()
    }

    pub fn scene_by_id(&self, scene_id: &str) -> Result<Option<SceneRecord>, ShardError> {
        self.scene_row(scene_id)
            .map(|row| self.scene(row))
            .transpose()
    }

    /// The dataset digest (sha256 of the manifest's canonical bytes).
    pub fn digest(&self) -> String {
        self.manifest.digest()
    }
}

// ---------------------------------------------------------------------------------------------
// Verify and merge.

/// What [`verify_dataset`] found: one line per problem, each naming the file.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub digest: String,
    pub files_checked: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Recompute every digest, size and row count of a dataset folder against its manifest, check the
/// counts and that no other dataset files lie in the folder. An unreadable or non-canonical
/// manifest is an error; everything else is collected as problems.
pub fn verify_dataset(dir: &Path) -> Result<VerifyReport, ShardError> {
    let manifest = Manifest::read(dir)?;
    let mut report = VerifyReport {
        digest: manifest.digest(),
        ..Default::default()
    };
    let mut counted = Counts::default();
    let mut listed = HashSet::new();
    for entry in &manifest.files {
        listed.insert(entry.path.clone());
        report.files_checked += 1;
        let problem = |report: &mut VerifyReport, what: String| {
            report.problems.push(format!("{}: {what}", entry.path))
        };
        let path = match dataset_file(dir, &entry.path) {
            Ok(path) => path,
            Err(e) => {
                problem(&mut report, e);
                continue;
            }
        };
        match sha256_file(&path) {
            Err(e) => {
                problem(&mut report, format!("cannot read: {e}"));
                continue;
            }
            Ok((sha, bytes)) => {
                if bytes != entry.bytes {
                    problem(
                        &mut report,
                        format!("{bytes} bytes, the manifest says {}", entry.bytes),
                    );
                }
                if sha != entry.sha256 {
                    problem(
                        &mut report,
                        format!("sha256 is {sha}, the manifest says {}", entry.sha256),
                    );
                    continue;
                }
            }
        }
        let rows = match entry.kind {
            FileKind::Rejects => std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| RejectLog::from_jsonl(&b))
                .map(|log| log.len() as u64),
            kind => count_rows(&path, kind, &mut counted.views).map_err(|e| e.to_string()),
        };
        match rows {
            Ok(rows) if rows != entry.rows => problem(
                &mut report,
                format!("{rows} rows, the manifest says {}", entry.rows),
            ),
            Ok(rows) => match entry.kind {
                FileKind::Scenes => counted.scenes += rows,
                FileKind::Samples => counted.samples += rows,
                FileKind::Rejects => counted.rejects += rows,
            },
            Err(e) => problem(&mut report, e),
        }
    }
    if report.problems.is_empty() && counted != manifest.counts {
        report.problems.push(format!(
            "{MANIFEST_FILE}: counts {:?}, the files hold {counted:?}",
            manifest.counts
        ));
    }
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let name = entry
            .map_err(io_err(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if is_dataset_file_name(&name) && name != MANIFEST_FILE && !listed.contains(&name) {
            unlisted.push(name);
        }
    }
    unlisted.sort();
    report.problems.extend(
        unlisted
            .into_iter()
            .map(|name| format!("{name}: not listed in the manifest")),
    );
    Ok(report)
}

/// The path of a file the manifest lists, which must be a regular file directly inside the dataset
/// folder: not a symbolic link (it could point anywhere). Names are checked by [`Manifest::read`].
fn dataset_file(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "is a symbolic link{}; a dataset's files must lie in its folder",
            std::fs::read_link(&path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default()
        )),
        _ => Ok(path),
    }
}

/// Rows of an Arrow file (schema checked); adds the scenes' views to `views`.
fn count_rows(path: &Path, kind: FileKind, views: &mut u64) -> Result<u64, ShardError> {
    let schema = schema_of(kind).expect("arrow kinds have schemas");
    let shard = ShardFile::open(path, &schema)?;
    if kind == FileKind::Scenes {
        for i in 0..shard.num_batches() {
            let batch = shard.batch(i)?;
            let list = Columns {
                batch: &batch,
                path,
            }
            .get::<ListArray>("views")?;
            let offsets = list.value_offsets();
            *views += (offsets[offsets.len() - 1] - offsets[0]) as u64;
        }
    }
    Ok(shard.num_rows() as u64)
}

/// Join the folders written by the jobs of one `--shard-index/--num-shards` run into one dataset at
/// `out` (a new or empty folder): every part is verified first, scene ids must be disjoint, files are
/// copied (names carry the part index), rejects are merged and the manifest is [`Manifest::merge`]d.
pub fn merge_datasets(out: &Path, parts: &[PathBuf]) -> Result<(Manifest, String), ShardError> {
    let mut manifests = Vec::new();
    let mut scene_owner: HashMap<String, PathBuf> = HashMap::new();
    let mut rejects = RejectLog::new();
    for dir in parts {
        let report = verify_dataset(dir)?;
        if !report.ok() {
            return Err(ShardError::Dataset(format!(
                "part {} does not verify:\n  {}",
                dir.display(),
                report.problems.join("\n  ")
            )));
        }
        let dataset = Dataset::open(dir)?;
        // Sorted, so that the error names the same scene on every run.
        let mut ids: Vec<&String> = dataset.scene_rows.keys().collect();
        ids.sort();
        for id in ids {
            if let Some(other) = scene_owner.insert(id.clone(), dir.clone()) {
                return Err(ShardError::Dataset(format!(
                    "scene {id} is in both {} and {}",
                    other.display(),
                    dir.display()
                )));
            }
        }
        let rejects_path = dir.join(REJECTS_FILE);
        let bytes = std::fs::read(&rejects_path).map_err(io_err(&rejects_path))?;
        rejects.extend(
            RejectLog::from_jsonl(&bytes)
                .map_err(|e| format_err(&rejects_path, e))?
                .sorted(),
        );
        manifests.push(dataset.manifest);
    }
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ShardError::Dataset(format!(
            "merge output folder {} is not empty",
            out.display()
        )));
    }
    // Written beside `out` and put in place complete.
    let staged = Staged::begin(out, false)?;
    let work = staged.path();
    let rejects_entry = FileEntry {
        path: REJECTS_FILE.into(),
        kind: FileKind::Rejects,
        sha256: crate::manifest::sha256_hex(&rejects.to_jsonl()),
        bytes: rejects.to_jsonl().len() as u64,
        rows: rejects.len() as u64,
    };
    let manifest = Manifest::merge(&manifests, rejects_entry)?;
    for (dir, m) in parts.iter().zip(&manifests) {
        for entry in m.files.iter().filter(|f| f.kind != FileKind::Rejects) {
            let target = work.join(&entry.path);
            if target.exists() {
                return Err(ShardError::Dataset(format!(
                    "two parts have a file named {}",
                    entry.path
                )));
            }
            let (guard, file) = AtomicFile::create(&target).map_err(io_err(&target))?;
            drop(file);
            std::fs::copy(dir.join(&entry.path), guard.temp_path())
                .map_err(io_err(&dir.join(&entry.path)))?;
            let file = File::options()
                .write(true)
                .open(guard.temp_path())
                .map_err(io_err(&target))?;
            guard.commit(file).map_err(io_err(&target))?;
        }
    }
    rejects
        .write(work)
        .map_err(io_err(&work.join(REJECTS_FILE)))?;
    let digest = manifest
        .write(work)
        .map_err(io_err(&work.join(MANIFEST_FILE)))?;
    staged.commit()?;
    Ok((manifest, digest))
}

// ---------------------------------------------------------------------------------------------
// Readable dumps (inspect, snapshots).

/// A float rounded to 4 decimals, without a sign on zero, so dumps are stable across machines.
pub fn fmt_float(x: f64) -> String {
    let s = format!("{x:.4}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

fn fmt_floats<T: Copy + Into<f64>>(values: &[T]) -> String {
    let parts: Vec<String> = values.iter().map(|&v| fmt_float(v.into())).collect();
    format!("[{}]", parts.join(", "))
}

/// A multi-line, human-readable description of a scene (images by size and sha256 prefix).
pub fn describe_scene(scene: &SceneRecord) -> String {
    let mut s = String::new();
    let source = if scene.axis_alignment_from_metadata {
        "metadata"
    } else {
        "identity (no metadata)"
    };
    let _ = writeln!(
        s,
        "scene {} / {}: {} views, axis alignment from {source}",
        scene.dataset,
        scene.scene_id,
        scene.views.len()
    );
    let _ = writeln!(s, "  axis_alignment {}", fmt_floats(&scene.axis_alignment));
    match &scene.reference_world_pose {
        Some(p) => {
            let _ = writeln!(s, "  reference_world_pose {}", fmt_floats(p));
        }
        None => {
            let _ = writeln!(s, "  reference_world_pose null");
        }
    }
    for (i, v) in scene.views.iter().enumerate() {
        let sha = crate::manifest::sha256_hex(&v.image);
        let _ = writeln!(
            s,
            "  view {i} frame {}: {} {}x{}, {} bytes, sha256 {}",
            v.frame_id,
            v.encoding,
            v.width,
            v.height,
            v.image.len(),
            &sha[..16]
        );
        match &v.geometry {
            Some(g) => {
                let _ = writeln!(s, "    R {}", fmt_floats(&g.r));
                let _ = writeln!(s, "    t {}", fmt_floats(&g.t));
                let _ = writeln!(s, "    K {}", fmt_floats(&g.k));
                let _ = writeln!(
                    s,
                    "    depth_hist {} valid {}",
                    fmt_floats(&g.depth_hist),
                    fmt_float(g.valid_depth_fraction.into())
                );
            }
            None => {
                let _ = writeln!(s, "    geometry null");
            }
        }
    }
    s
}

/// A multi-line, human-readable description of a sample.
pub fn describe_sample(sample: &SampleRecord) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "sample {} ({} / {}) scene {}",
        sample.sample_id, sample.task, sample.split, sample.scene_id
    );
    let _ = writeln!(s, "  question {:?}", sample.question);
    if let Some(situation) = &sample.situation {
        let _ = writeln!(s, "  situation {situation:?}");
    }
    let _ = writeln!(s, "  answers {:?}", sample.answers);
    if let Some(action) = &sample.action_json {
        let _ = writeln!(s, "  action {action}");
    }
    if let Some(ids) = &sample.object_ids {
        let _ = writeln!(s, "  object_ids {ids:?}");
    }
    if let Some(names) = &sample.object_names {
        let _ = writeln!(s, "  object_names {names:?}");
    }
    if let Some(a) = &sample.agent {
        let _ = writeln!(
            s,
            "  agent raw {} {} ref {} heading {}",
            fmt_floats(&a.position_raw),
            fmt_floats(&a.rotation_raw_xyzw),
            fmt_floats(&a.position_ref),
            fmt_floats(&a.heading_ref)
        );
    }
    let _ = writeln!(s, "  source {}", sample.source_json);
    s
}

// ---------------------------------------------------------------------------------------------
// A small example dataset (tests, interop checks, other crates' loader tests).

/// Deterministic example records built through the real geometry path: three scenes (ScanNet-like
/// views with geometry; one scene without axis alignment and with an extra bird's-eye view without
/// geometry), five samples (ScanQA with object ids, a ScanQA test question without answers, SQA3D
/// with an agent, a RoomPlan action) and two rejects.
pub fn example_records() -> (Vec<SceneRecord>, Vec<SampleRecord>, Vec<Reject>) {
    use crate::geometry::{
        depth_histogram, encode_jpeg, intrinsics, CameraImage, DepthBins, DepthMap, ReferenceFrame,
        SizeRule, IDENTITY4,
    };
    let rule = SizeRule {
        width: 56,
        multiple: 14,
        max_height: 56,
    };
    let k_raw = intrinsics(60.0, 60.0, 31.5, 23.5);
    let scene = |index: usize, aligned: bool, bev: bool| -> SceneRecord {
        let mut views = Vec::new();
        let mut frame = None;
        let mut first_pose = None;
        for f in 0..2usize {
            // Cameras 1.5 m above the floor on a circle, looking at the room centre.
            let angle = (index * 2 + f) as f64 * 0.7;
            let centre = [2.0 * angle.cos(), 2.0 * angle.sin(), 1.5];
            let forward = [-angle.cos(), -angle.sin(), 0.0];
            let right = crate::geometry::cross(&forward, &[0.0, 0.0, 1.0]);
            let down = crate::geometry::cross(&forward, &right);
            let r = [
                [right[0], down[0], forward[0]],
                [right[1], down[1], forward[1]],
                [right[2], down[2], forward[2]],
            ];
            let c2w = Rigid { r, t: centre };
            let raw = image::RgbImage::from_fn(64, 48, |u, v| {
                image::Rgb([(u * 4) as u8, (v * 5) as u8, (40 * (index + f)) as u8])
            });
            let stored = CameraImage::new(raw, k_raw)
                .apply_all(&rule.plan(64, 48))
                .expect("example ops fit");
            let reference = *frame
                .get_or_insert_with(|| ReferenceFrame::from_camera(&stored.adjust_pose(&c2w)));
            first_pose.get_or_insert(stored.adjust_pose(&c2w).to_row_major());
            let depth_mm: Vec<u16> = (0..48 * 64)
                .map(|i| {
                    if i % 7 == 0 {
                        0
                    } else {
                        800 + (i as u16 % 97) * 37
                    }
                })
                .collect();
            let depth = DepthMap::new(64, 48, &depth_mm, 0.001).expect("sizes match");
            views.push(ViewRecord {
                frame_id: format!("{}", f * 10),
                image: encode_jpeg(&stored.image, 90).expect("encodes"),
                encoding: ENCODING_JPEG.into(),
                width: stored.image.width(),
                height: stored.image.height(),
                geometry: Some(Geometry::new(
                    &reference.camera_to_reference(&stored.adjust_pose(&c2w)),
                    &stored.k,
                    depth_histogram(
                        &depth,
                        &DepthBins {
                            count: 4,
                            min_m: 0.0,
                            max_m: 4.0,
                        },
                    ),
                )),
            });
        }
        if bev {
            let top = image::RgbImage::from_fn(16, 16, |u, v| {
                image::Rgb([200, (u * 10) as u8, (v * 10) as u8])
            });
            views.push(ViewRecord {
                frame_id: "bev".into(),
                image: encode_jpeg(&top, 90).expect("encodes"),
                encoding: ENCODING_JPEG.into(),
                width: 16,
                height: 16,
                geometry: None,
            });
        }
        let mut alignment = crate::geometry::mat4_to_row_major(&IDENTITY4);
        if aligned {
            alignment[3] = -1.25;
            alignment[7] = 0.5;
        }
        SceneRecord {
            dataset: "scannet".into(),
            scene_id: format!("scene{index:04}_00"),
            views,
            reference_world_pose: first_pose,
            axis_alignment: alignment,
            axis_alignment_from_metadata: aligned,
        }
    };
    let scenes = vec![
        scene(0, true, false),
        scene(1, true, false),
        scene(2, false, true),
    ];

    let mut scanqa = SampleRecord::new(
        "train-scene0000-0",
        "scanqa",
        "train",
        "scene0000_00",
        "What color is the chair?",
    );
    scanqa.answers = vec!["red".into(), "dark red".into()];
    scanqa.object_ids = Some(vec![3, 7]);
    scanqa.object_names = Some(vec!["chair".into(), "chair".into()]);
    scanqa.source_json = r#"{"question_id":"train-scene0000-0"}"#.into();
    let mut test = SampleRecord::new(
        "test-scene0002-0",
        "scanqa",
        "test",
        "scene0002_00",
        "How many tables are there?",
    );
    test.object_ids = Some(vec![]);
    test.object_names = Some(vec![]);
    let mut sqa = SampleRecord::new(
        "sqa3d-220602000002",
        "sqa3d",
        "val",
        "scene0001_00",
        "What is on my left?",
    );
    sqa.situation = Some("I am standing by the sofa facing the window.".into());
    sqa.answers = vec!["table".into()];
    sqa.agent = Some(AgentPose {
        position_raw: [0.5, -0.25, 0.0],
        rotation_raw_xyzw: [0.0, 0.0, 0.3826834323650898, 0.9238795325112867],
        position_ref: [1.0, -1.5, -2.0],
        heading_ref: [-std::f64::consts::FRAC_1_SQRT_2, 0.0, -std::f64::consts::FRAC_1_SQRT_2],
    });
    sqa.source_json = r#"{"question_id":220602000002,"answer_type":"other"}"#.into();
    let mut action = SampleRecord::new(
        "roomplan-scene0001-0",
        "roomplan_action",
        "train",
        "scene0001_00",
        "Add a chair next to the table.",
    );
    action.action_json = Some(r#"{"action":"add_object","category":"chair"}"#.into());
    let mut sqa_test = SampleRecord::new(
        "sqa3d-220602000003",
        "sqa3d",
        "test",
        "scene0000_00",
        "Can I see the door?",
    );
    sqa_test.situation = Some("I just sat down on the bed.".into());
    sqa_test.answers = vec!["no".into()];
    let samples = vec![scanqa, sqa, action, sqa_test, test];

    let rejects = vec![
        Reject::new(
            "scannet:scans/scene0001_00/pose/5.txt",
            "frame 5",
            "pose has a non-finite entry at row 0, column 0 (-inf)",
        ),
        Reject::new(
            "scanqa:ScanQA_v1.0_val.json",
            "question val-scene0099-0",
            "scene scene0099_00 does not exist",
        ),
    ];
    (scenes, samples, rejects)
}
