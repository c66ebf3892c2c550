//! Property tests of the renderer and the trajectory encoding against independent geometry.

mod common;

use common::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use roomplan_synth::geom::{Intrinsics, Rigid};
use roomplan_synth::render::{render, Surface};
use roomplan_synth::scene::{camera_walk, generate_room};

/// The documented flat shading factors of box faces: top, bottom, x sides, y sides.
const SHADES: [f64; 4] = [1.0, 0.5, 0.85, 0.7];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every valid depth pixel, back-projected with K and the pose, lies on a surface of the
    /// room within 1 mm (after millimetre quantisation), and pixels of objects show the object's
    /// colour times one of the documented shading factors.
    #[test]
    fn depth_lands_on_surfaces_and_object_colours_are_recoverable(seed in 0u64..10_000, frame in 0usize..16) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let room = generate_room(&mut rng);
        let pose = camera_walk(&room, 16, &mut rng)[frame];
        let k = Intrinsics { width: 40, height: 30, fx: 36.0, fy: 36.5, cx: 19.7, cy: 14.3 };
        let view = render(&room, &k, &pose, 10.0);
        let room_json = serde_json::to_value(&room).unwrap();
        let mm = view.depth_mm();
        let mut valid = 0;
        for v in 0..k.height {
            for u in 0..k.width {
                let i = (v * k.width + u) as usize;
                if mm[i] == 0 {
                    prop_assert!(matches!(view.surface[i], Some(Surface::Window)), "invalid depth off a window at ({u},{v})");
                    continue;
                }
                valid += 1;
                let z = mm[i] as f64 / 1000.0;
                let cam = [(u as f64 - k.cx) / k.fx * z, (v as f64 - k.cy) / k.fy * z, z];
                let p = apply(&pose.to_row_major(), cam);
                let d = distance_to_surfaces(&room_json, p);
                prop_assert!(d < 1e-3, "pixel ({u},{v}) lands {d} m off every surface");
                if let Some(Surface::Object { id, .. }) = view.surface[i] {
                    let obj = &room_json["objects"][id as usize];
                    prop_assert!(distance_to_box(obj, p) < 1e-3, "pixel ({u},{v}) is not on object {id}");
                    let rgb: Vec<f64> = obj["rgb"].as_array().unwrap().iter().map(|c| c.as_f64().unwrap()).collect();
                    let px = &view.rgb[i * 3..i * 3 + 3];
                    let ok = SHADES.iter().any(|s| (0..3).all(|c| (rgb[c] * s).round() as u8 == px[c]));
                    prop_assert!(ok, "object {id} pixel {px:?} is not {rgb:?} times a face shade");
                }
            }
        }
        prop_assert!(valid > 0);
    }

    /// A `.traj` line, parsed and its world-to-camera rotation inverted, gives back the
    /// camera-to-world pose it was written from.
    #[test]
    fn traj_lines_invert_to_the_camera_pose(
        yaw in -3.2f64..3.2, pitch in -1.5f64..1.5, roll in -3.2f64..3.2,
        t in prop::array::uniform3(-5.0f64..5.0), us in 1_000_000u64..90_000_000_000,
    ) {
        let pose = roomplan_synth::scene::look_pose(t, yaw, pitch, roll);
        let line = roomplan_synth::arkit::traj_line(us, &pose);
        let (ts, c2w) = parse_traj_line(&line);
        prop_assert_eq!(ts.split('.').nth(1).map(str::len), Some(6));
        let want = pose.to_row_major();
        for i in 0..16 {
            prop_assert!((c2w[i] - want[i]).abs() < 1e-7, "entry {i}: {} vs {}", c2w[i], want[i]);
        }
    }
}

#[test]
fn half_turn_rotation_survives_the_traj_encoding() {
    // Rotation by π about z: axis-angle is ill-conditioned there.
    let pose = Rigid {
        r: [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
        t: [1.0, 2.0, 3.0],
    };
    let (_, c2w) = parse_traj_line(&roomplan_synth::arkit::traj_line(5_000_000, &pose));
    let want = pose.to_row_major();
    for i in 0..16 {
        assert!(
            (c2w[i] - want[i]).abs() < 1e-7,
            "entry {i}: {} vs {}",
            c2w[i],
            want[i]
        );
    }
}
