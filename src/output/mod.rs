//! Writing outputs without ever losing a user's file: an output is kept apart from every input,
//! a folder is replaced only when adamerge wrote every file in it, a folder under construction
//! appears whole or not at all, and one process at a time writes a run folder.

mod atomic;
mod lock;
mod manifest;
mod overlap;
mod staged;

pub(crate) use atomic::temp_beside;
pub use atomic::{read_json, write_atomic, write_json};
pub use lock::{LOCK_FILE, RunLock};
pub use manifest::{MANIFEST, Manifest};
pub use overlap::Inputs;
pub use staged::OutputDir;
