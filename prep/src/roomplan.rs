//! Apple RoomPlan `CapturedRoom` JSON (the output of `JSONEncoder().encode(capturedRoom)`), FORMATS.md §5.
//!
//! Conventions (verified on both real exports in `shared/fixtures/roomplan/`):
//! - metres, right-handed, **+Y up** (ARKit world of the capture session);
//! - `transform` is a simd_float4x4 written **column-major**: 16 numbers, indices 12, 13, 14 are
//!   the translation (the centre of the surface or box), 3, 7, 11 are 0 and 15 is 1;
//! - `dimensions` are full extents `[width, height, depth]` along the local x, y (up) and z axes;
//! - enums (`category`, `confidence`, surface edges) are Swift enums encoded as single-key objects,
//!   `{"chair":{}}`, `{"door":{"isOpen":false}}`; a bare string `"chair"` is accepted too (older
//!   encoders). They are always written in the single-key-object form.
//!
//! What is kept and what is not:
//! - `coreModel` (a base64 proprietary blob) is kept verbatim as an opaque string, so a parsed
//!   export writes back whole;
//! - `curve` is kept as opaque JSON (its encoding of `Measurement<UnitAngle>` is unconfirmed);
//! - **unknown fields are preserved**: every struct has an `extra` map (`#[serde(flatten)]`) that
//!   collects keys this model does not know and writes them back after the known ones;
//! - fields that iOS 16 exports lack (`story`, `attributes`, `polygonCorners`, `completedEdges`,
//!   `sections`, `floors`) are optional; an absent optional field is written back absent,
//!   an absent array is read as empty and written back as `[]`.
//!
//! Known fields are declared in alphabetical order because Apple's exports use sorted keys; a
//! parsed export therefore serializes to the same JSON tree (numbers compared as values).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Errors reading a CapturedRoom export.
#[derive(Debug, thiserror::Error)]
pub enum RoomPlanError {
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a CapturedRoom export: {source}")]
    Parse { path: String, source: serde_json::Error },
}

/// A 4×4 rigid transform stored the way RoomPlan writes it: 16 numbers, column-major.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Transform(pub [f64; 16]);

impl Transform {
    pub const IDENTITY: Transform = Transform([
        1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0,
    ]);

    /// Builds the transform whose rotation columns are `x`, `y`, `z` and whose translation is `t`.
    pub fn from_columns(x: [f64; 3], y: [f64; 3], z: [f64; 3], t: [f64; 3]) -> Self {
        Transform([
            x[0], x[1], x[2], 0.0, y[0], y[1], y[2], 0.0, z[0], z[1], z[2], 0.0, t[0], t[1], t[2], 1.0,
        ])
    }

    /// Column `i` (0..4) without its homogeneous entry: 0, 1, 2 = local axes, 3 = translation.
    pub fn column(&self, i: usize) -> [f64; 3] {
        let c = &self.0[4 * i..4 * i + 3];
        [c[0], c[1], c[2]]
    }

    pub fn translation(&self) -> [f64; 3] {
        self.column(3)
    }

    /// Maps a point given in the local frame to the parent frame.
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let (x, y, z, t) = (self.column(0), self.column(1), self.column(2), self.column(3));
        std::array::from_fn(|r| x[r] * p[0] + y[r] * p[1] + z[r] * p[2] + t[r])
    }

    /// Checks the homogeneous row (entries 3, 7, 11 = 0, 15 = 1): a row-major matrix read as
    /// column-major fails here because its translation would land in that row.
    pub fn check_affine(&self) -> Result<(), String> {
        let m = &self.0;
        let bottom = [m[3], m[7], m[11], m[15]];
        if bottom != [0.0, 0.0, 0.0, 1.0] {
            return Err(format!(
                "transform is not column-major affine: entries 3, 7, 11, 15 are {bottom:?}, expected [0, 0, 0, 1]"
            ));
        }
        Ok(())
    }
}

/// A Swift enum case as encoded by `JSONEncoder`: `{"name": {payload}}`, or a bare `"name"`.
#[derive(Debug, Clone, PartialEq)]
struct SwiftCase {
    name: String,
    payload: Map<String, Value>,
}

