//! Action types, canonical text, the JSON Schema file and the validator.

use std::collections::BTreeMap;

use proptest::prelude::*;
use roomplan_prep::actions::{validate, validate_text, Action, ActionError, ObjectSpec, Schema, Target};
use roomplan_prep::roomplan::{ObjectCategory, Transform};
use serde_json::{json, Value};

fn yaw_transform(yaw_degrees: f64, t: [f64; 3]) -> Transform {
    let (s, c) = yaw_degrees.to_radians().sin_cos();
    // Rotation about +Y: x → (c, 0, −s), z → (s, 0, c).
    Transform::from_columns([c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c], t)
}

fn cabinet() -> ObjectSpec {
    ObjectSpec {
        category: ObjectCategory::Storage,
        attributes: BTreeMap::from([("StorageType".to_string(), "cabinet".to_string())]),
        dimensions: [0.8, 0.9, 0.45],
        transform: yaw_transform(90.0, [1.0, -1.05, -2.5]),
    }
}

/// One example of every action, with its exact canonical text.
fn examples() -> Vec<(Action, &'static str)> {
    let target = Target {
        category: ObjectCategory::Chair,
        center: [0.5, -1.1, -2.0],
    };
    vec![
        (
            Action::PlaceAnchor {
                category: ObjectCategory::Table,
                center: [0.25, -0.75, -1.5],
                normal: [0.0, 1.0, 0.0],
                extent: [1.2, 0.8],
            },
            r#"{"action":"place_anchor","category":{"table":{}},"center":[0.250,-0.750,-1.500],"normal":[0.000,1.000,0.000],"extent":[1.200,0.800]}"#,
        ),
        (
            Action::Locate { object: cabinet() },
            r#"{"action":"locate","object":{"category":{"storage":{}},"attributes":{"StorageType":"cabinet"},"dimensions":[0.800,0.900,0.450],"transform":[0.000,0.000,-1.000,0.000,0.000,1.000,0.000,0.000,1.000,0.000,0.000,0.000,1.000,-1.050,-2.500,1.000]}}"#,
        ),
        (
            Action::ListObjects { objects: vec![] },
            r#"{"action":"list_objects","objects":[]}"#,
        ),
        (
            Action::AddObject {
                object: ObjectSpec {
                    category: ObjectCategory::Chair,
                    attributes: BTreeMap::new(),
                    dimensions: [0.5, 0.9, 0.5],
                    transform: Transform::from_columns(
                        [1.0, 0.0, 0.0],
                        [0.0, 1.0, 0.0],
                        [0.0, 0.0, 1.0],
                        [2.0, -1.05, -3.0],
                    ),
                },
            },
            r#"{"action":"add_object","object":{"category":{"chair":{}},"attributes":{},"dimensions":[0.500,0.900,0.500],"transform":[1.000,0.000,0.000,0.000,0.000,1.000,0.000,0.000,0.000,0.000,1.000,0.000,2.000,-1.050,-3.000,1.000]}}"#,
        ),
        (
            Action::MoveObject {
                target,
                translation: [-0.5, 0.0, 0.0],
            },
            r#"{"action":"move_object","target":{"category":{"chair":{}},"center":[0.500,-1.100,-2.000]},"translation":[-0.500,0.000,0.000]}"#,
        ),
        (
            Action::RotateObject {
                target,
                yaw_degrees: -90.0,
            },
            r#"{"action":"rotate_object","target":{"category":{"chair":{}},"center":[0.500,-1.100,-2.000]},"yaw_degrees":-90.000}"#,
        ),
        (
            Action::RemoveObject { target },
            r#"{"action":"remove_object","target":{"category":{"chair":{}},"center":[0.500,-1.100,-2.000]}}"#,
        ),
        (
            Action::Count {
                category: ObjectCategory::Chair,
                attributes: BTreeMap::new(),
                count: 3,
            },
            r#"{"action":"count","category":{"chair":{}},"attributes":{},"count":3}"#,
        ),
    ]
}

#[test]
fn every_action_has_its_canonical_text_and_validates() {
    let examples = examples();
    let names: Vec<&str> = examples.iter().map(|(a, _)| a.name()).collect();
    assert_eq!(
        names,
        [
            "place_anchor",
            "locate",
            "list_objects",
            "add_object",
            "move_object",
            "rotate_object",
            "remove_object",
            "count"
        ]
    );
    for (action, text) in examples {
        assert_eq!(action.canonical_json(), text);
        let parsed = validate_text(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed, action.canonicalized());
        assert_eq!(parsed.canonical_json(), text, "canonical text is a fixed point");
    }
}

#[test]
fn canonical_numbers_are_rounded_to_millimetres_with_one_zero() {
    let action = Action::MoveObject {
        target: Target {
            category: ObjectCategory::Sofa,
            center: [1.23449, -0.0004, 1e-9],
        },
        translation: [-0.0, 2.0 / 3.0, -1.0005],
    };
    assert_eq!(
        action.canonical_json(),
        r#"{"action":"move_object","target":{"category":{"sofa":{}},"center":[1.234,0.000,0.000]},"translation":[0.000,0.667,-1.000]}"#
    );
}

