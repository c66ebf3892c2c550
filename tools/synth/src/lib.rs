//! Procedural indoor rooms written in the real raw on-disk formats of ScanNet, ScanQA, SQA3D,
//! ARKitScenes (3DOD) and RoomPlan — the project's test world and demo data (issue 2).
//!
//! [`generate`] writes, under `out`:
//! ```text
//! synth.json     ground truth ([`Truth`]): config, rooms, objects, cameras, splits
//! faults.json    injected faults ([`Fault`]); [] unless `faults` is set
//! scannet/scans/<scene>/<scene>.sens, <scene>.txt, <scene>_vh_clean_2.ply
//! scannet/scans/<scene>/{color,depth,pose,intrinsic}/     (ScannetFormat::Export | Both)
//! scanqa/ScanQA_v1.0_{train,val,test_w_obj,test_wo_obj}.json
//! sqa3d/balanced/v1_balanced_{questions,sqa_annotations}_<split>_scannetv2.json
//! sqa3d/bird/<scene>_bird.png
//! arkitscenes/3dod/metadata.csv
//! arkitscenes/3dod/<Training|Validation>/<video>/<video>_3dod_annotation.json
//! arkitscenes/3dod/<Training|Validation>/<video>/<video>_frames/{lowres_wide,lowres_depth,lowres_wide_intrinsics}/, lowres_wide.traj
//! roomplan/<video>.json
//! ```
//! Output is a pure function of the config: every scene draws from its own ChaCha stream, so
//! scenes and frames render in parallel and the bytes do not depend on the thread count.

pub mod arkit;
pub mod geom;
pub mod io;
pub mod qa;
pub mod render;
pub mod roomplan;
pub mod scannet;
pub mod scene;

use crate::geom::DetMath;
use anyhow::{bail, Context, Result};
use geom::{Intrinsics, Rigid};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use scene::Room;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;

/// Which ScanNet representations to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ScannetFormat {
    /// Only the raw `.sens` (plus `.txt` and mesh).
    #[default]
    Sens,
    /// Only the SensReader export folders (plus `.txt` and mesh).
    Export,
    /// Both.
    Both,
}

impl ScannetFormat {
    pub fn sens(self) -> bool {
        matches!(self, ScannetFormat::Sens | ScannetFormat::Both)
    }
    pub fn export(self) -> bool {
        matches!(self, ScannetFormat::Export | ScannetFormat::Both)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    pub seed: u64,
    pub num_scenes: usize,
    /// Frames per ScanNet scene and per ARKitScenes video.
    pub frames_per_scene: usize,
    /// ScanNet colour (W, H); real ScanNet v2 is (1296, 968).
    pub scannet_color_size: (u32, u32),
    /// ScanNet depth (W, H); real ScanNet v2 is (640, 480).
    pub scannet_depth_size: (u32, u32),
    pub scannet_format: ScannetFormat,
    /// SQA3D bird's-eye PNG (W, H).
    pub bird_size: (u32, u32),
    /// ScanQA questions per scene.
    pub scanqa_per_scene: usize,
    /// SQA3D situations per scene (each gets several questions).
    pub sqa3d_situations_per_scene: usize,
    /// Inject the faults listed in `faults.json`.
    pub faults: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            num_scenes: 4,
            frames_per_scene: 60,
            scannet_color_size: (324, 242),
            scannet_depth_size: (160, 120),
            scannet_format: ScannetFormat::Sens,
            bird_size: (320, 180),
            scanqa_per_scene: 12,
            sqa3d_situations_per_scene: 4,
            faults: false,
        }
    }
}

impl SynthConfig {
    /// Units of work reported through the progress callback: one per rendered frame per
    /// dataset, plus one per scene for its question files and mesh.
    pub fn work_units(&self) -> u64 {
        (self.num_scenes * (2 * self.frames_per_scene + 1)) as u64
    }

    fn validate(&self) -> Result<()> {
        if self.num_scenes == 0 {
            bail!("num_scenes must be at least 1");
        }
        if self.frames_per_scene < 4 {
            bail!(
                "frames_per_scene must be at least 4 (got {})",
                self.frames_per_scene
            );
        }
        for (what, (w, h)) in [
            ("scannet_color_size", self.scannet_color_size),
            ("scannet_depth_size", self.scannet_depth_size),
            ("bird_size", self.bird_size),
        ] {
            if w < 8 || h < 8 || w > 8192 || h > 8192 {
                bail!("{what} must be between 8 and 8192 pixels per side (got {w}×{h})");
            }
        }
        Ok(())
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// sha256 (hex) of the output tree, see [`io::tree_digest`].
    pub tree_digest: String,
    pub files: usize,
    pub bytes: u64,
    pub scenes: usize,
    pub scannet_frames: usize,
    pub arkit_frames: usize,
    pub scanqa_questions: usize,
    pub sqa3d_questions: usize,
    pub faults: usize,
}

/// Dataset splits of one room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// ScanQA / SQA3D split: `train`, `val` or `test`.
    pub scanqa: String,
    pub sqa3d: String,
    /// ARKitScenes fold: `Training` or `Validation`.
    pub arkit: String,
}