impl<'de> Deserialize<'de> for SwiftCase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(name) => Ok(SwiftCase {
                name,
                payload: Map::new(),
            }),
            Value::Object(map) if map.len() == 1 => {
                let (name, payload) = map.into_iter().next().expect("len checked");
                match payload {
                    Value::Object(payload) => Ok(SwiftCase { name, payload }),
                    other => Err(D::Error::custom(format!(
                        "enum case {name:?}: expected an object payload, got {other}"
                    ))),
                }
            }
            other => Err(D::Error::custom(format!(
                "expected an enum case as a single-key object like {{\"chair\":{{}}}} or a string, got {other}"
            ))),
        }
    }
}

impl Serialize for SwiftCase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(&self.name, &self.payload)?;
        map.end()
    }
}

/// Declares a payload-free Swift enum with its JSON names, serialized through [`SwiftCase`].
macro_rules! swift_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $json:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "SwiftCase", into = "SwiftCase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The case name as RoomPlan writes it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $json),+ }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($json => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<SwiftCase> for $name {
            type Error = String;
            fn try_from(case: SwiftCase) -> Result<Self, String> {
                if !case.payload.is_empty() {
                    return Err(format!(
                        "{} {:?} takes no payload, got {}",
                        stringify!($name), case.name, Value::Object(case.payload)
                    ));
                }
                $name::from_name(&case.name).ok_or_else(|| {
                    let known: Vec<&str> = $name::ALL.iter().map(|c| c.as_str()).collect();
                    format!("unknown {} {:?}, expected one of {}", stringify!($name), case.name, known.join(", "))
                })
            }
        }

        impl From<$name> for SwiftCase {
            fn from(v: $name) -> SwiftCase {
                SwiftCase { name: v.as_str().to_string(), payload: Map::new() }
            }
        }
    };
}

swift_enum!(
    /// `CapturedRoom.Object.Category` (iOS 16+).
    ObjectCategory {
        Storage = "storage",
        Refrigerator = "refrigerator",
        Stove = "stove",
        Bed = "bed",
        Sink = "sink",
        WasherDryer = "washerDryer",
        Toilet = "toilet",
        Bathtub = "bathtub",
        Oven = "oven",
        Dishwasher = "dishwasher",
        Table = "table",
        Sofa = "sofa",
        Chair = "chair",
        Fireplace = "fireplace",
        Television = "television",
        Stairs = "stairs",
    }
);

swift_enum!(
    /// `CapturedRoom.Confidence`.
    Confidence { High = "high", Medium = "medium", Low = "low" }
);

swift_enum!(
    /// `CapturedRoom.Surface.Edge` (the JSON form of a non-empty `completedEdges` is unconfirmed;
    /// both enum encodings are accepted).
    Edge { Top = "top", Bottom = "bottom", Left = "left", Right = "right" }
);

/// `CapturedRoom.Surface.Category`; only `door` carries a payload (`isOpen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SwiftCase", into = "SwiftCase")]
pub enum SurfaceCategory {
    Wall,
    Window,
    Opening,
    Floor,
    /// `is_open` is `None` when the encoder wrote a bare `"door"`.
    Door {
        is_open: Option<bool>,
    },
}

impl TryFrom<SwiftCase> for SurfaceCategory {
    type Error = String;
    fn try_from(case: SwiftCase) -> Result<Self, String> {
        let no_payload = |c: SurfaceCategory| {
            if case.payload.is_empty() {
                Ok(c)
            } else {
                Err(format!(
                    "surface category {:?} takes no payload, got {:?}",
                    case.name, case.payload
                ))
            }
        };
        match case.name.as_str() {
            "wall" => no_payload(SurfaceCategory::Wall),
            "window" => no_payload(SurfaceCategory::Window),
            "opening" => no_payload(SurfaceCategory::Opening),
            "floor" => no_payload(SurfaceCategory::Floor),
            "door" => {
                let mut is_open = None;
                for (key, value) in &case.payload {
                    match (key.as_str(), value) {
                        ("isOpen", Value::Bool(b)) => is_open = Some(*b),
                        _ => {
                            return Err(format!(
                                "door: unexpected payload entry {key:?}: {value}, expected isOpen: bool"
                            ))
                        }
                    }
                }
                Ok(SurfaceCategory::Door { is_open })
            }
            other => Err(format!(
                "unknown surface category {other:?}, expected one of wall, window, opening, floor, door"
            )),
        }
    }
}

