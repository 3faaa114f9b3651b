//! The `adamerge` command: parse, run the command over the library, report an error.

use std::process::ExitCode;

use adamerge::cli::{self, ParseError};
use adamerge::device::Backend;

/// Merges allocate and free multi-megabyte buffers at a high rate. glibc serves those with
/// mmap and trims freed heap back to the kernel, so every buffer is faulted in again (over half
/// the time of a TIES merge); keeping them on the heap for reuse halves that without raising the
/// peak. (mimalloc was tried: faster TIES, but slower loading and a higher peak.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// burn creates some state on its default device (an optimiser's restored moments, before they
/// move to the parameter's device), and in a wgpu build that default is the GPU even for a CPU
/// run, which fails where no Vulkan driver exists. Pin it to the backend the user chose.
fn pin_default_device(backend: Backend) {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called first thing in `main`, before any thread exists.
        unsafe { std::env::set_var("BURN_DEVICE", backend.to_string()) };
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let result = match cli::parse_from(std::env::args_os()) {
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Method(e)) => Err(e),
        Ok(parsed) => cli::backend(&parsed).and_then(|backend| {
            pin_default_device(backend);
            cli::run(parsed, backend)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
