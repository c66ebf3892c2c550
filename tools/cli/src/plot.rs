//! `tools plot RUN_DIR [RUN_DIR…] [--out DIR]`: charts of training runs and a `report.md` per run.
//!
//! Reads each run directory as the `train` binary writes it (`metrics.jsonl` with `"kind": "train"`
//! and `"kind": "eval"` lines, `experiment.yaml`, `pins.json`, `run.json`, `scores/*.json`) and writes
//! into `--out` (default `<first run>/plots/`) PNG and SVG of
//!
//! - `loss`: training loss per step (lines) and validation loss at evaluations (dashed);
//! - `lr`: every learning-rate group, log scale;
//! - `grad_norm`: gradient norm per step;
//! - `eval`: every evaluation metric that appears;
//!
//! with several runs on one chart (one colour per run, one dash/marker style per series). Then each
//! run gets `report.md`: the pictures, the run's provenance (commit, command, host), the pins, the
//! final training and evaluation figures, the scores files and the resolved experiment.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::font;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Run directories (as `train` writes them); several runs share each chart.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where the pictures go (default: `plots/` inside the first run directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Picture size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1000x560")]
    pub size: String,
}

/// One named series of (step, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What one run's `metrics.jsonl` holds, by chart.
#[derive(Debug, Default)]
pub struct RunMetrics {
    pub loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub grad_norm: Vec<(f64, f64)>,
    pub lr: BTreeMap<String, Vec<(f64, f64)>>,
    pub eval: BTreeMap<String, Vec<(f64, f64)>>,
    pub last_train: Option<Value>,
    pub last_eval: Option<Value>,
}

/// Reads `metrics.jsonl`, naming the file and line of any malformed record.
pub fn read_metrics(run: &Path) -> Result<RunMetrics> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut m = RunMetrics::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let step = v
            .get("step")
            .and_then(Value::as_f64)
            .with_context(|| format!("{}: expected a numeric \"step\"", at()))?;
        let num = |key: &str| v.get(key).and_then(Value::as_f64);
        match v.get("kind").and_then(Value::as_str) {
            Some("train") => {
                if let Some(x) = num("loss") {
                    m.loss.push((step, x));
                }
                if let Some(x) = num("grad_norm") {
                    m.grad_norm.push((step, x));
                }
                if let Some(groups) = v.get("lr").and_then(Value::as_object) {
                    for (g, x) in groups {
                        if let Some(x) = x.as_f64() {
                            m.lr.entry(g.clone()).or_default().push((step, x));
                        }
                    }
                } else if let Some(x) = num("lr") {
                    m.lr.entry("lr".into()).or_default().push((step, x));
                }
                m.last_train = Some(v);
            }
            Some("eval") => {
                if let Some(x) = num("val_loss") {
                    m.val_loss.push((step, x));
                }
                if let Some(metrics) = v.get("metrics").and_then(Value::as_object) {
                    for (k, x) in metrics {
                        if let Some(x) = x.as_f64() {
                            m.eval.entry(k.clone()).or_default().push((step, x));
                        }
                    }
                }
                m.last_eval = Some(v);
            }
            Some(_) => {} // other kinds are for other readers
            None => bail!("{}: expected \"kind\": \"train\" or \"eval\"", at()),
        }
    }
    Ok(m)
}

/// The run's display name: `name` from experiment.yaml, else the folder's name.
fn run_name(run: &Path) -> String {
    let from_yaml = std::fs::read_to_string(run.join("experiment.yaml"))
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
    from_yaml.unwrap_or_else(|| {
        run.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| run.display().to_string())
    })
}

/// Colours per run (tab10) and dash patterns per series within a run.
const RUN_COLOURS: [(u8, u8, u8); 10] = crate::show::PALETTE;

