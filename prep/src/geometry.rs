//! Geometry shared by every prep binary: pose validation, the sample reference frame, intrinsics that
//! follow image transforms, the stored-image size rule, depth histograms and view selection.
//!
//! # Conventions (DESIGN.md "Frames" and "Pixels")
//!
//! - Matrices are row-major `[[f64; N]; N]`; `m[row][col]`.
//! - Worlds are Z-up (ScanNet and ARKitScenes both are). Cameras are OpenCV: +x right, +y down,
//!   +z forward.
//! - A [`Rigid`] maps "from" coordinates into "to" coordinates: `p_to = r · p_from + t`. A
//!   camera-to-world pose (c2w) is a `Rigid` from camera to world.
//! - The **reference frame** of a sample ([`ReferenceFrame`]) is anchored at the first selected view:
//!   origin at that camera's centre, +Y up (world +Z), −Z along the camera's viewing direction
//!   projected onto the horizontal plane, +X = +Y × +Z (right-handed: +X is to the right when facing
//!   −Z). When the camera looks (within 1e-6) straight up or down, its image-up direction (−y) projected
//!   onto the horizontal plane is used as the forward direction instead.
//! - Stored view geometry is the camera→reference transform `p_ref = R · p_cam + t`.
//! - Integer pixel coordinates are pixel centres. Resizing by `s` maps `c → (c + 0.5)·s − 0.5` and
//!   `f → f·s`; a crop subtracts its offset; rotations by 90° swap axes and rotate the camera about
//!   its optical axis, so the pose changes with the image ([`ImageOp`], [`CameraImage`]).
//! - Depth: 0 is invalid; depths are metres after multiplying by `metres_per_unit`.

use std::collections::HashSet;

use image::imageops;
use image::RgbImage;
use thiserror::Error;

pub type Vec3 = [f64; 3];
pub type Mat3 = [[f64; 3]; 3];
pub type Mat4 = [[f64; 4]; 4];

/// Default tolerance on `|RᵀR − I|` (max abs entry) and `|det R − 1|` for a pose to be accepted.
/// ScanNet writes poses with 6 decimals (errors ≈1e-6); garbage poses are far beyond 1e-3.
pub const POSE_TOLERANCE: f64 = 1e-3;

pub const IDENTITY3: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
pub const IDENTITY4: Mat4 = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

// ---------------------------------------------------------------------------------------------
// Small linear algebra (3×3 is all we need; no dependency for it).

pub fn mat3_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

pub fn mat3_transpose(a: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = a[j][i];
        }
    }
    out
}

pub fn mat3_vec(a: &Mat3, v: &Vec3) -> Vec3 {
    [
        a[0][0] * v[0] + a[0][1] * v[1] + a[0][2] * v[2],
        a[1][0] * v[0] + a[1][1] * v[1] + a[1][2] * v[2],
        a[2][0] * v[0] + a[2][1] * v[1] + a[2][2] * v[2],
    ]
}

pub fn det3(a: &Mat3) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// Inverse of a 3×3 matrix, `None` when singular (|det| < 1e-12).
pub fn mat3_inverse(a: &Mat3) -> Option<Mat3> {
    let det = det3(a);
    if !det.is_finite() || det.abs() < 1e-12 {
        return None;
    }
    let c =
        |r0: usize, r1: usize, c0: usize, c1: usize| a[r0][c0] * a[r1][c1] - a[r0][c1] * a[r1][c0];
    let adj = [
        [c(1, 2, 1, 2), -c(0, 2, 1, 2), c(0, 1, 1, 2)],
        [-c(1, 2, 0, 2), c(0, 2, 0, 2), -c(0, 1, 0, 2)],
        [c(1, 2, 0, 1), -c(0, 2, 0, 1), c(0, 1, 0, 1)],
    ];
    Some(adj.map(|row| row.map(|x| x / det)))
}

pub fn cross(a: &Vec3, b: &Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn norm(v: &Vec3) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

/// Rotation matrix of an axis-angle (Rodrigues) vector in radians (ARKitScenes `.traj`).
pub fn rodrigues(r: &Vec3) -> Mat3 {
    let theta = norm(r);
    if theta < 1e-12 {
        return IDENTITY3;
    }
    let k = [r[0] / theta, r[1] / theta, r[2] / theta];
    let (s, c) = theta.sin_cos();
    let kx = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]];
    let kx2 = mat3_mul(&kx, &kx);
    let mut out = IDENTITY3;
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] += s * kx[i][j] + (1.0 - c) * kx2[i][j];
        }
    }
    out
}

/// Rotation matrix of a quaternion given as (x, y, z, w) (SQA3D `rotation`); normalised first.
pub fn quaternion_xyzw_to_matrix(q: &[f64; 4]) -> Mat3 {
    let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]).sqrt();
    let (x, y, z, w) = if n > 0.0 {
        (q[0] / n, q[1] / n, q[2] / n, q[3] / n)
    } else {
        (0.0, 0.0, 0.0, 1.0)
    };
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

