//! The picture of a `blkc compare`: per variant, the mean over its seeds
//! of the training and validation loss, against step and against wall
//! time, with the seeds' min–max as a band; one colour per variant, a
//! variant the signal check rejects marked in the legend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::plot::{font, Curves, Series};

/// One variant's runs (a `Curves` per seed).
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    pub rejected: bool,
    pub seeds: Vec<Curves>,
}

/// A mean curve and its band: `(x, mean, min, max)` per step.
type Banded = Vec<(f64, f64, f64, f64)>;

/// The seeds' values of one series aligned by step: mean, min and max at
/// every step all seeds logged; with `time`, x is the mean elapsed seconds
/// at that step instead of the step.
fn banded(seeds: &[Curves], pick: fn(&Curves) -> &Series, time: bool) -> Banded {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for c in seeds {
        for &(step, y) in pick(c).iter().filter(|p| p.1.is_finite()) {
            by_step.entry(step as u64).or_default().push(y);
        }
    }
    let elapsed: Vec<BTreeMap<u64, f64>> =
        seeds.iter().map(|c| c.elapsed.iter().map(|&(s, t)| (s as u64, t)).collect()).collect();
    by_step
        .into_iter()
        .filter(|(_, ys)| ys.len() == seeds.len())
        .filter_map(|(step, ys)| {
            let x = match time {
                false => step as f64,
                true => {
                    let ts: Vec<f64> = elapsed.iter().filter_map(|e| e.get(&step).copied()).collect();
                    if ts.len() != seeds.len() {
                        return None;
                    }
                    ts.iter().sum::<f64>() / ts.len() as f64
                }
            };
            let mean = ys.iter().sum::<f64>() / ys.len() as f64;
            let (lo, hi) = ys.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
            Some((x, mean, lo, hi))
        })
        .collect()
}

/// Draws `compare.{png,svg}` into `dir`: four panels, training and
/// validation loss against step and against seconds.
pub fn draw(variants: &[Variant], title: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    font();
    let png = dir.join("compare.png");
    render(BitMapBackend::new(&png, (1280, 900)).into_drawing_area(), variants, title)
        .map_err(|e| format!("cannot draw {}: {e}", png.display()))?;
    let svg = dir.join("compare.svg");
    render(SVGBackend::new(&svg, (1280, 900)).into_drawing_area(), variants, title)
        .map_err(|e| format!("cannot draw {}: {e}", svg.display()))?;
    Ok(vec![png, svg])
}

