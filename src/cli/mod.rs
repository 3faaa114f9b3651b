//! The command line: parsing (clap, with every method's flags derived from the method
//! registry) and one small function per command over the library.

pub mod args;
mod commands;
mod methods;

pub use args::{Cli, Command, SuiteCommand};

use clap::{CommandFactory, FromArgMatches};

use crate::device::Backend;
use crate::error::{Error, Result};
use crate::experiment::Experiment;

/// Why the command line could not be read.
#[derive(Debug)]
pub enum ParseError {
    /// Usage, `--help` or `--version`: clap prints it and sets the exit code.
    Clap(clap::Error),
    /// A method or a method's parameter that is wrong.
    Method(Error),
}

impl From<clap::Error> for ParseError {
    fn from(e: clap::Error) -> Self {
        Self::Clap(e)
    }
}

/// The whole command line's definition: clap's, plus the methods' flags on `merge` and
/// `learn`.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("merge", |c| methods::add_flags(c, false))
        .mut_subcommand("learn", |c| methods::add_flags(c, true))
}

/// Parses `args` (the program name first), reading the chosen method's values.
pub fn parse_from<I, T>(args: I) -> std::result::Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    match (&mut cli.command, matches.subcommand()) {
        (Command::Merge(a), Some((_, m))) => {
            a.choice = Some(methods::choice(m, false, &a.method).map_err(ParseError::Method)?);
        }
        (Command::Learn(a), Some((_, m))) => {
            a.choice = Some(methods::choice(m, true, &a.method).map_err(ParseError::Method)?);
        }
        _ => {}
    }
    Ok(cli)
}

/// `--device`, else an experiment file's `device`, else the CPU.
pub fn backend(cli: &Cli) -> Result<Backend> {
    if let Some(b) = cli.device {
        return Ok(b);
    }
    match &cli.command {
        Command::Run(args::RunArgs {
            file: Some(file), ..
        }) => match Experiment::load(file)?.device {
            Some(d) => d.parse(),
            None => Ok(Backend::default()),
        },
        _ => Ok(Backend::default()),
    }
}

/// Runs the parsed command on `backend`.
pub fn run(cli: Cli, backend: Backend) -> Result<()> {
    crate::device::init_threads(cli.threads)?;
    crate::data::set_max_image_pixels(cli.max_image_pixels);
    match cli.command {
        Command::Merge(args) => commands::merge(args, backend),
        Command::Inspect(args) => commands::inspect(args, backend),
        Command::Eval(args) => commands::eval(args, backend),
        Command::Learn(args) => commands::learn(args, backend),
        Command::Suite(SuiteCommand::Build(args)) => commands::suite_build(args, backend),
        Command::Suite(SuiteCommand::Path(args)) => commands::suite_path(args),
        Command::Run(args) => commands::run(args, backend),
        Command::Report(args) => commands::report(args),
    }
}
