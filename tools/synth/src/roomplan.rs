//! RoomPlan `CapturedRoom` JSON (FORMATS.md §5), written the way Apple's `JSONEncoder` with
//! `[.prettyPrinted, .sortedKeys]` writes it: sorted keys, `" : "`, two-space indentation,
//! empty containers as `[\n\n  ]`, floats as shortest `Float` strings, `/` escaped as `\/`.

use crate::geom::DetMath;
use crate::geom::{self, Rigid, Vec3};
use crate::scene::Room;
use serde_json::{json, Value};

/// RoomPlan's world (Y-up) ← Z-up frame: x' = x, y' = z, z' = −y.
pub const YUP_FROM_ZUP: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]];

/// RoomPlan world ← room: the AR session starts at `session_start` (a camera pose in the
/// room, camera-to-room) — origin at that camera, −Z along its horizontal viewing direction.
pub fn world_from_room(session_start: &Rigid) -> Rigid {
    let forward = geom::column(&session_start.r, 2);
    let heading = forward[1].datan2(forward[0]);
    // Turn the heading onto +y (Z-up), which Y-up maps to −Z.
    let zup = Rigid {
        r: geom::rot_z(std::f64::consts::FRAC_PI_2 - heading),
        t: [0.0; 3],
    }
    .compose(&Rigid {
        r: geom::IDENTITY3,
        t: geom::scale(session_start.t, -1.0),
    });
    Rigid {
        r: YUP_FROM_ZUP,
        t: [0.0; 3],
    }
    .compose(&zup)
}

/// RoomPlan's category mapping of the 17 ARKitScenes classes, with iOS 17 attributes.
pub fn category(class: &str) -> (&'static str, Value) {
    match class {
        "cabinet" => ("storage", json!({"StorageType": "cabinet"})),
        "shelf" => ("storage", json!({"StorageType": "shelf"})),
        "refrigerator" => ("refrigerator", json!({})),
        "stove" => ("stove", json!({})),
        "bed" => ("bed", json!({})),
        "sink" => ("sink", json!({})),
        "washer" => ("washerDryer", json!({})),
        "toilet" => ("toilet", json!({})),
        "bathtub" => ("bathtub", json!({})),
        "oven" => ("oven", json!({})),
        "dishwasher" => ("dishwasher", json!({})),
        "fireplace" => ("fireplace", json!({})),
        "stool" => (
            "chair",
            json!({"ChairType": "stool", "ChairBackType": "missing", "ChairArmType": "missing", "ChairLegType": "four"}),
        ),
        "chair" => (
            "chair",
            json!({"ChairType": "dining", "ChairBackType": "existing", "ChairArmType": "missing", "ChairLegType": "four"}),
        ),
        "table" => (
            "table",
            json!({"TableShapeType": "rectangular", "TableType": "unidentified"}),
        ),
        "tv_monitor" => ("television", json!({})),
        "sofa" => ("sofa", json!({"SofaType": "rectangular"})),
        _ => ("storage", json!({})),
    }
}

/// Rounds to f32 as RoomPlan stores simd floats.
fn f(x: f64) -> Value {
    let v = x as f32;
    json!(v as f64)
}

fn transform(world: &Rigid, col0: Vec3, col1: Vec3, centre: Vec3) -> Value {
    // Columns are given in the room frame; map them into RoomPlan's world.
    let c0 = world.rotate(col0);
    let c1 = world.rotate(col1);
    let c2 = geom::cross(c0, c1);
    let t = world.apply(centre);
    let m = Rigid {
        r: geom::from_columns(c0, c1, c2),
        t,
    };
    Value::Array(m.to_column_major().iter().map(|v| f(*v)).collect())
}

