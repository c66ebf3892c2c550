//! The `.sens` reader and the export-folder reader agree on the same synthetic scan (synth writes
//! both from the same frames), and both agree with synth's recorded truth.

mod scannet_common;

use roomplan_prep::scannet::{read_scan_meta, ExportScan, ScanSource, SensReader};
use roomplan_synth::ScannetFormat;
use scannet_common::*;

#[test]
fn sens_and_export_agree_with_each_other_and_the_truth() {
    let tmp = synth(&small_config(ScannetFormat::Both, false));
    let raw = raw(&tmp);
    let truth = truth(&raw);
    for scene in truth["scenes"].as_array().unwrap() {
        let id = scene["scene_id"].as_str().unwrap();
        let dir = raw.join("scannet/scans").join(id);
        let sens = SensReader::open(&dir.join(format!("{id}.sens"))).unwrap();
        let export = ExportScan::open(&dir).unwrap();
        // Unpadded names sort numerically: 0, 1, ..., 9, 10, 11.
        let indices: Vec<u64> = export.frames.iter().map(|f| f.index).collect();
        assert_eq!(indices, (0..12).collect::<Vec<_>>());
        assert_eq!(sens.frames().len(), 12);
        assert!(sens.truncation().is_none());
        let h = sens.header().clone();
        assert_eq!(
            (h.color_width, h.color_height, h.depth_width, h.depth_height),
            (160, 120, 80, 60)
        );
        for (a, b) in [
            (h.intrinsic_color, export.intrinsic_color),
            (h.intrinsic_depth, export.intrinsic_depth),
        ] {
            for r in 0..4 {
                for c in 0..4 {
                    assert!((a[r][c] - b[r][c]).abs() < 1e-4, "{id} intrinsics");
                }
            }
        }
        let k = &scene["scannet"]["color_intrinsics"];
        assert!((h.intrinsic_color[0][0] - k["fx"].as_f64().unwrap()).abs() < 1e-3);
        assert!((h.intrinsic_color[1][2] - k["cy"].as_f64().unwrap()).abs() < 1e-3);
        for f in 0..12u64 {
            let expect = mat4(&scene["scannet"]["frames"][f as usize]["c2w"]);
            let from_sens = sens.frames()[f as usize].camera_to_world;
            let from_text = export.pose(f).unwrap();
            for r in 0..4 {
                for c in 0..4 {
                    assert!(
                        (from_sens[r][c] - expect[r][c]).abs() < 1e-5,
                        "{id} frame {f} .sens pose"
                    );
                    assert!((from_text[r][c] - expect[r][c]).abs() < 1e-5, "{id} frame {f} pose.txt");
                }
            }
            assert_eq!(
                sens.color_bytes(f).unwrap(),
                export.color_bytes(f).unwrap().1,
                "{id} frame {f} JPEG"
            );
            let (d_sens, d_png) = (sens.decode_depth(f).unwrap(), export.decode_depth(f).unwrap());
            assert_eq!(d_sens, d_png, "{id} frame {f} depth");
            assert!(d_sens.data.iter().any(|&d| d > 0));
            let (c_sens, c_png) = (sens.decode_color(f).unwrap(), export.decode_color(f).unwrap());
            assert_eq!((c_sens.width(), c_sens.height()), (160, 120));
            assert_eq!(c_sens, c_png);
        }
        // The scan folder has both: the raw .sens is preferred.
        let (source, digest) = ScanSource::open(&dir, id, true).unwrap();
        assert!(matches!(source, ScanSource::Sens(_)));
        let bytes = std::fs::read(dir.join(format!("{id}.sens"))).unwrap();
        assert_eq!(
            hex::encode(digest.unwrap()),
            roomplan_prep::manifest::sha256_hex(&bytes)
        );
        // Axis alignment: from the .txt, except on test scans (identity, flagged).
        let meta = read_scan_meta(&dir.join(format!("{id}.txt"))).unwrap();
        assert_eq!(meta.axis_alignment_present, !scene["test_scene"].as_bool().unwrap());
        if meta.axis_alignment_present {
            let expect = mat4(&scene["scannet"]["axis_alignment"]);
            for r in 0..4 {
                for c in 0..4 {
                    assert!(
                        (meta.axis_alignment[r][c] - expect[r][c]).abs() < 1e-5,
                        "{id} axis alignment"
                    );
                }
            }
        }
        assert_eq!(meta.get_u64("colorWidth"), Some(160));
    }
}