// ---------------------------------------------------------------------------------------------
// Rigid transforms and pose validation.

/// A rigid transform `p_to = r · p_from + t` (rotation + translation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rigid {
    pub r: Mat3,
    pub t: Vec3,
}

impl Rigid {
    pub const IDENTITY: Rigid = Rigid {
        r: IDENTITY3,
        t: [0.0; 3],
    };

    /// The upper 3×4 of a 4×4 matrix, unchecked (see [`validate_pose`] for raw data).
    pub fn from_mat4(m: &Mat4) -> Rigid {
        Rigid {
            r: [
                [m[0][0], m[0][1], m[0][2]],
                [m[1][0], m[1][1], m[1][2]],
                [m[2][0], m[2][1], m[2][2]],
            ],
            t: [m[0][3], m[1][3], m[2][3]],
        }
    }

    pub fn to_mat4(&self) -> Mat4 {
        let mut m = IDENTITY4;
        for i in 0..3 {
            m[i][..3].copy_from_slice(&self.r[i]);
            m[i][3] = self.t[i];
        }
        m
    }

    /// Row-major 16 numbers (the layout of `reference_world_pose` and `axis_alignment`).
    pub fn to_row_major(&self) -> [f64; 16] {
        mat4_to_row_major(&self.to_mat4())
    }

    pub fn apply_point(&self, p: &Vec3) -> Vec3 {
        let v = mat3_vec(&self.r, p);
        [v[0] + self.t[0], v[1] + self.t[1], v[2] + self.t[2]]
    }

    pub fn apply_vector(&self, v: &Vec3) -> Vec3 {
        mat3_vec(&self.r, v)
    }

    /// The inverse transform (assumes `r` is a rotation).
    pub fn inverse(&self) -> Rigid {
        let rt = mat3_transpose(&self.r);
        let t = mat3_vec(&rt, &self.t);
        Rigid {
            r: rt,
            t: [-t[0], -t[1], -t[2]],
        }
    }

    /// `self ∘ other`: first `other`, then `self` (`a_from_c = a_from_b.compose(&b_from_c)`).
    pub fn compose(&self, other: &Rigid) -> Rigid {
        Rigid {
            r: mat3_mul(&self.r, &other.r),
            t: self.apply_point(&other.t),
        }
    }
}

/// Row-major 9 numbers as f32 (the layout of stored `R` and `K`).
pub fn mat3_to_row_major_f32(m: &Mat3) -> [f32; 9] {
    let mut out = [0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            out[i * 3 + j] = m[i][j] as f32;
        }
    }
    out
}

pub fn mat4_to_row_major(m: &Mat4) -> [f64; 16] {
    let mut out = [0.0; 16];
    for i in 0..4 {
        out[i * 4..i * 4 + 4].copy_from_slice(&m[i]);
    }
    out
}

pub fn mat4_from_row_major(v: &[f64; 16]) -> Mat4 {
    let mut m = [[0.0; 4]; 4];
    for i in 0..4 {
        m[i].copy_from_slice(&v[i * 4..i * 4 + 4]);
    }
    m
}

pub fn mat4_mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut out = [[0.0; 4]; 4];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// Why a raw pose was rejected; the message is what goes to `rejects.jsonl`.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PoseError {
    #[error("pose has a non-finite entry at row {row}, column {col} ({value})")]
    NonFinite { row: usize, col: usize, value: f64 },
    #[error("pose last row is {row:?}, expected [0, 0, 0, 1]")]
    BadLastRow { row: [f64; 4] },
    #[error("pose rotation is not orthonormal: max |RᵀR − I| = {deviation:.3e} > tolerance {tolerance:.0e}")]
    NotOrthonormal { deviation: f64, tolerance: f64 },
    #[error("pose rotation is a reflection or degenerate: det R = {det:.6}, expected 1")]
    NotRotation { det: f64 },
    #[error("pose translation {t:?} is beyond {MAX_COORDINATE_M} m: not a plausible position")]
    FarTranslation { t: [f64; 3] },
}

/// Validate a raw 4×4 rigid pose with [`POSE_TOLERANCE`].
pub fn validate_pose(m: &Mat4) -> Result<Rigid, PoseError> {
    validate_pose_with_tolerance(m, POSE_TOLERANCE)
}

