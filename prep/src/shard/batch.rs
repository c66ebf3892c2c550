//! Records ↔ Arrow record batches: [`TableRecord`] (schema, `to_batch`, `from_batch`) for both
//! tables, and the typed column access used to decode them.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int64Array,
    LargeBinaryArray, ListArray, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::error::{format_err, ShardError};
use super::records::{AgentPose, Geometry, SampleRecord, SceneRecord, ViewRecord};
use super::schema::{
    agent_fields, geometry_fields, item, samples_schema, scenes_schema, view_fields,
};
use crate::manifest::FileKind;

fn nulls(valid: impl IntoIterator<Item = bool>) -> Option<NullBuffer> {
    let valid: Vec<bool> = valid.into_iter().collect();
    valid.iter().any(|v| !v).then(|| NullBuffer::from(valid))
}

pub(super) fn fixed(
    values: ArrayRef,
    size: i32,
    valid: Option<NullBuffer>,
) -> Result<ArrayRef, ArrowError> {
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

pub(super) struct Columns<'a> {
    pub(super) batch: &'a RecordBatch,
    pub(super) path: &'a Path,
}

impl<'a> Columns<'a> {
    pub(super) fn get<T: 'static>(&self, name: &str) -> Result<&'a T, ShardError> {
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
