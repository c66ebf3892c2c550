//! Reads every generated file back with small independent parsers written here (not the
//! generator's code) and checks it against the scene description in synth.json.

mod common;

use common::*;
use roomplan_synth::{generate, ScannetFormat, SynthConfig};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn small_config() -> SynthConfig {
    SynthConfig {
        seed: 7,
        num_scenes: 3,
        frames_per_scene: 12,
        scannet_color_size: (64, 48),
        scannet_depth_size: (40, 30),
        scannet_format: ScannetFormat::Both,
        bird_size: (64, 36),
        ..SynthConfig::default()
    }
}

/// One generated tree shared by the tests of this file.
fn tree() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("synth");
        generate(&small_config(), &out).unwrap();
        (dir, out)
    });
    path
}

fn truth() -> Value {
    serde_json::from_slice(&std::fs::read(tree().join("synth.json")).unwrap()).unwrap()
}

fn json(rel: &str) -> Value {
    let bytes = std::fs::read(tree().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------- ScanNet .sens: a minimal independent reader ----------

struct Cursor<'a>(&'a [u8]);
impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn mat(&mut self) -> [f64; 16] {
        std::array::from_fn(|_| self.f32() as f64)
    }
}

struct Sens {
    name: String,
    k_color: [f64; 16],
    k_depth: [f64; 16],
    compression: (i32, i32),
    color_size: (u32, u32),
    depth_size: (u32, u32),
    depth_shift: f32,
    frames: Vec<([f64; 16], Vec<u8>, Vec<u8>)>,
}

fn read_sens(path: &Path) -> Sens {
    let bytes = std::fs::read(path).unwrap();
    let mut c = Cursor(&bytes);
    assert_eq!(c.u32(), 4, "version");
    let n = c.u64() as usize;
    let name = String::from_utf8(c.take(n).to_vec()).unwrap();
    let k_color = c.mat();
    let _ext_color = c.mat();
    let k_depth = c.mat();
    let _ext_depth = c.mat();
    let compression = (c.i32(), c.i32());
    let color_size = (c.u32(), c.u32());
    let depth_size = (c.u32(), c.u32());
    let depth_shift = c.f32();
    let num = c.u64();
    let mut frames = Vec::new();
    for _ in 0..num {
        let pose = c.mat();
        let _ts_color = c.u64();
        let _ts_depth = c.u64();
        let cs = c.u64() as usize;
        let ds = c.u64() as usize;
        let color = c.take(cs).to_vec();
        let depth = c.take(ds).to_vec();
        frames.push((pose, color, depth));
    }
    assert_eq!(c.u64(), 0, "IMU frame count");
    assert!(c.0.is_empty(), "trailing bytes after the IMU block");
    Sens {
        name,
        k_color,
        k_depth,
        compression,
        color_size,
        depth_size,
        depth_shift,
        frames,
    }
}

fn inflate_depth(z: &[u8], n: usize) -> Vec<u16> {
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(z)
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw.len(), n * 2);
    raw.chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn parse_txt_matrix(text: &str) -> [f64; 16] {
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 16, "{text:?}");
    std::array::from_fn(|i| v[i])
}

/// Back-projects every valid depth pixel with a 4×4 intrinsic and a camera-to-world pose, maps
/// it into the room frame and returns the largest distance to a surface.
fn worst_backprojection(
    depth: &[u16],
    w: u32,
    k: &[f64; 16],
    c2w: &[f64; 16],
    room_from_world: &[f64; 16],
    room: &Value,
) -> (f64, usize) {
    let (mut worst, mut valid) = (0.0f64, 0);
    for (i, &d) in depth.iter().enumerate() {
        if d == 0 {
            continue;
        }
        valid += 1;
        let (u, v) = ((i as u32 % w) as f64, (i as u32 / w) as f64);
        let z = d as f64 / 1000.0;
        let cam = [(u - k[2]) / k[0] * z, (v - k[6]) / k[5] * z, z];
        let p = apply(room_from_world, apply(c2w, cam));
        worst = worst.max(distance_to_surfaces(room, p));
    }
    (worst, valid)
}

