//! Procedural rooms: a box-shaped room (floor, four walls, ceiling) with a door, windows and
//! furniture boxes, plus a camera walk through its free space.
//!
//! The *room frame* is Z-up, metres, centred on the floor: x ∈ [−w/2, w/2], y ∈ [−d/2, d/2],
//! z ∈ [0, h]. It equals ScanNet's axis-aligned frame of the scene; every dataset's world is a
//! rigid transform of it (recorded in `synth.json`).

use crate::geom::DetMath;
use crate::geom::{self, Mat3, Rigid, Vec3};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

/// One of the 17 ARKitScenes 3DOD classes with its size ranges and placement rule.
#[derive(Clone, Copy, Debug)]
pub struct ClassSpec {
    pub name: &'static str,
    /// (min, max) of the extents along local x, local y and z (height), metres.
    pub size: [(f64, f64); 3],
    /// Placed with its back (local −y side) against a wall.
    pub against_wall: bool,
    /// Relative draw weight; chairs and stools are common so counting questions have answers > 1.
    pub weight: u32,
}

pub const CLASSES: [ClassSpec; 17] = [
    ClassSpec {
        name: "cabinet",
        size: [(0.6, 1.2), (0.4, 0.6), (0.8, 1.9)],
        against_wall: true,
        weight: 3,
    },
    ClassSpec {
        name: "refrigerator",
        size: [(0.6, 0.9), (0.6, 0.75), (1.6, 1.9)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "shelf",
        size: [(0.6, 1.4), (0.3, 0.45), (1.0, 2.0)],
        against_wall: true,
        weight: 2,
    },
    ClassSpec {
        name: "stove",
        size: [(0.6, 0.8), (0.55, 0.65), (0.85, 0.95)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "bed",
        size: [(1.4, 1.9), (1.9, 2.2), (0.45, 0.65)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "sink",
        size: [(0.5, 0.8), (0.4, 0.55), (0.8, 0.95)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "washer",
        size: [(0.6, 0.65), (0.55, 0.65), (0.8, 0.9)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "toilet",
        size: [(0.38, 0.45), (0.6, 0.75), (0.7, 0.85)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "bathtub",
        size: [(1.5, 1.8), (0.7, 0.85), (0.5, 0.6)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "oven",
        size: [(0.55, 0.65), (0.55, 0.65), (0.8, 0.9)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "dishwasher",
        size: [(0.55, 0.62), (0.55, 0.62), (0.8, 0.88)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "fireplace",
        size: [(1.0, 1.6), (0.3, 0.5), (0.9, 1.3)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "stool",
        size: [(0.3, 0.45), (0.3, 0.45), (0.45, 0.75)],
        against_wall: false,
        weight: 2,
    },
    ClassSpec {
        name: "chair",
        size: [(0.42, 0.6), (0.42, 0.6), (0.8, 1.05)],
        against_wall: false,
        weight: 5,
    },
    ClassSpec {
        name: "table",
        size: [(0.8, 1.6), (0.6, 1.0), (0.7, 0.78)],
        against_wall: false,
        weight: 3,
    },
    ClassSpec {
        name: "tv_monitor",
        size: [(0.8, 1.3), (0.1, 0.2), (0.5, 0.8)],
        against_wall: true,
        weight: 1,
    },
    ClassSpec {
        name: "sofa",
        size: [(1.6, 2.4), (0.8, 1.0), (0.75, 0.95)],
        against_wall: true,
        weight: 2,
    },
];

/// Named colours; an object's pixels are exactly this RGB times a face shading factor.
pub const PALETTE: [(&str, [u8; 3]); 10] = [
    ("red", [200, 30, 30]),
    ("green", [40, 160, 60]),
    ("blue", [40, 70, 200]),
    ("yellow", [230, 210, 40]),
    ("black", [30, 30, 30]),
    ("white", [240, 240, 240]),
    ("brown", [120, 75, 40]),
    ("gray", [128, 128, 128]),
    ("orange", [240, 140, 20]),
    ("purple", [130, 50, 160]),
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Object {
    /// Index in `Room::objects`; also the ScanNet objectId used by ScanQA.
    pub id: u32,
    pub class: String,
    pub colour: String,
    pub rgb: [u8; 3],
    /// Box centre in the room frame.
    pub centre: Vec3,
    /// Full extents along the box's local x, local y and z (up).
    pub size: Vec3,
    /// Rotation about +Z from the room frame's x axis to the box's local x axis, radians.
    pub yaw: f64,
}

impl Object {
    /// Box → room rotation (columns = local axes in the room frame).
    pub fn rotation(&self) -> Mat3 {
        geom::rot_z(self.yaw)
    }
    pub fn half(&self) -> Vec3 {
        geom::scale(self.size, 0.5)
    }
    /// Footprint corners (counter-clockwise) in the room's xy plane.
    pub fn footprint(&self, margin: f64) -> [[f64; 2]; 4] {
        let r = self.rotation();
        let [hx, hy, _] = self.half();
        let (hx, hy) = (hx + margin, hy + margin);
        [(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)].map(|(a, b)| {
            let p = geom::add(self.centre, geom::mat_vec(&r, [a, b, 0.0]));
            [p[0], p[1]]
        })
    }
}

/// A rectangular opening drawn on a wall: a door (solid, valid depth) or a window (glass:
/// the depth sensor returns no measurement there).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WallOpening {
    pub wall: usize,
    /// Centre along the wall's direction, measured from the wall's start corner, metres.
    pub along: f64,
    pub width: f64,
    pub bottom: f64,
    pub height: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Room {
    /// Extents along room x, room y and the ceiling height.
    pub size: Vec3,
    pub floor_rgb: [u8; 3],
    pub wall_rgb: [u8; 3],
    pub ceiling_rgb: [u8; 3],
    pub door: WallOpening,
    pub windows: Vec<WallOpening>,
    pub objects: Vec<Object>,
    /// Room type label (RoomPlan section label, ScanNet sceneType).
    pub kind: String,
}

/// A wall as a segment of the floor outline, walked counter-clockwise (inside on the left).
#[derive(Clone, Copy, Debug)]
pub struct Wall {
    pub start: [f64; 2],
    pub dir: [f64; 2],
    pub length: f64,
    /// Unit normal pointing into the room.
    pub inward: [f64; 2],
}

impl Room {
    pub fn walls(&self) -> [Wall; 4] {
        let (hw, hd) = (self.size[0] / 2.0, self.size[1] / 2.0);
        let corners = [[-hw, -hd], [hw, -hd], [hw, hd], [-hw, hd]];
        std::array::from_fn(|i| {
            let a = corners[i];
            let b = corners[(i + 1) % 4];
            let length = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
            let dir = [(b[0] - a[0]) / length, (b[1] - a[1]) / length];
            Wall {
                start: a,
                dir,
                length,
                inward: [-dir[1], dir[0]],
            }
        })
    }

    /// Centre of an opening in the room frame.
    pub fn opening_centre(&self, o: &WallOpening) -> Vec3 {
        let w = self.walls()[o.wall];
        [
            w.start[0] + w.dir[0] * o.along,
            w.start[1] + w.dir[1] * o.along,
            o.bottom + o.height / 2.0,
        ]
    }

    pub fn count(&self, class: &str) -> usize {
        self.objects.iter().filter(|o| o.class == class).count()
    }
}

/// 2-D separating-axis test for convex quads.
fn quads_overlap(a: &[[f64; 2]; 4], b: &[[f64; 2]; 4]) -> bool {
    for quad in [a, b] {
        for i in 0..4 {
            let p = quad[i];
            let q = quad[(i + 1) % 4];
            let axis = [-(q[1] - p[1]), q[0] - p[0]];
            let proj = |pts: &[[f64; 2]; 4]| {
                pts.iter()
                    .map(|v| v[0] * axis[0] + v[1] * axis[1])
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                        (lo.min(x), hi.max(x))
                    })
            };
            let (alo, ahi) = proj(a);
            let (blo, bhi) = proj(b);
            if ahi < blo || bhi < alo {
                return false;
            }
        }
    }
    true
}

fn point_in_quad(p: [f64; 2], quad: &[[f64; 2]; 4]) -> bool {
    (0..4).all(|i| {
        let a = quad[i];
        let b = quad[(i + 1) % 4];
        (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0.0
    })
}

fn uniform(rng: &mut impl Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// The camera loop: an ellipse around the room centre, kept ≥ 1.2 m from the walls.
pub fn walk_radii(size: Vec3) -> (f64, f64) {
    (
        (size[0] / 2.0 - 1.2).max(0.3),
        (size[1] / 2.0 - 1.2).max(0.3),
    )
}

const ROOM_KINDS: [&str; 4] = ["livingRoom", "bedroom", "kitchen", "bathroom"];

pub fn generate_room(rng: &mut impl RngCore) -> Room {
    let size = [
        uniform(rng, (3.6, 6.4)),
        uniform(rng, (3.6, 6.4)),
        uniform(rng, (2.4, 3.0)),
    ];
    let walls_rgb = [
        [225, 220, 205],
        [205, 215, 225],
        [230, 225, 215],
        [215, 225, 210],
    ];
    let floors_rgb = [
        [150, 120, 90],
        [170, 165, 160],
        [110, 90, 70],
        [190, 180, 160],
    ];
    let wall_rgb = walls_rgb[rng.random_range(0..walls_rgb.len())];
    let floor_rgb = floors_rgb[rng.random_range(0..floors_rgb.len())];
    let mut room = Room {
        size,
        floor_rgb,
        wall_rgb,
        ceiling_rgb: [245, 245, 245],
        door: WallOpening {
            wall: 0,
            along: 0.0,
            width: 0.0,
            bottom: 0.0,
            height: 0.0,
        },
        windows: Vec::new(),
        objects: Vec::new(),
        kind: ROOM_KINDS[rng.random_range(0..ROOM_KINDS.len())].to_string(),
    };
    let walls = room.walls();
    let door_wall = rng.random_range(0..4);
    let door_width = uniform(rng, (0.8, 1.0));
    room.door = WallOpening {
        wall: door_wall,
        along: uniform(rng, (0.7, walls[door_wall].length - 0.7)),
        width: door_width,
        bottom: 0.0,
        height: 2.05,
    };
    for (wall, spec) in walls.iter().enumerate() {
        if wall == door_wall || rng.random::<f64>() < 0.4 {
            continue;
        }
        let width = uniform(rng, (0.8, 1.4));
        room.windows.push(WallOpening {
            wall,
            along: uniform(rng, (width / 2.0 + 0.3, spec.length - width / 2.0 - 0.3)),
            width,
            bottom: uniform(rng, (0.85, 1.0)),
            height: uniform(rng, (1.0, 1.2)),
        });
    }
    if room.windows.is_empty() {
        // Every room gets at least one window so every scene has some invalid depth.
        let wall = (door_wall + 2) % 4;
        room.windows.push(WallOpening {
            wall,
            along: walls[wall].length / 2.0,
            width: 1.0,
            bottom: 0.9,
            height: 1.1,
        });
    }

    // Keep the camera loop and the doorway free.
    let (rx, ry) = walk_radii(size);
    let path: Vec<[f64; 2]> = (0..64)
        .map(|i| {
            let s = i as f64 / 64.0 * std::f64::consts::TAU;
            [rx * s.dcos(), ry * s.dsin()]
        })
        .collect();
    let door_wall_spec = walls[door_wall];
    let door_centre = [
        door_wall_spec.start[0] + door_wall_spec.dir[0] * room.door.along,
        door_wall_spec.start[1] + door_wall_spec.dir[1] * room.door.along,
    ];

    let total_weight: u32 = CLASSES.iter().map(|c| c.weight).sum();
    let target = rng.random_range(6..=10);
    let mut attempts = 0;
    while room.objects.len() < target && attempts < 600 {
        attempts += 1;
        let mut pick = rng.random_range(0..total_weight);
        let spec = CLASSES
            .iter()
            .find(|c| {
                if pick < c.weight {
                    true
                } else {
                    pick -= c.weight;
                    false
                }
            })
            .unwrap_or(&CLASSES[0]);
        let ext = [
            uniform(rng, spec.size[0]),
            uniform(rng, spec.size[1]),
            uniform(rng, spec.size[2]),
        ];
        let (centre_xy, yaw) = if spec.against_wall {
            let w = walls[rng.random_range(0..4)];
            if w.length < ext[0] + 0.2 {
                continue;
            }
            let along = uniform(rng, (ext[0] / 2.0 + 0.05, w.length - ext[0] / 2.0 - 0.05));
            let off = ext[1] / 2.0 + 0.02;
            (
                [
                    w.start[0] + w.dir[0] * along + w.inward[0] * off,
                    w.start[1] + w.dir[1] * along + w.inward[1] * off,
                ],
                w.dir[1].datan2(w.dir[0]),
            )
        } else {
            let r = (ext[0].dhypot(ext[1])) / 2.0 + 0.05;
            let (hw, hd) = (size[0] / 2.0 - r, size[1] / 2.0 - r);
            if hw <= 0.0 || hd <= 0.0 {
                continue;
            }
            (
                [uniform(rng, (-hw, hw)), uniform(rng, (-hd, hd))],
                uniform(rng, (-std::f64::consts::PI, std::f64::consts::PI)),
            )
        };
        let (colour, rgb) = PALETTE[rng.random_range(0..PALETTE.len())];
        let candidate = Object {
            id: room.objects.len() as u32,
            class: spec.name.to_string(),
            colour: colour.to_string(),
            rgb,
            centre: [centre_xy[0], centre_xy[1], ext[2] / 2.0],
            size: ext,
            yaw,
        };
        let foot = candidate.footprint(0.0);
        let (hw, hd) = (size[0] / 2.0, size[1] / 2.0);
        let inside = foot
            .iter()
            .all(|p| p[0].abs() < hw - 0.01 && p[1].abs() < hd - 0.01);
        let clearance = candidate.footprint(0.35);
        let blocks_path = path.iter().any(|p| point_in_quad(*p, &clearance));
        let near_door = ((door_centre[0] - centre_xy[0]).powi(2)
            + (door_centre[1] - centre_xy[1]).powi(2))
        .sqrt()
            < door_width / 2.0 + ext[0].dhypot(ext[1]) / 2.0 + 0.3;
        let padded = candidate.footprint(0.05);
        let overlaps = room
            .objects
            .iter()
            .any(|o| quads_overlap(&padded, &o.footprint(0.05)));
        if inside && !blocks_path && !near_door && !overlaps {
            room.objects.push(candidate);
        }
    }
    room
}

/// Camera-to-room pose of an OpenCV camera at `position` looking along yaw/pitch, rolled by `roll`.
pub fn look_pose(position: Vec3, yaw: f64, pitch: f64, roll: f64) -> Rigid {
    let forward = [
        pitch.dcos() * yaw.dcos(),
        pitch.dcos() * yaw.dsin(),
        pitch.dsin(),
    ];
    let right0 = geom::normalize(geom::cross(forward, [0.0, 0.0, 1.0]));
    let down0 = geom::cross(forward, right0);
    let (s, c) = roll.dsin_cos();
    let right = geom::add(geom::scale(right0, c), geom::scale(down0, s));
    let down = geom::add(geom::scale(down0, c), geom::scale(right0, -s));
    Rigid {
        r: geom::from_columns(right, down, forward),
        t: position,
    }
}

/// Camera-to-room poses of a walk around the room's free loop: eye height 1.4–1.6 m, looking
/// mostly across the room and slightly down, swinging up to ±80° left and right so the walls
/// behind the furniture come into view too.
pub fn camera_walk(room: &Room, frames: usize, rng: &mut impl RngCore) -> Vec<Rigid> {
    let (rx, ry) = walk_radii(room.size);
    let phase = uniform(rng, (0.0, std::f64::consts::TAU));
    let swing_phase = uniform(rng, (0.0, std::f64::consts::TAU));
    let eye = uniform(rng, (1.45, 1.55));
    let laps = 1.0;
    (0..frames)
        .map(|i| {
            let s = phase + laps * std::f64::consts::TAU * i as f64 / frames.max(1) as f64;
            let position = [rx * s.dcos(), ry * s.dsin(), eye + 0.04 * (3.0 * s).dsin()];
            let yaw = s + std::f64::consts::PI + 1.4 * (2.0 * s + swing_phase).dsin();
            let pitch = -0.3 - 0.12 * (3.0 * s + swing_phase).dsin();
            let roll = 0.04 * (5.0 * s).dsin();
            look_pose(position, yaw, pitch, roll)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn rooms_have_non_overlapping_objects_inside_walls() {
        for seed in 0..20 {
            let room = generate_room(&mut ChaCha8Rng::seed_from_u64(seed));
            assert!(
                room.objects.len() >= 3,
                "seed {seed}: only {} objects",
                room.objects.len()
            );
            for (i, a) in room.objects.iter().enumerate() {
                for b in &room.objects[i + 1..] {
                    assert!(
                        !quads_overlap(&a.footprint(0.0), &b.footprint(0.0)),
                        "seed {seed}"
                    );
                }
                for p in a.footprint(0.0) {
                    assert!(p[0].abs() < room.size[0] / 2.0 && p[1].abs() < room.size[1] / 2.0);
                }
            }
        }
    }

    #[test]
    fn cameras_walk_in_free_space_at_eye_height() {
        for seed in 0..30 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let room = generate_room(&mut rng);
            for pose in camera_walk(&room, 24, &mut rng) {
                let p = pose.t;
                assert!(
                    (1.4..=1.6).contains(&p[2]),
                    "seed {seed}: eye height {}",
                    p[2]
                );
                assert!(
                    p[0].abs() <= room.size[0] / 2.0 - 1.0
                        && p[1].abs() <= room.size[1] / 2.0 - 1.0
                );
                for o in &room.objects {
                    // Outside every footprint grown by 0.3 m.
                    assert!(
                        !point_in_quad([p[0], p[1]], &o.footprint(0.3)),
                        "seed {seed}: camera in {}",
                        o.class
                    );
                }
                // Looking slightly down, never up.
                assert!(geom::column(&pose.r, 2)[2] < 0.0);
            }
        }
    }

    #[test]
    fn look_pose_is_a_right_handed_opencv_camera() {
        let pose = look_pose([0.0, 0.0, 1.5], 0.0, 0.0, 0.0);
        // Looking along +x with +z up: camera +x (right) is room −y, camera +y (down) is room −z.
        assert_eq!(geom::column(&pose.r, 2), [1.0, 0.0, 0.0]);
        assert!(geom::norm(geom::sub(geom::column(&pose.r, 0), [0.0, -1.0, 0.0])) < 1e-12);
        assert!(geom::norm(geom::sub(geom::column(&pose.r, 1), [0.0, 0.0, -1.0])) < 1e-12);
    }
}
