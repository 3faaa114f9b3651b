//! Typed errors: every variant names the file, tensor or key a user must look at.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on user input or I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file whose header or layout cannot be read (bad header, truncated data).
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint directory that cannot be used as a whole (no weights, bad index, ...).
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor whose dtype the merge cannot compute with.
    #[error(
        "{}: tensor `{tensor}` has dtype {dtype}, which cannot be merged (supported: F32, F16, BF16)",
        path.display()
    )]
    UnsupportedDtype {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor holding NaN or infinite values.
    #[error("{}: tensor `{tensor}` holds {count} non-finite value(s) (NaN or Inf), first at flat index {first}", path.display())]
    NonFinite {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// How many entries are not finite.
        count: usize,
        /// Flat index of the first one.
        first: usize,
    },
    /// A tensor that a fine-tuned checkpoint lacks although the pretrained one merges it.
    #[error(
        "{}: tensor `{tensor}` is missing (the pretrained checkpoint {} has it and it is merged)",
        path.display(),
        pretrained.display()
    )]
    MissingTensor {
        /// The fine-tuned checkpoint.
        path: PathBuf,
        /// The pretrained checkpoint.
        pretrained: PathBuf,
        /// The tensor name.
        tensor: String,
    },
    /// A tensor whose shape differs between two checkpoints.
    #[error(
        "tensor `{tensor}` has shape {found:?} in {} but {expected:?} in {}",
        path.display(),
        pretrained.display()
    )]
    ShapeMismatch {
        /// The checkpoint with the differing shape.
        path: PathBuf,
        /// The reference checkpoint.
        pretrained: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Shape in the reference checkpoint.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A configuration value that is missing, malformed, or disagrees with another file.
    #[error("{}: `{key}`: {reason}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The key path (e.g. `vision_config.hidden_size`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A command-line or library argument out of its range.
    #[error("invalid value for {name}: {reason}")]
    InvalidArgument {
        /// The argument (as a user spells it, e.g. `--k`).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A weight the model forward cannot use (missing, or shaped against its config).
    #[error("tensor `{tensor}`: {reason}")]
    Tensor {
        /// The tensor name.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An output folder that cannot be written as asked (a file, not empty, appeared meanwhile).
    #[error("{}: {reason}", path.display())]
    Output {
        /// The output.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An output that is, holds or lies inside one of the command's inputs.
    #[error(
        "the output {} {relation} {role} ({}); adamerge never writes where it reads, so choose \
         another output",
        output.display(),
        input.display()
    )]
    OutputOverlapsInput {
        /// The output as given.
        output: PathBuf,
        /// `is`, `holds` or `lies inside`.
        relation: &'static str,
        /// What the input is (`the pretrained checkpoint`).
        role: String,
        /// The input as given.
        input: PathBuf,
    },
    /// A folder `--force` may not replace: adamerge did not write every file in it.
    #[error("{}: not replacing it: {reason}", path.display())]
    NotReplaceable {
        /// The folder.
        path: PathBuf,
        /// Which file stops it, and why.
        reason: String,
    },
    /// A run folder another process is writing.
    #[error(
        "{} is being written by another adamerge run{}; wait for it to end or stop it first",
        path.display(),
        pid.map(|p| format!(" (process {p})")).unwrap_or_default()
    )]
    Locked {
        /// The folder.
        path: PathBuf,
        /// The holder's process id, where its lock file says.
        pid: Option<u32>,
    },
    /// Several problems found at once in one file (every missing path of an experiment).
    #[error(
        "{}: {} problem(s):{}",
        path.display(),
        problems.len(),
        problems.iter().map(|p| format!("\n  - {p}")).collect::<String>()
    )]
    Problems {
        /// The file.
        path: PathBuf,
        /// One line each, naming the key.
        problems: Vec<String>,
    },
    /// A computation on the device that failed (a read-back of a tensor to the host).
    #[error("device: {reason}")]
    Device {
        /// What failed.
        reason: String,
    },
    /// Two tasks with the same name.
    #[error("task name `{0}` is given twice; task names must be unique")]
    DuplicateTask(String),

    /// A data set file (Parquet shard, image) that cannot be used, with the row where known.
    #[error("{}{}: {reason}", path.display(), row.map(|r| format!(", row {r}")).unwrap_or_default())]
    Data {
        /// The file.
        path: PathBuf,
        /// The 0-based row in that file, where the problem is one row.
        row: Option<usize>,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
