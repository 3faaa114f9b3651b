//! SVG plots of a run (plotters): accuracy against step for a learned method, its λ as a
//! task × layer heatmap, and learned versus fixed merges per task. Each file is rendered in
//! memory and written atomically.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::output::write_atomic;

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

/// Accuracy (%) against learning step: one thin line per task and a thick one for the average,
/// the legend beside the plot.
pub fn accuracy_curves(path: &Path, title: &str, tasks: &[Curve], average: &Curve) -> Result<()> {
    let max_step = tasks
        .iter()
        .chain([average])
        .flat_map(|c| c.points.iter().map(|p| p.0.round() as i64))
        .fold(1, i64::max);
    let names: Vec<&str> = tasks.iter().map(|c| c.name.as_str()).collect();
    let legend_w = legend_width(names.iter().copied().chain([average.name.as_str()]));
    render(path, (760 + legend_w, 500), |root| {
        let (plot, side) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0i64..max_step, 0f64..100f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("test accuracy (%)")
            .x_label_formatter(&|x| x.to_string())
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for (i, c) in tasks.iter().enumerate() {
            let col = colour(i);
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().map(|&(x, y)| (x.round() as i64, 100.0 * y)),
                    col.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            entries.push((c.name.clone(), col, 2));
        }
        chart
            .draw_series(LineSeries::new(
                average
                    .points
                    .iter()
                    .map(|&(x, y)| (x.round() as i64, 100.0 * y)),
                BLACK.stroke_width(4),
            ))
            .map_err(|e| e.to_string())?;
        entries.push((average.name.clone(), BLACK, 4));
        let items: Vec<LegendItem> = entries
            .into_iter()
            .map(|(name, col, w)| LegendItem::Line(name, col, w))
            .collect();
        draw_legend(&side, &items, 56)
    })
}

/// A text style anchored at a side of its position.
fn anchored<'a>(font: &FontDesc<'a>, h: HPos, v: VPos) -> TextStyle<'a> {
    TextStyle::from(font.clone()).pos(Pos::new(h, v))
}

/// A legend entry: a line of a width, or a filled box.
enum LegendItem {
    Line(String, RGBColor, u32),
    Box(String, RGBColor),
}

/// Pixels a legend of these labels needs beside a plot.
fn legend_width<'a>(labels: impl Iterator<Item = &'a str>) -> u32 {
    let longest = labels.map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (60 + 8 * longest).clamp(140, 420)
}

