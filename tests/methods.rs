//! The method registry is the one source of every method's name, parameters and defaults: each
//! method parsed from the command line and from an experiment file gives the same values,
//! labels and errors (in each source's own key names).

use adamerge::cli::{self, Command};
use adamerge::experiment::Experiment;
use adamerge::method::{Bound, Kind, Method, Param, ParamDefault, Params, Value, registry};

/// The values of a method given `(param, value)` on the command line.
fn from_cli(m: &dyn Method, given: &[(&Param, Value)]) -> Result<Params, String> {
    let learned = m.needs().learning;
    let mut args: Vec<String> = vec!["adamerge".into()];
    if learned {
        args.extend(
            [
                "learn",
                "--pretrained",
                "p",
                "--task",
                "a,checkpoint=c,data=d",
                "--out",
                "o",
            ]
            .map(String::from),
        );
    } else {
        args.extend(
            [
                "merge",
                "--pretrained",
                "p",
                "--finetuned",
                "a=b",
                "--out",
                "o",
            ]
            .map(String::from),
        );
    }
    args.extend(["--method".to_string(), m.name().to_string()]);
    for (p, v) in given {
        match (p.kind, v) {
            (Kind::Bool, Value::Bool(b)) => {
                // A switch flips its default; giving the default is giving nothing.
                if Some(*b) != default_bool(p) {
                    args.push(p.flag());
                }
            }
            _ => args.extend([p.flag(), v.to_string()]),
        }
    }
    let parsed = cli::parse_from(&args).map_err(|e| match e {
        cli::ParseError::Method(e) => e.to_string(),
        cli::ParseError::Clap(e) => e.to_string(),
    })?;
    let choice = match parsed.command {
        Command::Merge(a) => a.choice,
        Command::Learn(a) => a.choice,
        _ => None,
    };
    Ok(choice.expect("a method").params)
}

fn default_bool(p: &Param) -> Option<bool> {
    match p.default {
        ParamDefault::Value(Value::Bool(b)) => Some(b),
        _ => None,
    }
}

/// The values of a method given `(param, value)` in an experiment file.
fn from_file(m: &dyn Method, given: &[(&Param, Value)]) -> Result<Params, String> {
    let mut toml = String::from(
        "name = \"t\"\n[model]\npretrained = \"p\"\n[[task]]\nname = \"a\"\ncheckpoint = \"c\"\ndata = \"d\"\n",
    );
    toml += &format!("[[method]]\nkind = \"{}\"\n", m.name());
    for (p, v) in given {
        let text = match v {
            Value::Choice(c) => format!("\"{c}\""),
            Value::Float(x) => format!("{x:?}"),
            Value::Floats(xs) => format!("{xs:?}"),
            other => other.to_string(),
        };
        toml += &format!("{} = {text}\n", p.name);
    }
    let exp =
        Experiment::parse(&toml, std::path::Path::new("x.toml")).map_err(|e| e.to_string())?;
    let mut plan = exp.plan().map_err(|e| e.to_string())?;
    Ok(plan.remove(0).params)
}

/// A value of `p` other than its default, inside its range.
fn another(p: &Param) -> Value {
    let default = match &p.default {
        ParamDefault::Value(v) => Some(v.clone()),
        _ => None,
    };
    match p.kind {
        Kind::Float { min, max } => {
            let lo = match min {
                Bound::Incl(x) | Bound::Excl(x) => x,
                Bound::Open => -1.0,
            };
            let hi = match max {
                Bound::Incl(x) | Bound::Excl(x) => x,
                Bound::Open => lo + 2.0,
            };
            let v = lo + 0.37 * (hi - lo);
            if default == Some(Value::Float(v)) {
                Value::Float(lo + 0.61 * (hi - lo))
            } else {
                Value::Float(v)
            }
        }
        Kind::Int { min, .. } => Value::Int(match default {
            Some(Value::Int(d)) => d + 1,
            _ => min + 1,
        }),
        Kind::Bool => Value::Bool(default != Some(Value::Bool(true))),
        Kind::Choice(words) => Value::Choice(
            words
                .iter()
                .find(|w| default != Some(Value::Choice(w)))
                .copied()
                .expect("two choices"),
        ),
        // One value: the file of `from_file` has one task.
        Kind::PerTask { .. } => Value::Floats(vec![0.5]),
    }
}

fn values(p: &Params) -> Vec<(&'static str, Value)> {
    p.iter().map(|(k, v)| (k, v.clone())).collect()
}

