//! ScanNet v2 raw files (FORMATS.md §1): `.sens` v4, the scan `.txt`, `_vh_clean_2.ply` and the
//! SensReader export folders.

use crate::geom::{Intrinsics, Rigid};
use crate::render::FACE_SHADE;
use crate::scene::Room;
use anyhow::Result;
use byteorder::{LittleEndian, WriteBytesExt};
use std::io::Write;

/// `.sens` colour compression: 2 = JPEG; depth compression: 1 = zlib uint16.
pub const SENS_COLOR_JPEG: i32 = 2;
pub const SENS_DEPTH_ZLIB: i32 = 1;
pub const SENS_SENSOR_NAME: &str = "StructureSensor";
pub const DEPTH_SHIFT: f32 = 1000.0;

/// One encoded frame of a `.sens` file.
pub struct SensFrame {
    /// Row-major camera-to-world; all −inf for frames the tracker lost.
    pub camera_to_world: [f32; 16],
    pub timestamp_us: u64,
    pub color_jpeg: Vec<u8>,
    pub depth_zlib: Vec<u8>,
}

pub struct SensHeader {
    pub color: Intrinsics,
    pub depth: Intrinsics,
}

fn write_mat(buf: &mut Vec<u8>, m: &[f64; 16]) {
    for v in m {
        buf.write_f32::<LittleEndian>(*v as f32)
            .expect("writing to a Vec cannot fail");
    }
}

/// Serialises a complete `.sens` v4 file. Returns the bytes and the byte offset at which each
/// frame record starts (used to place a truncation fault).
pub fn sens_bytes(header: &SensHeader, frames: &[SensFrame]) -> (Vec<u8>, Vec<usize>) {
    let mut b = Vec::new();
    let identity = Rigid::IDENTITY.to_row_major();
    // Writes into a Vec cannot fail; unwraps below are on infallible writes.
    b.write_u32::<LittleEndian>(4).unwrap();
    b.write_u64::<LittleEndian>(SENS_SENSOR_NAME.len() as u64)
        .unwrap();
    b.extend_from_slice(SENS_SENSOR_NAME.as_bytes());
    write_mat(&mut b, &header.color.to_4x4_row_major());
    write_mat(&mut b, &identity);
    write_mat(&mut b, &header.depth.to_4x4_row_major());
    write_mat(&mut b, &identity);
    b.write_i32::<LittleEndian>(SENS_COLOR_JPEG).unwrap();
    b.write_i32::<LittleEndian>(SENS_DEPTH_ZLIB).unwrap();
    b.write_u32::<LittleEndian>(header.color.width).unwrap();
    b.write_u32::<LittleEndian>(header.color.height).unwrap();
    b.write_u32::<LittleEndian>(header.depth.width).unwrap();
    b.write_u32::<LittleEndian>(header.depth.height).unwrap();
    b.write_f32::<LittleEndian>(DEPTH_SHIFT).unwrap();
    b.write_u64::<LittleEndian>(frames.len() as u64).unwrap();
    let mut offsets = Vec::with_capacity(frames.len());
    for f in frames {
        offsets.push(b.len());
        for v in f.camera_to_world {
            b.write_f32::<LittleEndian>(v).unwrap();
        }
        b.write_u64::<LittleEndian>(f.timestamp_us).unwrap();
        b.write_u64::<LittleEndian>(f.timestamp_us).unwrap();
        b.write_u64::<LittleEndian>(f.color_jpeg.len() as u64)
            .unwrap();
        b.write_u64::<LittleEndian>(f.depth_zlib.len() as u64)
            .unwrap();
        b.extend_from_slice(&f.color_jpeg);
        b.extend_from_slice(&f.depth_zlib);
    }
    // No IMU records.
    b.write_u64::<LittleEndian>(0).unwrap();
    (b, offsets)
}

pub fn zlib_depth(depth_mm: &[u16]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    for v in depth_mm {
        enc.write_all(&v.to_le_bytes())?;
    }
    Ok(enc.finish()?)
}

/// numpy `savetxt(fmt='%f')` of a row-major 4×4: four lines of four numbers, `-inf` for −∞.
pub fn matrix_txt(m: &[f64; 16]) -> String {
    let mut s = String::new();
    for row in m.chunks(4) {
        let cells: Vec<String> = row
            .iter()
            .map(|v| {
                if v.is_infinite() {
                    if *v < 0.0 {
                        "-inf".into()
                    } else {
                        "inf".into()
                    }
                } else {
                    format!("{v:.6}")
                }
            })
            .collect();
        s.push_str(&cells.join(" "));
        s.push('\n');
    }
    s
}

