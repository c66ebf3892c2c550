//! `tools shard show` and `tools plot`: pictures checked by decoded pixel facts (sizes, colours at
//! positions computed here from the stored geometry), not by PNG bytes.

use std::path::Path;
use std::process::{Command, Output};

use roomplan_prep::manifest::ToolInfo;
use roomplan_prep::shard::{
    DatasetWriter, Geometry, SampleRecord, SceneRecord, ViewRecord, WriterOptions,
};

fn tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(args)
        .output()
        .expect("tools runs")
}

const K: [f32; 9] = [40.0, 0.0, 31.5, 0.0, 40.0, 23.5, 0.0, 0.0, 1.0];
const IDENTITY: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
/// View 1's camera centre in the reference frame (= view 0's camera frame here).
const T1: [f32; 3] = [0.3, -0.2, 2.0];
const LOCATE: &str = r#"{"action":"locate","object":{"category":{"table":{}},"attributes":{},"dimensions":[0.800,0.600,0.400],"transform":[1.000,0.000,0.000,0.000,0.000,1.000,0.000,0.000,0.000,0.000,1.000,0.000,-0.400,0.300,3.000,1.000]}}"#;

fn view(frame: &str, t: [f32; 3]) -> ViewRecord {
    let img = image::RgbImage::from_pixel(64, 48, image::Rgb([90, 90, 90]));
    ViewRecord {
        frame_id: frame.into(),
        image: roomplan_prep::geometry::encode_jpeg(&img, 90).unwrap(),
        encoding: "jpeg".into(),
        width: 64,
        height: 48,
        geometry: Some(Geometry {
            r: IDENTITY,
            t,
            k: K,
            depth_hist: vec![1.0],
            valid_depth_fraction: 1.0,
        }),
    }
}

fn write_dataset(dir: &Path) {
    let mut w = DatasetWriter::create(dir, WriterOptions::default()).unwrap();
    w.write_scene(SceneRecord {
        dataset: "arkitscenes".into(),
        scene_id: "s0".into(),
        views: vec![view("0", [0.0; 3]), view("1", T1)],
        reference_world_pose: None,
        axis_alignment: std::array::from_fn(|i| if i % 5 == 0 { 1.0 } else { 0.0 }),
        axis_alignment_from_metadata: false,
    })
    .unwrap();
    let mut s = SampleRecord::new(
        "a0",
        "roomplan_action",
        "train",
        "s0",
        "Where is the table?",
    );
    s.action_json = Some(LOCATE.into());
    w.write_sample(s).unwrap();
    let mut q = SampleRecord::new("q0", "scanqa", "val", "s0", "What colour is the wall?");
    q.answers = vec!["grey".into()];
    w.write_sample(q).unwrap();
    w.finish(ToolInfo::new("test", "0", serde_json::json!({})), vec![])
        .unwrap();
}

/// Display pixel of a point given in view 0's camera frame (R = I, t = 0), at scale `s`, on the
/// canvas (margin 8).
fn pixel(p: [f64; 3], s: f64) -> (u32, u32) {
    let u = K[0] as f64 * p[0] / p[2] + K[2] as f64;
    let v = K[4] as f64 * p[1] / p[2] + K[5] as f64;
    (
        (8.0 + (u + 0.5) * s - 0.5).round() as u32,
        (8.0 + (v + 0.5) * s - 0.5).round() as u32,
    )
}

fn near(img: &image::RgbImage, (x, y): (u32, u32), colour: [u8; 3], radius: u32) -> bool {
    (x - radius..=x + radius)
        .any(|x| (y - radius..=y + radius).any(|y| img.get_pixel(x, y).0 == colour))
}