/// Validate a raw 4×4 rigid pose: every entry finite, last row exactly `0 0 0 1` (within
/// `tolerance`), rotation orthonormal (max |RᵀR − I| ≤ `tolerance`) with det ≈ +1, translation
/// within [`MAX_COORDINATE_M`].
pub fn validate_pose_with_tolerance(m: &Mat4, tolerance: f64) -> Result<Rigid, PoseError> {
    for (row, values) in m.iter().enumerate() {
        for (col, &value) in values.iter().enumerate() {
            if !value.is_finite() {
                return Err(PoseError::NonFinite { row, col, value });
            }
        }
    }
    let last = m[3];
    let expected = [0.0, 0.0, 0.0, 1.0];
    if last
        .iter()
        .zip(expected)
        .any(|(a, b)| (a - b).abs() > tolerance)
    {
        return Err(PoseError::BadLastRow { row: last });
    }
    let pose = Rigid::from_mat4(m);
    let rtr = mat3_mul(&mat3_transpose(&pose.r), &pose.r);
    let mut deviation: f64 = 0.0;
    for i in 0..3 {
        for j in 0..3 {
            deviation = deviation.max((rtr[i][j] - IDENTITY3[i][j]).abs());
        }
    }
    if deviation > tolerance {
        return Err(PoseError::NotOrthonormal {
            deviation,
            tolerance,
        });
    }
    let det = det3(&pose.r);
    if (det - 1.0).abs() > tolerance {
        return Err(PoseError::NotRotation { det });
    }
    if pose.t.iter().any(|x| x.abs() > MAX_COORDINATE_M) {
        return Err(PoseError::FarTranslation { t: pose.t });
    }
    Ok(pose)
}

// ---------------------------------------------------------------------------------------------
// The sample reference frame.

/// The gravity-aligned frame anchored at a sample's first selected view (see module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceFrame {
    /// Reference → world.
    pub world_from_ref: Rigid,
}

impl ReferenceFrame {
    /// The reference frame of a camera-to-world pose in a Z-up world.
    pub fn from_camera(c2w: &Rigid) -> ReferenceFrame {
        let column = |j: usize| [c2w.r[0][j], c2w.r[1][j], c2w.r[2][j]];
        let horizontal = |v: Vec3| {
            let h = [v[0], v[1], 0.0];
            let n = norm(&h);
            (n > 1e-6).then(|| [h[0] / n, h[1] / n, 0.0])
        };
        let view_dir = column(2);
        let image_up = column(1).map(|x| -x);
        // A camera looking straight up or down has no horizontal viewing direction: its image-up
        // direction is then horizontal (R is orthonormal), so one of the two always exists.
        let forward = horizontal(view_dir)
            .or_else(|| horizontal(image_up))
            .unwrap_or([0.0, 1.0, 0.0]);
        let y_axis = [0.0, 0.0, 1.0];
        let z_axis = forward.map(|x| -x);
        let x_axis = cross(&y_axis, &z_axis);
        let r = [
            [x_axis[0], y_axis[0], z_axis[0]],
            [x_axis[1], y_axis[1], z_axis[1]],
            [x_axis[2], y_axis[2], z_axis[2]],
        ];
        ReferenceFrame {
            world_from_ref: Rigid { r, t: c2w.t },
        }
    }

    pub fn ref_from_world(&self) -> Rigid {
        self.world_from_ref.inverse()
    }

    /// Camera → reference (`p_ref = R·p_cam + t`) of a camera-to-world pose.
    pub fn camera_to_reference(&self, c2w: &Rigid) -> Rigid {
        self.ref_from_world().compose(c2w)
    }

    /// A world point in the reference frame.
    pub fn point_to_reference(&self, p_world: &Vec3) -> Vec3 {
        self.ref_from_world().apply_point(p_world)
    }

    /// A world direction (heading, box axis) in the reference frame.
    pub fn direction_to_reference(&self, d_world: &Vec3) -> Vec3 {
        mat3_vec(&mat3_transpose(&self.world_from_ref.r), d_world)
    }

    /// A world rotation (e.g. a box's box→world axes) as box→reference.
    pub fn rotation_to_reference(&self, r_world: &Mat3) -> Mat3 {
        mat3_mul(&mat3_transpose(&self.world_from_ref.r), r_world)
    }
}

/// Yaw of a direction in the reference frame: 0 when facing −Z, increasing counter-clockwise seen
/// from above (a right-handed rotation about +Y; facing −X is +π/2). Radians in (−π, π].
pub fn heading_yaw(d_ref: &Vec3) -> f64 {
    (-d_ref[0]).atan2(-d_ref[2])
}

// ---------------------------------------------------------------------------------------------
// Intrinsics and image transforms, in one code path.

