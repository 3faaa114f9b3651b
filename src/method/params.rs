//! A method's parameters as data: each declared once (name, type, range, default, help), then
//! read from the command line or an experiment file by the same code, so the two cannot
//! disagree, and every error names the key as the user spelled it (`--k`, `method[2].k`).

use indexmap::IndexMap;
use serde::Serialize;

use crate::error::{Error, Result};

/// One parameter of a method.
#[derive(Debug, Clone)]
pub struct Param {
    /// Its name: the key in a file; `--name` (with `-` for `_`) on the command line.
    pub name: &'static str,
    /// What it does, for `--help` and the design document.
    pub help: &'static str,
    /// Its type and range.
    pub kind: Kind,
    /// Its default.
    pub default: ParamDefault,
    /// Whether a list of values in a file is a sweep (one run per value).
    pub sweep: bool,
    /// Older spellings still read (in files, and `--<alias>` on the command line).
    pub aliases: &'static [&'static str],
}

/// A parameter's type and allowed values.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A real number in a range.
    Float {
        /// Lower bound.
        min: Bound,
        /// Upper bound.
        max: Bound,
    },
    /// A whole number in `[min, max]`.
    Int {
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A switch.
    Bool,
    /// One of a few words.
    Choice(&'static [&'static str]),
    /// A real number per task, in task order, each in a range (`1,0.5` on the command line, an
    /// array in a file); the count is checked against the tasks by [`Params::check_tasks`].
    PerTask {
        /// Lower bound of each.
        min: Bound,
        /// Upper bound of each.
        max: Bound,
    },
}

/// One end of a float range.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// The value itself is allowed.
    Incl(f64),
    /// Only values beyond it are.
    Excl(f64),
    /// No bound (still finite).
    Open,
}

/// A parameter's default.
#[derive(Debug, Clone)]
pub enum ParamDefault {
    /// A fixed value.
    Value(Value),
    /// A value that depends on other parameters, described in words (`1 with mean, 0.3 with
    /// sum`): the method fills it in.
    Derived(&'static str),
    /// None: leaving it out selects a variant (`ties_k` absent is AdaMerging, present is
    /// AdaMerging++).
    Unset,
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A switch.
    Bool(bool),
    /// A whole number.
    Int(u64),
    /// A real number.
    Float(f64),
    /// A word of a [`Kind::Choice`].
    Choice(&'static str),
    /// A list of real numbers.
    Floats(Vec<f64>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Choice(c) => f.write_str(c),
            Value::Floats(xs) => {
                let xs: Vec<String> = xs.iter().map(f64::to_string).collect();
                f.write_str(&xs.join(","))
            }
        }
    }
}

impl Param {
    /// The command-line flag: `--k`, `--batch-size`; a switch on by default is `--no-clamp`.
    pub fn flag(&self) -> String {
        let name = self.name.replace('_', "-");
        match (self.kind, &self.default) {
            (Kind::Bool, ParamDefault::Value(Value::Bool(true))) => format!("--no-{name}"),
            _ => format!("--{name}"),
        }
    }

    /// The default in words, for help texts.
    pub fn default_text(&self) -> String {
        match &self.default {
            ParamDefault::Value(v) => v.to_string(),
            ParamDefault::Derived(words) => words.to_string(),
            ParamDefault::Unset => "unset".to_string(),
        }
    }

    /// The range or choices in words.
    pub fn range_text(&self) -> String {
        match self.kind {
            Kind::Float { min, max } => float_range(min, max),
            Kind::Int { min, max } if max == u64::MAX => format!("an integer ≥ {min}"),
            Kind::Int { min, max } => format!("an integer in [{min}, {max}]"),
            Kind::Bool => "true or false".into(),
            Kind::Choice(words) => words.join(" | "),
            Kind::PerTask { min, max } => format!(
                "one number per task, separated by commas, each in {}",
                float_range(min, max)
            ),
        }
    }

    /// Reads a value from its command-line text.
    pub fn parse_text(&self, text: &str, key: &str) -> Result<Value> {
        let bad = |what: &str| Error::invalid(key, format!("`{text}` is not {what}"));
        match self.kind {
            Kind::Float { .. } => {
                let x: f64 = text.trim().parse().map_err(|_| bad("a number"))?;
                self.check(Value::Float(x), key)
            }
            Kind::Int { .. } => {
                let i: u64 = text.trim().parse().map_err(|_| bad("a whole number"))?;
                self.check(Value::Int(i), key)
            }
            Kind::Bool => match text {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(bad("true or false")),
            },
            Kind::Choice(words) => words
                .iter()
                .find(|w| **w == text)
                .map(|w| Value::Choice(w))
                .ok_or_else(|| bad(&format!("one of {}", words.join(", ")))),
            Kind::PerTask { .. } => {
                let xs = text
                    .split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad("numbers separated by commas"))?;
                self.check(Value::Floats(xs), key)
            }
        }
    }

