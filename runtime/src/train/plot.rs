//! The loss curve of a run, drawn with plotters as PNG and SVG: training
//! loss per logged step and, where evaluated, validation loss.
//!
//! Text needs a font; plotters reads it from memory, so the first usable
//! system font (DejaVu, Liberation, Noto, Helvetica, Arial…) is registered.
//! Without one, the plot is drawn without labels and the caller is told.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// Candidate font files, first found wins.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font once; whether one was found.
fn font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        for f in FONTS {
            if let Ok(bytes) = std::fs::read(f) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Points to draw: `(step, loss)` for training and validation.
#[derive(Debug, Default, Clone)]
pub struct Curves {
    pub train: Vec<(f64, f64)>,
    pub eval: Vec<(f64, f64)>,
}

impl Curves {
    /// Reads `metrics.jsonl`.
    pub fn read(metrics: &Path) -> Curves {
        let text = std::fs::read_to_string(metrics).unwrap_or_default();
        let mut c = Curves::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(step) = v.get("step").and_then(|s| s.as_f64()) else { continue };
            if let Some(l) = v.get("loss").and_then(|l| l.as_f64()) {
                c.train.push((step, l));
            }
            if let Some(l) = v.get("eval_loss").and_then(|l| l.as_f64()) {
                c.eval.push((step, l));
            }
        }
        c
    }
}

/// Draws `curves` to `dir/loss.png` and `dir/loss.svg`; returns the paths,
/// and whether labels could be drawn.
pub fn draw(curves: &Curves, title: &str, dir: &Path) -> Result<(Vec<PathBuf>, bool), String> {
    let labelled = font();
    let png = dir.join("loss.png");
    let svg = dir.join("loss.svg");
    {
        let root = BitMapBackend::new(&png, (960, 600)).into_drawing_area();
        chart(&root, curves, title, labelled).map_err(|e| format!("cannot draw {}: {e}", png.display()))?;
        root.present().map_err(|e| format!("cannot write {}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, (960, 600)).into_drawing_area();
        chart(&root, curves, title, labelled).map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
        root.present().map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    }
    Ok((vec![png, svg], labelled))
}

fn chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    c: &Curves,
    title: &str,
    labelled: bool,
) -> Result<(), Box<dyn std::error::Error + 'static>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let all = || c.train.iter().chain(&c.eval);
    let x_max = all().map(|p| p.0).fold(1.0, f64::max);
    let finite = || all().map(|p| p.1).filter(|v| v.is_finite());
    let y_max = finite().fold(f64::MIN, f64::max);
    let y_min = finite().fold(f64::MAX, f64::min);
    let (y_min, y_max) = if y_min <= y_max { (y_min, y_max) } else { (0.0, 1.0) };
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if labelled {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))?;
    let mut mesh = chart.configure_mesh();
    if labelled {
        mesh.x_desc("step").y_desc("loss (nats/token)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let train = chart.draw_series(LineSeries::new(c.train.iter().copied(), &BLUE))?;
    if labelled {
        train.label("train").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    let eval = chart.draw_series(LineSeries::new(c.eval.iter().copied(), RED.stroke_width(2)))?;
    if labelled {
        eval.label("validation").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    Ok(())
}