/// A pinhole intrinsics matrix from its four parameters.
pub fn intrinsics(fx: f64, fy: f64, cx: f64, cy: f64) -> Mat3 {
    [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
}

/// Largest plausible camera translation or scene coordinate, in metres (a room scan spans tens of
/// metres; the ARKitScenes laser-scan worlds a few hundred). Beyond it a number is garbage.
pub const MAX_COORDINATE_M: f64 = 1e4;

/// Field of view limits of a plausible camera: focal lengths between `size / 200` (about 179.4°)
/// and `60 · size` (about 0.95°) pixels.
const MIN_FOCAL_PER_PIXEL: f64 = 1.0 / 200.0;
const MAX_FOCAL_PER_PIXEL: f64 = 60.0;

/// How far the principal point may lie from the image centre, as a fraction of the image size
/// (real cameras: a few percent; an image twice the size the intrinsics are for is off by a quarter). Farther means the intrinsics are for another image size.
pub const MAX_PRINCIPAL_OFFSET: f64 = 0.2;

/// Checks that `k` is a plausible pinhole intrinsics matrix for a `width`×`height` image: finite,
/// `[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]` (zero skew), positive focal lengths within the field of
/// view limits above, and the principal point within [`MAX_PRINCIPAL_OFFSET`] of the image centre
/// (so inside the image). The message says what is wrong, with the values.
pub fn validate_intrinsics(k: &Mat3, width: u32, height: u32) -> Result<(), String> {
    if let Some((r, c)) = (0..9).map(|i| (i / 3, i % 3)).find(|&(r, c)| !k[r][c].is_finite()) {
        return Err(format!("intrinsics have a non-finite entry at row {r}, column {c} ({})", k[r][c]));
    }
    let [fx, fy, cx, cy] = [k[0][0], k[1][1], k[0][2], k[1][2]];
    if k[0][1] != 0.0 || k[1][0] != 0.0 || k[2] != [0.0, 0.0, 1.0] {
        return Err(format!(
            "intrinsics are not a pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]: {k:?}"
        ));
    }
    if width == 0 || height == 0 {
        return Err(format!("image size {width}x{height} is empty"));
    }
    for (name, f, size) in [("fx", fx, width), ("fy", fy, height)] {
        let size = size as f64;
        if !(f >= size * MIN_FOCAL_PER_PIXEL && f <= size * MAX_FOCAL_PER_PIXEL) {
            return Err(format!(
                "focal length {name} = {f} px is implausible for a {width}x{height} image (expected {} to {} px)",
                size * MIN_FOCAL_PER_PIXEL,
                size * MAX_FOCAL_PER_PIXEL
            ));
        }
    }
    let (mx, my) = ((width as f64 - 1.0) / 2.0, (height as f64 - 1.0) / 2.0);
    if (cx - mx).abs() > MAX_PRINCIPAL_OFFSET * width as f64 || (cy - my).abs() > MAX_PRINCIPAL_OFFSET * height as f64 {
        return Err(format!(
            "principal point ({cx}, {cy}) is not near the centre ({mx}, {my}) of the {width}x{height} image: the intrinsics are for another image size"
        ));
    }
    Ok(())
}

/// [`validate_intrinsics`] for the 4×4 form of ScanNet (`[[fx,0,cx,0],[0,fy,cy,0],[0,0,1,0],[0,0,0,1]]`):
/// also checks the extra row and column.
pub fn validate_intrinsics4(m: &[[f64; 4]; 4], width: u32, height: u32) -> Result<(), String> {
    let extra = [m[0][3], m[1][3], m[2][3], m[3][0], m[3][1], m[3][2], m[3][3]];
    if extra != [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] {
        if let Some(bad) = extra.iter().find(|x| !x.is_finite()) {
            return Err(format!("intrinsics have a non-finite entry ({bad})"));
        }
        return Err(format!(
            "4x4 intrinsics must end in a zero column and the row [0, 0, 0, 1]: {m:?}"
        ));
    }
    let k = [
        [m[0][0], m[0][1], m[0][2]],
        [m[1][0], m[1][1], m[1][2]],
        [m[2][0], m[2][1], m[2][2]],
    ];
    validate_intrinsics(&k, width, height)
}

/// Checks that a rigid transform's numbers are finite and of plausible size (translation within
/// [`MAX_COORDINATE_M`]); the rotation must already be validated (e.g. by [`validate_pose`]).
pub fn check_translation(t: &Vec3) -> Result<(), String> {
    if t.iter().any(|x| !x.is_finite() || x.abs() > MAX_COORDINATE_M) {
        return Err(format!(
            "translation {t:?} is not finite or beyond {MAX_COORDINATE_M} m"
        ));
    }
    Ok(())
}

/// A rotation of an image by a multiple of 90°.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageRotation {
    None,
    /// 90° clockwise as displayed.
    Clockwise90,
    /// 90° counter-clockwise as displayed.
    CounterClockwise90,
    Half,
}

impl ImageRotation {
    /// The rotation that makes an ARKitScenes capture upright, from `metadata.csv:sky_direction`
    /// (`Up` as is, `Left` 90° CW, `Right` 90° CCW, `Down` 180°; FORMATS.md §4.2).
    pub fn from_arkit_sky_direction(sky: &str) -> Option<ImageRotation> {
        match sky {
            "Up" => Some(ImageRotation::None),
            "Left" => Some(ImageRotation::Clockwise90),
            "Right" => Some(ImageRotation::CounterClockwise90),
            "Down" => Some(ImageRotation::Half),
            _ => None,
        }
    }
}

