//! Minimal f64 linear algebra: 3-vectors, 3×3 rotations and rigid transforms.
//! Kept local so the generator does not depend on the readers' geometry code it is meant to test.

use serde::{Deserialize, Serialize};

pub type Vec3 = [f64; 3];

/// Transcendental functions from the pure-Rust `libm`, so that output bytes do not depend on
/// the platform's C math library (the generator promises identical files on every machine).
pub trait DetMath {
    fn dsin(self) -> f64;
    fn dcos(self) -> f64;
    fn dsin_cos(self) -> (f64, f64);
    fn datan2(self, x: f64) -> f64;
    fn dacos(self) -> f64;
    fn dhypot(self, y: f64) -> f64;
}

impl DetMath for f64 {
    fn dsin(self) -> f64 {
        libm::sin(self)
    }
    fn dcos(self) -> f64 {
        libm::cos(self)
    }
    fn dsin_cos(self) -> (f64, f64) {
        (libm::sin(self), libm::cos(self))
    }
    fn datan2(self, x: f64) -> f64 {
        libm::atan2(self, x)
    }
    fn dacos(self) -> f64 {
        libm::acos(self)
    }
    fn dhypot(self, y: f64) -> f64 {
        libm::hypot(self, y)
    }
}

pub fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
pub fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub fn scale(a: Vec3, s: f64) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
pub fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}
pub fn normalize(a: Vec3) -> Vec3 {
    scale(a, 1.0 / norm(a))
}

/// Row-major 3×3 matrix.
pub type Mat3 = [[f64; 3]; 3];

pub const IDENTITY3: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

