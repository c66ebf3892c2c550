//! Seeded instruction → action templates over a room's objects in the reference frame.
//!
//! Every instruction refers to objects unambiguously and its action is computed from the
//! annotation alone. Conventions a reader of the instructions needs:
//! - directions are those of the first selected view: *left/right* = ∓X, *forward* (away from
//!   where the capture started) = −Z, *backward* = +Z; distances are metres;
//! - distances between objects are horizontal (XZ) distances between box centres;
//! - the floor is the lowest box bottom of the room; added objects stand on it, axis-aligned
//!   with the reference frame, their centre offset from the named object's centre;
//! - *clockwise* is seen from above: clockwise 90° is `yaw_degrees = -90`.
//!
//! Descriptions are only used when they single out one object with a margin: the best and the
//! second-best candidate differ by at least [`DISTANCE_MARGIN_M`] (positions) or the ratio
//! [`VOLUME_RATIO`] (sizes).

use std::collections::BTreeMap;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::{list_order, Action, ObjectSpec};
use crate::roomplan::{ObjectCategory, Transform};

/// Positions must differ by this much for "closest", "leftmost", … to be unambiguous.
pub const DISTANCE_MARGIN_M: f64 = 0.3;
/// Volumes must differ by this factor for "largest" / "smallest".
pub const VOLUME_RATIO: f64 = 1.25;
/// Gap kept between an added object and everything else.
pub const CLEARANCE_M: f64 = 0.2;

/// One object of the room: its RoomPlan form in the reference frame and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomObject {
    /// The source's id for the object (ARKitScenes `uid`).
    pub source_id: String,
    pub spec: ObjectSpec,
}

/// What the templates know about a room.
#[derive(Debug, Clone)]
pub struct Room {
    pub objects: Vec<RoomObject>,
    /// A convex polygon of floor `(x, z)` known to be inside the room, counter-clockwise in
    /// (x, z) coordinates (e.g. [`floor_region`] of objects and camera positions); added objects
    /// must fit inside it.
    pub floor_region: Vec<[f64; 2]>,
}

/// How many instructions of each family to draw per scene (fewer when the room allows fewer).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SynthesisConfig {
    pub seed: u64,
    pub place_anchor: usize,
    pub locate: usize,
    pub list_objects: usize,
    pub add_object: usize,
    pub move_object: usize,
    pub rotate_object: usize,
    pub remove_object: usize,
    pub count: usize,
}

impl Default for SynthesisConfig {
    fn default() -> Self {
        SynthesisConfig {
            seed: 0,
            place_anchor: 2,
            locate: 3,
            list_objects: 1,
            add_object: 1,
            move_object: 1,
            rotate_object: 1,
            remove_object: 1,
            count: 2,
        }
    }
}

/// One synthesized sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub text: String,
    pub action: Action,
    /// Indices (into the room's objects) of the objects the instruction is about.
    pub objects: Vec<usize>,
}

/// The noun a person would use for an object: finer than the RoomPlan category where the
/// attributes say more (cabinet, shelf, stool).
pub fn noun(spec: &ObjectSpec) -> &'static str {
    let attr = |key: &str| spec.attributes.get(key).map(String::as_str);
    match (spec.category, attr("StorageType"), attr("ChairType")) {
        (ObjectCategory::Storage, Some("cabinet"), _) => "cabinet",
        (ObjectCategory::Storage, Some("shelf"), _) => "shelf",
        (ObjectCategory::Storage, _, _) => "storage unit",
        (ObjectCategory::Chair, _, Some("stool")) => "stool",
        (ObjectCategory::WasherDryer, _, _) => "washer",
        (ObjectCategory::Television, _, _) => "TV",
        (ObjectCategory::Stairs, _, _) => "staircase",
        (c, _, _) => c.as_str(),
    }
}

/// The (category, attributes) filter a noun stands for.
fn noun_filter(noun: &str) -> Option<(ObjectCategory, BTreeMap<String, String>)> {
    let with = |c, k: &str, v: &str| Some((c, BTreeMap::from([(k.to_string(), v.to_string())])));
    match noun {
        "cabinet" => with(ObjectCategory::Storage, "StorageType", "cabinet"),
        "shelf" => with(ObjectCategory::Storage, "StorageType", "shelf"),
        "stool" => with(ObjectCategory::Chair, "ChairType", "stool"),
        "washer" => Some((ObjectCategory::WasherDryer, BTreeMap::new())),
        "TV" => Some((ObjectCategory::Television, BTreeMap::new())),
        "staircase" => Some((ObjectCategory::Stairs, BTreeMap::new())),
        "storage unit" => Some((ObjectCategory::Storage, BTreeMap::new())),
        other => ObjectCategory::from_name(other).map(|c| (c, BTreeMap::new())),
    }
}

