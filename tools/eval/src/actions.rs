//! Stage-3 scores: a model's RoomPlan action text against the synthesized target action.
//!
//! Per pair, from strict to lenient:
//! - `valid`: the text passes the same validator prep uses (JSON Schema + geometric checks,
//!   `roomplan_prep::actions::validate_text`);
//! - `exact`: valid, and its canonical text equals the target's canonical text (3 decimals);
//! - `same_action`: the `action` names agree;
//! - `correct`: same action and every field within [`Tolerances`]: categories and attributes equal,
//!   counts equal, positions (centres, translations) within `position_m`, box sizes per axis within
//!   `size_m`, yaw and normals within `angle_deg`; `list_objects` needs the same number of objects,
//!   each matched one to one (in the documented list order) within tolerance.
//!
//! Geometric errors (`position_error_m`, `angle_error_deg`) are reported for pairs of the same action
//! where they apply, so a mean error can be given beside the rates.

use std::collections::BTreeMap;

use roomplan_prep::actions::{validate_text, Action, ObjectSpec, Target};
use roomplan_prep::geometry::norm;

use crate::answers::percent;
use serde::Serialize;

/// How close a field must be to count as correct.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    pub position_m: f64,
    pub size_m: f64,
    pub angle_deg: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            position_m: 0.25,
            size_m: 0.25,
            angle_deg: 15.0,
        }
    }
}

/// The verdict on one prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionVerdict {
    /// The target's action name.
    pub action: &'static str,
    pub valid: bool,
    /// Why the prediction is invalid (validator message), when it is.
    pub invalid_reason: Option<String>,
    pub exact: bool,
    pub same_action: bool,
    pub correct: bool,
    /// Largest position error of the compared fields (metres), for same-action pairs that have one.
    pub position_error_m: Option<f64>,
    /// Largest angle error of the compared fields (degrees), where the action has one.
    pub angle_error_deg: Option<f64>,
}

/// Scores `prediction` (model output text) against `target` (a synthesized, valid action).
pub fn score_action(prediction: &str, target: &Action, tol: &Tolerances) -> ActionVerdict {
    let mut verdict = ActionVerdict {
        action: target.name(),
        valid: false,
        invalid_reason: None,
        exact: false,
        same_action: false,
        correct: false,
        position_error_m: None,
        angle_error_deg: None,
    };
    let predicted = match validate_text(prediction.trim()) {
        Ok(action) => action,
        Err(e) => {
            verdict.invalid_reason = Some(e.to_string());
            return verdict;
        }
    };
    verdict.valid = true;
    verdict.exact = predicted.canonical_json() == target.canonical_json();
    verdict.same_action = predicted.name() == target.name();
    if verdict.same_action {
        let c = compare(&predicted, target);
        verdict.position_error_m = c.position;
        verdict.angle_error_deg = c.angle;
        verdict.correct = c.discrete_equal
            && c.position.is_none_or(|e| e <= tol.position_m)
            && c.size.is_none_or(|e| e <= tol.size_m)
            && c.angle.is_none_or(|e| e <= tol.angle_deg);
    }
    verdict
}

/// Field-by-field differences of two actions of the same kind.
#[derive(Default)]
struct Comparison {
    /// Categories, attributes, counts, list lengths all equal.
    discrete_equal: bool,
    position: Option<f64>,
    size: Option<f64>,
    angle: Option<f64>,
}

impl Comparison {
    fn position(&mut self, e: f64) {
        self.position = Some(self.position.map_or(e, |p| p.max(e)));
    }
    fn size(&mut self, e: f64) {
        self.size = Some(self.size.map_or(e, |p| p.max(e)));
    }
    fn angle(&mut self, e: f64) {
        self.angle = Some(self.angle.map_or(e, |p| p.max(e)));
    }
    fn object(&mut self, a: &ObjectSpec, b: &ObjectSpec) {
        self.discrete_equal &= a.category == b.category && a.attributes == b.attributes;
        self.position(distance(a.center(), b.center()));
        let size = (0..3)
            .map(|i| (a.dimensions[i] - b.dimensions[i]).abs())
            .fold(0.0, f64::max);
        self.size(size);
        self.angle(yaw_difference_deg(
            box_yaw(a),
            box_yaw(b),
            symmetric_period(b),
        ));
    }
    fn target(&mut self, a: &Target, b: &Target) {
        self.discrete_equal &= a.category == b.category;
        self.position(distance(a.center, b.center));
    }
}