pub fn mat_vec(m: &Mat3, v: Vec3) -> Vec3 {
    [dot(m[0], v), dot(m[1], v), dot(m[2], v)]
}
pub fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut r = [[0.0; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    r
}
pub fn transpose(m: &Mat3) -> Mat3 {
    let mut r = [[0.0; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = m[j][i];
        }
    }
    r
}
/// Matrix whose columns are `x`, `y`, `z`.
pub fn from_columns(x: Vec3, y: Vec3, z: Vec3) -> Mat3 {
    [[x[0], y[0], z[0]], [x[1], y[1], z[1]], [x[2], y[2], z[2]]]
}
pub fn column(m: &Mat3, j: usize) -> Vec3 {
    [m[0][j], m[1][j], m[2][j]]
}
/// Rotation by `angle` radians about +Z.
pub fn rot_z(angle: f64) -> Mat3 {
    let (s, c) = angle.dsin_cos();
    [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
}

/// Rotation matrix → axis-angle (Rodrigues) vector, robust near 0 and π.
pub fn rotation_to_axis_angle(r: &Mat3) -> Vec3 {
    let tr = r[0][0] + r[1][1] + r[2][2];
    let v = [r[2][1] - r[1][2], r[0][2] - r[2][0], r[1][0] - r[0][1]];
    // atan2 keeps full precision near 0 and π, where acos of the trace alone does not.
    let angle = (norm(v) / 2.0).datan2((tr - 1.0) / 2.0);
    if angle < 1e-9 {
        return scale(v, 0.5);
    }
    if std::f64::consts::PI - angle < 1e-6 {
        // sin(angle) ≈ 0: read the axis from the symmetric part R = 2aaᵀ − I.
        let diag = [r[0][0], r[1][1], r[2][2]];
        let i = (0..3)
            .max_by(|&a, &b| diag[a].total_cmp(&diag[b]))
            .unwrap_or(0);
        let mut axis = [0.0; 3];
        axis[i] = ((diag[i] + 1.0) / 2.0).max(0.0).sqrt();
        for j in 0..3 {
            if j != i {
                axis[j] = (r[i][j] + r[j][i]) / (4.0 * axis[i]);
            }
        }
        return scale(normalize(axis), angle);
    }
    scale(v, angle / (2.0 * angle.dsin()))
}

/// Axis-angle (Rodrigues) vector → rotation matrix.
pub fn axis_angle_to_rotation(v: Vec3) -> Mat3 {
    let angle = norm(v);
    if angle < 1e-12 {
        return IDENTITY3;
    }
    let [x, y, z] = scale(v, 1.0 / angle);
    let (s, c) = angle.dsin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

/// Rigid transform p' = R·p + t.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rigid {
    pub r: Mat3,
    pub t: Vec3,
}

impl Rigid {
    pub const IDENTITY: Rigid = Rigid {
        r: IDENTITY3,
        t: [0.0; 3],
    };
    pub fn apply(&self, p: Vec3) -> Vec3 {
        add(mat_vec(&self.r, p), self.t)
    }
    pub fn rotate(&self, v: Vec3) -> Vec3 {
        mat_vec(&self.r, v)
    }
    pub fn compose(&self, other: &Rigid) -> Rigid {
        Rigid {
            r: mat_mul(&self.r, &other.r),
            t: self.apply(other.t),
        }
    }
    pub fn inverse(&self) -> Rigid {
        let rt = transpose(&self.r);
        Rigid {
            r: rt,
            t: scale(mat_vec(&rt, self.t), -1.0),
        }
    }
    /// From a row-major 4×4 (the last row is ignored).
    pub fn from_row_major(m: &[f64; 16]) -> Rigid {
        Rigid {
            r: [[m[0], m[1], m[2]], [m[4], m[5], m[6]], [m[8], m[9], m[10]]],
            t: [m[3], m[7], m[11]],
        }
    }
    /// Row-major 4×4 as 16 numbers.
    pub fn to_row_major(&self) -> [f64; 16] {
        let r = &self.r;
        let t = self.t;
        [
            r[0][0], r[0][1], r[0][2], t[0], r[1][0], r[1][1], r[1][2], t[1], r[2][0], r[2][1],
            r[2][2], t[2], 0.0, 0.0, 0.0, 1.0,
        ]
    }
    /// Column-major 4×4 as 16 numbers (simd_float4x4 / RoomPlan order).
    pub fn to_column_major(&self) -> [f64; 16] {
        let m = self.to_row_major();
        let mut out = [0.0; 16];
        for i in 0..4 {
            for j in 0..4 {
                out[j * 4 + i] = m[i * 4 + j];
            }
        }
        out
    }
}

/// Pinhole intrinsics; integer pixel coordinates are pixel centres (DESIGN.md).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intrinsics {
    pub width: u32,
    pub height: u32,
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
}

impl Intrinsics {
    /// Row-major 4×4 in ScanNet's `makeIntrinsicMatrix` layout.
    pub fn to_4x4_row_major(&self) -> [f64; 16] {
        [
            self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0,
            0.0, 1.0,
        ]
    }
    /// Camera-frame direction through pixel centre (u, v), with z = 1 so that the ray
    /// parameter equals the z-depth.
    pub fn ray(&self, u: f64, v: f64) -> Vec3 {
        [(u - self.cx) / self.fx, (v - self.cy) / self.fy, 1.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_angle_round_trips_including_half_turn() {
        for v in [
            [0.0, 0.0, 0.0],
            [0.3, -0.2, 0.9],
            [0.0, 0.0, std::f64::consts::PI],
            [
                std::f64::consts::PI / 2f64.sqrt(),
                std::f64::consts::PI / 2f64.sqrt(),
                0.0,
            ],
        ] {
            let r = axis_angle_to_rotation(v);
            let back = axis_angle_to_rotation(rotation_to_axis_angle(&r));
            for i in 0..3 {
                for j in 0..3 {
                    assert!(
                        (r[i][j] - back[i][j]).abs() < 1e-12,
                        "{v:?}: {r:?} vs {back:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rigid_inverse_composes_to_identity() {
        let a = Rigid {
            r: rot_z(0.7),
            t: [1.0, -2.0, 0.5],
        };
        let id = a.compose(&a.inverse());
        let p = [0.3, 0.4, 0.5];
        let q = id.apply(p);
        assert!(norm(sub(p, q)) < 1e-12);
        let cm = a.to_column_major();
        assert_eq!(cm[12], 1.0);
        assert_eq!(cm[13], -2.0);
        assert_eq!(cm[3], 0.0);
    }
}
