//! RoomPlan actions: the stage-3 target of an instruction (DESIGN.md, issue 4).
//!
//! An action is one JSON object in Apple RoomPlan's vocabulary, expressed in the sample's
//! reference frame (right-handed, +Y up, metres, origin at the first selected camera, −Z its
//! horizontal viewing direction), so that an app could apply it to a CapturedRoom directly.
//! `prep/schema/roomplan_actions.schema.json` describes every action; [`validate`] checks a JSON
//! value against that schema and then against what a schema cannot say (transforms must be rigid
//! and right-handed, normals of unit length).
//!
//! The target text is canonical ([`Action::canonical_json`]): compact JSON, keys in the order of
//! the Rust declarations (which is the schema's order), attribute keys sorted, every non-integer
//! number written with exactly [`DECIMALS`] decimals (millimetres, `-0.000` written `0.000`).
//! The same action therefore always tokenizes the same way.

pub mod schema;
pub mod synthesis;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::geometry::cross;
use crate::roomplan::{box_corners, ObjectCategory, Transform};

pub use schema::{Schema, SchemaError};

/// Decimals of every non-integer number in canonical text.
pub const DECIMALS: usize = 3;

/// The schema file, compiled into the binary so that validation needs no file at run time.
pub const SCHEMA_JSON: &str = include_str!("../schema/roomplan_actions.schema.json");

/// A CapturedRoom.Object without identity (identifier, confidence, story): what an instruction
/// can ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectSpec {
    pub category: ObjectCategory,
    /// E.g. `{"StorageType": "cabinet"}`; empty when the category needs no refinement.
    pub attributes: BTreeMap<String, String>,
    /// Full extents `[width, height, depth]` along the local x, y (up), z axes.
    pub dimensions: [f64; 3],
    /// Column-major; translation = box centre.
    pub transform: Transform,
}

impl ObjectSpec {
    pub fn center(&self) -> [f64; 3] {
        self.transform.translation()
    }

    pub fn corners(&self) -> [[f64; 3]; 8] {
        box_corners(&self.transform, self.dimensions)
    }

    pub fn volume(&self) -> f64 {
        self.dimensions.iter().product()
    }

    pub fn target(&self) -> Target {
        Target {
            category: self.category,
            center: self.center(),
        }
    }
}

/// An existing object, named by its category and box centre (the app picks the object of that
/// category whose centre is nearest).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub category: ObjectCategory,
    pub center: [f64; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// An anchor on the top surface of a supporting object: that surface's centre, its upward
    /// unit normal and its extent `[width, depth]`.
    PlaceAnchor {
        category: ObjectCategory,
        center: [f64; 3],
        normal: [f64; 3],
        extent: [f64; 2],
    },
    /// The one object the instruction describes.
    Locate {
        object: ObjectSpec,
    },
    /// All objects of the room in [`list_order`].
    ListObjects {
        objects: Vec<ObjectSpec>,
    },
    /// A new object standing on the floor at a free spot.
    AddObject {
        object: ObjectSpec,
    },
    MoveObject {
        target: Target,
        translation: [f64; 3],
    },
    /// Positive yaw = counter-clockwise seen from above (right-handed about +Y).
    RotateObject {
        target: Target,
        yaw_degrees: f64,
    },
    RemoveObject {
        target: Target,
    },
    /// Objects of `category` whose attributes include `attributes`.
    Count {
        category: ObjectCategory,
        attributes: BTreeMap<String, String>,
        count: u64,
    },
}

impl Action {
    /// The action's name, as in the `action` key.
    pub fn name(&self) -> &'static str {
        match self {
            Action::PlaceAnchor { .. } => "place_anchor",
            Action::Locate { .. } => "locate",
            Action::ListObjects { .. } => "list_objects",
            Action::AddObject { .. } => "add_object",
            Action::MoveObject { .. } => "move_object",
            Action::RotateObject { .. } => "rotate_object",
            Action::RemoveObject { .. } => "remove_object",
            Action::Count { .. } => "count",
        }
    }

    /// The canonical target text (see the module docs).
    pub fn canonical_json(&self) -> String {
        let value = serde_json::to_value(self).expect("actions serialize to JSON (string keys only)");
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// The action as read back from its canonical text: numbers rounded to [`DECIMALS`].
    pub fn canonicalized(&self) -> Action {
        serde_json::from_str(&self.canonical_json()).expect("canonical text parses back")
    }
}