fn error_text(value: Value) -> String {
    validate(&value).unwrap_err().to_string()
}

#[test]
fn wrong_shapes_are_rejected_with_the_place_and_the_expectation() {
    let good: Value = serde_json::from_str(examples()[1].1).unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!([1, 2]),
            "action does not match the schema: /: expected object, got array [1,2]",
        ),
        (
            json!({"category": {"chair": {}}}),
            r#"/: missing required property "action""#,
        ),
        (
            json!({"action": "jump"}),
            r#"/action: string "jump" is not one of "place_anchor", "locate", "list_objects", "add_object", "move_object", "rotate_object", "remove_object", "count""#,
        ),
        (json!({"action": "locate"}), r#"/: missing required property "object""#),
        (
            {
                let mut v = good.clone();
                v["extra"] = json!(1);
                v
            },
            r#"/extra: property "extra" is not allowed (allowed: action, object)"#,
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["dimensions"] = json!([1, 2]);
                v
            },
            "/object/dimensions: expected 3 items, got 2",
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["dimensions"][1] = json!(-0.5);
                v
            },
            "/object/dimensions/1: -0.5 must be greater than 0",
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["dimensions"][0] = json!("wide");
                v
            },
            r#"/object/dimensions/0: expected number, got string "wide""#,
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["category"] = json!("storage");
                v
            },
            r#"/object/category: expected object, got string "storage""#,
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["category"] = json!({"lamp": {}});
                v
            },
            r#"/object/category/lamp: property name "lamp" not allowed: string "lamp" is not one of "storage""#,
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["category"] = json!({"chair": {"x": 1}});
                v
            },
            "/object/category/chair: expected at most 0 properties, got 1",
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["attributes"] = json!({"StorageType": 3});
                v
            },
            "/object/attributes/StorageType: expected string, got number 3",
        ),
        (
            {
                let mut v = good.clone();
                v["object"]["transform"] = json!([1, 0, 0]);
                v
            },
            "/object/transform: expected 16 items, got 3",
        ),
        (
            json!({"action": "count", "category": {"chair": {}}, "attributes": {}, "count": 2.5}),
            "/count: expected integer, got number 2.5",
        ),
        (
            json!({"action": "count", "category": {"chair": {}}, "attributes": {}, "count": -1}),
            "/count: -1 is below the minimum 0",
        ),
        (
            json!({"action": "rotate_object", "target": {"category": {"bed": {}}, "center": [0, 0, 0]}, "yaw_degrees": 270}),
            "/yaw_degrees: 270 is above the maximum 180",
        ),
    ];
    for (value, expected) in cases {
        let e = error_text(value.clone());
        assert!(
            e.contains(expected),
            "for {value}:\n  got      {e}\n  expected {expected}"
        );
    }
}

#[test]
fn several_problems_are_all_reported() {
    let e = error_text(json!({"action": "move_object", "target": {"category": {"bed": {}}}, "translation": [1, 2]}));
    assert_eq!(
        e,
        r#"action does not match the schema: /target: missing required property "center"; /translation: expected 3 items, got 2"#
    );
}

#[test]
fn geometry_the_schema_cannot_express_is_checked() {
    let good: Value = serde_json::from_str(examples()[1].1).unwrap();
    let with_transform = |t: [f64; 16]| {
        let mut v = good.clone();
        v["object"]["transform"] = json!(t);
        error_text(v)
    };
    let mut row_major = Transform::IDENTITY.0;
    row_major[3] = 1.5; // translation written in the bottom row
    assert!(with_transform(row_major).contains("/object/transform: transform is not column-major affine"));
    let mut scaled = Transform::IDENTITY.0;
    scaled[0] = 2.0;
    assert_eq!(
        with_transform(scaled),
        "action is not geometrically valid: /object/transform: rotation columns are not orthonormal: column 0 · column 0 = 4.0000, expected 1"
    );
    let mut mirrored = Transform::IDENTITY.0;
    mirrored[10] = -1.0;
    assert!(with_transform(mirrored).contains("rotation is a reflection (determinant -1.0000)"));
    let anchor = json!({"action": "place_anchor", "category": {"bed": {}}, "center": [0, 0, 0], "normal": [0, 0.5, 0], "extent": [1, 1]});
    assert_eq!(
        error_text(anchor),
        "action is not geometrically valid: /normal: length 0.5000, expected a unit vector"
    );
}

#[test]
fn model_output_text_errors() {
    match validate_text("{\"action\": \"count\",").unwrap_err() {
        ActionError::NotJson(msg) => assert!(msg.contains("EOF"), "{msg}"),
        other => panic!("expected NotJson, got {other}"),
    }
    // Surrounding whitespace is fine, integers for floats are fine.
    let a =
        validate_text(" {\"action\":\"remove_object\",\"target\":{\"category\":{\"bed\":{}},\"center\":[1,0,-2]}}\n")
            .unwrap();
    assert_eq!(
        a,
        Action::RemoveObject {
            target: Target {
                category: ObjectCategory::Bed,
                center: [1.0, 0.0, -2.0]
            }
        }
    );
}

