//! The command-line flags of the methods, derived from the registry: one flag per parameter
//! name (shared by the methods that declare it), its help naming those methods and their
//! defaults; and the reading of the chosen method's values back from the flags.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::args::MethodChoice;
use crate::error::{Error, Result};
use crate::method::{self, Kind, Method, Param, ParamDefault, Value};

/// The methods whose flags one command takes: the fixed ones (`merge`; a learned method there
/// applies a λ file and takes no flag) or the learned ones (`learn`).
fn methods(learned: bool) -> Vec<&'static dyn Method> {
    method::registry()
        .iter()
        .copied()
        .filter(|m| m.needs().learning == learned)
        .collect()
}

/// Every parameter of `methods` once (the first declaration of each name), with the methods
/// that take it.
fn flags(methods: &[&'static dyn Method]) -> Vec<(&'static Param, Vec<&'static dyn Method>)> {
    let mut out: Vec<(&'static Param, Vec<&'static dyn Method>)> = Vec::new();
    for m in methods {
        for p in m.params() {
            match out.iter_mut().find(|(q, _)| q.name == p.name) {
                Some((_, users)) => users.push(*m),
                None => out.push((p, vec![*m])),
            }
        }
    }
    out
}

/// Adds the flags of the methods `merge` (or, `learned`, `learn`) takes to `cmd`.
pub fn add_flags(cmd: clap::Command, learned: bool) -> clap::Command {
    let names: Vec<String> = method::registry()
        .iter()
        .filter(|m| !learned || m.needs().learning)
        .map(|m| match (learned, m.needs().learning) {
            (false, true) => format!("{} (with --lambda-file)", m.name()),
            _ => m.name().to_string(),
        })
        .collect();
    let mut cmd = cmd.mut_arg("method", |a| {
        a.help(format!("The method: {}", names.join(", ")))
    });
    for (p, users) in flags(&methods(learned)) {
        let mut arg = Arg::new(p.name)
            .long(p.flag().trim_start_matches("--").to_string())
            .help(help(p, &users))
            .help_heading("Method");
        arg = match p.kind {
            Kind::Bool => arg.action(ArgAction::SetTrue),
            _ => arg
                .value_name(p.name.to_uppercase())
                .allow_negative_numbers(true),
        };
        for alias in p.aliases {
            arg = arg.alias(alias.replace('_', "-"));
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// A flag's help: what it does, the methods that take it, its range and defaults; where the
/// methods describe or default it differently, each group of methods says its own.
fn help(p: &Param, users: &[&'static dyn Method]) -> String {
    let own = |m: &&'static dyn Method| m.params().iter().find(|q| q.name == p.name).unwrap_or(p);
    let who = |ms: &[&str]| ms.join(", ");
    if let (Kind::Bool, ParamDefault::Value(Value::Bool(true))) = (p.kind, &p.default) {
        let names: Vec<&str> = users.iter().map(|m| m.name()).collect();
        return format!("[{}] turn off: {}", who(&names), p.help);
    }
    let helps = grouped(users.iter().map(|m| (m.name(), own(m).help.to_string())));
    let defaults = grouped(users.iter().map(|m| (m.name(), own(m).default_text())));
    let default = match defaults.as_slice() {
        [(_, d)] => d.clone(),
        _ => defaults
            .iter()
            .map(|(ms, d)| format!("{}: {d}", who(ms)))
            .collect::<Vec<_>>()
            .join("; "),
    };
    let text = helps
        .iter()
        .map(|(ms, h)| format!("[{}] {h}", who(ms)))
        .collect::<Vec<_>>()
        .join("; ");
    format!("{text} ({}; default {default})", p.range_text())
}

/// Methods grouped by equal text, in first-seen order.
fn grouped(
    items: impl Iterator<Item = (&'static str, String)>,
) -> Vec<(Vec<&'static str>, String)> {
    let mut groups: Vec<(Vec<&'static str>, String)> = Vec::new();
    for (name, text) in items {
        match groups.iter_mut().find(|(_, t)| *t == text) {
            Some((names, _)) => names.push(name),
            None => groups.push((vec![name], text)),
        }
    }
    groups
}

/// The chosen method (`--method`) and its values, read from the flags; a flag the method does
/// not take is an error naming it.
pub fn choice(m: &ArgMatches, learned: bool, name: &str) -> Result<MethodChoice> {
    let method = method::find(name, "--method")?;
    if learned && !method.needs().learning {
        return Err(Error::invalid(
            "--method",
            format!("`{name}` learns nothing; `adamerge merge --method {name}` runs it"),
        ));
    }
    let mut given: Vec<(&str, String)> = Vec::new();
    for (p, _) in flags(&methods(learned)) {
        if m.value_source(p.name) != Some(ValueSource::CommandLine) {
            continue;
        }
        if !learned && method.needs().learning {
            return Err(Error::invalid(
                p.flag(),
                format!(
                    "does not apply to {name}: merge applies the λ of its --lambda-file, which \
                     holds every setting"
                ),
            ));
        }
        let text = match p.kind {
            // A switch names the value it sets: `--no-clamp` sets false.
            Kind::Bool => match p.default {
                ParamDefault::Value(Value::Bool(true)) => "false".to_string(),
                _ => "true".to_string(),
            },
            _ => m
                .get_one::<String>(p.name)
                .cloned()
                .expect("a flag given on the command line has its value"),
        };
        given.push((p.name, text));
    }
    let params = method::params::from_cli(method, &given)?;
    // Built now, so a combination the method refuses is an error before any work, as in a file.
    method.build(&params)?;
    Ok(MethodChoice { method, params })
}