fn matrix_line(m: &[f64; 16]) -> String {
    m.iter()
        .map(|v| format!("{v:.6}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scan metadata `.txt` (keys in alphabetical order as in real files; `axisAlignment`
/// omitted for test scans).
pub fn scan_txt(
    axis_alignment: Option<&Rigid>,
    color: &Intrinsics,
    depth: &Intrinsics,
    frames: usize,
    scene_type: &str,
) -> String {
    let mut s = String::new();
    if let Some(a) = axis_alignment {
        s.push_str(&format!(
            "axisAlignment = {} \n",
            matrix_line(&a.to_row_major())
        ));
    }
    s.push_str(&format!("colorHeight = {}\n", color.height));
    s.push_str(&format!(
        "colorToDepthExtrinsics = {}\n",
        matrix_line(&Rigid::IDENTITY.to_row_major())
    ));
    s.push_str(&format!("colorWidth = {}\n", color.width));
    s.push_str(&format!("depthHeight = {}\n", depth.height));
    s.push_str(&format!("depthWidth = {}\n", depth.width));
    s.push_str(&format!("fx_color = {:.6}\n", color.fx));
    s.push_str(&format!("fx_depth = {:.6}\n", depth.fx));
    s.push_str(&format!("fy_color = {:.6}\n", color.fy));
    s.push_str(&format!("fy_depth = {:.6}\n", depth.fy));
    s.push_str(&format!("mx_color = {:.6}\n", color.cx));
    s.push_str(&format!("mx_depth = {:.6}\n", depth.cx));
    s.push_str(&format!("my_color = {:.6}\n", color.cy));
    s.push_str(&format!("my_depth = {:.6}\n", depth.cy));
    s.push_str(&format!("numColorFrames = {frames}\n"));
    s.push_str(&format!("numDepthFrames = {frames}\n"));
    s.push_str("numIMUmeasurements = 0\n");
    s.push_str(&format!("sceneType = {scene_type}\n"));
    s
}

/// Triangle mesh with per-vertex RGBA, in some world frame.
#[derive(Default)]
pub struct Mesh {
    pub vertices: Vec<([f32; 3], [u8; 4])>,
    pub faces: Vec<[u32; 3]>,
}

impl Mesh {
    fn quad(&mut self, corners: [[f64; 3]; 4], rgb: [u8; 3]) {
        let base = self.vertices.len() as u32;
        for c in corners {
            self.vertices
                .push((c.map(|v| v as f32), [rgb[0], rgb[1], rgb[2], 255]));
        }
        self.faces.push([base, base + 1, base + 2]);
        self.faces.push([base, base + 2, base + 3]);
    }

    /// Axis-aligned bounding-box centre of the vertices, computed in f64 from the stored f32
    /// values exactly as a reader of the file would.
    pub fn bbox_centre(&self) -> [f64; 3] {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for (p, _) in &self.vertices {
            for k in 0..3 {
                lo[k] = lo[k].min(p[k] as f64);
                hi[k] = hi[k].max(p[k] as f64);
            }
        }
        std::array::from_fn(|k| (lo[k] + hi[k]) / 2.0)
    }

    /// Binary little-endian PLY with x, y, z (float), red, green, blue, alpha (uchar) and
    /// `list uchar int vertex_indices`, as ScanNet's `_vh_clean_2.ply`.
    pub fn ply_bytes(&self) -> Vec<u8> {
        let mut b = format!(
            "ply\nformat binary_little_endian 1.0\ncomment synthetic room (roomplan-synth)\nelement vertex {}\n\
             property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n\
             property uchar blue\nproperty uchar alpha\nelement face {}\nproperty list uchar int vertex_indices\nend_header\n",
            self.vertices.len(),
            self.faces.len()
        )
        .into_bytes();
        for (p, c) in &self.vertices {
            for v in p {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(c);
        }
        for f in &self.faces {
            b.push(3);
            for i in f {
                b.extend_from_slice(&(*i as i32).to_le_bytes());
            }
        }
        b
    }
}

/// The room's reconstruction as ScanNet would have it: floor, walls and furniture, no ceiling
/// (scans see little of it), in the frame given by `world_from_room`.
pub fn room_mesh(room: &Room, world_from_room: &Rigid) -> Mesh {
    let mut mesh = Mesh::default();
    let (hw, hd, h) = (room.size[0] / 2.0, room.size[1] / 2.0, room.size[2]);
    let w = |p: [f64; 3]| world_from_room.apply(p);
    mesh.quad(
        [
            [-hw, -hd, 0.0],
            [hw, -hd, 0.0],
            [hw, hd, 0.0],
            [-hw, hd, 0.0],
        ]
        .map(w),
        room.floor_rgb,
    );
    for wall in room.walls() {
        let a = wall.start;
        let b = [
            a[0] + wall.dir[0] * wall.length,
            a[1] + wall.dir[1] * wall.length,
        ];
        mesh.quad(
            [
                [a[0], a[1], 0.0],
                [b[0], b[1], 0.0],
                [b[0], b[1], h],
                [a[0], a[1], h],
            ]
            .map(w),
            room.wall_rgb,
        );
    }
    for obj in &room.objects {
        let r = obj.rotation();
        let hf = obj.half();
        let corner = |sx: f64, sy: f64, sz: f64| {
            w(crate::geom::add(
                obj.centre,
                crate::geom::mat_vec(&r, [sx * hf[0], sy * hf[1], sz * hf[2]]),
            ))
        };
        let shaded = |f: usize| crate::render::shade(obj.rgb, FACE_SHADE[f]);
        mesh.quad(
            [
                corner(-1., -1., 1.),
                corner(1., -1., 1.),
                corner(1., 1., 1.),
                corner(-1., 1., 1.),
            ],
            shaded(0),
        );
        mesh.quad(
            [
                corner(-1., -1., -1.),
                corner(-1., 1., -1.),
                corner(1., 1., -1.),
                corner(1., -1., -1.),
            ],
            shaded(1),
        );
        for sx in [-1.0, 1.0] {
            mesh.quad(
                [
                    corner(sx, -1., -1.),
                    corner(sx, 1., -1.),
                    corner(sx, 1., 1.),
                    corner(sx, -1., 1.),
                ],
                shaded(2),
            );
        }
        for sy in [-1.0, 1.0] {
            mesh.quad(
                [
                    corner(-1., sy, -1.),
                    corner(1., sy, -1.),
                    corner(1., sy, 1.),
                    corner(-1., sy, 1.),
                ],
                shaded(3),
            );
        }
    }
    mesh
}
