//! `tools shard show DIR --sample ID --out sample.png`: a sample's views side by side with what the
//! stored geometry says drawn on them, so that a person sees at a glance whether poses and
//! intrinsics are right:
//!
//! - every view gets a coloured frame and its number; on each view, the camera centres of the
//!   *other* views (their `t`, in the reference frame) are projected through this view's `R`, `t`
//!   and `K` and drawn as dots of their colour with their number;
//! - stage 3 (RoomPlan actions): the boxes of the objects in the target action (locate, list, add)
//!   are projected as wireframes, targets and anchors as crosses with their category;
//! - SQA3D: the agent's position and facing direction (from the situation) as a magenta arrow;
//! - the caption: sample id, task, scene, the situation, question and answers or the action.
//!
//! Projection: p_cam = Rᵀ·(p_ref − t), then K (pixel centres at integers); drawn on the views scaled
//! to `--view-height`, with the same scaling applied to the projected points.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{imageops, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use roomplan_prep::actions::{validate_text, Action};
use roomplan_prep::shard::{Dataset, Geometry, SampleRecord, SceneRecord};

use crate::font;

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A prepared dataset folder.
    pub dir: PathBuf,
    /// The sample id to draw (its scene's views are shown).
    #[arg(long)]
    pub sample: String,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Height of each drawn view in pixels (views are scaled, keeping their aspect ratio).
    #[arg(long, default_value_t = 300)]
    pub view_height: u32,
    /// Views per row.
    #[arg(long, default_value_t = 4)]
    pub columns: usize,
}

/// Distinct colours for views (matplotlib's tab10).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];
/// Colour of projected object boxes.
pub const BOX_COLOUR: (u8, u8, u8) = (255, 255, 0);
/// Colour of the SQA3D agent arrow.
pub const AGENT_COLOUR: (u8, u8, u8) = (255, 0, 255);

const CAPTION_FONT_PX: u32 = 16;
const MARGIN: u32 = 8;

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// A view's camera: reference→pixel projection at display scale `s`.
pub struct Camera {
    r: [[f64; 3]; 3],
    t: [f64; 3],
    k: [[f64; 3]; 3],
    scale: f64,
}

impl Camera {
    pub fn new(g: &Geometry, scale: f64) -> Camera {
        let m =
            |v: &[f32; 9]| std::array::from_fn(|i| std::array::from_fn(|j| v[i * 3 + j] as f64));
        Camera {
            r: m(&g.r),
            t: [g.t[0] as f64, g.t[1] as f64, g.t[2] as f64],
            k: m(&g.k),
            scale,
        }
    }

    /// Reference-frame point → camera frame (p_cam = Rᵀ(p − t)).
    pub fn to_camera(&self, p: &[f64; 3]) -> [f64; 3] {
        let d = [p[0] - self.t[0], p[1] - self.t[1], p[2] - self.t[2]];
        std::array::from_fn(|i| (0..3).map(|j| self.r[j][i] * d[j]).sum())
    }

    /// Camera-frame point → display pixel, `None` behind the camera.
    pub fn pixel_of_camera_point(&self, p: &[f64; 3]) -> Option<(f64, f64)> {
        let [u, v] = roomplan_prep::geometry::project(&self.k, p)?;
        // Pixel centres at integers: a resize by s maps u to (u + 0.5)·s − 0.5.
        Some(((u + 0.5) * self.scale - 0.5, (v + 0.5) * self.scale - 0.5))
    }

    pub fn pixel(&self, p: &[f64; 3]) -> Option<(f64, f64)> {
        self.pixel_of_camera_point(&self.to_camera(p))
    }

