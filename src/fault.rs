//! Fault injection for the reliability tests: `ADAMERGE_FAULT=<point>` kills the process at a
//! named point as `kill -9` would (no destructor runs, no buffer is flushed); `<point>@<n>`
//! kills it the n-th time the point is reached; `<point>:wait=<FILE>` creates FILE there and
//! waits until it is removed, so a test can act while a run holds that point. Several are
//! separated by `;`. Unset, a point costs one look at a cached variable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The environment variable naming the fault points.
pub const VAR: &str = "ADAMERGE_FAULT";

/// Marks the named point: kills or holds the process there when the environment asks for it.
pub fn point(name: &str) {
    static SPEC: OnceLock<Option<String>> = OnceLock::new();
    let Some(spec) = SPEC.get_or_init(|| std::env::var(VAR).ok()) else {
        return;
    };
    static REACHED: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
    let reached = {
        let mut counts = REACHED.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts
            .get_or_insert_with(HashMap::new)
            .entry(name.to_string())
            .or_default();
        *n += 1;
        *n
    };
    for item in spec.split(';') {
        let (at, action) = item.split_once(':').unwrap_or((item, "kill"));
        let (at, nth) = match at.split_once('@') {
            Some((at, n)) => (at, n.parse().unwrap_or(1)),
            None => (at, 1),
        };
        if at != name || nth != reached {
            continue;
        }
        match action.strip_prefix("wait=") {
            Some(file) => hold(Path::new(file)),
            None => kill(),
        }
    }
}

fn hold(file: &Path) {
    let _ = std::fs::write(file, std::process::id().to_string());
    while file.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill() -> ! {
    #[cfg(unix)]
    // SAFETY: sends SIGKILL to this process; nothing after it runs.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