/// Draws a legend in its own area beside the plot, so it never hides data.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    items: &[LegendItem],
    top: i32,
) -> std::result::Result<(), String> {
    let font = ("sans-serif", 14).into_font();
    for (i, item) in items.iter().enumerate() {
        let y = top + 24 * i as i32;
        let label = match item {
            LegendItem::Line(label, col, w) => {
                area.draw(&PathElement::new(
                    vec![(8, y), (34, y)],
                    col.stroke_width(*w),
                ))
                .map_err(|e| e.to_string())?;
                label
            }
            LegendItem::Box(label, col) => {
                area.draw(&Rectangle::new([(12, y - 7), (30, y + 7)], col.filled()))
                    .map_err(|e| e.to_string())?;
                label
            }
        };
        area.draw(&Text::new(
            label.clone(),
            (42, y),
            anchored(&font, HPos::Left, VPos::Center),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where a unit sits in the forward pass (stage, block, part, weight before bias), so the
/// heatmap's columns read in the order the model computes, whatever the checkpoint's order.
fn forward_position(name: &str) -> (u8, usize, usize, u8) {
    let part = |parts: &[&str]| {
        parts
            .iter()
            .position(|p| name.contains(p))
            .unwrap_or(parts.len())
    };
    let wb = if name.ends_with("weight") {
        0
    } else if name.ends_with("bias") {
        1
    } else {
        2
    };
    if let Some(pos) = name.find(".layers.") {
        let digits: String = name[pos + ".layers.".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let inner = [
            "layer_norm1",
            "q_proj",
            "in_proj",
            "k_proj",
            "v_proj",
            "out_proj",
            "layer_norm2",
            "fc1",
            "fc2",
        ];
        return (1, digits.parse().unwrap_or(0), part(&inner), wb);
    }
    let embeddings = [
        "class_embedding",
        "patch_embedding",
        "position_embedding",
        "pre_layrnorm",
    ];
    if name == "embeddings" || embeddings.iter().any(|e| name.contains(e)) {
        return (0, 0, part(&embeddings), wb);
    }
    (2, 0, part(&["post_layernorm", "visual_projection"]), wb)
}

/// A unit's group (`embeddings`, `block 3`, `head`; `all` for task-wise λ) and its short name
/// within the group (`qkv.w`, `fc1.b`, `pos`).
fn unit_label(name: &str) -> (String, String) {
    const SHORT: [(&str, &str); 16] = [
        ("self_attn.in_proj", "qkv"),
        ("self_attn.q_proj", "q"),
        ("self_attn.k_proj", "k"),
        ("self_attn.v_proj", "v"),
        ("self_attn.out_proj", "out"),
        ("layer_norm1", "ln1"),
        ("layer_norm2", "ln2"),
        ("mlp.fc1", "fc1"),
        ("mlp.fc2", "fc2"),
        ("class_embedding", "cls"),
        ("patch_embedding", "patch"),
        ("position_embedding", "pos"),
        ("pre_layrnorm", "pre-ln"),
        ("post_layernorm", "post-ln"),
        ("visual_projection", "proj"),
        ("embeddings.", ""),
    ];
    let shorten = |rest: &str| {
        let mut s = rest.trim_start_matches("vision_model.").to_string();
        for (long, short) in SHORT {
            s = s.replace(long, short);
        }
        s.replace(".weight", ".w").replace(".bias", ".b")
    };
    if name == "all" {
        return ("all".into(), String::new());
    }
    let (stage, block, _, _) = forward_position(name);
    match stage {
        1 => {
            let rest = name
                .split(".layers.")
                .nth(1)
                .map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()))
                .unwrap_or_default()
                .trim_start_matches('.');
            (format!("block {block}"), shorten(rest))
        }
        0 => ("embeddings".into(), shorten(name)),
        _ => ("head".into(), shorten(name)),
    }
}

/// The drawing area of a whole plot.
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn text(area: &Area<'_>, s: impl Into<String>, at: (i32, i32), style: TextStyle<'_>) -> Drawn {
    area.draw(&Text::new(s.into(), at, style))
        .map_err(|e| e.to_string())
}

fn rect(area: &Area<'_>, corners: [(i32, i32); 2], style: ShapeStyle) -> Drawn {
    area.draw(&Rectangle::new(corners, style))
        .map_err(|e| e.to_string())
}

fn line(area: &Area<'_>, points: Vec<(i32, i32)>, style: ShapeStyle) -> Drawn {
    area.draw(&PathElement::new(points, style))
        .map_err(|e| e.to_string())
}

/// What a drawing call returns.
type Drawn = std::result::Result<(), String>;

/// White (0) to dark blue (1).
fn blue(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * v).round() as u8;
    RGBColor(mix(255, 8), mix(255, 48), mix(255, 107))
}

/// The cells of a heatmap: `cols` × `rows` cells of `cell` × `row_h` pixels from (x0, y0).
struct Grid {
    x0: i32,
    y0: i32,
    cell: i32,
    row_h: i32,
    cols: usize,
    rows: usize,
}

impl Grid {
    fn x(&self, col: usize) -> i32 {
        self.x0 + self.cell * col as i32
    }
    fn y_end(&self) -> i32 {
        self.y0 + self.row_h * self.rows as i32
    }

    /// One row per task: its name, then its λ in the columns' order (`lambda` row-major, by
    /// unit); wide cells get their value written in.
    fn cells(&self, area: &Area<'_>, tasks: &[String], order: &[usize], lambda: &[f32]) -> Drawn {
        let font = ("sans-serif", 14).into_font();
        let small = ("sans-serif", 12).into_font();
        for (t, name) in tasks.iter().enumerate() {
            let y = self.y0 + self.row_h * t as i32;
            let at = (self.x0 - 8, y + self.row_h / 2);
            text(
                area,
                name.clone(),
                at,
                anchored(&font, HPos::Right, VPos::Center),
            )?;
            for (col, &u) in order.iter().enumerate() {
                let x = self.x(col);
                let v = lambda[t * self.cols + u] as f64;
                let corners = [(x, y), (x + self.cell, y + self.row_h)];
                rect(area, corners, blue(v).filled())?;
                if self.cell >= 40 {
                    let ink = if v > 0.55 { WHITE } else { BLACK };
                    let at = (x + self.cell / 2, y + self.row_h / 2);
                    let style = anchored(&small, HPos::Center, VPos::Center).color(&ink);
                    text(area, format!("{v:.2}"), at, style)?;
                }
            }
        }
        rect(
            area,
            [(self.x0, self.y0), (self.x(self.cols), self.y_end())],
            BLACK.stroke_width(1),
        )
    }

    /// Unit names turned upright under their columns; group names and separators below.
    fn column_labels(&self, area: &Area<'_>, labels: &[(String, String)], longest: i32) -> Drawn {
        let upright = ("sans-serif", 11)
            .into_font()
            .transform(FontTransform::Rotate270);
        let small = anchored(&upright, HPos::Right, VPos::Center);
        let y_end = self.y_end();
        for (u, (_, short)) in labels.iter().enumerate() {
            let x = self.x(u) + self.cell / 2;
            text(area, short.clone(), (x, y_end + 4), small.clone())?;
        }
        let font = ("sans-serif", 14).into_font();
        let group_y = y_end + 10 + 7 * longest;
        let mut start = 0;
        for u in 1..=labels.len() {
            if u < labels.len() && labels[u].0 == labels[start].0 {
                continue;
            }
            let (a, b) = (self.x(start), self.x(u));
            line(
                area,
                vec![(a, self.y0), (a, group_y + 20)],
                BLACK.stroke_width(1),
            )?;
            let group = &labels[start].0;
            let name = match group.strip_prefix("block ") {
                Some(l) if b - a < 60 => l.to_string(),
                _ => group.clone(),
            };
            let style = anchored(&font, HPos::Center, VPos::Top);
            text(area, name, ((a + b) / 2, group_y + 4), style)?;
            start = u;
        }
        let right = self.x(labels.len());
        line(
            area,
            vec![(right, self.y0), (right, group_y + 20)],
            BLACK.stroke_width(1),
        )
    }

    /// The colour bar right of the cells, 0 at the bottom and 1 at the top.
    fn colour_bar(&self, area: &Area<'_>, symbol: &str) -> Drawn {
        let (x, y0, h) = (
            self.x(self.cols) + 30,
            self.y0,
            (self.y_end() - self.y0).max(80),
        );
        for i in 0..h {
            let v = 1.0 - i as f64 / (h - 1).max(1) as f64;
            rect(area, [(x, y0 + i), (x + 16, y0 + i + 1)], blue(v).filled())?;
        }
        rect(area, [(x, y0), (x + 16, y0 + h)], BLACK.stroke_width(1))?;
        let font = ("sans-serif", 14).into_font();
        for (v, label) in [(1.0, "1"), (0.5, "0.5"), (0.0, "0")] {
            let y = y0 + ((1.0 - v) * (h - 1) as f64).round() as i32;
            text(
                area,
                label,
                (x + 22, y),
                anchored(&font, HPos::Left, VPos::Center),
            )?;
        }
        text(
            area,
            symbol,
            (x + 8, y0 - 6),
            anchored(&font, HPos::Center, VPos::Bottom),
        )
    }
}

/// Per-task, per-unit values (λ, or the share of singular components kept) as a heatmap, white
/// (0) to dark blue (1) with a colour bar named `symbol`: one row per task, one column per unit
/// in forward order, the columns named (embeddings, each block's norms, q/k/v, attention output
/// and MLP units, the head) and grouped by block.
pub fn heatmap(
    path: &Path,
    title: &str,
    symbol: &str,
    tasks: &[String],
    units: &[String],
    lambda: &[f32],
) -> Result<()> {
    let (k, n) = (tasks.len(), units.len());
    if lambda.len() != k * n {
        return Err(plot_error(
            path,
            format!("{} values for {k} tasks × {n} units", lambda.len()),
        ));
    }
    let (lo, hi) = lambda
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&u| forward_position(&units[u]));
    let labels: Vec<(String, String)> = order.iter().map(|&u| unit_label(&units[u])).collect();
    let longest = labels.iter().map(|l| l.1.len()).max().unwrap_or(0) as i32;
    // Few units (task-wise λ) get wide cells with their values written in.
    let grid = Grid {
        x0: 120,
        y0: 48,
        cell: (360 / n.max(1) as i32).clamp(14, 72),
        row_h: 28,
        cols: n,
        rows: k,
    };
    let caption = format!("{title} ({symbol} from {lo:.2} to {hi:.2})");
    let width = (grid.x(n) + 110).max(24 + 9 * caption.chars().count() as i32);
    let height = grid.y_end() + 70 + 7 * longest;
    render(path, (width as u32, height as u32), |root| {
        text(
            &root,
            caption,
            (12, 12),
            ("sans-serif", 18).into_font().into(),
        )?;
        grid.cells(&root, tasks, &order, lambda)?;
        grid.column_labels(&root, &labels, longest)?;
        grid.colour_bar(&root, symbol)
    })
}

/// Grouped bars: accuracy (%) per task and on average for each method, the axis fitted to the
/// data and the legend beside the plot.
pub fn method_bars(
    path: &Path,
    title: &str,
    tasks: &[String],
    methods: &[(String, Vec<f64>)],
) -> Result<()> {
    let mut groups = tasks.to_vec();
    groups.push("average".into());
    let rows: Vec<(String, Vec<f64>)> = methods
        .iter()
        .map(|(name, acc)| {
            let avg = acc.iter().sum::<f64>() / acc.len().max(1) as f64;
            let mut row = acc.clone();
            row.push(avg);
            (name.clone(), row)
        })
        .collect();
    let g = groups.len();
    let highest = rows
        .iter()
        .flat_map(|(_, a)| a.iter())
        .fold(0.0f64, |a, &b| a.max(100.0 * b));
    let top = ((highest / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let legend_w = legend_width(methods.iter().map(|(n, _)| n.as_str()));
    let plot_w = (140 + 80 * g as u32).max(640);
    render(path, (plot_w + legend_w, 560), |root| {
        let (plot, side) = root.split_horizontally(plot_w);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..g as f64 + 0.3, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("test accuracy (%)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()
            .map_err(|e| e.to_string())?;
        let bars = Bars {
            groups: g,
            methods: rows.len().max(1),
        };
        bars.group_names(&root, &chart, &groups)?;
        let mut items = Vec::new();
        for (j, (name, acc)) in rows.iter().enumerate() {
            bars.method(&root, &mut chart, j, acc)?;
            items.push(LegendItem::Box(name.clone(), colour(j)));
        }
        // A line between the tasks and their average.
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(g as f64 - 0.85, 0.0), (g as f64 - 0.85, top)],
                BLACK.mix(0.4).stroke_width(1),
            )))
            .map_err(|e| e.to_string())?;
        draw_legend(&side, &items, 56)
    })
}

