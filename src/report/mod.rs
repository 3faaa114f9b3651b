//! Reports of a run: `results.json`, the Markdown table and the SVG plots, rebuilt from a run's
//! files alone (so `adamerge report RUN_DIR` draws what the run drew).

pub mod plots;
pub mod table;

use std::path::Path;

use crate::adamerging::{LearnedLambda, LearnedUnit};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::layout::RunDir;
use crate::output::write_atomic;
use crate::results::{INDIVIDUAL, PRETRAINED, Results, Role};
use plots::Curve;

/// Writes `results.json`, `table.md` and `plots/` of a run.
pub fn write_report(dir: &Path, r: &Results) -> Result<()> {
    let dir = RunDir::new(dir);
    r.write(&dir)?;
    write_atomic(&dir.table(), table::markdown(r).as_bytes())?;
    write_plots(&dir, r)
}

/// The evaluation events (step, per-task accuracy) of a learned method's log.
fn eval_curves(log: &Path, tasks: &[String]) -> Result<(Vec<Curve>, Curve)> {
    let mut per_task: Vec<Curve> = tasks
        .iter()
        .map(|t| Curve {
            name: t.clone(),
            points: Vec::new(),
        })
        .collect();
    let mut average_curve = Curve {
        name: "average".into(),
        points: Vec::new(),
    };
    for event in crate::events::read(log)? {
        let Event::Eval {
            step,
            accuracy,
            average,
            ..
        } = event
        else {
            continue;
        };
        for c in per_task.iter_mut() {
            if let Some(a) = accuracy.get(&c.name) {
                c.points.push((step as f64, *a));
            }
        }
        average_curve.points.push((step as f64, average));
    }
    Ok((per_task, average_curve))
}

fn write_plots(dir: &RunDir, r: &Results) -> Result<()> {
    let plots = dir.plots();
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let first_seed = r.seeds.first().copied().unwrap_or_default();
    for (label, m) in r.methods.iter().filter(|(_, m)| m.role == Role::Learned) {
        let stem = RunDir::stem(label, first_seed);
        let log = dir.learned(label, first_seed).log();
        if log.exists() {
            let (tasks, avg) = eval_curves(&log, &r.task_names)?;
            plots::accuracy_curves(
                &plots.join(format!("accuracy-{stem}.svg")),
                &format!("{label}: test accuracy while learning (seed {first_seed})"),
                &tasks,
                &avg,
            )?;
        }
        let lambda = dir.lambda_dir().join(format!("{stem}.json"));
        if lambda.exists() && m.lambda.iter().any(|l| l.contains(&stem)) {
            let l = LearnedLambda::load(&lambda)?;
            let flat: Vec<f32> = l.effective.iter().flatten().copied().collect();
            plots::heatmap(
                &plots.join(format!("lambda-{stem}.svg")),
                &format!("{label} λ, task × unit"),
                "λ",
                &l.tasks,
                &l.units.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
                &flat,
            )?;
            if let Some(units) = &l.components {
                let kept: Vec<Vec<f32>> = units.iter().map(LearnedUnit::kept).collect();
                let flat: Vec<f32> = (0..l.tasks.len())
                    .flat_map(|k| kept.iter().map(move |u| u[k]))
                    .collect();
                plots::heatmap(
                    &plots.join(format!("kept-{stem}.svg")),
                    &format!("{label}: share of singular components kept, task × matrix"),
                    "kept",
                    &l.tasks,
                    &units.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
                    &flat,
                )?;
            }
        }
    }
    // Learned versus fixed per task: the individual models, each fixed method's row of the
    // table (a sweep's label-free pick) and every learned method.
    let mut bars = Vec::new();
    for (label, m) in &r.methods {
        let in_sweep = r.sweeps.values().find(|s| s.values.contains(label));
        let shown = match in_sweep {
            Some(s) => s.label_free == *label,
            None => label != PRETRAINED,
        };
        if shown {
            let name = if label == INDIVIDUAL {
                "individual".to_string()
            } else {
                label.clone()
            };
            bars.push((name, m.tasks.values().copied().collect::<Vec<_>>()));
        }
    }
    plots::method_bars(
        &plots.join("learned-vs-fixed.svg"),
        &format!("{}: learned versus fixed merges", r.experiment),
        &r.task_names,
        &bars,
    )
}