fn surface(
    id: &str,
    parent: Option<&str>,
    cat: Value,
    conf: &str,
    dims: [f64; 3],
    tf: Value,
    corners: Vec<[f64; 3]>,
) -> Value {
    json!({
        "category": cat,
        "completedEdges": [],
        "confidence": {conf: {}},
        "curve": null,
        "dimensions": dims.iter().map(|v| f(*v)).collect::<Vec<_>>(),
        "identifier": id,
        "parentIdentifier": parent,
        "polygonCorners": corners.iter().map(|c| c.iter().map(|v| f(*v)).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "story": 0,
        "transform": tf,
    })
}

/// The CapturedRoom of `room`; `uuid` yields fresh uppercase UUIDs, `core_model` is the
/// opaque base64 blob real exports carry.
pub fn captured_room(
    room: &Room,
    world: &Rigid,
    core_model: &str,
    mut uuid: impl FnMut() -> String,
) -> Value {
    let up = [0.0, 0.0, 1.0];
    let h = room.size[2];
    let walls = room.walls();
    let wall_ids: Vec<String> = (0..4).map(|_| uuid()).collect();
    let wall_json: Vec<Value> = walls
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let centre = [
                w.start[0] + w.dir[0] * w.length / 2.0,
                w.start[1] + w.dir[1] * w.length / 2.0,
                h / 2.0,
            ];
            let tf = transform(world, [w.dir[0], w.dir[1], 0.0], up, centre);
            surface(
                &wall_ids[i],
                None,
                json!({"wall": {}}),
                "high",
                [w.length, h, 0.0],
                tf,
                vec![],
            )
        })
        .collect();
    let opening = |o: &crate::scene::WallOpening, cat: Value, uuid: &mut dyn FnMut() -> String| {
        let w = walls[o.wall];
        let tf = transform(world, [w.dir[0], w.dir[1], 0.0], up, room.opening_centre(o));
        surface(
            &uuid(),
            Some(&wall_ids[o.wall]),
            cat,
            "medium",
            [o.width, o.height, 0.0],
            tf,
            vec![],
        )
    };
    let doors = vec![opening(
        &room.door,
        json!({"door": {"isOpen": false}}),
        &mut uuid,
    )];
    let windows: Vec<Value> = room
        .windows
        .iter()
        .map(|w| opening(w, json!({"window": {}}), &mut uuid))
        .collect();
    let (hw, hd) = (room.size[0] / 2.0, room.size[1] / 2.0);
    // Floor: local x = room x, local z = world up, so local y = room +y.
    let floor_tf = {
        let c0 = world.rotate([1.0, 0.0, 0.0]);
        let c2 = world.rotate(up);
        let c1 = geom::cross(c2, c0);
        let m = Rigid {
            r: geom::from_columns(c0, c1, c2),
            t: world.apply([0.0; 3]),
        };
        Value::Array(m.to_column_major().iter().map(|v| f(*v)).collect())
    };
    let floor_corners = vec![
        [-hw, -hd, 0.0],
        [-hw, hd, 0.0],
        [hw, hd, 0.0],
        [hw, -hd, 0.0],
    ];
    let floors = vec![surface(
        &uuid(),
        None,
        json!({"floor": {}}),
        "high",
        [room.size[0], room.size[1], 0.0],
        floor_tf,
        floor_corners,
    )];
    let confidences = ["high", "medium", "low"];
    let objects: Vec<Value> = room
        .objects
        .iter()
        .map(|o| {
            let (cat, attributes) = category(&o.class);
            let r = o.rotation();
            let tf = transform(world, geom::column(&r, 0), up, o.centre);
            json!({
                "attributes": attributes,
                "category": {cat: {}},
                "confidence": {confidences[o.id as usize % 3]: {}},
                "dimensions": [f(o.size[0]), f(o.size[2]), f(o.size[1])],
                "identifier": uuid(),
                "parentIdentifier": null,
                "story": 0,
                "transform": tf,
            })
        })
        .collect();
    let origin = Value::Array(
        Rigid::IDENTITY
            .to_column_major()
            .iter()
            .map(|v| f(*v))
            .collect(),
    );
    json!({
        "coreModel": core_model,
        "doors": doors,
        "floors": floors,
        "objects": objects,
        "openings": [],
        "referenceOriginTransform": origin,
        "sections": [{"center": world.apply([0.0, 0.0, 0.0]).map(|v| v as f32 as f64), "label": room.kind, "story": 0}],
        "story": 0,
        "version": 2,
        "walls": wall_json,
        "windows": windows,
    })
}

