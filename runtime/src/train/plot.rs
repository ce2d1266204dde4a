//! The curves of a run, drawn with plotters as PNG and SVG from
//! `metrics.jsonl`: `loss.*` (training loss per logged step, validation
//! loss as marked points) and `training.*`, four panels — loss, learning
//! rate, gradient norm (before clipping) and every trainable gain.
//!
//! Text needs a font, and a GPU box or a container often has none: blkc
//! embeds DejaVu Sans (Bitstream Vera licence, `runtime/assets/`), so the
//! plots carry their labels everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// DejaVu Sans 2.37 (see `runtime/assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the embedded font as plotters' sans-serif (once).
pub(super) fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font; a failure would only cost labels.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub type Series = Vec<(f64, f64)>;

/// A named, coloured series to draw.
type Line<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

/// Ten colours told apart at a glance (the common "category 10" set),
/// then plotters' palette: line `i` of a plot.
pub fn colour(i: usize) -> RGBColor {
    const TEN: [(u8, u8, u8); 10] = [
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
    match TEN.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => Palette99::pick(i).to_rgba().rgb_color(),
    }
}

/// Points to draw, by step.
#[derive(Debug, Default, Clone)]
pub struct Curves {
    pub train: Series,
    pub eval: Series,
    pub lr: Series,
    pub grad_norm: Series,
    /// Seconds since the run started, per logged step.
    pub elapsed: Series,
    /// Training throughput, per logged step.
    pub tokens_per_s: Series,
    /// Every trainable gain by its metrics name (`layer.name`).
    pub gains: BTreeMap<String, Series>,
}

impl Curves {
    /// Reads `metrics.jsonl`.
    pub fn read(metrics: &Path) -> Curves {
        let text = std::fs::read_to_string(metrics).unwrap_or_default();
        let mut c = Curves::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(step) = v.get("step").and_then(|s| s.as_f64()) else { continue };
            let push = |key: &str, to: &mut Series| {
                if let Some(x) = v.get(key).and_then(|x| x.as_f64()) {
                    to.push((step, x));
                }
            };
            push("loss", &mut c.train);
            push("eval_loss", &mut c.eval);
            push("lr", &mut c.lr);
            push("grad_norm", &mut c.grad_norm);
            push("elapsed_s", &mut c.elapsed);
            push("tokens_per_s", &mut c.tokens_per_s);
            if let Some(gains) = v.get("gains").and_then(|g| g.as_object()) {
                for (name, g) in gains {
                    if let Some(g) = g.as_f64() {
                        c.gains.entry(name.clone()).or_default().push((step, g));
                    }
                }
            }
        }
        c
    }
}

/// Draws `loss.{png,svg}` and `training.{png,svg}` into `dir`; returns the
/// paths written.
pub fn draw(curves: &Curves, title: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    font();
    let mut written = Vec::new();
    for (name, size, panels) in [("loss", (960, 600), false), ("training", (1280, 900), true)] {
        let png = dir.join(format!("{name}.png"));
        render(BitMapBackend::new(&png, size).into_drawing_area(), curves, title, panels)
            .map_err(|e| format!("cannot draw {}: {e}", png.display()))?;
        let svg = dir.join(format!("{name}.svg"));
        render(SVGBackend::new(&svg, size).into_drawing_area(), curves, title, panels)
            .map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
        written.extend([png, svg]);
    }
    Ok(written)
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Curves, title: &str, panels: bool) -> Drawn
where
    DB::ErrorType: 'static,
{
    if panels {
        all_panels(&root, c, title)?;
    } else {
        loss(&root, c, title)?;
    }
    root.present()?;
    Ok(())
}

type Drawn = Result<(), Box<dyn std::error::Error + 'static>>;

fn loss<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &Curves, title: &str) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let lines = [("train", c.train.as_slice(), BLUE), ("validation", c.eval.as_slice(), RED)];
    panel(root, title, "loss (nats/token)", &lines, Scale::Linear)
}

fn all_panels<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &Curves, title: &str) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    let losses = [("train", c.train.as_slice(), BLUE), ("validation", c.eval.as_slice(), RED)];
    panel(&areas[0], "loss", "nats/token", &losses, Scale::Linear)?;
    panel(&areas[1], "learning rate", "lr", &[("lr", c.lr.as_slice(), BLACK)], Scale::Linear)?;
    let norm = [("before clipping", c.grad_norm.as_slice(), MAGENTA)];
    panel(&areas[2], "gradient norm", "global L2 norm", &norm, Scale::Log)?;
    let gains: Vec<Line> =
        c.gains.iter().enumerate().map(|(i, (name, s))| (name.as_str(), s.as_slice(), colour(i))).collect();
    panel(&areas[3], "trainable gains", "value (mean over heads)", &gains, Scale::Linear)
}