type Drawn = Result<(), Box<dyn std::error::Error + 'static>>;

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, variants: &[Variant], title: &str) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((2, 2));
    let train: fn(&Curves) -> &Series = |c| &c.train;
    let eval: fn(&Curves) -> &Series = |c| &c.eval;
    let panels = [
        ("training loss", "step", train, false),
        ("validation loss", "step", eval, false),
        ("training loss", "seconds", train, true),
        ("validation loss", "seconds", eval, true),
    ];
    for (area, (name, x_desc, pick, time)) in areas.iter().zip(panels) {
        let curves: Vec<(String, Banded, RGBColor)> = variants
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let label = if v.rejected { format!("{} (rejected)", v.name) } else { v.name.clone() };
                (label, banded(&v.seeds, pick, time), super::plot::colour(i))
            })
            .collect();
        panel(area, name, x_desc, &curves)?;
    }
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    curves: &[(String, Banded, RGBColor)],
) -> Drawn
where
    DB::ErrorType: 'static,
{
    let points = || curves.iter().flat_map(|(_, b, _)| b.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.2), b.max(p.3)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .caption(title, ("sans-serif", 20))
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
    chart.configure_mesh().x_desc(x_desc).y_desc("nats/token").draw()?;
    for (label, band, colour) in curves {
        let colour = *colour;
        let edge: Vec<(f64, f64)> =
            band.iter().map(|p| (p.0, p.2)).chain(band.iter().rev().map(|p| (p.0, p.3))).collect();
        chart.draw_series(std::iter::once(Polygon::new(edge, colour.mix(0.2).filled())))?;
        let mean = band.iter().map(|p| (p.0, p.1));
        chart
            .draw_series(LineSeries::new(mean, colour.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        if band.len() < 20 {
            chart.draw_series(band.iter().map(|p| Circle::new((p.0, p.1), 3, colour.filled())))?;
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

/// One variant of a sweep: the line it belongs to (its file and the other
/// sweeps' values), the swept value, and its seeds' final validation
/// losses.
#[derive(Debug, Clone)]
pub struct Swept {
    pub line: String,
    pub x: f64,
    pub losses: Vec<f64>,
}

/// Draws `sweep-KEY.{png,svg}` into `dir`: the final validation loss
/// against the value of `key`, the mean over the seeds with their min–max
/// as a bar, one line per file (and value of the other sweeps). The axis
/// is logarithmic where the values are positive and span a factor of ten
/// or more (a learning rate's). `None` where there is nothing to draw
/// (fewer than two values with a finite loss).
pub fn draw_sweep(key: &str, points: &[Swept], dir: &Path) -> Result<Option<Vec<PathBuf>>, String> {
    let mut lines: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
    for p in points {
        let ys: Vec<f64> = p.losses.iter().copied().filter(|y| y.is_finite()).collect();
        if ys.is_empty() || !p.x.is_finite() {
            continue;
        }
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        let (lo, hi) = ys.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        lines.entry(&p.line).or_default().push((p.x, mean, lo, hi));
    }
    lines.values_mut().for_each(|l| l.sort_by(|a, b| a.0.total_cmp(&b.0)));
    let xs: Vec<f64> = lines.values().flatten().map(|p| p.0).collect();
    let (x_lo, x_hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if xs.len() < 2 || x_lo >= x_hi {
        return Ok(None);
    }
    font();
    let lines: Vec<(&str, Banded)> = lines.into_iter().collect();
    let logarithmic = x_lo > 0.0 && x_hi / x_lo >= 10.0;
    let name = format!("sweep-{key}");
    let mut written = Vec::new();
    for ext in ["png", "svg"] {
        let path = dir.join(format!("{name}.{ext}"));
        let drawn = match ext {
            "png" => sweep_panel(BitMapBackend::new(&path, (960, 640)).into_drawing_area(), key, &lines, logarithmic),
            _ => sweep_panel(SVGBackend::new(&path, (960, 640)).into_drawing_area(), key, &lines, logarithmic),
        };
        drawn.map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(Some(written))
}

fn sweep_panel<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    key: &str,
    lines: &[(&str, Banded)],
    logarithmic: bool,
) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let points = || lines.iter().flat_map(|(_, b)| b.iter());
    let (x_lo, x_hi) = points().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (lo, hi) = points().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.2), b.max(p.3)));
    let pad = ((hi - lo) * 0.08).max(1e-6);
    let title = format!("blkc compare: final validation loss against {key}");
    let mut chart = ChartBuilder::on(&root);
    chart.margin(20).caption(&title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(70);
    // The x range widened a little either side, on the axis's own scale.
    let (a, b) = match logarithmic {
        true => (x_lo / (x_hi / x_lo).powf(0.05), x_hi * (x_hi / x_lo).powf(0.05)),
        false => (x_lo - (x_hi - x_lo) * 0.05, x_hi + (x_hi - x_lo) * 0.05),
    };
    let y = (lo - pad)..(hi + pad);
    // A logarithmic axis marks the values swept (its own marks crowd
    // each decade), each written short.
    let mut values: Vec<f64> = points().map(|p| p.0).collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    let short = |x: &f64| match x {
        x if x.fract() == 0.0 && x.abs() < 1e9 => format!("{x:.0}"),
        x if x.abs() < 1e-2 => format!("{x:e}"),
        x => format!("{x}"),
    };
    macro_rules! plot {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart.configure_mesh().x_desc(key).y_desc("nats/token").x_label_formatter(&short).draw()?;
            for (i, (label, band)) in lines.iter().enumerate() {
                let colour = super::plot::colour(i);
                chart
                    .draw_series(LineSeries::new(band.iter().map(|p| (p.0, p.1)), colour.stroke_width(2)))?
                    .label(*label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
                chart.draw_series(band.iter().map(|p| Circle::new((p.0, p.1), 4, colour.filled())))?;
                chart.draw_series(
                    band.iter().map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], colour.stroke_width(1))),
                )?;
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }};
    }
    match logarithmic {
        true => plot!(chart.build_cartesian_2d((a..b).log_scale().with_key_points(values), y)?),
        false => plot!(chart.build_cartesian_2d(a..b, y)?),
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curves(offset: f64) -> Curves {
        let train: Series = (1..=10).map(|s| (f64::from(s), 5.0 - f64::from(s) * 0.1 + offset)).collect();
        let eval: Series = vec![(5.0, 4.6 + offset), (10.0, 4.1 + offset)];
        let elapsed: Series = (1..=10).map(|s| (f64::from(s), f64::from(s) * 0.5)).collect();
        Curves { train, eval, elapsed, ..Curves::default() }
    }

    /// Seeds are aligned by step into a mean and a min–max band, against
    /// step or mean elapsed time; the picture names every variant and
    /// marks a rejected one.
    #[test]
    fn seeds_become_a_mean_and_a_band_and_every_variant_is_named() {
        let seeds = [curves(0.0), curves(0.2)];
        let b = banded(&seeds, |c| &c.train, false);
        assert_eq!(b.len(), 10);
        let (x, mean, lo, hi) = b[0];
        assert_eq!(x, 1.0);
        assert!((mean - 5.0).abs() < 1e-9 && (lo - 4.9).abs() < 1e-9 && (hi - 5.1).abs() < 1e-9, "{:?}", b[0]);
        let t = banded(&seeds, |c| &c.eval, true);
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2.5, 5.0], "x is the mean elapsed seconds");
        let dir = std::env::temp_dir().join(format!("blkc-compare-plot-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let variants = [
            Variant { name: "preln".into(), rejected: false, seeds: seeds.to_vec() },
            Variant { name: "naive".into(), rejected: true, seeds: vec![curves(0.5)] },
        ];
        let written = draw(&variants, "compare", &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written.len(), 2);
        let svg = std::fs::read_to_string(dir.join("compare.svg")).unwrap_or_default();
        for label in ["preln", "naive (rejected)", "validation loss", "seconds"] {
            assert!(svg.contains(label), "compare.svg lacks `{label}`");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A sweep's picture: one line per file, the swept values on a log
    /// axis when they span a factor of ten; nothing drawn from one value.
    #[test]
    fn a_sweep_is_drawn_against_its_values() {
        let dir = std::env::temp_dir().join(format!("blkc-sweep-plot-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let point = |line: &str, x: f64, y: f64| Swept { line: line.into(), x, losses: vec![y, y + 0.1] };
        let points = [
            point("preln", 1e-3, 4.0),
            point("preln", 1e-2, 3.5),
            point("sas-p", 1e-3, 4.2),
            point("sas-p", 3e-2, f64::NAN),
        ];
        let written = draw_sweep("lr", &points, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written.map(|w| w.len()), Some(2));
        let svg = std::fs::read_to_string(dir.join("sweep-lr.svg")).unwrap_or_default();
        for label in ["preln", "sas-p", "against lr", "nats/token"] {
            assert!(svg.contains(label), "sweep-lr.svg lacks `{label}`");
        }
        let one = [point("preln", 8.0, 4.0), point("sas-p", 8.0, 4.1)];
        assert!(draw_sweep("local.window", &one, &dir).unwrap_or_else(|e| panic!("{e}")).is_none());
        assert!(!dir.join("sweep-local.window.svg").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
