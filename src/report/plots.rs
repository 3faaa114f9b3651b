//! SVG plots of a run (plotters): accuracy against step for a learned method, its λ as a
//! task × layer heatmap, and learned versus fixed merges per task. Each file is rendered in
//! memory and written atomically.

use std::path::Path;

use plotters::prelude::*;

use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(
        path.display().to_string(),
        format!("could not draw the plot: {e}"),
    )
}

fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(
        DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        draw(root.clone()).map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    write_atomic(path, svg.as_bytes())
}

fn colour(i: usize) -> RGBColor {
    // Tableau 10: distinct, colour-blind friendly enough for a handful of lines.
    const C: [(u8, u8, u8); 10] = [
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
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// One series of (step, accuracy in [0, 1]) points.
pub struct Curve {
    /// Legend label.
    pub name: String,
    /// Points, by step.
    pub points: Vec<(f64, f64)>,
}

/// Accuracy (%) against learning step: one thin line per task and a thick one for the average.
pub fn accuracy_curves(path: &Path, title: &str, tasks: &[Curve], average: &Curve) -> Result<()> {
    let max_step = tasks
        .iter()
        .chain([average])
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    render(path, (900, 540), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, 0f64..100f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("test accuracy (%)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, c) in tasks.iter().enumerate() {
            let col = colour(i);
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().map(|&(x, y)| (x, 100.0 * y)),
                    col.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(c.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                });
        }
        chart
            .draw_series(LineSeries::new(
                average.points.iter().map(|&(x, y)| (x, 100.0 * y)),
                BLACK.stroke_width(4),
            ))
            .map_err(|e| e.to_string())?
            .label(average.name.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(4)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// λ as a heatmap: one row per task, one column per unit, white (0) to dark blue (1), with the
/// value range in the title.
pub fn lambda_heatmap(
    path: &Path,
    title: &str,
    tasks: &[String],
    units: usize,
    lambda: &[f32],
) -> Result<()> {
    let k = tasks.len();
    let (lo, hi) = lambda
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let width = (240 + 10 * units as u32).clamp(600, 1800);
    render(path, (width, 140 + 36 * k as u32), |root| {
        let caption = format!("{title} (λ from {lo:.2} to {hi:.2}; white 0, dark blue 1)");
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(110)
            .build_cartesian_2d(0f64..units as f64, 0f64..k as f64)
            .map_err(|e| e.to_string())?;
        let names = tasks.to_vec();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("unit (embeddings … blocks … projection)")
            .y_labels(2 * k + 1)
            .y_label_formatter(&|y| {
                let i = (k as f64 - y - 0.5).round();
                if (y.fract() - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < k {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        let cells = (0..k).flat_map(|t| (0..units).map(move |u| (t, u)));
        chart
            .draw_series(cells.map(|(t, u)| {
                let v = lambda[t * units + u].clamp(0.0, 1.0) as f64;
                let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * v).round() as u8;
                let c = RGBColor(mix(255, 8), mix(255, 48), mix(255, 107));
                let row = (k - 1 - t) as f64;
                Rectangle::new([(u as f64, row), (u as f64 + 1.0, row + 1.0)], c.filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Grouped bars: accuracy (%) per task for each method.
pub fn method_bars(
    path: &Path,
    title: &str,
    tasks: &[String],
    methods: &[(String, Vec<f64>)],
) -> Result<()> {
    let k = tasks.len();
    let m = methods.len().max(1);
    // Headroom above 100 % holds the legend, so it never hides a bar.
    let top = 104.0 + 5.5 * m as f64;
    render(path, ((160 + 90 * k as u32).max(700), 620), |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..k as f64, 0f64..top)
            .map_err(|e| e.to_string())?;
        let names = tasks.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * k + 1)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if (x.fract() - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < k {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("test accuracy (%)")
            .y_label_formatter(&|y| {
                if *y <= 100.0 {
                    format!("{y:.0}")
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        let bar = 0.8 / m as f64;
        for (j, (name, acc)) in methods.iter().enumerate() {
            let col = colour(j);
            chart
                .draw_series(acc.iter().enumerate().map(|(t, a)| {
                    let x0 = t as f64 + 0.1 + j as f64 * bar;
                    Rectangle::new([(x0, 0.0), (x0 + bar * 0.92, 100.0 * a)], col.filled())
                }))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_files_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = vec!["alpha".to_string(), "beta".to_string()];
        let curve = |name: &str, y: f64| Curve {
            name: name.into(),
            points: vec![(0.0, y), (10.0, y + 0.1)],
        };
        let p = dir.path().join("acc.svg");
        accuracy_curves(
            &p,
            "t",
            &[curve("alpha", 0.5), curve("beta", 0.6)],
            &curve("average", 0.55),
        )
        .unwrap();
        let h = dir.path().join("lambda.svg");
        lambda_heatmap(&h, "λ", &tasks, 3, &[0.0, 0.5, 1.0, 0.3, 0.3, 0.3]).unwrap();
        let b = dir.path().join("bars.svg");
        method_bars(
            &b,
            "m",
            &tasks,
            &[("ta".into(), vec![0.5, 0.6]), ("am".into(), vec![0.7, 0.8])],
        )
        .unwrap();
        for f in [p, h, b] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(
                text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
                "{}",
                f.display()
            );
            assert!(
                text.contains("alpha") || text.contains("λ"),
                "{}",
                f.display()
            );
        }
    }
}
