//! `driftwatch`: drift detection for immutable infrastructure.
//!
//! The agent is a small pipeline: **sources** observe the host ([`source::files`]: the
//! scan engine), **diff** compares observations with the image's baseline
//! ([`diff`], graded by [`policy`]), and **sinks** deliver the findings
//! ([`sink::report`]: text and `driftwatch.report/v1` JSON). `baseline create` runs the
//! same scan into a [`baseline`] file instead of a diff.
//!
//! `main` only wires parse → run → exit status (0 clean, 1 drift, 2 error, 3 baseline
//! integrity failure); errors are printed once, as one sentence, on stderr.

mod baseline;
mod cli;
mod command;
mod daemon;
mod diff;
mod error;
mod logging;
mod pipeline;
mod policy;
mod sink;
mod source;
mod watch;

use clap::Parser;
use cli::{BaselineCommand, Cli, Command, KeyCommand};
use command::Outcome;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

fn run(cli: Cli) -> error::Result<Outcome> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let outcome = match &cli.command {
        Command::Check(args) => command::check::run(args, &mut out),
        Command::Baseline(BaselineCommand::Create(args)) => {
            command::baseline::create(args, &mut out)
        }
        Command::Baseline(BaselineCommand::Verify(args)) => {
            command::baseline::verify(args, &mut out)
        }
        Command::Baseline(BaselineCommand::Show(args)) => command::baseline::show(args, &mut out),
        Command::Baseline(BaselineCommand::Diff(args)) => command::baseline::diff(args, &mut out),
        Command::Run(args) => daemon::run(args.config.as_deref()).map(|()| Outcome::Clean),
        Command::Status(args) => command::status::run(args, &mut out),
        Command::Key(KeyCommand::Generate(args)) => {
            command::key::generate(args, &mut out).map(|()| Outcome::Clean)
        }
    }?;
    out.flush()?;
    Ok(outcome)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        // A closed pipe (`driftwatch check | head`) is the reader's choice, not a failure.
        Err(error::Error::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("driftwatch: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
