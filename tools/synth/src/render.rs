//! A small ray caster for rooms: the room's six planes (with a door and glass windows drawn on
//! the walls) and oriented furniture boxes.
//!
//! Pixel colours are flat: an object face shows exactly `round(rgb × shade)` where `shade`
//! depends only on which face of the box was hit ([`FACE_SHADE`]); floors get a two-tone tile
//! pattern, walls a per-wall tint. Depth is the z-depth along the optical axis (what depth
//! sensors report), in metres; windows and anything beyond the sensor range read 0 (invalid).

use crate::geom::{self, Intrinsics, Rigid, Vec3};
use crate::scene::Room;

/// Shading factor per box face: +z (top), −z (bottom), ±local x (sides), ±local y (front/back).
pub const FACE_SHADE: [f64; 4] = [1.0, 0.5, 0.85, 0.7];
/// Tint of the four walls, so that corners stay visible.
pub const WALL_SHADE: [f64; 4] = [0.95, 0.85, 0.9, 0.8];
pub const WINDOW_RGB: [u8; 3] = [200, 225, 255];
pub const DOOR_RGB: [u8; 3] = [140, 100, 60];

/// What a ray hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Floor,
    Ceiling,
    Wall(u8),
    Door,
    Window,
    /// Box face of `Room::objects[id]`; face index into [`FACE_SHADE`].
    Object {
        id: u16,
        face: u8,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Hit {
    /// Ray parameter; equals the z-depth for camera rays built by [`Intrinsics::ray`].
    pub t: f64,
    pub surface: Surface,
    pub rgb: [u8; 3],
}

pub fn shade(rgb: [u8; 3], factor: f64) -> [u8; 3] {
    rgb.map(|c| (c as f64 * factor).round().clamp(0.0, 255.0) as u8)
}

/// Casts a ray from `o` along `d` (room frame). `with_ceiling = false` for top-down views.
pub fn cast(room: &Room, o: Vec3, d: Vec3, with_ceiling: bool) -> Option<Hit> {
    Prepared::new(room).cast(o, d, with_ceiling)
}

/// A room with what every ray needs precomputed (box rotations, wall geometry).
pub struct Prepared<'a> {
    room: &'a Room,
    /// Per object: room → box rotation (transpose of the box's rotation).
    box_from_room: Vec<geom::Mat3>,
    /// Per object: squared radius of a sphere around the box (slightly enlarged), to skip
    /// boxes a ray cannot reach without the slab test.
    bound2: Vec<f64>,
    walls: [crate::scene::Wall; 4],
}

impl<'a> Prepared<'a> {
    pub fn new(room: &'a Room) -> Self {
        Prepared {
            room,
            box_from_room: room
                .objects
                .iter()
                .map(|o| geom::transpose(&o.rotation()))
                .collect(),
            bound2: room
                .objects
                .iter()
                .map(|o| geom::dot(o.half(), o.half()) * 1.0001 + 1e-9)
                .collect(),
            walls: room.walls(),
        }
    }

