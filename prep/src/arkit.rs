//! ARKitScenes (FORMATS.md §4): the 3DOD layout and the raw layout, boxes → RoomPlan objects,
//! and one video → one `scenes` row plus its synthesized instruction samples.
//!
//! Layouts under a dataset root (`…/3dod` or `…/raw`, holding `metadata.csv`):
//! ```text
//! <Training|Validation>/<video>/<video>_3dod_annotation.json
//! <Training|Validation>/<video>/<video>_frames/{lowres_wide,lowres_depth,lowres_wide_intrinsics}/, lowres_wide.traj   (3DOD)
//! <Training|Validation>/<video>/{lowres_wide,lowres_depth,lowres_wide_intrinsics}/, lowres_wide.traj                 (raw)
//! ```
//! Matching follows the official `TenFpsDataLoader`: a frame `<video>_<ts>.png` takes the `.traj`
//! pose whose timestamp rounds (3 decimals) to `ts`, else the nearest one closer than 0.005 s
//! (the official loop takes any; nearest makes the choice unique); intrinsics come from the
//! `.pincam` named `ts`, else `ts − 0.001`, else `ts + 0.001`. Frames without a pose are
//! skipped (counted in the samples' source metadata, as the official loader skips them);
//! frames whose intrinsics, depth or image are missing or unreadable are rejects.
//!
//! Portrait captures (`sky_direction` Left/Right/Down) are turned upright by
//! [`geometry::ImageOp::Rotate`] in the same code path as their intrinsics and pose, so a portrait
//! capture and its upright twin give the same reference-frame geometry.
//!
//! Box conventions: `normalizedAxes` reshaped row-major has the box's local axes **as rows**, in
//! world coordinates; `axesLengths` are full extents; corners are `R_annotᵀ·local + centroid`.
//! [`box_to_object`] turns a box into a RoomPlan object in the reference frame: the height axis
//! is the box axis closest to world up (pointing up), the width axis the longer of the other two
//! (ties: the earlier one) with its sign chosen so that it points to +X of the reference frame
//! (ties: to −Z), and depth = width × up, so the transform is right-handed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use crate::actions::synthesis::{self, floor_region, Room, RoomObject, SynthesisConfig};
use crate::actions::{non_orthonormal_pair, ObjectSpec};
use crate::geometry::{
    self, cross, depth_histogram, encode_jpeg, mat3_mul, mat3_transpose, rodrigues, select_coverage, select_uniform,
    visible_voxels, CameraImage, DepthMap, DepthStats, ImageOp, ImageRotation, Mat3, ReferenceFrame, Rigid, Vec3,
    ViewSelection,
};
use crate::manifest::RawInput;
use crate::pipeline::{raw_input_of_bytes, InputRoot, SceneOutput, ViewOptions};
use crate::rejects::Reject;
use crate::roomplan::{box_corners, ObjectCategory, Transform};
use crate::shard::{Geometry, SampleRecord, SceneRecord, ViewRecord, ENCODING_JPEG};

/// Dataset name in `scenes` rows.
pub const DATASET: &str = "arkitscenes";
/// `task` of the synthesized samples.
pub const TASK: &str = "roomplan_action";
/// Folds, in the order they are read.
pub const FOLDS: [&str; 2] = ["Training", "Validation"];
/// Official pose-lookup tolerance (seconds); a `.traj` entry must be strictly closer.
pub const POSE_TOLERANCE_S: f64 = 0.005;
/// Intrinsics lookup offsets (seconds), tried in this order.
pub const PINCAM_OFFSETS_S: [f64; 3] = [0.0, -0.001, 0.001];
/// `lowres_depth` is millimetres.
pub const DEPTH_METRES_PER_UNIT: f64 = 0.001;
/// Tolerance on `|AAᵀ − I|` of a box's `normalizedAxes`.
pub const AXES_TOLERANCE: f64 = 1e-3;

/// A problem with one record of one raw file; becomes a [`Reject`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {record}: {reason}", file.display())]
pub struct ArkitError {
    pub file: PathBuf,
    /// The record inside the file: `whole file`, `line 3`, `frame 57352.271`, a box uid, …
    pub record: String,
    pub reason: String,
}

impl ArkitError {
    pub fn new(file: &Path, record: impl Into<String>, reason: impl Into<String>) -> ArkitError {
        ArkitError {
            file: file.to_path_buf(),
            record: record.into(),
            reason: reason.into(),
        }
    }

    pub fn to_reject(&self, root: &InputRoot) -> Reject {
        Reject::new(root.label(&self.file), &self.record, &self.reason)
    }
}

// ---------------------------------------------------------------------------------------------
// metadata.csv

/// One row of `metadata.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoMeta {
    pub video_id: String,
    pub visit_id: Option<String>,
    pub fold: Option<String>,
    pub sky_direction: String,
}

/// pandas reads `video_id` as a number; a float-formatted id (`41000000.0`) names the same video.
pub fn normalize_video_id(id: &str) -> String {
    let id = id.trim();
    match id.strip_suffix(".0") {
        Some(int) if !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()) => int.to_string(),
        _ => id.to_string(),
    }
}