/// One transform of a stored image. Each op defines both what happens to the pixels
/// ([`ImageOp::apply_pixels`]) and to the camera ([`ImageOp::pixel_map`]); [`CameraImage::apply`] uses
/// both together so that K and pose can never drift from the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOp {
    Resize {
        width: u32,
        height: u32,
    },
    Crop {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    Rotate(ImageRotation),
}

/// How an op moves pixels and the camera: `pixel_new ~ pixel · pixel_old` (homogeneous pixel
/// coordinates, pixel centres at integers) and `p_cam_new = camera · p_cam_old`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelMap {
    pub pixel: Mat3,
    pub camera: Mat3,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ImageOpError {
    #[error(
        "crop {width}×{height} at ({x}, {y}) does not fit in a {image_width}×{image_height} image"
    )]
    CropOutside {
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        image_width: u32,
        image_height: u32,
    },
    #[error("the resampler failed: {0}")]
    Resampler(String),
    #[error(
        "pixels decoded at {reduced_width}×{reduced_height} are not an exact 1/n reduction of the \
         {image_width}×{image_height} image followed by a resize"
    )]
    NotAReduction {
        reduced_width: u32,
        reduced_height: u32,
        image_width: u32,
        image_height: u32,
    },
    #[error("cannot resize a {image_width}×{image_height} image to {width}×{height}")]
    EmptyResize {
        width: u32,
        height: u32,
        image_width: u32,
        image_height: u32,
    },
}

