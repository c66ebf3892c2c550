//! Readable, machine-stable dumps of records (`tools shard inspect`, insta snapshots).

use std::fmt::Write as _;

use super::records::{SampleRecord, SceneRecord};

/// A float rounded to 4 decimals, without a sign on zero, so dumps are stable across machines.
pub fn fmt_float(x: f64) -> String {
    let s = format!("{x:.4}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

fn fmt_floats<T: Copy + Into<f64>>(values: &[T]) -> String {
    let parts: Vec<String> = values.iter().map(|&v| fmt_float(v.into())).collect();
    format!("[{}]", parts.join(", "))
}

/// A multi-line, human-readable description of a scene (images by size and sha256 prefix).
pub fn describe_scene(scene: &SceneRecord) -> String {
    let mut s = String::new();
    let source = if scene.axis_alignment_from_metadata {
        "metadata"
    } else {
        "identity (no metadata)"
    };
    let _ = writeln!(
        s,
        "scene {} / {}: {} views, axis alignment from {source}",
        scene.dataset,
        scene.scene_id,
        scene.views.len()
    );
    let _ = writeln!(s, "  axis_alignment {}", fmt_floats(&scene.axis_alignment));
    match &scene.reference_world_pose {
        Some(p) => {
            let _ = writeln!(s, "  reference_world_pose {}", fmt_floats(p));
        }
        None => {
            let _ = writeln!(s, "  reference_world_pose null");
        }
    }
    for (i, v) in scene.views.iter().enumerate() {
        let sha = crate::manifest::sha256_hex(&v.image);
        let _ = writeln!(
            s,
            "  view {i} frame {}: {} {}x{}, {} bytes, sha256 {}",
            v.frame_id,
            v.encoding,
            v.width,
            v.height,
            v.image.len(),
            &sha[..16]
        );
        match &v.geometry {
            Some(g) => {
                let _ = writeln!(s, "    R {}", fmt_floats(&g.r));
                let _ = writeln!(s, "    t {}", fmt_floats(&g.t));
                let _ = writeln!(s, "    K {}", fmt_floats(&g.k));
                let _ = writeln!(
                    s,
                    "    depth_hist {} valid {}",
                    fmt_floats(&g.depth_hist),
                    fmt_float(g.valid_depth_fraction.into())
                );
            }
            None => {
                let _ = writeln!(s, "    geometry null");
            }
        }
    }
    s
}

/// A multi-line, human-readable description of a sample.
pub fn describe_sample(sample: &SampleRecord) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "sample {} ({} / {}) scene {}",
        sample.sample_id, sample.task, sample.split, sample.scene_id
    );
    let _ = writeln!(s, "  question {:?}", sample.question);
    if let Some(situation) = &sample.situation {
        let _ = writeln!(s, "  situation {situation:?}");
    }
    let _ = writeln!(s, "  answers {:?}", sample.answers);
    if let Some(action) = &sample.action_json {
        let _ = writeln!(s, "  action {action}");
    }
    if let Some(ids) = &sample.object_ids {
        let _ = writeln!(s, "  object_ids {ids:?}");
    }
    if let Some(names) = &sample.object_names {
        let _ = writeln!(s, "  object_names {names:?}");
    }
    if let Some(a) = &sample.agent {
        let _ = writeln!(
            s,
            "  agent raw {} {} ref {} heading {}",
            fmt_floats(&a.position_raw),
            fmt_floats(&a.rotation_raw_xyzw),
            fmt_floats(&a.position_ref),
            fmt_floats(&a.heading_ref)
        );
    }
    let _ = writeln!(s, "  source {}", sample.source_json);
    s
}
