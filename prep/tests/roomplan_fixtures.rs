//! The CapturedRoom model against the two real RoomPlan exports (FORMATS.md §5).

use std::path::PathBuf;

use roomplan_prep::roomplan::{
    CapturedRoom, Confidence, ObjectCategory, SurfaceCategory, Transform,
};
use serde_json::Value;

/// The real exports live outside the repository, in the shared fixtures folder
/// (`$ROOMPLAN_SHARED`, default `<workspace>/../shared`, as ci/test.sh sets it), MIT licence
/// beside them.
fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var_os("ROOMPLAN_SHARED")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let path = shared.join("fixtures/roomplan").join(name);
    assert!(
        path.is_file(),
        "RoomPlan fixture {} not found (set ROOMPLAN_SHARED)",
        path.display()
    );
    path
}

fn read_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

/// Numbers compared as f64 values: the exports write `0` for some float fields, we write `0.0`.
fn normalize_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::from(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Walls, doors, windows, openings, floors and objects, in that order.
fn element_counts(room: &CapturedRoom) -> [usize; 6] {
    [
        room.walls.len(),
        room.doors.len(),
        room.windows.len(),
        room.openings.len(),
        room.floors.len(),
        room.objects.len(),
    ]
}

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

#[test]
fn single_room_known_values() {
    let room = CapturedRoom::read(&fixture("single-room.json")).unwrap();
    assert_eq!(element_counts(&room), [4, 2, 2, 0, 1, 5]);
    assert_eq!(room.version, Some(2));
    assert_eq!(room.story, Some(0));
    assert!(room.identifier.is_none());
    assert!(room.core_model.as_ref().unwrap().len() > 80_000);
    assert_eq!(room.sections.len(), 1);
    assert_eq!(room.sections[0].label, "livingRoom");

    let door = &room.doors[0];
    assert_eq!(
        door.category,
        SurfaceCategory::Door {
            is_open: Some(false)
        }
    );
    assert_eq!(door.confidence, Confidence::Medium);
    assert_eq!(door.dimensions, [1.1345919, 2.046347, 0.0]);
    assert_eq!(
        door.transform.translation(),
        [3.5083256, 5.9843063e-05, 0.05842098]
    );
    assert_eq!(
        door.parent_identifier.as_deref(),
        Some("6EA34F07-D5B2-4045-937C-8D89745F1FA6")
    );
    assert_eq!(door.polygon_corners.as_deref(), Some(&[][..]));

    let sofa = &room.objects[0];
    assert_eq!(sofa.category, ObjectCategory::Sofa);
    assert_eq!(sofa.confidence, Confidence::Low);
    assert_eq!(sofa.identifier, "74B1F96D-020B-4469-9F20-5D5DAE6B5B2D");
    assert_eq!(sofa.attributes.as_ref().unwrap()["SofaType"], "rectangular");
    assert_eq!(sofa.transform.column(0), [0.73441005, 0.0, -0.67870605]);
    assert_eq!(
        sofa.transform.translation(),
        [-0.16666663, -0.53158647, -1.2816986]
    );

    let floor = &room.floors[0];
    assert_eq!(floor.category, SurfaceCategory::Floor);
    assert_eq!(
        floor.polygon_corners.as_ref().unwrap()[0],
        [-1.6642354, -2.3292208, -5.9604645e-08]
    );
    // The floor's local z axis (its normal) is world +Y.
    assert_eq!(floor.transform.column(2), [0.0, 1.0, 0.0]);
}

#[test]
fn multi_room_known_values() {
    let room = CapturedRoom::read(&fixture("multi-room.json")).unwrap();
    assert_eq!(element_counts(&room), [20, 4, 4, 0, 1, 13]);
    let labels: Vec<&str> = room.sections.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["bedroom", "bedroom", "bathroom", "unidentified"]);
    let categories: Vec<&str> = room.objects.iter().map(|o| o.category.as_str()).collect();
    assert_eq!(
        categories,
        [
            "chair", "storage", "table", "table", "storage", "table", "bed", "sink", "toilet",
            "table", "bed", "storage", "sofa"
        ]
    );
    let chair = &room.objects[0];
    assert_eq!(chair.attributes.as_ref().unwrap()["ChairType"], "swivel");
    assert_eq!(
        chair.parent_identifier.as_deref(),
        Some("9B859D33-E365-4968-B8BA-2F9BBE25EF97")
    );
    assert_eq!(
        room.objects[4].attributes.as_ref().unwrap()["StorageType"],
        "shelf"
    );
    assert_eq!(room.objects[2].attributes.as_ref().unwrap().len(), 0);
}

/// Column-major reading checked against the physics of the scene: every wall and every object
/// except the (wall-mounted) sink stands on the floor, so centre.y − height/2 = floor.y.
#[test]
fn transforms_are_column_major_and_things_stand_on_the_floor() {
    for (name, floor_y) in [
        ("single-room.json", -1.0231137),
        ("multi-room.json", -1.4856825),
    ] {
        let room = CapturedRoom::read(&fixture(name)).unwrap();
        assert_eq!(room.floors[0].transform.translation()[1], floor_y);
        for s in room.surfaces() {
            s.transform.check_affine().unwrap();
        }
        for w in &room.walls {
            assert_close(
                w.transform.translation()[1] - w.dimensions[1] / 2.0,
                floor_y,
                1e-3,
                name,
            );
            assert_close(w.transform.column(1)[1], 1.0, 1e-6, "wall local y is up");
        }
        for o in room
            .objects
            .iter()
            .filter(|o| o.category != ObjectCategory::Sink)
        {
            o.transform.check_affine().unwrap();
            let lowest = o
                .corners()
                .iter()
                .map(|c| c[1])
                .fold(f64::INFINITY, f64::min);
            assert_close(lowest, floor_y, 1e-3, name);
        }
    }
}