    /// Reads a value from a file's TOML value.
    pub fn parse_toml(&self, v: &toml::Value, key: &str) -> Result<Value> {
        let bad = || Error::invalid(key, format!("`{v}` is not {}", self.range_text()));
        match (self.kind, v) {
            (Kind::Float { .. }, toml::Value::Float(x)) => self.check(Value::Float(*x), key),
            (Kind::Float { .. }, toml::Value::Integer(i)) => {
                self.check(Value::Float(*i as f64), key)
            }
            (Kind::Int { .. }, toml::Value::Integer(i)) => {
                let i = u64::try_from(*i).map_err(|_| bad())?;
                self.check(Value::Int(i), key)
            }
            (Kind::Bool, toml::Value::Boolean(b)) => Ok(Value::Bool(*b)),
            (Kind::Choice(_), toml::Value::String(s)) => self.parse_text(s, key),
            (Kind::PerTask { .. }, toml::Value::Array(items)) => {
                let xs = items
                    .iter()
                    .map(|x| match x {
                        toml::Value::Float(x) => Some(*x),
                        toml::Value::Integer(i) => Some(*i as f64),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                self.check(Value::Floats(xs), key)
            }
            _ => Err(bad()),
        }
    }

    /// Checks a value against the range.
    fn check(&self, v: Value, key: &str) -> Result<Value> {
        let ok = match (self.kind, &v) {
            (Kind::Float { min, max }, Value::Float(x)) => in_range(*x, min, max),
            (Kind::PerTask { min, max }, Value::Floats(xs)) => {
                !xs.is_empty() && xs.iter().all(|x| in_range(*x, min, max))
            }
            (Kind::Int { min, max }, Value::Int(i)) => (min..=max).contains(i),
            _ => true,
        };
        if ok {
            Ok(v)
        } else if let Kind::Float { .. } | Kind::PerTask { .. } = self.kind {
            Err(Error::invalid(
                key,
                format!("{v} is not in {}", self.range_text()),
            ))
        } else {
            Err(Error::invalid(
                key,
                format!("{v} is not {}", self.range_text()),
            ))
        }
    }
}

/// Whether `x` is finite and within the bounds.
fn in_range(x: f64, min: Bound, max: Bound) -> bool {
    x.is_finite()
        && match min {
            Bound::Incl(m) => x >= m,
            Bound::Excl(m) => x > m,
            Bound::Open => true,
        }
        && match max {
            Bound::Incl(m) => x <= m,
            Bound::Excl(m) => x < m,
            Bound::Open => true,
        }
}

/// `[lo, hi)` and the like.
fn float_range(min: Bound, max: Bound) -> String {
    let lo = match min {
        Bound::Incl(x) => format!("[{x}"),
        Bound::Excl(x) => format!("({x}"),
        Bound::Open => "(-∞".into(),
    };
    let hi = match max {
        Bound::Incl(x) => format!("{x}]"),
        Bound::Excl(x) => format!("{x})"),
        Bound::Open => "∞)".into(),
    };
    format!("{lo}, {hi}")
}

/// Where values come from, to name a key as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The command line: `--k`.
    Cli,
    /// Entry `index` of an experiment file's `[[method]]` list: `method[2].k`.
    File {
        /// The entry's position.
        index: usize,
    },
}

impl Source {
    /// The key of parameter `p`.
    pub fn key(&self, p: &Param) -> String {
        match self {
            Source::Cli => p.flag(),
            Source::File { index } => format!("method[{index}].{}", p.name),
        }
    }

    /// The key of the method name itself.
    pub fn method_key(&self) -> String {
        match self {
            Source::Cli => "--method".into(),
            Source::File { index } => format!("method[{index}].kind"),
        }
    }
}

/// Checked values of one method's parameters: every parameter given or with a fixed default
/// (a derived or unset default is absent until the method fills it in).
#[derive(Debug, Clone)]
pub struct Params {
    params: &'static [Param],
    values: IndexMap<&'static str, Value>,
    given: Vec<&'static str>,
    source: Source,
}

impl Params {
    /// Values for `params` from `given` (name → value, already checked), defaults filled in.
    pub fn with_defaults(
        params: &'static [Param],
        given: IndexMap<&'static str, Value>,
        source: Source,
    ) -> Self {
        let mut values = IndexMap::new();
        for p in params {
            match (given.get(p.name), &p.default) {
                (Some(v), _) => {
                    values.insert(p.name, v.clone());
                }
                (None, ParamDefault::Value(v)) => {
                    values.insert(p.name, v.clone());
                }
                (None, _) => {}
            }
        }
        Self {
            params,
            values,
            given: given.keys().copied().collect(),
            source,
        }
    }

    /// Every default: what a method runs with when given nothing.
    pub fn defaults(params: &'static [Param]) -> Self {
        Self::with_defaults(params, IndexMap::new(), Source::Cli)
    }

    /// The key of parameter `name` as the user spells it (`--k`, `method[2].k`).
    pub fn key(&self, name: &str) -> String {
        match self.params.iter().find(|p| p.name == name) {
            Some(p) => self.source.key(p),
            None => name.to_string(),
        }
    }