/// Nouns the count family may ask about when absent (count 0).
const COUNTABLE_NOUNS: &[&str] = &[
    "cabinet",
    "shelf",
    "refrigerator",
    "stove",
    "bed",
    "sink",
    "washer",
    "toilet",
    "bathtub",
    "oven",
    "dishwasher",
    "fireplace",
    "stool",
    "chair",
    "table",
    "TV",
    "sofa",
];

fn plural(noun: &str) -> String {
    match noun {
        "shelf" => "shelves".into(),
        "bench" => "benches".into(),
        other => format!("{other}s"),
    }
}

fn matches(spec: &ObjectSpec, category: ObjectCategory, attributes: &BTreeMap<String, String>) -> bool {
    spec.category == category && attributes.iter().all(|(k, v)| spec.attributes.get(k) == Some(v))
}

fn horizontal_distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    (a[0] - b[0]).hypot(a[2] - b[2])
}

/// A description that singles out `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Referent {
    pub index: usize,
    pub phrase: String,
}

/// Every unambiguous description of the room's objects this module knows, in a fixed order.
pub fn referents(objects: &[RoomObject]) -> Vec<Referent> {
    let mut by_noun: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        by_noun.entry(noun(&o.spec)).or_default().push(i);
    }
    let unique: Vec<(&str, usize)> = by_noun
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(n, v)| (*n, v[0]))
        .collect();
    let mut out = Vec::new();
    for (&name, members) in &by_noun {
        if members.len() == 1 {
            out.push(Referent {
                index: members[0],
                phrase: format!("the {name}"),
            });
            continue;
        }
        let center = |i: usize| objects[i].spec.center();
        // (phrase, score to minimise, whether scores are ratios)
        let mut superlative = |phrase: String, score: &dyn Fn(usize) -> f64, ratio: bool| {
            let mut ranked: Vec<(f64, usize)> = members.iter().map(|&i| (score(i), i)).collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (best, second) = (ranked[0].0, ranked[1].0);
            let clear = if ratio {
                second.abs() >= best.abs() * VOLUME_RATIO
            } else {
                second - best >= DISTANCE_MARGIN_M
            };
            if clear {
                out.push(Referent {
                    index: ranked[0].1,
                    phrase,
                });
            }
        };
        let volume = |i: usize| objects[i].spec.volume();
        superlative(format!("the largest {name}"), &|i| 1.0 / volume(i), true);
        superlative(format!("the smallest {name}"), &volume, true);
        superlative(format!("the leftmost {name}"), &|i| center(i)[0], false);
        superlative(format!("the rightmost {name}"), &|i| -center(i)[0], false);
        superlative(
            format!("the {name} nearest to where I started"),
            &|i| horizontal_distance(center(i), [0.0; 3]),
            false,
        );
        for &(anchor_noun, anchor) in &unique {
            let anchor_center = center(anchor);
            superlative(
                format!("the {name} closest to the {anchor_noun}"),
                &|i| horizontal_distance(center(i), anchor_center),
                false,
            );
        }
    }
    out
}

/// The floor height: the lowest box bottom.
pub fn floor_y(objects: &[RoomObject]) -> f64 {
    objects
        .iter()
        .flat_map(|o| o.spec.corners())
        .map(|c| c[1])
        .fold(f64::INFINITY, f64::min)
}

/// Axis-aligned horizontal footprint `[x_min, z_min, x_max, z_max]` of a box.
pub fn footprint(spec: &ObjectSpec) -> [f64; 4] {
    spec.corners().iter().fold(
        [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY],
        |f, c| [f[0].min(c[0]), f[1].min(c[2]), f[2].max(c[0]), f[3].max(c[2])],
    )
}