    /// A reference-frame segment clipped to the part in front of the camera (z ≥ 1 cm), in pixels.
    pub fn segment(&self, a: &[f64; 3], b: &[f64; 3]) -> Option<((f64, f64), (f64, f64))> {
        const NEAR: f64 = 0.01;
        let (mut a, mut b) = (self.to_camera(a), self.to_camera(b));
        if a[2] < NEAR && b[2] < NEAR {
            return None;
        }
        if a[2] < NEAR || b[2] < NEAR {
            let (front, back) = if a[2] >= NEAR { (a, b) } else { (b, a) };
            let s = (front[2] - NEAR) / (front[2] - back[2]);
            let cut: [f64; 3] = std::array::from_fn(|i| front[i] + s * (back[i] - front[i]));
            if a[2] < NEAR {
                a = cut;
            } else {
                b = cut;
            }
        }
        Some((
            self.pixel_of_camera_point(&a)?,
            self.pixel_of_camera_point(&b)?,
        ))
    }

    /// [`Camera::segment`] rounded to whole pixels.
    pub fn segment_px(&self, a: &[f64; 3], b: &[f64; 3]) -> Option<[(i32, i32); 2]> {
        let round = |p: (f64, f64)| (p.0.round() as i32, p.1.round() as i32);
        self.segment(a, b).map(|(p, q)| [round(p), round(q)])
    }
}

/// What to draw in 3-D: boxes (8 corners, `roomplan::box_corners` order) and labelled points.
#[derive(Default)]
pub struct Overlay {
    pub boxes: Vec<(String, [[f64; 3]; 8])>,
    pub points: Vec<(String, [f64; 3])>,
    /// SQA3D agent: position and facing direction.
    pub agent: Option<([f64; 3], [f64; 3])>,
}

fn overlay_of(sample: &SampleRecord, dir: &Path) -> Result<Overlay> {
    let mut overlay = Overlay::default();
    if let Some(agent) = &sample.agent {
        overlay.agent = Some((agent.position_ref, agent.heading_ref));
    }
    let Some(text) = &sample.action_json else {
        return Ok(overlay);
    };
    let action = validate_text(text).with_context(|| {
        format!(
            "{}: sample {}: the stored action is not a valid RoomPlan action",
            dir.display(),
            sample.sample_id
        )
    })?;
    let label = |c: roomplan_prep::roomplan::ObjectCategory| c.as_str().to_string();
    match action {
        Action::Locate { object } | Action::AddObject { object } => overlay
            .boxes
            .push((label(object.category), object.corners())),
        Action::ListObjects { objects } => {
            for o in objects {
                overlay.boxes.push((label(o.category), o.corners()));
            }
        }
        Action::PlaceAnchor {
            category, center, ..
        } => overlay
            .points
            .push((format!("anchor on {}", label(category)), center)),
        Action::MoveObject {
            target,
            translation,
        } => {
            overlay.points.push((label(target.category), target.center));
            let to: [f64; 3] = std::array::from_fn(|i| target.center[i] + translation[i]);
            overlay
                .points
                .push((format!("{} moved", label(target.category)), to));
        }
        Action::RotateObject { target, .. } | Action::RemoveObject { target } => {
            overlay.points.push((label(target.category), target.center))
        }
        Action::Count { .. } => {}
    }
    Ok(overlay)
}

fn caption_lines(sample: &SampleRecord, max_chars: usize) -> Vec<String> {
    let mut raw = vec![format!(
        "{}  [{} / {}]  scene {}",
        sample.sample_id, sample.task, sample.split, sample.scene_id
    )];
    if let Some(s) = &sample.situation {
        raw.push(format!("situation: {s}"));
    }
    raw.push(format!("Q: {}", sample.question));
    if !sample.answers.is_empty() {
        raw.push(format!("A: {}", sample.answers.join(" | ")));
    }
    if let Some(a) = &sample.action_json {
        raw.push(format!("action: {a}"));
    }
    let mut lines = Vec::new();
    for line in raw {
        let chars: Vec<char> = line.chars().collect();
        for chunk in chars.chunks(max_chars.max(10)) {
            lines.push(chunk.iter().collect());
        }
    }
    lines
}

/// Decodes a stored view image.
fn decode(scene: &SceneRecord, i: usize, dir: &Path) -> Result<RgbImage> {
    let v = &scene.views[i];
    let img = image::load_from_memory(&v.image).with_context(|| {
        format!(
            "{}: scene {} view {} (frame {}): the {} image does not decode",
            dir.display(),
            scene.scene_id,
            i,
            v.frame_id,
            v.encoding
        )
    })?;
    Ok(img.to_rgb8())
}