    /// An error about parameter `name`, under its key.
    pub fn error(&self, name: &str, reason: impl Into<String>) -> Error {
        Error::invalid(self.key(name), reason)
    }

    /// Fails when `name` was given although the method's other values make it meaningless.
    pub fn reject(&self, name: &str, why: &str) -> Result<()> {
        if self.given(name) {
            return Err(self.error(name, format!("does not apply {why}")));
        }
        Ok(())
    }

    /// Whether the user gave `name` (rather than its default).
    pub fn given(&self, name: &str) -> bool {
        self.given.contains(&name)
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.values.get(name).cloned()
    }

    /// A float parameter (an int read as float), if set.
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Value::Float(x) => Some(x),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// An integer parameter, if set.
    pub fn int(&self, name: &str) -> Option<u64> {
        match self.get(name)? {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// A switch, if set.
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A choice, if set.
    pub fn choice(&self, name: &str) -> Option<&'static str> {
        match self.get(name)? {
            Value::Choice(c) => Some(c),
            _ => None,
        }
    }

    /// Fails when a per-task list does not hold one value for each of `tasks` tasks.
    pub fn check_tasks(&self, tasks: usize) -> Result<()> {
        for p in self.params {
            if let (Kind::PerTask { .. }, Some(Value::Floats(xs))) =
                (p.kind, self.values.get(p.name))
                && xs.len() != tasks
            {
                return Err(self.error(
                    p.name,
                    format!(
                        "{} values for {tasks} tasks (one per task, in task order)",
                        xs.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A list of numbers, if set.
    pub fn floats(&self, name: &str) -> Option<Vec<f64>> {
        match self.get(name)? {
            Value::Floats(xs) => Some(xs),
            _ => None,
        }
    }

    /// Every set value, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> + '_ {
        self.values.iter().map(|(k, v)| (*k, v))
    }
}

/// Parses one method's parameters from command-line texts (`(param name, text)`), checking
/// every value, and rejecting a flag the method does not take.
pub fn from_cli(method: &dyn super::Method, given: &[(&str, String)]) -> Result<Params> {
    let mut values = IndexMap::new();
    for (name, text) in given {
        let p = find_param(method, name, Source::Cli)?;
        values.insert(p.name, p.parse_text(text, &Source::Cli.key(p))?);
    }
    Ok(Params::with_defaults(method.params(), values, Source::Cli))
}

/// Parses one `[[method]]` table of a file (the `kind` key aside): one [`Params`] per value of a
/// swept parameter (at most one parameter may be a list).
pub fn from_toml(
    method: &dyn super::Method,
    table: &toml::Table,
    index: usize,
) -> Result<Vec<Params>> {
    let source = Source::File { index };
    let mut fixed = IndexMap::new();
    let mut swept: Option<(&Param, Vec<Value>)> = None;
    for (name, v) in table {
        let p = find_param(method, name, source)?;
        let key = source.key(p);
        match v {
            toml::Value::Array(items) if p.sweep => {
                if swept.is_some() {
                    return Err(Error::invalid(
                        key,
                        "only one parameter of an entry may be a list",
                    ));
                }
                if items.is_empty() {
                    return Err(Error::invalid(key, "an empty sweep"));
                }
                let values = items
                    .iter()
                    .map(|item| p.parse_toml(item, &key))
                    .collect::<Result<Vec<_>>>()?;
                swept = Some((p, values));
            }
            _ => {
                fixed.insert(p.name, p.parse_toml(v, &key)?);
            }
        }
    }
    Ok(match swept {
        None => vec![Params::with_defaults(method.params(), fixed, source)],
        Some((p, values)) => values
            .into_iter()
            .map(|v| {
                let mut given = fixed.clone();
                given.insert(p.name, v);
                Params::with_defaults(method.params(), given, source)
            })
            .collect(),
    })
}

/// The declared parameter `name` (or alias) of `method`, or an error listing the real ones.
fn find_param<'m>(method: &'m dyn super::Method, name: &str, source: Source) -> Result<&'m Param> {
    let wanted = name.trim_start_matches("--").replace('-', "_");
    method
        .params()
        .iter()
        .find(|p| p.name == wanted || p.aliases.iter().any(|a| a.replace('-', "_") == wanted))
        .ok_or_else(|| {
            let key = match source {
                Source::Cli => format!("--{}", wanted.replace('_', "-")),
                Source::File { index } => format!("method[{index}].{name}"),
            };
            let names: Vec<String> = method
                .params()
                .iter()
                .map(|p| match source {
                    Source::Cli => p.flag(),
                    Source::File { .. } => p.name.to_string(),
                })
                .collect();
            Error::invalid(
                key,
                if names.is_empty() {
                    format!(
                        "does not apply to {} (it takes no parameter)",
                        method.name()
                    )
                } else {
                    format!(
                        "does not apply to {} (its parameters: {})",
                        method.name(),
                        names.join(", ")
                    )
                },
            )
        })
}
