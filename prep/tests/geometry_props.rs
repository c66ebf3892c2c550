//! Properties of the geometry: relative poses compose back to world poses, intrinsics follow image
//! transforms (checked against the transformed pixels themselves), histograms sum to 1, selections
//! are well-formed.

use proptest::prelude::*;
use roomplan_prep::geometry::*;

fn rotation() -> impl Strategy<Value = Mat3> {
    (
        prop::array::uniform3(-1.0f64..1.0),
        0.0f64..std::f64::consts::PI,
    )
        .prop_filter_map("non-zero axis", |(axis, angle)| {
            let n = norm(&axis);
            (n > 1e-3).then(|| rodrigues(&axis.map(|a| a / n * angle)))
        })
}

fn pose() -> impl Strategy<Value = Rigid> {
    (rotation(), prop::array::uniform3(-5.0f64..5.0)).prop_map(|(r, t)| Rigid { r, t })
}

fn close3(a: &Vec3, b: &Vec3, tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn relative_poses_compose_back_to_world_poses(first in pose(), other in pose(), p_cam in prop::array::uniform3(-3.0f64..3.0)) {
        prop_assert!(validate_pose(&first.to_mat4()).is_ok());
        let frame = ReferenceFrame::from_camera(&first);
        let cam_to_ref = frame.camera_to_reference(&other);
        let back = frame.world_from_ref.compose(&cam_to_ref);
        for i in 0..3 {
            prop_assert!(close3(&back.r[i], &other.r[i], 1e-9));
        }
        prop_assert!(close3(&back.t, &other.t, 1e-9));
        // A camera point reaches the same reference point through the pose or through the world.
        let via_world = frame.point_to_reference(&other.apply_point(&p_cam));
        prop_assert!(close3(&via_world, &cam_to_ref.apply_point(&p_cam), 1e-9));
        // The reference frame is a rotation with +Y = world up, anchored at the first camera centre,
        // and the first camera's forward has no sideways component (no yaw).
        prop_assert!(validate_pose(&frame.world_from_ref.to_mat4()).is_ok());
        prop_assert!(close3(&frame.world_from_ref.apply_vector(&[0.0, 1.0, 0.0]), &[0.0, 0.0, 1.0], 1e-12));
        prop_assert!(close3(&frame.point_to_reference(&first.t), &[0.0; 3], 1e-9));
        let first_in_ref = frame.camera_to_reference(&first);
        let forward = first_in_ref.apply_vector(&[0.0, 0.0, 1.0]);
        prop_assert!(forward[0].abs() < 1e-9, "forward {:?}", forward);
        prop_assert!(forward[2] <= 1e-9, "forward {:?} must face −Z", forward);
        // Directions and rotations follow the same frame change.
        let d = [0.3, -0.2, 0.9];
        prop_assert!(close3(&frame.direction_to_reference(&other.apply_vector(&d)), &cam_to_ref.apply_vector(&d), 1e-9));
        prop_assert_eq!(frame.rotation_to_reference(&other.r), cam_to_ref.r);
    }

    #[test]
    fn intrinsics_and_pose_follow_rotations_and_crops(
        (w, h) in (4u32..24, 4u32..24),
        marker in (0.0f64..1.0, 0.0f64..1.0),
        fx in 5.0f64..40.0, fy in 5.0f64..40.0, cxf in 0.2f64..0.8, cyf in 0.2f64..0.8,
        c2w in pose(),
        depth in 0.5f64..8.0,
        ops in prop::collection::vec((0u8..4, 0.0f64..1.0, 0.0f64..1.0, 0.5f64..1.0, 0.5f64..1.0), 1..5),
    ) {
        let k = intrinsics(fx, fy, cxf * w as f64, cyf * h as f64);
        let (mu, mv) = (((marker.0 * w as f64) as u32).min(w - 1), ((marker.1 * h as f64) as u32).min(h - 1));
        let mut src = image::RgbImage::new(w, h);
        src.put_pixel(mu, mv, image::Rgb([255, 0, 0]));
        // The world point seen at the marker pixel's centre.
        let ray = mat3_vec(&mat3_inverse(&k).unwrap(), &[mu as f64, mv as f64, 1.0]);
        let p_world = c2w.apply_point(&ray.map(|x| x * depth / ray[2]));

        let mut img = CameraImage::new(src, k);
        for (kind, fx0, fy0, fw, fh) in ops {
            let (iw, ih) = (img.image.width(), img.image.height());
            let op = match kind {
                0 => ImageOp::Rotate(ImageRotation::Clockwise90),
                1 => ImageOp::Rotate(ImageRotation::CounterClockwise90),
                2 => ImageOp::Rotate(ImageRotation::Half),
                _ => {
                    let cw = ((fw * iw as f64) as u32).max(1);
                    let ch = ((fh * ih as f64) as u32).max(1);
                    ImageOp::Crop { x: (fx0 * (iw - cw) as f64) as u32, y: (fy0 * (ih - ch) as f64) as u32, width: cw, height: ch }
                }
            };
            img = img.apply(&op).unwrap();
        }
        let pose = img.adjust_pose(&c2w);
        prop_assert!(validate_pose(&pose.to_mat4()).is_ok());
        let projected = project(&img.k, &pose.inverse().apply_point(&p_world)).unwrap();
        let found = img.image.enumerate_pixels().find(|(_, _, p)| p[0] == 255).map(|(u, v, _)| (u as f64, v as f64));
        match found {
            Some((u, v)) => {
                prop_assert!((projected[0] - u).abs() < 1e-6 && (projected[1] - v).abs() < 1e-6, "marker at ({u}, {v}), projected {projected:?}");
            }
            None => {
                // Cropped away: the point must project outside the image.
                let (iw, ih) = (img.image.width() as f64, img.image.height() as f64);
                let inside = projected[0] > -0.5 && projected[0] < iw - 0.5 && projected[1] > -0.5 && projected[1] < ih - 0.5;
                prop_assert!(!inside, "marker cropped away but projects to {projected:?} in {iw}×{ih}");
            }
        }
    }

    #[test]
    fn intrinsics_follow_resizes(
        (w, h) in (8u32..2000, 8u32..2000), (nw, nh) in (8u32..2000, 8u32..2000),
        u in 0.0f64..1.0, v in 0.0f64..1.0, fx in 100.0f64..2000.0, cx in 0.0f64..1.0, cy in 0.0f64..1.0,
        p_cam in (prop::array::uniform2(-2.0f64..2.0), 0.5f64..5.0),
    ) {
        // Pixel-centre convention: the continuous image position x·W maps to x·W' (edges to edges),
        // i.e. pixel (x·W − 0.5) → (x·W' − 0.5); a projected point moves the same way.
        let k = intrinsics(fx, fx, cx * w as f64, cy * h as f64);
        let op = ImageOp::Resize { width: nw, height: nh };
        let map = op.pixel_map(w, h).unwrap();
        let edge = mat3_vec(&map.pixel, &[u * w as f64 - 0.5, v * h as f64 - 0.5, 1.0]);
        prop_assert!((edge[0] - (u * nw as f64 - 0.5)).abs() < 1e-9 && (edge[1] - (v * nh as f64 - 0.5)).abs() < 1e-9);
        let p = [p_cam.0[0], p_cam.0[1], p_cam.1];
        let before = project(&k, &p).unwrap();
        let k_new = mat3_mul(&mat3_mul(&map.pixel, &k), &mat3_transpose(&map.camera));
        let after = project(&k_new, &p).unwrap();
        let (sx, sy) = (nw as f64 / w as f64, nh as f64 / h as f64);
        prop_assert!((after[0] - ((before[0] + 0.5) * sx - 0.5)).abs() < 1e-6);
        prop_assert!((after[1] - ((before[1] + 0.5) * sy - 0.5)).abs() < 1e-6);
    }

    #[test]
    fn depth_histograms_sum_to_one_and_match_per_pixel_binning(
        values in prop::collection::vec(prop_oneof![Just(0u16), any::<u16>()], 1..400),
        count in 1usize..40, min_m in 0.0f64..2.0, span in 0.5f64..20.0,
    ) {
        let bins = DepthBins { count, min_m, max_m: min_m + span };
        let depth = DepthMap::new(values.len() as u32, 1, &values, 0.001).unwrap();
        let stats = depth_histogram(&depth, &bins);
        prop_assert_eq!(stats.histogram.len(), count);
        prop_assert!(stats.histogram.iter().all(|&x| (0.0..=1.0).contains(&x)));
        let valid = values.iter().filter(|&&v| v != 0).count();
        prop_assert_eq!(stats.valid_fraction, (valid as f64 / values.len() as f64) as f32);
        // Each bin holds exactly the fraction of valid pixels that bin on their own.
        let mut reference = vec![0u64; count];
        for &v in values.iter().filter(|&&v| v != 0) {
            reference[bins.bin(v as f64 * 0.001)] += 1;
        }
        let reference: Vec<f32> = reference.iter().map(|&c| if valid == 0 { 0.0 } else { (c as f64 / valid as f64) as f32 }).collect();
        prop_assert_eq!(&stats.histogram, &reference);
        let sum: f64 = stats.histogram.iter().map(|&x| x as f64).sum();
        if valid > 0 {
            prop_assert!((sum - 1.0).abs() < 1e-5, "sum {}", sum);
        } else {
            prop_assert_eq!(sum, 0.0);
        }
    }

    #[test]
    fn selections_are_well_formed(n in 0usize..300, k in 0usize..33, sets in prop::collection::vec(prop::collection::vec(0i32..50, 0..20), 0..40)) {
        let uniform = select_uniform(n, k);
        prop_assert_eq!(uniform.len(), n.min(k));
        prop_assert!(uniform.windows(2).all(|w| w[0] < w[1]));
        if n > 0 && k > 1 {
            prop_assert_eq!(uniform[0], 0);
            prop_assert_eq!(*uniform.last().unwrap(), n - 1);
        }
        let voxels: Vec<Vec<[i32; 3]>> = sets.iter().map(|s| s.iter().map(|&x| [x, 0, 0]).collect()).collect();
        let chosen = select_coverage(&voxels, k);
        prop_assert_eq!(chosen.len(), voxels.len().min(k));
        prop_assert!(chosen.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(select_coverage(&voxels, k), chosen.clone());
        // Greedy never covers less than the single best candidate.
        let covered: std::collections::HashSet<[i32; 3]> = chosen.iter().flat_map(|&i| voxels[i].iter().copied()).collect();
        let best_single = voxels.iter().map(|v| v.iter().collect::<std::collections::HashSet<_>>().len()).max().unwrap_or(0);
        if k > 0 {
            prop_assert!(covered.len() >= best_single);
        }
    }
}
