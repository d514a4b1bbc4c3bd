//! `driftwatch`: drift detection for immutable infrastructure.
//!
//! The pipeline (sources → diff → sinks) lives in the library, [`driftwatch_agent`];
//! `main` only wires parse → run → exit status (0 clean, 1 drift, 2 error, 3 baseline
//! integrity failure); errors are printed once, as one sentence, on stderr.

use clap::Parser;
use driftwatch_agent::cli::{BaselineCommand, Cli, Command, KeyCommand};
use driftwatch_agent::command::Outcome;
use driftwatch_agent::{command, daemon, error};
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
        Command::Containers(args) => command::containers::run(args, &mut out),
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