/// The chart of grouped bars: one group per task and the average group last, after a gap.
type BarChart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Where the bars of grouped-bar charts go.
struct Bars {
    groups: usize,
    methods: usize,
}

impl Bars {
    /// The average group (the last) sits 0.3 further right, after a gap.
    fn shift(&self, group: usize) -> f64 {
        if group + 1 == self.groups { 0.3 } else { 0.0 }
    }
    fn width(&self) -> f64 {
        0.8 / self.methods as f64
    }
    fn x0(&self, group: usize, method: usize) -> f64 {
        group as f64 + self.shift(group) + 0.1 + method as f64 * self.width()
    }

    /// Group names under the axis, the average's in bold.
    fn group_names(&self, area: &Area<'_>, chart: &BarChart<'_>, groups: &[String]) -> Drawn {
        for (i, name) in groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5 + self.shift(i), 0.0));
            let mut font = ("sans-serif", 14).into_font();
            if i + 1 == self.groups {
                font = font.style(FontStyle::Bold);
            }
            text(
                area,
                name.clone(),
                (x, y + 8),
                anchored(&font, HPos::Center, VPos::Top),
            )?;
        }
        Ok(())
    }

    /// Method `j`'s bars (accuracy in [0, 1] per group), its average written inside its bar:
    /// the number readers compare.
    fn method(&self, area: &Area<'_>, chart: &mut BarChart<'_>, j: usize, acc: &[f64]) -> Drawn {
        let (col, w) = (colour(j), self.width());
        chart
            .draw_series(acc.iter().enumerate().map(|(t, a)| {
                Rectangle::new(
                    [(self.x0(t, j), 0.0), (self.x0(t, j) + w * 0.92, 100.0 * a)],
                    col.filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        let avg = acc[self.groups - 1];
        let (x, y) = chart.backend_coord(&(self.x0(self.groups - 1, j) + w * 0.46, 100.0 * avg));
        let upright = ("sans-serif", 11)
            .into_font()
            .transform(FontTransform::Rotate270);
        let style = anchored(&upright, HPos::Right, VPos::Center).color(&WHITE);
        text(area, format!("{:.1}", 100.0 * avg), (x, y + 4), style)
    }
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
        let units = [
            "vision_model.embeddings.class_embedding".to_string(),
            "vision_model.encoder.layers.0.self_attn.in_proj.weight".to_string(),
            "visual_projection.weight".to_string(),
        ];
        heatmap(
            &h,
            "λ",
            "λ",
            &tasks,
            &units,
            &[0.0, 0.5, 1.0, 0.3, 0.3, 0.3],
        )
        .unwrap();
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