#[test]
fn sens_files_agree_with_the_scene_description() {
    let t = truth();
    for scene in t["scenes"].as_array().unwrap() {
        let id = scene["scene_id"].as_str().unwrap();
        let sens = read_sens(&tree().join(format!("scannet/scans/{id}/{id}.sens")));
        assert_eq!(sens.name, "StructureSensor");
        assert_eq!(sens.compression, (2, 1), "JPEG colour, zlib depth");
        assert_eq!(sens.color_size, (64, 48));
        assert_eq!(sens.depth_size, (40, 30));
        assert_eq!(sens.depth_shift, 1000.0);
        let kc = &scene["scannet"]["color_intrinsics"];
        let kd = &scene["scannet"]["depth_intrinsics"];
        assert!(
            (sens.k_color[0] - f(&kc["fx"])).abs() < 1e-4
                && (sens.k_color[2] - f(&kc["cx"])).abs() < 1e-4
        );
        assert!(
            (sens.k_depth[5] - f(&kd["fy"])).abs() < 1e-4
                && (sens.k_depth[6] - f(&kd["cy"])).abs() < 1e-4
        );
        assert_eq!((sens.k_color[10], sens.k_color[15]), (1.0, 1.0));
        let frames = scene["scannet"]["frames"].as_array().unwrap();
        assert_eq!(sens.frames.len(), frames.len());
        let axis = m16(&scene["scannet"]["axis_alignment"]);
        let mut scene_valid = 0;
        for (i, ((pose, jpeg, z), want)) in sens.frames.iter().zip(frames).enumerate() {
            let want = m16(&want["c2w"]);
            for k in 0..16 {
                assert!(
                    (pose[k] - want[k]).abs() < 1e-5,
                    "{id} frame {i} pose entry {k}"
                );
            }
            let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
            assert_eq!((img.width(), img.height()), (64, 48));
            let depth = inflate_depth(z, 40 * 30);
            let (worst, valid) =
                worst_backprojection(&depth, 40, &sens.k_depth, pose, &axis, &scene["room"]);
            // Windows (glass) read 0; a view straight at one loses much of the frame.
            assert!(
                valid > 40 * 30 / 5,
                "{id} frame {i}: only {valid} valid depth pixels"
            );
            scene_valid += valid;
            // f32 pose entries in a frame a few metres from the origin add a few µm.
            assert!(
                worst < 1.05e-3,
                "{id} frame {i}: a depth pixel lands {worst} m off every surface"
            );
        }
        assert!(
            scene_valid > frames.len() * 1200 * 7 / 10,
            "{id}: {scene_valid} valid depth pixels"
        );
    }
}

#[test]
fn some_depth_is_invalid_where_windows_are() {
    let t = truth();
    let scene = &t["scenes"][0];
    let id = scene["scene_id"].as_str().unwrap();
    let sens = read_sens(&tree().join(format!("scannet/scans/{id}/{id}.sens")));
    let zeros: usize = sens
        .frames
        .iter()
        .map(|(_, _, z)| inflate_depth(z, 1200).iter().filter(|d| **d == 0).count())
        .sum();
    assert!(zeros > 0, "no invalid depth pixel in {id}");
}

#[test]
fn scan_txt_has_axis_alignment_except_for_the_test_scene() {
    let t = truth();
    for scene in t["scenes"].as_array().unwrap() {
        let id = scene["scene_id"].as_str().unwrap();
        let txt =
            std::fs::read_to_string(tree().join(format!("scannet/scans/{id}/{id}.txt"))).unwrap();
        let kv: std::collections::BTreeMap<&str, &str> = txt
            .lines()
            .map(|l| l.split_once(" = ").unwrap())
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        assert_eq!(kv["colorWidth"], "64");
        assert_eq!(kv["depthHeight"], "30");
        assert_eq!(kv["numColorFrames"], "12");
        if scene["test_scene"].as_bool().unwrap() {
            assert!(!kv.contains_key("axisAlignment"), "{id} is a test scan");
            assert!(id[5..9].parse::<u32>().unwrap() >= 707);
        } else {
            let a = parse_txt_matrix(kv["axisAlignment"]);
            let want = m16(&scene["scannet"]["axis_alignment"]);
            for k in 0..16 {
                assert!((a[k] - want[k]).abs() < 1e-5, "{id} axisAlignment[{k}]");
            }
        }
    }
    assert_eq!(t["scenes"][2]["scene_id"], "scene0707_00");
    assert_eq!(t["scenes"][0]["scene_id"], "scene0000_00");
}