impl ImageOp {
    /// The pixel and camera maps of this op on a `width × height` input.
    pub fn pixel_map(&self, width: u32, height: u32) -> Result<PixelMap, ImageOpError> {
        let (w, h) = (width as f64, height as f64);
        Ok(match *self {
            ImageOp::Resize {
                width: nw,
                height: nh,
            } => {
                if nw == 0 || nh == 0 || width == 0 || height == 0 {
                    return Err(ImageOpError::EmptyResize {
                        width: nw,
                        height: nh,
                        image_width: width,
                        image_height: height,
                    });
                }
                let (sx, sy) = (nw as f64 / w, nh as f64 / h);
                PixelMap {
                    pixel: [
                        [sx, 0.0, 0.5 * sx - 0.5],
                        [0.0, sy, 0.5 * sy - 0.5],
                        [0.0, 0.0, 1.0],
                    ],
                    camera: IDENTITY3,
                    width: nw,
                    height: nh,
                }
            }
            ImageOp::Crop {
                x,
                y,
                width: cw,
                height: ch,
            } => {
                let fits = cw > 0
                    && ch > 0
                    && x as u64 + cw as u64 <= width as u64
                    && y as u64 + ch as u64 <= height as u64;
                if !fits {
                    return Err(ImageOpError::CropOutside {
                        x,
                        y,
                        width: cw,
                        height: ch,
                        image_width: width,
                        image_height: height,
                    });
                }
                PixelMap {
                    pixel: [
                        [1.0, 0.0, -(x as f64)],
                        [0.0, 1.0, -(y as f64)],
                        [0.0, 0.0, 1.0],
                    ],
                    camera: IDENTITY3,
                    width: cw,
                    height: ch,
                }
            }
            ImageOp::Rotate(ImageRotation::None) => PixelMap {
                pixel: IDENTITY3,
                camera: IDENTITY3,
                width,
                height,
            },
            // (u, v) → (H−1−v, u); camera x' = −y, y' = x.
            ImageOp::Rotate(ImageRotation::Clockwise90) => PixelMap {
                pixel: [[0.0, -1.0, h - 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                camera: [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                width: height,
                height: width,
            },
            // (u, v) → (v, W−1−u); camera x' = y, y' = −x.
            ImageOp::Rotate(ImageRotation::CounterClockwise90) => PixelMap {
                pixel: [[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]],
                camera: [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                width: height,
                height: width,
            },
            // (u, v) → (W−1−u, H−1−v); camera x' = −x, y' = −y.
            ImageOp::Rotate(ImageRotation::Half) => PixelMap {
                pixel: [[-1.0, 0.0, w - 1.0], [0.0, -1.0, h - 1.0], [0.0, 0.0, 1.0]],
                camera: [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
                width,
                height,
            },
        })
    }

    /// Apply the op to the pixels (bicubic resize: Pillow's BICUBIC, as VGGT's preprocessing uses;
    /// see [`crate::imaging`]).
    pub fn apply_pixels(&self, image: &RgbImage) -> Result<RgbImage, ImageOpError> {
        // Validate through the same map so that pixels and camera accept exactly the same ops.
        self.pixel_map(image.width(), image.height())?;
        Ok(match *self {
            ImageOp::Resize { width, height } => crate::imaging::resize_rgb(image, width, height)
                .map_err(|e| ImageOpError::Resampler(e.to_string()))?,
            ImageOp::Crop {
                x,
                y,
                width,
                height,
            } => imageops::crop_imm(image, x, y, width, height).to_image(),
            ImageOp::Rotate(ImageRotation::None) => image.clone(),
            ImageOp::Rotate(ImageRotation::Clockwise90) => imageops::rotate90(image),
            ImageOp::Rotate(ImageRotation::CounterClockwise90) => imageops::rotate270(image),
            ImageOp::Rotate(ImageRotation::Half) => imageops::rotate180(image),
        })
    }
}

/// An image with the intrinsics of its pixels and the rotation from the original camera to its
/// current camera. Transform it only through [`CameraImage::apply`].
#[derive(Clone, Debug)]
pub struct CameraImage {
    pub image: RgbImage,
    /// Intrinsics of `image`.
    pub k: Mat3,
    /// `p_cam_current = camera_from_original · p_cam_original`.
    pub camera_from_original: Mat3,
}

impl CameraImage {
    pub fn new(image: RgbImage, k: Mat3) -> CameraImage {
        CameraImage {
            image,
            k,
            camera_from_original: IDENTITY3,
        }
    }

    /// Apply one op to the pixels, K and camera together: `K' = P·K·Cᵀ`.
    pub fn apply(self, op: &ImageOp) -> Result<CameraImage, ImageOpError> {
        let map = op.pixel_map(self.image.width(), self.image.height())?;
        let image = op.apply_pixels(&self.image)?;
        let k = mat3_mul(&mat3_mul(&map.pixel, &self.k), &mat3_transpose(&map.camera));
        let camera_from_original = mat3_mul(&map.camera, &self.camera_from_original);
        Ok(CameraImage {
            image,
            k,
            camera_from_original,
        })
    }

    pub fn apply_all(self, ops: &[ImageOp]) -> Result<CameraImage, ImageOpError> {
        ops.iter().try_fold(self, |img, op| img.apply(op))
    }

    /// `CameraImage::new(full, k).apply_all(ops)` where `full` (`full_size`, intrinsics `k`) was
    /// decoded straight to `reduced`, 1/n of its size on both sides (libjpeg's DCT-scaled decoding,
    /// [`crate::imaging::decode_jpeg_for_resize`]), and `ops` start with a resize. A 1/n reduction
    /// maps pixel centres as a resize to 1/n does (`x' = x/n + (1/n − 1)/2`), and composed with
    /// the resize from 1/n size it is exactly the resize from full size; so K and the pose are
    /// computed from the full size (the same numbers as without the reduction) and only the pixels
    /// come from `reduced`. Without a reduction this is `apply_all`.
    pub fn apply_all_from_reduced(
        reduced: RgbImage,
        full_size: (u32, u32),
        k: Mat3,
        ops: &[ImageOp],
    ) -> Result<CameraImage, ImageOpError> {
        let (rw, rh) = reduced.dimensions();
        let (fw, fh) = full_size;
        if (rw, rh) == full_size {
            return CameraImage::new(reduced, k).apply_all(ops);
        }
        let exact = rw > 0 && rh > 0 && fw % rw == 0 && fh % rh == 0 && fw / rw == fh / rh;
        let (Some(first @ ImageOp::Resize { .. }), true) = (ops.first(), exact) else {
            return Err(ImageOpError::NotAReduction {
                reduced_width: rw,
                reduced_height: rh,
                image_width: fw,
                image_height: fh,
            });
        };
        let map = first.pixel_map(fw, fh)?;
        let image = first.apply_pixels(&reduced)?;
        let resized = CameraImage {
            image,
            k: mat3_mul(&mat3_mul(&map.pixel, &k), &mat3_transpose(&map.camera)),
            camera_from_original: map.camera,
        };
        resized.apply_all(&ops[1..])
    }

    /// The camera-to-world pose of the current image from the original camera's.
    pub fn adjust_pose(&self, c2w_original: &Rigid) -> Rigid {
        c2w_original.compose(&Rigid {
            r: mat3_transpose(&self.camera_from_original),
            t: [0.0; 3],
        })
    }
}

/// Project a camera-frame point to a pixel (`None` behind the camera).
pub fn project(k: &Mat3, p_cam: &Vec3) -> Option<[f64; 2]> {
    if p_cam[2] <= 0.0 {
        return None;
    }
    let q = mat3_vec(k, p_cam);
    Some([q[0] / q[2], q[1] / q[2]])
}

/// The size of stored images: VGGT's rule by default (width 518, height `round(h·518/w/14)·14`,
/// then centre-cropped to at most 518 rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SizeRule {
    pub width: u32,
    /// Heights are rounded to a multiple of this (VGGT's patch size).
    pub multiple: u32,
    /// Taller images are centre-cropped to this many rows.
    pub max_height: u32,
}

impl Default for SizeRule {
    fn default() -> Self {
        SizeRule {
            width: 518,
            multiple: 14,
            max_height: 518,
        }
    }
}

impl SizeRule {
    /// The ops taking a `width × height` image to its stored size: a resize, then a centre crop of the
    /// height when needed (crop offset rounded down, as VGGT's `(h − 518) // 2`).
    pub fn plan(&self, width: u32, height: u32) -> Vec<ImageOp> {
        // VGGT computes `round(height * (518 / width) / 14) * 14` in Python: the same operation order
        // and Python's round-half-to-even, so ties (e.g. 148×10 → 2.5 patches) give the same height.
        let scaled =
            height as f64 * (self.width as f64 / width.max(1) as f64) / self.multiple as f64;
        let new_height = ((scaled.round_ties_even() as u32) * self.multiple).max(self.multiple);
        let mut ops = vec![ImageOp::Resize {
            width: self.width,
            height: new_height,
        }];
        if new_height > self.max_height {
            ops.push(ImageOp::Crop {
                x: 0,
                y: (new_height - self.max_height) / 2,
                width: self.width,
                height: self.max_height,
            });
        }
        ops
    }
}

/// Default JPEG quality of stored images.
pub const JPEG_QUALITY: u8 = 90;

pub use crate::imaging::encode_jpeg;

// ---------------------------------------------------------------------------------------------
// Depth.

/// A borrowed depth raster (ScanNet and ARKitScenes store u16 millimetres; 0 = invalid).
#[derive(Clone, Copy, Debug)]
pub struct DepthMap<'a> {
    pub width: u32,
    pub height: u32,
    pub values: &'a [u16],
    pub metres_per_unit: f64,
}

#[derive(Debug, Clone, PartialEq, Error)]
#[error("depth raster has {len} values, expected {width}×{height} = {expected}")]
pub struct DepthSizeError {
    pub len: usize,
    pub width: u32,
    pub height: u32,
    pub expected: usize,
}

impl<'a> DepthMap<'a> {
    pub fn new(
        width: u32,
        height: u32,
        values: &'a [u16],
        metres_per_unit: f64,
    ) -> Result<Self, DepthSizeError> {
        let expected = width as usize * height as usize;
        if values.len() != expected {
            return Err(DepthSizeError {
                len: values.len(),
                width,
                height,
                expected,
            });
        }
        Ok(DepthMap {
            width,
            height,
            values,
            metres_per_unit,
        })
    }

    /// Depth in metres at pixel (u, v), `None` when invalid.
    pub fn metres(&self, u: u32, v: u32) -> Option<f64> {
        let raw = self.values[v as usize * self.width as usize + u as usize];
        (raw != 0).then_some(raw as f64 * self.metres_per_unit)
    }
}

/// Fixed metric depth bins: `count` equal bins over `[min_m, max_m]`; depths below `min_m` fall in
/// the first bin and depths at or beyond `max_m` in the last.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DepthBins {
    pub count: usize,
    pub min_m: f64,
    pub max_m: f64,
}

impl Default for DepthBins {
    fn default() -> Self {
        DepthBins {
            count: 16,
            min_m: 0.0,
            max_m: 10.0,
        }
    }
}

impl DepthBins {
    /// The `count + 1` bin edges in metres.
    pub fn edges(&self) -> Vec<f64> {
        (0..=self.count)
            .map(|i| self.min_m + (self.max_m - self.min_m) * i as f64 / self.count as f64)
            .collect()
    }

    /// Check what command-line arguments can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0
            || !(self.max_m > self.min_m)
            || !self.min_m.is_finite()
            || !self.max_m.is_finite()
        {
            return Err(format!(
                "depth bins need at least one bin and a finite range with max > min; got {} bins over {}–{} m",
                self.count, self.min_m, self.max_m
            ));
        }
        Ok(())
    }

    /// The bin of a valid depth (for valid bins, see [`DepthBins::validate`]; never out of range).
    pub fn bin(&self, depth_m: f64) -> usize {
        let f = (depth_m - self.min_m) / (self.max_m - self.min_m) * self.count as f64;
        if f.is_nan() || f <= 0.0 {
            0
        } else {
            (f as usize).min(self.count.saturating_sub(1))
        }
    }
}

/// A view's depth histogram (fractions of valid pixels per bin) and the valid-pixel fraction.
#[derive(Clone, Debug, PartialEq)]
pub struct DepthStats {
    pub histogram: Vec<f32>,
    pub valid_fraction: f32,
}

/// Histogram of valid depths over fixed bins: sums to 1 when any pixel is valid, all zeros otherwise
/// (empty with zero bins).
///
/// Pixels are first counted per raw value and each distinct value is binned once: the counts are
/// those of binning every pixel ([`DepthBins::bin`] sees the same `f64` for the same raw value),
/// at one increment per pixel instead of a float conversion and division.
pub fn depth_histogram(depth: &DepthMap, bins: &DepthBins) -> DepthStats {
    let mut counts = vec![0u64; bins.count.max(1)];
    let mut valid = 0u64;
    let mut per_raw = vec![0u32; 1 << 16];
    // u32 counters cannot overflow within a chunk of at most u32::MAX pixels.
    for chunk in depth.values.chunks(u32::MAX as usize) {
        for &raw in chunk {
            per_raw[raw as usize] += 1;
        }
        for (raw, n) in per_raw.iter_mut().enumerate().skip(1) {
            if *n != 0 {
                counts[bins.bin(raw as f64 * depth.metres_per_unit)] += u64::from(*n);
                valid += u64::from(*n);
                *n = 0;
            }
        }
    }
    let total = depth.values.len() as u64;
    counts.truncate(bins.count);
    let histogram = counts
        .iter()
        .map(|&c| {
            if valid == 0 {
                0.0
            } else {
                (c as f64 / valid as f64) as f32
            }
        })
        .collect();
    let valid_fraction = if total == 0 {
        0.0
    } else {
        (valid as f64 / total as f64) as f32
    };
    DepthStats {
        histogram,
        valid_fraction,
    }
}

// ---------------------------------------------------------------------------------------------
// View selection.

/// How views are chosen among a scene's valid frames.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum ViewSelection {
    /// Evenly spaced over the valid frames, first and last included.
    Uniform,
    /// Greedy maximum coverage of the voxels seen in back-projected depth ([`CoverageParams`]).
    Coverage(CoverageParams),
}