    pub fn cast(&self, o: Vec3, d: Vec3, with_ceiling: bool) -> Option<Hit> {
        let room = self.room;
        let (hw, hd, h) = (room.size[0] / 2.0, room.size[1] / 2.0, room.size[2]);
        let mut best: Option<(f64, Surface)> = None;
        let consider = |t: f64, s: Surface, best: &mut Option<(f64, Surface)>| {
            if t > 1e-9 && best.is_none_or(|(bt, _)| t < bt) {
                *best = Some((t, s));
            }
        };
        // Room planes, seen from inside (a ray from outside, e.g. the bird's-eye view, may also hit
        // the floor from above; walls are only hit where the hit point lies on the wall rectangle).
        if d[2] < 0.0 {
            let t = (0.0 - o[2]) / d[2];
            let p = geom::add(o, geom::scale(d, t));
            if p[0].abs() <= hw && p[1].abs() <= hd {
                consider(t, Surface::Floor, &mut best);
            }
        }
        if with_ceiling && d[2] > 0.0 {
            consider((h - o[2]) / d[2], Surface::Ceiling, &mut best);
        }
        let planes = [(1usize, -hd, 0u8), (0, hw, 1), (1, hd, 2), (0, -hw, 3)];
        for (axis, value, wall) in planes {
            if d[axis] != 0.0 {
                let t = (value - o[axis]) / d[axis];
                let p = geom::add(o, geom::scale(d, t));
                let other = 1 - axis;
                let half_other = if other == 0 { hw } else { hd };
                if p[other].abs() <= half_other + 1e-9 && p[2] >= 0.0 && p[2] <= h {
                    consider(t, Surface::Wall(wall), &mut best);
                }
            }
        }
        let dd = geom::dot(d, d);
        for ((obj, rt), bound2) in room
            .objects
            .iter()
            .zip(&self.box_from_room)
            .zip(&self.bound2)
        {
            let oc = geom::sub(obj.centre, o);
            let along = geom::dot(oc, d);
            if geom::dot(oc, oc) - along * along / dd > *bound2 {
                continue; // the ray's line passes outside the bounding sphere
            }
            let lo = geom::mat_vec(rt, geom::sub(o, obj.centre));
            let ld = geom::mat_vec(rt, d);
            let half = obj.half();
            let (mut tmin, mut tmax) = (f64::NEG_INFINITY, f64::INFINITY);
            let mut enter_axis = 0usize;
            let mut miss = false;
            for k in 0..3 {
                if ld[k].abs() < 1e-15 {
                    if lo[k].abs() > half[k] {
                        miss = true;
                        break;
                    }
                    continue;
                }
                let t1 = (-half[k] - lo[k]) / ld[k];
                let t2 = (half[k] - lo[k]) / ld[k];
                let (a, b) = if t1 < t2 { (t1, t2) } else { (t2, t1) };
                if a > tmin {
                    tmin = a;
                    enter_axis = k;
                }
                tmax = tmax.min(b);
            }
            if miss || tmin > tmax || tmin <= 1e-9 {
                continue;
            }
            let face = match enter_axis {
                2 if ld[2] < 0.0 => 0, // entering through the top
                2 => 1,
                0 => 2,
                _ => 3,
            };
            consider(
                tmin,
                Surface::Object {
                    id: obj.id as u16,
                    face,
                },
                &mut best,
            );
        }
        let (t, surface) = best?;
        let p = geom::add(o, geom::scale(d, t));
        let (surface, rgb) = match surface {
            Surface::Floor => {
                let tile =
                    ((p[0] / 0.5).floor() as i64 + (p[1] / 0.5).floor() as i64).rem_euclid(2);
                (
                    surface,
                    shade(room.floor_rgb, if tile == 0 { 1.0 } else { 0.88 }),
                )
            }
            Surface::Ceiling => (surface, room.ceiling_rgb),
            Surface::Wall(w) => {
                let wall = self.walls[w as usize];
                let along =
                    (p[0] - wall.start[0]) * wall.dir[0] + (p[1] - wall.start[1]) * wall.dir[1];
                let inside = |o: &crate::scene::WallOpening| {
                    o.wall == w as usize
                        && (along - o.along).abs() <= o.width / 2.0
                        && p[2] >= o.bottom
                        && p[2] <= o.bottom + o.height
                };
                if inside(&room.door) {
                    (Surface::Door, DOOR_RGB)
                } else if room.windows.iter().any(inside) {
                    (Surface::Window, WINDOW_RGB)
                } else {
                    (surface, shade(room.wall_rgb, WALL_SHADE[w as usize]))
                }
            }
            Surface::Object { id, face } => (
                surface,
                shade(room.objects[id as usize].rgb, FACE_SHADE[face as usize]),
            ),
            other => (other, [0, 0, 0]),
        };
        Some(Hit { t, surface, rgb })
    }
}

/// One rendered view.
pub struct View {
    pub width: u32,
    pub height: u32,
    /// Row-major RGB.
    pub rgb: Vec<u8>,
    /// Z-depth in metres, 0 = invalid (window glass, beyond range, no hit).
    pub depth: Vec<f32>,
    pub surface: Vec<Option<Surface>>,
}

impl View {
    /// Depth in millimetres as the sensors store it (0 stays invalid).
    pub fn depth_mm(&self) -> Vec<u16> {
        self.depth
            .iter()
            .map(|&z| {
                if z > 0.0 {
                    (z as f64 * 1000.0).round().min(65535.0) as u16
                } else {
                    0
                }
            })
            .collect()
    }
}

/// Renders the room seen by an OpenCV camera with camera-to-room pose `c2r`.
pub fn render(room: &Room, k: &Intrinsics, c2r: &Rigid, max_depth: f64) -> View {
    let n = (k.width * k.height) as usize;
    let mut view = View {
        width: k.width,
        height: k.height,
        rgb: vec![0; n * 3],
        depth: vec![0.0; n],
        surface: vec![None; n],
    };
    let scene = Prepared::new(room);
    for v in 0..k.height {
        for u in 0..k.width {
            let i = (v * k.width + u) as usize;
            let d = c2r.rotate(k.ray(u as f64, v as f64));
            if let Some(hit) = scene.cast(c2r.t, d, true) {
                view.rgb[i * 3..i * 3 + 3].copy_from_slice(&hit.rgb);
                view.surface[i] = Some(hit.surface);
                if hit.surface != Surface::Window && hit.t <= max_depth {
                    view.depth[i] = hit.t as f32;
                }
            }
        }
    }
    view
}

