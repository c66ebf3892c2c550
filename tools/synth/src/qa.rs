//! Question generation for ScanQA (FORMATS.md §2) and SQA3D (§3). Every answer follows from
//! the room by a fixed rule, documented on each template.

use crate::geom::DetMath;
use crate::geom::{self, Rigid, Vec3};
use crate::scene::{Object, Room};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const NUMBER_WORDS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

/// ScanNet-style label of a class (`tv_monitor` → `tv monitor`).
pub fn label(class: &str) -> String {
    class.replace('_', " ")
}

fn plural(class: &str) -> String {
    let l = label(class);
    if l.ends_with("sh") || l.ends_with('s') {
        format!("{l}es")
    } else if l == "shelf" {
        "shelves".into()
    } else {
        format!("{l}s")
    }
}

fn horizontal_distance(a: &Object, b: &Object) -> f64 {
    (a.centre[0] - b.centre[0]).dhypot(a.centre[1] - b.centre[1])
}

/// A ScanQA question before ids are assigned.
#[derive(Clone, Debug)]
pub struct QaItem {
    pub question: String,
    pub answers: Vec<String>,
    pub object_ids: Vec<u32>,
}

/// Candidate ScanQA questions of a room, one list per template:
/// - colour: "What color is the X?" for classes occurring once → the colour name;
/// - counting: "How many Xs are in the room?" for present classes → digit and word;
/// - existence: "Is there a X in the room?" → yes (objects listed) / no (no objects);
/// - relative position: "What is next to the X?" → the class of the object whose centre is
///   horizontally nearest to X's, when it is clearly nearest (≤ 0.8 × the runner-up).
pub fn scanqa_candidates(room: &Room) -> Vec<Vec<QaItem>> {
    let unique: Vec<&Object> = room
        .objects
        .iter()
        .filter(|o| room.count(&o.class) == 1)
        .collect();
    let mut present: Vec<&str> = room.objects.iter().map(|o| o.class.as_str()).collect();
    present.sort();
    present.dedup();
    let absent: Vec<&str> = crate::scene::CLASSES
        .iter()
        .map(|c| c.name)
        .filter(|c| !present.contains(c))
        .collect();
    let ids_of = |class: &str| {
        room.objects
            .iter()
            .filter(|o| o.class == class)
            .map(|o| o.id)
            .collect::<Vec<_>>()
    };
    let colour = unique
        .iter()
        .map(|o| QaItem {
            question: format!("What color is the {} in the room?", label(&o.class)),
            answers: vec![o.colour.clone()],
            object_ids: vec![o.id],
        })
        .collect();
    let counting = present
        .iter()
        .map(|c| {
            let n = room.count(c);
            QaItem {
                question: format!("How many {} are in the room?", plural(c)),
                answers: vec![
                    n.to_string(),
                    NUMBER_WORDS.get(n).unwrap_or(&"many").to_string(),
                ],
                object_ids: ids_of(c),
            }
        })
        .collect();
    let existence = present
        .iter()
        .map(|c| (c, true))
        .chain(absent.iter().take(3).map(|c| (c, false)))
        .map(|(c, yes)| QaItem {
            question: format!("Is there a {} in the room?", label(c)),
            answers: vec![if yes { "yes" } else { "no" }.to_string()],
            object_ids: if yes { ids_of(c) } else { vec![] },
        })
        .collect();
    let relative = unique
        .iter()
        .filter_map(|a| {
            let mut others: Vec<&Object> = room.objects.iter().filter(|o| o.id != a.id).collect();
            others.sort_by(|x, y| horizontal_distance(a, x).total_cmp(&horizontal_distance(a, y)));
            let nearest = others.first()?;
            let clear = others.get(1).is_none_or(|second| {
                horizontal_distance(a, nearest) <= 0.8 * horizontal_distance(a, second)
            });
            clear.then(|| QaItem {
                question: format!("What is next to the {}?", label(&a.class)),
                answers: vec![label(&nearest.class)],
                object_ids: vec![a.id, nearest.id],
            })
        })
        .collect();
    vec![colour, counting, existence, relative]
}

/// Picks `n` questions, cycling over the templates so every kind is represented.
pub fn pick_scanqa(room: &Room, n: usize, rng: &mut ChaCha8Rng) -> Vec<QaItem> {
    let mut pools = scanqa_candidates(room);
    for p in &mut pools {
        p.shuffle(rng);
    }
    let mut out = Vec::new();
    while out.len() < n && pools.iter().any(|p| !p.is_empty()) {
        for p in &mut pools {
            if out.len() < n {
                if let Some(q) = p.pop() {
                    out.push(q);
                }
            }
        }
    }
    out
}

/// An SQA3D situation: the agent stands at `position` (room frame, on the floor) facing
/// `facing` (unit, horizontal, room frame).
#[derive(Clone, Debug)]
pub struct Situation {
    pub position: Vec3,
    pub facing: Vec3,
    pub text: String,
    pub alternatives: Vec<String>,
    pub questions: Vec<(String, String)>,
}

