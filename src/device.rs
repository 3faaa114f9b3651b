//! Run-time backend choice: the library takes a `&Device`; only the CLI decides which.

use std::str::FromStr;

use burn::tensor::Device;
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A compute backend compiled into this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (the default CPU backend).
    #[default]
    Flex,
    /// burn's ndarray CPU backend (deprecated upstream; kept selectable).
    NdArray,
    /// GPU through wgpu (Vulkan, Metal, DX12), when built with the `wgpu` feature.
    Wgpu,
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" | "flex" => Ok(Self::Flex),
            "ndarray" => Ok(Self::NdArray),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(Error::invalid(
                "--device",
                format!("`{other}` is not one of cpu, flex, ndarray, wgpu"),
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
        })
    }
}

impl Backend {
    /// The burn device for this backend (without autodiff).
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Flex => Ok(Device::flex()),
            // Deprecated upstream in favour of flex; kept so results can be compared across both.
            #[allow(deprecated)]
            Self::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(not(feature = "wgpu"))]
            Self::Wgpu => Err(Error::invalid(
                "--device",
                "this build has no wgpu backend; rebuild with `cargo build --release --features wgpu`",
            )),
        }
    }
}

/// Sizes the global thread pool used by the CPU backends. Call once, before any tensor work.
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let Some(n) = threads else { return Ok(()) };
    if n == 0 {
        return Err(Error::invalid("--threads", "must be at least 1"));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::invalid("--threads", e.to_string()))
}

/// How many independent forwards (or backwards) to run side by side on `device`: two on the CPU
/// backends, whose operations on small tensors run on one core, so that a second core works;
/// one on a GPU, which is kept as busy by one thread's kernels.
#[allow(deprecated)]
pub fn side_by_side(device: &Device) -> usize {
    if *device == Device::flex() || *device == Device::ndarray() {
        2
    } else {
        1
    }
}

/// `f` over a wave of `items` (at most [`side_by_side`] of them), each on a thread of its own,
/// the results in item order whichever finished first, so that what callers sum from them has
/// the same bits however many ran at once.
pub fn wave<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    if items.len() < 2 {
        return items.iter().map(f).collect();
    }
    items.par_iter().with_max_len(1).map(&f).collect()
}

/// `f` over all `items`, [`wave`] by wave of `width`, the results in item order.
pub fn waves<T: Sync, R: Send>(
    items: &[T],
    width: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let mut out = Vec::with_capacity(items.len());
    for items in items.chunks(width.max(1)) {
        out.extend(wave(items, &f)?);
    }
    Ok(out)
}