/// One chart: title, y label, whether y is log-scaled, and per run its series.
pub struct Chart {
    pub file: &'static str,
    pub title: String,
    pub y_label: String,
    pub log_y: bool,
    /// (run index, series); series with the same run share the run's colour.
    pub series: Vec<(usize, Series, bool)>,
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let tf = |y: f64| {
        if chart.log_y {
            y.max(f64::MIN_POSITIVE).log10()
        } else {
            y
        }
    };
    let all: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|(_, s, _)| s.points.iter().map(|&(x, y)| (x, tf(y))))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { 0.5 };
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let log_y = chart.log_y;
    let y_fmt = move |v: &f64| {
        if log_y {
            format!("{:.0e}", 10f64.powf(*v))
        } else if v.abs() >= 1000.0 || (v.abs() < 0.01 && *v != 0.0) {
            format!("{v:.1e}")
        } else {
            format!("{v:.3}")
        }
    };
    ctx.configure_mesh()
        .x_desc("step")
        .y_desc(&chart.y_label)
        .y_label_formatter(&y_fmt)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let mut style_index: BTreeMap<usize, usize> = BTreeMap::new();
    for (run, series, dashed) in &chart.series {
        let (r, g, b) = RUN_COLOURS[run % RUN_COLOURS.len()];
        let n = style_index.entry(*run).or_insert(0);
        // Within one run, series differ by shade: lighter for later series.
        let shade = |c: u8| (c as f64 + (255.0 - c as f64) * (*n as f64 * 0.3).min(0.6)) as u8;
        let colour = RGBColor(shade(r), shade(g), shade(b));
        *n += 1;
        let points: Vec<(f64, f64)> = series
            .points
            .iter()
            .map(|&(x, y)| (x, tf(y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let style = colour.stroke_width(2);
        let anno = if *dashed {
            ctx.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?
        } else {
            ctx.draw_series(LineSeries::new(points.clone(), style))?
        };
        anno.label(series.name.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
        });
        // Markers where points are sparse (evaluations), so single points show.
        if points.len() <= 30 {
            ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    if !chart.series.is_empty() {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Writes `<file>.png` and `<file>.svg`.
fn write_chart(out: &Path, chart: &Chart, size: (u32, u32)) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, chart)?;
    }
    let svg_path = out.join(format!("{}.svg", chart.file));
    std::fs::write(&svg_path, svg)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        draw(&root, chart)?;
    }
    let png_path = out.join(format!("{}.png", chart.file));
    let img = image::RgbImage::from_raw(size.0, size.1, buffer).context("buffer size")?;
    img.save_with_format(&png_path, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", png_path.display()))?;
    Ok(())
}

/// The four charts of a set of runs.
pub fn charts(names: &[String], metrics: &[RunMetrics]) -> Vec<Chart> {
    let several = names.len() > 1;
    let label = |run: usize, what: &str| {
        if several {
            format!("{}: {what}", names[run])
        } else {
            what.to_string()
        }
    };
    let mut loss = Vec::new();
    let mut lr = Vec::new();
    let mut grad = Vec::new();
    let mut eval = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        if !m.loss.is_empty() {
            loss.push((
                i,
                Series {
                    name: label(i, "train loss"),
                    points: m.loss.clone(),
                },
                false,
            ));
        }
        if !m.val_loss.is_empty() {
            loss.push((
                i,
                Series {
                    name: label(i, "val loss"),
                    points: m.val_loss.clone(),
                },
                true,
            ));
        }
        for (g, points) in &m.lr {
            lr.push((
                i,
                Series {
                    name: label(i, g),
                    points: points.clone(),
                },
                false,
            ));
        }
        if !m.grad_norm.is_empty() {
            grad.push((
                i,
                Series {
                    name: label(i, "grad norm"),
                    points: m.grad_norm.clone(),
                },
                false,
            ));
        }
        for (k, points) in &m.eval {
            eval.push((
                i,
                Series {
                    name: label(i, k),
                    points: points.clone(),
                },
                false,
            ));
        }
    }
    let log_lr = lr
        .iter()
        .all(|(_, s, _)| s.points.iter().all(|p| p.1 > 0.0));
    vec![
        Chart {
            file: "loss",
            title: "loss".into(),
            y_label: "loss".into(),
            log_y: false,
            series: loss,
        },
        Chart {
            file: "lr",
            title: "learning rates".into(),
            y_label: if log_lr {
                "learning rate (log)".into()
            } else {
                "learning rate".into()
            },
            log_y: log_lr,
            series: lr,
        },
        Chart {
            file: "grad_norm",
            title: "gradient norm".into(),
            y_label: "grad norm".into(),
            log_y: false,
            series: grad,
        },
        Chart {
            file: "eval",
            title: "evaluation".into(),
            y_label: "score".into(),
            log_y: false,
            series: eval,
        },
    ]
}

/// `to` relative to the folder `from` (both made absolute), with `/` separators.
fn relative(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        p.canonicalize().unwrap_or(p)
    };
    let (from, to) = (abs(from), abs(to));
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn fmt_value(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => format!("{x:.4}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

/// Scores files (`scores/*.json`, as `tools eval` prints them) as Markdown tables.
fn scores_markdown(run: &Path) -> Result<String> {
    let dir = run.join("scores");
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok("No `scores/` folder.\n".into());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", path.display()))?;
        out += &format!(
            "### {}\n\n",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        // `tools eval qa` prints an array of reports; `tools eval actions` one object with a summary.
        let reports: Vec<Value> = match v {
            Value::Array(a) => a,
            Value::Object(ref o) if o.contains_key("summary") => vec![{
                let mut s = o["summary"].clone();
                s["task"] = o.get("task").cloned().unwrap_or(Value::Null);
                s
            }],
            other => vec![other],
        };
        for r in reports {
            let Some(obj) = r.as_object() else { continue };
            out += &format!(
                "| {} | value |\n|---|---:|\n",
                obj.get("task")
                    .map(fmt_value)
                    .unwrap_or_else(|| "metric".into())
            );
            for (k, x) in obj {
                if k == "task" || !(x.is_number() || x.is_null()) {
                    continue;
                }
                out += &format!("| {k} | {} |\n", fmt_value(x));
            }
            out.push('\n');
        }
    }
    if out.is_empty() {
        out = "No scores files.\n".into();
    }
    Ok(out)
}

/// `report.md` of one run.
pub fn report(
    run: &Path,
    name: &str,
    metrics: &RunMetrics,
    plots: &Path,
    drawn: &[&str],
) -> Result<String> {
    let mut md = format!("# Run report: {name}\n\n");
    let rel = relative(run, plots);
    for file in drawn {
        md += &format!("![{file}]({rel}/{file}.png)\n");
    }
    md += "\n## Run\n\n";
    match std::fs::read_to_string(run.join("run.json")) {
        Ok(t) => {
            let v: Value = serde_json::from_str(&t)
                .with_context(|| format!("{}: not JSON", run.join("run.json").display()))?;
            md += "| field | value |\n|---|---|\n";
            for (k, x) in v.as_object().into_iter().flatten() {
                let shown = match x {
                    Value::Array(a) => a.iter().map(fmt_value).collect::<Vec<_>>().join(" "),
                    other => fmt_value(other),
                };
                md += &format!("| {k} | `{}` |\n", shown.replace('|', "\\|"));
            }
        }
        Err(_) => md += "No `run.json`.\n",
    }
    md += "\n## Pins\n\n";
    match std::fs::read_to_string(run.join("pins.json")) {
        Ok(t) => {
            let v: Value = serde_json::from_str(&t)
                .with_context(|| format!("{}: not JSON", run.join("pins.json").display()))?;
            md += "| what | path | sha256 |\n|---|---|---|\n";
            for p in v
                .get("pins")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = |k: &str| p.get(k).map(fmt_value).unwrap_or_default();
                md += &format!("| {} | `{}` | `{}` |\n", f("what"), f("path"), f("sha256"));
            }
        }
        Err(_) => md += "No `pins.json`.\n",
    }
    md += "\n## Final figures\n\n";
    if let Some(t) = &metrics.last_train {
        md += &format!(
            "Last training step {}: loss {}, grad norm {}.\n\n",
            t.get("step").map(fmt_value).unwrap_or_default(),
            t.get("loss").map(fmt_value).unwrap_or_else(|| "n/a".into()),
            t.get("grad_norm")
                .map(fmt_value)
                .unwrap_or_else(|| "n/a".into())
        );
    }
    if let Some(e) = &metrics.last_eval {
        md += &format!(
            "Last evaluation, step {}:\n\n| metric | value |\n|---|---:|\n",
            e.get("step").map(fmt_value).unwrap_or_default()
        );
        if let Some(x) = e.get("val_loss") {
            md += &format!("| val_loss | {} |\n", fmt_value(x));
        }
        for (k, x) in e
            .get("metrics")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            md += &format!("| {k} | {} |\n", fmt_value(x));
        }
        md.push('\n');
    }
    md += "## Scores\n\n";
    md += &scores_markdown(run)?;
    md += "\n## Experiment (resolved)\n\n";
    match std::fs::read_to_string(run.join("experiment.yaml")) {
        Ok(t) => md += &format!("```yaml\n{}\n```\n", t.trim_end()),
        Err(_) => md += "No `experiment.yaml`.\n",
    }
    Ok(md)
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once('x')
        .with_context(|| format!("--size {s:?}: expected WIDTHxHEIGHT"))?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    if !(200..=8000).contains(&w) || !(150..=8000).contains(&h) {
        bail!("--size {s}: expected 200..8000 x 150..8000 pixels");
    }
    Ok((w, h))
}

pub fn run(args: &PlotArgs) -> Result<std::process::ExitCode> {
    font::register();
    let size = parse_size(&args.size)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.runs[0].join("plots"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut names = Vec::new();
    let mut metrics = Vec::new();
    for run in &args.runs {
        metrics.push(read_metrics(run)?);
        names.push(run_name(run));
    }
    let charts = charts(&names, &metrics);
    let mut drawn = Vec::new();
    for chart in &charts {
        write_chart(&out, chart, size)?;
        drawn.push(chart.file);
        println!(
            "{}/{}.png, .svg: {} series",
            out.display(),
            chart.file,
            chart.series.len()
        );
    }
    for (i, run) in args.runs.iter().enumerate() {
        let md = report(run, &names[i], &metrics[i], &out, &drawn)?;
        let path = run.join("report.md");
        std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
