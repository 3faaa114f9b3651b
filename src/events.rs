//! The events of the JSON-lines logs, one type shared by the writers (a learning session, the
//! experiment runner) and every reader (`report`, resume, plots, the tests).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// One line of a log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A learning step.
    Step {
        /// Steps done after it (1-based).
        step: usize,
        /// The objective before the update.
        loss: f64,
        /// Each task's share of the loss.
        entropy: IndexMap<String, f64>,
        /// Wall time of the step.
        seconds: f64,
        /// The method and seed, in an experiment run's log.
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        of: Option<Of>,
    },
    /// Accuracy of the merged model while learning (at steps 0, every N, and the last).
    Eval {
        /// Steps done.
        step: usize,
        /// Top-1 accuracy per task.
        accuracy: IndexMap<String, f64>,
        /// Their mean.
        average: f64,
        /// The method and seed, in an experiment run's log.
        #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
        of: Option<Of>,
    },
    /// A method's result on one seed, in an experiment run's log.
    Method {
        /// The method and seed.
        #[serde(flatten)]
        of: Of,
        /// Top-1 accuracy per task.
        accuracy: IndexMap<String, f64>,
        /// Their mean.
        avg: f64,
        /// Mean entropy on the adaptation images, where measured.
        entropy: Option<f64>,
        /// Wall time of the merge or the learning.
        seconds: f64,
    },
}

/// Which method and seed of an experiment run an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Of {
    /// The method's label.
    pub method: String,
    /// The seed.
    pub seed: u64,
}

impl Event {
    /// The step it is about, for step and evaluation events.
    pub fn step(&self) -> Option<usize> {
        match self {
            Event::Step { step, .. } | Event::Eval { step, .. } => Some(*step),
            Event::Method { .. } => None,
        }
    }

    /// Its method and seed, where it has them.
    pub fn of(&self) -> Option<&Of> {
        match self {
            Event::Step { of, .. } | Event::Eval { of, .. } => of.as_ref(),
            Event::Method { of, .. } => Some(of),
        }
    }

    /// The same event tagged with a method and seed.
    pub fn tagged(mut self, tag: Of) -> Self {
        match &mut self {
            Event::Step { of, .. } | Event::Eval { of, .. } => *of = Some(tag),
            Event::Method { of, .. } => *of = tag,
        }
        self
    }

    /// Its kind as the log spells it (`step`, `eval`, `method`).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Step { .. } => "step",
            Event::Eval { .. } => "eval",
            Event::Method { .. } => "method",
        }
    }

    /// One JSON line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("an event always serialises");
        s.push('\n');
        s
    }

    /// Parses one line; `None` for a line that is not an event (a torn last line).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

/// Reads every event of a log file.
pub fn read(path: &std::path::Path) -> crate::error::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| crate::error::Error::Data {
                path: path.to_path_buf(),
                row: Some(i),
                reason: format!("not a log event: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_the_log_format() {
        let line = r#"{"event":"step","step":3,"loss":1.5,"entropy":{"a":0.5,"b":1.0},"seconds":0.1,"method":"m","seed":2}"#;
        let e = Event::parse(line).expect("an event");
        assert_eq!(e.step(), Some(3));
        assert_eq!(e.of().map(|o| o.seed), Some(2));
        let eval = r#"{"event":"eval","step":0,"accuracy":{"a":0.5},"average":0.5}"#;
        let e = Event::parse(eval).expect("an eval");
        assert!(e.of().is_none() && e.kind() == "eval");
        assert_eq!(Event::parse(&e.line()), Some(e));
    }
}