/// Renders the picture; returns it and the number of other-camera dots drawn (for tests and logs).
pub fn render(
    dir: &Path,
    sample_id: &str,
    view_height: u32,
    columns: usize,
) -> Result<(RgbImage, usize)> {
    font::register();
    let dataset = Dataset::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let mut sample = None;
    for row in 0..dataset.num_samples() {
        let s = dataset.sample(row)?;
        if s.sample_id == sample_id {
            sample = Some(s);
            break;
        }
    }
    let Some(sample) = sample else {
        bail!("{}: no sample {sample_id:?}", dir.display());
    };
    let scene = dataset.scene_by_id(&sample.scene_id)?.with_context(|| {
        format!(
            "{}: sample {sample_id} refers to scene {} which the dataset does not hold",
            dir.display(),
            sample.scene_id
        )
    })?;
    if scene.views.is_empty() {
        bail!("{}: scene {} has no views", dir.display(), scene.scene_id);
    }
    let overlay = overlay_of(&sample, dir)?;
    let h = view_height.max(32);
    let mut tiles = Vec::new();
    for i in 0..scene.views.len() {
        let img = decode(&scene, i, dir)?;
        let scale = h as f64 / img.height() as f64;
        let w = ((img.width() as f64 * scale).round() as u32).max(1);
        // The stored K is for the stored size; x and y scale alike up to rounding of the width.
        tiles.push((
            imageops::resize(&img, w, h, imageops::FilterType::Triangle),
            scale,
        ));
    }
    let columns = columns.max(1).min(tiles.len());
    let rows = tiles.len().div_ceil(columns);
    let col_w = tiles.iter().map(|(t, _)| t.width()).max().unwrap_or(1);
    let width = (MARGIN + columns as u32 * (col_w + MARGIN)).max(480);
    let chars_per_line = ((width - 2 * MARGIN) / (CAPTION_FONT_PX * 6 / 10)) as usize;
    let lines = caption_lines(&sample, chars_per_line);
    let caption_h = lines.len() as u32 * (CAPTION_FONT_PX + 4) + 2 * MARGIN;
    let height = MARGIN + rows as u32 * (h + MARGIN) + caption_h;

    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([24, 24, 24]));
    let origin = |i: usize| {
        (
            MARGIN + (i % columns) as u32 * (col_w + MARGIN),
            MARGIN + (i / columns) as u32 * (h + MARGIN),
        )
    };
    for (i, (tile, _)) in tiles.iter().enumerate() {
        let (x, y) = origin(i);
        imageops::replace(&mut canvas, tile, x as i64, y as i64);
    }
    let mut dots = 0;
    {
        let backend = BitMapBackend::with_buffer(canvas.as_mut(), (width, height));
        let root = backend.into_drawing_area();
        let font_px = CAPTION_FONT_PX as f64;
        let text = |c: RGBColor, px: f64| {
            ("sans-serif", px)
                .into_font()
                .color(&c)
                .pos(Pos::new(HPos::Left, VPos::Top))
        };
        for (i, (tile, scale)) in tiles.iter().enumerate() {
            let (x0, y0) = origin(i);
            let (x0, y0) = (x0 as i32, y0 as i32);
            let (tw, th) = (tile.width() as i32, tile.height() as i32);
            let colour = rgb(PALETTE[i % PALETTE.len()]);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + tw - 1, y0 + th - 1)],
                colour.stroke_width(3),
            ))?;
            root.draw(&Rectangle::new(
                [(x0 + 2, y0 + 2), (x0 + 26, y0 + 22)],
                colour.filled(),
            ))?;
            root.draw(&Text::new(
                format!("{i}"),
                (x0 + 6, y0 + 3),
                text(WHITE, font_px),
            ))?;
            let Some(g) = &scene.views[i].geometry else {
                root.draw(&Text::new(
                    "no geometry",
                    (x0 + 30, y0 + 3),
                    text(WHITE, font_px),
                ))?;
                continue;
            };
            let cam = Camera::new(g, *scale);
            let inside =
                |p: (f64, f64)| p.0 >= 0.0 && p.1 >= 0.0 && p.0 < tw as f64 && p.1 < th as f64;
            let at = |p: (f64, f64)| (x0 + p.0.round() as i32, y0 + p.1.round() as i32);
            let clip = root
                .clone()
                .shrink((x0 as u32, y0 as u32), (tw as u32, th as u32));
            for (label, corners) in &overlay.boxes {
                let mut drawn = false;
                for a in 0..8usize {
                    for bit in [1usize, 2, 4] {
                        let b = a | bit;
                        if a & bit != 0 {
                            continue;
                        }
                        if let Some(line) = cam.segment_px(&corners[a], &corners[b]) {
                            clip.draw(&PathElement::new(line, rgb(BOX_COLOUR).stroke_width(2)))?;
                            drawn = true;
                        }
                    }
                }
                let centre: [f64; 3] =
                    std::array::from_fn(|k| corners.iter().map(|c| c[k]).sum::<f64>() / 8.0);
                if let Some(p) = cam.pixel(&centre).filter(|p| drawn && inside(*p)) {
                    clip.draw(&Text::new(
                        label.clone(),
                        (p.0 as i32, p.1 as i32),
                        text(rgb(BOX_COLOUR), font_px),
                    ))?;
                }
            }
            for (label, point) in &overlay.points {
                if let Some(p) = cam.pixel(point).filter(|p| inside(*p)) {
                    let (u, v) = at(p);
                    root.draw(&Cross::new((u, v), 8, rgb(BOX_COLOUR).stroke_width(3)))?;
                    root.draw(&Text::new(
                        label.clone(),
                        (u + 10, v - 8),
                        text(rgb(BOX_COLOUR), font_px),
                    ))?;
                }
            }
            if let Some((pos, heading)) = overlay.agent {
                let tip: [f64; 3] = std::array::from_fn(|k| pos[k] + 0.5 * heading[k]);
                if let Some(line) = cam.segment_px(&pos, &tip) {
                    clip.draw(&PathElement::new(line, rgb(AGENT_COLOUR).stroke_width(3)))?;
                    clip.draw(&Circle::new(line[0], 6, rgb(AGENT_COLOUR).filled()))?;
                }
            }
            for (j, other) in scene.views.iter().enumerate() {
                let Some(og) = other.geometry.as_ref().filter(|_| j != i) else {
                    continue;
                };
                let centre = [og.t[0] as f64, og.t[1] as f64, og.t[2] as f64];
                if let Some(p) = cam.pixel(&centre).filter(|p| inside(*p)) {
                    let (u, v) = at(p);
                    let c = rgb(PALETTE[j % PALETTE.len()]);
                    root.draw(&Circle::new((u, v), 7, c.filled()))?;
                    root.draw(&Circle::new((u, v), 7, WHITE.stroke_width(2)))?;
                    root.draw(&Text::new(format!("{j}"), (u + 9, v - 9), text(c, font_px)))?;
                    dots += 1;
                }
            }
        }
        let y_caption = MARGIN as i32 + rows as i32 * (h + MARGIN) as i32 + MARGIN as i32 / 2;
        for (n, line) in lines.iter().enumerate() {
            let y = y_caption + n as i32 * (CAPTION_FONT_PX as i32 + 4);
            root.draw(&Text::new(
                line.clone(),
                (MARGIN as i32, y),
                text(WHITE, font_px),
            ))?;
        }
        root.present()?;
    }
    Ok((canvas, dots))
}

pub fn run(args: &ShowArgs) -> Result<std::process::ExitCode> {
    let (canvas, dots) = render(&args.dir, &args.sample, args.view_height, args.columns)?;
    canvas
        .save_with_format(&args.out, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "{}: {}x{} px; {} camera centres of other views projected",
        args.out.display(),
        canvas.width(),
        canvas.height(),
        dots
    );
    Ok(std::process::ExitCode::SUCCESS)
}