/// Parses `metadata.csv` (plain comma-separated, header first; columns found by name). A missing
/// `video_id` or `sky_direction` column fails the file; a bad row is an error for that row.
pub fn parse_metadata_csv(
    text: &str,
    file: &Path,
) -> Result<(BTreeMap<String, VideoMeta>, Vec<ArkitError>), ArkitError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| ArkitError::new(file, "header", "empty file, expected a CSV header"))?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| columns.iter().position(|c| *c == name);
    let need = |name: &str| {
        column(name).ok_or_else(|| ArkitError::new(file, "header", format!("no {name:?} column (columns: {header})")))
    };
    let (id_col, sky_col) = (need("video_id")?, need("sky_direction")?);
    let (visit_col, fold_col) = (column("visit_id"), column("fold"));
    let mut rows = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, line) in lines {
        let record = format!("line {}", i + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            errors.push(ArkitError::new(
                file,
                record,
                format!("{} fields, expected {}", fields.len(), columns.len()),
            ));
            continue;
        }
        let video_id = normalize_video_id(fields[id_col]);
        let optional = |c: Option<usize>| {
            c.map(|c| fields[c])
                .filter(|v| !v.is_empty() && *v != "NA")
                .map(str::to_string)
        };
        let meta = VideoMeta {
            video_id: video_id.clone(),
            visit_id: optional(visit_col),
            fold: optional(fold_col),
            sky_direction: fields[sky_col].to_string(),
        };
        match rows.entry(video_id) {
            std::collections::btree_map::Entry::Occupied(e) => errors.push(ArkitError::new(
                file,
                record,
                format!("video {} listed twice; the first row is used", e.key()),
            )),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(meta);
            }
        }
    }
    Ok((rows, errors))
}

// ---------------------------------------------------------------------------------------------
// Layout

/// Which nesting a video folder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Frames under `<video>/<video>_frames/`.
    ThreeDod,
    /// Frames directly under `<video>/`.
    Raw,
}

/// One video folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    pub video_id: String,
    /// `Training` or `Validation`.
    pub fold: String,
    pub dir: PathBuf,
    pub layout: Layout,
    /// The dataset root (`…/3dod` or `…/raw`) holding `metadata.csv`.
    pub dataset_dir: PathBuf,
}

impl Video {
    /// The folder holding `lowres_wide/`, `lowres_depth/`, `lowres_wide_intrinsics/` and the `.traj`.
    pub fn frames_dir(&self) -> PathBuf {
        match self.layout {
            Layout::ThreeDod => self.dir.join(format!("{}_frames", self.video_id)),
            Layout::Raw => self.dir.clone(),
        }
    }

    pub fn annotation_path(&self) -> PathBuf {
        self.dir.join(format!("{}_3dod_annotation.json", self.video_id))
    }

    pub fn traj_path(&self) -> PathBuf {
        self.frames_dir().join("lowres_wide.traj")
    }

    /// `train` or `val`, the split names the samples table uses.
    pub fn split(&self) -> &'static str {
        if self.fold == "Validation" {
            "val"
        } else {
            "train"
        }
    }
}

/// The video folders of a dataset root, sorted by video id; an error when the root has neither
/// `Training/` nor `Validation/`.
pub fn discover_videos(root: &Path) -> Result<Vec<Video>, ArkitError> {
    let mut videos = Vec::new();
    let mut any_fold = false;
    for fold in FOLDS {
        let fold_dir = root.join(fold);
        if !fold_dir.is_dir() {
            continue;
        }
        any_fold = true;
        let entries = std::fs::read_dir(&fold_dir).map_err(|e| ArkitError::new(&fold_dir, "listing", e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArkitError::new(&fold_dir, "listing", e.to_string()))?;
            if !entry.path().is_dir() {
                continue;
            }
            let video_id = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let layout = if dir.join(format!("{video_id}_frames")).is_dir() || !dir.join("lowres_wide").is_dir() {
                Layout::ThreeDod
            } else {
                Layout::Raw
            };
            videos.push(Video {
                video_id,
                fold: fold.to_string(),
                dir,
                layout,
                dataset_dir: root.to_path_buf(),
            });
        }
    }
    if !any_fold {
        return Err(ArkitError::new(
            root,
            "listing",
            "no Training/ or Validation/ folder: not an ARKitScenes 3dod or raw root",
        ));
    }
    videos.sort_by(|a, b| a.video_id.cmp(&b.video_id).then(a.fold.cmp(&b.fold)));
    Ok(videos)
}

/// A frame file name `<video>_<ts>.png` split into its timestamp (as written) and seconds.
pub fn parse_frame_name(file_name: &str, video_id: &str) -> Option<(String, f64)> {
    let (prefix, rest) = file_name.split_once('_')?;
    let timestamp = rest.strip_suffix(".png")?;
    let seconds: f64 = timestamp.parse().ok()?;
    (prefix == video_id && seconds.is_finite()).then(|| (timestamp.to_string(), seconds))
}

// ---------------------------------------------------------------------------------------------
// .traj, .pincam

/// One `.traj` pose.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajPose {
    pub seconds: f64,
    /// The timestamp rounded to 3 decimals, as the official loader keys its poses.
    pub key: String,
    pub c2w: Rigid,
}

/// The key the official loader uses for a `.traj` timestamp: `f"{round(ts, 3):.3f}"`.
pub fn timestamp_key(seconds: f64) -> String {
    format!("{seconds:.3}")
}

