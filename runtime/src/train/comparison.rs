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
}