#[test]
fn both_exports_round_trip() {
    for name in ["single-room.json", "multi-room.json"] {
        let text = read_text(name);
        let room = CapturedRoom::from_json_str(&text, name).unwrap();
        let written = serde_json::to_string(&room).unwrap();
        let again = CapturedRoom::from_json_str(&written, "written").unwrap();
        assert_eq!(room, again, "{name}: parse → write → parse changed values");
        // Stronger: the written JSON tree is the input tree (same keys in the same order, same
        // values), so nothing was dropped or invented.
        let input: Value = serde_json::from_str(&text).unwrap();
        let output: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            normalize_numbers(output.clone()),
            normalize_numbers(input.clone()),
            "{name}"
        );
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&output), keys(&input));
        assert_eq!(keys(&output["objects"][0]), keys(&input["objects"][0]));
        assert_eq!(keys(&output["walls"][0]), keys(&input["walls"][0]));
    }
}

#[test]
fn unknown_fields_are_preserved() {
    let mut v: Value = serde_json::from_str(&read_text("single-room.json")).unwrap();
    v["futureTopLevel"] = serde_json::json!({"a": [1, 2]});
    v["objects"][1]["futureObjectField"] = Value::from("x");
    v["walls"][0]["futureSurfaceField"] = Value::from(3);
    let room: CapturedRoom = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        room.extra["futureTopLevel"],
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(room.objects[1].extra["futureObjectField"], "x");
    assert_eq!(room.walls[0].extra["futureSurfaceField"], 3);
    let back = serde_json::to_value(&room).unwrap();
    assert_eq!(back["futureTopLevel"], v["futureTopLevel"]);
    assert_eq!(back["objects"][1]["futureObjectField"], "x");
    assert_eq!(back["walls"][0]["futureSurfaceField"], 3);
}

#[test]
fn bare_string_enums_are_accepted_and_written_as_single_key_objects() {
    let json = r#"{"objects":[{"category":"chair","confidence":"high","dimensions":[1,2,3],
        "identifier":"A","transform":[1,0,0,0, 0,1,0,0, 0,0,1,0, 4,5,6,1]}],
        "doors":[{"category":"door","confidence":{"low":{}},"dimensions":[1,2,0],"identifier":"D",
        "transform":[1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1],"completedEdges":["top",{"left":{}}]}]}"#;
    let room = CapturedRoom::from_json_str(json, "inline").unwrap();
    let chair = &room.objects[0];
    assert_eq!(
        (chair.category, chair.confidence),
        (ObjectCategory::Chair, Confidence::High)
    );
    assert_eq!(chair.transform.translation(), [4.0, 5.0, 6.0]);
    assert_eq!(
        room.doors[0].category,
        SurfaceCategory::Door { is_open: None }
    );
    let out = serde_json::to_value(&room).unwrap();
    assert_eq!(
        out["objects"][0]["category"],
        serde_json::json!({"chair": {}})
    );
    assert_eq!(
        out["objects"][0]["confidence"],
        serde_json::json!({"high": {}})
    );
    assert_eq!(out["doors"][0]["category"], serde_json::json!({"door": {}}));
    assert_eq!(
        out["doors"][0]["completedEdges"],
        serde_json::json!([{"top": {}}, {"left": {}}])
    );
    // iOS 16 style: no story/attributes/polygonCorners → written back without them.
    assert!(out["objects"][0].get("attributes").is_none());
    assert!(out["objects"][0].get("story").is_none());
    assert_eq!(out["floors"], serde_json::json!([]));
}

#[test]
fn bad_input_is_a_clear_error() {
    let err = |json: &str| {
        CapturedRoom::from_json_str(json, "room.json")
            .unwrap_err()
            .to_string()
    };
    let obj = |category: &str| {
        format!(
            r#"{{"objects":[{{"category":{category},"confidence":"high","dimensions":[1,2,3],"identifier":"A","transform":{:?}}}]}}"#,
            Transform::IDENTITY.0
        )
    };
    let e = err(&obj(r#"{"lamp":{}}"#));
    assert!(
        e.starts_with("room.json: not a CapturedRoom export:"),
        "{e}"
    );
    assert!(
        e.contains(r#"unknown ObjectCategory "lamp", expected one of storage, refrigerator"#),
        "{e}"
    );
    let e = err(&obj(r#"{"chair":{},"table":{}}"#));
    assert!(
        e.contains("expected an enum case as a single-key object"),
        "{e}"
    );
    let e = err(&obj(r#"{"chair":{"x":1}}"#));
    assert!(
        e.contains(r#"ObjectCategory "chair" takes no payload"#),
        "{e}"
    );
    let e = err(
        r#"{"objects":[{"category":"chair","confidence":"high","dimensions":[1,2],"identifier":"A","transform":[]}]}"#,
    );
    assert!(e.contains("room.json"), "{e}");
}

#[test]
fn transform_helpers() {
    let t = Transform::from_columns(
        [0.0, 0.0, -1.0],
        [0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [1.0, 2.0, 3.0],
    );
    assert_eq!(t.0[12..15], [1.0, 2.0, 3.0]);
    assert_eq!(t.apply([1.0, 0.0, 0.0]), [1.0, 2.0, 2.0]);
    assert_eq!(t.apply([0.0, 0.0, 1.0]), [2.0, 2.0, 3.0]);
    t.check_affine().unwrap();
    let mut row_major = t;
    row_major.0.swap(3, 12);
    assert!(row_major
        .check_affine()
        .unwrap_err()
        .contains("not column-major"));
}
