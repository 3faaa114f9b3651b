//! Reports of a run: `results.json`, the Markdown table and the SVG plots, rebuilt from a run's
//! files alone (so `adamerge report RUN_DIR` draws what the run drew).

pub mod plots;
pub mod table;

use std::path::Path;

use crate::adamerging::LearnedLambda;
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::experiment::results::{INDIVIDUAL, PRETRAINED, Results, Role};
use plots::Curve;

/// Writes `results.json`, `table.md` and `plots/` of a run.
pub fn write_report(dir: &Path, r: &Results) -> Result<()> {
    r.write(dir)?;
    write_atomic(&dir.join("table.md"), table::markdown(r).as_bytes())?;
    write_plots(dir, r)
}

/// The eval events (step, per-task accuracy) of a learned method's log.
fn eval_curves(log: &Path, tasks: &[String]) -> Result<(Vec<Curve>, Curve)> {
    let text = std::fs::read_to_string(log).map_err(|e| Error::io(log, e))?;
    let mut per_task: Vec<Curve> = tasks
        .iter()
        .map(|t| Curve {
            name: t.clone(),
            points: Vec::new(),
        })
        .collect();
    let mut average = Curve {
        name: "average".into(),
        points: Vec::new(),
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] != "eval" {
            continue;
        }
        let step = v["step"].as_f64().unwrap_or_default();
        for c in per_task.iter_mut() {
            if let Some(a) = v["accuracy"][&c.name].as_f64() {
                c.points.push((step, a));
            }
        }
        if let Some(a) = v["average"].as_f64() {
            average.points.push((step, a));
        }
    }
    Ok((per_task, average))
}

fn write_plots(dir: &Path, r: &Results) -> Result<()> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let first_seed = r.seeds.first().copied().unwrap_or_default();
    for (label, m) in r.methods.iter().filter(|(_, m)| m.role == Role::Learned) {
        let stem = format!(
            "{}-seed{first_seed}",
            crate::experiment::runner::slug(label)
        );
        let log = dir.join("learned").join(&stem).join("log.jsonl");
        if log.exists() {
            let (tasks, avg) = eval_curves(&log, &r.task_names)?;
            plots::accuracy_curves(
                &plots.join(format!("accuracy-{stem}.svg")),
                &format!("{label}: test accuracy while learning (seed {first_seed})"),
                &tasks,
                &avg,
            )?;
        }
        let lambda = dir.join("lambda").join(format!("{stem}.json"));
        if lambda.exists() && m.lambda.iter().any(|l| l.contains(&stem)) {
            let l = LearnedLambda::load(&lambda)?;
            let flat: Vec<f32> = l.effective.iter().flatten().copied().collect();
            plots::lambda_heatmap(
                &plots.join(format!("lambda-{stem}.svg")),
                &format!("{label} λ, task × unit"),
                &l.tasks,
                &l.units.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
                &flat,
            )?;
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