#[test]
fn show_draws_the_other_camera_and_the_target_box_where_the_geometry_puts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    write_dataset(&ds);
    let png = tmp.path().join("a0.png");
    let o = tools(&[
        "shard",
        "show",
        ds.to_str().unwrap(),
        "--sample",
        "a0",
        "--out",
        png.to_str().unwrap(),
        "--view-height",
        "192",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).ends_with("1 camera centres of other views projected\n")
    );
    let img = image::open(&png).unwrap().to_rgb8();
    // Two 256×192 views side by side (scale 4), margins 8, caption below.
    assert_eq!(img.width(), 8 + 2 * (256 + 8));
    assert!(img.height() > 8 + 192 + 8 + 3 * 20, "{}", img.height());
    // View 1's centre, seen from view 0, is a dot in view 1's colour (tab10 orange).
    let dot = pixel([0.3, -0.2, 2.0], 4.0);
    assert_eq!(img.get_pixel(dot.0, dot.1).0, [255, 127, 14], "at {dot:?}");
    // The table's box: its corners (centre (-0.4, 0.3, 3.0), size 0.8×0.6×0.4) are yellow.
    for corner in [[-0.8, 0.0, 2.8], [0.0, 0.6, 3.2], [-0.8, 0.6, 2.8]] {
        let p = pixel(corner, 4.0);
        assert!(
            near(&img, p, [255, 255, 0], 2),
            "no box line at corner {corner:?} → {p:?}"
        );
    }
    // Each view's frame in its own colour (tab10 blue, orange).
    assert_eq!(img.get_pixel(8, 100).0, [31, 119, 180]);
    assert_eq!(img.get_pixel(8 + 264, 100).0, [255, 127, 14]);

    // A QA sample: no box, caption present; an unknown sample is a clear error.
    let q = tmp.path().join("q0.png");
    let o = tools(&[
        "shard",
        "show",
        ds.to_str().unwrap(),
        "--sample",
        "q0",
        "--out",
        q.to_str().unwrap(),
        "--view-height",
        "192",
    ]);
    assert!(o.status.success());
    let img = image::open(&q).unwrap().to_rgb8();
    assert!(
        !img.pixels().any(|p| p.0 == [255, 255, 0]),
        "a QA sample has no box"
    );
    let o = tools(&[
        "shard",
        "show",
        ds.to_str().unwrap(),
        "--sample",
        "nope",
        "--out",
        q.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no sample \"nope\""));
}