#[test]
fn export_folders_match_the_sens_file() {
    let t = truth();
    for scene in t["scenes"].as_array().unwrap() {
        let id = scene["scene_id"].as_str().unwrap();
        let dir = tree().join(format!("scannet/scans/{id}"));
        let sens = read_sens(&dir.join(format!("{id}.sens")));
        let k = parse_txt_matrix(
            &std::fs::read_to_string(dir.join("intrinsic/intrinsic_depth.txt")).unwrap(),
        );
        assert!(k
            .iter()
            .zip(&sens.k_depth)
            .all(|(a, b)| (a - b).abs() < 1e-5));
        let ext = parse_txt_matrix(
            &std::fs::read_to_string(dir.join("intrinsic/extrinsic_color.txt")).unwrap(),
        );
        assert_eq!(
            ext,
            [1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.]
        );
        for (i, (pose, jpeg, z)) in sens.frames.iter().enumerate() {
            let text = std::fs::read_to_string(dir.join(format!("pose/{i}.txt"))).unwrap();
            assert_eq!(text.lines().count(), 4);
            assert!(
                text.lines().all(|l| l
                    .split(' ')
                    .all(|v| v.split_once('.').is_some_and(|(_, d)| d.len() == 6))),
                "%f format: {text}"
            );
            let p = parse_txt_matrix(&text);
            for k in 0..16 {
                assert!((p[k] - pose[k]).abs() < 2e-6);
            }
            assert_eq!(
                &std::fs::read(dir.join(format!("color/{i}.jpg"))).unwrap(),
                jpeg
            );
            let png = image::open(dir.join(format!("depth/{i}.png"))).unwrap();
            let png = png.as_luma16().expect("16-bit single-channel depth PNG");
            assert_eq!(png.as_raw(), &inflate_depth(z, 1200));
        }
        // Unpadded, contiguous names.
        assert!(
            dir.join("color/10.jpg").exists()
                && !dir.join("color/010.jpg").exists()
                && !dir.join("color/12.jpg").exists()
        );
    }
}

#[test]
fn mesh_is_binary_ply_with_rgba_and_its_bbox_centre_is_recorded() {
    let t = truth();
    let scene = &t["scenes"][1];
    let id = scene["scene_id"].as_str().unwrap();
    let bytes =
        std::fs::read(tree().join(format!("scannet/scans/{id}/{id}_vh_clean_2.ply"))).unwrap();
    let end = bytes
        .windows(11)
        .position(|w| w == b"end_header\n")
        .unwrap()
        + 11;
    let header = std::str::from_utf8(&bytes[..end]).unwrap();
    assert!(header.starts_with("ply\nformat binary_little_endian 1.0\n"));
    let count = |el: &str| -> usize {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("element {el} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (nv, nf) = (count("vertex"), count("face"));
    let props: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("property "))
        .collect();
    assert_eq!(
        &props[..7],
        [
            "float x",
            "float y",
            "float z",
            "uchar red",
            "uchar green",
            "uchar blue",
            "uchar alpha"
        ]
    );
    assert_eq!(props[7], "list uchar int vertex_indices");
    assert_eq!(bytes.len(), end + nv * 16 + nf * 13);
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for v in 0..nv {
        let o = end + v * 16;
        for k in 0..3 {
            let x = f32::from_le_bytes(bytes[o + 4 * k..o + 4 * k + 4].try_into().unwrap()) as f64;
            lo[k] = lo[k].min(x);
            hi[k] = hi[k].max(x);
        }
    }
    let centre = v3(&scene["scannet"]["mesh_centre"]);
    for k in 0..3 {
        assert!(((lo[k] + hi[k]) / 2.0 - centre[k]).abs() < 1e-12);
    }
    // The mesh spans floor to wall top: z extent equals the room height.
    assert!((hi[2] - lo[2] - f(&scene["room"]["size"][2])).abs() < 1e-5);
}

// ---------- ARKitScenes ----------

fn arkit_dir(scene: &Value) -> PathBuf {
    let v = scene["video_id"].as_str().unwrap();
    tree().join(format!(
        "arkitscenes/3dod/{}/{v}",
        scene["splits"]["arkit"].as_str().unwrap()
    ))
}

#[test]
fn arkit_frames_pincam_and_traj_agree_with_the_scene_description() {
    let t = truth();
    let mut states = std::collections::BTreeSet::new();
    for scene in t["scenes"].as_array().unwrap() {
        let v = scene["video_id"].as_str().unwrap();
        assert_eq!(v.len(), 8);
        let frames_dir = arkit_dir(scene).join(format!("{v}_frames"));
        let traj: Vec<(String, [f64; 16])> =
            std::fs::read_to_string(frames_dir.join("lowres_wide.traj"))
                .unwrap()
                .lines()
                .map(parse_traj_line)
                .collect();
        let room_from_world = invert_rigid(&m16(&scene["arkit"]["world_from_room"]));
        for fr in scene["arkit"]["frames"].as_array().unwrap() {
            let ts = fr["timestamp"].as_str().unwrap();
            assert_eq!(ts.split_once('.').unwrap().1.len(), 3);
            let name = format!("{v}_{ts}");
            let pincam = std::fs::read_to_string(
                frames_dir.join(format!("lowres_wide_intrinsics/{name}.pincam")),
            )
            .unwrap();
            let p: Vec<f64> = pincam
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert_eq!(p.len(), 6);
            assert_eq!((p[0], p[1]), (256.0, 192.0));
            let k = [
                p[2], 0.0, p[4], 0.0, 0.0, p[3], p[5], 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0,
            ];
            let rgb = image::open(frames_dir.join(format!("lowres_wide/{name}.png"))).unwrap();
            assert_eq!((rgb.width(), rgb.height()), (256, 192));
            assert!(rgb.as_rgb8().is_some());
            // Pose lookup as the official loader does it: exact rounded name, else within 5 ms.
            let target: f64 = ts.parse().unwrap();
            let exact = traj.iter().find(|(t, _)| rounded_name(t) == ts);
            let near = traj
                .iter()
                .find(|(t, _)| (t.parse::<f64>().unwrap() - target).abs() <= 0.005);
            let state = fr["traj"].as_str().unwrap();
            states.insert(state.to_string());
            match state {
                "exact" => assert!(exact.is_some(), "{name}"),
                "near" => assert!(exact.is_none() && near.is_some(), "{name}"),
                "missing" => assert!(near.is_none(), "{name}"),
                other => panic!("unknown traj state {other}"),
            }
            let Some((_, c2w)) = near else { continue };
            let want = m16(&fr["c2w"]);
            for i in 0..16 {
                assert!((c2w[i] - want[i]).abs() < 1e-6, "{name} pose entry {i}");
            }
            let depth = image::open(frames_dir.join(format!("lowres_depth/{name}.png"))).unwrap();
            let depth = depth.as_luma16().expect("uint16 depth").as_raw().clone();
            let (worst, valid) =
                worst_backprojection(&depth, 256, &k, c2w, &room_from_world, &scene["room"]);
            assert!(valid > 256 * 192 / 3, "{name}: {valid} valid");
            assert!(
                worst < 1e-3,
                "{name}: depth lands {worst} m off every surface"
            );
        }
    }
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        ["exact", "missing", "near"]
    );
}