fn label(m: &dyn Method, p: &Params) -> Result<String, String> {
    m.build(p).map(|b| b.label()).map_err(|e| e.to_string())
}

#[test]
fn every_method_reads_the_same_from_the_command_line_and_a_file() {
    for m in registry() {
        let (cli, file) = (from_cli(*m, &[]).unwrap(), from_file(*m, &[]).unwrap());
        assert_eq!(values(&cli), values(&file), "{} defaults", m.name());
        assert_eq!(label(*m, &cli), label(*m, &file), "{}", m.name());
        for p in m.params() {
            let given = [(p, another(p))];
            let (cli, file) = (from_cli(*m, &given), from_file(*m, &given));
            match (cli, file) {
                (Ok(cli), Ok(file)) => {
                    assert_eq!(values(&cli), values(&file), "{} {}", m.name(), p.name);
                    assert_eq!(
                        cli.get(p.name),
                        Some(given[0].1.clone()),
                        "{} {}",
                        m.name(),
                        p.name
                    );
                    assert_eq!(label(*m, &cli), label(*m, &file), "{} {}", m.name(), p.name);
                }
                // A value that only applies with others (DARE's TIES keys): the same refusal,
                // each under its own key.
                (Err(a), Err(b)) => {
                    let (a, b) = (
                        a.replace(&p.flag(), "KEY"),
                        b.replace(&format!("method[0].{}", p.name), "KEY"),
                    );
                    assert!(a.contains("KEY") && b.contains("KEY"), "{a} / {b}");
                    assert_eq!(a.split("KEY").last(), b.split("KEY`").last(), "{a} / {b}");
                }
                (a, b) => panic!("{} {}: {:?} vs {:?}", m.name(), p.name, a.err(), b.err()),
            }
        }
    }
}

#[test]
fn out_of_range_values_and_foreign_keys_are_refused_under_each_source_key() {
    for m in registry() {
        for p in m.params() {
            let bad = match p.kind {
                Kind::Float {
                    max: Bound::Incl(x) | Bound::Excl(x),
                    ..
                } => Value::Float(x + 1.0),
                Kind::Int { min, .. } if min > 0 => Value::Int(min - 1),
                Kind::PerTask {
                    min: Bound::Incl(x) | Bound::Excl(x),
                    ..
                } => Value::Floats(vec![1.0, x - 1.0]),
                _ => continue,
            };
            let cli = from_cli(*m, &[(p, bad.clone())]).err().unwrap_or_default();
            let file = from_file(*m, &[(p, bad)]).err().unwrap_or_default();
            assert!(cli.contains(&p.flag()) && cli.contains(" is not "), "{cli}");
            assert!(file.contains(&format!("method[0].{}", p.name)), "{file}");
        }
    }
    let ta = adamerge::method::find("task-arithmetic", "--method").unwrap();
    let k = &adamerge::method::find("ties", "--method").unwrap().params()[0];
    let cli = from_cli(ta, &[(k, Value::Float(0.2))]).unwrap_err();
    let file = from_file(ta, &[(k, Value::Float(0.2))]).unwrap_err();
    assert!(
        cli.contains("--k") && cli.contains("does not apply to task-arithmetic"),
        "{cli}"
    );
    assert!(
        file.contains("method[0].k") && file.contains("does not apply"),
        "{file}"
    );
}

#[test]
fn labels_are_the_result_keys_of_earlier_runs() {
    let defaults = |name: &str| {
        let m = adamerge::method::find(name, "--method").unwrap();
        label(m, &from_cli(m, &[]).unwrap()).unwrap()
    };
    assert_eq!(defaults("weight-average"), "weight-average");
    assert_eq!(defaults("task-arithmetic"), "task-arithmetic(lambda=0.3)");
    assert_eq!(defaults("ties"), "ties(k=0.2,lambda=1,mean)");
    assert_eq!(
        defaults("dare"),
        "dare(p=0.5,seed=0)+task-arithmetic(lambda=0.3)"
    );
    assert_eq!(defaults("adamerging"), "adamerging(layer)");
    let ties = adamerge::method::find("ties", "--method").unwrap();
    let sum = ties
        .params()
        .iter()
        .find(|p| p.name == "aggregate")
        .unwrap();
    let p = from_cli(ties, &[(sum, Value::Choice("sum"))]).unwrap();
    assert_eq!(label(ties, &p).unwrap(), "ties(k=0.2,lambda=0.3,sum)");
}