/// Signed bearing of `p` seen by an agent at `pos` facing `facing`: 0 ahead, +90° on the
/// left (counter-clockwise seen from above), −90° on the right, ±180° behind.
pub fn bearing_deg(pos: Vec3, facing: Vec3, p: Vec3) -> f64 {
    let d = [p[0] - pos[0], p[1] - pos[1], 0.0];
    let left = [-facing[1], facing[0], 0.0];
    geom::dot(d, left).datan2(geom::dot(d, facing)).to_degrees()
}

fn nearest_in(room: &Room, pos: Vec3, facing: Vec3, lo: f64, hi: f64) -> Option<&Object> {
    room.objects
        .iter()
        .filter(|o| {
            let b = bearing_deg(pos, facing, o.centre);
            b >= lo && b <= hi
        })
        .min_by(|a, b| {
            let da = (a.centre[0] - pos[0]).dhypot(a.centre[1] - pos[1]);
            let db = (b.centre[0] - pos[0]).dhypot(b.centre[1] - pos[1]);
            da.total_cmp(&db)
        })
}

/// Questions answered from the situation:
/// - "What is on my left/right?" → nearest object with bearing in [45°, 135°] / [−135°, −45°];
/// - "What is behind me?" → nearest object with |bearing| ≥ 135°;
/// - "What color is the X in front of me?" → the faced object's colour;
/// - "Is the X on my left or on my right?" → sign of the bearing, for |bearing| in [20°, 160°];
/// - "How many chairs are on my left?" → objects of that class with bearing in (0°, 180°).
pub fn situation_questions(
    room: &Room,
    pos: Vec3,
    facing: Vec3,
    target: Option<&Object>,
) -> Vec<(String, String)> {
    let mut qs = Vec::new();
    if let Some(o) = nearest_in(room, pos, facing, 45.0, 135.0) {
        qs.push(("What is on my left?".to_string(), label(&o.class)));
    }
    if let Some(o) = nearest_in(room, pos, facing, -135.0, -45.0) {
        qs.push(("What is on my right?".to_string(), label(&o.class)));
    }
    let behind = room
        .objects
        .iter()
        .filter(|o| bearing_deg(pos, facing, o.centre).abs() >= 135.0)
        .min_by(|a, b| {
            let da = (a.centre[0] - pos[0]).dhypot(a.centre[1] - pos[1]);
            let db = (b.centre[0] - pos[0]).dhypot(b.centre[1] - pos[1]);
            da.total_cmp(&db)
        });
    if let Some(o) = behind {
        qs.push(("What is behind me?".to_string(), label(&o.class)));
    }
    if let Some(t) = target {
        qs.push((
            format!("What color is the {} in front of me?", label(&t.class)),
            t.colour.clone(),
        ));
    }
    for o in &room.objects {
        let b = bearing_deg(pos, facing, o.centre);
        if room.count(&o.class) == 1 && (20.0..=160.0).contains(&b.abs()) {
            let side = if b > 0.0 { "left" } else { "right" };
            qs.push((
                format!("Is the {} on my left or on my right?", label(&o.class)),
                side.to_string(),
            ));
            break;
        }
    }
    if let Some(class) = room
        .objects
        .iter()
        .map(|o| o.class.as_str())
        .find(|c| room.count(c) >= 2)
    {
        let n = room
            .objects
            .iter()
            .filter(|o| {
                o.class == class && {
                    let b = bearing_deg(pos, facing, o.centre);
                    b > 0.0 && b < 180.0
                }
            })
            .count();
        qs.push((
            format!("How many {} are on my left?", plural(class)),
            NUMBER_WORDS.get(n).unwrap_or(&"many").to_string(),
        ));
    }
    qs
}

fn free_point(room: &Room, rng: &mut ChaCha8Rng) -> Option<Vec3> {
    let (hw, hd) = (room.size[0] / 2.0 - 0.4, room.size[1] / 2.0 - 0.4);
    (0..200).find_map(|_| {
        let p = [rng.random_range(-hw..hw), rng.random_range(-hd..hd), 0.0];
        let clear = room.objects.iter().all(|o| {
            let q = geom::mat_vec(&geom::transpose(&o.rotation()), geom::sub(p, o.centre));
            q[0].abs() > o.size[0] / 2.0 + 0.3 || q[1].abs() > o.size[1] / 2.0 + 0.3
        });
        clear.then_some(p)
    })
}