#[test]
fn portrait_captures_are_stored_rotated() {
    // In a `Left` capture the sky is on the image's left, so the sensor's +x axis (image
    // right) points down in the world; `Right` is the mirror case.
    let t = truth();
    let x_axis_up = |scene: &Value| -> Vec<f64> {
        scene["arkit"]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|fr| m16(&fr["c2w"])[8])
            .collect()
    };
    assert_eq!(t["scenes"][1]["arkit"]["sky_direction"], "Left");
    assert!(
        x_axis_up(&t["scenes"][1]).iter().all(|z| *z < -0.7),
        "{:?}",
        x_axis_up(&t["scenes"][1])
    );
    assert_eq!(t["scenes"][2]["arkit"]["sky_direction"], "Right");
    assert!(x_axis_up(&t["scenes"][2]).iter().all(|z| *z > 0.7));
    assert_eq!(t["scenes"][0]["arkit"]["sky_direction"], "Up");
    assert!(x_axis_up(&t["scenes"][0]).iter().all(|z| z.abs() < 0.2));
}

#[test]
fn arkit_annotation_and_metadata_match_the_objects() {
    let t = truth();
    let csv = std::fs::read_to_string(tree().join("arkitscenes/3dod/metadata.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3);
    for scene in t["scenes"].as_array().unwrap() {
        let v = scene["video_id"].as_str().unwrap();
        let row = rows.iter().find(|r| r[col("video_id")] == v).unwrap();
        assert_eq!(row[col("sky_direction")], scene["arkit"]["sky_direction"]);
        assert_eq!(row[col("fold")], scene["splits"]["arkit"]);
        let ann = json(&format!(
            "arkitscenes/3dod/{}/{v}/{v}_3dod_annotation.json",
            scene["splits"]["arkit"].as_str().unwrap()
        ));
        assert_eq!(ann["skipped"], false);
        let world = m16(&scene["arkit"]["world_from_room"]);
        let objects = scene["room"]["objects"].as_array().unwrap();
        let data = ann["data"].as_array().unwrap();
        assert_eq!(data.len(), objects.len());
        for (d, o) in data.iter().zip(objects) {
            assert_eq!(d["label"], o["class"]);
            let obb = &d["segments"]["obbAligned"];
            let c = apply(&world, v3(&o["centre"]));
            assert!((0..3).all(|k| (f(&obb["centroid"][k]) - c[k]).abs() < 1e-9));
            assert_eq!(obb["axesLengths"], o["size"]);
            // Row 0 of normalizedAxes is the box's local x axis in the ARKit world.
            let yaw = f(&o["yaw"]);
            let x_room = [yaw.cos(), yaw.sin(), 0.0];
            let x_world: V3 =
                std::array::from_fn(|i| (0..3).map(|j| world[i * 4 + j] * x_room[j]).sum());
            assert!((0..3).all(|k| (f(&obb["normalizedAxes"][k]) - x_world[k]).abs() < 1e-9));
            assert!(
                (f(&obb["normalizedAxes"][8]) - 1.0).abs() < 1e-12,
                "third row is world up"
            );
        }
    }
}

// ---------- RoomPlan ----------

/// The minimal CapturedRoom reader of this test, applied alike to the real exports and ours.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct CapturedRoom {
    core_model: String,
    reference_origin_transform: Vec<f64>,
    version: i64,
    story: i64,
    sections: Vec<Section>,
    walls: Vec<SurfaceJ>,
    doors: Vec<SurfaceJ>,
    windows: Vec<SurfaceJ>,
    openings: Vec<SurfaceJ>,
    floors: Vec<SurfaceJ>,
    objects: Vec<ObjectJ>,
}
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Section {
    center: [f64; 3],
    label: String,
    story: i64,
}
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct SurfaceJ {
    identifier: String,
    parent_identifier: Option<String>,
    category: std::collections::BTreeMap<String, Value>,
    confidence: std::collections::BTreeMap<String, Value>,
    dimensions: [f64; 3],
    transform: [f64; 16],
    polygon_corners: Vec<[f64; 3]>,
    completed_edges: Vec<Value>,
    curve: Option<Value>,
    story: i64,
}
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
struct ObjectJ {
    identifier: String,
    parent_identifier: Option<String>,
    category: std::collections::BTreeMap<String, Value>,
    confidence: std::collections::BTreeMap<String, Value>,
    dimensions: [f64; 3],
    transform: [f64; 16],
    attributes: std::collections::BTreeMap<String, String>,
    story: i64,
}

fn read_captured_room(path: &Path) -> CapturedRoom {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn roomplan_json_parses_like_the_real_exports_and_places_the_objects() {
    // The real exports live in shared/ beside the checkout (CI lays it there too).
    let shared = std::env::var_os("ROOMPLAN_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    for real in ["single-room.json", "multi-room.json"] {
        let r = read_captured_room(&shared.join("fixtures/roomplan").join(real));
        assert_eq!(r.version, 2);
    }
    let t = truth();
    for scene in t["scenes"].as_array().unwrap() {
        let v = scene["video_id"].as_str().unwrap();
        let path = tree().join(format!("roomplan/{v}.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"version\" : 2") && text.contains("\"completedEdges\" : [\n\n      ]"),
            "Apple formatting"
        );
        let r = read_captured_room(&path);
        assert_eq!(r.walls.len(), 4);
        assert_eq!(r.doors.len(), 1);
        assert_eq!(r.floors.len(), 1);
        assert_eq!(
            r.doors[0].parent_identifier.as_deref(),
            Some(
                r.walls
                    .iter()
                    .map(|w| w.identifier.as_str())
                    .find(|id| Some(*id) == r.doors[0].parent_identifier.as_deref())
                    .unwrap()
            )
        );
        let objects = scene["room"]["objects"].as_array().unwrap();
        assert_eq!(r.objects.len(), objects.len());
        // Column-major: translation at 12..15, Y up. Map back to the room frame.
        let cm = m16(&scene["roomplan_world_from_room"]);
        let world: [f64; 16] = std::array::from_fn(|i| cm[(i % 4) * 4 + i / 4]);
        let room_from_world = invert_rigid(&world);
        for (o, want) in r.objects.iter().zip(objects) {
            assert_eq!(
                (
                    o.transform[3],
                    o.transform[7],
                    o.transform[11],
                    o.transform[15]
                ),
                (0.0, 0.0, 0.0, 1.0)
            );
            assert!(
                (o.transform[5] - 1.0).abs() < 1e-6,
                "column 1 is world up (+Y)"
            );
            let c = apply(
                &room_from_world,
                [o.transform[12], o.transform[13], o.transform[14]],
            );
            let w = v3(&want["centre"]);
            assert!((0..3).all(|k| (c[k] - w[k]).abs() < 1e-5), "{c:?} vs {w:?}");
            let s = v3(&want["size"]);
            assert!(
                (o.dimensions[1] - s[2]).abs() < 1e-6,
                "height is dimensions[1]"
            );
        }
        // The floor lies below the session origin by the eye height.
        let floor_y = r.floors[0].transform[13];
        assert!((-1.7..-1.3).contains(&floor_y), "floor at y = {floor_y}");
    }
}

// ---------- ScanQA ----------

#[test]
fn scanqa_answers_follow_from_the_scene() {
    let t = truth();
    let scenes: Vec<&Value> = t["scenes"].as_array().unwrap().iter().collect();
    let by_id = |id: &str| scenes.iter().find(|s| s["scene_id"] == id).copied();
    let mut kinds = std::collections::BTreeSet::new();
    let mut test_questions = vec![];
    for (split, file) in [
        ("train", "ScanQA_v1.0_train.json"),
        ("val", "ScanQA_v1.0_val.json"),
        ("test_w_obj", "ScanQA_v1.0_test_w_obj.json"),
        ("test_wo_obj", "ScanQA_v1.0_test_wo_obj.json"),
    ] {
        let records = json(&format!("scanqa/{file}"));
        if split.starts_with("test") {
            test_questions.push(records.as_array().unwrap().len());
        }
        for r in records.as_array().unwrap() {
            let scene =
                by_id(r["scene_id"].as_str().unwrap()).expect("question about a generated scene");
            // Both test sets ask about test scenes.
            let scene_split = if split.starts_with("test") {
                "test"
            } else {
                split
            };
            assert_eq!(scene["splits"]["scanqa"], scene_split);
            let qid = r["question_id"].as_str().unwrap();
            assert!(
                qid.starts_with(&format!(
                    "{split}-scene{}-",
                    &r["scene_id"].as_str().unwrap()[5..9]
                )),
                "{qid}"
            );
            if split.starts_with("test") {
                let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["question", "question_id", "scene_id"]);
                continue;
            }
            let objects = scene["room"]["objects"].as_array().unwrap();
            let label = |o: &Value| o["class"].as_str().unwrap().replace('_', " ");
            let q = r["question"].as_str().unwrap();
            let answers: Vec<&str> = r["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let ids: Vec<usize> = r["object_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as usize)
                .collect();
            let names: Vec<&str> = r["object_names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap())
                .collect();
            assert_eq!(
                names,
                ids.iter().map(|i| label(&objects[*i])).collect::<Vec<_>>()
            );
            if let Some(class) = q
                .strip_prefix("What color is the ")
                .and_then(|r| r.strip_suffix(" in the room?"))
            {
                kinds.insert("colour");
                let matching: Vec<&Value> = objects.iter().filter(|o| label(o) == class).collect();
                assert_eq!(matching.len(), 1, "{q}");
                assert_eq!(answers, [matching[0]["colour"].as_str().unwrap()]);
            } else if q.starts_with("How many ") {
                kinds.insert("count");
                assert_eq!(answers[0].parse::<usize>().unwrap(), ids.len(), "{q}");
                assert!(ids
                    .iter()
                    .all(|i| label(&objects[*i]) == label(&objects[ids[0]])));
                let n = objects
                    .iter()
                    .filter(|o| label(o) == label(&objects[ids[0]]))
                    .count();
                assert_eq!(n, ids.len());
            } else if let Some(class) = q
                .strip_prefix("Is there a ")
                .and_then(|r| r.strip_suffix(" in the room?"))
            {
                kinds.insert("exists");
                let present = objects.iter().any(|o| label(o) == class);
                assert_eq!(answers, [if present { "yes" } else { "no" }], "{q}");
            } else if let Some(class) = q
                .strip_prefix("What is next to the ")
                .and_then(|r| r.strip_suffix('?'))
            {
                kinds.insert("next to");
                let a = objects.iter().find(|o| label(o) == class).unwrap();
                let dist = |o: &Value| {
                    let (p, q) = (v3(&a["centre"]), v3(&o["centre"]));
                    (p[0] - q[0]).hypot(p[1] - q[1])
                };
                let nearest = objects
                    .iter()
                    .filter(|o| o["id"] != a["id"])
                    .min_by(|x, y| dist(x).total_cmp(&dist(y)))
                    .unwrap();
                assert_eq!(answers, [label(nearest).as_str()], "{q}");
            } else {
                panic!("unexpected question {q:?}");
            }
        }
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    // Both test sets hold questions (their ids differ by the split prefix checked above).
    assert!(test_questions.iter().all(|&n| n > 0), "{test_questions:?}");
}

// ---------- SQA3D ----------

#[test]
fn sqa3d_situations_are_consistent_with_the_agent_pose() {
    let t = truth();
    let mut checked = 0;
    let mut integer_quaternions = 0;
    for split in ["train", "val", "test"] {
        let qs = json(&format!(
            "sqa3d/balanced/v1_balanced_questions_{split}_scannetv2.json"
        ));
        let ans = json(&format!(
            "sqa3d/balanced/v1_balanced_sqa_annotations_{split}_scannetv2.json"
        ));
        assert_eq!(qs["task_type"], "Situated question answering");
        assert_eq!(ans["data_type"], "scannet");
        let raw_text = std::fs::read_to_string(tree().join(format!(
            "sqa3d/balanced/v1_balanced_sqa_annotations_{split}_scannetv2.json"
        )))
        .unwrap();
        integer_quaternions += raw_text.matches("\"_w\": 1\n").count();
        for (q, a) in qs["questions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(ans["annotations"].as_array().unwrap())
        {
            assert_eq!(q["question_id"], a["question_id"]);
            assert!(q["question_id"].is_u64());
            let scene = t["scenes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["scene_id"] == q["scene_id"])
                .unwrap();
            assert_eq!(scene["splits"]["sqa3d"], split);
            assert!(
                a["position"]["z"].is_i64() && a["rotation"]["_x"].is_i64(),
                "z and _x are JSON integers"
            );
            // Agent in the room frame: undo the mesh-centre shift and the raw scan transform.
            let centre = v3(&scene["scannet"]["mesh_centre"]);
            let raw = [
                f(&a["position"]["x"]) + centre[0],
                f(&a["position"]["y"]) + centre[1],
                0.0,
            ];
            let room_from_raw = m16(&scene["scannet"]["axis_alignment"]);
            let pos = apply(&room_from_raw, raw);
            let (qz, qw) = (f(&a["rotation"]["_z"]), f(&a["rotation"]["_w"]));
            let yaw = 2.0 * qz.atan2(qw);
            let facing_raw = [-yaw.cos(), -yaw.sin(), 0.0]; // R(q)·(−1, 0, 0)
            let facing: V3 = std::array::from_fn(|i| {
                (0..3)
                    .map(|j| room_from_raw[i * 4 + j] * facing_raw[j])
                    .sum()
            });
            let objects = scene["room"]["objects"].as_array().unwrap();
            let label = |o: &Value| o["class"].as_str().unwrap().replace('_', " ");
            let bearing = |o: &Value| {
                let c = v3(&o["centre"]);
                let d = [c[0] - pos[0], c[1] - pos[1]];
                let left = [-facing[1], facing[0]];
                (d[0] * left[0] + d[1] * left[1])
                    .atan2(d[0] * facing[0] + d[1] * facing[1])
                    .to_degrees()
            };
            let dist = |o: &Value| {
                let c = v3(&o["centre"]);
                (c[0] - pos[0]).hypot(c[1] - pos[1])
            };
            let answer = a["answers"][0]["answer"].as_str().unwrap();
            let question = q["question"].as_str().unwrap();
            let nearest_with = |keep: &dyn Fn(f64) -> bool| {
                objects
                    .iter()
                    .filter(|o| keep(bearing(o)))
                    .min_by(|x, y| dist(x).total_cmp(&dist(y)))
                    .map(label)
            };
            let expected = match question {
                "What is on my left?" => nearest_with(&|b| (45.0..=135.0).contains(&b)),
                "What is on my right?" => nearest_with(&|b| (-135.0..=-45.0).contains(&b)),
                "What is behind me?" => nearest_with(&|b| b.abs() >= 135.0),
                _ => None,
            };
            if let Some(e) = expected {
                assert_eq!(answer, e, "{question} in {}", q["scene_id"]);
                checked += 1;
            }
            if let Some(class) = question
                .strip_prefix("What color is the ")
                .and_then(|r| r.strip_suffix(" in front of me?"))
            {
                let faced: Vec<&Value> = objects
                    .iter()
                    .filter(|o| label(o) == class && bearing(o).abs() < 1e-6)
                    .collect();
                assert!(!faced.is_empty(), "{question}: no {class} straight ahead");
                assert!(faced.iter().any(|o| o["colour"] == answer));
                checked += 1;
            }
            if let Some(class) = question
                .strip_prefix("Is the ")
                .and_then(|r| r.strip_suffix(" on my left or on my right?"))
            {
                let o = objects.iter().find(|o| label(o) == class).unwrap();
                assert_eq!(answer, if bearing(o) > 0.0 { "left" } else { "right" });
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} situated answers checked");
    assert!(
        integer_quaternions > 0,
        "no identity quaternion written with integers"
    );
}

#[test]
fn bird_images_exist_per_scene() {
    let t = truth();
    for scene in t["scenes"].as_array().unwrap() {
        let img = image::open(tree().join(format!(
            "sqa3d/bird/{}_bird.png",
            scene["scene_id"].as_str().unwrap()
        )))
        .unwrap();
        assert_eq!((img.width(), img.height()), (64, 36));
        let rgb = img.to_rgb8();
        // Background is white; the room (floor and furniture) is not.
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_ne!(rgb.get_pixel(32, 18).0, [255, 255, 255]);
    }
}

#[test]
fn faults_file_is_empty_without_faults() {
    assert_eq!(json("faults.json"), serde_json::json!([]));
}

#[test]
fn synth_json_loads_as_typed_truth() {
    let t = roomplan_synth::Truth::load(tree()).unwrap();
    assert_eq!(t.config, small_config());
    assert_eq!(t.scenes.len(), 3);
    assert_eq!(t.scenes[2].scene_id, "scene0707_00");
    assert!(t.scenes[2].test_scene && !t.scenes[0].test_scene);
    assert_eq!(t.scenes[1].splits.scanqa, "val");
    assert_eq!(t.scenes[1].splits.arkit, "Validation");
    assert!(t
        .scenes
        .iter()
        .all(|s| s.scannet.frames.len() == 12 && s.arkit.frames.len() == 12));
}

/// Camera-to-room pose from a row-major world pose and a row-major room←world transform.
fn room_pose(room_from_world: &[f64; 16], c2w: &[f64; 16]) -> roomplan_synth::geom::Rigid {
    let mut m = [0.0; 16];
    for i in 0..4 {
        for j in 0..4 {
            m[i * 4 + j] = (0..4)
                .map(|k| room_from_world[i * 4 + k] * c2w[k * 4 + j])
                .sum();
        }
    }
    roomplan_synth::geom::Rigid::from_row_major(&m)
}

#[test]
fn colour_images_show_the_room_from_the_recorded_pose() {
    use roomplan_synth::render::render;
    let t = roomplan_synth::Truth::load(tree()).unwrap();
    for scene in &t.scenes {
        let id = &scene.scene_id;
        let sens = read_sens(&tree().join(format!("scannet/scans/{id}/{id}.sens")));
        for (i, (pose, jpeg, _)) in sens.frames.iter().enumerate().step_by(5) {
            let c2r = room_pose(&scene.scannet.axis_alignment, pose);
            let want = render(&scene.room, &scene.scannet.color_intrinsics, &c2r, 10.0);
            let got = image::load_from_memory(jpeg).unwrap().to_rgb8();
            let mad = got
                .as_raw()
                .iter()
                .zip(&want.rgb)
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .sum::<f64>()
                / want.rgb.len() as f64;
            assert!(
                mad < 4.0,
                "{id} frame {i}: JPEG differs from the render by {mad} on average"
            );
        }
        // ARKit colour is lossless: exactly the render at the sensor pose.
        let v = &scene.video_id;
        let room_from_world = invert_rigid(&scene.arkit.world_from_room);
        let fr = &scene.arkit.frames[0];
        let c2r = room_pose(&room_from_world, &fr.c2w);
        let want = render(&scene.room, &scene.arkit.intrinsics, &c2r, 5.0);
        let path = tree().join(format!(
            "arkitscenes/3dod/{}/{v}/{v}_frames/lowres_wide/{v}_{}.png",
            scene.splits.arkit, fr.timestamp
        ));
        let got = image::open(path).unwrap().to_rgb8();
        let diff = got
            .as_raw()
            .iter()
            .zip(&want.rgb)
            .filter(|(a, b)| a != b)
            .count();
        // Poses round-trip through synth.json text; allow a few edge pixels to flip.
        assert!(
            diff < 30,
            "{v}: {diff} channel values differ from the render"
        );
    }
}
