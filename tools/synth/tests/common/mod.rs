//! Helpers shared by the integration tests: independent geometry of the scene description
//! (read from synth.json as plain JSON, not through the generator's types).
#![allow(dead_code)]

use serde_json::Value;

pub type V3 = [f64; 3];

pub fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}
pub fn v3(v: &Value) -> V3 {
    [f(&v[0]), f(&v[1]), f(&v[2])]
}
pub fn m16(v: &Value) -> [f64; 16] {
    std::array::from_fn(|i| f(&v[i]))
}
/// Applies a row-major 4×4 to a point.
pub fn apply(m: &[f64; 16], p: V3) -> V3 {
    std::array::from_fn(|i| {
        m[i * 4] * p[0] + m[i * 4 + 1] * p[1] + m[i * 4 + 2] * p[2] + m[i * 4 + 3]
    })
}
/// Inverse of a rigid row-major 4×4.
pub fn invert_rigid(m: &[f64; 16]) -> [f64; 16] {
    let mut o = [0.0; 16];
    for i in 0..3 {
        for j in 0..3 {
            o[i * 4 + j] = m[j * 4 + i];
        }
    }
    for i in 0..3 {
        o[i * 4 + 3] = -(0..3).map(|j| o[i * 4 + j] * m[j * 4 + 3]).sum::<f64>();
    }
    o[15] = 1.0;
    o
}

/// Distance from a room-frame point to the nearest surface of the room described by the JSON
/// `room` (six planes and every object box).
pub fn distance_to_surfaces(room: &Value, p: V3) -> f64 {
    let size = v3(&room["size"]);
    let (hw, hd, h) = (size[0] / 2.0, size[1] / 2.0, size[2]);
    let mut best = [
        (p[0] + hw).abs(),
        (p[0] - hw).abs(),
        (p[1] + hd).abs(),
        (p[1] - hd).abs(),
        p[2].abs(),
        (p[2] - h).abs(),
    ]
    .into_iter()
    .fold(f64::INFINITY, f64::min);
    for o in room["objects"].as_array().unwrap() {
        best = best.min(distance_to_box(o, p));
    }
    best
}

/// Distance from a point to the surface of an object box (JSON object with centre/size/yaw).
pub fn distance_to_box(o: &Value, p: V3) -> f64 {
    let c = v3(&o["centre"]);
    let s = v3(&o["size"]);
    let yaw = f(&o["yaw"]);
    let d = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
    let (sn, cs) = yaw.sin_cos();
    let local = [cs * d[0] + sn * d[1], -sn * d[0] + cs * d[1], d[2]];
    let q: V3 = std::array::from_fn(|k| local[k].abs() - s[k] / 2.0);
    let outside = q.iter().map(|v| v.max(0.0).powi(2)).sum::<f64>().sqrt();
    let inside = q[0].max(q[1]).max(q[2]).min(0.0);
    outside + inside.abs()
}

/// Rodrigues vector → row-major 3×3.
pub fn rodrigues(r: V3) -> [[f64; 3]; 3] {
    let a = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
    if a == 0.0 {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let k = [r[0] / a, r[1] / a, r[2] / a];
    let (s, c) = a.sin_cos();
    let kx = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]];
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let kk: f64 = (0..3).map(|l| kx[i][l] * kx[l][j]).sum();
            m[i][j] = if i == j { 1.0 } else { 0.0 } + s * kx[i][j] + (1.0 - c) * kk;
        }
    }
    m
}

/// One `.traj` line → (timestamp text, camera-to-world row-major 4×4).
pub fn parse_traj_line(line: &str) -> (String, [f64; 16]) {
    let t: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(t.len(), 7, "traj line {line:?}");
    let n: Vec<f64> = t[1..].iter().map(|v| v.parse().unwrap()).collect();
    let r = rodrigues([n[0], n[1], n[2]]);
    let mut w2c = [0.0; 16];
    for i in 0..3 {
        for j in 0..3 {
            w2c[i * 4 + j] = r[i][j];
        }
        w2c[i * 4 + 3] = n[3 + i];
    }
    w2c[15] = 1.0;
    (t[0].to_string(), invert_rigid(&w2c))
}

/// The official loader's name for a traj timestamp: round to 3 decimals.
pub fn rounded_name(ts: &str) -> String {
    format!(
        "{:.3}",
        (ts.parse::<f64>().unwrap() * 1000.0).round() / 1000.0
    )
}