/// Orthographic top-down render of the room without its ceiling, `mpp` metres per pixel.
/// Pixel (u, v) looks straight down at (x, y) = ((u − (W−1)/2)·mpp, −(v − (H−1)/2)·mpp) of a
/// view frame (image +x = +x, image up = +y) that `room_from_view` (a yaw and an offset) maps
/// into the room frame. Pixels outside the room stay white.
pub fn render_top_down(
    room: &Room,
    width: u32,
    height: u32,
    mpp: f64,
    room_from_view: &Rigid,
) -> Vec<u8> {
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    let top = room.size[2] + 1.0;
    let scene = Prepared::new(room);
    for v in 0..height {
        for u in 0..width {
            let x = (u as f64 - (width as f64 - 1.0) / 2.0) * mpp;
            let y = -(v as f64 - (height as f64 - 1.0) / 2.0) * mpp;
            let p = room_from_view.apply([x, y, 0.0]);
            if p[0].abs() > room.size[0] / 2.0 || p[1].abs() > room.size[1] / 2.0 {
                continue;
            }
            if let Some(hit) = scene.cast([p[0], p[1], top], [0.0, 0.0, -1.0], false) {
                let i = ((v * width + u) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&hit.rgb);
            }
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{look_pose, Object, WallOpening};

    fn empty_room() -> Room {
        Room {
            size: [4.0, 4.0, 2.5],
            floor_rgb: [100, 100, 100],
            wall_rgb: [200, 200, 200],
            ceiling_rgb: [250, 250, 250],
            door: WallOpening {
                wall: 0,
                along: 1.0,
                width: 0.9,
                bottom: 0.0,
                height: 2.0,
            },
            windows: vec![WallOpening {
                wall: 1,
                along: 2.0,
                width: 1.0,
                bottom: 1.0,
                height: 1.0,
            }],
            objects: vec![Object {
                id: 0,
                class: "table".into(),
                colour: "red".into(),
                rgb: [200, 30, 30],
                centre: [1.0, 0.0, 0.4],
                size: [0.8, 0.6, 0.8],
                yaw: 0.0,
            }],
            kind: "livingRoom".into(),
        }
    }

    #[test]
    fn ray_to_wall_and_box_have_exact_depth() {
        let room = empty_room();
        // From the centre at z = 0.4 looking along +x: the box's −x face is at x = 0.6.
        let hit = cast(&room, [0.0, 0.0, 0.4], [1.0, 0.0, 0.0], true).unwrap();
        assert_eq!(hit.surface, Surface::Object { id: 0, face: 2 });
        assert!((hit.t - 0.6).abs() < 1e-12);
        assert_eq!(hit.rgb, [170, 26, 26]);
        // Along −y at 1.0 m height towards wall 0 at y = −2: the door starts at x = −2 + 0.55.
        let hit = cast(&room, [0.0, 0.0, 1.0], [0.0, -1.0, 0.0], true).unwrap();
        assert_eq!(hit.surface, Surface::Wall(0));
        assert!((hit.t - 2.0).abs() < 1e-12);
        let hit = cast(&room, [-1.0, 0.0, 1.0], [0.0, -1.0, 0.0], true).unwrap();
        assert_eq!(hit.surface, Surface::Door);
        // Window on wall 1 (x = +2) centred at y = 0 at height 1–2 m.
        let hit = cast(&room, [0.0, 0.0, 1.5], [1.0, 0.0, 0.0], true).unwrap();
        assert_eq!(hit.surface, Surface::Window);
    }

    #[test]
    fn rendered_depth_is_z_depth_and_windows_are_invalid() {
        let room = empty_room();
        let k = Intrinsics {
            width: 8,
            height: 6,
            fx: 4.0,
            fy: 4.0,
            cx: 3.5,
            cy: 2.5,
        };
        // Looking along −x at the wall x = −2 from x = 0: every pixel on that wall has z = 2.
        let view = render(
            &room,
            &k,
            &look_pose([0.0, 0.0, 1.2], std::f64::consts::PI, 0.0, 0.0),
            10.0,
        );
        for (i, s) in view.surface.iter().enumerate() {
            if *s == Some(Surface::Wall(3)) {
                assert!(
                    (view.depth[i] - 2.0).abs() < 1e-5,
                    "pixel {i}: {}",
                    view.depth[i]
                );
            }
        }
        let view = render(&room, &k, &look_pose([0.0, 0.0, 1.5], 0.0, 0.0, 0.0), 10.0);
        let centre = (3 * 8 + 4) as usize;
        assert_eq!(view.surface[centre], Some(Surface::Window));
        assert_eq!(view.depth[centre], 0.0);
    }
}