fn compare(p: &Action, t: &Action) -> Comparison {
    let mut c = Comparison {
        discrete_equal: true,
        ..Default::default()
    };
    match (p, t) {
        (
            Action::PlaceAnchor {
                category: pc,
                center: pp,
                normal: pn,
                extent: pe,
            },
            Action::PlaceAnchor {
                category: tc,
                center: tp,
                normal: tn,
                extent: te,
            },
        ) => {
            c.discrete_equal = pc == tc;
            c.position(distance(*pp, *tp));
            c.size((pe[0] - te[0]).abs().max((pe[1] - te[1]).abs()));
            c.angle(angle_between_deg(*pn, *tn));
        }
        (Action::Locate { object: a }, Action::Locate { object: b })
        | (Action::AddObject { object: a }, Action::AddObject { object: b }) => c.object(a, b),
        (Action::ListObjects { objects: a }, Action::ListObjects { objects: b }) => {
            c.discrete_equal = a.len() == b.len();
            for (x, y) in a.iter().zip(b) {
                c.object(x, y);
            }
        }
        (
            Action::MoveObject {
                target: a,
                translation: ta,
            },
            Action::MoveObject {
                target: b,
                translation: tb,
            },
        ) => {
            c.target(a, b);
            c.position(distance(*ta, *tb));
        }
        (
            Action::RotateObject {
                target: a,
                yaw_degrees: ya,
            },
            Action::RotateObject {
                target: b,
                yaw_degrees: yb,
            },
        ) => {
            c.target(a, b);
            c.angle(yaw_difference_deg(*ya, *yb, 360.0));
        }
        (Action::RemoveObject { target: a }, Action::RemoveObject { target: b }) => c.target(a, b),
        (
            Action::Count {
                category: ca,
                attributes: aa,
                count: na,
            },
            Action::Count {
                category: cb,
                attributes: ab,
                count: nb,
            },
        ) => c.discrete_equal = ca == cb && aa == ab && na == nb,
        _ => c.discrete_equal = false,
    }
    c
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    norm(&[a[0] - b[0], a[1] - b[1], a[2] - b[2]])
}

fn angle_between_deg(a: [f64; 3], b: [f64; 3]) -> f64 {
    let dot: f64 = (0..3).map(|i| a[i] * b[i]).sum();
    let norms = norm(&a) * norm(&b);
    if norms == 0.0 {
        return 180.0;
    }
    (dot / norms).clamp(-1.0, 1.0).acos().to_degrees()
}

/// Yaw of a box's width axis about +Y (Y-up frame), degrees, counter-clockwise seen from above.
fn box_yaw(o: &ObjectSpec) -> f64 {
    let x = o.transform.column(0);
    (-x[2]).atan2(x[0]).to_degrees()
}

/// A box looks the same after a half turn, and after a quarter turn when its footprint is square.
fn symmetric_period(o: &ObjectSpec) -> f64 {
    if (o.dimensions[0] - o.dimensions[2]).abs() < 1e-3 {
        90.0
    } else {
        180.0
    }
}

/// The smallest difference between two angles modulo `period` (degrees).
fn yaw_difference_deg(a: f64, b: f64, period: f64) -> f64 {
    let d = (a - b).rem_euclid(period);
    d.min(period - d)
}

/// Rates (×100) and mean errors over a set of verdicts, overall and per action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionSummary {
    pub n: usize,
    pub valid: f64,
    pub exact: f64,
    pub same_action: f64,
    pub correct: f64,
    /// Mean of `position_error_m` where present.
    pub mean_position_error_m: Option<f64>,
    pub per_action: BTreeMap<String, ActionCounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ActionCounts {
    pub n: usize,
    pub valid: usize,
    pub exact: usize,
    pub correct: usize,
}

pub fn summarize(verdicts: &[ActionVerdict]) -> ActionSummary {
    let n = verdicts.len();
    let rate = |f: fn(&ActionVerdict) -> bool| percent(verdicts.iter().filter(|v| f(v)).count(), n);
    let errors: Vec<f64> = verdicts.iter().filter_map(|v| v.position_error_m).collect();
    let mut per_action: BTreeMap<String, ActionCounts> = BTreeMap::new();
    for v in verdicts {
        let c = per_action.entry(v.action.to_string()).or_default();
        c.n += 1;
        c.valid += v.valid as usize;
        c.exact += v.exact as usize;
        c.correct += v.correct as usize;
    }
    ActionSummary {
        n,
        valid: rate(|v| v.valid),
        exact: rate(|v| v.exact),
        same_action: rate(|v| v.same_action),
        correct: rate(|v| v.correct),
        mean_position_error_m: (!errors.is_empty())
            .then(|| errors.iter().sum::<f64>() / errors.len() as f64),
        per_action,
    }
}