/// The convex hull of `(x, z)` points, counter-clockwise in (x, z) coordinates: floor that lies
/// inside a convex room when every point does.
pub fn floor_region(points: impl IntoIterator<Item = [f64; 2]>) -> Vec<[f64; 2]> {
    let mut pts: Vec<[f64; 2]> = points
        .into_iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
        .collect();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    // Andrew's monotone chain: lower and upper hulls, counter-clockwise in (x, z).
    let turn = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(2 * pts.len());
    for pass in [pts.clone(), pts.iter().rev().copied().collect()] {
        let start = hull.len();
        for p in pass {
            while hull.len() >= start + 2 && turn(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// Whether `p` lies inside (or on) a convex polygon from [`floor_region`].
pub fn inside_convex(polygon: &[[f64; 2]], p: [f64; 2]) -> bool {
    polygon.len() >= 3
        && (0..polygon.len()).all(|i| {
            let (a, b) = (polygon[i], polygon[(i + 1) % polygon.len()]);
            (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0.0
        })
}

fn overlaps(a: [f64; 4], b: [f64; 4], gap: f64) -> bool {
    a[0] < b[2] + gap && b[0] < a[2] + gap && a[1] < b[3] + gap && b[1] < a[3] + gap
}

/// Typical sizes `[width, height, depth]` of objects the add family creates.
const ADDABLE: &[(&str, [f64; 3])] = &[
    ("chair", [0.5, 0.9, 0.5]),
    ("stool", [0.4, 0.65, 0.4]),
    ("table", [1.2, 0.75, 0.8]),
    ("cabinet", [0.8, 0.9, 0.45]),
    ("shelf", [0.8, 1.8, 0.35]),
    ("sofa", [2.0, 0.85, 0.9]),
];

/// Horizontal directions of the first view: (words, unit vector).
const DIRECTIONS: &[(&str, [f64; 3])] = &[
    ("to the left", [-1.0, 0.0, 0.0]),
    ("to the right", [1.0, 0.0, 0.0]),
    ("forward", [0.0, 0.0, -1.0]),
    ("backward", [0.0, 0.0, 1.0]),
];

/// Relative positions for added objects: (words, unit vector).
const SIDES: &[(&str, [f64; 3])] = &[
    ("to the left of", [-1.0, 0.0, 0.0]),
    ("to the right of", [1.0, 0.0, 0.0]),
    ("behind", [0.0, 0.0, -1.0]),
    ("in front of", [0.0, 0.0, 1.0]),
];

const MOVE_DISTANCES_M: &[f64] = &[0.25, 0.5, 1.0, 1.5];
/// (yaw degrees, phrase).
const TURNS: &[(f64, &str)] = &[
    (-90.0, "90 degrees clockwise"),
    (90.0, "90 degrees counterclockwise"),
    (-45.0, "45 degrees clockwise"),
    (45.0, "45 degrees counterclockwise"),
    (180.0, "180 degrees"),
];

const SUPPORTS: &[ObjectCategory] = &[
    ObjectCategory::Table,
    ObjectCategory::Bed,
    ObjectCategory::Storage,
    ObjectCategory::WasherDryer,
    ObjectCategory::Dishwasher,
    ObjectCategory::Stove,
];

mod phrasings {
    pub const PLACE_ANCHOR: &[&str] = &[
        "Place an anchor on {ref}.",
        "Put an anchor on top of {ref}.",
        "Drop a marker on the top surface of {ref}.",
    ];
    pub const LOCATE: &[&str] = &[
        "Where is {ref}?",
        "Locate {ref}.",
        "Find {ref} and give its box.",
        "Show me {ref}.",
    ];
    pub const LIST: &[&str] = &[
        "List all the objects in the room.",
        "What furniture is in this room?",
        "Give me every object in the room as RoomPlan objects.",
    ];
    pub const ADD: &[&str] = &[
        "Add a {noun} {d} m {side} {ref}.",
        "Put a new {noun} {side} {ref}, {d} metres from its centre.",
        "Place an extra {noun} {d} m {side} {ref}.",
    ];
    pub const MOVE: &[&str] = &[
        "Move {ref} {d} m {dir}.",
        "Shift {ref} {d} metres {dir}.",
        "Slide {ref} {dir} by {d} m.",
    ];
    pub const ROTATE: &[&str] = &[
        "Rotate {ref} {turn}.",
        "Turn {ref} {turn}.",
        "Spin {ref} {turn} in place.",
    ];
    pub const REMOVE: &[&str] = &[
        "Remove {ref}.",
        "Delete {ref} from the room.",
        "Get rid of {ref}.",
        "Take {ref} out of the room.",
    ];
    pub const COUNT: &[&str] = &[
        "How many {plural} are in the room?",
        "Count the {plural}.",
        "What is the number of {plural} here?",
    ];
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |t, (k, v)| t.replace(&format!("{{{k}}}"), v))
}

/// Metres as people write them: `1`, `0.5`, `1.25`.
fn metres(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A per-scene random stream: the same (seed, scene) always gives the same instructions.
fn scene_rng(seed: u64, scene_key: &str) -> ChaCha8Rng {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(scene_key.as_bytes())
        .finalize();
    ChaCha8Rng::from_seed(digest.into())
}

/// The instructions of one scene, in family order; duplicates (same text) are dropped.
pub fn synthesize(room: &Room, scene_key: &str, config: &SynthesisConfig) -> Vec<Instruction> {
    let mut rng = scene_rng(config.seed, scene_key);
    let objects = &room.objects;
    if objects.is_empty() {
        return Vec::new();
    }
    let referents = referents(objects);
    let mut out: Vec<Instruction> = Vec::new();
    let push = |out: &mut Vec<Instruction>, text: String, action: Action, objects: Vec<usize>| {
        if !out.iter().any(|i| i.text == text) {
            out.push(Instruction { text, action, objects });
        }
    };
    let pick = |rng: &mut ChaCha8Rng, templates: &[&'static str]| *templates.choose(rng).expect("non-empty");

    // place_anchor: tops of supporting objects.
    let supports: Vec<&Referent> = referents
        .iter()
        .filter(|r| SUPPORTS.contains(&objects[r.index].spec.category))
        .collect();
    for r in supports
        .choose_multiple(&mut rng, config.place_anchor)
        .collect::<Vec<_>>()
    {
        let spec = &objects[r.index].spec;
        let up = spec.transform.column(1);
        let half = spec.dimensions[1] / 2.0;
        let c = spec.center();
        let action = Action::PlaceAnchor {
            category: spec.category,
            center: std::array::from_fn(|k| c[k] + up[k] * half),
            normal: up,
            extent: [spec.dimensions[0], spec.dimensions[2]],
        };
        push(
            &mut out,
            fill(pick(&mut rng, phrasings::PLACE_ANCHOR), &[("ref", &r.phrase)]),
            action,
            vec![r.index],
        );
    }

    // locate
    for r in referents.choose_multiple(&mut rng, config.locate).collect::<Vec<_>>() {
        let action = Action::Locate {
            object: objects[r.index].spec.clone(),
        };
        push(
            &mut out,
            fill(pick(&mut rng, phrasings::LOCATE), &[("ref", &r.phrase)]),
            action,
            vec![r.index],
        );
    }

    // list_objects
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by(|&a, &b| list_order(&objects[a].spec, &objects[b].spec));
    let all: Vec<ObjectSpec> = order.iter().map(|&i| objects[i].spec.clone()).collect();
    let mut list_templates = phrasings::LIST.to_vec();
    list_templates.shuffle(&mut rng);
    for template in list_templates.into_iter().take(config.list_objects) {
        push(
            &mut out,
            template.to_string(),
            Action::ListObjects { objects: all.clone() },
            order.clone(),
        );
    }

    // add_object
    let floor = floor_y(objects);
    let footprints: Vec<[f64; 4]> = objects.iter().map(|o| footprint(&o.spec)).collect();
    let mut candidates = Vec::new();
    for r in &referents {
        for &(noun_name, dims) in ADDABLE {
            for &(side, dir) in SIDES {
                let anchor = footprint(&objects[r.index].spec);
                let c = objects[r.index].spec.center();
                // Centre offset: clear of the anchor's footprint plus the clearance, in decimetres.
                let anchor_half = if dir[0] != 0.0 {
                    (anchor[2] - anchor[0]) / 2.0
                } else {
                    (anchor[3] - anchor[1]) / 2.0
                };
                let new_half = if dir[0] != 0.0 { dims[0] / 2.0 } else { dims[2] / 2.0 };
                let offset = ((anchor_half + new_half + CLEARANCE_M) * 10.0).ceil() / 10.0;
                let centre = [c[0] + dir[0] * offset, floor + dims[1] / 2.0, c[2] + dir[2] * offset];
                let new_fp = [
                    centre[0] - dims[0] / 2.0,
                    centre[2] - dims[2] / 2.0,
                    centre[0] + dims[0] / 2.0,
                    centre[2] + dims[2] / 2.0,
                ];
                let corners = [
                    [new_fp[0], new_fp[1]],
                    [new_fp[2], new_fp[1]],
                    [new_fp[2], new_fp[3]],
                    [new_fp[0], new_fp[3]],
                ];
                let inside = corners.iter().all(|&p| inside_convex(&room.floor_region, p));
                if inside && !footprints.iter().any(|f| overlaps(*f, new_fp, CLEARANCE_M)) {
                    candidates.push((r, noun_name, dims, side, offset, centre));
                }
            }
        }
    }
    for (r, noun_name, dims, side, offset, centre) in candidates
        .choose_multiple(&mut rng, config.add_object)
        .collect::<Vec<_>>()
    {
        let (category, attributes) = noun_filter(noun_name).expect("addable nouns are known");
        let object = ObjectSpec {
            category,
            attributes,
            dimensions: *dims,
            transform: Transform::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], *centre),
        };
        let d = metres(*offset);
        let text = fill(
            pick(&mut rng, phrasings::ADD),
            &[("noun", *noun_name), ("d", &d), ("side", *side), ("ref", &r.phrase)],
        );
        push(&mut out, text, Action::AddObject { object }, vec![r.index]);
    }

    // move_object
    for r in referents
        .choose_multiple(&mut rng, config.move_object)
        .collect::<Vec<_>>()
    {
        let &(dir_words, dir) = DIRECTIONS.choose(&mut rng).expect("non-empty");
        let d = *MOVE_DISTANCES_M.choose(&mut rng).expect("non-empty");
        let action = Action::MoveObject {
            target: objects[r.index].spec.target(),
            translation: dir.map(|v| v * d),
        };
        let text = fill(
            pick(&mut rng, phrasings::MOVE),
            &[("ref", &r.phrase), ("d", &metres(d)), ("dir", dir_words)],
        );
        push(&mut out, text, action, vec![r.index]);
    }

    // rotate_object
    for r in referents
        .choose_multiple(&mut rng, config.rotate_object)
        .collect::<Vec<_>>()
    {
        let &(yaw, turn) = TURNS.choose(&mut rng).expect("non-empty");
        let action = Action::RotateObject {
            target: objects[r.index].spec.target(),
            yaw_degrees: yaw,
        };
        push(
            &mut out,
            fill(pick(&mut rng, phrasings::ROTATE), &[("ref", &r.phrase), ("turn", turn)]),
            action,
            vec![r.index],
        );
    }

    // remove_object
    for r in referents
        .choose_multiple(&mut rng, config.remove_object)
        .collect::<Vec<_>>()
    {
        let action = Action::RemoveObject {
            target: objects[r.index].spec.target(),
        };
        push(
            &mut out,
            fill(pick(&mut rng, phrasings::REMOVE), &[("ref", &r.phrase)]),
            action,
            vec![r.index],
        );
    }

    // count: nouns present, plus one absent noun so that zero is a possible answer.
    let present: Vec<&str> = {
        let mut v: Vec<&str> = objects.iter().map(|o| noun(&o.spec)).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let absent: Vec<&str> = COUNTABLE_NOUNS
        .iter()
        .copied()
        .filter(|n| {
            let (c, a) = noun_filter(n).expect("countable nouns are known");
            !objects.iter().any(|o| matches(&o.spec, c, &a))
        })
        .collect();
    let want_absent = config.count >= 2 && !absent.is_empty();
    let mut count_nouns: Vec<&str> = present
        .choose_multiple(&mut rng, config.count - usize::from(want_absent))
        .copied()
        .collect();
    if want_absent {
        count_nouns.extend(absent.choose(&mut rng).copied());
    }
    for noun_name in count_nouns {
        let (category, attributes) = noun_filter(noun_name).expect("nouns come from noun()");
        let matched: Vec<usize> = (0..objects.len())
            .filter(|&i| matches(&objects[i].spec, category, &attributes))
            .collect();
        // Name what is counted: "chairs and stools" when the filter catches stools too.
        let mut nouns: Vec<&str> = matched.iter().map(|&i| noun(&objects[i].spec)).collect();
        nouns.sort_unstable();
        nouns.dedup();
        let phrase = if nouns.is_empty() {
            plural(noun_name)
        } else {
            nouns.iter().map(|n| plural(n)).collect::<Vec<_>>().join(" and ")
        };
        let action = Action::Count {
            category,
            attributes,
            count: matched.len() as u64,
        };
        push(
            &mut out,
            fill(pick(&mut rng, phrasings::COUNT), &[("plural", &phrase)]),
            action,
            matched,
        );
    }
    out
}
