//! The Markdown table of a run: methods × tasks, the average and the normalized accuracy, as the
//! paper lays it out; the best merge per column in bold; paper numbers beside ours.

use crate::results::{MethodResult, Results, Role};

/// One row to print.
struct Row<'a> {
    label: String,
    result: &'a MethodResult,
}

/// The rows of the main table: references, then each method in run order, a sweep shown by its
/// label-free pick and its oracle.
fn rows(r: &Results) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for (label, m) in &r.methods {
        let sweep = r.sweeps.values().find(|s| s.values.contains(label));
        let name = match sweep {
            None => label.clone(),
            Some(s) if s.label_free == *label && s.oracle == *label => {
                format!("{label} (lowest entropy; also the oracle)")
            }
            Some(s) if s.label_free == *label => format!("{label} (lowest entropy)"),
            Some(s) if s.oracle == *label => format!("{label} (oracle: best test accuracy)"),
            Some(_) => continue,
        };
        out.push(Row {
            label: name,
            result: m,
        });
    }
    out
}

fn cell(mean: f64, std: f64, seeds: usize) -> String {
    if seeds > 1 {
        format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * std)
    } else {
        format!("{:.1}", 100.0 * mean)
    }
}

/// The table of one run (accuracy in %), followed by the full sweeps.
pub fn markdown(r: &Results) -> String {
    let rows = rows(r);
    let seeds = r.seeds.len();
    let k = r.task_names.len();
    // Best merge per column (references excluded: they are not merges).
    let merges: Vec<&Row> = rows
        .iter()
        .filter(|row| row.result.role != Role::Reference)
        .collect();
    let best = |value: &dyn Fn(&MethodResult) -> f64| -> f64 {
        merges
            .iter()
            .map(|row| value(row.result))
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let mut s = format!("## {}", r.experiment);
    if seeds > 1 {
        s += &format!(" (mean ± std over seeds {:?})", r.seeds);
    } else {
        s += &format!(" (seed {})", r.seeds.first().copied().unwrap_or_default());
    }
    s += "\n\n| method |";
    for t in &r.task_names {
        s += &format!(" {t} |");
    }
    s += " avg | normalized |\n|---|";
    s += &"--:|".repeat(k + 2);
    s += "\n";
    for row in &rows {
        let m = row.result;
        let merge = m.role != Role::Reference;
        let bold = |text: String, is_best: bool| {
            if merge && is_best {
                format!("**{text}**")
            } else {
                text
            }
        };
        s += &format!("| {} |", row.label);
        for t in &r.task_names {
            let v = m.tasks[t];
            let top = best(&|x| x.tasks[t]);
            s += &format!(" {} |", bold(cell(v, m.tasks_std[t], seeds), v >= top));
        }
        s += &format!(
            " {} |",
            bold(cell(m.avg, m.avg_std, seeds), m.avg >= best(&|x| x.avg))
        );
        let norm = m
            .normalized
            .map_or("–".into(), |n| format!("{:.1}", 100.0 * n));
        let top_norm = best(&|x| x.normalized.unwrap_or(f64::NEG_INFINITY));
        s += &format!(
            " {} |\n",
            bold(norm, m.normalized.is_some_and(|n| n >= top_norm))
        );
    }
    s += &paper_rows(r);
    s += &images_read(r);
    s += &sweep_tables(r);
    s
}

/// Which unlabeled images each data-based merge read (of its first seed), one line per method.
fn images_read(r: &Results) -> String {
    let mut s = String::new();
    for (label, m) in &r.methods {
        let Some(images) = &m.images else { continue };
        if s.is_empty() {
            s += "\nUnlabeled images read by the data-based merges (no labels):\n\n";
        }
        let first = images.first().map(|i| (i.count, i.of, i.from.as_str()));
        let same = images
            .iter()
            .all(|i| Some((i.count, i.of, i.from.as_str())) == first);
        let per_task: Vec<String> = match first {
            Some((count, of, from)) if same => {
                vec![format!("{count} of each task's {of} {from} images")]
            }
            _ => images
                .iter()
                .map(|i| format!("{} {} of {} {}", i.task, i.count, i.of, i.from))
                .collect(),
        };
        s += &format!("- {label}: {}\n", per_task.join(", "));
    }
    s
}

/// The published numbers of the experiment file, one row each.
fn paper_rows(r: &Results) -> String {
    let mut s = String::new();
    for (label, numbers) in &r.paper {
        s += &format!("| paper: {label} |");
        for t in &r.task_names {
            s += &numbers
                .get(t)
                .map_or(" – |".into(), |v| format!(" {v:.1} |"));
        }
        s += &numbers
            .get("avg")
            .map_or(" – |".into(), |v| format!(" {v:.1} |"));
        s += " – |\n";
    }
    s
}

/// Every sweep's values with their average and entropy.
fn sweep_tables(r: &Results) -> String {
    let mut s = String::new();
    for (name, sweep) in &r.sweeps {
        s += &format!(
            "\n### {name} sweep\n\nThe label-free pick is the value with the lowest entropy on the \
             adaptation data; the oracle reads test labels.\n\n| value | avg | entropy |\n|---|--:|--:|\n"
        );
        for label in &sweep.values {
            let m = &r.methods[label];
            s += &format!(
                "| {label} | {} | {} |\n",
                cell(m.avg, m.avg_std, r.seeds.len()),
                m.entropy.map_or("–".into(), |e| format!("{e:.4}"))
            );
        }
    }
    s
}

/// Two runs side by side: each method's average in both (in %) and the difference, then the
/// per-task differences of the methods both ran.
pub fn compare_runs(
    a: &Results,
    b: &Results,
    name_a: &std::path::Path,
    name_b: &std::path::Path,
) -> String {
    let mut s = format!(
        "## {} vs {}\n\nA = {}, B = {}\n\n| method | A avg | B avg | B − A |",
        a.experiment,
        b.experiment,
        name_a.display(),
        name_b.display()
    );
    let shared: Vec<&String> = a
        .task_names
        .iter()
        .filter(|t| b.task_names.contains(t))
        .collect();
    for t in &shared {
        s += &format!(" {t} B − A |");
    }
    s += "\n|---|--:|--:|--:|";
    s += &"--:|".repeat(shared.len());
    s += "\n";
    let mut labels: Vec<&String> = a.methods.keys().collect();
    labels.extend(b.methods.keys().filter(|l| !a.methods.contains_key(*l)));
    let pct =
        |m: Option<&MethodResult>| m.map_or("–".to_string(), |m| format!("{:.1}", 100.0 * m.avg));
    for label in labels {
        let (ma, mb) = (a.methods.get(label), b.methods.get(label));
        s += &format!("| {label} | {} | {} |", pct(ma), pct(mb));
        match (ma, mb) {
            (Some(x), Some(y)) => {
                s += &format!(" {:+.1} |", 100.0 * (y.avg - x.avg));
                for t in &shared {
                    s += &format!(" {:+.1} |", 100.0 * (y.tasks[*t] - x.tasks[*t]));
                }
            }
            _ => {
                s += " – |";
                s += &" – |".repeat(shared.len());
            }
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use indexmap::IndexMap;

    use super::*;
    use crate::results::Record;

    #[test]
    fn the_best_merge_is_bold_and_a_sweep_shows_its_picks() {
        let rec = |m: &str, role, acc: [f64; 2], entropy, sweep| Record {
            method: m.into(),
            role,
            seed: 0,
            accuracy: acc.to_vec(),
            entropy,
            sweep,
            seconds: 0.0,
            steps: None,
            lambda: None,
            images: None,
            svd_seconds: None,
        };
        let records = vec![
            rec("individual", Role::Reference, [1.0, 1.0], None, None),
            rec("ta(0.1)", Role::Fixed, [0.5, 0.5], Some(1.0), Some(0)),
            rec("ta(0.3)", Role::Fixed, [0.6, 0.5], Some(2.0), Some(0)),
            rec("ta(0.5)", Role::Fixed, [0.4, 0.4], Some(3.0), Some(0)),
            rec(
                "adamerging(layer)",
                Role::Learned,
                [0.7, 0.45],
                Some(0.5),
                None,
            ),
        ];
        let tasks = vec!["a".to_string(), "b".to_string()];
        let names = IndexMap::from([(0usize, "task-arithmetic".to_string())]);
        let r = Results::aggregate(
            "x",
            &tasks,
            &[0],
            &records,
            &names,
            IndexMap::new(),
            serde_json::Value::Null,
        )
        .unwrap();
        let md = markdown(&r);
        assert!(
            md.contains("| individual | 100.0 | 100.0 | 100.0 | 100.0 |"),
            "{md}"
        );
        assert!(md.contains("| ta(0.1) (lowest entropy) |"), "{md}");
        assert!(
            md.contains("| ta(0.3) (oracle: best test accuracy) |"),
            "{md}"
        );
        let main = md.split("###").next().unwrap();
        assert!(!main.contains("| ta(0.5) |"), "{md}");
        assert!(
            md.contains("| adamerging(layer) | **70.0** | 45.0 | **57.5** |"),
            "{md}"
        );
        assert!(md.contains("### task-arithmetic sweep"), "{md}");
    }
}
