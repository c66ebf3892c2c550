//! The Rust records of one row each ([`SceneRecord`], [`SampleRecord`] and their parts) and the
//! last-gate checks ([`SceneRecord::check`], [`SampleRecord::check`]) every record passes before it
//! is written.

use crate::geometry::{mat3_to_row_major_f32, DepthStats, Mat3, Rigid, MAX_COORDINATE_M};

/// `encoding` of JPEG view images (what the prep binaries store).
pub const ENCODING_JPEG: &str = "jpeg";
/// `encoding` of PNG view images (e.g. an SQA3D bird's-eye view kept as given).
pub const ENCODING_PNG: &str = "png";

/// A view's geometry; see [`geometry_fields`].
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Camera → reference rotation, row-major.
    pub r: [f32; 9],
    pub t: [f32; 3],
    /// Intrinsics of the stored image, row-major.
    pub k: [f32; 9],
    pub depth_hist: Vec<f32>,
    pub valid_depth_fraction: f32,
}

impl Geometry {
    /// From the camera→reference transform, the stored image's K and the view's depth statistics.
    pub fn new(cam_to_ref: &Rigid, k: &Mat3, depth: DepthStats) -> Geometry {
        Geometry {
            r: mat3_to_row_major_f32(&cam_to_ref.r),
            t: cam_to_ref.t.map(|x| x as f32),
            k: mat3_to_row_major_f32(k),
            depth_hist: depth.histogram,
            valid_depth_fraction: depth.valid_fraction,
        }
    }
}