/// Swift's `Float.description`-like shortest form: integers without a fraction, exponent
/// form (`5.9843063e-05`) below 1e-4 and from 1e16.
pub fn swift_float(x: f64) -> String {
    let v = x as f32;
    if v == 0.0 {
        return "0".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e16 {
        return format!("{}", v as i64);
    }
    let a = v.abs();
    if !(1e-4..1e16).contains(&a) {
        let s = format!("{v:e}"); // e.g. 5.9843063e-5
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = exp
            .strip_prefix('-')
            .map(|d| ("-", d))
            .unwrap_or(("+", exp));
        return format!("{mant}e{sign}{digits:0>2}");
    }
    format!("{v}")
}

fn write_value(out: &mut String, v: &Value, indent: usize) {
    let pad = |n: usize| "  ".repeat(n);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_i64() {
            Some(i) => out.push_str(&i.to_string()),
            None => out.push_str(&swift_float(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => {
            let escaped = serde_json::to_string(s)
                .unwrap_or_default()
                .replace('/', "\\/");
            out.push_str(&escaped);
        }
        Value::Array(items) => {
            out.push('[');
            if items.is_empty() {
                out.push_str(&format!("\n\n{}]", pad(indent)));
                return;
            }
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(indent + 1));
                write_value(out, item, indent + 1);
            }
            out.push_str(&format!("\n{}]", pad(indent)));
        }
        Value::Object(map) => {
            out.push('{');
            if map.is_empty() {
                out.push_str(&format!("\n\n{}}}", pad(indent)));
                return;
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&pad(indent + 1));
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(" : ");
                write_value(out, &map[k.as_str()], indent + 1);
            }
            out.push_str(&format!("\n{}}}", pad(indent)));
        }
    }
}

/// Apple-style pretty JSON text (no trailing newline, as the real exports).
pub fn apple_json(v: &Value) -> String {
    let mut s = String::new();
    write_value(&mut s, v, 0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_swift() {
        assert_eq!(swift_float(5.9843063e-05), "5.9843063e-05");
        assert_eq!(swift_float(-5.9604645e-08), "-5.9604645e-08");
        assert_eq!(swift_float(0.73441), "0.73441");
        assert_eq!(swift_float(1.0), "1");
        assert_eq!(swift_float(-0.0), "0");
    }

    #[test]
    fn pretty_printing_matches_the_real_exports() {
        let v = json!({"b": [], "a": {"x": {}}, "c": "a/b", "d": [1, 0.5]});
        assert_eq!(
            apple_json(&v),
            "{\n  \"a\" : {\n    \"x\" : {\n\n    }\n  },\n  \"b\" : [\n\n  ],\n  \"c\" : \"a\\/b\",\n  \"d\" : [\n    1,\n    0.5\n  ]\n}"
        );
    }

    #[test]
    fn session_origin_maps_start_camera_to_origin_facing_minus_z() {
        let start = crate::scene::look_pose([1.0, 2.0, 1.5], 0.7, -0.2, 0.0);
        let w = world_from_room(&start);
        let o = w.apply(start.t);
        assert!(geom::norm(o) < 1e-12);
        let fwd = w.rotate(geom::column(&start.r, 2));
        assert!(
            fwd[0].abs() < 1e-12 && fwd[2] < 0.0 && fwd[1] < 0.0,
            "{fwd:?}"
        );
        // Floor is 1.5 m below the session origin.
        assert!((w.apply([0.0, 0.0, 0.0])[1] + 1.5).abs() < 1e-12);
    }
}