fn write_run(dir: &Path, name: &str, steps: usize, eval_every: usize) {
    std::fs::create_dir_all(dir.join("scores")).unwrap();
    std::fs::write(dir.join("experiment.yaml"), format!("name: {name}\nstage: 2\nseed: 7\nmodel: {{}}\ndata: {{}}\noptim: {{lr: 0.0002}}\nschedule: {{}}\ntrain: {{}}\neval: {{}}\n")).unwrap();
    std::fs::write(dir.join("pins.json"), r#"{"pins":[{"what":"dataset scanqa manifest","path":"data/shards/scanqa/manifest.json","sha256":"0ad14a72"}]}"#).unwrap();
    std::fs::write(dir.join("run.json"), r#"{"git_commit":"771228b","git_dirty":false,"cargo_lock_sha256":"abc","command":["train","--","tiny"],"host":"ci","started_utc":"2026-11-30T12:00:00Z"}"#).unwrap();
    let mut lines = String::new();
    for step in 1..=steps {
        let loss = 2.5 * (-(step as f64) / 30.0).exp() + 0.3;
        lines += &format!("{{\"kind\":\"train\",\"step\":{step},\"epoch\":0,\"loss\":{loss},\"lr\":{{\"lora\":{},\"projector\":{}}},\"grad_norm\":{},\"tokens_per_s\":1000.0,\"samples_per_s\":4.0,\"seconds\":0.5,\"peak_rss_mib\":800.0}}\n", 1e-5 * step as f64 / steps as f64, 2e-4 * step as f64 / steps as f64, 1.0 / step as f64);
        if step % eval_every == 0 {
            lines += &format!("{{\"kind\":\"eval\",\"step\":{step},\"epoch\":1,\"val_loss\":{},\"metrics\":{{\"em1\":{},\"refined_em\":{}}}}}\n", loss + 0.1, step as f64 / 4.0, step as f64 / 3.0);
        }
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    std::fs::write(
        dir.join("scores/scanqa-val.json"),
        r#"[{"task":"scanqa","n":2,"em1":50.0,"meteor":null,"em_readings":{}}]"#,
    )
    .unwrap();
}

/// Points of each `<polyline>` of an SVG.
fn polylines(svg: &str) -> Vec<usize> {
    svg.match_indices("<polyline")
        .map(|(i, _)| {
            let rest = &svg[i..];
            let pts = rest.find("points=\"").map(|p| &rest[p + 8..]).unwrap();
            pts[..pts.find('"').unwrap()].split_whitespace().count()
        })
        .collect()
}

#[test]
fn plot_draws_every_series_of_several_runs_and_writes_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("run-a"), tmp.path().join("run-b"));
    write_run(&a, "tiny-a", 100, 25);
    write_run(&b, "tiny-b", 60, 20);
    let o = tools(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--size",
        "800x500",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plots = a.join("plots");
    for file in ["loss", "lr", "grad_norm", "eval"] {
        let img = image::open(plots.join(format!("{file}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(img.dimensions(), (800, 500), "{file}");
        // Both runs' colours appear (tab10 blue for run a, orange for run b).
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(
            count([31, 119, 180]) > 50 && count([255, 127, 14]) > 50,
            "{file}: {} {}",
            count([31, 119, 180]),
            count([255, 127, 14])
        );
    }
    let svg = |f: &str| std::fs::read_to_string(plots.join(f)).unwrap();
    // loss: train loss (100, 60 points) and val loss (4, 3 points) per run.
    let mut loss = polylines(&svg("loss.svg"));
    loss.sort();
    assert!(loss.ends_with(&[60, 100]), "{loss:?}");
    assert!(
        svg("loss.svg").contains("tiny-a: train loss")
            && svg("loss.svg").contains("tiny-b: val loss")
    );
    // lr: two groups per run; eval: two metrics per run, 4 and 3 evaluations.
    let mut lr = polylines(&svg("lr.svg"));
    lr.sort();
    assert_eq!(lr.iter().filter(|&&n| n == 100).count(), 2, "{lr:?}");
    assert_eq!(lr.iter().filter(|&&n| n == 60).count(), 2, "{lr:?}");
    for label in [
        "tiny-a: em1",
        "tiny-a: refined_em",
        "tiny-b: em1",
        "tiny-b: refined_em",
    ] {
        assert!(svg("eval.svg").contains(label), "{label}");
    }
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(
        report
            .starts_with("# Run report: tiny-a\n\n![loss](plots/loss.png)\n![lr](plots/lr.png)\n"),
        "{report}"
    );
    assert!(
        report.contains(
            "| dataset scanqa manifest | `data/shards/scanqa/manifest.json` | `0ad14a72` |"
        ),
        "{report}"
    );
    assert!(
        report.contains("| git_commit | `771228b` |")
            && report.contains("| command | `train -- tiny` |"),
        "{report}"
    );
    assert!(
        report.contains("Last evaluation, step 100:")
            && report.contains("| em1 | 25 |\n| refined_em | 33.3333 |"),
        "{report}"
    );
    assert!(
        report.contains("| em1 | 50.0000 |\n| meteor | n/a |"),
        "{report}"
    );
    assert!(
        report.contains("```yaml\nname: tiny-a\nstage: 2"),
        "{report}"
    );
    let report_b = std::fs::read_to_string(b.join("report.md")).unwrap();
    assert!(
        report_b.contains("![loss](../run-a/plots/loss.png)"),
        "{report_b}"
    );

    // A malformed line names the file and line.
    std::fs::write(
        b.join("metrics.jsonl"),
        "{\"kind\":\"train\",\"step\":1}\n{\"kind\":\"train\"}\n",
    )
    .unwrap();
    let o = tools(&["plot", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("metrics.jsonl: line 2: expected a numeric \"step\""),
        "{err}"
    );
}