/// Parameters of coverage selection.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CoverageParams {
    /// Voxel edge in metres.
    pub voxel_m: f64,
    /// Back-project every `pixel_stride`-th pixel in each direction.
    pub pixel_stride: u32,
    /// Ignore depths beyond this (metres): far depth is noisy and would dominate the count.
    pub max_depth_m: f64,
    /// At most this many candidate frames (evenly spaced over the valid ones) are back-projected.
    pub max_candidates: usize,
}

impl Default for CoverageParams {
    fn default() -> Self {
        CoverageParams {
            voxel_m: 0.2,
            pixel_stride: 8,
            max_depth_m: 6.0,
            max_candidates: 128,
        }
    }
}

/// `num_views` indices evenly spaced over `0..num_frames`, ascending, first and last included
/// (index `round(i·(n−1)/(k−1))`); all frames when there are not more than `num_views`.
pub fn select_uniform(num_frames: usize, num_views: usize) -> Vec<usize> {
    if num_frames <= num_views {
        return (0..num_frames).collect();
    }
    match num_views {
        0 => vec![],
        1 => vec![0],
        k => (0..k)
            .map(|i| ((i * (num_frames - 1)) as f64 / (k - 1) as f64).round() as usize)
            .collect(),
    }
}

/// The voxel keys (sorted, unique) of the valid depth pixels of one frame, back-projected through
/// the depth intrinsics `k_depth` and the camera-to-world pose.
pub fn visible_voxels(
    depth: &DepthMap,
    k_depth: &Mat3,
    c2w: &Rigid,
    params: &CoverageParams,
) -> Vec<[i32; 3]> {
    let Some(k_inv) = mat3_inverse(k_depth) else {
        return vec![];
    };
    let stride = params.pixel_stride.max(1);
    let mut keys = Vec::new();
    for v in (0..depth.height).step_by(stride as usize) {
        for u in (0..depth.width).step_by(stride as usize) {
            let Some(d) = depth.metres(u, v) else {
                continue;
            };
            if d > params.max_depth_m {
                continue;
            }
            let ray = mat3_vec(&k_inv, &[u as f64, v as f64, 1.0]);
            let p = c2w.apply_point(&[ray[0] * d, ray[1] * d, ray[2] * d]);
            keys.push(p.map(|x| (x / params.voxel_m).floor() as i32));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Greedy maximum coverage: repeatedly take the candidate adding the most unseen voxels (ties: the
/// lowest index) until `num_views` are chosen; returns candidate indices ascending, so the earliest
/// chosen frame anchors the reference frame.
pub fn select_coverage(voxels: &[Vec<[i32; 3]>], num_views: usize) -> Vec<usize> {
    // Duplicated keys in a candidate must count once.
    let voxels: Vec<Vec<[i32; 3]>> = voxels
        .iter()
        .map(|keys| {
            let mut keys = keys.clone();
            keys.sort_unstable();
            keys.dedup();
            keys
        })
        .collect();
    let mut seen: HashSet<[i32; 3]> = HashSet::new();
    let mut chosen = vec![false; voxels.len()];
    let mut picked = Vec::new();
    while picked.len() < num_views.min(voxels.len()) {
        let mut best: Option<(usize, usize)> = None;
        for (i, keys) in voxels.iter().enumerate() {
            if chosen[i] {
                continue;
            }
            let gain = keys.iter().filter(|k| !seen.contains(*k)).count();
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((i, gain));
            }
        }
        let Some((i, _)) = best else { break };
        chosen[i] = true;
        seen.extend(voxels[i].iter().copied());
        picked.push(i);
    }
    picked.sort_unstable();
    picked
}