/// Writes `value` compactly with every floating-point number at [`DECIMALS`] decimals.
pub fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let text = format!("{:.*}", DECIMALS, n.as_f64().expect("is_f64"));
            // Rounding can leave "-0.000"; one spelling for zero.
            let zero = text.trim_start_matches('-').bytes().all(|b| b == b'0' || b == b'.');
            out.push_str(if zero { text.trim_start_matches('-') } else { &text });
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The order of [`Action::ListObjects`]: category name, then attributes, then the centre's
/// x, z, y at canonical precision (so the order can be recomputed from the text itself).
pub fn list_order(a: &ObjectSpec, b: &ObjectSpec) -> std::cmp::Ordering {
    let key = |o: &ObjectSpec| {
        let c = o.center();
        let mm = |x: f64| (x * 1000.0).round() as i64;
        (o.category.as_str(), o.attributes.clone(), mm(c[0]), mm(c[2]), mm(c[1]))
    };
    key(a).cmp(&key(b))
}

/// Why a JSON value is not a valid action.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("action does not match the schema: {}", join(.0))]
    Schema(Vec<SchemaError>),
    #[error("action is not geometrically valid: {}", .0.join("; "))]
    Geometry(Vec<String>),
}

fn join(errors: &[SchemaError]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

/// The action schema, loaded once.
pub fn action_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let root = serde_json::from_str(SCHEMA_JSON).expect("prep/schema/roomplan_actions.schema.json is JSON");
        Schema::new(root).expect("prep/schema/roomplan_actions.schema.json uses only supported keywords")
    })
}

/// Tolerance of the rigidity checks: canonical text rounds rotation entries to 1e-3.
const ROTATION_TOLERANCE: f64 = 1e-2;

/// Checks a JSON value against the schema and the geometric rules; returns the typed action.
pub fn validate(value: &Value) -> Result<Action, ActionError> {
    let errors = action_schema().validate(value);
    if !errors.is_empty() {
        return Err(ActionError::Schema(errors));
    }
    // The schema and the Rust types describe the same shapes; a disagreement is reported, not
    // hidden.
    let action: Action = serde_json::from_value(value.clone()).map_err(|e| {
        ActionError::Schema(vec![SchemaError {
            pointer: String::new(),
            message: format!("schema accepted it but {e}"),
        }])
    })?;
    let mut problems = Vec::new();
    let mut transforms: Vec<(String, &Transform)> = Vec::new();
    match &action {
        Action::Locate { object } | Action::AddObject { object } => {
            transforms.push(("/object/transform".into(), &object.transform))
        }
        Action::ListObjects { objects } => {
            transforms.extend(
                objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| (format!("/objects/{i}/transform"), &o.transform)),
            );
        }
        Action::PlaceAnchor { normal, .. } => {
            let norm = dot(*normal, *normal).sqrt();
            if (norm - 1.0).abs() > ROTATION_TOLERANCE {
                problems.push(format!("/normal: length {norm:.4}, expected a unit vector"));
            }
        }
        _ => {}
    }
    for (at, transform) in transforms {
        if let Err(e) = check_rigid(transform) {
            problems.push(format!("{at}: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(action)
    } else {
        Err(ActionError::Geometry(problems))
    }
}

/// Parses and validates a model's output text.
pub fn validate_text(text: &str) -> Result<Action, ActionError> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| ActionError::NotJson(e.to_string()))?;
    validate(&value)
}

/// A transform placing a box: affine bottom row, orthonormal right-handed rotation columns.
pub fn check_rigid(t: &Transform) -> Result<(), String> {
    t.check_affine()?;
    let cols = [t.column(0), t.column(1), t.column(2)];
    if let Some((i, j, d)) = non_orthonormal_pair(&cols, ROTATION_TOLERANCE) {
        let expected = if i == j { 1.0 } else { 0.0 };
        return Err(format!(
            "rotation columns are not orthonormal: column {i} · column {j} = {d:.4}, expected {expected}"
        ));
    }
    let det = dot(cross(&cols[0], &cols[1]), cols[2]);
    if det < 0.0 {
        return Err(format!(
            "rotation is a reflection (determinant {det:.4}), expected right-handed axes"
        ));
    }
    Ok(())
}

/// The first pair `(i, j, vᵢ·vⱼ)` whose dot product differs from the identity's by more than
/// `tolerance`; `None` when the three vectors are orthonormal.
pub(crate) fn non_orthonormal_pair(v: &[[f64; 3]; 3], tolerance: f64) -> Option<(usize, usize, f64)> {
    (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).find_map(|(i, j)| {
        let d = dot(v[i], v[j]);
        let expected = if i == j { 1.0 } else { 0.0 };
        ((d - expected).abs() > tolerance).then_some((i, j, d))
    })
}

/// Dot product (geometry.rs has none).
pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