/// Parses `lowres_wide.traj`: `ts rx ry rz tx ty tz` per line, a world-to-camera transform with
/// an axis-angle rotation, inverted to camera-to-world. Bad lines are errors of their own.
pub fn parse_traj(text: &str, file: &Path) -> (Vec<TrajPose>, Vec<ArkitError>) {
    let mut poses = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = format!("line {}", i + 1);
        let numbers: Result<Vec<f64>, _> = line.split_whitespace().map(str::parse::<f64>).collect();
        let numbers = match numbers {
            Ok(n) if n.len() == 7 => n,
            Ok(n) => {
                errors.push(ArkitError::new(
                    file,
                    record,
                    format!("{} numbers, expected 7 (ts rx ry rz tx ty tz)", n.len()),
                ));
                continue;
            }
            Err(e) => {
                errors.push(ArkitError::new(file, record, format!("not a number: {e}")));
                continue;
            }
        };
        if let Some(bad) = numbers.iter().find(|x| !x.is_finite()) {
            errors.push(ArkitError::new(file, record, format!("non-finite value {bad}")));
            continue;
        }
        // A rotation vector as cv2.Rodrigues writes it has an angle in [0, π]; beyond 2π it is not
        // one (and a huge one gives NaN after the trigonometry).
        let r = [numbers[1], numbers[2], numbers[3]];
        let angle = geometry::norm(&r);
        if angle > 2.0 * std::f64::consts::PI {
            errors.push(ArkitError::new(
                file,
                record,
                format!("rotation vector {r:?} has an angle of {angle} rad, beyond 2π: not an axis-angle rotation"),
            ));
            continue;
        }
        let w2c = Rigid {
            r: rodrigues(&r),
            t: [numbers[4], numbers[5], numbers[6]],
        };
        let c2w = w2c.inverse();
        if let Err(e) = geometry::validate_pose(&c2w.to_mat4()) {
            errors.push(ArkitError::new(file, record, e.to_string()));
            continue;
        }
        if !(numbers[0] >= 0.0 && numbers[0] < 1e9) {
            errors.push(ArkitError::new(
                file,
                record,
                format!("timestamp {} s is not a plausible device time", numbers[0]),
            ));
            continue;
        }
        poses.push(TrajPose {
            seconds: numbers[0],
            key: timestamp_key(numbers[0]),
            c2w,
        });
    }
    (poses, errors)
}

/// How a frame found its pose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoseMatch {
    Exact,
    Near,
}

/// Poses by rounded key and by time.
#[derive(Debug, Clone)]
pub struct PoseIndex {
    poses: Vec<TrajPose>,
    by_key: HashMap<String, usize>,
    by_time: Vec<(f64, usize)>,
}

impl PoseIndex {
    /// A later line with the same key replaces an earlier one (the official loader fills a dict).
    pub fn new(poses: Vec<TrajPose>) -> PoseIndex {
        let by_key = poses.iter().enumerate().map(|(i, p)| (p.key.clone(), i)).collect();
        let mut by_time: Vec<(f64, usize)> = poses.iter().enumerate().map(|(i, p)| (p.seconds, i)).collect();
        by_time.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        PoseIndex { poses, by_key, by_time }
    }

    pub fn len(&self) -> usize {
        self.poses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.poses.is_empty()
    }

    /// The pose of frame `timestamp` (as in its file name): exact key, else the nearest pose
    /// strictly within [`POSE_TOLERANCE_S`] (ties: the earlier line).
    pub fn lookup(&self, timestamp: &str, seconds: f64) -> Option<(&TrajPose, PoseMatch)> {
        if let Some(&i) = self.by_key.get(timestamp) {
            return Some((&self.poses[i], PoseMatch::Exact));
        }
        let at = self.by_time.partition_point(|(t, _)| *t < seconds);
        let neighbours = self.by_time[at.saturating_sub(1)..(at + 1).min(self.by_time.len())].iter();
        neighbours
            .map(|&(t, i)| ((t - seconds).abs(), i))
            .filter(|(d, _)| *d < POSE_TOLERANCE_S)
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, i)| (&self.poses[i], PoseMatch::Near))
    }
}

/// Largest plausible extent of an annotated box (a room-sized object), in metres.
pub const MAX_BOX_SIZE_M: f64 = 50.0;

/// A `.pincam`: image size and intrinsics.
#[derive(Debug, Clone, PartialEq)]
pub struct Pincam {
    pub width: u32,
    pub height: u32,
    pub k: Mat3,
}

