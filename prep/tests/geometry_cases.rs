//! Worked examples of the geometry conventions (values computed by hand).

use roomplan_prep::geometry::*;

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs {b}");
}

fn assert_mat3_close(a: &Mat3, b: &Mat3, tol: f64) {
    for i in 0..3 {
        for j in 0..3 {
            assert_close(
                a[i][j],
                b[i][j],
                tol,
                &format!("[{i}][{j}] of {a:?} vs {b:?}"),
            );
        }
    }
}

/// A camera at `centre` looking horizontally along world +Y (camera x = world +X, camera y (down) =
/// world −Z, camera z = world +Y).
fn level_camera_facing_plus_y(centre: Vec3) -> Rigid {
    Rigid {
        r: [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]],
        t: centre,
    }
}

#[test]
fn pose_validation_accepts_rigid_and_names_each_defect() {
    let good = level_camera_facing_plus_y([1.0, 2.0, 1.5]).to_mat4();
    assert_eq!(validate_pose(&good).unwrap(), Rigid::from_mat4(&good));

    let mut inf = good;
    inf[1][2] = f64::NEG_INFINITY;
    let err = validate_pose(&inf).unwrap_err();
    assert_eq!(
        err,
        PoseError::NonFinite {
            row: 1,
            col: 2,
            value: f64::NEG_INFINITY
        }
    );
    assert_eq!(
        err.to_string(),
        "pose has a non-finite entry at row 1, column 2 (-inf)"
    );

    let mut nan = good;
    nan[0][3] = f64::NAN;
    assert!(matches!(
        validate_pose(&nan),
        Err(PoseError::NonFinite { row: 0, col: 3, .. })
    ));

    let mut last = good;
    last[3] = [0.0, 0.0, 1.0, 1.0];
    assert_eq!(
        validate_pose(&last).unwrap_err().to_string(),
        "pose last row is [0.0, 0.0, 1.0, 1.0], expected [0, 0, 0, 1]"
    );

    let mut scaled = good;
    scaled[0][0] = 1.01;
    let err = validate_pose(&scaled).unwrap_err();
    assert!(matches!(err, PoseError::NotOrthonormal { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("pose rotation is not orthonormal: max |RᵀR − I| = 2.010e-2"),
        "{err}"
    );

    let mut mirror = good;
    mirror[0][0] = -1.0;
    assert_eq!(
        validate_pose(&mirror).unwrap_err().to_string(),
        "pose rotation is a reflection or degenerate: det R = -1.000000, expected 1"
    );

    // ScanNet's six-decimal poses are within tolerance.
    let c = (0.3f64).cos();
    let s = (0.3f64).sin();
    let rounded = |x: f64| (x * 1e6).round() / 1e6;
    let six_decimals: Mat4 = [
        [rounded(c), rounded(-s), 0.0, 1.0],
        [rounded(s), rounded(c), 0.0, 2.0],
        [0.0, 0.0, 1.0, 3.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert!(validate_pose(&six_decimals).is_ok());
}

#[test]
fn reference_frame_of_a_level_camera() {
    let c2w = level_camera_facing_plus_y([1.0, 2.0, 1.5]);
    let frame = ReferenceFrame::from_camera(&c2w);
    // The camera itself: x → +X, y (down) → −Y, z (forward) → −Z, at the origin.
    let cam_to_ref = frame.camera_to_reference(&c2w);
    assert_mat3_close(
        &cam_to_ref.r,
        &[[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
        1e-12,
    );
    assert_eq!(cam_to_ref.t, [0.0, 0.0, 0.0]);
    // A world point 3 m ahead, 1 m right, 0.5 m up of the camera.
    let p = frame.point_to_reference(&[2.0, 5.0, 2.0]);
    for (a, b) in p.iter().zip([1.0, 0.5, -3.0]) {
        assert_close(*a, b, 1e-12, "point");
    }
    // Facing world −X (turned left by 90°) is yaw +π/2 in the reference frame.
    let d = frame.direction_to_reference(&[-1.0, 0.0, 0.0]);
    assert_close(heading_yaw(&d), std::f64::consts::FRAC_PI_2, 1e-12, "yaw");
    assert_close(
        heading_yaw(&frame.direction_to_reference(&[0.0, 1.0, 0.0])),
        0.0,
        1e-12,
        "yaw ahead",
    );
}

#[test]
fn reference_frame_removes_yaw_but_keeps_pitch() {
    // Camera facing world +X, pitched 30° down.
    let pitch = 30f64.to_radians();
    let forward = [pitch.cos(), 0.0, -pitch.sin()];
    let right = [0.0, -1.0, 0.0];
    let down = cross(&forward, &right);
    let r = [
        [right[0], down[0], forward[0]],
        [right[1], down[1], forward[1]],
        [right[2], down[2], forward[2]],
    ];
    let c2w = Rigid {
        r,
        t: [0.5, -1.0, 1.2],
    };
    assert!(validate_pose(&c2w.to_mat4()).is_ok());
    let frame = ReferenceFrame::from_camera(&c2w);
    let cam = frame.camera_to_reference(&c2w);
    // Only a rotation about the reference +X axis remains: forward = (0, −sin, −cos).
    let f = cam.apply_vector(&[0.0, 0.0, 1.0]);
    for (a, b) in f.iter().zip([0.0, -pitch.sin(), -pitch.cos()]) {
        assert_close(*a, b, 1e-12, "forward");
    }
    assert_close(
        cam.apply_vector(&[1.0, 0.0, 0.0])[0],
        1.0,
        1e-12,
        "right stays +X",
    );
    // Reference +Y is world up.
    let up = frame.world_from_ref.apply_vector(&[0.0, 1.0, 0.0]);
    assert_eq!(up, [0.0, 0.0, 1.0]);
}

#[test]
fn reference_frame_of_a_camera_looking_straight_down_uses_image_up() {
    // Camera looking down (z = world −Z), image top (−y) towards world +Y.
    let c2w = Rigid {
        r: [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
        t: [0.0, 0.0, 2.0],
    };
    let frame = ReferenceFrame::from_camera(&c2w);
    // Reference −Z is world +Y.
    let minus_z = frame.world_from_ref.apply_vector(&[0.0, 0.0, -1.0]);
    for (a, b) in minus_z.iter().zip([0.0, 1.0, 0.0]) {
        assert_close(*a, b, 1e-12, "forward");
    }
}

#[test]
fn quaternion_and_rodrigues_agree_on_yaw() {
    let yaw = 0.7f64;
    let q = [0.0, 0.0, (yaw / 2.0).sin(), (yaw / 2.0).cos()];
    assert_mat3_close(
        &quaternion_xyzw_to_matrix(&q),
        &rodrigues(&[0.0, 0.0, yaw]),
        1e-12,
    );
    assert_mat3_close(&rodrigues(&[0.0, 0.0, 0.0]), &IDENTITY3, 0.0);
}

#[test]
fn vggt_size_rule() {
    let rule = SizeRule::default();
    // ScanNet colour: round(968·518/1296/14) = round(27.64) = 28 → 392.
    assert_eq!(
        rule.plan(1296, 968),
        vec![ImageOp::Resize {
            width: 518,
            height: 392
        }]
    );
    // ARKitScenes lowres landscape 256×192: round(27.75) = 28 → 392.
    assert_eq!(
        rule.plan(256, 192),
        vec![ImageOp::Resize {
            width: 518,
            height: 392
        }]
    );
    // Portrait 192×256: round(49.33)·14 = 686, centre crop (686 − 518) / 2 = 84.
    assert_eq!(
        rule.plan(192, 256),
        vec![
            ImageOp::Resize {
                width: 518,
                height: 686
            },
            ImageOp::Crop {
                x: 0,
                y: 84,
                width: 518,
                height: 518
            }
        ]
    );
    // Ties round half to even, as Python's round: 148×10 → 10·3.5/14 = 2.5 → 2 patches (not 3).
    assert_eq!(
        rule.plan(148, 10),
        vec![ImageOp::Resize {
            width: 518,
            height: 28
        }]
    );
    // 148×6 → 1.5 → 2 either way; 148×2 → 0.5 → 0, kept at one patch row instead of an empty image.
    assert_eq!(rule.plan(148, 6)[0], rule.plan(148, 10)[0]);
    assert_eq!(
        rule.plan(148, 2),
        vec![ImageOp::Resize {
            width: 518,
            height: 14
        }]
    );
    let small = SizeRule {
        width: 224,
        multiple: 14,
        max_height: 224,
    };
    assert_eq!(
        small.plan(640, 480),
        vec![ImageOp::Resize {
            width: 224,
            height: 168
        }]
    );
}

#[test]
fn intrinsics_follow_scannet_resize() {
    let k = intrinsics(1170.19, 1170.19, 647.75, 483.75);
    let img = CameraImage::new(image::RgbImage::new(1296, 968), k)
        .apply_all(&SizeRule::default().plan(1296, 968))
        .unwrap();
    assert_eq!((img.image.width(), img.image.height()), (518, 392));
    let (sx, sy) = (518.0 / 1296.0, 392.0 / 968.0);
    assert_close(img.k[0][0], 1170.19 * sx, 1e-9, "fx");
    assert_close(img.k[1][1], 1170.19 * sy, 1e-9, "fy");
    assert_close(img.k[0][2], (647.75 + 0.5) * sx - 0.5, 1e-9, "cx");
    assert_close(img.k[1][2], (483.75 + 0.5) * sy - 0.5, 1e-9, "cy");
    assert_eq!(img.camera_from_original, IDENTITY3);
}

#[test]
fn a_reduced_decode_keeps_the_full_size_geometry() {
    // ScanNet colour decoded at 1/2 (648×484) then resized to 518×392: K and pose are exactly those of
    // the resize from 1296×968, and the pixels are the resize of the reduced image.
    let k = intrinsics(1170.19, 1170.19, 647.75, 483.75);
    let plan = SizeRule::default().plan(1296, 968);
    let full = CameraImage::new(image::RgbImage::new(1296, 968), k)
        .apply_all(&plan)
        .unwrap();
    let reduced = image::RgbImage::from_fn(648, 484, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 7]));
    let from_reduced = CameraImage::apply_all_from_reduced(reduced.clone(), (1296, 968), k, &plan).unwrap();
    assert_eq!(from_reduced.k, full.k);
    assert_eq!(from_reduced.camera_from_original, full.camera_from_original);
    let resized = CameraImage::new(reduced.clone(), k).apply_all(&plan).unwrap();
    assert_eq!(from_reduced.image.as_raw(), resized.image.as_raw());
    // A crop after the resize (a tall image) still applies; a non-exact reduction is refused.
    let tall = SizeRule::default().plan(968, 1296);
    let cropped =
        CameraImage::apply_all_from_reduced(image::RgbImage::new(484, 648), (968, 1296), k, &tall).unwrap();
    assert_eq!(cropped.image.dimensions(), (518, 518));
    let err = CameraImage::apply_all_from_reduced(image::RgbImage::new(649, 484), (1297, 968), k, &plan).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pixels decoded at 649×484 are not an exact 1/n reduction of the 1297×968 image followed by a resize"
    );
    // No reduction: the same as apply_all.
    let same = CameraImage::apply_all_from_reduced(image::RgbImage::new(1296, 968), (1296, 968), k, &plan).unwrap();
    assert_eq!(same.k, full.k);
}

#[test]
fn intrinsics_follow_arkit_portrait_rotation_resize_and_crop() {
    // 256×192 sensor image, sky direction Left → rotate 90° CW → 192×256, then 518×686, crop y 84.
    let (fx, fy, cx, cy) = (212.0, 211.0, 127.2, 95.9);
    let rot = ImageRotation::from_arkit_sky_direction("Left").unwrap();
    assert_eq!(rot, ImageRotation::Clockwise90);
    let mut ops = vec![ImageOp::Rotate(rot)];
    ops.extend(SizeRule::default().plan(192, 256));
    let img = CameraImage::new(image::RgbImage::new(256, 192), intrinsics(fx, fy, cx, cy))
        .apply_all(&ops)
        .unwrap();
    assert_eq!((img.image.width(), img.image.height()), (518, 518));
    // After CW rotation: fx' = fy, fy' = fx, cx' = H − 1 − cy, cy' = cx.
    let (sx, sy) = (518.0 / 192.0, 686.0 / 256.0);
    let expected = [
        [fy * sx, 0.0, (192.0 - 1.0 - cy + 0.5) * sx - 0.5],
        [0.0, fx * sy, (cx + 0.5) * sy - 0.5 - 84.0],
        [0.0, 0.0, 1.0],
    ];
    assert_mat3_close(&img.k, &expected, 1e-9);
    // The camera turned with the image: new x = −old y, new y = old x.
    assert_eq!(
        img.camera_from_original,
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    );
    assert_eq!(ImageRotation::from_arkit_sky_direction("Sideways"), None);
}

#[test]
fn image_ops_reject_what_does_not_fit() {
    let img = CameraImage::new(image::RgbImage::new(10, 8), IDENTITY3);
    let err = img
        .clone()
        .apply(&ImageOp::Crop {
            x: 4,
            y: 0,
            width: 7,
            height: 8,
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "crop 7×8 at (4, 0) does not fit in a 10×8 image"
    );
    let err = img
        .apply(&ImageOp::Resize {
            width: 0,
            height: 3,
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot resize a 10×8 image to 0×3");
}

/// Brightness-weighted centroid of an image's red channel.
fn centroid(img: &image::RgbImage) -> (f64, f64) {
    let (mut sum, mut su, mut sv) = (0.0, 0.0, 0.0);
    for (u, v, p) in img.enumerate_pixels() {
        let w = p[0] as f64;
        sum += w;
        su += w * u as f64;
        sv += w * v as f64;
    }
    (su / sum, sv / sum)
}

#[test]
fn resize_moves_pixel_centres_as_documented() {
    // A bright 2×2 block centred on (10.5, 6.5) in a 32×24 image.
    let mut src = image::RgbImage::new(32, 24);
    for (u, v) in [(10, 6), (11, 6), (10, 7), (11, 7)] {
        src.put_pixel(u, v, image::Rgb([255, 255, 255]));
    }
    for (w, h) in [(64, 48), (16, 12), (48, 30)] {
        let map = ImageOp::Resize {
            width: w,
            height: h,
        }
        .pixel_map(32, 24)
        .unwrap();
        let out = ImageOp::Resize {
            width: w,
            height: h,
        }
        .apply_pixels(&src)
        .unwrap();
        let expected = mat3_vec(&map.pixel, &[10.5, 6.5, 1.0]);
        let (cu, cv) = centroid(&out);
        assert_close(cu, expected[0], 0.05, &format!("u at {w}×{h}"));
        assert_close(cv, expected[1], 0.05, &format!("v at {w}×{h}"));
    }
}

#[test]
fn depth_histogram_uses_fixed_metric_bins() {
    // mm: invalid, 0.5 m, 1.5 m, exactly 10 m, 20 m, 9.999 m
    let values = [0u16, 500, 1500, 10000, 20000, 9999];
    let depth = DepthMap::new(3, 2, &values, 0.001).unwrap();
    let stats = depth_histogram(&depth, &DepthBins::default());
    let mut expected = vec![0.0f32; 16];
    expected[0] = 0.2; // 0.5 m in [0, 0.625)
    expected[2] = 0.2; // 1.5 m in [1.25, 1.875)
    expected[15] = 0.6; // 9.999 m, 10 m and 20 m (beyond the last edge)
    assert_eq!(stats.histogram, expected);
    assert_eq!(stats.valid_fraction, 5.0 / 6.0);

    let none = DepthMap::new(2, 1, &[0, 0], 0.001).unwrap();
    assert_eq!(
        depth_histogram(&none, &DepthBins::default()),
        DepthStats {
            histogram: vec![0.0; 16],
            valid_fraction: 0.0
        }
    );

    let bins = DepthBins {
        count: 4,
        min_m: 1.0,
        max_m: 3.0,
    };
    assert_eq!(bins.edges(), vec![1.0, 1.5, 2.0, 2.5, 3.0]);
    assert_eq!(
        [0.2, 1.0, 1.49, 1.5, 2.99, 3.0, 7.0].map(|d| bins.bin(d)),
        [0, 0, 0, 1, 3, 3, 3]
    );

    let err = DepthMap::new(3, 3, &values, 0.001).unwrap_err();
    assert_eq!(
        err.to_string(),
        "depth raster has 6 values, expected 3×3 = 9"
    );
}

#[test]
fn uniform_selection() {
    assert_eq!(select_uniform(10, 4), vec![0, 3, 6, 9]);
    assert_eq!(select_uniform(100, 8), vec![0, 14, 28, 42, 57, 71, 85, 99]);
    assert_eq!(select_uniform(3, 8), vec![0, 1, 2]);
    assert_eq!(select_uniform(100, 1), vec![0]);
    assert_eq!(select_uniform(5, 0), Vec::<usize>::new());
}

#[test]
fn coverage_selection_is_greedy_with_lowest_index_ties() {
    let v = |keys: &[i32]| keys.iter().map(|&k| [k, 0, 0]).collect::<Vec<_>>();
    let candidates = vec![v(&[1, 2, 3]), v(&[1, 2]), v(&[4, 5]), v(&[3, 4, 5, 6])];
    // D (4 new), then A (adds 1, 2; B ties at 2 but has the higher index).
    assert_eq!(select_coverage(&candidates, 2), vec![0, 3]);
    // Nothing new remains: the lowest unchosen index (B).
    assert_eq!(select_coverage(&candidates, 3), vec![0, 1, 3]);
    assert_eq!(select_coverage(&candidates, 10), vec![0, 1, 2, 3]);
    assert_eq!(select_coverage(&[], 4), Vec::<usize>::new());
}

#[test]
fn visible_voxels_of_a_wall() {
    // A wall 2.5 m in front of a camera at the world origin looking along world +Y.
    let (w, h) = (32u32, 24u32);
    let values = vec![2500u16; (w * h) as usize];
    let depth = DepthMap::new(w, h, &values, 0.001).unwrap();
    let k = intrinsics(20.0, 20.0, 15.5, 11.5);
    let c2w = level_camera_facing_plus_y([0.0, 0.0, 0.0]);
    let params = CoverageParams {
        voxel_m: 0.5,
        pixel_stride: 4,
        max_depth_m: 6.0,
        max_candidates: 8,
    };
    let keys = visible_voxels(&depth, &k, &c2w, &params);
    assert!(
        keys.iter().all(|k| k[1] == 5),
        "every point at y = 2.5 m lies in voxel row 5: {keys:?}"
    );
    // Stride 4 samples u = 0, 4, ..., 28 → x = (u − 15.5)/20·2.5 from −1.94 to 1.56 m → voxels −4..=3,
    // and v = 0, 4, ..., 20 → z = −(v − 11.5)/20·2.5 from 1.44 to −1.06 m → voxels 2..=−3.
    let xs: std::collections::BTreeSet<i32> = keys.iter().map(|k| k[0]).collect();
    let zs: std::collections::BTreeSet<i32> = keys.iter().map(|k| k[2]).collect();
    assert_eq!(
        xs.into_iter().collect::<Vec<_>>(),
        vec![-4, -3, -2, -1, 0, 1, 2, 3]
    );
    assert_eq!(
        zs.into_iter().collect::<Vec<_>>(),
        vec![-3, -2, -1, 0, 1, 2]
    );
    // Beyond max_depth nothing counts.
    let far = CoverageParams {
        max_depth_m: 2.0,
        ..params
    };
    assert!(visible_voxels(&depth, &k, &c2w, &far).is_empty());
}

#[test]
fn jpeg_encoding_is_deterministic() {
    let img = image::RgbImage::from_fn(40, 30, |u, v| {
        image::Rgb([(u * 6) as u8, (v * 8) as u8, ((u + v) * 3) as u8])
    });
    let a = encode_jpeg(&img, JPEG_QUALITY).unwrap();
    let b = encode_jpeg(&img.clone(), JPEG_QUALITY).unwrap();
    assert_eq!(a, b);
    assert_eq!(&a[..2], &[0xFF, 0xD8]);
    let decoded = image::load_from_memory(&a).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (40, 30));
}

#[test]
fn bad_depth_bins_are_an_error_not_a_panic() {
    assert!(DepthBins::default().validate().is_ok());
    let zero = DepthBins {
        count: 0,
        min_m: 0.0,
        max_m: 10.0,
    };
    assert_eq!(zero.validate().unwrap_err(), "depth bins need at least one bin and a finite range with max > min; got 0 bins over 0–10 m");
    assert!(DepthBins {
        count: 4,
        min_m: 3.0,
        max_m: 3.0
    }
    .validate()
    .is_err());
    // Even unvalidated, histograms stay in range instead of panicking.
    let depth = DepthMap::new(2, 1, &[1000, 2000], 0.001).unwrap();
    assert_eq!(depth_histogram(&depth, &zero).histogram, Vec::<f32>::new());
    let flat = DepthBins {
        count: 4,
        min_m: 3.0,
        max_m: 3.0,
    };
    assert_eq!(
        depth_histogram(&depth, &flat).histogram,
        vec![1.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn intrinsics_must_be_finite_positive_and_fit_the_image() {
    use roomplan_prep::geometry::{intrinsics, validate_intrinsics, validate_intrinsics4};
    // ScanNet's colour camera on its 1296x968 images.
    let k = intrinsics(1170.19, 1170.19, 647.75, 483.75);
    assert_eq!(validate_intrinsics(&k, 1296, 968), Ok(()));
    let cases = [
        (intrinsics(f64::NAN, 1170.19, 647.75, 483.75), 1296, 968, "intrinsics have a non-finite entry at row 0, column 0 (NaN)"),
        (intrinsics(-1170.19, 1170.19, 647.75, 483.75), 1296, 968, "focal length fx = -1170.19 px is implausible for a 1296x968 image (expected 6.48 to 77760 px)"),
        (intrinsics(1e7, 1170.19, 647.75, 483.75), 1296, 968, "focal length fx = 10000000 px is implausible"),
        // The same K on an image of another size: the principal point is off centre (or outside).
        (k, 640, 480, "principal point (647.75, 483.75) is not near the centre (319.5, 239.5) of the 640x480 image: the intrinsics are for another image size"),
        (k, 2592, 1936, "principal point (647.75, 483.75) is not near the centre (1295.5, 967.5) of the 2592x1936 image"),
        ([[1170.19, 3.0, 647.75], [0.0, 1170.19, 483.75], [0.0, 0.0, 1.0]], 1296, 968, "intrinsics are not a pinhole matrix"),
    ];
    for (k, w, h, expect) in cases {
        let err = validate_intrinsics(&k, w, h).unwrap_err();
        assert!(err.starts_with(expect), "{err}");
    }
    let k4 = [[1170.19, 0.0, 647.75, 0.0], [0.0, 1170.19, 483.75, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    assert_eq!(validate_intrinsics4(&k4, 1296, 968), Ok(()));
    let mut bad = k4;
    bad[3][3] = f64::INFINITY;
    assert_eq!(validate_intrinsics4(&bad, 1296, 968).unwrap_err(), "intrinsics have a non-finite entry (inf)");
}