impl Geometry {
    /// Every number finite and plausible: `R` a rotation (orthonormal, det +1, within f32
    /// storage), `t` within [`MAX_COORDINATE_M`], `K` a pinhole matrix for a `width`×`height`
    /// image ([`validate_intrinsics`]), the depth histogram fractions in [0, 1] summing to 1, or
    /// all 0 exactly when no depth pixel is valid.
    pub fn check(&self, width: u32, height: u32) -> Result<(), String> {
        let r = [
            [self.r[0] as f64, self.r[1] as f64, self.r[2] as f64],
            [self.r[3] as f64, self.r[4] as f64, self.r[5] as f64],
            [self.r[6] as f64, self.r[7] as f64, self.r[8] as f64],
        ];
        let t = self.t.map(|x| x as f64);
        let m = [
            [r[0][0], r[0][1], r[0][2], t[0]],
            [r[1][0], r[1][1], r[1][2], t[1]],
            [r[2][0], r[2][1], r[2][2], t[2]],
            [0.0, 0.0, 0.0, 1.0],
        ];
        crate::geometry::validate_pose(&m).map_err(|e| format!("R, t: {e}"))?;
        let k = [
            [self.k[0] as f64, self.k[1] as f64, self.k[2] as f64],
            [self.k[3] as f64, self.k[4] as f64, self.k[5] as f64],
            [self.k[6] as f64, self.k[7] as f64, self.k[8] as f64],
        ];
        crate::geometry::validate_intrinsics(&k, width, height).map_err(|e| format!("K: {e}"))?;
        let fraction = self.valid_depth_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!(
                "valid_depth_fraction is {fraction}, expected a fraction in [0, 1]"
            ));
        }
        if let Some(bad) = self.depth_hist.iter().find(|x| !(0.0..=1.0).contains(*x)) {
            return Err(format!(
                "depth_hist holds {bad}, expected fractions in [0, 1]"
            ));
        }
        let sum: f32 = self.depth_hist.iter().sum();
        let expected = if fraction > 0.0 { 1.0 } else { 0.0 };
        if (sum - expected).abs() > 1e-3 {
            return Err(format!(
                "depth_hist sums to {sum}, expected {expected} (valid depth fraction {fraction})"
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ViewRecord {
    pub frame_id: String,
    /// Encoded image bytes ([`ENCODING_JPEG`] or [`ENCODING_PNG`]).
    pub image: Vec<u8>,
    pub encoding: String,
    pub width: u32,
    pub height: u32,
    pub geometry: Option<Geometry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SceneRecord {
    pub dataset: String,
    pub scene_id: String,
    /// In selection order; the first view with geometry anchors the reference frame.
    pub views: Vec<ViewRecord>,
    /// Raw world camera-to-world pose of the reference view, row-major 4×4.
    pub reference_world_pose: Option<[f64; 16]>,
    /// Raw world → axis-aligned world, row-major 4×4.
    pub axis_alignment: [f64; 16],
    pub axis_alignment_from_metadata: bool,
}

impl SceneRecord {
    /// Checks every number of the scene before it is written: each view's size and geometry
    /// ([`Geometry::check`]), the reference pose and the axis alignment rigid with plausible
    /// translations. The error names the view (index and frame id) and the field.
    pub fn check(&self) -> Result<(), String> {
        for (i, view) in self.views.iter().enumerate() {
            let at = |e: String| format!("view {i} (frame {}): {e}", view.frame_id);
            if view.width == 0 || view.height == 0 {
                return Err(at(format!(
                    "image size {}x{} is empty",
                    view.width, view.height
                )));
            }
            if let Some(g) = &view.geometry {
                g.check(view.width, view.height).map_err(at)?;
            }
        }
        let rigid = |name: &str, v: &[f64; 16]| -> Result<(), String> {
            let m = crate::geometry::mat4_from_row_major(v);
            let pose = crate::geometry::validate_pose(&m).map_err(|e| format!("{name}: {e}"))?;
            crate::geometry::check_translation(&pose.t).map_err(|e| format!("{name}: {e}"))
        };
        if let Some(pose) = &self.reference_world_pose {
            rigid("reference_world_pose", pose)?;
        }
        rigid("axis_alignment", &self.axis_alignment)
    }
}

/// An SQA3D-style agent situation; see [`agent_fields`].
#[derive(Clone, Debug, PartialEq)]
pub struct AgentPose {
    pub position_raw: [f64; 3],
    pub rotation_raw_xyzw: [f64; 4],
    pub position_ref: [f64; 3],
    pub heading_ref: [f64; 3],
}

#[derive(Clone, Debug, PartialEq)]
pub struct SampleRecord {
    pub sample_id: String,
    /// `scanqa`, `sqa3d`, `roomplan_action`, ...
    pub task: String,
    pub split: String,
    pub scene_id: String,
    pub question: String,
    pub situation: Option<String>,
    /// Empty for test splits without answers.
    pub answers: Vec<String>,
    pub action_json: Option<String>,
    pub object_ids: Option<Vec<i64>>,
    pub object_names: Option<Vec<String>>,
    pub agent: Option<AgentPose>,
    /// A JSON object; rewritten with sorted keys on write.
    pub source_json: String,
}

impl SampleRecord {
    /// Checks the sample's numbers before it is written: the agent's position and rotation finite
    /// (positions within [`MAX_COORDINATE_M`]), its heading a unit vector, a target action that is
    /// JSON. (prep-arkit validates each action against the RoomPlan schema where it is made.)
    pub fn check(&self) -> Result<(), String> {
        if let Some(agent) = &self.agent {
            let finite = |name: &str, v: &[f64]| match v
                .iter()
                .find(|x| !x.is_finite() || x.abs() > MAX_COORDINATE_M)
            {
                Some(x) => Err(format!(
                    "agent {name} holds {x}, expected finite numbers within {MAX_COORDINATE_M}"
                )),
                None => Ok(()),
            };
            finite("position_raw", &agent.position_raw)?;
            finite("rotation_raw_xyzw", &agent.rotation_raw_xyzw)?;
            finite("position_ref", &agent.position_ref)?;
            finite("heading_ref", &agent.heading_ref)?;
            let length = crate::geometry::norm(&agent.heading_ref);
            if (length - 1.0).abs() > 1e-6 {
                return Err(format!(
                    "agent heading_ref has length {length}, expected a unit vector"
                ));
            }
        }
        if let Some(action) = &self.action_json {
            serde_json::from_str::<serde_json::Value>(action)
                .map_err(|e| format!("action_json is not JSON: {e}"))?;
        }
        Ok(())
    }

    /// A sample with the required fields and every optional one empty.
    pub fn new(
        sample_id: impl Into<String>,
        task: impl Into<String>,
        split: impl Into<String>,
        scene_id: impl Into<String>,
        question: impl Into<String>,
    ) -> SampleRecord {
        SampleRecord {
            sample_id: sample_id.into(),
            task: task.into(),
            split: split.into(),
            scene_id: scene_id.into(),
            question: question.into(),
            situation: None,
            answers: vec![],
            action_json: None,
            object_ids: None,
            object_names: None,
            agent: None,
            source_json: "{}".into(),
        }
    }
}