/// Parses `width height fx fy cx cy` (floats; the size is rounded).
pub fn parse_pincam(text: &str, file: &Path) -> Result<Pincam, ArkitError> {
    let numbers: Vec<f64> = text
        .split_whitespace()
        .map(|t| {
            t.parse::<f64>()
                .map_err(|e| ArkitError::new(file, "whole file", format!("not a number {t:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if numbers.len() != 6 || numbers.iter().any(|x| !x.is_finite()) {
        return Err(ArkitError::new(
            file,
            "whole file",
            format!("expected 6 finite numbers (width height fx fy cx cy), got {numbers:?}"),
        ));
    }
    let (w, h) = (numbers[0].round(), numbers[1].round());
    if !(w >= 1.0 && h >= 1.0 && w <= 65535.0 && h <= 65535.0) {
        return Err(ArkitError::new(
            file,
            "whole file",
            format!("implausible image size in {numbers:?}"),
        ));
    }
    let k = geometry::intrinsics(numbers[2], numbers[3], numbers[4], numbers[5]);
    geometry::validate_intrinsics(&k, w as u32, h as u32)
        .map_err(|e| ArkitError::new(file, "whole file", e))?;
    Ok(Pincam {
        width: w as u32,
        height: h as u32,
        k,
    })
}

/// The `.pincam` of a frame: `<video>_<ts>.pincam`, else `ts − 0.001`, else `ts + 0.001`.
pub fn find_pincam(intrinsics_dir: &Path, video_id: &str, timestamp: &str, seconds: f64) -> Option<PathBuf> {
    PINCAM_OFFSETS_S.iter().find_map(|&offset| {
        let ts = if offset == 0.0 {
            timestamp.to_string()
        } else {
            format!("{:.3}", seconds + offset)
        };
        let path = intrinsics_dir.join(format!("{video_id}_{ts}.pincam"));
        path.is_file().then_some(path)
    })
}

// ---------------------------------------------------------------------------------------------
// Annotation

/// An oriented box (`segments.obbAligned`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Obb {
    pub centroid: [f64; 3],
    /// Full edge lengths.
    pub axes_lengths: [f64; 3],
    /// Row-major 3×3 whose rows are the box axes in world coordinates.
    pub normalized_axes: [f64; 9],
}

impl Obb {
    /// Box axis `i` in world coordinates (row `i` of `normalizedAxes`).
    pub fn axis(&self, i: usize) -> Vec3 {
        [
            self.normalized_axes[3 * i],
            self.normalized_axes[3 * i + 1],
            self.normalized_axes[3 * i + 2],
        ]
    }

    /// The 8 corners as the official `compute_box_3d` builds them, `R_annotᵀ·local + centroid`:
    /// the columns of `R_annotᵀ` are the rows of `normalizedAxes`.
    pub fn corners_world(&self) -> [Vec3; 8] {
        box_corners(
            &Transform::from_columns(self.axis(0), self.axis(1), self.axis(2), self.centroid),
            self.axes_lengths,
        )
    }

    /// Finite values, positive lengths, orthonormal axes.
    pub fn check(&self) -> Result<(), String> {
        let all = self
            .centroid
            .iter()
            .chain(&self.axes_lengths)
            .chain(&self.normalized_axes);
        if all.clone().any(|x| !x.is_finite()) {
            return Err("box has a non-finite value".into());
        }
        if self.axes_lengths.iter().any(|&l| l <= 0.0 || l > MAX_BOX_SIZE_M) {
            return Err(format!(
                "axesLengths {:?} must be positive and at most {MAX_BOX_SIZE_M} m",
                self.axes_lengths
            ));
        }
        if self.centroid.iter().any(|x| x.abs() > geometry::MAX_COORDINATE_M) {
            return Err(format!(
                "centroid {:?} is beyond {} m: not a plausible position",
                self.centroid,
                geometry::MAX_COORDINATE_M
            ));
        }
        if let Some((i, j, d)) = non_orthonormal_pair(&[self.axis(0), self.axis(1), self.axis(2)], AXES_TOLERANCE) {
            return Err(format!(
                "normalizedAxes rows are not orthonormal: row {i} · row {j} = {d:.4}"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSegments {
    obb_aligned: Option<Obb>,
}

#[derive(Debug, Deserialize)]
struct RawBox {
    uid: Option<String>,
    label: Option<String>,
    segments: Option<RawSegments>,
}

#[derive(Debug, Deserialize)]
struct RawAnnotation {
    #[serde(default)]
    skipped: bool,
    #[serde(default)]
    data: Vec<serde_json::Value>,
}

/// A usable annotated box.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotatedBox {
    pub uid: String,
    /// The label after the official normalisation (`' '`, `'-'`, `'/'` → `_`).
    pub label: String,
    pub category: ObjectCategory,
    pub attributes: BTreeMap<String, String>,
    pub obb: Obb,
}

/// A parsed `<video>_3dod_annotation.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub skipped: bool,
    pub boxes: Vec<AnnotatedBox>,
}

/// The RoomPlan category (and refining attribute) of an ARKitScenes label.
pub fn roomplan_kind(label: &str) -> Option<(ObjectCategory, Option<(&'static str, &'static str)>)> {
    use ObjectCategory::*;
    Some(match label {
        "cabinet" => (Storage, Some(("StorageType", "cabinet"))),
        "shelf" => (Storage, Some(("StorageType", "shelf"))),
        "tv_monitor" => (Television, None),
        "washer" => (WasherDryer, None),
        "stool" => (Chair, Some(("ChairType", "stool"))),
        "refrigerator" => (Refrigerator, None),
        "stove" => (Stove, None),
        "bed" => (Bed, None),
        "sink" => (Sink, None),
        "toilet" => (Toilet, None),
        "bathtub" => (Bathtub, None),
        "oven" => (Oven, None),
        "dishwasher" => (Dishwasher, None),
        "fireplace" => (Fireplace, None),
        "chair" => (Chair, None),
        "table" => (Table, None),
        "sofa" => (Sofa, None),
        _ => return None,
    })
}

/// The official label normalisation (`utils/taxonomy.py`).
pub fn normalize_label(label: &str) -> String {
    label.replace([' ', '-', '/'], "_")
}

/// Parses an annotation. A file that is not JSON fails whole; a box without a usable label,
/// uid or `obbAligned` is an error of its own (record = its uid or `data[i]`).
pub fn parse_annotation(bytes: &[u8], file: &Path) -> Result<(Annotation, Vec<ArkitError>), ArkitError> {
    let raw: RawAnnotation = serde_json::from_slice(bytes)
        .map_err(|e| ArkitError::new(file, "whole file", format!("not an ARKitScenes annotation: {e}")))?;
    let mut boxes = Vec::new();
    let mut errors = Vec::new();
    for (i, value) in raw.data.into_iter().enumerate() {
        let fallback = format!("data[{i}]");
        let parsed: RawBox = match serde_json::from_value(value) {
            Ok(b) => b,
            Err(e) => {
                errors.push(ArkitError::new(file, fallback, format!("not an annotated box: {e}")));
                continue;
            }
        };
        let record = parsed.uid.clone().unwrap_or(fallback);
        let mut bad = |reason: String| errors.push(ArkitError::new(file, &record, reason));
        let Some(uid) = parsed.uid else {
            bad("box has no uid".into());
            continue;
        };
        let label = normalize_label(parsed.label.as_deref().unwrap_or(""));
        let Some((category, refinement)) = roomplan_kind(&label) else {
            bad(format!("label {label:?} is not one of the 17 ARKitScenes classes"));
            continue;
        };
        let Some(obb) = parsed.segments.and_then(|s| s.obb_aligned) else {
            bad("box has no segments.obbAligned".into());
            continue;
        };
        if let Err(reason) = obb.check() {
            bad(reason);
            continue;
        }
        let attributes = refinement
            .map(|(k, v)| BTreeMap::from([(k.to_string(), v.to_string())]))
            .unwrap_or_default();
        boxes.push(AnnotatedBox {
            uid,
            label,
            category,
            attributes,
            obb,
        });
    }
    Ok((
        Annotation {
            skipped: raw.skipped,
            boxes,
        },
        errors,
    ))
}

/// The box as a RoomPlan object in the reference frame (conventions in the module docs).
pub fn box_to_object(b: &AnnotatedBox, reference: &ReferenceFrame) -> ObjectSpec {
    let axes: [Vec3; 3] = std::array::from_fn(|i| reference.direction_to_reference(&b.obb.axis(i)));
    let lengths = b.obb.axes_lengths;
    let up_index = (0..3).fold(0, |best, i| {
        if axes[i][1].abs() > axes[best][1].abs() {
            i
        } else {
            best
        }
    });
    let up = axes[up_index].map(|v| v * axes[up_index][1].signum());
    let others: Vec<usize> = (0..3).filter(|&i| i != up_index).collect();
    let (w, d) = if lengths[others[1]] > lengths[others[0]] {
        (others[1], others[0])
    } else {
        (others[0], others[1])
    };
    let a = axes[w];
    let flip = if a[0].abs() > 1e-9 { a[0] < 0.0 } else { a[2] > 0.0 };
    let x = if flip { a.map(|v| -v) } else { a };
    let z = cross(&x, &up);
    let centre = reference.point_to_reference(&b.obb.centroid);
    ObjectSpec {
        category: b.category,
        attributes: b.attributes.clone(),
        dimensions: [lengths[w], lengths[up_index], lengths[d]],
        transform: Transform::from_columns(x, up, z, centre),
    }
}

// ---------------------------------------------------------------------------------------------
// One video → one scene row and its samples

/// Everything that shapes a video's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ArkitOptions {
    pub views: ViewOptions,
    pub synthesis: SynthesisConfig,
}

/// A frame that has a pose, intrinsics and depth.
#[derive(Debug, Clone)]
struct Candidate {
    timestamp: String,
    color: PathBuf,
    depth: PathBuf,
    pincam: PathBuf,
    /// Camera-to-world of the sensor camera (image as stored).
    c2w: Rigid,
}

/// A selected frame, stored upright at the configured size.
struct LoadedView {
    timestamp: String,
    jpeg: Vec<u8>,
    width: u32,
    height: u32,
    k: Mat3,
    /// Camera-to-world of the stored (upright) image.
    c2w: Rigid,
    depth: DepthStats,
}

fn decode_depth(c: &Candidate) -> Result<(Vec<u16>, u32, u32), ArkitError> {
    let record = format!("frame {}", c.timestamp);
    let bytes = std::fs::read(&c.depth).map_err(|e| ArkitError::new(&c.depth, &record, e.to_string()))?;
    let depth = crate::scannet::decode_depth_png(&bytes, 1000.0, &c.depth, &record)
        .map_err(|e| ArkitError::new(e.file(), e.record(), e.reason()))?;
    Ok((depth.data, depth.width, depth.height))
}

fn read_pincam(c: &Candidate) -> Result<Pincam, ArkitError> {
    let text =
        std::fs::read_to_string(&c.pincam).map_err(|e| ArkitError::new(&c.pincam, "whole file", e.to_string()))?;
    parse_pincam(&text, &c.pincam)
}

/// The voxels the frame's depth sees (back-projected upright, so that a portrait capture and its
/// upright twin sample the same pixels), and its depth statistics.
fn depth_view(
    c: &Candidate,
    rotation: ImageRotation,
    opts: &ViewOptions,
) -> Result<(Vec<[i32; 3]>, DepthStats), ArkitError> {
    let (values, width, height) = decode_depth(c)?;
    let pincam = read_pincam(c)?;
    let record = format!("frame {}", c.timestamp);
    let err = |e: String| ArkitError::new(&c.depth, &record, e);
    if (width, height) != (pincam.width, pincam.height) {
        return Err(err(format!(
            "depth is {width}×{height} but the intrinsics are for {}×{}",
            pincam.width, pincam.height
        )));
    }
    let stats = depth_histogram(
        &DepthMap::new(width, height, &values, DEPTH_METRES_PER_UNIT).map_err(|e| err(e.to_string()))?,
        &opts.depth_bins,
    );
    let ViewSelection::Coverage(params) = &opts.selection else {
        return Ok((Vec::new(), stats));
    };
    // The same op as the colour image: pixels, K (K' = P·K·Cᵀ) and pose (c2w·Cᵀ) together.
    let map = ImageOp::Rotate(rotation)
        .pixel_map(width, height)
        .map_err(|e| err(e.to_string()))?;
    let raster = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(width, height, values)
        .ok_or_else(|| err("depth raster size does not match its header".into()))?;
    let turned = match rotation {
        ImageRotation::None => raster,
        ImageRotation::Clockwise90 => image::imageops::rotate90(&raster),
        ImageRotation::CounterClockwise90 => image::imageops::rotate270(&raster),
        ImageRotation::Half => image::imageops::rotate180(&raster),
    };
    let k = mat3_mul(&mat3_mul(&map.pixel, &pincam.k), &mat3_transpose(&map.camera));
    let c2w = c.c2w.compose(&Rigid {
        r: mat3_transpose(&map.camera),
        t: [0.0; 3],
    });
    let upright =
        DepthMap::new(map.width, map.height, turned.as_raw(), DEPTH_METRES_PER_UNIT).map_err(|e| err(e.to_string()))?;
    Ok((visible_voxels(&upright, &k, &c2w, params), stats))
}

/// Decodes, turns upright and resizes a frame; its K and pose follow the image.
fn load_view(
    c: &Candidate,
    rotation: ImageRotation,
    depth: DepthStats,
    opts: &ViewOptions,
) -> Result<LoadedView, ArkitError> {
    let record = format!("frame {}", c.timestamp);
    let bytes = std::fs::read(&c.color).map_err(|e| ArkitError::new(&c.color, &record, e.to_string()))?;
    let rgb = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| ArkitError::new(&c.color, &record, format!("cannot decode PNG colour: {e}")))?
        .into_rgb8();
    let pincam = read_pincam(c)?;
    if (rgb.width(), rgb.height()) != (pincam.width, pincam.height) {
        return Err(ArkitError::new(
            &c.color,
            record,
            format!(
                "image is {}×{} but the intrinsics are for {}×{}",
                rgb.width(),
                rgb.height(),
                pincam.width,
                pincam.height
            ),
        ));
    }
    let upright = CameraImage::new(rgb, pincam.k)
        .apply(&ImageOp::Rotate(rotation))
        .map_err(|e| ArkitError::new(&c.color, &record, e.to_string()))?;
    let plan = opts.size_rule.plan(upright.image.width(), upright.image.height());
    let image = upright
        .apply_all(&plan)
        .map_err(|e| ArkitError::new(&c.color, &record, e.to_string()))?;
    let jpeg =
        encode_jpeg(&image.image, opts.jpeg_quality).map_err(|e| ArkitError::new(&c.color, &record, e.to_string()))?;
    Ok(LoadedView {
        timestamp: c.timestamp.clone(),
        jpeg,
        width: image.image.width(),
        height: image.image.height(),
        k: image.k,
        c2w: image.adjust_pose(&c.c2w),
        depth,
    })
}

/// Selects and loads the views; a frame that fails is rejected and the selection redone
/// without it, so the result is the selection over the readable frames. Depth and views are read
/// in parallel (on the pool this runs on), but the errors are those, and in the order, that
/// reading one frame at a time (picks in order, stopping at the first failure) gives.
fn select_views(
    pool: Vec<Candidate>,
    rotation: ImageRotation,
    opts: &ViewOptions,
    errors: &mut Vec<ArkitError>,
) -> Vec<LoadedView> {
    // Depth of every candidate (coverage needs it for all of them; uniform only for the picks,
    // but reading it up front finds unreadable depth whichever frames are picked).
    let candidates_of_interest = match &opts.selection {
        ViewSelection::Coverage(params) => select_uniform(pool.len(), params.max_candidates),
        ViewSelection::Uniform => (0..pool.len()).collect(),
    };
    let depths: Vec<_> = candidates_of_interest
        .par_iter()
        .map(|&i| depth_view(&pool[i], rotation, opts))
        .collect();
    // (position in `pool`, candidate, voxels, depth statistics) of the frames whose depth is usable.
    let mut depth_ok = Vec::new();
    for (i, result) in candidates_of_interest.into_iter().zip(depths) {
        match result {
            Ok((voxels, stats)) => depth_ok.push((i, &pool[i], voxels, stats)),
            Err(e) => errors.push(e),
        }
    }
    let mut tried: BTreeMap<usize, Result<LoadedView, ArkitError>> = BTreeMap::new();
    loop {
        let picks = match &opts.selection {
            ViewSelection::Coverage(_) => {
                let voxels: Vec<Vec<[i32; 3]>> = depth_ok.iter().map(|(_, _, v, _)| v.clone()).collect();
                select_coverage(&voxels, opts.num_views)
            }
            ViewSelection::Uniform => select_uniform(depth_ok.len(), opts.num_views),
        };
        let missing: Vec<_> = picks.iter().map(|&k| &depth_ok[k]).filter(|(i, ..)| !tried.contains_key(i)).collect();
        let loaded: Vec<_> = missing
            .into_par_iter()
            .map(|(i, c, _, stats)| (*i, load_view(c, rotation, stats.clone(), opts)))
            .collect();
        tried.extend(loaded);
        match picks.iter().position(|&k| tried[&depth_ok[k].0].is_err()) {
            Some(p) => {
                let k = picks[p];
                if let Some(Err(e)) = tried.remove(&depth_ok[k].0) {
                    errors.push(e);
                }
                depth_ok.remove(k);
            }
            None => {
                return picks
                    .iter()
                    .filter_map(|&k| tried.remove(&depth_ok[k].0).and_then(|r| r.ok()))
                    .collect()
            }
        }
    }
}

/// The output of one video: a scene row with its views and the synthesized samples, or rejects
/// only when the video cannot be used (skipped annotation, no boxes, no poses, no readable frame).
pub fn prepare_video(root: &InputRoot, video: &Video, meta: Option<&VideoMeta>, opts: &ArkitOptions) -> SceneOutput {
    let mut out = SceneOutput::default();
    let mut errors: Vec<ArkitError> = Vec::new();
    let result = prepare_video_inner(root, video, meta, opts, &mut errors, &mut out.raw_inputs);
    match result {
        Ok((scene, samples)) => {
            out.scene = Some(scene);
            out.samples = samples;
        }
        Err(fatal) => errors.push(fatal),
    }
    out.rejects = errors.iter().map(|e| e.to_reject(root)).collect();
    out
}

fn read_input(root: &InputRoot, path: &Path, raw_inputs: &mut Vec<RawInput>) -> Result<Vec<u8>, ArkitError> {
    let bytes = std::fs::read(path).map_err(|e| ArkitError::new(path, "whole file", e.to_string()))?;
    raw_inputs.push(raw_input_of_bytes(&root.label(path), &bytes));
    Ok(bytes)
}

fn prepare_video_inner(
    root: &InputRoot,
    video: &Video,
    meta: Option<&VideoMeta>,
    opts: &ArkitOptions,
    errors: &mut Vec<ArkitError>,
    raw_inputs: &mut Vec<RawInput>,
) -> Result<(SceneRecord, Vec<SampleRecord>), ArkitError> {
    let vid = &video.video_id;
    let unusable =
        |file: &Path, reason: String| ArkitError::new(file, "whole file", format!("video {vid} not used: {reason}"));

    // Annotation: skipped or box-less videos have nothing to ask about.
    let ann_path = video.annotation_path();
    let bytes = read_input(root, &ann_path, raw_inputs).map_err(|e| unusable(&ann_path, e.reason))?;
    let (annotation, box_errors) = parse_annotation(&bytes, &ann_path).map_err(|e| unusable(&ann_path, e.reason))?;
    errors.extend(box_errors);
    if annotation.skipped {
        return Err(unusable(&ann_path, "the annotation is marked skipped".into()));
    }
    if annotation.boxes.is_empty() {
        return Err(unusable(&ann_path, "the annotation has no usable boxes".into()));
    }

    // Poses.
    let traj_path = video.traj_path();
    let traj = read_input(root, &traj_path, raw_inputs).map_err(|e| unusable(&traj_path, e.reason))?;
    let (poses, traj_errors) = parse_traj(&String::from_utf8_lossy(&traj), &traj_path);
    errors.extend(traj_errors);
    if poses.is_empty() {
        return Err(unusable(&traj_path, "no poses".into()));
    }
    let poses = PoseIndex::new(poses);

    // Frames.
    let frames_dir = video.frames_dir();
    let color_dir = frames_dir.join("lowres_wide");
    let names = list_dir(&color_dir).map_err(|e| unusable(&color_dir, e))?;
    for sub in ["lowres_wide", "lowres_depth", "lowres_wide_intrinsics"] {
        let dir = frames_dir.join(sub);
        if dir.is_dir() {
            let listing = RawInput::listing(root.name, &root.dir, &dir).map_err(|e| unusable(&dir, e.to_string()))?;
            raw_inputs.push(listing);
        }
    }
    let mut frames: Vec<(String, f64, String)> = Vec::new();
    for name in names {
        match parse_frame_name(&name, vid) {
            Some((ts, seconds)) => frames.push((ts, seconds, name)),
            None => errors.push(ArkitError::new(
                &color_dir.join(&name),
                "whole file",
                format!("file name is not {vid}_<seconds>.png"),
            )),
        }
    }
    frames.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let (mut exact, mut near, mut without_pose) = (0usize, 0usize, 0usize);
    let mut pool = Vec::new();
    for (ts, seconds, name) in &frames {
        let record = format!("frame {ts}");
        let Some((pose, how)) = poses.lookup(ts, *seconds) else {
            without_pose += 1;
            continue;
        };
        match how {
            PoseMatch::Exact => exact += 1,
            PoseMatch::Near => near += 1,
        }
        let Some(pincam) = find_pincam(&frames_dir.join("lowres_wide_intrinsics"), vid, ts, *seconds) else {
            errors.push(ArkitError::new(
                &color_dir.join(name),
                &record,
                "no .pincam within ±0.001 s in lowres_wide_intrinsics",
            ));
            continue;
        };
        let depth = frames_dir.join("lowres_depth").join(name);
        if !depth.is_file() {
            errors.push(ArkitError::new(&depth, &record, "no lowres_depth PNG for this frame"));
            continue;
        }
        pool.push(Candidate {
            timestamp: ts.clone(),
            color: color_dir.join(name),
            depth,
            pincam,
            c2w: pose.c2w,
        });
    }
    if pool.is_empty() {
        return Err(unusable(
            &color_dir,
            format!("none of its {} frames has a pose, intrinsics and depth", frames.len()),
        ));
    }
    let camera_centres: Vec<Vec3> = pool.iter().map(|c| c.c2w.t).collect();

    // Orientation.
    let sky = meta.map(|m| m.sky_direction.as_str());
    let rotation = match sky.and_then(ImageRotation::from_arkit_sky_direction) {
        Some(r) => r,
        None => {
            let metadata = video.dataset_dir.join("metadata.csv");
            let why = match sky {
                Some(s) => format!("sky_direction {s:?} is not Up, Down, Left or Right"),
                None => "no metadata.csv row for this video".into(),
            };
            errors.push(ArkitError::new(
                &metadata,
                vid,
                format!("{why}; images are kept as stored"),
            ));
            ImageRotation::None
        }
    };

    let views = select_views(pool, rotation, &opts.views, errors);
    let Some(first) = views.first() else {
        return Err(unusable(&color_dir, "no frame could be read".into()));
    };
    let reference = ReferenceFrame::from_camera(&first.c2w);
    let reference_world_pose = first.c2w.to_row_major();
    let view_records = views
        .iter()
        .map(|v| ViewRecord {
            frame_id: v.timestamp.clone(),
            image: v.jpeg.clone(),
            encoding: ENCODING_JPEG.to_string(),
            width: v.width,
            height: v.height,
            geometry: Some(Geometry::new(
                &reference.camera_to_reference(&v.c2w),
                &v.k,
                v.depth.clone(),
            )),
        })
        .collect();
    let scene = SceneRecord {
        dataset: DATASET.to_string(),
        scene_id: vid.clone(),
        views: view_records,
        reference_world_pose: Some(reference_world_pose),
        axis_alignment: Rigid::IDENTITY.to_row_major(),
        axis_alignment_from_metadata: false,
    };

    // Objects and instructions.
    let objects: Vec<RoomObject> = annotation
        .boxes
        .iter()
        .map(|b| RoomObject {
            source_id: b.uid.clone(),
            spec: box_to_object(b, &reference),
        })
        .collect();
    let room = Room {
        floor_region: known_floor(&objects, camera_centres.iter().map(|c| reference.point_to_reference(c))),
        objects,
    };
    let instructions = synthesis::synthesize(&room, vid, &opts.synthesis);
    let annotation_file = video.annotation_path();
    let samples = instructions
        .into_iter()
        .enumerate()
        .filter_map(|(i, ins)| {
            let sample_id = format!("{vid}-{i:03}");
            let action_json = ins.action.canonical_json();
            // Every synthesized action passes the schema validator before it is written.
            if let Err(e) = crate::actions::validate_text(&action_json) {
                errors.push(ArkitError::new(
                    &annotation_file,
                    &sample_id,
                    format!("the action synthesized from this annotation is not valid ({e}): {action_json}"),
                ));
                return None;
            }
            let mut s = SampleRecord::new(sample_id, TASK, video.split(), vid, ins.text);
            s.action_json = Some(action_json);
            let referred: Vec<&str> = ins
                .objects
                .iter()
                .map(|&k| room.objects[k].source_id.as_str())
                .collect();
            s.source_json = serde_json::json!({
                "action": ins.action.name(),
                "fold": video.fold,
                "sky_direction": sky,
                "visit_id": meta.and_then(|m| m.visit_id.clone()),
                "object_uids": referred,
                "frames": frames.len(),
                "frames_pose_exact": exact,
                "frames_pose_near": near,
                "frames_without_pose": without_pose,
            })
            .to_string();
            Some(s)
        })
        .collect();
    Ok((scene, samples))
}

/// Floor known to be inside the room: the convex hull of the object footprints and the camera
/// positions (reference frame).
pub fn known_floor(objects: &[RoomObject], cameras_ref: impl Iterator<Item = Vec3>) -> Vec<[f64; 2]> {
    let corners = objects.iter().flat_map(|o| o.spec.corners()).map(|c| [c[0], c[2]]);
    floor_region(corners.chain(cameras_ref.map(|c| [c[0], c[2]])))
}

/// File names in a folder, sorted.
fn list_dir(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        if entry.path().is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}