#[test]
fn schema_file_is_the_one_in_the_repository_and_uses_only_supported_keywords() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/roomplan_actions.schema.json");
    let on_disk = std::fs::read_to_string(path).unwrap();
    assert_eq!(on_disk, roomplan_prep::actions::SCHEMA_JSON);
    let schema: Value = serde_json::from_str(&on_disk).unwrap();
    Schema::new(schema.clone()).unwrap();
    // Every action has a definition and a dispatch branch.
    let names = schema["properties"]["action"]["enum"].as_array().unwrap();
    assert_eq!(names.len(), 8);
    for name in names {
        assert!(schema["$defs"][name.as_str().unwrap()].is_object(), "{name}");
    }
    assert_eq!(schema["allOf"].as_array().unwrap().len(), 8);
    // The category list matches the Rust enum.
    let categories: Vec<&str> = schema["$defs"]["category"]["propertyNames"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let rust: Vec<&str> = ObjectCategory::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(categories, rust);
}

#[test]
fn unsupported_schema_keywords_and_dangling_references_are_refused() {
    let e = Schema::new(json!({"type": "string", "pattern": "^a"})).unwrap_err();
    assert_eq!(e, r#"#: unsupported JSON Schema keyword "pattern""#);
    let e = Schema::new(json!({"properties": {"a": {"$ref": "#/$defs/missing"}}})).unwrap_err();
    assert_eq!(
        e,
        r##"#/properties/a/$ref: reference "#/$defs/missing" does not resolve"##
    );
    let e = Schema::new(json!({"items": {"oneOf": []}})).unwrap_err();
    assert_eq!(e, r#"#/items: unsupported JSON Schema keyword "oneOf""#);
}

fn arb_category() -> impl Strategy<Value = ObjectCategory> {
    proptest::sample::select(ObjectCategory::ALL.to_vec())
}

fn arb_vec3() -> impl Strategy<Value = [f64; 3]> {
    prop::array::uniform3(-10.0..10.0f64)
}

fn arb_object() -> impl Strategy<Value = ObjectSpec> {
    (
        arb_category(),
        prop::array::uniform3(0.01..4.0f64),
        -180.0..180.0f64,
        arb_vec3(),
    )
        .prop_map(|(category, dimensions, yaw, t)| ObjectSpec {
            category,
            attributes: BTreeMap::new(),
            dimensions,
            transform: yaw_transform(yaw, t),
        })
}

fn arb_target() -> impl Strategy<Value = Target> {
    (arb_category(), arb_vec3()).prop_map(|(category, center)| Target { category, center })
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (arb_category(), arb_vec3(), prop::array::uniform2(0.01..4.0f64)).prop_map(|(category, center, extent)| {
            Action::PlaceAnchor {
                category,
                center,
                normal: [0.0, 1.0, 0.0],
                extent,
            }
        }),
        arb_object().prop_map(|object| Action::Locate { object }),
        prop::collection::vec(arb_object(), 0..4).prop_map(|objects| Action::ListObjects { objects }),
        arb_object().prop_map(|object| Action::AddObject { object }),
        (arb_target(), arb_vec3()).prop_map(|(target, translation)| Action::MoveObject { target, translation }),
        (arb_target(), -180.0..180.0f64)
            .prop_map(|(target, yaw_degrees)| Action::RotateObject { target, yaw_degrees }),
        arb_target().prop_map(|target| Action::RemoveObject { target }),
        (arb_category(), 0..50u64).prop_map(|(category, count)| Action::Count {
            category,
            attributes: BTreeMap::new(),
            count
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Canonical text validates, parses back to an action within half a millimetre, and is a
    /// fixed point of parse → write.
    #[test]
    fn canonical_text_round_trips(action in arb_action()) {
        let text = action.canonical_json();
        let parsed = validate_text(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&parsed.canonical_json(), &text);
        prop_assert_eq!(parsed.name(), action.name());
        let numbers = |a: &Action| -> Vec<f64> {
            fn walk(v: &Value, out: &mut Vec<f64>) {
                match v {
                    Value::Number(n) => out.push(n.as_f64().unwrap()),
                    Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                    Value::Object(o) => o.values().for_each(|x| walk(x, out)),
                    _ => {}
                }
            }
            let mut out = Vec::new();
            walk(&serde_json::to_value(a).unwrap(), &mut out);
            out
        };
        let (before, after) = (numbers(&action), numbers(&parsed));
        prop_assert_eq!(before.len(), after.len());
        for (x, y) in before.iter().zip(&after) {
            prop_assert!((x - y).abs() <= 0.0005 + 1e-12, "{} vs {}", x, y);
        }
    }
}