/// One injected fault, for `faults.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: String,
    pub dataset: String,
    /// Path relative to the output root.
    pub file: String,
    /// The bad record inside the file (`frame 3`, a question id, `whole file`...).
    pub record: String,
    /// What a correct reader does with the record: always `reject`.
    pub expect: String,
    /// What is wrong and what stays valid.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScannetFrameTruth {
    pub index: usize,
    /// Row-major camera-to-world in the raw scan frame, as the `.sens` should hold it.
    pub c2w: [f64; 16],
    /// False where the written pose is all −inf (fault).
    pub pose_valid: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScannetTruth {
    /// Row-major raw-scan-frame ← room-frame transform.
    pub world_from_room: [f64; 16],
    /// Row-major axis alignment (room ← raw), also written to the `.txt` unless a test scene.
    pub axis_alignment: [f64; 16],
    pub color_intrinsics: Intrinsics,
    pub depth_intrinsics: Intrinsics,
    /// Bounding-box centre of the `_vh_clean_2.ply` vertices (raw frame), SQA3D's origin.
    pub mesh_centre: [f64; 3],
    pub frames: Vec<ScannetFrameTruth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArkitFrameTruth {
    /// Timestamp as written in the file names (3 decimals).
    pub timestamp: String,
    /// Row-major camera-to-world of the sensor camera (images as stored), ARKit Z-up world.
    pub c2w: [f64; 16],
    /// `exact` (a .traj line rounds to the name), `near` (a line within 0.005 s but not exact)
    /// or `missing` (no line within 0.005 s: the frame has no pose).
    pub traj: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArkitTruth {
    pub fold: String,
    pub sky_direction: String,
    /// Row-major ARKit-world ← room-frame transform.
    pub world_from_room: [f64; 16],
    pub intrinsics: Intrinsics,
    pub frames: Vec<ArkitFrameTruth>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneTruth {
    pub index: usize,
    pub scene_id: String,
    pub video_id: String,
    /// ScanNet test scan (no `axisAlignment` in its `.txt`).
    pub test_scene: bool,
    pub splits: Splits,
    /// The room in the room frame (Z-up, centred on the floor; = ScanNet's aligned frame).
    pub room: Room,
    pub scannet: ScannetTruth,
    pub arkit: ArkitTruth,
    /// Column-major RoomPlan-world (Y-up) ← room-frame transform.
    pub roomplan_world_from_room: [f64; 16],
}

/// `synth.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub generator: String,
    pub config: SynthConfig,
    pub scenes: Vec<SceneTruth>,
}

impl Truth {
    pub fn load(out: &Path) -> Result<Truth> {
        let path = out.join("synth.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Everything decided about one room before any file is written.
pub struct ScenePlan {
    pub index: usize,
    pub scene_id: String,
    pub video_id: String,
    pub test_scene: bool,
    pub splits: Splits,
    pub room: Room,
    pub scannet_from_room: Rigid,
    pub scannet_color: Intrinsics,
    pub scannet_depth: Intrinsics,
    /// Camera-to-room poses of the ScanNet frames.
    pub scannet_poses: Vec<Rigid>,
    /// Independent per-scene stream for later decisions (questions, ids).
    pub rng: ChaCha8Rng,
}

fn scaled_intrinsics(
    base: (f64, f64, f64, f64, f64, f64),
    size: (u32, u32),
    jitter: f64,
) -> Intrinsics {
    let (bw, bh, fx, fy, cx, cy) = base;
    let (sx, sy) = (size.0 as f64 / bw, size.1 as f64 / bh);
    Intrinsics {
        width: size.0,
        height: size.1,
        fx: fx * sx * (1.0 + jitter),
        fy: fy * sy * (1.0 + jitter),
        cx: (cx + 0.5) * sx - 0.5,
        cy: (cy + 0.5) * sy - 0.5,
    }
}

/// Scene id, test flag and splits of room `index` of `n`: the last of several rooms is a
/// ScanNet test scan (id ≥ 0707); of the others every fourth (1, 5, ...) is validation.
pub fn scene_identity(index: usize, n: usize, seed: u64) -> (String, String, bool, Splits) {
    let test = n >= 2 && index == n - 1;
    let number = if test { index.max(707) } else { index };
    let split = if test {
        "test"
    } else if index % 4 == 1 {
        "val"
    } else {
        "train"
    };
    let video = 41_000_000 + (seed % 1000) * 1000 + index as u64;
    (
        format!("scene{number:04}_00"),
        video.to_string(),
        test,
        Splits {
            scanqa: split.into(),
            sqa3d: split.into(),
            arkit: if split == "train" {
                "Training".into()
            } else {
                "Validation".into()
            },
        },
    )
}

pub fn plan_scene(cfg: &SynthConfig, index: usize) -> ScenePlan {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(index as u64);
    let room = scene::generate_room(&mut rng);
    let (scene_id, video_id, test_scene, splits) = scene_identity(index, cfg.num_scenes, cfg.seed);
    // Raw scan frames are arbitrary rigid motions of the aligned frame (yaw + offset).
    let yaw = rng.random_range(-std::f64::consts::PI..std::f64::consts::PI);
    let scannet_from_room = Rigid {
        r: geom::rot_z(yaw),
        t: [
            rng.random_range(1.0..5.0),
            rng.random_range(1.0..5.0),
            rng.random_range(-0.1..0.1),
        ],
    };
    let jitter = rng.random_range(-0.01..0.01);
    let scannet_color = scaled_intrinsics(
        (1296.0, 968.0, 1170.187988, 1170.187988, 647.75, 483.75),
        cfg.scannet_color_size,
        jitter,
    );
    let scannet_depth = scaled_intrinsics(
        (640.0, 480.0, 571.623718, 571.623718, 319.5, 239.5),
        cfg.scannet_depth_size,
        jitter,
    );
    let scannet_poses = scene::camera_walk(&room, cfg.frames_per_scene, &mut rng);
    ScenePlan {
        index,
        scene_id,
        video_id,
        test_scene,
        splits,
        room,
        scannet_from_room,
        scannet_color,
        scannet_depth,
        scannet_poses,
        rng,
    }
}

/// Where the faults go (room indices), fixed so tests can rely on them.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub enabled: bool,
    /// Room whose ScanNet frames 1 and 2 get all −inf poses, frame 3 a corrupt JPEG and (in the
    /// export) frame 4 no depth PNG, and whose ARKitScenes frame 2 has no depth PNG.
    pub bad_frames_scene: usize,
    /// Room whose `.sens` is cut inside its middle frame.
    pub truncated_sens_scene: usize,
    /// Room whose ARKitScenes annotation JSON is cut in half (malformed).
    pub malformed_annotation_scene: usize,
    /// Room whose ARKitScenes annotation says `skipped: true` (None when it would collide).
    pub skipped_annotation_scene: Option<usize>,
}

impl FaultPlan {
    pub fn new(cfg: &SynthConfig) -> FaultPlan {
        let n = cfg.num_scenes;
        let malformed = 2 % n;
        let skipped = 1 % n;
        FaultPlan {
            enabled: cfg.faults,
            bad_frames_scene: 0,
            truncated_sens_scene: 1 % n,
            malformed_annotation_scene: malformed,
            skipped_annotation_scene: (skipped != malformed).then_some(skipped),
        }
    }
    pub const INF_POSE_FRAMES: [usize; 2] = [1, 2];
    pub const CORRUPT_JPEG_FRAME: usize = 3;
    pub const SCANNET_MISSING_DEPTH_FRAME: usize = 4;
    pub const ARKIT_MISSING_DEPTH_FRAME: usize = 2;
}

/// Progress callback: receives increments of [`SynthConfig::work_units`].
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Writes the rooms of `cfg` under `out` (which must be new or empty; see the module docs for
/// the layout) and returns the tree digest and counts. Rooms render in parallel on the current
/// rayon pool; the bytes do not depend on its size.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<Summary> {
    generate_with_progress(cfg, out, &|_| {})
}

/// [`generate`], reporting progress in units of [`SynthConfig::work_units`].
pub fn generate_with_progress(
    cfg: &SynthConfig,
    out: &Path,
    progress: Progress,
) -> Result<Summary> {
    cfg.validate()?;
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "output folder {} is not empty; synth only writes into a new or empty folder",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let fault_plan = FaultPlan::new(cfg);
    let results: Vec<SceneOutput> = (0..cfg.num_scenes)
        .into_par_iter()
        .map(|i| {
            let plan = plan_scene(cfg, i);
            let id = plan.scene_id.clone();
            write_scene(cfg, &fault_plan, plan, out, progress)
                .with_context(|| format!("writing room {i} ({id})"))
        })
        .collect::<Result<_>>()?;
    let mut faults: Vec<Fault> = results.iter().flat_map(|r| r.faults.clone()).collect();
    let (scanqa_questions, sqa3d_questions) =
        write_question_files(cfg, &results, out, &mut faults)?;
    write_arkit_metadata(&results, out)?;
    let scenes: Vec<SceneTruth> = results.into_iter().map(|r| r.truth).collect();
    let truth = Truth {
        generator: format!("roomplan-synth {}", env!("CARGO_PKG_VERSION")),
        config: cfg.clone(),
        scenes,
    };
    io::write_json(&out.join("synth.json"), &serde_json::to_value(&truth)?)?;
    io::write_json(&out.join("faults.json"), &serde_json::to_value(&faults)?)?;
    let (tree_digest, files, bytes) = io::tree_digest(out)?;
    Ok(Summary {
        tree_digest,
        files,
        bytes,
        scenes: truth.scenes.len(),
        scannet_frames: truth.scenes.iter().map(|s| s.scannet.frames.len()).sum(),
        arkit_frames: truth.scenes.iter().map(|s| s.arkit.frames.len()).sum(),
        scanqa_questions,
        sqa3d_questions,
        faults: faults.len(),
    })
}

fn rel(out: &Path, path: &Path) -> String {
    path.strip_prefix(out)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Uppercase random (version 4) UUID, as RoomPlan and ARKitScenes write them.
fn uuid(rng: &mut ChaCha8Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What one room contributes to the shared files.
struct SceneOutput {
    truth: SceneTruth,
    faults: Vec<Fault>,
    scanqa: Vec<qa::QaItem>,
    situations: Vec<qa::Situation>,
    /// ARKitScenes `visit_id` (`NA` for some, as in the real metadata).
    visit_id: String,
}

fn write_scene(
    cfg: &SynthConfig,
    faults: &FaultPlan,
    mut plan: ScenePlan,
    out: &Path,
    progress: Progress,
) -> Result<SceneOutput> {
    let mut injected = Vec::new();
    let scannet = write_scannet(cfg, faults, &plan, out, progress, &mut injected)
        .with_context(|| format!("writing ScanNet scene {}", plan.scene_id))?;
    let (arkit, session_start) = write_arkit(faults, &mut plan, out, progress, &mut injected)
        .with_context(|| format!("writing ARKitScenes video {}", plan.video_id))?;
    let roomplan_world = roomplan::world_from_room(&session_start);
    let core_model: Vec<u8> = (0..96).map(|_| plan.rng.random()).collect();
    let rng = &mut plan.rng;
    let captured =
        roomplan::captured_room(&plan.room, &roomplan_world, &base64(&core_model), || {
            uuid(rng)
        });
    io::write_atomic(
        &out.join(format!("roomplan/{}.json", plan.video_id)),
        roomplan::apple_json(&captured).as_bytes(),
    )?;
    write_bird(cfg, &plan, scannet.mesh_centre, out)?;
    let scanqa = qa::pick_scanqa(&plan.room, cfg.scanqa_per_scene, &mut plan.rng);
    let situations = qa::situations(
        &plan.room,
        &plan.scannet_from_room,
        cfg.sqa3d_situations_per_scene,
        &mut plan.rng,
    );
    let visit_id = if plan.index % 5 == 4 {
        "NA".to_string()
    } else {
        (420_000 + plan.index * 7).to_string()
    };
    progress(1);
    Ok(SceneOutput {
        truth: SceneTruth {
            index: plan.index,
            scene_id: plan.scene_id.clone(),
            video_id: plan.video_id.clone(),
            test_scene: plan.test_scene,
            splits: plan.splits.clone(),
            room: plan.room.clone(),
            scannet,
            arkit,
            roomplan_world_from_room: roomplan_world.to_column_major(),
        },
        faults: injected,
        scanqa,
        situations,
        visit_id,
    })
}

/// Standard base64 with padding (RoomPlan's `coreModel`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// SQA3D bird's-eye PNG: top-down view of the mesh (no ceiling) in its bbox-centred raw frame,
/// image +x = mesh +x, image up = mesh +y, scaled so any room orientation fits.
fn write_bird(
    cfg: &SynthConfig,
    plan: &ScenePlan,
    mesh_centre: [f64; 3],
    out: &Path,
) -> Result<()> {
    let (w, h) = cfg.bird_size;
    let diag = plan.room.size[0].dhypot(plan.room.size[1]);
    let mpp = diag * 1.05 / w.min(h) as f64;
    let room_from_centred = plan.scannet_from_room.inverse().compose(&Rigid {
        r: geom::IDENTITY3,
        t: mesh_centre,
    });
    let rgb = render::render_top_down(&plan.room, w, h, mpp, &room_from_centred);
    io::write_atomic(
        &out.join(format!("sqa3d/bird/{}_bird.png", plan.scene_id)),
        &io::png_rgb_bytes(&rgb, w, h)?,
    )
}

/// Rendered and encoded ScanNet frame.
struct EncodedFrame {
    jpeg: Vec<u8>,
    depth_zlib: Vec<u8>,
    depth_png: Option<Vec<u8>>,
}

fn write_scannet(
    cfg: &SynthConfig,
    faults: &FaultPlan,
    plan: &ScenePlan,
    out: &Path,
    progress: Progress,
    injected: &mut Vec<Fault>,
) -> Result<ScannetTruth> {
    let dir = out.join("scannet/scans").join(&plan.scene_id);
    let id = &plan.scene_id;
    let room = &plan.room;
    let bad_frames = faults.enabled && faults.bad_frames_scene == plan.index;
    let encoded: Vec<EncodedFrame> = plan
        .scannet_poses
        .par_iter()
        .map(|c2r| {
            let color = render::render(room, &plan.scannet_color, c2r, 10.0);
            let depth = render::render(room, &plan.scannet_depth, c2r, 10.0);
            let mm = depth.depth_mm();
            let frame = EncodedFrame {
                jpeg: io::jpeg_bytes(&color.rgb, color.width, color.height)?,
                depth_zlib: scannet::zlib_depth(&mm)?,
                depth_png: if cfg.scannet_format.export() {
                    Some(io::png_u16_bytes(&mm, depth.width, depth.height)?)
                } else {
                    None
                },
            };
            progress(1);
            Ok(frame)
        })
        .collect::<Result<_>>()?;

    let mut frames_truth = Vec::new();
    let mut sens_frames = Vec::new();
    for (i, (c2r, enc)) in plan.scannet_poses.iter().zip(encoded).enumerate() {
        let c2w = plan.scannet_from_room.compose(c2r).to_row_major();
        let pose_valid = !(bad_frames && FaultPlan::INF_POSE_FRAMES.contains(&i));
        let written = if pose_valid {
            c2w
        } else {
            [f64::NEG_INFINITY; 16]
        };
        let mut jpeg = enc.jpeg;
        if bad_frames && i == FaultPlan::CORRUPT_JPEG_FRAME {
            // Keep the SOI marker and the length, destroy everything after it.
            for (k, b) in jpeg.iter_mut().enumerate().skip(2) {
                *b = (k as u8).wrapping_mul(37) ^ 0x5a;
            }
        }
        frames_truth.push(ScannetFrameTruth {
            index: i,
            c2w,
            pose_valid,
        });
        if cfg.scannet_format.export() {
            io::write_atomic(&dir.join(format!("color/{i}.jpg")), &jpeg)?;
            if bad_frames && i == FaultPlan::SCANNET_MISSING_DEPTH_FRAME {
                injected.push(Fault {
                    kind: "missing_depth".into(),
                    dataset: "scannet".into(),
                    file: rel(out, &dir.join(format!("depth/{i}.png"))),
                    record: format!("frame {i}"),
                    expect: "reject".into(),
                    detail: "export has color, pose but no depth PNG for this frame".into(),
                });
            } else {
                io::write_atomic(
                    &dir.join(format!("depth/{i}.png")),
                    enc.depth_png.as_deref().unwrap_or_default(),
                )?;
            }
            io::write_atomic(
                &dir.join(format!("pose/{i}.txt")),
                scannet::matrix_txt(&written).as_bytes(),
            )?;
        }
        sens_frames.push(scannet::SensFrame {
            camera_to_world: written.map(|v| v as f32),
            timestamp_us: i as u64 * 33_333,
            color_jpeg: jpeg,
            depth_zlib: enc.depth_zlib,
        });
    }
    if bad_frames {
        for f in FaultPlan::INF_POSE_FRAMES {
            injected.extend(scannet_fault(
                cfg,
                out,
                &dir,
                id,
                "inf_pose",
                &format!("frame {f}"),
                "camera_to_world is all -inf (tracking lost); the frame's images are intact",
                "pose",
                f,
                "txt",
            ));
        }
        let f = FaultPlan::CORRUPT_JPEG_FRAME;
        injected.extend(scannet_fault(cfg, out, &dir, id, "corrupt_jpeg", &format!("frame {f}"), "colour JPEG keeps its SOI marker and length but its data is garbage; pose and depth are valid", "color", f, "jpg"));
    }
    if cfg.scannet_format.export() {
        let k = |m: &Intrinsics| scannet::matrix_txt(&m.to_4x4_row_major());
        let identity = scannet::matrix_txt(&Rigid::IDENTITY.to_row_major());
        io::write_atomic(
            &dir.join("intrinsic/intrinsic_color.txt"),
            k(&plan.scannet_color).as_bytes(),
        )?;
        io::write_atomic(
            &dir.join("intrinsic/intrinsic_depth.txt"),
            k(&plan.scannet_depth).as_bytes(),
        )?;
        io::write_atomic(
            &dir.join("intrinsic/extrinsic_color.txt"),
            identity.as_bytes(),
        )?;
        io::write_atomic(
            &dir.join("intrinsic/extrinsic_depth.txt"),
            identity.as_bytes(),
        )?;
    }
    if cfg.scannet_format.sens() {
        let header = scannet::SensHeader {
            color: plan.scannet_color,
            depth: plan.scannet_depth,
        };
        let (mut bytes, offsets) = scannet::sens_bytes(&header, &sens_frames);
        let path = dir.join(format!("{id}.sens"));
        if faults.enabled && faults.truncated_sens_scene == plan.index {
            let cut_frame = sens_frames.len() / 2;
            let cut = offsets[cut_frame] + 100;
            bytes.truncate(cut);
            injected.push(Fault {
                kind: "truncated_sens".into(),
                dataset: "scannet".into(),
                file: rel(out, &path),
                record: format!("frame {cut_frame}"),
                expect: "reject".into(),
                detail: format!(
                    "file cut {cut} bytes in, 100 bytes into frame {cut_frame} of {}; frames before {cut_frame} are complete",
                    sens_frames.len()
                ),
            });
        }
        io::write_atomic(&path, &bytes)?;
    }
    let axis_alignment = plan.scannet_from_room.inverse();
    let scene_type = match room.kind.as_str() {
        "bedroom" => "Bedroom / Hotel",
        "kitchen" => "Kitchen",
        "bathroom" => "Bathroom",
        _ => "Living room / Lounge",
    };
    let txt = scannet::scan_txt(
        (!plan.test_scene).then_some(&axis_alignment),
        &plan.scannet_color,
        &plan.scannet_depth,
        plan.scannet_poses.len(),
        scene_type,
    );
    io::write_atomic(&dir.join(format!("{id}.txt")), txt.as_bytes())?;
    let mesh = scannet::room_mesh(room, &plan.scannet_from_room);
    io::write_atomic(&dir.join(format!("{id}_vh_clean_2.ply")), &mesh.ply_bytes())?;
    Ok(ScannetTruth {
        world_from_room: plan.scannet_from_room.to_row_major(),
        axis_alignment: axis_alignment.to_row_major(),
        color_intrinsics: plan.scannet_color,
        depth_intrinsics: plan.scannet_depth,
        mesh_centre: mesh.bbox_centre(),
        frames: frames_truth,
    })
}

/// Fault entries for a bad ScanNet frame: one for the `.sens` and one for the export file.
#[allow(clippy::too_many_arguments)]
fn scannet_fault(
    cfg: &SynthConfig,
    out: &Path,
    dir: &Path,
    id: &str,
    kind: &str,
    record: &str,
    detail: &str,
    folder: &str,
    frame: usize,
    ext: &str,
) -> Vec<Fault> {
    let mut files = Vec::new();
    if cfg.scannet_format.sens() {
        files.push(dir.join(format!("{id}.sens")));
    }
    if cfg.scannet_format.export() {
        files.push(dir.join(format!("{folder}/{frame}.{ext}")));
    }
    files
        .into_iter()
        .map(|f| Fault {
            kind: kind.into(),
            dataset: "scannet".into(),
            file: rel(out, &f),
            record: record.into(),
            expect: "reject".into(),
            detail: detail.into(),
        })
        .collect()
}

/// JSON number that is written as an integer when it is one (as the real SQA3D files do).
pub fn json_number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// ARKitScenes 3DOD video of the room: a second walk seen by a 256×192 sensor, stored in sensor
/// orientation (portrait for `Left`/`Right` captures). Returns its truth and the upright pose
/// of its first frame (where the RoomPlan session starts).
fn write_arkit(
    faults: &FaultPlan,
    plan: &mut ScenePlan,
    out: &Path,
    progress: Progress,
    injected: &mut Vec<Fault>,
) -> Result<(ArkitTruth, Rigid)> {
    let rng = &mut plan.rng;
    let video = plan.video_id.clone();
    let fold = plan.splits.arkit.clone();
    let dir = out.join("arkitscenes/3dod").join(&fold).join(&video);
    let frames_dir = dir.join(format!("{video}_frames"));
    let sky = arkit::sky_direction(plan.index);
    let world_from_room = Rigid {
        r: geom::rot_z(rng.random_range(-std::f64::consts::PI..std::f64::consts::PI)),
        t: [
            rng.random_range(-3.0..3.0),
            rng.random_range(-3.0..3.0),
            rng.random_range(-1.6..-1.2),
        ],
    };
    let k = Intrinsics {
        width: arkit::LOWRES.0,
        height: arkit::LOWRES.1,
        fx: 212.0 + rng.random_range(-2.0..2.0),
        fy: 212.0 + rng.random_range(-2.0..2.0),
        cx: 127.5 + rng.random_range(-1.0..1.0),
        cy: 95.5 + rng.random_range(-1.0..1.0),
    };
    let upright = scene::camera_walk(&plan.room, plan.scannet_poses.len(), rng);
    let turn = arkit::sensor_from_upright(sky);
    let sensor: Vec<Rigid> = upright
        .iter()
        .map(|p| Rigid {
            r: geom::mat_mul(&p.r, &turn),
            t: p.t,
        })
        .collect();
    // 10 Hz out of a 60 Hz stream; microsecond clock kept away from half-millisecond ties.
    let t0 = rng.random_range(1_000u64..90_000) * 1_000_000
        + rng.random_range(100..400) * 1000
        + rng.random_range(100..400);
    let stamps: Vec<u64> = (0..sensor.len())
        .map(|i| t0 + 100_000 * i as u64 + rng.random_range(0..90))
        .collect();
    let views: Vec<(Vec<u8>, Vec<u8>)> = sensor
        .par_iter()
        .map(|c2r| {
            let view = render::render(&plan.room, &k, c2r, arkit::MAX_DEPTH_M);
            let encoded = (
                io::png_rgb_bytes(&view.rgb, k.width, k.height)?,
                io::png_u16_bytes(&view.depth_mm(), k.width, k.height)?,
            );
            progress(1);
            Ok(encoded)
        })
        .collect::<Result<_>>()?;
    let bad_frames = faults.enabled && faults.bad_frames_scene == plan.index;
    let mut traj = String::new();
    let mut frames = Vec::new();
    for (i, ((c2r, us), (color, depth))) in sensor.iter().zip(&stamps).zip(views).enumerate() {
        let name = arkit::name_timestamp(*us);
        let c2w = world_from_room.compose(c2r);
        let state = if i % 11 == 5 {
            "missing"
        } else if i % 7 == 3 {
            "near"
        } else {
            "exact"
        };
        match state {
            "exact" => traj.push_str(&arkit::traj_line(*us, &c2w)),
            "near" => traj.push_str(&arkit::traj_line(us + 3_000, &c2w)),
            _ => {}
        }
        let file = format!("{video}_{name}");
        io::write_atomic(&frames_dir.join(format!("lowres_wide/{file}.png")), &color)?;
        io::write_atomic(
            &frames_dir.join(format!("lowres_wide_intrinsics/{file}.pincam")),
            arkit::pincam(&k).as_bytes(),
        )?;
        let depth_path = frames_dir.join(format!("lowres_depth/{file}.png"));
        if bad_frames && i == FaultPlan::ARKIT_MISSING_DEPTH_FRAME {
            injected.push(Fault {
                kind: "missing_depth".into(),
                dataset: "arkitscenes".into(),
                file: rel(out, &depth_path),
                record: format!("frame {name}"),
                expect: "reject".into(),
                detail: "lowres_wide, intrinsics and pose exist but the lowres_depth PNG does not"
                    .into(),
            });
        } else {
            io::write_atomic(&depth_path, &depth)?;
        }
        frames.push(ArkitFrameTruth {
            timestamp: name,
            c2w: c2w.to_row_major(),
            traj: state.into(),
        });
    }
    io::write_atomic(&frames_dir.join("lowres_wide.traj"), traj.as_bytes())?;

    let skipped = faults.enabled && faults.skipped_annotation_scene == Some(plan.index);
    let annotation = arkit::annotation(&plan.room, &world_from_room, skipped, || {
        uuid(rng).to_lowercase()
    });
    let ann_path = dir.join(format!("{video}_3dod_annotation.json"));
    let mut ann_bytes = serde_json::to_vec_pretty(&annotation)?;
    if skipped {
        injected.push(Fault {
            kind: "skipped_annotation".into(),
            dataset: "arkitscenes".into(),
            file: rel(out, &ann_path),
            record: "whole file".into(),
            expect: "reject".into(),
            detail: "annotation has skipped: true and no boxes; frames are intact".into(),
        });
    }
    if faults.enabled && faults.malformed_annotation_scene == plan.index {
        ann_bytes.truncate(ann_bytes.len() / 2);
        injected.push(Fault {
            kind: "malformed_json".into(),
            dataset: "arkitscenes".into(),
            file: rel(out, &ann_path),
            record: "whole file".into(),
            expect: "reject".into(),
            detail: "annotation JSON cut in half (unexpected end of input); frames are intact"
                .into(),
        });
    }
    io::write_atomic(&ann_path, &ann_bytes)?;
    let truth = ArkitTruth {
        fold,
        sky_direction: sky.into(),
        world_from_room: world_from_room.to_row_major(),
        intrinsics: k,
        frames,
    };
    Ok((truth, upright[0]))
}

/// ARKitScenes `metadata.csv` for all videos.
fn write_arkit_metadata(results: &[SceneOutput], out: &Path) -> Result<()> {
    let mut csv = String::from(
        "video_id,visit_id,fold,sky_direction,is_in_upsampling,has_laser_scanner_point_clouds\n",
    );
    for r in results {
        let t = &r.truth;
        csv.push_str(&format!(
            "{},{},{},{},False,False\n",
            t.video_id, r.visit_id, t.arkit.fold, t.arkit.sky_direction
        ));
    }
    io::write_atomic(&out.join("arkitscenes/3dod/metadata.csv"), csv.as_bytes())
}

fn sqa3d_info() -> serde_json::Value {
    json!({
        "description": "SQA3D synthetic rooms (roomplan-synth)",
        "url": "https://github.com/SilongYong/SQA3D",
        "version": "1.0",
        "year": 2022,
        "contributor": "roomplan-synth",
        "date_created": "2022-06-02",
    })
}

/// ScanQA and SQA3D files of every split. Returns the question counts.
fn write_question_files(
    cfg: &SynthConfig,
    results: &[SceneOutput],
    out: &Path,
    faults: &mut Vec<Fault>,
) -> Result<(usize, usize)> {
    let mut scanqa: std::collections::BTreeMap<&str, Vec<serde_json::Value>> =
        ["train", "val", "test_w_obj", "test_wo_obj"]
            .iter()
            .map(|s| (*s, vec![]))
            .collect();
    let mut sqa_q: std::collections::BTreeMap<&str, Vec<serde_json::Value>> =
        ["train", "val", "test"]
            .iter()
            .map(|s| (*s, vec![]))
            .collect();
    let mut sqa_a = sqa_q.clone();
    for r in results {
        let t = &r.truth;
        let number = &t.scene_id[5..9];
        for (k, q) in r.scanqa.iter().enumerate() {
            // ScanQA has two test sets with different questions: a test scene's questions
            // alternate between them.
            let split = match t.splits.scanqa.as_str() {
                "test" if k % 2 == 0 => "test_w_obj",
                "test" => "test_wo_obj",
                other => other,
            };
            let qid = format!("{split}-scene{number}-{k}");
            let record = if split.starts_with("test") {
                json!({"question": q.question, "question_id": qid, "scene_id": t.scene_id})
            } else {
                json!({
                    "answers": q.answers,
                    "object_ids": q.object_ids,
                    "object_names": q.object_ids.iter().map(|i| qa::label(&t.room.objects[*i as usize].class)).collect::<Vec<_>>(),
                    "question": q.question,
                    "question_id": qid,
                    "scene_id": t.scene_id,
                })
            };
            scanqa.entry(split).or_default().push(record);
        }
        let split = t.splits.sqa3d.as_str();
        let from_room = Rigid::from_row_major(&t.scannet.world_from_room);
        let mut k = 0u64;
        for s in &r.situations {
            let (position, rotation) = qa::sqa3d_pose(s, &from_room, t.scannet.mesh_centre);
            for (question, answer) in &s.questions {
                let qid = 220_602_000_000u64 + t.index as u64 * 10_000 + k;
                k += 1;
                sqa_q.entry(split).or_default().push(json!({
                    "scene_id": t.scene_id,
                    "situation": s.text,
                    "alternative_situation": s.alternatives,
                    "question": question,
                    "question_id": qid,
                }));
                sqa_a.entry(split).or_default().push(json!({
                    "scene_id": t.scene_id,
                    "question_id": qid,
                    "question_type": "N/A",
                    "answer_type": "other",
                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": 1}],
                    "position": position,
                    "rotation": rotation,
                }));
            }
        }
    }
    if cfg.faults {
        let max_number = results
            .iter()
            .filter_map(|r| r.truth.scene_id[5..9].parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let ghost = format!("scene{:04}_00", max_number.max(998) + 1);
        let qid = format!("train-scene{}-0", &ghost[5..9]);
        scanqa.entry("train").or_default().push(json!({
            "answers": ["red"], "object_ids": [0], "object_names": ["chair"],
            "question": "What color is the chair in the room?", "question_id": qid, "scene_id": ghost,
        }));
        faults.push(Fault {
            kind: "unknown_scene".into(),
            dataset: "scanqa".into(),
            file: "scanqa/ScanQA_v1.0_train.json".into(),
            record: qid,
            expect: "reject".into(),
            detail: format!("question about {ghost}, which is not among the generated scenes"),
        });
        let qid = 220_609_999_999u64;
        sqa_q.entry("train").or_default().push(json!({
            "scene_id": ghost, "situation": "I am standing by the door.", "alternative_situation": [],
            "question": "What is on my left?", "question_id": qid,
        }));
        sqa_a.entry("train").or_default().push(json!({
            "scene_id": ghost, "question_id": qid, "question_type": "N/A", "answer_type": "other",
            "answers": [{"answer": "chair", "answer_confidence": "yes", "answer_id": 1}],
            "position": {"x": 0.5, "y": -0.25, "z": 0}, "rotation": {"_x": 0, "_y": 0, "_z": 0, "_w": 1},
        }));
        for file in ["questions", "sqa_annotations"] {
            faults.push(Fault {
                kind: "unknown_scene".into(),
                dataset: "sqa3d".into(),
                file: format!("sqa3d/balanced/v1_balanced_{file}_train_scannetv2.json"),
                record: qid.to_string(),
                expect: "reject".into(),
                detail: format!(
                    "situation and question about {ghost}, which is not among the generated scenes"
                ),
            });
        }
    }
    let names = [
        ("train", "ScanQA_v1.0_train.json"),
        ("val", "ScanQA_v1.0_val.json"),
        ("test_w_obj", "ScanQA_v1.0_test_w_obj.json"),
        ("test_wo_obj", "ScanQA_v1.0_test_wo_obj.json"),
    ];
    let mut n_scanqa = 0;
    for (split, name) in names {
        let records = &scanqa[split];
        n_scanqa += records.len();
        io::write_json(&out.join("scanqa").join(name), &json!(records))?;
    }
    let mut n_sqa = 0;
    for split in ["train", "val", "test"] {
        n_sqa += sqa_q[split].len();
        let questions = json!({
            "info": sqa3d_info(), "license": "CC BY 4.0", "data_type": "scannet", "data_subtype": "v2",
            "task_type": "Situated question answering", "questions": sqa_q[split],
        });
        let annotations = json!({
            "info": sqa3d_info(), "license": "CC BY 4.0", "data_type": "scannet", "data_subtype": "v2",
            "annotations": sqa_a[split],
        });
        let dir = out.join("sqa3d/balanced");
        io::write_json(
            &dir.join(format!("v1_balanced_questions_{split}_scannetv2.json")),
            &questions,
        )?;
        io::write_json(
            &dir.join(format!(
                "v1_balanced_sqa_annotations_{split}_scannetv2.json"
            )),
            &annotations,
        )?;
    }
    Ok((n_scanqa, n_sqa))
}
