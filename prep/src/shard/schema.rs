//! The Arrow schemas of the two tables (`scenes`, `samples`) and the schema version stored with them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};

use crate::manifest::FileKind;

/// Version of the schemas in this file; stored in each file's schema metadata and in the manifest.
/// Bump it on any change of a field name, type or meaning.
pub const SCHEMA_VERSION: u32 = 1;
/// Schema metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "roomplan.schema_version";
/// Schema metadata key holding the table name (`scenes` or `samples`).
pub const TABLE_KEY: &str = "roomplan.table";

pub(super) fn item(data_type: DataType) -> FieldRef {
    Arc::new(Field::new("item", data_type, false))
}

fn fixed_list(data_type: DataType, size: i32) -> DataType {
    DataType::FixedSizeList(item(data_type), size)
}

pub(super) fn list(data_type: DataType) -> DataType {
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
