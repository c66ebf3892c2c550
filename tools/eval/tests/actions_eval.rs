//! Stage-3 action scores on actions as prep-arkit synthesizes them (texts from its golden dump).

use roomplan_eval::actions::{score_action, summarize, Tolerances};
use roomplan_prep::actions::{validate_text, Action};

const LOCATE: &str = r#"{"action":"locate","object":{"category":{"chair":{}},"attributes":{},"dimensions":[0.555,1.008,0.540],"transform":[0.324,0.000,-0.946,0.000,0.000,1.000,0.000,0.000,0.946,0.000,0.324,0.000,0.898,-0.954,-2.467,1.000]}}"#;
const ROTATE: &str = r#"{"action":"rotate_object","target":{"category":{"sink":{}},"center":[1.201,-1.005,0.143]},"yaw_degrees":45.000}"#;
const COUNT: &str = r#"{"action":"count","category":{"chair":{}},"attributes":{},"count":2}"#;
const ANCHOR: &str = r#"{"action":"place_anchor","category":{"storage":{}},"center":[-0.483,0.110,1.868],"normal":[0.000,1.000,0.000],"extent":[1.183,0.307]}"#;

fn target(text: &str) -> Action {
    validate_text(text).unwrap()
}

#[test]
fn the_target_itself_is_exact_and_correct_with_no_error() {
    let tol = Tolerances::default();
    for text in [LOCATE, ROTATE, COUNT, ANCHOR] {
        let v = score_action(text, &target(text), &tol);
        assert!(
            v.valid && v.exact && v.same_action && v.correct,
            "{text}: {v:?}"
        );
        assert!(v.position_error_m.is_none_or(|e| e == 0.0), "{v:?}");
        assert!(v.angle_error_deg.is_none_or(|e| e.abs() < 1e-9), "{v:?}");
    }
    // Whitespace and key order do not matter; the canonical text does.
    let reordered =
        r#" {"count": 2, "attributes": {}, "category": {"chair": {}}, "action": "count"} "#;
    let v = score_action(reordered, &target(COUNT), &tol);
    assert!(v.exact && v.correct, "{v:?}");
}

#[test]
fn near_misses_are_correct_within_tolerance_but_not_exact() {
    let tol = Tolerances::default();
    // The chair 0.2 m off along x and turned by 180° (a box looks the same): correct, not exact.
    let moved = LOCATE.replace("0.898,-0.954", "1.098,-0.954").replace(
        "[0.324,0.000,-0.946,0.000,0.000,1.000,0.000,0.000,0.946,0.000,0.324",
        "[-0.324,0.000,0.946,0.000,0.000,1.000,0.000,0.000,-0.946,0.000,-0.324",
    );
    let v = score_action(&moved, &target(LOCATE), &tol);
    assert!(v.valid && !v.exact && v.correct, "{v:?}");
    assert!((v.position_error_m.unwrap() - 0.2).abs() < 1e-9);
    assert!(v.angle_error_deg.unwrap() < 1e-6, "{v:?}");
    // 0.3 m off is outside the 0.25 m tolerance.
    let far = LOCATE.replace("0.898,-0.954", "1.198,-0.954");
    assert!(!score_action(&far, &target(LOCATE), &tol).correct);
    // Yaw 50° instead of 45°: within 15°; −175° is 10° from 175° across the wrap.
    let v = score_action(&ROTATE.replace("45.000", "50.000"), &target(ROTATE), &tol);
    assert!(
        v.correct && (v.angle_error_deg.unwrap() - 5.0).abs() < 1e-9,
        "{v:?}"
    );
    let half_turn = target(&ROTATE.replace("45.000", "175.000"));
    let v = score_action(&ROTATE.replace("45.000", "-175.000"), &half_turn, &tol);
    assert!(v.correct && (v.angle_error_deg.unwrap() - 10.0).abs() < 1e-9, "{v:?}");
    // A tilted normal (about 20°) is not.
    let tilted = ANCHOR.replace("[0.000,1.000,0.000]", "[0.342,0.940,0.000]");
    let v = score_action(&tilted, &target(ANCHOR), &tol);
    assert!(
        v.valid && !v.correct && (v.angle_error_deg.unwrap() - 20.0).abs() < 0.01,
        "{v:?}"
    );
}

#[test]
fn wrong_category_count_or_action_is_not_correct_and_invalid_text_says_why() {
    let tol = Tolerances::default();
    let v = score_action(
        &COUNT.replace("\"count\":2", "\"count\":3"),
        &target(COUNT),
        &tol,
    );
    assert!(v.valid && v.same_action && !v.correct);
    let v = score_action(&LOCATE.replace("chair", "table"), &target(LOCATE), &tol);
    assert!(v.valid && v.same_action && !v.correct);
    let v = score_action(COUNT, &target(LOCATE), &tol);
    assert!(v.valid && !v.same_action && !v.correct && v.position_error_m.is_none());
    let v = score_action("the chair is by the window", &target(LOCATE), &tol);
    assert!(!v.valid && !v.correct);
    assert!(v.invalid_reason.unwrap().starts_with("not JSON"), "reason");
    let v = score_action(
        r#"{"action":"count","category":{"chair":{}}}"#,
        &target(COUNT),
        &tol,
    );
    assert!(!v.valid);
    assert!(v
        .invalid_reason
        .unwrap()
        .starts_with("action does not match the schema"));
}

#[test]
fn summary_rates_and_per_action_counts() {
    let tol = Tolerances::default();
    let verdicts = vec![
        score_action(COUNT, &target(COUNT), &tol),
        score_action(
            &COUNT.replace("\"count\":2", "\"count\":3"),
            &target(COUNT),
            &tol,
        ),
        score_action(&ROTATE.replace("45.000", "50.000"), &target(ROTATE), &tol),
        score_action("{", &target(LOCATE), &tol),
    ];
    let s = summarize(&verdicts);
    assert_eq!(
        (s.n, s.valid, s.exact, s.same_action, s.correct),
        (4, 75.0, 25.0, 75.0, 50.0)
    );
    assert_eq!(s.mean_position_error_m, Some(0.0)); // the rotation's target centre matches
    let counts: Vec<(&str, usize, usize, usize, usize)> = s
        .per_action
        .iter()
        .map(|(k, c)| (k.as_str(), c.n, c.valid, c.exact, c.correct))
        .collect();
    assert_eq!(
        counts,
        [
            ("count", 2, 2, 1, 1),
            ("locate", 1, 0, 0, 0),
            ("rotate_object", 1, 1, 0, 1)
        ]
    );
}
