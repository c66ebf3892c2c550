//! ARKitScenes 3DOD layout (FORMATS.md §4): lowres frames, `.pincam`, `lowres_wide.traj`,
//! `<video>_3dod_annotation.json` and `metadata.csv`.

use crate::geom::{self, Intrinsics, Mat3, Rigid};
use crate::scene::Room;
use serde_json::json;

/// Image size of `lowres_wide` / `lowres_depth` in sensor orientation.
pub const LOWRES: (u32, u32) = (256, 192);
/// Range of the LiDAR: farther surfaces read 0.
pub const MAX_DEPTH_M: f64 = 5.0;
/// Official loader's pose-lookup tolerance (seconds).
pub const TRAJ_TOLERANCE_S: f64 = 0.005;

/// Sky direction of a capture (`metadata.csv`); fixed per room index so small sets have both
/// landscape and portrait videos.
pub fn sky_direction(index: usize) -> &'static str {
    ["Up", "Left", "Right", "Up"][index % 4]
}

/// Rotation from the upright camera to the sensor camera for a sky direction: the stored
/// image shows the sky on that side (`Left`: stored image must be turned 90° clockwise).
pub fn sensor_from_upright(sky: &str) -> Mat3 {
    match sky {
        // sensor x = upright y, sensor y = −upright x
        "Left" => geom::from_columns([0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
        "Right" => geom::from_columns([0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
        "Down" => geom::from_columns([-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]),
        _ => geom::IDENTITY3,
    }
}

/// File-name timestamp of a frame: seconds with 3 decimals, from integer microseconds.
pub fn name_timestamp(us: u64) -> String {
    let ms = (us + 500) / 1000;
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `.traj` timestamp: seconds with 6 decimals (more than the names, as in the real files).
pub fn traj_timestamp(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// `.pincam`: `width height fx fy cx cy` on one line.
pub fn pincam(k: &Intrinsics) -> String {
    format!(
        "{} {} {} {} {} {}\n",
        k.width, k.height, k.fx, k.fy, k.cx, k.cy
    )
}

/// One `.traj` line: timestamp, axis-angle and translation of the world-to-camera transform.
pub fn traj_line(us: u64, c2w: &Rigid) -> String {
    let w2c = c2w.inverse();
    let r = geom::rotation_to_axis_angle(&w2c.r);
    format!(
        "{} {:.9} {:.9} {:.9} {:.9} {:.9} {:.9}\n",
        traj_timestamp(us),
        r[0],
        r[1],
        r[2],
        w2c.t[0],
        w2c.t[1],
        w2c.t[2]
    )
}

/// `<video>_3dod_annotation.json` with every object as an oriented box in the ARKit world;
/// `uid` values come from `uuid`.
pub fn annotation(
    room: &Room,
    world_from_room: &Rigid,
    skipped: bool,
    mut uuid: impl FnMut() -> String,
) -> serde_json::Value {
    let data: Vec<serde_json::Value> = room
        .objects
        .iter()
        .map(|o| {
            let r = geom::mat_mul(&world_from_room.r, &o.rotation());
            // Rows of normalizedAxes are the box's local axes in world coordinates.
            let rows = geom::transpose(&r);
            let axes: Vec<f64> = rows.iter().flatten().copied().collect();
            let obb = json!({
                "centroid": world_from_room.apply(o.centre),
                "axesLengths": o.size,
                "normalizedAxes": axes,
            });
            json!({
                "uid": uuid(),
                "label": o.class,
                "modelId": "",
                "children": [],
                "objectId": o.id + 1,
                "segments": {"obbAligned": obb.clone(), "obb": obb},
                "hierarchy": 0,
                "isInGroup": false,
                "labelType": "object",
                "attributes": {},
            })
        })
        .collect();
    let n = data.len();
    json!({
        "data": if skipped { vec![] } else { data },
        "stats": {"numObjects": if skipped { 0 } else { n }},
        "comment": if skipped { "scan skipped by annotator" } else { "" },
        "confirm": !skipped,
        "skipped": skipped,
    })
}