impl From<SurfaceCategory> for SwiftCase {
    fn from(c: SurfaceCategory) -> SwiftCase {
        let (name, payload) = match c {
            SurfaceCategory::Wall => ("wall", Map::new()),
            SurfaceCategory::Window => ("window", Map::new()),
            SurfaceCategory::Opening => ("opening", Map::new()),
            SurfaceCategory::Floor => ("floor", Map::new()),
            SurfaceCategory::Door { is_open } => {
                let mut payload = Map::new();
                if let Some(open) = is_open {
                    payload.insert("isOpen".into(), Value::Bool(open));
                }
                ("door", payload)
            }
        };
        SwiftCase {
            name: name.into(),
            payload,
        }
    }
}

/// A wall, door, window, opening or floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Surface {
    pub category: SurfaceCategory,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_edges: Option<Vec<Edge>>,
    pub confidence: Confidence,
    /// Opaque (`null` in every real sample); `None` is written as `null`.
    #[serde(default)]
    pub curve: Option<Value>,
    /// `[width, height, 0]`: surfaces have no thickness.
    pub dimensions: [f64; 3],
    pub identifier: String,
    /// The host wall of a door, window or opening.
    #[serde(default)]
    pub parent_identifier: Option<String>,
    /// Corners in the surface's local frame (non-rectangular walls, floors); iOS 17+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon_corners: Option<Vec<[f64; 3]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<i64>,
    pub transform: Transform,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A furniture box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    /// iOS 17+ (`{"StorageType":"cabinet"}`, `{"ChairType":"stool"}` …); values are strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
    pub category: ObjectCategory,
    pub confidence: Confidence,
    /// `[width, height, depth]`, full extents along local x, y (up), z.
    pub dimensions: [f64; 3],
    pub identifier: String,
    /// E.g. a chair pointing at its table.
    #[serde(default)]
    pub parent_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<i64>,
    /// Box centre and local axes.
    pub transform: Transform,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Object {
    /// The box's 8 corners in the parent frame, local sign pattern (x, y, z) ∈ {−,+}³ in binary
    /// order (x slowest).
    pub fn corners(&self) -> [[f64; 3]; 8] {
        box_corners(&self.transform, self.dimensions)
    }
}

/// The 8 corners of a box of full extents `dimensions` placed by `transform`, ordered by the
/// local sign pattern (−,−,−), (−,−,+), (−,+,−), … (x slowest, z fastest).
pub fn box_corners(transform: &Transform, dimensions: [f64; 3]) -> [[f64; 3]; 8] {
    std::array::from_fn(|i| {
        let sign = |bit: usize| if (i >> bit) & 1 == 1 { 0.5 } else { -0.5 };
        transform.apply([
            sign(2) * dimensions[0],
            sign(1) * dimensions[1],
            sign(0) * dimensions[2],
        ])
    })
}

/// A room section (iOS 17): a labelled point, no geometry, no membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub center: [f64; 3],
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A whole `CapturedRoom` export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapturedRoom {
    /// Proprietary base64 blob, kept verbatim and never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_model: Option<String>,
    #[serde(default)]
    pub doors: Vec<Surface>,
    #[serde(default)]
    pub floors: Vec<Surface>,
    /// Declared by the Swift struct but absent from real exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    #[serde(default)]
    pub objects: Vec<Object>,
    #[serde(default)]
    pub openings: Vec<Surface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_origin_transform: Option<Transform>,
    #[serde(default)]
    pub sections: Vec<Section>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default)]
    pub walls: Vec<Surface>,
    #[serde(default)]
    pub windows: Vec<Surface>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CapturedRoom {
    /// Parses an export; `origin` names the source in error messages.
    pub fn from_json_str(json: &str, origin: &str) -> Result<Self, RoomPlanError> {
        serde_json::from_str(json).map_err(|source| RoomPlanError::Parse {
            path: origin.to_string(),
            source,
        })
    }

    pub fn read(path: &Path) -> Result<Self, RoomPlanError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RoomPlanError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_json_str(&text, &name)
    }

    /// Every surface of the room with its kind: walls, doors, windows, openings, floors.
    pub fn surfaces(&self) -> impl Iterator<Item = &Surface> {
        self.walls
            .iter()
            .chain(&self.doors)
            .chain(&self.windows)
            .chain(&self.openings)
            .chain(&self.floors)
    }
}