#[derive(Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    Log,
}

trait Rgb {
    fn rgb_color(&self) -> RGBColor;
}

impl Rgb for RGBAColor {
    fn rgb_color(&self) -> RGBColor {
        RGBColor(self.0, self.1, self.2)
    }
}

/// One chart: a line per series; a series of a single point, or the
/// validation loss, is drawn as marked points so that it shows.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    scale: Scale,
) -> Drawn
where
    DB::ErrorType: 'static,
{
    let points = || lines.iter().flat_map(|(_, s, _)| s.iter()).filter(|p| p.1.is_finite());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let keep = |y: f64| scale == Scale::Linear || y > 0.0;
    let (lo, hi) =
        points().map(|p| p.1).filter(|y| keep(*y)).fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let mut b = ChartBuilder::on(area);
    b.margin(16).caption(title, ("sans-serif", 20)).x_label_area_size(36).y_label_area_size(70);
    // A legend names the lines where there are several, or gains (up to a
    // readable number of them).
    let show = (lines.len() > 1 || title.contains("gains")) && lines.len() <= 24;
    match scale {
        Scale::Linear => {
            let pad = ((hi - lo) * 0.05).max(1e-6 * hi.abs().max(1.0));
            let mut chart = b.build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
            chart.configure_mesh().x_desc("step").y_desc(y_desc).draw()?;
            series(&mut chart, lines, show)
        }
        Scale::Log => {
            let mut chart = b.build_cartesian_2d(0.0..x_max, (lo * 0.8..hi * 1.25).log_scale())?;
            chart.configure_mesh().x_desc("step").y_desc(y_desc).draw()?;
            let positive: Vec<Series> =
                lines.iter().map(|(_, s, _)| s.iter().copied().filter(|p| p.1 > 0.0).collect()).collect();
            let refs: Vec<Line> = lines.iter().zip(&positive).map(|((n, _, c), s)| (*n, s.as_slice(), *c)).collect();
            series(&mut chart, &refs, show)
        }
    }
}

fn series<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: &[Line],
    legend: bool,
) -> Drawn
where
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (name, s, colour) in lines {
        let colour = *colour;
        let marked = s.len() == 1 || *name == "validation";
        let drawn = chart.draw_series(LineSeries::new(s.iter().copied(), colour.stroke_width(2)))?;
        if legend {
            drawn.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        if marked {
            chart.draw_series(s.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
    }
    if legend {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_panel_is_drawn_with_labels_and_a_lone_point_shows() {
        let dir = std::env::temp_dir().join(format!("blkc-plot-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let metrics = dir.join("metrics.jsonl");
        let lines: String = (1..=20)
            .map(|s| {
                let eval = if s == 20 { ", \"eval_loss\": 4.5" } else { "" };
                format!(
                    "{{\"step\": {s}, \"loss\": {}, \"lr\": {}, \"grad_norm\": {}, \"gains\": {{\"0.beta_ff\": {}}}{eval}}}\n",
                    5.0 - f64::from(s) * 0.1,
                    1e-3 * f64::from(s) / 20.0,
                    2.0 / f64::from(s),
                    0.1 + f64::from(s) * 0.001
                )
            })
            .collect();
        let _ = std::fs::write(&metrics, lines);
        let c = Curves::read(&metrics);
        assert_eq!((c.train.len(), c.eval.len(), c.lr.len(), c.grad_norm.len()), (20, 1, 20, 20));
        assert_eq!(c.gains["0.beta_ff"].len(), 20);
        let written = draw(&c, "tiny (sas_p)", &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written.len(), 4);
        let svg = std::fs::read_to_string(dir.join("training.svg")).unwrap_or_default();
        for label in ["learning rate", "gradient norm", "trainable gains", "0.beta_ff", "step"] {
            assert!(svg.contains(label), "training.svg lacks `{label}`");
        }
        let loss_svg = std::fs::read_to_string(dir.join("loss.svg")).unwrap_or_default();
        assert!(loss_svg.contains("<circle"), "the single validation point is marked");
        let png = std::fs::read(dir.join("loss.png")).unwrap_or_default();
        assert_eq!(&png[..4], b"\x89PNG");
        // Labels in the bitmap: the embedded font puts dark pixels in the
        // caption band (without a font, as on a GPU box before, it stayed blank).
        let (w, h) = (960u32, 600u32);
        let mut pixels = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            loss(&root, &c, "tiny (sas_p)").unwrap_or_else(|e| panic!("{e}"));
            root.present().unwrap_or_else(|e| panic!("{e}"));
        }
        let band = &pixels[..(w * 40 * 3) as usize];
        let dark = band.chunks(3).filter(|p| p.iter().all(|&c| c < 96)).count();
        assert!(dark > 100, "the caption has {dark} dark pixels: no text was drawn");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