/// `n` situations. Every other situation faces an object; the others face exactly along the
/// raw scan frame's −X (so their quaternion is the identity, written with JSON integers).
pub fn situations(
    room: &Room,
    scannet_from_room: &Rigid,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Situation> {
    let mut out = Vec::new();
    for k in 0..n * 4 {
        if out.len() == n || room.objects.is_empty() {
            break;
        }
        let Some(pos) = free_point(room, rng) else {
            continue;
        };
        let (facing, target) = if k % 2 == 0 {
            let t = &room.objects[rng.random_range(0..room.objects.len())];
            let d = [t.centre[0] - pos[0], t.centre[1] - pos[1], 0.0];
            (geom::normalize(d), Some(t))
        } else {
            let minus_x_raw =
                geom::mat_vec(&geom::transpose(&scannet_from_room.r), [-1.0, 0.0, 0.0]);
            (minus_x_raw, None)
        };
        let questions = situation_questions(room, pos, facing, target);
        if questions.len() < 2 {
            continue;
        }
        let (text, alternatives) = match target {
            Some(t) => (
                format!(
                    "I am standing in front of the {} {}, facing it.",
                    t.colour,
                    label(&t.class)
                ),
                vec![
                    format!("I am looking at the {}.", label(&t.class)),
                    format!(
                        "The {} {} is right in front of me.",
                        t.colour,
                        label(&t.class)
                    ),
                ],
            ),
            None => {
                let side = questions
                    .iter()
                    .find(|(q, _)| q == "What is on my left?" || q == "What is on my right?");
                match side {
                    Some((q, a)) => {
                        let dir = if q.contains("left") { "left" } else { "right" };
                        (
                            format!("I am standing in the room with the {a} on my {dir}."),
                            vec![format!("The {a} is to my {dir}.")],
                        )
                    }
                    None => (
                        "I am standing in the middle of the room.".to_string(),
                        vec![],
                    ),
                }
            }
        };
        // Don't ask what the situation text already says: a side question whose object or
        // answer the text names together with that side.
        let questions = questions
            .into_iter()
            .filter(|(q, a)| !leaks_answer(&text, q, a))
            .collect::<Vec<_>>();
        if questions.is_empty() {
            continue;
        }
        out.push(Situation {
            position: pos,
            facing,
            text,
            alternatives,
            questions,
        });
    }
    out
}

/// True when `text` already answers the side question `q` (e.g. "... the sofa on my left"
/// with "What is on my left?" → sofa, or "Is the sofa on my left or on my right?" → left).
fn leaks_answer(text: &str, q: &str, a: &str) -> bool {
    let side_question = q.starts_with("What is on my") || q.starts_with("Is the ");
    let mentions_side =
        text.contains("on my left") || text.contains("on my right") || text.contains("to my");
    side_question
        && mentions_side
        && (text.contains(a)
            || q.strip_prefix("Is the ")
                .and_then(|r| r.split(" on my").next())
                .is_some_and(|obj| text.contains(obj)))
}

/// SQA3D `position` and `rotation` of a situation: metres in the raw mesh frame centred on the
/// mesh's bounding-box centre, z = 0; yaw-only quaternion with facing = R(q)·(−1, 0, 0).
pub fn sqa3d_pose(
    s: &Situation,
    scannet_from_room: &Rigid,
    mesh_centre: [f64; 3],
) -> (Value, Value) {
    let p = scannet_from_room.apply(s.position);
    let f = scannet_from_room.rotate(s.facing);
    // R(ψ)·(−1,0,0) = (−cos ψ, −sin ψ, 0).
    let yaw = (-f[1]).datan2(-f[0]);
    let (qz, qw) = ((yaw / 2.0).dsin(), (yaw / 2.0).dcos());
    let num = crate::json_number;
    let position = json!({"x": p[0] - mesh_centre[0], "y": p[1] - mesh_centre[1], "z": 0});
    let rotation = json!({"_x": 0, "_y": 0, "_z": num(clean(qz)), "_w": num(clean(qw))});
    (position, rotation)
}

/// Snaps values within 1e-12 of an integer to it (the identity quaternion stays `0`/`1`).
fn clean(x: f64) -> f64 {
    if (x - x.round()).abs() < 1e-12 {
        x.round() + 0.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearings_follow_the_left_hand_rule_seen_from_above() {
        let pos = [0.0, 0.0, 0.0];
        let facing = [1.0, 0.0, 0.0];
        assert!((bearing_deg(pos, facing, [0.0, 1.0, 0.0]) - 90.0).abs() < 1e-9);
        assert!((bearing_deg(pos, facing, [0.0, -1.0, 0.0]) + 90.0).abs() < 1e-9);
        assert!((bearing_deg(pos, facing, [-1.0, 0.0, 0.0]).abs() - 180.0).abs() < 1e-9);
    }

    #[test]
    fn identity_facing_gives_integer_quaternion() {
        let s = Situation {
            position: [0.5, 0.0, 0.0],
            facing: [-1.0, 0.0, 0.0],
            text: String::new(),
            alternatives: vec![],
            questions: vec![],
        };
        let (p, r) = sqa3d_pose(&s, &Rigid::IDENTITY, [0.0, 0.0, 1.2]);
        assert_eq!(r.to_string(), r#"{"_x":0,"_y":0,"_z":0,"_w":1}"#);
        assert_eq!(p.to_string(), r#"{"x":0.5,"y":0.0,"z":0}"#);
    }
}
